"""Masks and dense features: resize masks to a working resolution, pool features inside
masks. Pure functions on tensors, used by PixelCLIP's clustering, mask-level refinement
and analysis code (e.g. a model's scores averaged inside unlabeled masks).

What follows the official PixelCLIP code (cvlab-kaist/PixelCLIP @ 42f5c9c,
``PixelCLIP.prepare_clusters``): masks are resized with ``F.interpolate(mode="nearest")``
and kept when they hold more than one pixel (``sum > 1``); features are upsampled with
``F.interpolate(mode="bilinear", align_corners=False)`` and pooled with weights
``mask / mask.sum()`` (a plain mean), without normalising the features first.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def prepare_masks(masks: torch.Tensor, valid: torch.Tensor, size: int | tuple[int, int],
                  min_pixels: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest-resize masks to ``size`` and drop the ones that nearly vanish.

    Args:
        masks: ``B×M×H×W`` bool.
        valid: ``B×M`` bool (False for padding).
        size: output side, or (height, width).
        min_pixels: a mask is kept when it holds at least this many pixels after
            resizing (2: the official ``sum > 1``).

    Returns:
        masks ``B×M×h×w`` bool (invalid ones zeroed), valid ``B×M`` bool.
    """
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(masks.shape[-2:]) != size:
        if masks.shape[0] * masks.shape[1] == 0:
            masks = masks.new_zeros(*masks.shape[:2], *size)
        else:
            masks = F.interpolate(masks.to(torch.uint8), size=size, mode="nearest").bool()
    valid = valid & (masks.flatten(2).sum(-1) >= min_pixels)
    masks = masks & valid[..., None, None]
    return masks, valid


def mask_pool(features: torch.Tensor, masks: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Average features inside every mask.

    Args:
        features: ``B×C×h×w`` dense features (any scale, not normalised).
        masks: ``B×M×H×W`` bool; features are upsampled bilinearly to ``H×W`` first.
        valid: ``B×M`` bool.

    Returns:
        ``B×M×C`` mean feature of every mask (zeros for invalid or empty masks).
    """
    b, m, h, w = masks.shape
    out = features.new_zeros(b, m, features.shape[1])
    for i in range(b):  # one image at a time: the upsampled C×H×W map and M×HW masks stay small
        feats = F.interpolate(features[i:i + 1], size=(h, w), mode="bilinear", align_corners=False)
        feats = feats[0].flatten(1)  # C×HW
        weights = (masks[i] & valid[i, :, None, None]).flatten(1).to(feats.dtype)  # M×HW
        area = weights.sum(-1, keepdim=True).clamp(min=1)
        out[i] = (weights @ feats.T) / area  # M×C
    return out
