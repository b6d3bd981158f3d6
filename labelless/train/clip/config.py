"""Plain CLIP training's run config (``configs/clip_*.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass

from labelless.errors import ConfigError
from labelless.train.config import RunConfig


@dataclass
class ClipConfig(RunConfig):
    """Plain CLIP contrastive training (``labelless train clip``); the run and bookkeeping
    fields are :class:`RunConfig`'s."""

    run_dir: str = "runs/clip"

    # --- model
    model: str = "tiny-vit"  # any open_clip name, tiny-vit / tiny-convnext / tiny-timm-vit (image_tower: text only)
    pretrained: str | None = None  # tag or file; none = random
    cache_dir: str | None = None
    image_size: int | None = None  # training input side (None: the model's; image_tower: 224)

    # --- LiT (Zhai et al. 2022; models/lit.py): a pretrained image tower, locked, and a text tower trained to it
    image_tower: str | None = None  # a DINOv2 save_pretrained folder (e.g. ../shared/weights/dinov2-small) as the
    #                                 image tower; `model` then gives only the text tower and embed_dim (random)
    image_proj: str = "linear"  # image_tower: the trainable head on its class token: linear | mlp
    lock_image: bool | None = None  # lock the image tower but its projection head; None: true with image_tower
    image_cache: str | None = None  # a locked image_tower: FILE (e.g. runs/lit_cache.pt) of the trunk's pooled
    #                                 output for fixed crops (train/clip/cache.py): reused when its settings match,
    #                                 else built; training then runs only the head and the text tower
    cache_views: int = 8  # image_cache: random crops per image in the cache (instead of crops_per_image)
    cache_seed: int = 0  # image_cache: the seed of the cached crops (not `seed`: runs of every seed share them)

    # --- data (data: benchmark | captions)
    data: str = "benchmark"  # benchmark: labelled dataset, captions from class names in random crops
    dataset: str | None = "camvid"  # data=benchmark: any labelless benchmark key
    data_root: str | None = None
    split: str = "train"
    layout: str = "auto"
    captions: str | None = None  # data=captions: JSON lines {"image": path, "caption": text}, or CSV / TSV
    image_column: str = "image"  # data=captions: the key / column of the image path
    caption_column: str = "caption"  # data=captions: the key / column of the caption
    images_root: str | None = None  # data=captions: base folder of relative image paths
    caption_template: str = "a photo of {}"  # "{}" gets "road and car" / "road, car and sky"
    crops_per_image: int = 4  # samples per image and epoch (each a fresh random crop)
    crop_scale_min: float = 0.2  # crop area as a fraction of the image, range
    crop_scale_max: float = 1.0
    min_class_fraction: float = 0.02  # a class is named when it covers ≥ this fraction of the crop
    caption_order: str = "area"  # data=benchmark: names largest first (area) or in class order (class)
    max_names: int = 3  # at most this many class names (largest first)
    hflip: bool = True

    # --- optimisation (grad_accum: features of every micro-batch are cached, so each
    #     micro-step's InfoNCE sees the whole step's negatives: the same loss as one big batch)
    batch_size: int = 32  # global batch (negatives gathered over all ranks and micro-batches)
    max_steps: int = 200
    lr: float = 5e-4
    weight_decay: float = 0.1
    warmup_steps: int = 10
    grad_clip: float | None = 1.0
    logit_scale_max: float = 100.0  # the learnable temperature is clamped to ≤ this

    # --- bookkeeping
    export: str = "clip.pt"

    def check(self) -> None:
        super().check()
        if self.data not in ("benchmark", "captions"):
            raise ConfigError(f"data must be benchmark or captions, got {self.data!r}")
        if self.data == "benchmark" and not (self.dataset and self.data_root):
            raise ConfigError("data=benchmark needs dataset=NAME and data_root=FOLDER")
        if self.data == "captions" and not self.captions:
            raise ConfigError("data=captions needs captions=FILE.jsonl")
        if self.caption_order not in ("area", "class"):
            raise ConfigError(f"caption_order must be area or class, got {self.caption_order!r}")
        if "{}" not in self.caption_template:
            raise ConfigError("caption_template needs a '{}' placeholder")
        if not 0 < self.crop_scale_min <= self.crop_scale_max <= 1:
            raise ConfigError("need 0 < crop_scale_min ≤ crop_scale_max ≤ 1")
        if self.image_tower is not None:
            if self.pretrained not in (None, "", "none"):
                raise ConfigError(f"image_tower={self.image_tower} builds a new CLIP around it: pretrained must be "
                                  f"none (got {self.pretrained!r}); `model` names the text tower's architecture")
            if self.image_proj not in ("linear", "mlp"):
                raise ConfigError(f"image_proj must be linear or mlp, got {self.image_proj!r}")
        if self.image_cache and not (self.image_tower and self.locks_image):
            raise ConfigError(f"image_cache={self.image_cache} caches a locked LiT image tower's features: it needs "
                              "image_tower=FOLDER with lock_image true (a trainable tower's features change)")
        if self.cache_views < 1:
            raise ConfigError(f"cache_views must be ≥ 1, got {self.cache_views}")

    @property
    def locks_image(self) -> bool:
        """Whether the image tower is locked (``lock_image``, default: with ``image_tower``)."""
        return self.image_tower is not None if self.lock_image is None else self.lock_image
