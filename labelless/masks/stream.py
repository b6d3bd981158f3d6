"""SA-1B ``.tar`` shards as an endless training stream, split over processes and
data-loader workers, resumable at any batch (PixelCLIP's SA-1B mode; any method that
trains on SA-1B masks or images)."""

from __future__ import annotations

import glob
from typing import Callable

import torch
from torch.utils.data import IterableDataset, get_worker_info

from labelless.errors import MissingFileError


def expand_shards(patterns: list[str]) -> list[str]:
    """Shard paths, globs (sorted) and URLs, in the order given."""
    out = []
    for p in patterns:
        if "://" in p or p.startswith("pipe:") or not any(c in p for c in "*?["):
            out.append(p)
        else:
            found = sorted(glob.glob(p))
            if not found:
                raise MissingFileError(f"no SA-1B shards match {p}")
            out.extend(found)
    return out


def stream_start(consumed_batches: int, worker: int, num_workers: int) -> int:
    """Batches worker ``worker`` produced when the loader (round-robin over workers)
    delivered ``consumed_batches``."""
    return len(range(worker, consumed_batches, num_workers))


class SA1BStream(IterableDataset):
    """SA-1B ``.tar`` shards streamed (nothing extracted), split over ranks and workers.

    With at least as many shards as streams (ranks × workers), each stream reads its own
    shards; otherwise every stream reads all shards and keeps the images whose name
    hashes to it (others are skipped undecoded). Shard order is reshuffled every epoch
    (seeded). ``start_batches``: batches this rank already consumed (resume).
    ``transform(image uint8 3×H×W, masks bool N×H×W, seed, name)`` makes each item (a
    method's augmentation; picklable for worker processes); every item gets its own seed,
    a function of (run seed, stream, position) only.
    """

    def __init__(self, shards: list[str], transform: Callable, batch_size: int, seed: int, rank: int,
                 world_size: int, start_batches: int = 0, load_short_side: int | None = None,
                 max_masks: int | None = None):
        self.shards, self.transform, self.batch_size, self.seed = shards, transform, batch_size, seed
        self.rank, self.world, self.start_batches = rank, world_size, start_batches
        self.load_short_side, self.max_masks = load_short_side, max_masks

    def __iter__(self):
        import zlib

        from labelless.masks.readers import iter_sa1b_tars

        info = get_worker_info()
        worker, nw = (info.id, info.num_workers) if info else (0, 1)
        stream, streams = self.rank * nw + worker, self.world * nw
        to_skip = stream_start(self.start_batches, worker, nw) * self.batch_size
        by_shard = len(self.shards) >= streams
        count = to_skip  # items of this stream so far (the per-item seed counts the skipped ones)
        epoch = 0
        while True:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = [self.shards[i] for i in torch.randperm(len(self.shards), generator=g).tolist()]
            mine = order[stream::streams] if by_shard else order
            decided: dict[str, bool] = {}

            def skip(name: str) -> bool:  # called for the .jpg and the .json of each image
                nonlocal to_skip
                if name in decided:
                    return decided.pop(name)
                owned = by_shard or zlib.crc32(name.encode()) % streams == stream
                drop = not owned or to_skip > 0
                if owned and to_skip > 0:
                    to_skip -= 1
                decided[name] = drop
                return drop

            for name, image, masks in iter_sa1b_tars(mine, short_side=self.load_short_side,
                                                     max_masks=self.max_masks, skip=skip, on_error="skip"):
                decided.pop(name, None)
                seed = ((self.seed * 1_000_003 + stream) * 2**31 + count) % (2**63 - 1)
                count += 1
                yield self.transform(image, masks, seed, name)
            epoch += 1
