"""Label maps as files and pictures: index PNGs, colour overlays with a legend."""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np

from labelless.fileio import atomic_path


def palette(n: int) -> np.ndarray:
    """``n×3`` uint8 colours, well spread in hue (golden-ratio steps), deterministic."""
    cols = []
    for i in range(n):
        h = (i * 0.618033988749895) % 1.0
        s = 0.65 + 0.35 * ((i // 7) % 2)
        v = 0.95 - 0.35 * ((i // 3) % 2)
        cols.append([round(c * 255) for c in colorsys.hsv_to_rgb(h, s, v)])
    return np.array(cols, dtype=np.uint8).reshape(n, 3)


def _atomic_save(img, path: Path) -> Path:
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return path


def save_index_png(labels, path, num_classes: int | None = None) -> Path:
    """Save an ``H×W`` label map as a single-channel PNG: 8-bit with a palette when the
    values fit (< 256), else 16-bit grey. Pixel value = class index."""
    from PIL import Image

    arr = np.asarray(labels.cpu() if hasattr(labels, "cpu") else labels).astype(np.int64)
    top = int(arr.max(initial=0))
    if top < 256 and (num_classes is None or num_classes <= 256):
        img = Image.fromarray(arr.astype(np.uint8), mode="P")
        pal = np.zeros((256, 3), dtype=np.uint8)
        pal[: min(256, num_classes or 256)] = palette(min(256, num_classes or 256))
        img.putpalette(pal.flatten().tolist())
    else:
        img = Image.fromarray(arr.astype(np.uint16))
    return _atomic_save(img, Path(path))


def _blend(img: np.ndarray, lab: np.ndarray, cols: np.ndarray, alpha: float, rows: int = 512):
    """``H×W×3`` uint8 image blended with the colours of the valid labels, in bands of
    ``rows`` rows (memory bounded by the band, not by the photo), and the pixel count of
    every class."""
    out = np.empty(img.shape, dtype=np.uint8)
    counts = np.zeros(len(cols), dtype=np.int64)
    for y in range(0, img.shape[0], rows):
        im, lb = img[y:y + rows], lab[y:y + rows]
        valid = (lb >= 0) & (lb < len(cols))
        colour = np.zeros_like(im)
        colour[valid] = cols[lb[valid]]
        band = im.astype(np.float32)
        band[valid] = (1 - alpha) * band[valid] + alpha * colour[valid]
        out[y:y + rows] = band.round().clip(0, 255).astype(np.uint8)
        counts += np.bincount(lb[valid], minlength=len(cols))[: len(cols)]
    return out, counts


def overlay(image, labels, names: list[str], alpha: float = 0.5):
    """Blend an RGB image (``H×W×3`` or ``3×H×W`` uint8) with its label colours and add a
    legend of the classes present on the right. Returns a PIL image."""
    from PIL import Image, ImageDraw, ImageFont

    img = np.asarray(image.cpu() if hasattr(image, "cpu") else image)
    if img.ndim == 3 and img.shape[0] == 3 and img.shape[-1] != 3:
        img = img.transpose(1, 2, 0)
    lab = np.asarray(labels.cpu() if hasattr(labels, "cpu") else labels).astype(np.int64, copy=False)
    cols = palette(len(names))
    blended, counts = _blend(img, lab, cols, alpha)
    base = Image.fromarray(blended)

    present = [int(c) for c in np.flatnonzero(counts)]
    font = ImageFont.load_default()
    row = 16
    width = 12 + 8 + max([int(font.getlength(names[c])) for c in present] or [40]) + 12
    h = max(base.height, row * len(present) + 8)
    canvas = Image.new("RGB", (base.width + width, h), (255, 255, 255))
    canvas.paste(base, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, c in enumerate(present):
        y = 4 + i * row
        x = base.width + 6
        draw.rectangle([x, y, x + 12, y + 12], fill=tuple(int(v) for v in cols[c]), outline=(0, 0, 0))
        draw.text((x + 18, y), names[c], fill=(0, 0, 0), font=font)
    return canvas


def save_overlay(image, labels, names: list[str], path) -> Path:
    return _atomic_save(overlay(image, labels, names), Path(path))
