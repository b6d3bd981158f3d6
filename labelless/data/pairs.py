"""Image-caption pairs for contrastive training (``train clip``, ``train sseg``).

- a captions file: JSON lines (``{"image": path, "caption": text}`` or ``"captions": [...]``,
  one picked per sample), or a CSV / TSV with an image column and a caption column
  (img2dataset's input format, with local paths); images randomly crop-resized;
- a labelled benchmark (any ``labelless`` dataset, CamVid included): each sample is a
  random crop of an image, and its caption names the classes present in the crop,
  largest first: ``"a photo of road and car"``, ``"a photo of sky, building and tree"``.
  Crops make the captions vary from sample to sample;
- webdataset tar shards as img2dataset writes them (``data/shards.py``).

Items are ``(index, seed)`` pairs (``train.common.SeededSampler``): all of a sample's
randomness comes from its seed, so a resumed run sees the same samples. An unreadable
image gives ``None`` (reported once by name); ``collate_pairs`` leaves it out and counts it.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from labelless.errors import ConfigError, DatasetError, ImageError, MissingFileError
from labelless.io import load_image


def sample_generator(seed: int) -> torch.Generator:
    """A CPU generator for one sample's augmentation."""
    g = torch.Generator()
    g.manual_seed(int(seed) % (2**63 - 1))
    return g

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
                       max_names: int | None = None, order: str = "area") -> str | None:
    """The caption of a label map: the (up to ``max_names`` largest) classes present, in
    ``template``, named largest first (``order="area"``) or in class order (``"class"``: the
    same set of classes always gives the same caption, so it is never a negative of itself).
    A class written with synonyms ("person, people") is named by its first synonym.
    ``None`` when no class is present."""
    ids = classes_present(label, len(classes), ignore_index, min_fraction)
    if max_names:
        ids = ids[:max_names]
    if order == "class":
        ids = sorted(ids)
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
    ``{"image": float 3×S×S in [0, 1], "caption": str, "name", "box": (top, left, h, w), "flip"}``
    (None when the image cannot be read). Up to 10 crops are tried for one that shows a
    class; failing that the whole image is used.
    """

    def __init__(self, bench, size: int, crops_per_image: int = 4, scale: tuple[float, float] = (0.2, 1.0),
                 template: str = "a photo of {}", min_fraction: float = 0.02, max_names: int | None = 3,
                 hflip: bool = True, order: str = "area"):
        self.bench, self.size, self.crops = bench, size, max(1, crops_per_image)
        self.scale, self.template = scale, template
        self.min_fraction, self.max_names, self.hflip, self.order = min_fraction, max_names, hflip, order
        self.samples = [s for s in bench.samples if s.label is not None]
        if not self.samples:
            raise DatasetError(f"{bench.name}: no labelled samples to build captions from")

    def __len__(self) -> int:
        return len(self.samples) * self.crops

    def caption(self, label: np.ndarray) -> str | None:
        return caption_for_labels(label, self.bench.classes, self.bench.ignore_index, self.template,
                                  self.min_fraction, self.max_names, self.order)

    def __getitem__(self, item) -> dict:
        index, seed = item if isinstance(item, tuple) else (item, item)
        g = sample_generator(seed)
        sample = self.samples[index // self.crops]
        image = _readable(sample.image, "image")
        if image is None:
            return None
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
        flip = self.hflip and bool(torch.rand(1, generator=g) < 0.5)  # no left/right in class names
        return {"image": crop.flip(-1) if flip else crop, "caption": caption, "name": sample.name, "box": box,
                "flip": flip}


def _read_caption_rows(path: Path, image_column: str, caption_column: str) -> list[tuple[str, list[str]]]:
    """(image, captions) rows of a JSON-lines, CSV or TSV file (by suffix); ConfigError naming
    the line that cannot be read."""
    import csv

    rows = []
    if path.suffix.lower() in (".csv", ".tsv"):
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            missing = {image_column, caption_column} - set(reader.fieldnames or [])
            if missing:
                raise ConfigError(f"{path}: no column {', '.join(sorted(missing))} (columns: {reader.fieldnames})")
            for row in reader:
                rows.append((row[image_column], [row[caption_column]]))
        return rows
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            caps = rec["captions"] if "captions" in rec else [rec[caption_column]]
            rows.append((str(rec[image_column]), [str(c) for c in caps]))
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"{path}:{n}: expected {{\"{image_column}\": ..., \"{caption_column}\": ...}} "
                              f"({type(e).__name__}: {e})") from e
    return rows


def _readable(path, what: str) -> torch.Tensor | None:
    """The image, or None (reported once) when it cannot be read: a long run keeps going."""
    try:
        return load_image(path)
    except ImageError as e:
        warnings.warn(f"skipped {what}: {e}", stacklevel=3)
        return None


class CaptionFileDataset(Dataset):
    """Images with captions from a JSON-lines / CSV / TSV file; random crop-resize, optional
    flip. Item ``(index, seed)`` → ``{"image", "caption", "name", "box", "flip"}`` or None
    (unreadable image)."""

    def __init__(self, captions: str | Path, images_root: str | Path | None, size: int,
                 scale: tuple[float, float] = (0.5, 1.0), hflip: bool = False, image_column: str = "image",
                 caption_column: str = "caption"):
        path = Path(captions)
        if not path.is_file():
            raise MissingFileError(f"captions file not found: {path}")
        base = Path(images_root) if images_root else path.parent
        self.items = []
        for n, (image, caps) in enumerate(_read_caption_rows(path, image_column, caption_column), 1):
            caps = [c for c in caps if c.strip()]
            if not caps:
                raise ConfigError(f"{path}: row {n} ({image}) has no caption")
            image = Path(image)
            self.items.append((image if image.is_absolute() else base / image, caps))
        if not self.items:
            raise ConfigError(f"{path} holds no image-caption pairs")
        self.size, self.scale, self.hflip = size, scale, hflip

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, item) -> dict | None:
        index, seed = item if isinstance(item, tuple) else (item, item)
        path, caps = self.items[index]
        image = _readable(path, "image")
        if image is None:
            return None
        return crop_pair(image, caps, seed, path.stem, self.size, self.scale, self.hflip)


def crop_pair(image: torch.Tensor, captions, seed: int, name: str, size: int,
              scale: tuple[float, float] = (0.5, 1.0), hflip: bool = False) -> dict:
    """One training pair: a random crop of ``image`` (uint8 3×H×W) resized to ``size``, maybe
    flipped, and one of ``captions`` (a string or a list), all drawn from ``seed``.
    Returns ``{"image": float 3×S×S in [0, 1], "caption", "name", "box": (top, left, h, w), "flip"}``."""
    g = sample_generator(seed)
    caps = [captions] if isinstance(captions, str) else list(captions)
    box = random_crop_box(image.shape[1], image.shape[2], scale, g)
    top, left, ch, cw = box
    crop = _resize(image[:, top:top + ch, left:left + cw], size)
    flip = hflip and bool(torch.rand(1, generator=g) < 0.5)
    caption = caps[int(torch.randint(0, len(caps), (1,), generator=g))]
    return {"image": crop.flip(-1) if flip else crop, "caption": caption, "name": name, "box": box, "flip": flip}


def collate_pairs(batch: list[dict | None]) -> dict:
    """Stack a batch, leaving out unreadable samples (None): ``skipped`` counts them."""
    kept = [b for b in batch if b is not None]
    out = {"image": torch.stack([b["image"] for b in kept]) if kept else torch.zeros(0, 3, 1, 1),
           "caption": [b["caption"] for b in kept], "skipped": len(batch) - len(kept)}
    for key in ("name", "box", "flip"):
        if kept and key in kept[0]:
            out[key] = [b[key] for b in kept]
    return out


def build_pairs(cfg, size: int) -> Dataset:
    """The map-style pairs a run config names (``train clip``, ``train sseg``: the same keys):
    ``data=benchmark`` → captioned crops of a labelled dataset, else a captions file."""
    scale = (cfg.crop_scale_min, cfg.crop_scale_max)
    if cfg.data == "benchmark":
        from labelless.data.benchmarks import load_benchmark

        bench = load_benchmark(cfg.dataset, cfg.data_root, cfg.split, cfg.layout)
        return LabelledCaptionDataset(bench, size, cfg.crops_per_image, scale, cfg.caption_template,
                                      cfg.min_class_fraction, cfg.max_names, cfg.hflip, cfg.caption_order)
    return CaptionFileDataset(cfg.captions, cfg.images_root, size, scale, cfg.hflip, cfg.image_column,
                              cfg.caption_column)
