"""Mask generation speed: DINO k-means and SAM automatic masks, images/s and masks/s.

    python benchmarks/masks_speed.py [--device auto] [--images DIR] [--dino-images 16]
                                     [--sam-images 1] [--skip-sam] [--skip-dino] ...

DINO: the real DINOv2-S/14 folder (``../shared/weights/dinov2-small``) when present,
else a random-weight model of the same size (ViT-S/14: 384 wide, 12 blocks, 6 heads);
k-means with ``--k`` clusters at short side ``--size``. SAM: ``--sam-model`` (vit_b) at
full size (1024 input) with ``--sam-checkpoint`` or random weights; random weights make
SAM's quality filters drop every mask, so without a checkpoint the filters are opened
(pred_iou_thresh = stability_score_thresh = 0) to keep the post-processing work
realistic. Images: ``--images DIR`` (default CamVid val when found, else random 480×360
noise). Times cover the model + k-means / mask post-processing of preloaded images
(not file reading), after ``--warmup`` untimed images (SAM on CPU: none); CUDA is
synchronised. On 2 CPU cores a random vit_b SAM image (32×32 points) takes about 4–5
minutes; ``--points-per-side 16`` or ``--skip-sam`` for a quick run.
Prints a summary and one JSON line (prefixed ``RESULT ``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DINO_DIR = REPO.parent / "shared" / "weights" / "dinov2-small"
CAMVID_VAL = REPO.parent / "shared" / "data" / "camvid" / "val"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_images(folder: str | None, n: int) -> tuple[list[torch.Tensor], str]:
    from labelless.io import load_image

    path = Path(folder) if folder else CAMVID_VAL
    files = sorted(p for p in path.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:n] \
        if path.is_dir() else []
    if files:
        return [load_image(p) for p in files], str(path)
    if folder:
        raise SystemExit(f"no images in {folder}")
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, 256, (3, 360, 480), generator=g, dtype=torch.uint8) for _ in range(n)], "random 480x360"


def bench_dino(args, device: torch.device, warm: list[torch.Tensor], images: list[torch.Tensor]) -> dict:
    from labelless.masks.dino import dino_kmeans_masks, input_size, load_dino

    model = args.dino_model
    tmp = None
    if model is None and (DINO_DIR / "config.json").is_file():
        model = str(DINO_DIR)
    if model is None:  # a random ViT-S/14 DINOv2 of the real size
        from transformers import Dinov2Config, Dinov2Model

        tmp = tempfile.TemporaryDirectory()
        torch.manual_seed(0)
        Dinov2Model(Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4,
                                 patch_size=14, image_size=518, layerscale_value=1.0)).save_pretrained(tmp.name)
        model, label = tmp.name, "random DINOv2 ViT-S/14"
    else:
        label = model
    backbone = load_dino(model, device, dtype=torch.float16 if args.fp16 and device.type == "cuda" else None)
    H, W = images[0].shape[-2:]
    run = lambda batch: dino_kmeans_masks(backbone, batch, args.k, size=args.size,  # noqa: E731
                                          which=args.features)
    for im in warm:
        run([im])
    _sync(device)
    t0 = time.perf_counter()
    masks = 0
    for start in range(0, len(images), args.batch_size):
        out = run(images[start:start + args.batch_size])
        masks += sum(int(m.shape[0]) for m in out)
    _sync(device)
    dt = time.perf_counter() - t0
    if tmp is not None:
        tmp.cleanup()
    h, w = input_size(int(H), int(W), backbone.patch_size, args.size)
    return {"model": label, "images": len(images), "image_size": [int(H), int(W)], "input": [h, w],
            "grid": [h // backbone.patch_size, w // backbone.patch_size], "k": args.k, "features": args.features,
            "batch_size": args.batch_size, "fp16": bool(args.fp16 and device.type == "cuda"),
            "seconds": round(dt, 3), "images_per_s": round(len(images) / dt, 3), "masks": masks,
            "masks_per_s": round(masks / dt, 2)}


def bench_sam(args, device: torch.device, warm: list[torch.Tensor], images: list[torch.Tensor]) -> dict:
    from labelless.masks.sam import build_sam_generator, sam_masks

    loose = args.sam_checkpoint is None
    knobs = dict(points_per_side=args.points_per_side, points_per_batch=args.points_per_batch)
    if loose:
        knobs.update(pred_iou_thresh=0.0, stability_score_thresh=0.0)
    gen = build_sam_generator(args.sam_checkpoint, args.sam_model, device, **knobs)
    for im in warm:
        sam_masks(gen, im)
    _sync(device)
    t0 = time.perf_counter()
    masks = 0
    for im in images:
        m, _ = sam_masks(gen, im)
        masks += int(m.shape[0])
    _sync(device)
    dt = time.perf_counter() - t0
    return {"model": args.sam_model, "weights": args.sam_checkpoint or "random", "images": len(images),
            "points_per_side": args.points_per_side, "filters_opened": loose, "seconds": round(dt, 3),
            "images_per_s": round(len(images) / dt, 4), "masks": masks, "masks_per_s": round(masks / dt, 2)}


def _split(images: list, warmup: int, n: int) -> tuple[list, list]:
    """(warm-up images, timed images); reuses images when the folder has too few."""
    warm = images[:warmup]
    timed = images[warmup:warmup + n] or images[:n]
    return warm, timed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="cpu, cuda, ... (auto: cuda when present)")
    p.add_argument("--images", default=None, help="folder of images (default CamVid val, else random)")
    p.add_argument("--warmup", type=int, default=1, help="untimed images first")
    p.add_argument("--skip-dino", action="store_true")
    p.add_argument("--skip-sam", action="store_true")
    g = p.add_argument_group("dino")
    g.add_argument("--dino-model", default=None, help="hub name or folder (default: the shared DINOv2-S)")
    g.add_argument("--dino-images", type=int, default=16)
    g.add_argument("--k", type=int, default=8)
    g.add_argument("--size", type=int, default=448, help="input short side")
    g.add_argument("--features", choices=["tokens", "keys"], default="tokens")
    g.add_argument("--batch-size", type=int, default=4)
    g.add_argument("--fp16", action="store_true", help="half precision on CUDA")
    g = p.add_argument_group("sam")
    g.add_argument("--sam-model", default="vit_b", choices=["vit_b", "vit_l", "vit_h", "tiny"])
    g.add_argument("--sam-checkpoint", default=None, help="state dict (default: random weights)")
    g.add_argument("--sam-images", type=int, default=1)
    g.add_argument("--sam-warmup", type=int, default=None,
                   help="untimed SAM images first (default: --warmup on CUDA, 0 on CPU, where one vit_b "
                        "image takes minutes)")
    g.add_argument("--points-per-side", type=int, default=32)
    g.add_argument("--points-per-batch", type=int, default=64)
    args = p.parse_args(argv)

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    n = max(args.dino_images if not args.skip_dino else 0, args.sam_images if not args.skip_sam else 0)
    images, where = load_images(args.images, n + args.warmup)
    result = {"device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
              else "cpu", "torch_threads": torch.get_num_threads(), "images_from": where}
    if not args.skip_dino:
        warm, timed = _split(images, args.warmup, args.dino_images)
        result["dino"] = bench_dino(args, device, warm, timed)
        d = result["dino"]
        print(f"DINO k-means ({d['model']}, {d['grid'][0]}x{d['grid'][1]} patches, k={d['k']}): "
              f"{d['images_per_s']:.2f} images/s, {d['masks_per_s']:.1f} masks/s on {device}", file=sys.stderr)
    if not args.skip_sam:
        sam_warmup = args.sam_warmup if args.sam_warmup is not None else (args.warmup if device.type == "cuda" else 0)
        warm, timed = _split(images, sam_warmup, args.sam_images)
        result["sam"] = bench_sam(args, device, warm, timed)
        s = result["sam"]
        print(f"SAM {s['model']} ({s['weights']} weights, {s['points_per_side']}^2 points): "
              f"{s['images_per_s']:.3f} images/s, {s['masks_per_s']:.1f} masks/s on {device}", file=sys.stderr)
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
