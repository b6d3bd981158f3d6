"""Run configurations: one flat YAML file per run → a typed dataclass.

``load_config(PixelCLIPConfig, "configs/pixelclip_vitb16_sam.yaml", ["lr=1e-4", "max_steps=100"])``
reads the file, applies ``key=value`` overrides from the command line (values parsed as
YAML scalars, then converted to the field's type), and checks every key. A run writes
the fully resolved config next to its outputs (``run_dir/config.yaml``) and stores it
in every checkpoint, so a run can be rebuilt from either.

There is no inheritance between files: what runs is what one file says (plus the
documented defaults). In code, :class:`RunConfig` holds what every run has (run folder,
seed, device, the optimisation schedule, bookkeeping); each method's config
(``train/pixelclip/config.py``, ``train/clip/config.py``) derives from it, adds its own
fields, overrides defaults, and checks its own values in ``check()`` (calling
``super().check()``).
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml

from labelless.errors import ConfigError, MissingFileError


@dataclass
class RunConfig:
    """What every training run has. Methods override the defaults with their papers' values."""

    # --- run
    run_dir: str = "runs/run"  # checkpoints, config.yaml, TensorBoard logs, the exported model
    seed: int = 0
    device: str = "auto"  # auto (cuda:LOCAL_RANK when present, else cpu), cpu, cuda

    # --- optimisation
    batch_size: int = 32  # global batch over all processes and accumulation steps
    grad_accum: int = 1  # micro-batches per optimizer step on each process
    max_steps: int = 1000  # optimizer steps
    lr: float = 1e-4  # AdamW base lr
    weight_decay: float = 0.0
    lr_end: float = 0.0  # cosine decay to lr_end × lr
    warmup_steps: int = 0  # linear warmup
    grad_clip: float | None = None  # max global grad norm (None: no clipping)
    tf32: bool = True  # TF32 matmuls/convolutions on CUDA
    amp: str = "none"  # none | bf16 (autocast)

    # --- bookkeeping
    num_workers: int = 2  # data-loader workers per process
    ddp_find_unused: bool = False  # DistributedDataParallel(find_unused_parameters=...)
    log_every: int = 10  # steps between TensorBoard/tqdm scalars
    checkpoint_every: int = 100  # steps between checkpoints (also written at the end)
    keep_checkpoints: int = 2  # older ones are deleted (0: keep all)
    export_every: int = 0  # also export the model every N steps (0: only at the end)
    exit_at: int | None = None  # stop after this step, as if interrupted (a checkpoint is written)
    resume: bool = True  # continue from the latest checkpoint in run_dir when there is one
    tensorboard: bool = True
    export: str = "model.pt"  # the trained model, exported at the end (relative to run_dir)

    def check(self) -> None:
        """Values that would otherwise fail late in a run; ConfigError naming the key."""
        if self.batch_size < 1 or self.max_steps < 1:
            raise ConfigError("batch_size and max_steps must be ≥ 1")
        if self.grad_accum < 1:
            raise ConfigError("grad_accum must be ≥ 1")
        if self.amp not in ("none", "bf16"):
            raise ConfigError(f"amp must be none or bf16, got {self.amp!r}")
        if self.exit_at is not None and not 0 < self.exit_at:
            raise ConfigError("exit_at must be ≥ 1")
        if self.log_every < 1 or self.checkpoint_every < 1:
            raise ConfigError("log_every and checkpoint_every must be ≥ 1")


# ------------------------------------------------------------------------ parsing

def _field_types(cls) -> dict[str, object]:
    return typing.get_type_hints(cls)


def _coerce_union(value, args: tuple, key: str):
    """``X | None`` and other unions: None spelled as YAML does, else the first type that fits."""
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
    raise ConfigError(errors[0] if errors else f"{key}: cannot be {value!r}")


def _coerce(value, tp, key: str):
    """Convert ``value`` (parsed YAML) to the annotated type ``tp``; ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, args, key)
    if origin is list:
        (inner,) = args or (str,)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v] if value else []
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
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
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
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
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            return float(value)  # also "2e-4", which YAML 1.1 reads as a string
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if tp is dict:  # an options map (e.g. backbone_options: {img_size: 512}): one level of scalars
        if not isinstance(value, dict) or any(isinstance(v, dict) for v in value.values()):
            raise ConfigError(f"{key}: expected a one-level {{key: value}} map, got {value!r}")
        return dict(value)
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    return value


def parse_overrides(items: list[str]) -> dict:
    """``["lr=1e-4", "masks=dino"]`` → ``{"lr": 1e-4, "masks": "dino"}`` (values as YAML scalars)."""
    out = {}
    for item in items:
        key, eq, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or not key:
            raise ConfigError(f"override {item!r} is not key=value")
        out[key] = yaml.safe_load(text) if text.strip() else ""
    return out


def make_config(cls, values: dict, source: str = "config"):
    """Build ``cls`` from a flat dict: unknown keys and bad values raise ConfigError."""
    types_ = _field_types(cls)
    unknown = sorted(set(values) - set(types_))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}; "
                         f"valid keys: {', '.join(types_)}")
    kwargs = {k: _coerce(v, types_[k], f"{source}: {k}") for k, v in values.items()}
    cfg = cls(**kwargs)
    cfg.check()
    return cfg


def load_config(cls, path: str | os.PathLike | None = None, overrides: list[str] | None = None):
    """Read a flat YAML file into ``cls`` and apply ``key=value`` overrides."""
    values: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise MissingFileError(f"config file not found: {path}")
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        types_ = _field_types(cls)
        if not isinstance(data, dict) or any(isinstance(v, dict) and types_.get(k) is not dict
                                             for k, v in data.items()):
            raise ConfigError(f"{path}: a config is one flat mapping of key: value "
                              "(only options fields such as backbone_options take a {key: value} map)")
        values.update(data)
    over = parse_overrides(overrides or [])
    values.update(over)
    return make_config(cls, values, str(path) if path is not None else "config")


def config_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg, run_dir: str | os.PathLike, name: str = "config.yaml") -> Path:
    """Write the resolved config as ``run_dir/config.yaml`` (atomically)."""
    from labelless.fileio import atomic_write_text

    return atomic_write_text(Path(run_dir) / name, yaml.safe_dump(config_dict(cfg), sort_keys=False))
