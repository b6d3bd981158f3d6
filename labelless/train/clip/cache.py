"""A feature cache for LiT runs (``train clip image_tower=FOLDER image_cache=FILE``): the locked
image trunk never changes, so its output for a fixed set of crops is computed once and a step
runs only what trains (the image projection head, the text tower, the temperature). On a
CPU the locked DINOv2-S forward is nearly all of an uncached step.

``build_cache`` writes ``FILE`` (``torch.save``, atomically): ``feats`` float32 ``N×D`` — what
``visual.trunk(x)`` returns for the CLIP-normalised crop ``x`` (the class token after the final
LayerNorm for a DINOv2 tower), i.e. *before* ``visual.head`` — with the crops' ``captions`` and
``names``, the number of unreadable images ``skipped``, and the ``settings`` it was made with
(``cache_settings``). The crops: the config's ``build_pairs`` dataset with ``crops_per_image =
cache_views`` (a captions file: each row ``cache_views`` times), items ``(i, seed_i)`` for
positions ``i = 0 … N-1``, ``N = images × cache_views``, ``seed_i = cache_seed · 2⁴⁰ + i``
(``cache_seed=0``: ``seed_i = i``, as the S-Seg cache). The run's ``seed`` is not used: the
runs of an experiment's seeds share one cache and see the same crops (their sample order,
head and text tower differ). Flips stay as configured (``hflip``): for a pooled embedding a
flipped crop is just another image (unlike the S-Seg token cache, which must not flip).
Unreadable images are skipped and counted, as the pairs datasets do.

``load_or_build(cfg, dense, size)``: the run's cache, reused when its settings equal this run's
(else a ConfigError naming the differing keys and the file), else built by the main process
while the others wait at a barrier. ``cached_batches`` turns it into the step's micro-batches
(``SeededSampler`` order: a resumed run skips what it consumed; the per-sample seeds are not
needed, the crops are fixed) and ``CachedLiT`` is what a cached step runs (and DDP wraps).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from labelless.errors import ConfigError, describe
from labelless.fileio import atomic_path

FORMAT = "labelless-lit-cache"
SEED_STRIDE = 2**40  # seed_i = cache_seed · SEED_STRIDE + i (distinct for any N < 2⁴⁰)


def _path(value: str | None) -> str | None:
    return None if value in (None, "") else str(Path(value).expanduser().resolve())


def cache_settings(cfg, size: int) -> dict:
    """What the cached features depend on (paths resolved, so two spellings of one folder
    match): the tower, the side, the data and crop / caption settings of its kind, views, seed."""
    out = {"format": FORMAT, "image_tower": _path(cfg.image_tower), "image_size": int(size), "data": cfg.data,
           "crop_scale_min": cfg.crop_scale_min, "crop_scale_max": cfg.crop_scale_max, "hflip": cfg.hflip,
           "cache_views": cfg.cache_views, "cache_seed": cfg.cache_seed}
    if cfg.data == "benchmark":
        out.update(dataset=cfg.dataset, data_root=_path(cfg.data_root), split=cfg.split, layout=cfg.layout,
                   caption_template=cfg.caption_template, min_class_fraction=cfg.min_class_fraction,
                   caption_order=cfg.caption_order, max_names=cfg.max_names)
    else:
        out.update(captions=_path(cfg.captions), images_root=_path(cfg.images_root),
                   image_column=cfg.image_column, caption_column=cfg.caption_column)
    return out


def cache_items(cfg, size: int) -> tuple[torch.utils.data.Dataset, list[tuple[int, int]]]:
    """The pairs dataset of the cached crops and its ``(index, seed)`` items, in cache order."""
    import dataclasses

    from labelless.data.pairs import build_pairs

    views = cfg.cache_views
    dataset = build_pairs(dataclasses.replace(cfg, crops_per_image=views), size)
    per_position = cfg.data == "benchmark"  # its length is already images × views
    n = len(dataset) if per_position else len(dataset) * views
    return dataset, [(i if per_position else i // views, cfg.cache_seed * SEED_STRIDE + i) for i in range(n)]


@torch.no_grad()
def build_cache(cfg, dense, size: int, path: str | Path) -> Path:
    """The trunk's features of the cached crops (module docstring) → ``path``; ``dense`` is the
    LiT ``DenseCLIP`` (its trunk runs in eval mode, in batches of ``batch_size``)."""
    from torch.utils.data import DataLoader

    from labelless.data.pairs import collate_pairs

    dataset, items = cache_items(cfg, size)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=items, num_workers=cfg.num_workers,
                        collate_fn=collate_pairs, generator=torch.Generator().manual_seed(cfg.cache_seed))
    trunk, device = dense.clip.visual.trunk, next(dense.clip.parameters()).device
    was_training = trunk.training
    trunk.eval()
    feats, captions, names, skipped, start = [], [], [], 0, time.perf_counter()
    for batch in tqdm(loader, desc="lit cache", unit="batch", file=sys.stdout):
        skipped += batch["skipped"]
        if not len(batch["caption"]):
            continue
        feats.append(trunk(dense.normalize(batch["image"].to(device))).float().cpu())  # B×D
        captions += batch["caption"]
        names += batch["name"]
    trunk.train(was_training)
    if not feats:
        raise ConfigError(f"image_cache={path}: no readable image to cache ({skipped} unreadable)")
    payload = {"format": FORMAT, "feats": torch.cat(feats), "captions": captions, "names": names,
               "skipped": skipped, "settings": cache_settings(cfg, size)}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    print(f"built {path}: {len(captions)} crops × {payload['feats'].shape[1]} in "
          f"{time.perf_counter() - start:.0f} s ({skipped} unreadable images skipped)", flush=True)
    return Path(path)


def read_cache(path: str | Path, settings: dict) -> dict:
    """The cache at ``path``; ConfigError when it is not one or was built with other ``settings``."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 (any unreadable file: one clear message)
        raise ConfigError(f"image_cache={path} cannot be read ({describe(e)}): delete it to rebuild it") from e
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ConfigError(f"image_cache={path} is not a LiT feature cache: delete it or name another file")
    old = data["settings"]
    diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
    if diff:
        said = "; ".join(f"{k}: cache {old.get(k)!r}, run {settings.get(k)!r}" for k in diff)
        raise ConfigError(f"image_cache={path} was built with other settings ({said}): delete it to rebuild "
                          "it, or set image_cache to another file")
    return data


def load_or_build(cfg, dense, size: int, is_main: bool = True) -> dict:
    """The run's cache (module docstring): reused when it matches, else built by the main
    process (the others wait at a barrier)."""
    from labelless.distributed import barrier

    path = Path(cfg.image_cache)
    if is_main and not path.is_file():
        build_cache(cfg, dense, size, path)
    barrier()
    return read_cache(path, cache_settings(cfg, size))


def cached_batches(cache: dict, sampler, micro_batch: int):
    """Endless micro-batches ``{"image": n×D trunk features, "caption", "skipped": 0}`` in the
    order of ``sampler`` (``(index, seed)`` items; the seeds are unused: the crops are fixed)."""
    feats, captions, items = cache["feats"], cache["captions"], iter(sampler)
    while True:
        idx = [next(items)[0] for _ in range(micro_batch)]
        yield {"image": feats[idx], "caption": [captions[i] for i in idx], "skipped": 0}


class CachedLiT(nn.Module):
    """A cached LiT step's forward: ``(feats n×D, text tokens)`` → what the CLIP's forward
    returns for the crops the features come from: ``F.normalize(visual.head(feats))`` (open_clip:
    ``encode_image(normalize=True)`` = normalise(head(trunk(x)))), the normalised text features
    and ``logit_scale.exp()``. A module, so that DDP syncs the gradients of what trains."""

    def __init__(self, clip: nn.Module):
        super().__init__()
        self.clip = clip

    def forward(self, feats: torch.Tensor, text: torch.Tensor):
        image = F.normalize(self.clip.visual.head(feats), dim=-1)
        return image, self.clip.encode_text(text, normalize=True), self.clip.logit_scale.exp()
