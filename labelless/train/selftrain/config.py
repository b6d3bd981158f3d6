"""The self-training run config (``configs/selftrain_*.yaml``): a closed-vocabulary segmenter
(``models/segmenter.py``) trained with cross-entropy on a pseudo-label store
(``labelless selftrain label``). S-Seg+'s values in brackets (the paper: UperNet on an
MAE-pretrained ViT-B, one round); mmsegmentation's UperNet defaults where it is silent."""

from __future__ import annotations

from dataclasses import dataclass, field

from labelless.errors import ConfigError
from labelless.train.config import RunConfig


@dataclass
class SelfTrainConfig(RunConfig):
    """``labelless train selftrain``; run and bookkeeping fields: ``RunConfig``."""

    run_dir: str = "runs/selftrain"

    # --- data: the images of a dataset split + the pseudo-labels of a label store
    dataset: str | None = None  # a labelless benchmark key (its images; its labels are never read)
    data_root: str | None = None
    split: str = "train"
    store: str | None = None  # the label store (labelless selftrain label --out STORE)
    min_confidence: float | None = None  # re-filter: pixels below this confidence → ignore
    crop_size: int = 512  # [512]
    base_size: int | None = None  # short side before scale jitter (None: crop_size)
    scale_min: float = 0.5  # scale jitter of base_size [mmseg: 0.5–2.0]
    scale_max: float = 2.0
    hflip: bool = True
    color_jitter: float = 0.4  # brightness/contrast/saturation strength (0: off) [mmseg photometric]
    hue_jitter: float = 0.05

    # --- model (models/segmenter.py): the flat keys of SegmenterConfig
    backbone: str = "timm:vit_base_patch16_224.mae"  # [MAE ViT-B]
    backbone_options: dict = field(default_factory=lambda: {"img_size": 512})
    pretrained: bool = True  # timm's weights of the backbone by name
    weights: str | None = None  # a local backbone weight file instead
    freeze_backbone: bool = False  # train the head (and a ViT neck / pyramid) only
    head: str = "upernet"  # upernet | fpn | linear
    channels: int = 512
    norm: str = "bn"
    dropout: float = 0.1
    backbone_lr_mult: float = 0.1  # lr × this for the pretrained part (timm model / DINO ViT), not a ViT neck
    sync_bn: bool = True  # BatchNorm → SyncBatchNorm under DDP (mmseg's SyncBN)

    # --- optimisation
    batch_size: int = 16  # [mmseg: 16]
    max_steps: int = 40000
    lr: float = 1e-4
    weight_decay: float = 0.05
    schedule: str = "poly"  # poly | cosine
    poly_power: float = 1.0
    warmup_steps: int = 1500
    grad_clip: float | None = None
    amp: str = "bf16"
    export: str = "model.pt"

    def check(self) -> None:
        super().check()
        if not self.dataset or not self.data_root or not self.store:
            raise ConfigError("selftrain needs dataset=, data_root= (its images) and store= (the pseudo-labels)")
        if self.schedule not in ("poly", "cosine"):
            raise ConfigError(f"schedule must be poly or cosine, got {self.schedule!r}")
        if not 0 < self.scale_min <= self.scale_max:
            raise ConfigError("need 0 < scale_min ≤ scale_max")
        if self.crop_size < 32:
            raise ConfigError("crop_size must be ≥ 32")
        if self.min_confidence is not None and not 0 <= self.min_confidence <= 1:
            raise ConfigError("min_confidence must be in [0, 1]")
        if self.head == "linear":  # it reads one level: the backbone's later stages get no gradient
            self.ddp_find_unused = True
