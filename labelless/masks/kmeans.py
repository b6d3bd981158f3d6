"""Batched k-means in torch: many small problems (one per image) solved at once, on the
device of the data (GPU inside a training pipeline, CPU otherwise).

``kmeans(x B×N×C, k)`` clusters each of the B point sets independently:

- init: k-means++ (seeded by ``seed`` through a ``torch.Generator`` on x's device), or
  ``init="random"`` (k distinct points drawn uniformly). Every item draws the same
  uniform numbers — the ones it would draw alone — so an item's clusters do not depend
  on the batch it comes in (its size, its other images, its order): ``masks generate``
  at any batch size, on any number of ranks, and ``eval --refine masks`` at any batch
  size give each image the same masks;
- Lloyd iterations (at most ``iters``; stops early when no assignment changes);
- an empty cluster is re-seeded with the point farthest from its current centre (the
  j-th empty cluster of an item takes that item's j-th farthest point), so all k
  clusters stay in use whenever the item has at least k distinct points;
- ``cosine=True``: spherical k-means — points and centres are L2-normalised and the
  distance is ``1 - cos``.

The returned assignment is always the nearest-centre assignment of the returned centres.
"""

from __future__ import annotations

import torch

__all__ = ["kmeans", "pairwise_distance"]


def pairwise_distance(x: torch.Tensor, centers: torch.Tensor, cosine: bool = False) -> torch.Tensor:
    """``B×N×C`` points, ``B×k×C`` centres → ``B×N×k`` distances (squared Euclidean, or
    ``1 - cos`` for already-normalised inputs when ``cosine``); never negative."""
    dots = torch.bmm(x, centers.transpose(1, 2))
    if cosine:
        return (1.0 - dots).clamp_min_(0.0)
    d = (x * x).sum(-1, keepdim=True) - 2.0 * dots + (centers * centers).sum(-1).unsqueeze(1)
    return d.clamp_min_(0.0)


def _gather_points(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``x`` B×N×C, ``idx`` B×m long → B×m×C."""
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=-1, eps=1e-12)


def _pick(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw: ``B×N`` non-negative weights (each row some positive), one uniform
    ``u`` in [0, 1) shared by all rows → ``B×1`` indices, each index ``i`` with probability
    ``w_i / Σw`` in its row; zero-weight points are never drawn."""
    cdf = weights.cumsum(1)
    idx = torch.searchsorted(cdf, (u * cdf[:, -1:]).contiguous(), right=True)
    last = (weights > 0).long().cumsum(1).argmax(1, keepdim=True)  # last point of positive weight
    return torch.minimum(idx, last)  # u·Σw rounding up to Σw


def _init_plusplus(x: torch.Tensor, k: int, gen: torch.Generator, cosine: bool) -> torch.Tensor:
    B, N, _ = x.shape
    u = torch.rand(k, generator=gen, device=x.device)  # the same for every item
    first = (u[0] * N).long().clamp_max(N - 1).expand(B, 1)
    centers = [_gather_points(x, first)]
    mind = pairwise_distance(x, centers[0], cosine).squeeze(-1)  # B×N
    for i in range(1, k):
        dead = mind.sum(1, keepdim=True) <= 0  # all points coincide with chosen centres
        c = _gather_points(x, _pick(torch.where(dead, torch.ones_like(mind), mind), u[i]))
        centers.append(c)
        mind = torch.minimum(mind, pairwise_distance(x, c, cosine).squeeze(-1))
    return torch.cat(centers, 1)


def _init_random(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    B, N, _ = x.shape
    idx = torch.rand(N, generator=gen, device=x.device).argsort()[:k]
    return _gather_points(x, idx.expand(B, k))


def _update(x: torch.Tensor, assign: torch.Tensor, k: int, mind: torch.Tensor, cosine: bool) -> torch.Tensor:
    """Cluster means (re-normalised when cosine); empty clusters re-seeded far away."""
    B, N, C = x.shape
    sums = torch.zeros(B, k, C, device=x.device, dtype=x.dtype)
    sums.scatter_add_(1, assign.unsqueeze(-1).expand(-1, -1, C), x)
    counts = torch.zeros(B, k, device=x.device, dtype=x.dtype)
    counts.scatter_add_(1, assign, torch.ones_like(assign, dtype=x.dtype))
    centers = sums / counts.clamp_min(1.0).unsqueeze(-1)
    if cosine:
        centers = _normalise(centers)
    empty = counts == 0
    if bool(empty.any()):
        far = mind.argsort(1, descending=True)  # B×N, farthest first
        rank = (empty.long().cumsum(1) - 1).clamp(0, N - 1)  # j-th empty cluster -> j-th farthest
        seeds = _gather_points(x, torch.gather(far, 1, rank))
        centers = torch.where(empty.unsqueeze(-1), seeds, centers)
    return centers


@torch.no_grad()
def kmeans(x: torch.Tensor, k: int, iters: int = 20, seed: int = 0, cosine: bool = False,
           init: str = "k-means++") -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster each item of a batch of point sets.

    Args:
        x: ``B×N×C`` float tensor (``N×C`` is taken as B=1); computed in float32 on x's device.
        k: clusters per item, ``1 <= k <= N``.
        iters: maximum Lloyd iterations.
        seed: seeds the initialisation (same seed, same device → same result, for each item
            whatever batch it is in).
        cosine: spherical k-means on L2-normalised points (distance ``1 - cos``).
        init: ``"k-means++"`` or ``"random"``.

    Returns:
        ``(assign B×N long in [0, k), centers B×k×C)`` — centres in x's dtype (unit
        length when ``cosine``). A cluster can only end empty when an item has fewer
        than k distinct points.
    """
    squeeze = x.dim() == 2
    if squeeze:
        x = x.unsqueeze(0)
    if x.dim() != 3:
        raise ValueError(f"kmeans expects B×N×C (or N×C) points, got shape {tuple(x.shape)}")
    N = x.shape[1]
    if not 1 <= k <= N:
        raise ValueError(f"kmeans: k={k} must be between 1 and the number of points N={N}")
    if init not in ("k-means++", "random"):
        raise ValueError(f"kmeans: unknown init {init!r}; use 'k-means++' or 'random'")
    dtype = x.dtype if x.is_floating_point() else torch.float32
    xf = x.float()
    if cosine:
        xf = _normalise(xf)
    gen = torch.Generator(device=x.device)
    gen.manual_seed(int(seed))
    centers = _init_plusplus(xf, k, gen, cosine) if init == "k-means++" else _init_random(xf, k, gen)

    assign = None
    for _ in range(max(0, int(iters))):
        d = pairwise_distance(xf, centers, cosine)
        mind, new = d.min(-1)
        if assign is not None and torch.equal(new, assign):
            break
        assign = new
        centers = _update(xf, assign, k, mind, cosine)
    assign = pairwise_distance(xf, centers, cosine).argmin(-1)
    centers = centers.to(dtype)
    if squeeze:
        return assign[0], centers[0]
    return assign, centers
