"""Classical (learning-free) mask baselines: Felzenszwalb graph segments, SLIC superpixels
and k-means on raw pixel colours. Each returns a partition of the image: ``N×H×W`` bool
numpy masks, every pixel in exactly one mask, in ascending segment id order.

``image``: a ``3×H×W`` uint8 tensor (labelless convention) or an ``H×W×3`` uint8 array.
Needs scikit-image (``pip install 'labelless[masks]'``).
"""

from __future__ import annotations

import numpy as np
import torch

from labelless.errors import SettingError, require
from labelless.masks.ops import labels_to_masks

__all__ = ["felzenszwalb_masks", "slic_masks", "rgb_kmeans_masks", "kmeans_numpy"]


def _hwc(image) -> np.ndarray:
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"image tensor must be 3×H×W, got shape {tuple(image.shape)}")
        arr = image.detach().cpu().permute(1, 2, 0).numpy()
    else:
        arr = np.asarray(image)
        if arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(f"image array must be H×W×3, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {arr.dtype}")
    return np.ascontiguousarray(arr)


def _skimage_segmentation():
    return require("skimage.segmentation", "classical masks (felzenszwalb, slic)")


def felzenszwalb_masks(image, scale: float = 100.0, sigma: float = 0.8, min_size: int = 50) -> np.ndarray:
    """Felzenszwalb–Huttenlocher graph segmentation (skimage): larger ``scale`` → larger segments,
    ``sigma`` Gaussian pre-smoothing, ``min_size`` smallest segment in pixels."""
    labels = _skimage_segmentation().felzenszwalb(_hwc(image), scale=scale, sigma=sigma,
                                                  min_size=min_size, channel_axis=-1)
    return labels_to_masks(labels)


def slic_masks(image, n_segments: int = 100, compactness: float = 10.0, sigma: float = 0.0) -> np.ndarray:
    """SLIC superpixels (skimage, Lab k-means in colour + xy, connectivity enforced):
    about ``n_segments`` segments; larger ``compactness`` → squarer superpixels."""
    labels = _skimage_segmentation().slic(_hwc(image), n_segments=n_segments, compactness=compactness,
                                          sigma=sigma, start_label=0, channel_axis=-1)
    return labels_to_masks(labels)


def kmeans_numpy(x: np.ndarray, k: int, seed: int = 0, iters: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """k-means on ``N×C`` float rows, k-means++ initialisation, seeded; an empty cluster is
    re-seeded at the point farthest from its centre. Returns (assign N int64, centers k×C)."""
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    if n == 0:
        raise ValueError("k-means on no points")
    k = int(min(k, n))
    rng = np.random.default_rng(seed)
    centers = np.empty((k, x.shape[1]))
    centers[0] = x[rng.integers(n)]
    d2 = ((x - centers[0]) ** 2).sum(1)
    for j in range(1, k):
        total = d2.sum()
        idx = rng.integers(n) if total <= 0 else rng.choice(n, p=d2 / total)
        centers[j] = x[idx]
        d2 = np.minimum(d2, ((x - centers[j]) ** 2).sum(1))
    assign = np.zeros(n, dtype=np.int64)
    for it in range(iters):
        dist = ((x[:, None, :] - centers[None]) ** 2).sum(-1)
        new = dist.argmin(1)
        if it > 0 and np.array_equal(new, assign):
            break
        assign = new
        for j in range(k):
            members = assign == j
            if members.any():
                centers[j] = x[members].mean(0)
            else:  # empty: take the worst-fitted point
                far = dist[np.arange(n), assign].argmax()
                centers[j] = x[far]
                assign[far] = j
    return assign, centers


def rgb_kmeans_masks(image, k: int = 8, seed: int = 0, space: str = "lab", xy_weight: float = 0.0,
                     iters: int = 20, max_fit_pixels: int = 20000) -> np.ndarray:
    """Raw-pixel k-means baseline: cluster pixel colours (``space`` "lab" or "rgb", scaled to
    about [0, 1]), optionally with xy position (normalised to [0, 1], times ``xy_weight``).
    Centres are fitted on at most ``max_fit_pixels`` random pixels (seeded), then every pixel
    takes its nearest centre. Clusters need not be connected; empty clusters are dropped."""
    arr = _hwc(image)
    h, w, _ = arr.shape
    if space == "lab":
        rgb2lab = require("skimage.color", "rgb-kmeans masks in Lab space").rgb2lab
        feats = rgb2lab(arr).reshape(-1, 3) / np.array([100.0, 255.0, 255.0])
    elif space == "rgb":
        feats = arr.reshape(-1, 3).astype(np.float64) / 255.0
    else:
        raise SettingError(f"rgb-kmeans space must be 'lab' or 'rgb', got {space!r}")
    if xy_weight:
        yy, xx = np.mgrid[0:h, 0:w]
        xy = np.stack([yy.ravel() / max(h - 1, 1), xx.ravel() / max(w - 1, 1)], 1) * float(xy_weight)
        feats = np.concatenate([feats, xy], 1)
    rng = np.random.default_rng(seed)
    fit = feats
    if feats.shape[0] > max_fit_pixels:
        fit = feats[rng.choice(feats.shape[0], max_fit_pixels, replace=False)]
    _, centers = kmeans_numpy(fit, k, seed=seed, iters=iters)
    assign = np.empty(feats.shape[0], dtype=np.int64)
    for start in range(0, feats.shape[0], 65536):  # bounded memory on large images
        chunk = feats[start:start + 65536]
        assign[start:start + 65536] = ((chunk[:, None, :] - centers[None]) ** 2).sum(-1).argmin(1)
    return labels_to_masks(assign.reshape(h, w))
