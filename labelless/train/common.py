"""Small pieces every training loop shares: the seeded data order that makes a resumed
run see exactly the samples it would have seen, the learning-rate schedule, precision.

Determinism without global RNG in the data path: the sampler hands out
``(index, seed)`` pairs; a dataset draws all of a sample's randomness (crop, flip,
colour jitter, cutout) from a ``torch.Generator`` seeded with that seed. The order
and the seeds depend only on (run seed, epoch, position), never on the number of
data-loader workers or on where a run was interrupted.
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch
from torch.utils.data import Sampler

from labelless.errors import DatasetError


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class SeededSampler(Sampler):
    """Endless stream of ``(index, seed)`` for one rank, epoch after epoch.

    Epoch ``e``: a permutation of ``range(n)`` (``torch.Generator`` seeded with
    ``seed + e``; identity when ``shuffle`` is off), padded by wrapping to a multiple of
    ``world_size``; rank ``r`` takes every ``world_size``-th entry from ``r`` (as
    DistributedSampler). Every position also gets its own 63-bit sample seed.
    ``start``: how many items this rank already consumed (resume): they are skipped
    without loading anything.
    """

    def __init__(self, n: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 start: int = 0, shuffle: bool = True):
        if n < 1:
            raise DatasetError("the training data is empty (no samples to draw)")
        self.n, self.seed, self.rank, self.world = n, seed, rank, world_size
        self.start, self.shuffle = start, shuffle
        self.per_rank = math.ceil(n / world_size)

    def epoch_items(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's (indices, seeds) of ``epoch``."""
        g = torch.Generator()
        g.manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(self.n, generator=g) if self.shuffle else torch.arange(self.n)
        seeds = torch.randint(0, 2**62, (self.n,), generator=g)
        total = self.per_rank * self.world
        if total > self.n:  # pad by wrapping, as DistributedSampler
            reps = math.ceil(total / self.n)
            order, seeds = order.repeat(reps)[:total], seeds.repeat(reps)[:total]
            seeds[self.n:] += 1  # a repeated image gets a different augmentation
        return order[self.rank::self.world], seeds[self.rank::self.world]

    def __iter__(self):
        epoch, pos = divmod(self.start, self.per_rank)
        while True:
            idx, seeds = self.epoch_items(epoch)
            for i in range(pos, self.per_rank):
                yield int(idx[i]), int(seeds[i])
            epoch, pos = epoch + 1, 0

    def __len__(self) -> int:  # one epoch (the stream itself is endless)
        return self.per_rank


def lr_factor(step: int, max_steps: int, warmup: int = 0, end: float = 0.0) -> float:
    """Multiplier of the base lr at ``step``: linear warmup from 0 over ``warmup`` steps,
    then cosine from 1 to ``end`` at ``max_steps`` (detectron2 WarmupCosineLR with
    BASE_LR_END = end × BASE_LR, which PixelCLIP uses with end = 0.5 and no warmup)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    t = min(max(step - warmup, 0) / max(max_steps - warmup, 1), 1.0)
    return end + (1.0 - end) * 0.5 * (1.0 + math.cos(math.pi * t))


def cosine_scheduler(optimizer: torch.optim.Optimizer, max_steps: int, warmup: int = 0,
                     end: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """Scales every param group's own lr (so per-group multipliers are kept)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, max_steps, warmup, end))


def autocast(device: torch.device, amp: str):
    """``amp="bf16"``: bf16 autocast; ``"none"``: full precision (PixelCLIP's setting)."""
    if amp == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return torch.autocast(device_type=device.type, enabled=False)


def set_tf32(enabled: bool) -> None:
    """TF32 for CUDA matmuls and convolutions (PixelCLIP: ``set_float32_matmul_precision("high")``)."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    torch.set_float32_matmul_precision("high" if enabled else "highest")


def next_nonempty(batches, skipped: list[int], limit: int = 1000) -> dict:
    """The next batch that holds a readable sample (unreadable ones are counted in
    ``skipped``); after ``limit`` empty batches in a row (e.g. an epoch of unreadable
    images) a DatasetError stops the run instead of a silent endless loop."""
    for _ in range(max(1, limit)):
        batch = next(batches)
        skipped[0] += batch["skipped"]
        if len(batch["image"]):
            return batch
    raise DatasetError(f"no readable sample in {limit} batches in a row ({skipped[0]} unreadable images so far; "
                       "the warnings above name them)")


def empty_batch_limit(batches) -> int:
    """How many empty batches in a row mean "nothing is readable": one epoch of a map-style
    loader's iterator (plus one), 1000 for a stream."""
    try:
        return len(batches) + 1
    except TypeError:
        return 1000
