"""Losses more than one method uses: symmetric InfoNCE with negatives gathered across
processes (CLIP pre-training here, S-Seg's image-text loss next), and the micro-batch
accumulation that keeps it exact.

InfoNCE couples the samples of a batch (every other pair is a negative), so plain
gradient accumulation — one loss per micro-batch — would train with smaller batches.
``contrastive_accumulation`` follows open_clip's ``accum_freq``: the features of every
micro-batch are first computed without gradients; then each micro-batch is encoded
again with gradients and its loss is computed against the cached features of all the
others, and back-propagated. Each feature is live in exactly one micro-step and the
shared temperature in the last one only, so the sum of those gradients is the gradient
of the loss of the whole step's batch (the same function of the same features), at the
cost of one extra forward without gradients. This assumes a deterministic forward: with
dropout or drop-path the cached features differ from the live ones (and random draws
double).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F


def info_nce(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
             pair_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE over N pairs (features N×D, L2-normalised; ``logit_scale`` the
    multiplier, i.e. exp of the learnable parameter).

    ``pair_ids`` (N): pairs whose ids are equal (e.g. identical captions) are not negatives of
    each other: their off-diagonal logits are removed from the softmax in both directions.
    """
    logits = logit_scale * image_features @ text_features.t()  # N×N, row i: image i vs every text
    n = logits.shape[0]
    target = torch.arange(n, device=logits.device)
    if pair_ids is not None:
        same = pair_ids.view(-1, 1) == pair_ids.view(1, -1)
        same.fill_diagonal_(False)
        logits = logits.masked_fill(same, float("-inf"))
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def gather_features(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (N×…) over ranks in rank order, keeping the gradient of this rank's part."""
    from labelless.distributed import get_world_size, is_distributed

    if not is_distributed() or get_world_size() == 1:
        return x
    import torch.distributed.nn.functional as dist_fn

    return torch.cat(dist_fn.all_gather(x), dim=0)


def gather_ids(x: torch.Tensor) -> torch.Tensor:
    """Concatenate an integer tensor over ranks (no gradient)."""
    from labelless.distributed import get_world_size, is_distributed

    if not is_distributed() or get_world_size() == 1:
        return x
    import torch.distributed as dist

    out = [torch.empty_like(x) for _ in range(get_world_size())]
    dist.all_gather(out, x)
    return torch.cat(out)


Encode = Callable[[dict], dict]


def contrastive_accumulation(encode: Encode, micro_batches: Sequence[dict], ids: Sequence[torch.Tensor],
                             syncs, contrastive_weight: float = 1.0) -> dict:
    """Back-propagate the InfoNCE of all ``micro_batches`` together (module docstring), plus
    each micro-batch's own loss terms.

    Args:
        encode: micro-batch → ``{"image": n×D, "text": n×D, "logit_scale": scalar}`` (features
            L2-normalised, this process's part; gathered across ranks here), optionally with
            ``"loss"``: the micro-batch's own terms (e.g. a mask loss), already normalised for
            the whole step, so that summing over micro-batches gives the big batch's value.
        micro_batches: this process's micro-batches of the step, in order.
        ids: per micro-batch, the pair ids (n) of ``info_nce`` (equal ids: not negatives).
        syncs: one context manager per micro-batch (``Run.micro_steps``: DDP syncs on the last).
        contrastive_weight: the InfoNCE's weight in the total.

    Returns detached ``{"contrastive": the step batch's InfoNCE, "extra": Σ the micro-batches'
    own losses}``. With one micro-batch this is a plain forward + loss + backward.
    """
    # features are concatenated per rank (micro-batches in order), then over ranks: the ids
    # gathered the same way line up with them
    all_ids = gather_ids(torch.cat(list(ids)))
    cached: list = [None] * len(micro_batches)
    if len(micro_batches) > 1:
        with torch.no_grad():
            cached = [(out["image"].float(), out["text"].float()) for out in map(encode, micro_batches)]
    contrastive, extra = None, torch.zeros(())
    for j, (mb, sync) in enumerate(zip(micro_batches, syncs)):
        with sync:
            out = encode(mb)
            parts = [(out["image"].float(), out["text"].float()) if i == j else c for i, c in enumerate(cached)]
            img_all = gather_features(torch.cat([p[0] for p in parts]))
            txt_all = gather_features(torch.cat([p[1] for p in parts]))
            # the temperature is shared by all micro-steps: its gradient is taken once, in the
            # last one (the one DDP syncs: a parameter unused there would stall DDP's reducer)
            scale = out["logit_scale"] if j == len(micro_batches) - 1 else out["logit_scale"].detach()
            contrastive = info_nce(img_all, txt_all, scale.float(), all_ids)
            total = contrastive_weight * contrastive
            if out.get("loss") is not None:
                total = total + out["loss"]
                extra = extra + out["loss"].detach().cpu()
            total.backward()
    return {"contrastive": contrastive.detach(), "extra": extra}


# ----------------------------------------------------------------------------- mask losses
# MaskFormer's binary mask losses (Cheng et al. 2021; S-Seg: Dice ×1 + focal ×20 on the
# matched pairs). Logits and targets are flattened masks: ``M×P`` (M masks, P pixels).


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float, alpha: float = 0.25,
                       gamma: float = 2.0) -> torch.Tensor:
    """Focal loss (RetinaNet) of every pixel, averaged over a mask's pixels, summed over masks,
    divided by ``num_masks`` (the number of target masks in the batch, all ranks)."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    return loss.mean(1).sum() / num_masks


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """``1 - (2 Σ p·t + 1) / (Σ p + Σ t + 1)`` per mask, summed, divided by ``num_masks``."""
    prob = logits.sigmoid()
    numerator = 2 * (prob * targets).sum(-1)
    denominator = prob.sum(-1) + targets.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks


def pairwise_focal_cost(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25,
                        gamma: float = 2.0) -> torch.Tensor:
    """``N×K``: the focal loss (mean over pixels) of every prediction ``N×P`` against every
    target ``K×P`` — ``sigmoid_focal_loss`` of each pair, without building N·K·P values."""
    prob = logits.sigmoid()
    pos = (1 - prob) ** gamma * F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
    neg = prob ** gamma * F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    if alpha >= 0:
        pos, neg = pos * alpha, neg * (1 - alpha)
    return (pos @ targets.T + neg @ (1 - targets).T) / logits.shape[-1]


def pairwise_dice_cost(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``N×K``: the Dice loss of every prediction ``N×P`` against every target ``K×P``."""
    prob = logits.sigmoid()
    numerator = 2 * prob @ targets.T
    denominator = prob.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)
