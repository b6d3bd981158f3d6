"""Pure helpers on class-agnostic masks.

Masks are ``N×H×W`` bool (numpy arrays or torch tensors; every function returns the
type it was given), images ``3×H×W`` uint8 torch tensors. ``N`` may be 0.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["resize_short_side", "sort_by_area", "cap_masks", "labels_to_masks", "masks_to_labels",
           "mask_areas", "short_side_size"]


def _check_masks(masks, what: str = "masks") -> None:
    if masks.ndim != 3:
        raise ValueError(f"{what} must be N×H×W, got shape {tuple(masks.shape)}")


def short_side_size(h: int, w: int, short: int) -> tuple[int, int]:
    """(H', W') with min(H', W') = ``short`` and the aspect ratio kept (rounded, ≥ 1)."""
    if short < 1:
        raise ValueError(f"short side must be >= 1, got {short}")
    scale = short / min(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def resize_short_side(image, masks, short: int | None):
    """Resize an image and its masks so that the short side is ``short`` (aspect kept).

    image: ``3×H×W`` uint8 tensor (or None) — bilinear, antialiased when shrinking,
    rounded back to uint8. masks: ``N×H×W`` bool (or None) — nearest neighbour
    (pixel-centre ``nearest-exact``, so a mask stays bool and is never blurred).
    ``short=None`` or an already matching size returns the inputs unchanged.
    Returns ``(image, masks)``.
    """
    if image is None and masks is None:
        raise ValueError("resize_short_side needs an image or masks")
    if masks is not None:
        _check_masks(masks)
    if image is not None and (image.ndim != 3 or image.shape[0] != 3):
        raise ValueError(f"image must be 3×H×W, got shape {tuple(image.shape)}")
    if image is not None and masks is not None and tuple(image.shape[-2:]) != tuple(masks.shape[-2:]):
        raise ValueError(f"image {tuple(image.shape[-2:])} and masks {tuple(masks.shape[-2:])} differ in size")
    if short is None:
        return image, masks
    h, w = (image if image is not None else masks).shape[-2:]
    size = short_side_size(int(h), int(w), int(short))
    if size == (h, w):
        return image, masks
    if image is not None:
        x = image.unsqueeze(0).float()
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False,
                          antialias=size[0] < h)
        image = x.round_().clamp_(0, 255).to(torch.uint8)[0]
    if masks is not None:
        is_np = isinstance(masks, np.ndarray)
        m = torch.from_numpy(np.ascontiguousarray(masks)) if is_np else masks
        if m.shape[0] == 0:
            out = torch.zeros((0, *size), dtype=torch.bool, device=m.device)
        else:
            out = F.interpolate(m[None].to(torch.uint8), size=size, mode="nearest-exact")[0].bool()
        masks = out.numpy() if is_np else out
    return image, masks


def mask_areas(masks) -> np.ndarray:
    """Pixel count of each mask: int64 array of length N."""
    _check_masks(masks)
    n, h, w = masks.shape
    if isinstance(masks, torch.Tensor):
        return masks.reshape(n, h * w).sum(1).cpu().numpy().astype(np.int64)
    return masks.reshape(n, h * w).sum(1).astype(np.int64)


def sort_by_area(masks, descending: bool = True, return_index: bool = False):
    """Masks ordered by pixel count (largest first by default; stable for ties).

    With ``return_index`` also returns the order (int64 array) so that scores or other
    per-mask data can follow: ``masks_sorted == masks[order]``.
    """
    areas = mask_areas(masks)
    order = np.argsort(-areas if descending else areas, kind="stable")
    out = masks[torch.from_numpy(order)] if isinstance(masks, torch.Tensor) else masks[order]
    return (out, order) if return_index else out


def cap_masks(masks, n: int | None):
    """The first ``n`` masks (all when ``n`` is None)."""
    _check_masks(masks)
    if n is None:
        return masks
    if n < 0:
        raise ValueError(f"max masks must be >= 0, got {n}")
    return masks[:n]


def labels_to_masks(label_map, ignore=None):
    """One bool mask per id present in an ``H×W`` integer map, ids ascending.

    ``ignore``: an id or a collection of ids that get no mask (e.g. 255).
    Returns ``N×H×W`` bool (a partition of the non-ignored pixels).
    """
    is_t = isinstance(label_map, torch.Tensor)
    lab = label_map.cpu().numpy() if is_t else np.asarray(label_map)
    if lab.ndim != 2:
        raise ValueError(f"label map must be H×W, got shape {lab.shape}")
    if lab.dtype.kind not in "iub":
        raise ValueError(f"label map must hold integers, got dtype {lab.dtype}")
    ids = np.unique(lab)
    if ignore is not None:
        drop = [ignore] if np.isscalar(ignore) else list(ignore)
        ids = ids[~np.isin(ids, np.asarray(drop, dtype=np.int64))]
    out = lab[None] == ids.reshape(-1, 1, 1)
    return torch.from_numpy(out).to(label_map.device) if is_t else out


def masks_to_labels(masks):
    """``H×W`` int64 map: index of the first mask covering each pixel, -1 where none does."""
    _check_masks(masks)
    if isinstance(masks, torch.Tensor):
        if masks.shape[0] == 0:
            return torch.full(tuple(masks.shape[1:]), -1, dtype=torch.int64, device=masks.device)
        m = masks.to(torch.uint8)
        idx = m.argmax(0)  # first maximal value
        return torch.where(m.any(0).bool(), idx, torch.full_like(idx, -1))
    if masks.shape[0] == 0:
        return np.full(masks.shape[1:], -1, dtype=np.int64)
    m = masks.astype(bool, copy=False)
    idx = m.argmax(0).astype(np.int64)
    idx[~m.any(0)] = -1
    return idx
