"""Image-caption pairs for plain CLIP training (``labelless train clip``).

- a JSON-lines file (``{"image": path, "caption": text}`` or ``"captions": [...]``, one
  picked per sample), images randomly crop-resized; or
- a labelled benchmark (any ``labelless`` dataset, CamVid included): each sample is a
  random crop of an image, and its caption names the classes present in the crop,
  largest first: ``"a photo of road and car"``, ``"a photo of sky, building and tree"``.
  Crops make the captions vary from sample to sample.

Items are ``(index, seed)`` pairs (``common.SeededSampler``): all of a sample's
randomness comes from its seed, so a resumed run sees the same samples.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from labelless.errors import ConfigError, DatasetError, MissingFileError
from labelless.io import load_image
from labelless.train.clip.config import ClipConfig
from labelless.train.common import sample_generator

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
            raise DatasetError(f"{bench.name}: no labelled samples to build captions from")

    def __len__(self) -> int:
        return len(self.samples) * self.crops

    def caption(self, label: np.ndarray) -> str | None:
        return caption_for_labels(label, self.bench.classes, self.bench.ignore_index, self.template,
                                  self.min_fraction, self.max_names)

    def __getitem__(self, item) -> dict:
        index, seed = item if isinstance(item, tuple) else (item, item)
        g = sample_generator(seed)
        sample = self.samples[index // self.crops]
        image = load_image(sample.image)
        label = self.bench.load_label(sample)
        h, w = label.shape
        if tuple(image.shape[-2:]) != (h, w):
            raise DatasetError(f"{sample.image} is {tuple(image.shape[-2:])} but its label {sample.label} is {(h, w)}")
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
            raise MissingFileError(f"captions file not found: {path}")
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
                raise ConfigError(f"{path}:{n}: expected {{\"image\": ..., \"caption\": ...}} ({e})") from e
            caps = [str(c) for c in caps if str(c).strip()]
            if not caps:
                raise ConfigError(f"{path}:{n}: no caption")
            self.items.append((image if image.is_absolute() else base / image, caps))
        if not self.items:
            raise ConfigError(f"{path} holds no image-caption pairs")
        self.size, self.scale, self.hflip = size, scale, hflip

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, item) -> dict:
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


def build_dataset(cfg: ClipConfig, size: int) -> Dataset:
    scale = (cfg.crop_scale_min, cfg.crop_scale_max)
    if cfg.data == "benchmark":
        from labelless.data.benchmarks import load_benchmark

        bench = load_benchmark(cfg.dataset, cfg.data_root, cfg.split, cfg.layout)
        return LabelledCaptionDataset(bench, size, cfg.crops_per_image, scale, cfg.caption_template,
                                      cfg.min_class_fraction, cfg.max_names, cfg.hflip)
    return CaptionFileDataset(cfg.captions, cfg.images_root, size, scale, cfg.hflip)
