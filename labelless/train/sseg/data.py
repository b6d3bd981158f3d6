"""S-Seg's training data: image-text pairs (img2dataset shards, a captions file, or
class-name captions of crops of a labelled dataset; ``labelless.data.pairs``) and their
pseudo-masks: DINO k-means masks of each crop computed online on the accelerator
(``PseudoMasks``, the paper's way), or a mask store's masks cropped like the image.
Unreadable samples are reported, counted and skipped.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from labelless.data.pairs import build_pairs, collate_pairs, crop_pair
from labelless.train.common import SeededSampler
from labelless.train.sseg.config import SSegTrainConfig


class StoreMasks(Dataset):
    """Pairs + the mask store's masks of each image, cropped, resized (nearest) and flipped
    as the image was: item adds ``"masks"`` (``M×S×S`` bool)."""

    def __init__(self, pairs: Dataset, store: str, size: int):
        self.pairs, self.store, self.size = pairs, store, size

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, item) -> dict | None:
        from labelless.masks.store import read_masks

        sample = self.pairs[item]
        if sample is None:
            return None
        masks, _ = read_masks(self.store, sample["name"])
        top, left, h, w = sample["box"]
        m = torch.from_numpy(np.ascontiguousarray(masks[:, top:top + h, left:left + w]))
        m = F.interpolate(m[None].float(), size=(self.size, self.size), mode="nearest")[0] > 0.5 if len(m) else \
            torch.zeros(0, self.size, self.size, dtype=torch.bool)
        sample["masks"] = m.flip(-1) if sample["flip"] else m
        return sample


def collate_with_masks(batch: list[dict | None]) -> dict:
    """``collate_pairs`` + the masks padded to the most of any sample (``valid`` B×M)."""
    out = collate_pairs(batch)
    kept = [b for b in batch if b is not None]
    if kept and "tokens" in kept[0]:
        out["tokens"] = torch.stack([b["tokens"] for b in kept])
    if kept and "masks" in kept[0]:
        n = max(b["masks"].shape[0] for b in kept)
        size = kept[0]["masks"].shape[-2:]
        out["masks"] = torch.zeros(len(kept), n, *size, dtype=torch.bool)
        out["valid"] = torch.zeros(len(kept), n, dtype=torch.bool)
        for i, b in enumerate(kept):
            out["masks"][i, : b["masks"].shape[0]] = b["masks"]
            out["valid"][i, : b["masks"].shape[0]] = True
    return out


def build_loader(cfg: SSegTrainConfig, size: int, rank: int, world: int, micro_batch: int, start_samples: int,
                 pin: bool) -> DataLoader:
    """This rank's endless loader; ``start_samples``: the samples it already consumed."""
    common = dict(batch_size=micro_batch, num_workers=cfg.num_workers, collate_fn=collate_with_masks,
                  pin_memory=pin, persistent_workers=cfg.num_workers > 0,
                  generator=torch.Generator().manual_seed(cfg.seed))
    if cfg.data == "shards":
        from labelless.data.stream import PairShardStream, expand_shards

        transform = partial(crop_pair, size=size, scale=(cfg.crop_scale_min, cfg.crop_scale_max), hflip=cfg.hflip)
        stream = PairShardStream(expand_shards(cfg.shards, "image-text shards"), transform, micro_batch, cfg.seed,
                                 rank, world, start_samples // micro_batch)
        return DataLoader(stream, **common)
    if cfg.data == "cache":
        from labelless.train.sseg.cache import CachedPairs

        dataset = CachedPairs(cfg.cache)
    else:
        dataset = build_pairs(cfg, size)
    if cfg.masks == "store" and cfg.data != "cache":
        dataset = StoreMasks(dataset, cfg.mask_store, size)
    sampler = SeededSampler(len(dataset), cfg.seed, rank, world, start=start_samples)
    return DataLoader(dataset, sampler=sampler, **common)


class PseudoMasks:
    """``masks=dino``: DINO k-means masks of the crops (uint8 from the [0, 1] batch), padded."""

    def __init__(self, cfg: SSegTrainConfig, device: torch.device):
        from labelless.masks.dino import load_dino

        self.cfg, self.device = cfg, device
        self.backbone = load_dino(cfg.dino_model, device)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Float ``B×3×S×S`` in [0, 1] → masks ``B×K×S×S`` bool, valid ``B×K``."""
        from labelless.masks.online import padded_kmeans_masks

        cfg = self.cfg
        uint8 = (images.to(self.device) * 255).round().to(torch.uint8)
        return padded_kmeans_masks(self.backbone, uint8, cfg.dino_k, size=cfg.dino_size, seed=cfg.seed,
                                   cosine=cfg.dino_cosine)
