"""The PixelCLIP model a config, a training checkpoint or an official checkpoint describes.

- ``build_model(cfg)``: ``build_clip`` + ``PixelCLIPModel`` (student, EMA teacher, class
  prompts, decoder) with the config's weights, or everything from an official PixelCLIP
  checkpoint (``init``);
- ``load_run(path)``: a run folder (latest checkpoint), a training checkpoint (rebuilt from
  the CLIP spec and config it stores), or an official ``*.pth``;
- ``export_run``: the student of a checkpoint as a labelless CLIP checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import torch

from labelless.errors import CheckpointError, ConfigError, WeightsError
from labelless.train.config import config_dict, make_config
from labelless.train.pixelclip.config import PixelCLIPConfig
from labelless.train.pixelclip.model import PixelCLIPModel


def _pixelclip_model(cfg: PixelCLIPConfig, dense) -> PixelCLIPModel:
    return PixelCLIPModel(dense, num_clusters=cfg.num_clusters, prompt_len=cfg.prompt_length,
                          logit_scale=cfg.cluster_scale, ema_gamma=cfg.ema, mask_size=cfg.mask_size,
                          prompt_seed=cfg.prompt_seed, sinkhorn_iters=cfg.sinkhorn_iters,
                          finetune=cfg.finetune, prompt_words=cfg.prompt_words or None)


def build_model(cfg: PixelCLIPConfig, device: torch.device | str = "cpu", spec: dict | None = None
                ) -> PixelCLIPModel:
    """The PixelCLIP training model a config describes, with the config's weights
    (``pretrained``, or everything from the official checkpoint ``init``); with ``spec``
    (``models.clip.clip_spec``, stored in training checkpoints): that architecture with
    random weights, for a checkpoint to be loaded over it."""
    from labelless.models.clip import build_clip, clip_from_spec
    from labelless.models.weights import read_weights

    if spec is not None:
        return _pixelclip_model(cfg, clip_from_spec(spec, device))
    if not cfg.init:
        return _pixelclip_model(cfg, build_clip(cfg.model, cfg.pretrained, device=device, cache_dir=cfg.cache_dir))
    wf = read_weights(cfg.init)
    if wf.format != "pixelclip":
        raise ConfigError(f"init={cfg.init}: not an official PixelCLIP checkpoint (it is a {wf.format} file; "
                         "give it as pretrained= instead)")
    return _from_official(cfg, wf, device)


def _from_official(cfg: PixelCLIPConfig, wf, device) -> PixelCLIPModel:
    from labelless.models.clip import clip_from_weights

    model = _pixelclip_model(cfg, clip_from_weights(wf, cfg.model, cfg.cache_dir).to(device))
    model.load_official(wf.parts, str(wf.path))
    return model


def _legacy_spec(cfg: PixelCLIPConfig) -> dict:
    """Checkpoints written before the CLIP spec was stored: the config's model by name,
    QuickGELU when its pretrained tag says so."""
    from labelless.models.clip import OPENAI_MEAN, OPENAI_STD, named_model_cfg, tag_quick_gelu
    from labelless.models.convert import with_quick_gelu

    model_cfg = named_model_cfg(cfg.model, cfg.cache_dir)
    tag = cfg.pretrained and not Path(cfg.pretrained).exists() and cfg.pretrained.lower() != "none"
    if tag and not cfg.model.startswith(("hf-hub:", "local-dir:")) and cfg.model not in ("tiny-vit", "tiny-convnext"):
        model_cfg = with_quick_gelu(model_cfg, model_cfg.get("quick_gelu") or tag_quick_gelu(cfg.model, cfg.pretrained))
    return {"model": cfg.model, "model_cfg": model_cfg, "mean": OPENAI_MEAN, "std": OPENAI_STD}


def _official_run(file: Path, wf, device) -> tuple[PixelCLIPModel, PixelCLIPConfig, dict]:
    """An official PixelCLIP checkpoint as a run: k and prompt length from its prompt tokens."""
    if wf.parts.get("prompts") is None:
        raise WeightsError(f"{file}: an official PixelCLIP checkpoint without prompt tokens")
    k, length = wf.parts["prompts"].shape[:2]
    cfg = PixelCLIPConfig(model=None, pretrained=None, init=str(file), num_clusters=int(k), prompt_length=int(length),
                      resolution=320 if wf.arch == "vit" else 640)  # the paper's resolutions
    model = _from_official(cfg, wf, device)  # the CLIP's name told from its weights
    cfg.model = model.student.name
    return model.eval(), cfg, {"step": 0, "config": config_dict(cfg), "extra": {}}


def load_run(path: str | Path, device: torch.device | str = "cpu") -> tuple[PixelCLIPModel, PixelCLIPConfig, dict]:
    """Rebuild a trained model from a run folder (its latest checkpoint), a training
    checkpoint file, or an official PixelCLIP checkpoint. Returns (model, config, checkpoint)."""
    from labelless.models.weights import read_weights
    from labelless.train import checkpoint as ckpt

    path = Path(path)
    file = ckpt.latest_checkpoint(path) if path.is_dir() else path
    if file is None:
        raise CheckpointError(f"no checkpoint in {path / ckpt.CHECKPOINT_DIR}")
    if file.suffix == ".pth":
        wf = read_weights(file)
        if wf.format == "pixelclip":
            return _official_run(file, wf, device)
    state = ckpt.read_checkpoint(file)
    cfg = make_config(PixelCLIPConfig, state["config"], f"config in {file}")
    model = build_model(cfg, device, spec=state.get("extra", {}).get("clip_spec") or _legacy_spec(cfg))
    model.load_state_dict(state["model"])
    return model.eval(), cfg, state


def export_run(run: str | Path, out: str | Path | None = None) -> Path:
    """Export the student of a run's latest checkpoint (or of a checkpoint file) on demand."""
    model, cfg, state = load_run(run)
    run_dir = Path(run) if Path(run).is_dir() else Path(run).parent.parent
    name = Path(cfg.export)
    target = Path(out) if out else run_dir / f"{name.stem}_step_{state['step']:08d}{name.suffix}"
    return model.export_clip(target, step=state["step"], config=config_dict(cfg))
