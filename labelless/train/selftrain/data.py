"""Self-training data: a dataset split's images with the pseudo-labels of a label store, and
mmsegmentation's usual augmentation for semantic segmentation:

1. resize so the short side is ``base_size × U(scale_min, scale_max)`` (image bilinear,
   antialiased; label nearest);
2. pad to the crop size (image 0, label ignore), random ``crop_size`` crop; up to 10 tries
   for a crop where no class covers more than 75 % of the labelled pixels (mmseg's
   ``cat_max_ratio``);
3. horizontal flip (p = 0.5);
4. colour: brightness, contrast, saturation × U(1 − c, 1 + c), hue + U(−h, h), in random
   order (mmseg's PhotoMetricDistortion, without its second contrast slot).

Every random draw comes from the sample's own seed (``SeededSampler``), so a resumed run
sees the same crops. Images that cannot be read are warned by name, counted, skipped.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from labelless.data.pairs import _readable, sample_generator
from labelless.train.common import SeededSampler


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand(1, generator=g))


def rescale(image: torch.Tensor, label: torch.Tensor, short: float) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 ``3×H×W`` image + ``H×W`` label → short side ``short`` (float image in [0, 1])."""
    h, w = label.shape
    f = short / min(h, w)
    size = (max(1, round(h * f)), max(1, round(w * f)))
    x = F.interpolate(image[None].float() / 255, size=size, mode="bilinear", align_corners=False,
                      antialias=f < 1)[0].clamp(0, 1)
    y = F.interpolate(label[None, None].float(), size=size, mode="nearest")[0, 0].long()
    return x, y


def random_crop(image: torch.Tensor, label: torch.Tensor, size: int, ignore: int, g: torch.Generator,
                max_ratio: float = 0.75, tries: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad to ≥ ``size`` (image 0, label ``ignore``), then a ``size × size`` crop (module docstring)."""
    h, w = label.shape
    ph, pw = max(0, size - h), max(0, size - w)
    if ph or pw:
        image = F.pad(image, (0, pw, 0, ph), value=0.0)
        label = F.pad(label, (0, pw, 0, ph), value=ignore)
    h, w = label.shape
    for attempt in range(tries):
        top = int(torch.randint(0, h - size + 1, (1,), generator=g))
        left = int(torch.randint(0, w - size + 1, (1,), generator=g))
        crop = label[top:top + size, left:left + size]
        counts = torch.bincount(crop[crop != ignore].flatten())
        if attempt == tries - 1 or len(counts) == 0 or counts.max() < max_ratio * counts.sum():
            break
    return image[:, top:top + size, left:left + size], crop


def photometric(image: torch.Tensor, strength: float, hue: float, g: torch.Generator) -> torch.Tensor:
    """Brightness, contrast, saturation and hue jitter in a random order (float ``3×H×W``)."""
    from torchvision.transforms.v2 import functional as TF

    if strength <= 0 and hue <= 0:
        return image
    ops = [lambda x, f: TF.adjust_brightness(x, f), lambda x, f: TF.adjust_contrast(x, f),
           lambda x, f: TF.adjust_saturation(x, f)]
    factors = [_uniform(g, max(0.0, 1 - strength), 1 + strength) for _ in ops]
    shift = _uniform(g, -hue, hue)
    for i in torch.randperm(4, generator=g).tolist():
        if i < 3 and strength > 0:
            image = ops[i](image, factors[i])
        elif i == 3 and hue > 0:
            image = TF.adjust_hue(image, shift)
    return image.clamp(0, 1)


class PseudoLabelDataset(Dataset):
    """``items``: ``(image path, name)``; labels from ``store`` (``selftrain.store``). Item
    ``(index, seed)`` → ``{"image": float 3×S×S, "label": long S×S, "name"}`` or None."""

    def __init__(self, items: list[tuple[str, str]], store: str, crop_size: int, base_size: int | None = None,
                 scale: tuple[float, float] = (0.5, 2.0), hflip: bool = True, color: float = 0.4, hue: float = 0.05,
                 min_confidence: float | None = None, ignore_index: int = 255):
        self.items, self.store, self.crop = items, store, crop_size
        self.base, self.scale, self.hflip = base_size or crop_size, scale, hflip
        self.color, self.hue, self.min_confidence, self.ignore = color, hue, min_confidence, ignore_index
        from labelless.selftrain.store import read_store

        self.meta = read_store(store)  # once, not per sample

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, item) -> dict | None:
        from labelless.selftrain.store import load_pseudo_label

        index, seed = item if isinstance(item, tuple) else (item, item)
        path, name = self.items[index]
        image = _readable(path, "image")
        if image is None:
            return None
        label = torch.from_numpy(np.asarray(load_pseudo_label(self.store, name, self.min_confidence, self.ignore,
                                                              self.meta)).astype(np.int64))
        if tuple(image.shape[-2:]) != tuple(label.shape):
            from labelless.errors import DatasetError

            raise DatasetError(f"{path} is {tuple(image.shape[-2:])} but its pseudo-label in {self.store} is "
                               f"{tuple(label.shape)}: a store of other images?")
        g = sample_generator(seed)
        x, y = rescale(image, label, self.base * _uniform(g, *self.scale))
        x, y = random_crop(x, y, self.crop, self.ignore, g)
        if self.hflip and bool(torch.rand(1, generator=g) < 0.5):
            x, y = x.flip(-1), y.flip(-1)
        return {"image": photometric(x, self.color, self.hue, g), "label": y, "name": name}


def collate_labels(batch: list[dict | None]) -> dict:
    kept = [b for b in batch if b is not None]
    return {"image": torch.stack([b["image"] for b in kept]) if kept else torch.zeros(0, 3, 1, 1),
            "label": torch.stack([b["label"] for b in kept]) if kept else torch.zeros(0, 1, 1, dtype=torch.long),
            "name": [b["name"] for b in kept], "skipped": len(batch) - len(kept)}


def build_loader(dataset: Dataset, seed: int, num_workers: int, rank: int, world: int, micro_batch: int,
                 start_samples: int, pin: bool) -> DataLoader:
    """This rank's endless loader; ``start_samples``: the samples it already consumed."""
    sampler = SeededSampler(len(dataset), seed, rank, world, start=start_samples)
    return DataLoader(dataset, sampler=sampler, batch_size=micro_batch, num_workers=num_workers,
                      collate_fn=collate_labels, pin_memory=pin, persistent_workers=num_workers > 0,
                      generator=torch.Generator().manual_seed(seed))


def poly_factor(step: int, max_steps: int, warmup: int = 0, power: float = 1.0, end: float = 0.0) -> float:
    """Linear warmup over ``warmup`` steps, then ``(1 − t)^power`` down to ``end`` (mmseg's poly)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    t = min(max(step - warmup, 0) / max(max_steps - warmup, 1), 1.0)
    return end + (1.0 - end) * math.pow(1.0 - t, power)
