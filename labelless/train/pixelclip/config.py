"""PixelCLIP's run config: one flat YAML per paper row (``configs/pixelclip_*.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from labelless.errors import ConfigError
from labelless.train.config import RunConfig


@dataclass
class PixelCLIPConfig(RunConfig):
    """PixelCLIP training (``labelless train pixelclip``). Paper values in brackets;
    the run and bookkeeping fields are :class:`RunConfig`'s."""

    run_dir: str = "runs/pixelclip"  # checkpoints, config.yaml, TensorBoard logs, clip.pt

    # --- model
    model: str = "ViT-B-16"  # open_clip name [ViT-B-16 | convnext_base_w_320], or tiny-vit / tiny-convnext
    pretrained: str | None = "openai"  # tag or file [openai | laion_aesthetic_s13b_b82k]; none = random
    cache_dir: str | None = None  # open_clip weight cache
    init: str | None = None  # an official PixelCLIP checkpoint (hsshin98/PixelCLIP *.pth) to start from:
    #                          student CLIP, EMA teacher, prompts and decoder (then `pretrained` is not used)
    resolution: int = 320  # CLIP input side for student and teacher [320 ViT-B/16, 640 ConvNeXt-B]
    num_clusters: int = 64  # k learnable class prompts [64; ablations 128, 256]
    prompt_length: int = 4  # learnable tokens per prompt [4]
    prompt_seed: int = 0  # seed of the random vocabulary ids that initialise the prompts [0]
    prompt_words: list[str] = field(default_factory=list)  # init ids drawn from these words' tokens
    #                                     ([]: the paper, the whole vocabulary; see pixelclip/prompts.py)
    cluster_scale: float | None = None  # logits = scale·cos(mask, prompt) for Sinkhorn [100 ViT, 1 ConvNeXt]
    #                                     (None: by backbone)
    finetune: str | None = None  # attention (ViT: attn + positional params) | full | none [None: by backbone]
    sinkhorn_iters: int = 3  # Sinkhorn-Knopp iterations [3]
    mask_size: int = 256  # side of the pooled masks and decoder output [256]
    ema: float = 0.999  # momentum of the teacher image encoder [0.999]

    # --- data (masks: store | sa1b | dino)
    masks: str = "store"  # store: a labelless mask store; sa1b: SA-1B .tar shards; dino: k-means online
    mask_store: str | None = None  # masks=store: the store folder (labelless masks generate/import)
    sa1b_tars: list[str] = field(default_factory=list)  # masks=sa1b (or dino: images only): shard paths / globs
    #                                                      [the official list: 100 tars ≈ 5% of SA-1B]
    images: str | None = None  # masks=dino: a folder of images ...
    dataset: str | None = None  # ... or a benchmark's images (labels unused), e.g. camvid
    data_root: str | None = None  # root of that benchmark
    split: str = "train"
    dino_model: str = "facebook/dino-vits16"  # masks=dino: hub name or local folder [DINO ViT-S/16]
    dino_k: int = 16  # masks=dino: k-means clusters per image [16]
    dino_size: int | None = None  # masks=dino: DINO input side (None: the crop, floored to the patch size)
    dino_cosine: bool = False  # masks=dino: cosine k-means (official: Euclidean, fast_pytorch_kmeans)
    dino_remove_cutout: bool = False  # masks=dino: remove the student's cutout from the masks [no, official]
    load_short_side: int | None = None  # resize when reading (short side) [750: SA-1B pre-resized]
    max_masks: int | None = None  # keep the largest N masks per image [all]
    short_side: int = 1024  # augmentation: resize short side [1024] ...
    max_size: int = 1333  # ... long side at most [1333, detectron2's default]
    crop_size: int = 640  # augmentation: random crop [640]
    strong_aug: bool = True  # student gets colour/grey/blur + one cutout removed from the masks [yes]

    # --- optimisation (grad_accum: Sinkhorn's equipartition then spans each micro-batch's
    #     masks on all ranks, not the whole step's: accumulation is not a bigger batch here)
    batch_size: int = 48  # global batch over all GPUs and accumulation steps [48 = 4 GPUs × 12]
    max_steps: int = 10000  # iterations [10k]
    lr: float = 2e-4  # AdamW base lr (decoder) [2e-4]
    clip_lr_mult: float = 0.01  # lr multiplier of the CLIP image-encoder parameters [0.01]
    prompt_lr_mult: float = 10.0  # lr multiplier of the prompt tokens [10]
    weight_decay: float = 1e-4  # [1e-4]
    norm_weight_decay: float = 0.0  # on normalisation-layer parameters [0: detectron2 WEIGHT_DECAY_NORM]
    lr_end: float = 0.5  # cosine decay to lr_end × lr, no warmup [0.5]
    grad_clip: float | None = 0.01  # max global grad norm over the full model [0.01]

    # --- bookkeeping
    num_workers: int = 8  # data-loader workers per rank
    log_every: int = 20  # steps between TensorBoard/tqdm scalars
    checkpoint_every: int = 1000  # steps between checkpoints (also written at the end)
    export: str = "clip.pt"  # student CLIP exported at the end (relative to run_dir)

    def check(self) -> None:
        super().check()
        if self.masks not in ("store", "sa1b", "dino"):
            raise ConfigError(f"masks must be store, sa1b or dino, got {self.masks!r}")
        if self.masks == "store" and not self.mask_store:
            raise ConfigError("masks=store needs mask_store=FOLDER")
        if self.masks == "sa1b" and not self.sa1b_tars:
            raise ConfigError("masks=sa1b needs sa1b_tars=[shard paths or globs]")
        if self.masks == "dino" and not (self.images or self.sa1b_tars or (self.dataset and self.data_root)):
            raise ConfigError("masks=dino needs images: images=FOLDER, sa1b_tars=[...] (their images), "
                              "or dataset=NAME and data_root=FOLDER")
