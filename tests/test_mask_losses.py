"""S-Seg's mask losses and matching against direct reference computations."""

from __future__ import annotations

import itertools

import pytest
import torch

from labelless.train.losses import (
    dice_loss,
    pairwise_dice_cost,
    pairwise_focal_cost,
    sigmoid_focal_loss,
)
from labelless.train.matching import match_masks


def _data(n=5, k=3, p=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, p, generator=g) * 3, (torch.rand(k, p, generator=g) > 0.5).float()


def test_focal_is_torchvisions_retinanet_focal_loss():
    from torchvision.ops import sigmoid_focal_loss as tv_focal

    logits, targets = _data(4, 4)
    ref = tv_focal(logits, targets, alpha=0.25, gamma=2.0, reduction="none").mean(1).sum() / 3.0
    torch.testing.assert_close(sigmoid_focal_loss(logits, targets, 3.0), ref)


def test_dice_by_hand():
    logits = torch.tensor([[0.0, 0.0, 100.0, -100.0]])  # p = .5, .5, 1, 0
    targets = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    # numerator 2·(.5 + 1) = 3, denominator 2 + 2 = 4: 1 - (3 + 1) / (4 + 1) = 0.2
    torch.testing.assert_close(dice_loss(logits, targets, 1.0), torch.tensor(0.2))


def test_pairwise_costs_equal_the_per_pair_losses():
    logits, targets = _data(5, 3)
    focal, dice = pairwise_focal_cost(logits, targets), pairwise_dice_cost(logits, targets)
    for n in range(5):
        for k in range(3):
            torch.testing.assert_close(focal[n, k], sigmoid_focal_loss(logits[n:n + 1], targets[k:k + 1], 1.0))
            torch.testing.assert_close(dice[n, k], dice_loss(logits[n:n + 1], targets[k:k + 1], 1.0))


@pytest.mark.parametrize("n,k,seed", [(4, 2, 0), (5, 3, 1), (3, 3, 2), (6, 4, 3)])
def test_matching_is_the_least_cost_assignment(n, k, seed):
    logits, targets = _data(n, k, seed=seed)
    rows, cols = match_masks(logits, targets)
    assert cols.tolist() == list(range(k)) and len(set(rows.tolist())) == k
    cost = 20 * pairwise_focal_cost(logits, targets) + pairwise_dice_cost(logits, targets)
    best = min(sum(cost[perm[j], j] for j in range(k)) for perm in itertools.permutations(range(n), k))
    torch.testing.assert_close(sum(cost[r, c] for r, c in zip(rows, cols)), best)


def test_matching_with_no_targets():
    logits, _ = _data(4, 1)
    rows, cols = match_masks(logits, torch.zeros(0, logits.shape[1]))
    assert rows.numel() == 0 and cols.numel() == 0
