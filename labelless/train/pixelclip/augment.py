"""PixelCLIP data augmentation: one image + its masks → weak and strong views.

Per sample (all randomness from a ``torch.Generator``; draws happen in a fixed order
whatever the options, so the same seed gives the same crop with or without colour
augmentation):

1. resize (PIL bilinear) so the short side is ``short_side`` (1024), the long side at
   most ``max_size`` (1333);
2. random crop ``crop_size``×``crop_size`` (640; the whole side when smaller);
3. SSD-style photometric jitter (brightness ±32 of 255, contrast ×[0.5, 1.5], saturation
   ×[0.5, 1.5] in HSV, hue ±18/180 of a turn, each with p = 0.5, contrast first or last);
4. horizontal flip with p = 0.5 → the WEAK view (teacher input);
5. STRONG view (student input) = weak view + ColorJitter(0.5, 0.5, 0.5, 0.25) with
   p = 0.8, grayscale with p = 0.2, Gaussian blur σ ∈ [0.1, 2] with p = 0.5, and one
   black cutout box of 10–50 % of each side; the box is removed from the masks;
6. both views resized bilinearly to ``clip_size`` (the CLIP resolution); masks sampled
   at ``mask_size`` (the clustering resolution) by nearest neighbour.

Geometry is exact: output mask pixel (i, j) takes the original mask pixel that contains
the centre of output pixel (i, j) mapped back through flip, crop and resize; the images
are bilinearly resampled at the same centres (``align_corners=False``). Masks are never
resized at the 1024 scale (only the sampled pixels are read), so many large masks stay
cheap.

What follows the official code (cvlab-kaist/PixelCLIP @ 42f5c9c,
``pixelclip/data/dataset_mappers/sa1b_dataset_mapper.py`` and ``configs/pixelclip_vit_base.yaml``):
- detectron2 ``ResizeShortestEdge(1024, max_size=1333)`` (``MAX_SIZE_TRAIN`` is not set in
  the config, so detectron2's default 1333 applies) with its rounding ``int(x + 0.5)``;
  ``RandomCrop`` "absolute" 640; ``ColorAugSSDTransform`` (detectron2 PointRend); ``RandomFlip``
  (horizontal, p = 0.5), in this order;
- the strong view is built from the weak (augmented) image: ``ColorJitter(0.5, 0.5, 0.5,
  0.25)`` with p = 0.8, ``RandomGrayscale(0.2)``, PIL ``GaussianBlur(radius=σ)`` with p = 0.5,
  then ``cutout`` (always, box inside the image, filled black) whose box is removed from
  the masks (``gt_masks & ~box``);
- the model resizes both views bilinearly (``align_corners=False``) to the CLIP
  resolution and the masks by nearest neighbour to 256.
Differences (documented choices): colour operations run on uint8 RGB with PIL, like
the official strong branch (torchvision ``ColorJitter`` on PIL, PIL blur); the SSD
saturation/hue use PIL's HSV (hue in 1/256 of a turn, the shift ±18/180 of a turn
rounded) instead of OpenCV's; the cutout box is ``int(H·u₁)`` high and ``int(W·u₂)`` wide
at a uniform position inside the crop (the official code swaps height and width, the
same for square crops, and centres the box with a one-pixel offset); masks are sampled
by pixel centres ("nearest-exact") rather than by two chained nearest resizes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image, ImageFilter


@dataclass
class AugmentConfig:
    """Sizes and switches of the augmentation (paper values as defaults, ViT-B/16)."""

    short_side: int = 1024  # resize short side to this
    max_size: int = 1333  # ... unless the long side would exceed this (detectron2 default)
    crop_size: int = 640  # random square crop
    clip_size: int = 320  # output image side (CLIP resolution: 320 ViT-B/16, 640 ConvNeXt-B)
    mask_size: int = 256  # output mask side
    ssd_jitter: bool = True
    hflip: bool = True
    strong: bool = True  # colour jitter / grayscale / blur on the student's view
    cutout: bool = True  # one black box on the student's view, removed from the masks
    cutout_min: float = 0.1  # box side as a fraction of the crop side, range
    cutout_max: float = 0.5


# ----------------------------------------------------------------------------- random draws
def _rand(g: torch.Generator) -> float:
    return float(torch.rand((), generator=g))


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * _rand(g)


def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    """Uniform integer in [lo, hi] (inclusive)."""
    return int(torch.randint(lo, hi + 1, (), generator=g))


def resized_shape(h: int, w: int, short_side: int, max_size: int | None) -> tuple[int, int]:
    """detectron2 ``ResizeShortestEdge.get_output_shape``."""
    scale = short_side / min(h, w)
    newh, neww = (short_side, scale * w) if h < w else (scale * h, short_side)
    if max_size is not None and max(newh, neww) > max_size:
        s = max_size / max(newh, neww)
        newh, neww = newh * s, neww * s
    return int(newh + 0.5), int(neww + 0.5)


def draw_params(g: torch.Generator, h: int, w: int, cfg: AugmentConfig) -> dict:
    """All random choices for one sample, in a fixed order (geometry first)."""
    h1, w1 = resized_shape(h, w, cfg.short_side, cfg.max_size)
    ch, cw = min(h1, cfg.crop_size), min(w1, cfg.crop_size)
    p = {"orig": (h, w), "resized": (h1, w1), "crop": (_randint(g, 0, h1 - ch), _randint(g, 0, w1 - cw), ch, cw)}
    p["flip"] = _rand(g) < 0.5
    # SSD jitter: brightness, order, contrast, saturation, hue (each: apply?, value)
    p["ssd"] = {
        "brightness": (_rand(g) < 0.5, _uniform(g, -32.0, 32.0)),  # added to 0..255 values
        "contrast_first": _rand(g) < 0.5,
        "contrast": (_rand(g) < 0.5, _uniform(g, 0.5, 1.5)),
        "saturation": (_rand(g) < 0.5, _uniform(g, 0.5, 1.5)),
        "hue": (_rand(g) < 0.5, _randint(g, -18, 18)),  # OpenCV hue units: 1/180 of a turn
    }
    # strong: ColorJitter(0.5, 0.5, 0.5, 0.25) p=.8 (torchvision order: random permutation)
    p["jitter"] = (_rand(g) < 0.8, torch.randperm(4, generator=g).tolist(),
                   _uniform(g, 0.5, 1.5), _uniform(g, 0.5, 1.5), _uniform(g, 0.5, 1.5), _uniform(g, -0.25, 0.25))
    p["gray"] = _rand(g) < 0.2
    p["blur"] = (_rand(g) < 0.5, _uniform(g, 0.1, 2.0))
    bh = int(ch * _uniform(g, cfg.cutout_min, cfg.cutout_max))
    bw = int(cw * _uniform(g, cfg.cutout_min, cfg.cutout_max))
    p["cutout"] = (_randint(g, 0, ch - bh), _randint(g, 0, cw - bw), bh, bw)  # top, left, h, w (after flip)
    return p


# ----------------------------------------------------------------------------- colour
def _convert(img: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """``ColorAugSSDTransform.convert``: ``uint8(clip(img·alpha + beta, 0, 255))``."""
    return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def _hsv_channel(img: np.ndarray, channel: int, fn) -> np.ndarray:
    """Apply ``fn`` to one channel of the PIL HSV image of RGB uint8 ``img`` (H×W×3)."""
    hsv = np.array(Image.fromarray(img).convert("HSV"))
    hsv[..., channel] = fn(hsv[..., channel])
    return np.asarray(Image.fromarray(hsv, "HSV").convert("RGB"))


def ssd_jitter(img: np.ndarray, params: dict) -> np.ndarray:
    """detectron2 ``ColorAugSSDTransform`` on an RGB uint8 ``H×W×3`` image.

    ``params``: brightness (on, β added to 0..255 values), contrast/saturation (on, α),
    hue (on, δ in OpenCV units of 1/180 turn), contrast_first. HSV via PIL (hue in
    1/256 of a turn, so δ becomes round(δ·256/180)).
    """
    on, beta = params["brightness"]
    if on:
        img = _convert(img, beta=beta)

    def contrast(x):
        on, alpha = params["contrast"]
        return _convert(x, alpha=alpha) if on else x

    def sat_hue(x):
        on, alpha = params["saturation"]
        if on:
            x = _hsv_channel(x, 1, lambda c: _convert(c, alpha=alpha))
        on, delta = params["hue"]
        if on:
            step = int(round(delta * 256 / 180))  # PIL hue units: 1/256 of a turn
            x = _hsv_channel(x, 0, lambda c: ((c.astype(np.int32) + step) % 256).astype(np.uint8))
        return x

    return sat_hue(contrast(img)) if params["contrast_first"] else contrast(sat_hue(img))


def strong_colour(img: np.ndarray, p: dict) -> np.ndarray:
    """On RGB uint8 ``H×W×3``: ColorJitter(0.5, 0.5, 0.5, 0.25) p=0.8 → grayscale p=0.2 →
    Gaussian blur σ ∈ [0.1, 2] p=0.5, with PIL as torchvision and the official code do."""
    pil = Image.fromarray(img)
    on, order, b, c, s, h = p["jitter"]
    if on:
        for fn in order:
            if fn == 0:
                pil = TF.adjust_brightness(pil, b)
            elif fn == 1:
                pil = TF.adjust_contrast(pil, c)
            elif fn == 2:
                pil = TF.adjust_saturation(pil, s)
            else:
                pil = TF.adjust_hue(pil, h)
    if p["gray"]:
        pil = pil.convert("L").convert("RGB")
    on, sigma = p["blur"]
    if on:
        pil = pil.filter(ImageFilter.GaussianBlur(radius=sigma))
    return np.asarray(pil)


# ----------------------------------------------------------------------------- geometry
def source_index(n_out: int, crop_len: int, offset: int, resized_len: int, orig_len: int,
                 flip: bool = False) -> torch.Tensor:
    """Original pixel index under the centre of each of ``n_out`` output pixels.

    Output pixel i covers crop coordinates [i, i+1)·crop_len/n_out (flipped: mirrored in
    the crop); the crop starts at ``offset`` in the resized image, which maps to the
    original by the factor ``orig_len / resized_len``.
    """
    centres = (torch.arange(n_out, dtype=torch.float64) + 0.5) * crop_len / n_out
    if flip:
        centres = crop_len - centres
    src = (offset + centres) * orig_len / resized_len
    return src.floor().long().clamp(0, orig_len - 1)


def box_rows(n_out: int, crop_len: int, start: int, length: int) -> torch.Tensor:
    """Bool ``n_out``: output pixels whose centre lies in crop pixels [start, start+length)."""
    centres = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * crop_len / n_out).floor()
    return (centres >= start) & (centres < start + length)


def _to_float(img: np.ndarray) -> torch.Tensor:
    """RGB uint8 ``H×W×3`` → float ``3×H×W`` in [0, 1]."""
    return torch.from_numpy(np.array(img, copy=True)).permute(2, 0, 1).float() / 255.0


def _resize(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear, ``align_corners=False``, no antialias (the official model's ``F.interpolate``)."""
    if tuple(img.shape[-2:]) == tuple(size):
        return img
    return F.interpolate(img[None], size=size, mode="bilinear", align_corners=False)[0]


def augment(image: torch.Tensor, masks: torch.Tensor, generator: torch.Generator,
            cfg: AugmentConfig | None = None) -> dict:
    """Weak and strong views of one sample.

    Args:
        image: ``3×H×W`` uint8 (or float in [0, 1]).
        masks: ``N×H×W`` bool.
        generator: the only source of randomness.
        cfg: sizes and switches.

    Returns:
        ``image_weak``, ``image_strong``: float ``3×S×S`` in [0, 1] (S = clip_size);
        ``masks``: bool ``N×m×m`` (m = mask_size; cutout removed when enabled);
        ``valid``: bool ``N`` (at least 2 pixels left, the official ``sum > 1``);
        ``params``: the random choices (for tests and debugging).
    """
    cfg = cfg or AugmentConfig()
    h, w = image.shape[-2:]
    if masks.shape[-2:] != (h, w):
        raise ValueError(f"masks {tuple(masks.shape[-2:])} and image {(h, w)} differ in size")
    p = draw_params(generator, h, w, cfg)
    h1, w1 = p["resized"]
    y1, x1, ch, cw = p["crop"]
    flip = cfg.hflip and p["flip"]

    if image.dtype != torch.uint8:
        image = (image.float().clamp(0, 1) * 255).round().to(torch.uint8)
    img = image.permute(1, 2, 0).contiguous().numpy()  # H×W×3 uint8
    if (h1, w1) != (h, w):
        img = np.asarray(Image.fromarray(img).resize((w1, h1), Image.BILINEAR))
    img = img[y1:y1 + ch, x1:x1 + cw]
    if cfg.ssd_jitter:
        img = ssd_jitter(img, p["ssd"])
    if flip:
        img = img[:, ::-1]
    weak = np.ascontiguousarray(img)
    strong = strong_colour(weak, p) if cfg.strong else weak
    strong = np.array(strong)  # writable copy

    m = cfg.mask_size
    rows = source_index(m, ch, y1, h1, h)
    cols = source_index(m, cw, x1, w1, w, flip=flip)
    out_masks = masks[:, rows][:, :, cols]  # N×m×m
    if cfg.cutout:
        top, left, bh, bw = p["cutout"]
        strong[top:top + bh, left:left + bw] = 0
        box = box_rows(m, ch, top, bh)[:, None] & box_rows(m, cw, left, bw)[None, :]
        out_masks = out_masks & ~box

    s = (cfg.clip_size, cfg.clip_size)
    return {
        "image_weak": _resize(_to_float(weak), s),
        "image_strong": _resize(_to_float(strong), s),
        "masks": out_masks,
        "valid": out_masks.flatten(1).sum(-1) >= 2,
        "params": p,
    }


def collate(samples: list[dict]) -> dict:
    """Stack views and pad masks to the batch's largest mask count.

    Returns ``image_weak``, ``image_strong`` ``B×3×S×S``; ``masks`` bool ``B×M×m×m``;
    ``valid`` bool ``B×M`` (False for padding); other keys as lists.
    """
    b = len(samples)
    n = max([s["masks"].shape[0] for s in samples] + [0])
    msize = samples[0]["masks"].shape[-2:]
    masks = torch.zeros(b, n, *msize, dtype=torch.bool)
    valid = torch.zeros(b, n, dtype=torch.bool)
    for i, s in enumerate(samples):
        k = s["masks"].shape[0]
        masks[i, :k] = s["masks"]
        valid[i, :k] = s["valid"] if "valid" in s else True
    out = {"image_weak": torch.stack([s["image_weak"] for s in samples]),
           "image_strong": torch.stack([s["image_strong"] for s in samples]),
           "masks": masks, "valid": valid}
    for key in samples[0]:
        if key not in out:
            out[key] = [s.get(key) for s in samples]
    return out
