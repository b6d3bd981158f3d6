"""Tar shards as an endless training stream, split over processes and data-loader workers,
resumable at any batch: SA-1B images + masks (PixelCLIP), img2dataset image-text pairs
(S-Seg, CLIP).

``ShardStream(shards, read, transform, …)``: ``read(shards, skip)`` yields ``(name, item)``
from the shards in order (``skip(name) -> bool`` says which names to pass over without
decoding), ``transform(item, seed, name)`` makes each training sample. With at least as
many shards as streams (ranks × workers) each stream reads its own shards; otherwise every
stream reads all shards and keeps the names that hash to it. Shard order is reshuffled
every epoch (seeded); every sample gets its own seed, a function of (run seed, stream,
position) only, so a resumed run (``start_batches``) sees exactly the samples it would
have seen.
"""

from __future__ import annotations

import glob
import zlib
from collections import OrderedDict
from functools import partial
from typing import Callable, Iterator

import torch
from torch.utils.data import IterableDataset, get_worker_info

from labelless.errors import MissingFileError


def expand_shards(patterns: list[str], what: str = "shards") -> list[str]:
    """Shard paths, globs (sorted) and URLs, in the order given."""
    out = []
    for p in patterns:
        if "://" in p or p.startswith("pipe:") or not any(c in p for c in "*?["):
            out.append(p)
        else:
            found = sorted(glob.glob(p))
            if not found:
                raise MissingFileError(f"no {what} match {p}")
            out.extend(found)
    return out


def stream_start(consumed_batches: int, worker: int, num_workers: int) -> int:
    """Batches worker ``worker`` produced when the loader (round-robin over workers)
    delivered ``consumed_batches``."""
    return len(range(worker, consumed_batches, num_workers))


class _Skipper:
    """``skip(name)`` for one epoch of one stream: names of other streams, and the first
    ``to_skip`` names of this one (a resumed run), are passed over. A reader may ask twice
    per name (SA-1B: for the image and its annotation, adjacent in the shard); both get the
    same answer. Only the latest decisions are kept (a shard's names are not all held)."""

    KEEP = 256

    def __init__(self, stream: int, streams: int, by_shard: bool, to_skip: int):
        self.stream, self.streams, self.by_shard, self.to_skip = stream, streams, by_shard, to_skip
        self.decided: OrderedDict[str, bool] = OrderedDict()

    def __call__(self, name: str) -> bool:
        if name in self.decided:
            return self.decided.pop(name)
        owned = self.by_shard or zlib.crc32(name.encode()) % self.streams == self.stream
        drop = not owned or self.to_skip > 0
        if owned and self.to_skip > 0:
            self.to_skip -= 1
        self.decided[name] = drop
        if len(self.decided) > self.KEEP:
            self.decided.popitem(last=False)
        return drop


class ShardStream(IterableDataset):
    """An endless, resumable stream over tar shards (module docstring)."""

    def __init__(self, shards: list[str], read: Callable, transform: Callable, batch_size: int, seed: int,
                 rank: int, world_size: int, start_batches: int = 0):
        self.shards, self.read, self.transform = shards, read, transform
        self.batch_size, self.seed = batch_size, seed
        self.rank, self.world, self.start_batches = rank, world_size, start_batches

    def __iter__(self) -> Iterator:
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
            skip = _Skipper(stream, streams, by_shard, to_skip)
            for name, item in self.read(order[stream::streams] if by_shard else order, skip):
                skip.decided.pop(name, None)
                seed = ((self.seed * 1_000_003 + stream) * 2**31 + count) % (2**63 - 1)
                count += 1
                yield self.transform(item, seed, name)
            to_skip = skip.to_skip
            epoch += 1


def _read_sa1b(shards, skip, load_short_side=None, max_masks=None):
    from labelless.masks.readers import iter_sa1b_tars

    for name, image, masks in iter_sa1b_tars(shards, short_side=load_short_side, max_masks=max_masks, skip=skip,
                                             on_error="skip"):
        yield name, (image, masks)


def _sa1b_item(transform: Callable, item, seed: int, name: str):
    image, masks = item
    return transform(image, masks, seed, name)


def SA1BStream(shards: list[str], transform: Callable, batch_size: int, seed: int, rank: int,  # noqa: N802
               world_size: int, start_batches: int = 0, load_short_side: int | None = None,
               max_masks: int | None = None) -> ShardStream:
    """SA-1B ``.tar`` shards (nothing extracted) as a ``ShardStream``; ``transform(image uint8
    3×H×W, masks bool N×H×W, seed, name)`` makes each sample (picklable for workers)."""
    read = partial(_read_sa1b, load_short_side=load_short_side, max_masks=max_masks)
    return ShardStream(shards, read, partial(_sa1b_item, transform), batch_size, seed, rank, world_size,
                       start_batches)


def _pair_item(transform: Callable, item, seed: int, name: str):
    image, caption = item
    return transform(image, caption, seed, name)


def PairShardStream(shards: list[str], transform: Callable, batch_size: int, seed: int, rank: int,  # noqa: N802
                    world_size: int, start_batches: int = 0) -> ShardStream:
    """img2dataset image-text shards (``data/shards.py``) as a ``ShardStream``;
    ``transform(image uint8 3×H×W, caption, seed, name)`` makes each sample."""
    from labelless.data.shards import iter_pair_shards

    return ShardStream(shards, iter_pair_shards, partial(_pair_item, transform), batch_size, seed, rank,
                       world_size, start_batches)
