"""Unlabeled masks computed on the fly, for a batch of images on the accelerator
(PixelCLIP's DINO-mask mode, S-Seg's pseudo-masks): DINO / DINOv2 patch k-means
(``masks/dino.py``) padded into one batch tensor."""

from __future__ import annotations

import torch


@torch.no_grad()
def padded_kmeans_masks(backbone, images: torch.Tensor, k: int, size: int | None = None, seed: int = 0,
                        cosine: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """DINO k-means masks of every image of a batch, padded to the largest count.

    Args:
        backbone: ``masks.dino.load_dino(...)``.
        images: ``B×3×H×W`` uint8 on the backbone's device.
        k: clusters per image (empty clusters give no mask, so an image may have fewer).
        size: DINO input side (None: the image side floored to the patch size).

    Returns:
        masks ``B×N×H×W`` bool (N = most masks of any image), valid ``B×N`` bool.
    """
    from labelless.masks.dino import dino_kmeans_masks

    found = dino_kmeans_masks(backbone, images, k, size=size, seed=seed, cosine=cosine)
    n = max([m.shape[0] for m in found] + [0])
    masks = torch.zeros(len(found), n, *images.shape[-2:], dtype=torch.bool, device=images.device)
    valid = torch.zeros(len(found), n, dtype=torch.bool, device=images.device)
    for i, m in enumerate(found):
        masks[i, : m.shape[0]] = m.to(images.device)
        valid[i, : m.shape[0]] = True
    return masks, valid
