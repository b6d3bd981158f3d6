"""S-Seg's mask loss, as pure functions: the N predicted masks of every image are matched
to its K pseudo-masks (Hungarian, Dice + focal cost), and only the matched pairs are
supervised: Dice ×1 + sigmoid focal ×20, normalised by the number of pseudo-masks of the
whole step (all micro-batches, all ranks), as MaskFormer normalises by its target count.
With deep supervision every decoder layer is matched and supervised alike (MaskFormer's
auxiliary losses).

Resolution: predictions stay at their 1/4 resolution and the pseudo-masks are resized to
it (nearest). MaskFormer upsamples predictions to the ground truth instead; DINO k-means
masks come from a patch grid (1/8 or 1/14 of the image), so nothing finer exists to match.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from labelless.train.losses import dice_loss, sigmoid_focal_loss
from labelless.train.matching import match_masks


def resize_targets(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Pseudo-masks ``B×K×H×W`` (bool) → float 0/1 ``B×K×h×w`` (nearest)."""
    if masks.numel() == 0:
        return masks.new_zeros(*masks.shape[:2], *size, dtype=torch.float32)
    return F.interpolate(masks.float(), size=size, mode="nearest")


def matched_mask_loss(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor, num_masks: float,
                      dice_weight: float = 1.0, focal_weight: float = 20.0, match_dice: float = 1.0,
                      match_focal: float = 20.0, alpha: float = 0.25, gamma: float = 2.0) -> tuple[torch.Tensor,
                                                                                                  dict]:
    """One decoder layer: logits ``B×N×h×w``, targets ``B×K×h×w`` (0/1), valid ``B×K`` →
    (``dice_weight · Dice + focal_weight · focal`` over the matched pairs / ``num_masks``,
    {"dice", "focal", "matched"})."""
    dice = focal = logits.new_zeros(())
    matched = 0
    for b in range(logits.shape[0]):
        tgt = targets[b][valid[b]].flatten(1)  # K_b×P
        if tgt.shape[0] == 0:
            continue
        pred = logits[b].flatten(1).float()  # N×P
        rows, cols = match_masks(pred.detach(), tgt, match_focal, match_dice)
        rows, cols = rows.to(pred.device), cols.to(pred.device)
        dice = dice + dice_loss(pred[rows], tgt[cols], num_masks)
        focal = focal + sigmoid_focal_loss(pred[rows], tgt[cols], num_masks, alpha, gamma)
        matched += len(rows)
    loss = dice_weight * dice + focal_weight * focal
    return loss, {"dice": dice.detach(), "focal": focal.detach(), "matched": matched}


def mask_loss(layers: list[torch.Tensor], targets: torch.Tensor, valid: torch.Tensor, num_masks: float,
              deep_supervision: bool = True, **weights) -> tuple[torch.Tensor, dict]:
    """The matched mask loss summed over decoder layers (all with ``deep_supervision``,
    else the last): ``layers`` are ``B×N×h×w`` logits, last = final. Stats are the final
    layer's."""
    chosen = layers if deep_supervision else layers[-1:]
    total, stats = None, {}
    for logits in chosen:
        loss, stats = matched_mask_loss(logits, targets, valid, num_masks, **weights)
        total = loss if total is None else total + loss
    return total, stats
