"""A feature cache for S-Seg runs with a frozen Hugging Face ViT backbone (DINO / DINOv2):
the crops are drawn once, and each crop's patch tokens (the backbone's whole output, since
it does not train) and its DINO k-means pseudo-masks are computed once, so training runs
only the trainable parts (the feature pyramid, pixel and transformer decoders, the text
encoder). On a CPU this turns hours into minutes; on a GPU it saves the backbone forward.

``build_cache(cfg, out)`` writes ``out/cache.pt``: ``images`` uint8 ``N×3×S×S`` (so a
trainable backbone can use the same crops and pseudo-masks), ``tokens`` float16
``N×C×h×w`` (None without a frozen ViT), ``labels`` uint8 ``N×S×S`` (the k-means cluster of
every pixel: the pseudo-masks partition each crop), ``captions``, ``names``, and the
settings it was made with. The crops are the ``data=benchmark`` / ``data=captions`` pairs of
the config at positions ``0 … N-1`` of its dataset, each with the seed of its position (no
flip: a flipped token map is not the ViT's output of the flipped image).

Built by ``labelless train sseg-cache --config FILE --out DIR [key=value ...]`` (the same
run config as the training; the frozen ViT is the model config's backbone unless
``--backbone`` names another), which also writes ``DIR/captions.json`` (``caption_stats``).

``data=cache`` trains on it (``CachedPairs``): every epoch is a new order of the same
crops. Pseudo-masks: k-means (K = ``dino_k``) of the cached tokens when they exist (the
backbone is the DINO), else of ``dino_model``'s features, as ``masks=dino`` computes them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from tqdm import tqdm

from labelless.errors import MissingFileError
from labelless.fileio import atomic_path
from labelless.train.sseg.config import SSegTrainConfig

CACHE_FILE = "cache.pt"


def _kmeans_labels(tokens: torch.Tensor, k: int, size: int, seed: int, cosine: bool) -> torch.Tensor:
    """``B×C×h×w`` patch features → ``B×S×S`` uint8 cluster ids, nearest-upsampled (k-means
    per image, as ``masks.dino.dino_kmeans_masks`` clusters DINO patch features)."""
    from labelless.masks.kmeans import kmeans

    b, c, h, w = tokens.shape
    assign, _ = kmeans(tokens.float().flatten(2).transpose(1, 2), min(k, h * w), seed=seed, cosine=cosine)
    labels = F.interpolate(assign.reshape(b, 1, h, w).float(), size=(size, size), mode="nearest")
    return labels[:, 0].to(torch.uint8)


@torch.no_grad()
def build_cache(cfg: SSegTrainConfig, out: str | Path, backbone: str | None = None, batch: int = 16) -> Path:
    """Crops of ``cfg``'s pairs, their frozen-ViT tokens (``backbone``: an ``hf:`` spec, or None)
    and pseudo-masks (module docstring) → ``out/cache.pt``."""
    from labelless.data.pairs import build_pairs
    from labelless.masks.dino import load_dino
    from labelless.models.backbones import IMAGENET_MEAN, IMAGENET_STD, HFViTBackbone

    size = cfg.image_size or 224
    pairs = build_pairs(dataclasses.replace(cfg, hflip=False), size)
    vit = HFViTBackbone(backbone[len("hf:"):]).eval() if backbone else None
    dino = None if vit is not None else load_dino(cfg.dino_model)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    images, tokens, labels, captions, names = [], [], [], [], []
    for start in tqdm(range(0, len(pairs), batch), desc="cache", unit="batch"):
        items = [pairs[(i, i)] for i in range(start, min(start + batch, len(pairs)))]
        items = [it for it in items if it is not None]
        if not items:
            continue
        x = torch.stack([it["image"] for it in items])
        feats = vit.tokens((x - mean) / std) if vit is not None else \
            dino.patch_features((x * 255).round().to(torch.uint8), size=cfg.dino_size).permute(0, 3, 1, 2)
        labels.append(_kmeans_labels(feats, cfg.dino_k, size, cfg.seed, cfg.dino_cosine))
        images.append((x * 255).round().to(torch.uint8))
        tokens.append(feats.half() if vit is not None else None)
        captions += [it["caption"] for it in items]
        names += [it["name"] for it in items]
    payload = {"images": torch.cat(images), "tokens": torch.cat(tokens) if vit is not None else None,
               "labels": torch.cat(labels), "captions": captions, "names": names, "size": size,
               "backbone": backbone, "dino_k": cfg.dino_k}
    path = Path(out) / CACHE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def default_backbone(cfg: SSegTrainConfig) -> str | None:
    """The model config's backbone when it is a frozen Hugging Face ViT (its tokens can be
    cached), else None (the cache holds crops and pseudo-masks only)."""
    from labelless.models.sseg import sseg_config

    image = sseg_config(cfg.model).image
    return image.backbone if image.freeze_backbone and image.backbone.startswith("hf:") else None


def caption_stats(folder: str | Path, template: str = "a photo of {}") -> dict:
    """What the captions of a cache say: crops, distinct captions, names per caption, how many
    captions name each class (names read back through ``template`` and ``join_names``), the
    most frequent captions."""
    import collections
    import re

    data = torch.load(Path(folder) / CACHE_FILE, map_location="cpu", weights_only=True, mmap=True)
    caps = collections.Counter(data["captions"])
    head, _, tail = template.partition("{}")
    names = [re.split(r", | and ", c[len(head):len(c) - len(tail)])
             if c.startswith(head) and c.endswith(tail) else [c] for c in data["captions"]]
    per_class = collections.Counter(n for ns in names for n in ns)
    return {"crops": len(data["captions"]), "distinct_captions": len(caps),
            "names_per_caption": dict(sorted(collections.Counter(len(ns) for ns in names).items())),
            "captions_naming_class": dict(per_class.most_common()), "top_captions": caps.most_common(12)}


def cached_tokens_usable(cfg: SSegTrainConfig, model) -> bool:
    """Whether a ``data=cache`` run feeds the cached tokens to ``model`` (a frozen ViT backbone,
    the one the cache was made with) instead of running its backbone; ConfigError when the
    model is that kind of backbone but the cache holds another's tokens."""
    from labelless.errors import ConfigError

    image = model.cfg.image
    if cfg.data != "cache" or not (image.freeze_backbone and image.backbone.startswith("hf:")):
        return False
    meta = torch.load(Path(cfg.cache) / CACHE_FILE, map_location="cpu", weights_only=True, mmap=True)
    if meta["backbone"] != image.backbone:
        raise ConfigError(f"the cache {cfg.cache} holds tokens of {meta['backbone']!r}, the model's frozen "
                          f"backbone is {image.backbone!r}: build the cache with it")
    return True


class CachedPairs(Dataset):
    """The crops of a cache: item ``(index, seed)`` → ``{"image", "caption", "name", "masks", ["tokens"]}``."""

    def __init__(self, folder: str | Path):
        path = Path(folder) / CACHE_FILE
        if not path.is_file():
            raise MissingFileError(f"no S-Seg feature cache at {path} (build it with build_cache)")
        self.data = torch.load(path, map_location="cpu", weights_only=True)

    def __len__(self) -> int:
        return len(self.data["captions"])

    def __getitem__(self, item) -> dict:
        i = item[0] if isinstance(item, tuple) else item
        labels = self.data["labels"][i].long()
        out = {"image": self.data["images"][i].float() / 255.0, "caption": self.data["captions"][i],
               "name": self.data["names"][i], "masks": labels[None] == labels.unique()[:, None, None]}
        if self.data["tokens"] is not None:
            out["tokens"] = self.data["tokens"][i].float()
        return out
