"""Online clustering of PixelCLIP, as pure functions on tensors.

One training step of PixelCLIP (``model.PixelCLIPModel.forward_train``) runs:

1. ``masks.pooling.prepare_masks``: masks nearest-resized to the mask resolution (256×256), masks
   with ≤ 1 pixel left are dropped (``valid`` False);
2. ``masks.pooling.mask_pool``: teacher features upsampled bilinearly to that resolution and
   averaged inside every mask → one feature per mask;
3. logits = scale · cos(mask feature, cluster text embedding) (done by the model);
4. ``sinkhorn``: SwAV Sinkhorn-Knopp, equipartition over all masks of the GLOBAL batch;
5. ``assign_clusters``: hard argmax;
6. ``merge_masks``: masks of an image assigned to the same cluster are merged (union);
7. ``pixelclip_loss``: BCE-with-logits between the decoder's per-cluster logits and the
   merged masks, over all k channels, at pixels covered by at least one mask.

What follows the official code (cvlab-kaist/PixelCLIP @ 42f5c9c, ``pixelclip/pixelclip.py``,
``PixelCLIP.prepare_clusters`` and ``PixelCLIP.distributed_sinkhorn``):
- masks are resized with ``F.interpolate(mode="nearest")`` and kept when they hold
  more than one pixel (``sum > 1``);
- teacher features are upsampled with ``F.interpolate(mode="bilinear",
  align_corners=False)`` and pooled with weights ``mask / mask.sum()`` (a plain mean),
  without normalising the features first (they are normalised for the cosine);
- Sinkhorn starts from ``softmax(logits)`` over the clusters of every mask (the
  stabilised ``exp(logits)`` with a per-mask factor), divides by the global total,
  then per iteration normalises every cluster's total over ALL masks of all ranks
  (``all_reduce``) to 1/k and every mask's row to 1/B (B = global number of masks),
  and finally multiplies by B so every row sums to 1; (added here: sums are clamped
  to the smallest positive float, so a cluster whose ``exp`` underflows for every mask
  — possible with scale 100 in float32 — stays at 0 instead of turning Q into NaN);
- merged targets are the clamped sum (union) of the assigned masks; the loss is
  ``binary_cross_entropy_with_logits`` (mean) over the pixels where the merged
  targets are non-zero in some channel, all k channels.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def _all_reduce(x: torch.Tensor, distributed: bool) -> torch.Tensor:
    if distributed and dist.is_available() and dist.is_initialized():
        dist.all_reduce(x)
    return x


@torch.no_grad()
def sinkhorn(logits: torch.Tensor, iters: int = 3, distributed: bool = True) -> torch.Tensor:
    """SwAV Sinkhorn-Knopp soft assignment with equipartition over the global batch.

    Every rank passes the logits of its own masks; with ``torch.distributed``
    initialised (and ``distributed`` True) the per-cluster totals and the total mass
    are all-reduced, so the result equals one process running on all masks. Every
    rank must call this, also with zero masks (the all-reduces are collective).

    Args:
        logits: ``M×k`` (scale · cosine), M masks of this rank, k clusters.
        iters: Sinkhorn iterations (3 in PixelCLIP and SwAV).
        distributed: all-reduce over ranks when a process group is initialised.

    Returns:
        ``M×k`` float32 assignment Q; every row sums to 1, and the cluster totals over
        the global batch tend to B/k as ``iters`` grows.
    """
    q = logits.float().softmax(dim=-1).T  # k×M, stabilised exp(logits)
    k = q.shape[0]
    tiny = torch.finfo(q.dtype).tiny  # a cluster whose exp underflowed for every mask stays 0, not NaN
    total = _all_reduce(q.sum(), distributed)  # = global number of masks B
    q = q / total.clamp(min=tiny)
    for _ in range(iters):
        rows = _all_reduce(q.sum(dim=1, keepdim=True), distributed)  # k×1 cluster totals
        q = q / rows.clamp(min=tiny) / k
        q = q / q.sum(dim=0, keepdim=True).clamp(min=tiny) / total.clamp(min=tiny)  # every mask → 1/B
    return (q * total).T


def assign_clusters(q: torch.Tensor) -> torch.Tensor:
    """Hard assignment: ``M×k`` → ``M`` long (argmax over clusters)."""
    return q.argmax(dim=-1)


def merge_masks(masks: torch.Tensor, valid: torch.Tensor, assign: torch.Tensor,
                k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Union of the masks assigned to each cluster, per image.

    Args:
        masks: ``B×M×H×W`` bool.
        valid: ``B×M`` bool; invalid masks are ignored.
        assign: ``B×M`` long cluster of every mask (ignored where invalid).
        k: number of clusters.

    Returns:
        targets ``B×k×H×W`` float in {0, 1}; covered ``B×H×W`` bool (pixels inside at
        least one valid mask).
    """
    b, m, h, w = masks.shape
    targets = torch.zeros(b, k, h * w, device=masks.device)
    for i in range(b):
        onehot = F.one_hot(assign[i].clamp(0, k - 1), k).float() * valid[i, :, None].float()  # M×k
        targets[i] = (onehot.T @ masks[i].flatten(1).float()).clamp(max=1)  # k×HW
    targets = targets.view(b, k, h, w)
    covered = (masks & valid[..., None, None]).any(dim=1)
    return targets, covered


def pixelclip_loss(logits: torch.Tensor, targets: torch.Tensor, covered: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits over all k channels at covered pixels (mean).

    Args:
        logits: ``B×k×H×W`` decoder logits.
        targets: ``B×k×H×W`` merged cluster masks in {0, 1}.
        covered: ``B×H×W`` bool.

    Returns:
        scalar loss; 0 (still attached to ``logits``) when no pixel is covered, so every
        rank can run backward.
    """
    if not bool(covered.any()):
        return logits.sum() * 0.0
    sel_logits = logits.permute(0, 2, 3, 1)[covered]  # P×k
    sel_targets = targets.permute(0, 2, 3, 1)[covered].to(sel_logits.dtype)
    return F.binary_cross_entropy_with_logits(sel_logits.float(), sel_targets.float())
