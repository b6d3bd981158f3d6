"""Bipartite matching of predicted masks to target masks (MaskFormer's Hungarian matcher
without a class term, as S-Seg matches its N class-free predictions to K pseudo-masks).

Per image: the cost of assigning prediction n to target k is
``focal_weight · focal(n, k) + dice_weight · dice(n, k)`` (``losses.pairwise_*``); scipy's
``linear_sum_assignment`` gives the assignment of least total cost. With K ≤ N every target
gets one prediction and N − K predictions stay unmatched.
"""

from __future__ import annotations

import torch

from labelless.errors import require
from labelless.train.losses import pairwise_dice_cost, pairwise_focal_cost


@torch.no_grad()
def match_masks(logits: torch.Tensor, targets: torch.Tensor, focal_weight: float = 20.0,
                dice_weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """One image: predictions ``N×P`` (logits), targets ``K×P`` (0/1) → (prediction ids,
    target ids), each of length min(N, K), target ids ascending."""
    optimize = require("scipy.optimize", "Hungarian matching")
    if targets.shape[0] == 0 or logits.shape[0] == 0:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty
    cost = focal_weight * pairwise_focal_cost(logits.float(), targets.float()) \
        + dice_weight * pairwise_dice_cost(logits.float(), targets.float())
    rows, cols = optimize.linear_sum_assignment(cost.cpu().numpy())
    order = cols.argsort()
    return torch.as_tensor(rows[order], dtype=torch.long), torch.as_tensor(cols[order], dtype=torch.long)
