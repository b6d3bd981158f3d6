"""PixelCLIP's training data: images + unlabeled masks → weak/strong views.

Sources (``masks``): a labelless mask store, SA-1B ``.tar`` shards (``data/stream.py``),
or images only (a folder, a benchmark's images, or SA-1B images) whose DINO k-means masks
are computed online on the accelerator (``OnlineDinoMasks``, in the loop). Every sample's
augmentation draws from its own seed (``common.SeededSampler`` / the stream), so a
resumed run sees exactly the samples it would have seen.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from labelless.data.pairs import sample_generator
from labelless.errors import DatasetError, MissingFileError
from labelless.io import expand_images, load_image
from labelless.train.common import SeededSampler
from labelless.train.pixelclip.augment import AugmentConfig, augment, box_rows, collate
from labelless.train.pixelclip.config import PixelCLIPConfig


def augment_config(cfg: PixelCLIPConfig) -> AugmentConfig:
    # DINO masks are computed on the weak view at crop resolution (as the official code
    # does on its 640 crop), so the views stay at crop size and are resized in the loop.
    out = cfg.crop_size if cfg.masks == "dino" else cfg.resolution
    return AugmentConfig(short_side=cfg.short_side, max_size=cfg.max_size, crop_size=cfg.crop_size,
                         clip_size=out, mask_size=cfg.mask_size, strong=cfg.strong_aug, cutout=cfg.strong_aug)


def augmented_sample(aug: AugmentConfig, image: torch.Tensor, masks, seed: int, name: str) -> dict:
    """One training sample: the augmented views and masks, the cutout box and crop size."""
    out = augment(image, torch.as_tensor(masks, dtype=torch.bool), sample_generator(seed), aug)
    params = out.pop("params")
    out["cutout"] = torch.tensor(params["cutout"])  # top, left, height, width in crop pixels
    out["crop_hw"] = torch.tensor(params["crop"][2:])  # crop height, width
    out["name"] = name
    return out


class ImageFolderDataset(Dataset):
    """Images without masks (for ``masks=dino``): ``{"name", "image" uint8 3×H×W, "masks" 0×H×W}``."""

    def __init__(self, paths: list[Path]):
        if not paths:
            raise DatasetError("no training images found")
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        image = load_image(self.paths[i])
        return {"name": self.paths[i].stem, "image": image,
                "masks": torch.zeros(0, *image.shape[-2:], dtype=torch.bool)}


class AugmentedDataset(Dataset):
    """A map-style source (``{"name", "image", "masks"}``) → augmented sample, item ``(index, seed)``."""

    def __init__(self, source: Dataset, aug: AugmentConfig):
        self.source, self.aug = source, aug

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, item) -> dict:
        index, seed = item
        s = self.source[index]
        return augmented_sample(self.aug, s["image"], s["masks"], seed, s["name"])


def map_source(cfg: PixelCLIPConfig) -> Dataset:
    """The map-style source of images (+ masks): the mask store, or (``masks=dino``) an
    image folder (recursive) or a benchmark's images."""
    from labelless.masks.store import MaskStoreDataset

    if cfg.masks == "store":
        return MaskStoreDataset(cfg.mask_store, short_side=cfg.load_short_side, max_masks=cfg.max_masks)
    if cfg.images:
        if not Path(cfg.images).is_dir():
            raise MissingFileError(f"image folder not found: {cfg.images}")
        return ImageFolderDataset(expand_images([cfg.images], recursive=True))
    from labelless.data.benchmarks import load_benchmark

    return ImageFolderDataset([s.image for s in load_benchmark(cfg.dataset, cfg.data_root, cfg.split).samples])


def build_loader(cfg: PixelCLIPConfig, rank: int, world: int, micro_batch: int, start_samples: int,
                 pin: bool) -> DataLoader:
    """The endless loader of this rank; ``start_samples``: samples it already consumed."""
    from labelless.data.stream import SA1BStream, expand_shards

    aug = augment_config(cfg)
    # the loader's own generator: creating its iterator must not draw from the global RNG
    common = dict(batch_size=micro_batch, num_workers=cfg.num_workers, collate_fn=collate, pin_memory=pin,
                  persistent_workers=cfg.num_workers > 0, generator=torch.Generator().manual_seed(cfg.seed))
    if cfg.masks == "sa1b" or (cfg.masks == "dino" and cfg.sa1b_tars):
        max_masks = 0 if cfg.masks == "dino" else cfg.max_masks  # dino: SA-1B images only, no mask decoded
        stream = SA1BStream(expand_shards(cfg.sa1b_tars), partial(augmented_sample, aug), micro_batch, cfg.seed,
                            rank, world, start_samples // micro_batch, cfg.load_short_side, max_masks)
        return DataLoader(stream, **common)
    dataset = AugmentedDataset(map_source(cfg), aug)
    sampler = SeededSampler(len(dataset), cfg.seed, rank, world, start=start_samples)
    return DataLoader(dataset, sampler=sampler, **common)


class OnlineDinoMasks:
    """``masks=dino``: DINO k-means masks of the weak views (crop resolution), then both
    views resized to the CLIP resolution, as the official code (no cutout removal unless
    ``dino_remove_cutout``)."""

    def __init__(self, cfg: PixelCLIPConfig, device: torch.device):
        from labelless.masks.dino import load_dino

        self.cfg, self.device = cfg, device
        self.backbone = load_dino(cfg.dino_model, device)

    @torch.no_grad()
    def __call__(self, batch: dict) -> dict:
        from labelless.masks.online import padded_kmeans_masks

        cfg = self.cfg
        weak = batch["image_weak"].to(self.device)  # B×3×C×C, C = crop_size
        images = (weak * 255).round().to(torch.uint8)
        masks, valid = padded_kmeans_masks(self.backbone, images, cfg.dino_k, size=cfg.dino_size, seed=cfg.seed,
                                           cosine=cfg.dino_cosine)
        side = weak.shape[-1]
        if cfg.dino_remove_cutout and cfg.strong_aug:
            for i in range(len(masks)):
                top, left, bh, bw = (int(v) for v in batch["cutout"][i])
                ch, cw = (int(v) for v in batch["crop_hw"][i])
                box = box_rows(side, ch, top, bh)[:, None] & box_rows(side, cw, left, bw)[None, :]
                masks[i] &= ~box.to(self.device)
        size = (cfg.resolution, cfg.resolution)
        out = dict(batch)
        out["image_weak"] = F.interpolate(weak, size=size, mode="bilinear", align_corners=False)
        out["image_strong"] = F.interpolate(batch["image_strong"].to(self.device), size=size,
                                            mode="bilinear", align_corners=False)
        out["masks"], out["valid"] = masks, valid
        return out
