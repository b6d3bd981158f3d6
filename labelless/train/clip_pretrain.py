"""``labelless train clip``: plain CLIP contrastive training of an open_clip model.

Image-caption pairs come from either
- a JSON-lines file (``{"image": path, "caption": text}`` or ``"captions": [...]``, one
  picked per sample), images randomly crop-resized; or
- a labelled benchmark (any ``labelless`` dataset, CamVid included): each sample is a
  random crop of an image, and its caption names the classes present in the crop,
  largest first: ``"a photo of road and car"``, ``"a photo of sky, building and tree"``.
  Crops make the captions vary from sample to sample.

Loss: symmetric InfoNCE with CLIP's learnable temperature (clamped to
``logit_scale_max``); negatives are gathered over all ranks. Captions are few and
repeat within a batch, so a pair whose caption equals the positive's is *not* used as a
negative: it is masked out of the softmax (both directions).

At the end the model is exported as a labelless CLIP checkpoint (``run_dir/clip.pt``),
which ``build_clip(name, path)`` and ``labelless eval --pretrained PATH`` load.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from labelless.train.common import (
    ScalarLogger,
    SeededSampler,
    autocast,
    cosine_scheduler,
    sample_generator,
    seed_everything,
    set_tf32,
)
from labelless.train.config import ClipTrainConfig, config_dict, save_config

# ------------------------------------------------------------------- captions


def join_names(names: list[str]) -> str:
    """``[a]`` → "a"; ``[a, b]`` → "a and b"; ``[a, b, c]`` → "a, b and c"."""
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]


def classes_present(label: np.ndarray, num_classes: int, ignore_index: int,
                    min_fraction: float = 0.0) -> list[int]:
    """Class ids covering at least ``min_fraction`` of the labelled pixels of ``label``
    (H×W int), largest area first (ties: lower id first)."""
    valid = label[(label != ignore_index) & (label >= 0) & (label < num_classes)]
    if valid.size == 0:
        return []
    counts = np.bincount(valid.ravel(), minlength=num_classes)
    need = max(min_fraction * valid.size, 1)
    ids = [int(c) for c in np.argsort(-counts, kind="stable") if counts[c] >= need]
    return ids


def caption_for_labels(label: np.ndarray, classes: list[str], ignore_index: int = 255,
                       template: str = "a photo of {}", min_fraction: float = 0.0,
                       max_names: int | None = None) -> str | None:
    """The caption of a label map: the classes present, largest first, in ``template``.
    A class written with synonyms ("person, people") is named by its first synonym.
    ``None`` when no class is present."""
    ids = classes_present(label, len(classes), ignore_index, min_fraction)
    if max_names:
        ids = ids[:max_names]
    if not ids:
        return None
    names = [classes[i].split(", ")[0].strip() for i in ids]
    return template.format(join_names(names))


def caption_id(caption: str) -> int:
    """A stable 63-bit id of a caption (equal strings, equal ids, on every rank)."""
    return int.from_bytes(hashlib.blake2b(caption.encode("utf-8"), digest_size=8).digest(), "little") >> 1


# ------------------------------------------------------------------- cropping


def random_crop_box(h: int, w: int, scale: tuple[float, float], g: torch.Generator,
                    ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """``(top, left, height, width)`` of a random crop covering a ``scale`` fraction of the
    image with aspect ratio in ``ratio`` (RandomResizedCrop's rule, 10 tries then centre)."""
    area = h * w
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        u = torch.rand(2, generator=g).tolist()
        target = area * (scale[0] + (scale[1] - scale[0]) * u[0])
        aspect = math.exp(log_r[0] + (log_r[1] - log_r[0]) * u[1])
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(torch.randint(0, h - ch + 1, (1,), generator=g))
            left = int(torch.randint(0, w - cw + 1, (1,), generator=g))
            return top, left, ch, cw
    side = min(h, w)
    return (h - side) // 2, (w - side) // 2, side, side


def _resize(image: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 3×h×w → float 3×size×size in [0, 1] (bilinear, antialiased)."""
    x = image.unsqueeze(0).float() / 255.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x[0].clamp(0, 1)


class LabelledCaptionDataset(Dataset):
    """Random crops of a labelled benchmark with captions from the classes they show.

    ``len = images × crops_per_image``; item ``(index, seed)`` →
    ``{"image": float 3×S×S in [0, 1], "caption": str}``. Up to 10 crops are tried for
    one that shows a class; failing that the whole image is used.
    """

    def __init__(self, bench, size: int, crops_per_image: int = 4, scale: tuple[float, float] = (0.2, 1.0),
                 template: str = "a photo of {}", min_fraction: float = 0.02, max_names: int | None = 3,
                 hflip: bool = True):
        self.bench, self.size, self.crops = bench, size, max(1, crops_per_image)
        self.scale, self.template = scale, template
        self.min_fraction, self.max_names, self.hflip = min_fraction, max_names, hflip
        self.samples = [s for s in bench.samples if s.label is not None]
        if not self.samples:
            raise ValueError(f"{bench.name}: no labelled samples to build captions from")

    def __len__(self) -> int:
        return len(self.samples) * self.crops

    def caption(self, label: np.ndarray) -> str | None:
        return caption_for_labels(label, self.bench.classes, self.bench.ignore_index, self.template,
                                  self.min_fraction, self.max_names)

    def __getitem__(self, item) -> dict:
        from labelless.segment import load_image

        index, seed = item if isinstance(item, tuple) else (item, item)
        g = sample_generator(seed)
        sample = self.samples[index // self.crops]
        image = load_image(sample.image)
        label = self.bench.load_label(sample)
        h, w = label.shape
        if tuple(image.shape[-2:]) != (h, w):
            raise ValueError(f"{sample.image} is {tuple(image.shape[-2:])} but its label {sample.label} is {(h, w)}")
        caption, box = None, (0, 0, h, w)
        for _ in range(10):
            top, left, ch, cw = random_crop_box(h, w, self.scale, g)
            caption = self.caption(label[top:top + ch, left:left + cw])
            if caption is not None:
                box = (top, left, ch, cw)
                break
        if caption is None:
            caption = self.caption(label) or self.template.format("a scene")
        top, left, ch, cw = box
        crop = _resize(image[:, top:top + ch, left:left + cw], self.size)
        if self.hflip and bool(torch.rand(1, generator=g) < 0.5):
            crop = crop.flip(-1)  # class names have no left/right: the caption stays valid
        return {"image": crop, "caption": caption}


class CaptionFileDataset(Dataset):
    """Images with captions from a JSON-lines file; random crop-resize, optional flip."""

    def __init__(self, captions: str | Path, images_root: str | Path | None, size: int,
                 scale: tuple[float, float] = (0.5, 1.0), hflip: bool = False):
        path = Path(captions)
        if not path.is_file():
            raise FileNotFoundError(f"captions file not found: {path}")
        base = Path(images_root) if images_root else path.parent
        self.items = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                caps = rec["captions"] if "captions" in rec else [rec["caption"]]
                image = Path(rec["image"])
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{n}: expected {{\"image\": ..., \"caption\": ...}} ({e})") from e
            caps = [str(c) for c in caps if str(c).strip()]
            if not caps:
                raise ValueError(f"{path}:{n}: no caption")
            self.items.append((image if image.is_absolute() else base / image, caps))
        if not self.items:
            raise ValueError(f"{path} holds no image-caption pairs")
        self.size, self.scale, self.hflip = size, scale, hflip

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, item) -> dict:
        from labelless.segment import load_image

        index, seed = item if isinstance(item, tuple) else (item, item)
        g = sample_generator(seed)
        path, caps = self.items[index]
        image = load_image(path)
        top, left, ch, cw = random_crop_box(image.shape[1], image.shape[2], self.scale, g)
        crop = _resize(image[:, top:top + ch, left:left + cw], self.size)
        if self.hflip and bool(torch.rand(1, generator=g) < 0.5):
            crop = crop.flip(-1)
        caption = caps[int(torch.randint(0, len(caps), (1,), generator=g))]
        return {"image": crop, "caption": caption}


def collate_pairs(batch: list[dict]) -> dict:
    return {"image": torch.stack([b["image"] for b in batch]), "caption": [b["caption"] for b in batch]}


# ------------------------------------------------------------------------ loss


def clip_contrastive_loss(image_features: torch.Tensor, text_features: torch.Tensor,
                          logit_scale: torch.Tensor, caption_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE over N pairs (features N×D, L2-normalised; ``logit_scale`` the
    multiplier, i.e. exp of the learnable parameter).

    ``caption_ids`` (N): pairs whose captions are equal are not negatives of each other:
    their off-diagonal logits are removed from the softmax in both directions.
    """
    logits = logit_scale * image_features @ text_features.t()  # N×N, row i: image i vs every text
    n = logits.shape[0]
    target = torch.arange(n, device=logits.device)
    if caption_ids is not None:
        same = caption_ids.view(-1, 1) == caption_ids.view(1, -1)
        same.fill_diagonal_(False)
        logits = logits.masked_fill(same, float("-inf"))
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def gather_features(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` over ranks, keeping the gradient of this rank's part."""
    from labelless.train.distributed import get_world_size, is_distributed

    if not is_distributed() or get_world_size() == 1:
        return x
    import torch.distributed.nn.functional as dist_fn

    return torch.cat(dist_fn.all_gather(x), dim=0)


def gather_ids(x: torch.Tensor) -> torch.Tensor:
    from labelless.train.distributed import get_world_size, is_distributed

    if not is_distributed() or get_world_size() == 1:
        return x
    import torch.distributed as dist

    out = [torch.empty_like(x) for _ in range(get_world_size())]
    dist.all_gather(out, x)
    return torch.cat(out)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """open_clip's rule: no weight decay on gains, biases, embeddings' scalars, logit_scale."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exclude = p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
        (no_decay if exclude else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


# ------------------------------------------------------------------------ data


def build_dataset(cfg: ClipTrainConfig, size: int) -> Dataset:
    scale = (cfg.crop_scale_min, cfg.crop_scale_max)
    if cfg.data == "benchmark":
        from labelless.data.benchmarks import load_benchmark

        bench = load_benchmark(cfg.dataset, cfg.data_root, cfg.split, cfg.layout)
        return LabelledCaptionDataset(bench, size, cfg.crops_per_image, scale, cfg.caption_template,
                                      cfg.min_class_fraction, cfg.max_names, cfg.hflip)
    return CaptionFileDataset(cfg.captions, cfg.images_root, size, scale, cfg.hflip)


# ------------------------------------------------------------------------ main


def train_clip(cfg: ClipTrainConfig) -> Path:
    """Run (or resume) CLIP training; returns the exported checkpoint path (``None`` when
    stopped early by ``exit_at``)."""
    from tqdm import tqdm

    from labelless.models.clip import build_clip
    from labelless.models.clip import save_checkpoint as save_clip
    from labelless.train import checkpoint as ckpt
    from labelless.train import distributed as ddist

    # ---- processes, seeds, run folder
    info = ddist.init_distributed(cfg.device)
    device = info.device
    seed_everything(cfg.seed)  # the same initial weights on every rank
    set_tf32(cfg.tf32)
    run_dir = Path(cfg.run_dir)
    if info.is_main:
        save_config(cfg, run_dir)
    if cfg.batch_size % info.world_size:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by the {info.world_size} processes")
    local_batch = cfg.batch_size // info.world_size

    # ---- model and optimizer
    dense = build_clip(cfg.model, cfg.pretrained, device=device, cache_dir=cfg.cache_dir)
    size = cfg.image_size or dense.image_size[0]
    if dense.kind == "vit" and size != dense.image_size[0]:
        raise ValueError(f"{cfg.model} is a ViT trained at {dense.image_size[0]} px: image_size must match")
    clip = dense.clip.train()
    model = clip
    if info.distributed:
        model = torch.nn.parallel.DistributedDataParallel(
            clip, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.AdamW(param_groups(clip, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    scheduler = cosine_scheduler(optimizer, cfg.max_steps, cfg.warmup_steps, cfg.lr_end)

    # ---- resume (the RNG state is restored last, once everything is built)
    step, rng_state = 0, None
    latest = ckpt.latest_checkpoint(run_dir) if cfg.resume else None
    if latest is not None:
        state = ckpt.load_checkpoint(latest, clip, optimizer, scheduler, restore_rng=False, map_location=device)
        step, rng_state = state["step"], state["rng"]
        if info.is_main:
            print(f"resumed from {latest} at step {step}")

    # ---- data: an endless seeded stream; a resumed run skips what it already consumed
    dataset = build_dataset(cfg, size)
    sampler = SeededSampler(len(dataset), cfg.seed, info.rank, info.world_size, start=step * local_batch)
    loader = DataLoader(dataset, batch_size=local_batch, sampler=sampler, num_workers=cfg.num_workers,
                        collate_fn=collate_pairs, pin_memory=device.type == "cuda",
                        persistent_workers=cfg.num_workers > 0,
                        generator=torch.Generator().manual_seed(cfg.seed))
    batches = iter(loader)
    if rng_state is None:
        seed_everything(cfg.seed + info.rank)  # from here on each rank draws its own numbers
    else:
        ckpt.restore_rng_state(rng_state[info.rank] if info.rank < len(rng_state) else rng_state[0])

    logger = ScalarLogger(run_dir, cfg.tensorboard and info.is_main)
    max_scale = math.log(cfg.logit_scale_max)
    stop = min(cfg.max_steps, cfg.exit_at) if cfg.exit_at else cfg.max_steps
    bar = tqdm(total=cfg.max_steps, initial=step, disable=not info.is_main, desc="clip", file=sys.stdout)

    def save(step_done: int) -> None:
        rng = ckpt.gather_rng_states()
        if info.is_main:
            ckpt.save_checkpoint(ckpt.checkpoint_path(run_dir, step_done), step=step_done, model=clip,
                                 optimizer=optimizer, scheduler=scheduler, config=config_dict(cfg), rng=rng)
            ckpt.prune_checkpoints(run_dir, cfg.keep_checkpoints)
        ddist.barrier()

    # ---- the loop
    while step < stop:
        batch = next(batches)
        images = dense.normalize(batch["image"].to(device, non_blocking=True))
        tokens = dense.tokenizer(batch["caption"]).to(device)
        ids = torch.tensor([caption_id(c) for c in batch["caption"]], device=device)
        with autocast(device, cfg.amp):
            image_features, text_features, logit_scale = model(images, tokens)[:3]
        image_features = gather_features(image_features.float())
        text_features = gather_features(text_features.float())
        loss = clip_contrastive_loss(image_features, text_features, logit_scale.float(), gather_ids(ids))

        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(clip.parameters(), cfg.grad_clip or float("inf"))
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            clip.logit_scale.clamp_(0, max_scale)
        step += 1

        if step % cfg.log_every == 0 or step == stop:
            scalars = {"loss": ddist.all_reduce_mean(loss).item(), "lr": scheduler.get_last_lr()[0],
                       "logit_scale": float(logit_scale.detach()), "grad_norm": float(grad_norm)}
            logger.log({f"train/{k}": v for k, v in scalars.items()}, step)
            bar.set_postfix(loss=f"{scalars['loss']:.4f}", scale=f"{scalars['logit_scale']:.1f}")
        bar.update(1)
        if step % cfg.checkpoint_every == 0 or step == stop:
            save(step)

    bar.close()
    logger.close()
    exported = None
    if step >= cfg.max_steps and info.is_main:
        exported = save_clip(dense, run_dir / cfg.export, step=step, trained_by="labelless train clip",
                             config=config_dict(cfg))
        print(f"exported {exported} (use: labelless eval --model {cfg.model} --pretrained {exported})")
    ddist.barrier()
    ddist.cleanup()
    return exported
