"""Run configurations: one flat YAML file per run → a typed dataclass.

``load_config(TrainConfig, "configs/pixelclip_vitb16_sam.yaml", ["lr=1e-4", "max_steps=100"])``
reads the file, applies ``key=value`` overrides from the command line (values parsed as
YAML scalars, then converted to the field's type), and checks every key. A run writes
the fully resolved config next to its outputs (``run_dir/config.yaml``) and stores it
in every checkpoint, so a run can be rebuilt from either.

There is no inheritance between files: what runs is what one file says (plus the
documented defaults below). The defaults of :class:`TrainConfig` are the paper's
schedule for PixelCLIP ViT-B/16 with SA-1B masks ("5% SA-1B" row).
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml


@dataclass
class TrainConfig:
    """PixelCLIP training (``labelless train pixelclip``). Paper values in brackets."""

    # --- run
    run_dir: str = "runs/pixelclip"  # checkpoints, config.yaml, TensorBoard logs, clip.pt
    seed: int = 0
    device: str = "auto"  # auto (cuda:LOCAL_RANK when present, else cpu), cpu, cuda

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
    #                                     ([]: the paper, the whole vocabulary; see train/prompts.py)
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

    # --- optimisation
    batch_size: int = 48  # global batch over all GPUs and accumulation steps [48 = 4 GPUs × 12]
    grad_accum: int = 1  # micro-batches per step on each rank
    max_steps: int = 10000  # iterations [10k]
    lr: float = 2e-4  # AdamW base lr (decoder) [2e-4]
    clip_lr_mult: float = 0.01  # lr multiplier of the CLIP image-encoder parameters [0.01]
    prompt_lr_mult: float = 10.0  # lr multiplier of the prompt tokens [10]
    weight_decay: float = 1e-4  # [1e-4]
    norm_weight_decay: float = 0.0  # on normalisation-layer parameters [0: detectron2 WEIGHT_DECAY_NORM]
    lr_end: float = 0.5  # cosine decay to lr_end × lr, no warmup [0.5]
    warmup_steps: int = 0  # linear warmup [0]
    grad_clip: float | None = 0.01  # max global grad norm over the full model [0.01]
    tf32: bool = True  # TF32 matmuls/convolutions on CUDA [yes]
    amp: str = "none"  # none | bf16 (autocast) [none]

    # --- bookkeeping
    num_workers: int = 8  # data-loader workers per rank
    ddp_find_unused: bool = False  # DistributedDataParallel(find_unused_parameters=...)
    log_every: int = 20  # steps between TensorBoard/tqdm scalars
    checkpoint_every: int = 1000  # steps between checkpoints (also written at the end)
    keep_checkpoints: int = 2  # older ones are deleted (0: keep all)
    export_every: int = 0  # also export the student every N steps (0: only at the end)
    exit_at: int | None = None  # stop after this step, as if interrupted (a checkpoint is written)
    resume: bool = True  # continue from the latest checkpoint in run_dir when there is one
    tensorboard: bool = True
    export: str = "clip.pt"  # student CLIP exported at the end (relative to run_dir)


@dataclass
class ClipTrainConfig:
    """Plain CLIP contrastive training (``labelless train clip``)."""

    # --- run
    run_dir: str = "runs/clip"
    seed: int = 0
    device: str = "auto"

    # --- model
    model: str = "tiny-vit"  # any open_clip name, tiny-vit / tiny-convnext
    pretrained: str | None = None  # tag or file; none = random
    cache_dir: str | None = None
    image_size: int | None = None  # training input side (None: the model's)

    # --- data (data: benchmark | captions)
    data: str = "benchmark"  # benchmark: labelled dataset, captions from class names in random crops
    dataset: str | None = "camvid"  # data=benchmark: any labelless benchmark key
    data_root: str | None = None
    split: str = "train"
    layout: str = "auto"
    captions: str | None = None  # data=captions: JSON lines {"image": path, "caption": text}
    images_root: str | None = None  # data=captions: base folder of relative image paths
    caption_template: str = "a photo of {}"  # "{}" gets "road and car" / "road, car and sky"
    crops_per_image: int = 4  # samples per image and epoch (each a fresh random crop)
    crop_scale_min: float = 0.2  # crop area as a fraction of the image, range
    crop_scale_max: float = 1.0
    min_class_fraction: float = 0.02  # a class is named when it covers ≥ this fraction of the crop
    max_names: int = 3  # at most this many class names (largest first)
    hflip: bool = True

    # --- optimisation
    batch_size: int = 32  # global batch (negatives gathered over all ranks)
    max_steps: int = 200
    lr: float = 5e-4
    weight_decay: float = 0.1
    warmup_steps: int = 10
    lr_end: float = 0.0  # cosine decay to lr_end × lr
    grad_clip: float | None = 1.0
    logit_scale_max: float = 100.0  # the learnable temperature is clamped to ≤ this
    tf32: bool = True
    amp: str = "none"

    # --- bookkeeping
    num_workers: int = 2
    log_every: int = 10
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    exit_at: int | None = None
    resume: bool = True
    tensorboard: bool = True
    export: str = "clip.pt"


# ------------------------------------------------------------------------ parsing

def _field_types(cls) -> dict[str, object]:
    return typing.get_type_hints(cls)


def _coerce(value, tp, key: str):
    """Convert ``value`` (parsed YAML) to the annotated type ``tp``; ValueError naming ``key``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "~")):
            if type(None) in args:
                return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(errors[0] if errors else f"{key}: cannot be {value!r}")
    if origin is list:
        (inner,) = args or (str,)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v] if value else []
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, inner, key) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
            return False
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ValueError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ValueError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                f = float(value)
            except ValueError:
                f = None
            if f is not None and f.is_integer():
                return int(f)
        raise ValueError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ValueError(f"{key}: expected a number, got {value!r}")
        try:
            return float(value)  # also "2e-4", which YAML 1.1 reads as a string
        except (TypeError, ValueError):
            raise ValueError(f"{key}: expected a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
            raise ValueError(f"{key}: expected a string, got {value!r}")
        return str(value)
    return value


def parse_overrides(items: list[str]) -> dict:
    """``["lr=1e-4", "masks=dino"]`` → ``{"lr": 1e-4, "masks": "dino"}`` (values as YAML scalars)."""
    out = {}
    for item in items:
        key, eq, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or not key:
            raise ValueError(f"override {item!r} is not key=value")
        out[key] = yaml.safe_load(text) if text.strip() else ""
    return out


def make_config(cls, values: dict, source: str = "config"):
    """Build ``cls`` from a flat dict: unknown keys and bad values raise ValueError."""
    types_ = _field_types(cls)
    unknown = sorted(set(values) - set(types_))
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {', '.join(unknown)}; "
                         f"valid keys: {', '.join(types_)}")
    kwargs = {k: _coerce(v, types_[k], f"{source}: {k}") for k, v in values.items()}
    cfg = cls(**kwargs)
    check_config(cfg)
    return cfg


def load_config(cls, path: str | os.PathLike | None = None, overrides: list[str] | None = None):
    """Read a flat YAML file into ``cls`` and apply ``key=value`` overrides."""
    values: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(data, dict) or any(isinstance(v, dict) for v in data.values()):
            raise ValueError(f"{path}: a config is one flat mapping of key: value")
        values.update(data)
    over = parse_overrides(overrides or [])
    values.update(over)
    return make_config(cls, values, str(path) if path is not None else "config")


def check_config(cfg) -> None:
    """Cross-field checks that would otherwise fail late in a run."""
    if cfg.batch_size < 1 or cfg.max_steps < 1:
        raise ValueError("batch_size and max_steps must be ≥ 1")
    if cfg.amp not in ("none", "bf16"):
        raise ValueError(f"amp must be none or bf16, got {cfg.amp!r}")
    if cfg.exit_at is not None and not 0 < cfg.exit_at:
        raise ValueError("exit_at must be ≥ 1")
    if isinstance(cfg, TrainConfig):
        if cfg.masks not in ("store", "sa1b", "dino"):
            raise ValueError(f"masks must be store, sa1b or dino, got {cfg.masks!r}")
        if cfg.masks == "store" and not cfg.mask_store:
            raise ValueError("masks=store needs mask_store=FOLDER")
        if cfg.masks == "sa1b" and not cfg.sa1b_tars:
            raise ValueError("masks=sa1b needs sa1b_tars=[shard paths or globs]")
        if cfg.masks == "dino" and not (cfg.images or cfg.sa1b_tars or (cfg.dataset and cfg.data_root)):
            raise ValueError("masks=dino needs images: images=FOLDER, sa1b_tars=[...] (their images), "
                             "or dataset=NAME and data_root=FOLDER")
        if cfg.grad_accum < 1:
            raise ValueError("grad_accum must be ≥ 1")
    if isinstance(cfg, ClipTrainConfig):
        if cfg.data not in ("benchmark", "captions"):
            raise ValueError(f"data must be benchmark or captions, got {cfg.data!r}")
        if cfg.data == "benchmark" and not (cfg.dataset and cfg.data_root):
            raise ValueError("data=benchmark needs dataset=NAME and data_root=FOLDER")
        if cfg.data == "captions" and not cfg.captions:
            raise ValueError("data=captions needs captions=FILE.jsonl")
        if "{}" not in cfg.caption_template:
            raise ValueError("caption_template needs a '{}' placeholder")
        if not 0 < cfg.crop_scale_min <= cfg.crop_scale_max <= 1:
            raise ValueError("need 0 < crop_scale_min ≤ crop_scale_max ≤ 1")


def config_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg, run_dir: str | os.PathLike, name: str = "config.yaml") -> Path:
    """Write the resolved config as ``run_dir/config.yaml`` (atomically)."""
    from labelless.fileio import atomic_write_text

    return atomic_write_text(Path(run_dir) / name, yaml.safe_dump(config_dict(cfg), sort_keys=False))
