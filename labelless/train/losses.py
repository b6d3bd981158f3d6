"""Losses more than one method uses: symmetric InfoNCE with negatives gathered across
processes (CLIP pre-training here, S-Seg's image-text loss next), and the micro-batch
accumulation that keeps it exact.

InfoNCE couples the samples of a batch (every other pair is a negative), so plain
gradient accumulation — one loss per micro-batch — would train with smaller batches.
``contrastive_accumulation`` follows open_clip's ``accum_freq``: the features of every
micro-batch are first computed without gradients; then each micro-batch is encoded
again with gradients and its loss is computed against the cached features of all the
others, and back-propagated. Each feature is live in exactly one micro-step and the
shared temperature in the first one only, so the sum of those gradients is the gradient
of the loss of the whole step's batch (the same function of the same features), at the
cost of one extra forward without gradients.
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
    from labelless.train.distributed import get_world_size, is_distributed

    if not is_distributed() or get_world_size() == 1:
        return x
    import torch.distributed.nn.functional as dist_fn

    return torch.cat(dist_fn.all_gather(x), dim=0)


def gather_ids(x: torch.Tensor) -> torch.Tensor:
    """Concatenate an integer tensor over ranks (no gradient)."""
    from labelless.train.distributed import get_world_size, is_distributed

    if not is_distributed() or get_world_size() == 1:
        return x
    import torch.distributed as dist

    out = [torch.empty_like(x) for _ in range(get_world_size())]
    dist.all_gather(out, x)
    return torch.cat(out)


Encode = Callable[[dict], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def contrastive_accumulation(encode: Encode, micro_batches: Sequence[dict], ids: Sequence[torch.Tensor],
                             syncs) -> torch.Tensor:
    """Back-propagate the InfoNCE of all ``micro_batches`` together (module docstring).

    Args:
        encode: micro-batch → (image features n×D, text features n×D, logit scale), the
            features L2-normalised (this process's part; gathered across ranks here).
        micro_batches: this process's micro-batches of the step, in order.
        ids: per micro-batch, the pair ids (n) of ``info_nce`` (equal ids: not negatives).
        syncs: one context manager per micro-batch (``Run.micro_steps``: DDP syncs on the last).

    Returns the (detached) loss of the whole step's batch. With one micro-batch this is
    a plain forward + InfoNCE + backward.
    """
    # features are concatenated per rank (micro-batches in order), then over ranks: the ids
    # gathered the same way line up with them
    all_ids = gather_ids(torch.cat(list(ids)))
    cached: list = [None] * len(micro_batches)
    if len(micro_batches) > 1:
        with torch.no_grad():
            cached = [tuple(t.float() for t in encode(mb)[:2]) for mb in micro_batches]
    loss = None
    for j, (mb, sync) in enumerate(zip(micro_batches, syncs)):
        with sync:
            img, txt, logit_scale = encode(mb)
            parts = [(img.float(), txt.float()) if i == j else c for i, c in enumerate(cached)]
            img_all = gather_features(torch.cat([p[0] for p in parts]))
            txt_all = gather_features(torch.cat([p[1] for p in parts]))
            # the temperature is shared by all micro-steps: its gradient is taken once
            logit_scale = logit_scale if j == 0 else logit_scale.detach()
            loss = info_nce(img_all, txt_all, logit_scale.float(), all_ids)
            loss.backward()
    return loss.detach()

