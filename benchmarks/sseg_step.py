"""Speed and memory of one S-Seg training step at the paper's size, on the present device.

    python benchmarks/sseg_step.py [--batch 2] [--size 448] [--steps 3] [--device auto] [--amp bf16|none]
                                   [--model sseg-paper] [--no-pseudo]

The paper model (``models/configs/sseg-paper.json``: Swin-S MaskFormer, 64 queries, 6
decoder layers, 12-layer width-256 text encoder) with random weights; random images and
captions; pseudo-masks from a random DINO ViT-S/8 (the paper's architecture, built from its
config, K = 8 k-means per image) unless ``--no-pseudo``. One step = pseudo-masks + forward +
Hungarian matching + Dice/focal + InfoNCE + backward + AdamW. Prints images/s (after one
warm-up step), the share of the pseudo-mask step, and peak memory
(``torch.cuda.max_memory_allocated`` on CUDA, peak RSS otherwise), then a ``RESULT {json}`` line.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def random_dino(device):
    """DINO ViT-S/8's architecture (facebook/dino-vits8) with random weights, as ``load_dino`` wraps it."""
    from transformers import ViTConfig, ViTModel

    from labelless.masks.dino import DinoBackbone

    cfg = ViTConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                    image_size=224, patch_size=8)
    model = ViTModel(cfg, add_pooling_layer=False).eval().requires_grad_(False).to(device)
    return DinoBackbone(model=model, name="random-dino-vits8", family="dino", patch_size=8, hidden_size=384,
                        num_prefix_tokens=1, interpolate_kwarg=True)


def one_step(model, optimizer, images, captions, dino, amp, k: int = 8) -> float:
    """One training step; returns the seconds spent on pseudo-masks."""
    from labelless.masks.online import padded_kmeans_masks
    from labelless.train.losses import info_nce
    from labelless.train.sseg.criterion import mask_loss, resize_targets

    t0 = time.perf_counter()
    if dino is not None:
        masks, valid = padded_kmeans_masks(dino, (images * 255).round().to(torch.uint8), k, cosine=True)
    else:
        masks = torch.rand(images.shape[0], k, *images.shape[-2:], device=images.device) > 0.5
        valid = torch.ones(images.shape[0], k, dtype=torch.bool, device=images.device)
    t_pseudo = time.perf_counter() - t0
    dtype = torch.bfloat16 if amp == "bf16" else None
    with torch.autocast(images.device.type, dtype=dtype, enabled=dtype is not None):
        out = model(model.normalize(images), model.text.tokenize(captions))
    targets = resize_targets(masks, tuple(out["masks"][-1].shape[-2:]))
    loss, _ = mask_loss([m.float() for m in out["masks"]], targets, valid, float(valid.sum()))
    loss = loss + info_nce(out["image"].float(), out["text"].float(), out["logit_scale"].float())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return t_pseudo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="sseg-paper")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--size", type=int, default=448)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--amp", default="bf16", choices=["bf16", "none"])
    ap.add_argument("--no-pseudo", action="store_true")
    args = ap.parse_args()
    from labelless.io import pick_device
    from labelless.models.sseg import build_sseg

    device = pick_device(args.device)
    amp = args.amp if device.type == "cuda" else "none"
    torch.manual_seed(0)
    model = build_sseg(args.model, device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4)
    dino = None if args.no_pseudo else random_dino(device)
    images = torch.rand(args.batch, 3, args.size, args.size, device=device)
    captions = [f"a photo of a thing number {i}" for i in range(args.batch)]
    one_step(model, optimizer, images, captions, dino, amp)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start, pseudo = time.perf_counter(), 0.0
    for _ in range(args.steps):
        pseudo += one_step(model, optimizer, images, captions, dino, amp)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / args.steps
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**30
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"{args.model} ({params:.1f}M params) on {device} ({amp}), batch {args.batch} at {args.size}²: "
          f"{args.batch / seconds:.2f} images/s, {seconds:.2f} s/step ({100 * pseudo / args.steps / seconds:.0f} % "
          f"pseudo-masks), peak memory {peak:.2f} GB")
    print("RESULT " + json.dumps({"model": args.model, "params_m": round(params, 1), "device": str(device), "amp": amp,
                                  "batch": args.batch, "size": args.size, "images_per_s": round(args.batch / seconds, 3),
                                  "seconds_per_step": round(seconds, 3), "pseudo_share": round(pseudo / args.steps / seconds, 3),
                                  "peak_gb": round(peak, 2)}))


if __name__ == "__main__":
    main()
