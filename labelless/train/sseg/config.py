"""S-Seg's run config (``configs/sseg_*.yaml``). Paper values in brackets; (unverified)
marks what no source states."""

from __future__ import annotations

from dataclasses import dataclass, field

from labelless.errors import ConfigError
from labelless.train.config import RunConfig


@dataclass
class SSegTrainConfig(RunConfig):
    """S-Seg training (``labelless train sseg``); run and bookkeeping fields: ``RunConfig``."""

    run_dir: str = "runs/sseg"

    # --- model
    model: str = "sseg-tiny"  # a shipped model config (sseg-paper, sseg-tiny) or a JSON file
    init: str | None = None  # a labelless S-Seg checkpoint to start from (weights only)
    image_size: int | None = None  # training side (None: the model config's) [448]

    # --- data (data: shards | captions | benchmark | cache)
    data: str = "shards"  # shards: img2dataset webdataset tars; captions: a JSONL/CSV/TSV file;
    #                       benchmark: class-name captions of crops of a labelled dataset
    shards: list[str] = field(default_factory=list)  # data=shards: paths / globs / URLs [CC3M+CC12M+RedCaps]
    captions: str | None = None  # data=captions
    image_column: str = "image"
    caption_column: str = "caption"
    images_root: str | None = None
    cache: str | None = None  # data=cache: a feature cache folder (train/sseg/cache.py; pseudo-masks inside)
    dataset: str | None = None  # data=benchmark: any labelless benchmark key (labels only make captions)
    data_root: str | None = None
    split: str = "train"
    layout: str = "auto"
    caption_template: str = "a photo of {}"
    crops_per_image: int = 4
    min_class_fraction: float = 0.02
    caption_order: str = "area"  # data=benchmark: names largest first (area) or in class order (class)
    max_names: int = 3
    crop_scale_min: float = 0.5  # random crop area fraction (unverified)
    crop_scale_max: float = 1.0
    hflip: bool = True

    # --- pseudo-masks (masks: dino | store)
    masks: str = "dino"  # dino: k-means of DINO patch features, online on the accelerator
    dino_model: str = "facebook/dino-vits8"  # hub name or local folder [DINO ViT-S/8]
    dino_k: int = 8  # clusters per image [8]
    dino_size: int | None = None  # DINO input side (None: the training side)
    dino_cosine: bool = True  # cosine k-means of the patch features (unverified)
    mask_store: str | None = None  # masks=store: a labelless mask store of the training images

    # --- losses [S-Seg: 1·mask + 1·contrastive; mask = Dice ×1 + focal ×20 on matched pairs]
    mask_weight: float = 1.0
    contrastive_weight: float = 1.0
    dice_weight: float = 1.0
    focal_weight: float = 20.0
    focal_alpha: float = 0.25  # MaskFormer's (unverified for S-Seg)
    focal_gamma: float = 2.0
    match_dice_weight: float = 1.0  # matching cost (unverified: Dice + focal, MaskFormer's weights)
    match_focal_weight: float = 20.0
    deep_supervision: bool = True  # every decoder layer matched and supervised (MaskFormer; unverified)

    # --- optimisation [AdamW, lr 5e-4, batch 4096, 30 epochs; schedule unverified: cosine]
    batch_size: int = 4096
    max_steps: int = 190430  # 30 epochs × 26M pairs / 4096
    lr: float = 5e-4
    weight_decay: float = 0.05  # (unverified)
    warmup_steps: int = 2000  # (unverified)
    grad_clip: float | None = 1.0  # (unverified)
    amp: str = "bf16"  # on CUDA (ignored on CPU)

    # --- bookkeeping
    num_workers: int = 8
    log_every: int = 50
    checkpoint_every: int = 2000
    export: str = "model.pt"

    def check(self) -> None:
        super().check()
        if self.data not in ("shards", "captions", "benchmark", "cache"):
            raise ConfigError(f"data must be shards, captions, benchmark or cache, got {self.data!r}")
        if self.data == "cache" and not self.cache:
            raise ConfigError("data=cache needs cache=FOLDER (train/sseg/cache.py build_cache)")
        if self.data == "shards" and not self.shards:
            raise ConfigError("data=shards needs shards=[paths or globs of img2dataset .tar shards]")
        if self.data == "captions" and not self.captions:
            raise ConfigError("data=captions needs captions=FILE (.jsonl, .csv or .tsv)")
        if self.data == "benchmark" and not (self.dataset and self.data_root):
            raise ConfigError("data=benchmark needs dataset=NAME and data_root=FOLDER")
        if self.masks not in ("dino", "store"):
            raise ConfigError(f"masks must be dino or store, got {self.masks!r}")
        if self.masks == "store" and (not self.mask_store or self.data == "shards"):
            raise ConfigError("masks=store needs mask_store=FOLDER and image files (data=captions or benchmark)")
        if self.caption_order not in ("area", "class"):
            raise ConfigError(f"caption_order must be area or class, got {self.caption_order!r}")
        if self.dino_k < 1:
            raise ConfigError("dino_k must be ≥ 1")
        if not 0 < self.crop_scale_min <= self.crop_scale_max <= 1:
            raise ConfigError("need 0 < crop_scale_min ≤ crop_scale_max ≤ 1")
