"""open_clip adapter: build any open_clip CLIP with the activation its weights were
trained with, load its weights, and expose one dense-feature API
(``DenseCLIP.dense_features``) plus text encoding.

Where weights come from (``pretrained``):
- ``None`` / ``"none"``: random initialisation (no file, no download);
- an open_clip pretrained tag, e.g. ``ViT-B-16`` + ``openai`` (downloaded by open_clip
  into its cache, or read from that cache when offline);
- a local weight file of any format ``models/weights.py`` reads: labelless checkpoints,
  open_clip state dicts, OpenAI state dicts and TorchScript archives, official PixelCLIP
  checkpoints (``.safetensors`` or torch files; never unpickled with code);
- model names ``hf-hub:org/repo`` and ``local-dir:/path`` carry their own weights.

The activation rule (OpenAI trained its CLIPs with QuickGELU, ``x·σ(1.702x)``; open_clip
builds ``nn.GELU`` unless told, and for a tag only warns):
- a tag: open_clip's pretrained config of that tag says (``quick_gelu``), passed as
  ``force_quick_gelu``; ``hf-hub:`` / ``local-dir:`` configs say it themselves;
- an OpenAI-format file, or an official PixelCLIP ViT (an OpenAI CLIP): QuickGELU;
- a labelless checkpoint: rebuilt from the model config it records (activation included);
- a plain open_clip state dict: the named model's config (``ViT-B-16-quickgelu`` for
  QuickGELU weights); with no name, the architecture is told from the shapes, with GELU.

The model name may be left out (``None``) for a file whose tower can be told from its
weights (labelless checkpoints, every OpenAI / open_clip ViT, ConvNeXt-B/L).

Tiny models for tests and smoke runs ship with the package (``tiny-vit``,
``tiny-convnext``, ``tiny-timm-vit``: a SigLIP-shaped timm ViT with a MAP head and no class
token; configs in ``models/configs/``). They have no pretrained tags.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from labelless.errors import SettingError, WeightsError
from labelless.fileio import atomic_path
from labelless.models import convert
from labelless.models.dense import (
    CONVNEXT_MODES,
    VIT_MODES,
    convnext_dense_features,
    resize_pos_embed,
    vit_dense_features,
)
from labelless.models.proxyclip import PROXY_MODES, vit_proxy_features
from labelless.models.weights import LABELLESS_FORMAT, WeightsFile, read_state_dict, read_weights

__all__ = ["DenseCLIP", "WeightsError", "build_clip", "read_state_dict", "save_checkpoint", "list_models"]

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

# name -> config file in labelless/models/configs (explicit, no registration side effects)
TINY_MODELS = {"tiny-vit": "tiny-vit.json", "tiny-convnext": "tiny-convnext.json",
               "tiny-timm-vit": "tiny-timm-vit.json"}
TINY_KINDS = {"tiny-vit": "vit", "tiny-convnext": "convnext", "tiny-timm-vit": "timm-vit"}
DEFAULT_MODEL = "ViT-B-16"


@dataclass(frozen=True)
class ModelInfo:
    name: str
    pretrained: str | None
    kind: str  # "vit" (open_clip ViT) | "timm-vit" (timm ViT / EVA tower) | "convnext"
    image_size: tuple[int, int]
    stride: int
    embed_dim: int
    quick_gelu: bool


def tiny_model_config(name: str) -> dict:
    text = resources.files("labelless.models").joinpath("configs", TINY_MODELS[name]).read_text()
    return json.loads(text)


def _is_none(pretrained) -> bool:
    return pretrained is None or str(pretrained).lower() in ("", "none", "random")


def _has_schema(name: str | None) -> bool:
    return bool(name) and name.startswith(("hf-hub:", "local-dir:"))


def _offline_help(name: str, pretrained: str | None, err: Exception) -> WeightsError:
    return WeightsError(
        f"could not get weights for model {name!r} (pretrained={pretrained!r}): "
        f"{type(err).__name__}: {err}\n"
        "This machine may be offline. Either download the checkpoint on a machine with "
        "network access and pass its path (e.g. --pretrained /path/to/open_clip_model.safetensors), "
        "point HF_HOME / --cache-dir at a cache that already holds it, or use --pretrained none "
        "for random weights.")


# ----------------------------------------------------------------------------- configs

def _schema_config(name: str, cache_dir: str | None) -> dict:
    """``open_clip_config.json`` of an ``hf-hub:`` repo or a ``local-dir:`` folder."""
    schema, ident = name.split(":", 1)
    try:
        if schema == "local-dir":
            path = Path(ident) / "open_clip_config.json"
        else:
            from open_clip.pretrained import download_pretrained_from_hf

            path = Path(download_pretrained_from_hf(ident, filename="open_clip_config.json", cache_dir=cache_dir))
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, RuntimeError, ValueError) as e:
        raise _offline_help(name, None, e) from e
    if "model_cfg" not in config:
        raise WeightsError(f"{path} has no 'model_cfg'")
    return config


def named_model_cfg(name: str, cache_dir: str | None = None) -> dict:
    """The open_clip model config of a labelless / open_clip / schema model name."""
    import open_clip

    if name in TINY_MODELS:
        return tiny_model_config(name)
    if _has_schema(name):
        return _schema_config(name, cache_dir)["model_cfg"]
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise SettingError(f"unknown model {name!r}; `labelless models` lists them "
                         f"(tiny: {', '.join(TINY_MODELS)}; open_clip: {len(open_clip.list_models())} names)")
    return cfg


def tag_quick_gelu(name: str, tag: str) -> bool:
    """Whether open_clip's pretrained tag ``tag`` of ``name`` was trained with QuickGELU."""
    import open_clip

    return bool((open_clip.get_pretrained_cfg(name, tag) or {}).get("quick_gelu", False))


def clip_from_cfg(cfg: dict) -> nn.Module:
    """An open_clip ``CLIP`` / ``CustomTextCLIP`` with random weights from a model config
    (no tower weights fetched). A ``vision_cfg.timm_model_kwargs`` dict (labelless's own key)
    builds the timm tower with those ``timm.create_model`` arguments (``models/timm_tower.py``)."""
    import open_clip

    cfg = copy.deepcopy(cfg)
    if "multimodal_cfg" in cfg:
        raise SettingError("CoCa models are not supported")
    custom = cfg.pop("custom_text", False) or "hf_model_name" in cfg.get("text_cfg", {})
    if "timm_model_name" in cfg.get("vision_cfg", {}):
        cfg["vision_cfg"]["timm_model_pretrained"] = False
    if "hf_model_name" in cfg.get("text_cfg", {}):
        cfg["text_cfg"]["hf_model_pretrained"] = False
    tower = None
    if "timm_model_kwargs" in cfg.get("vision_cfg", {}):  # a timm tower with extra arguments (models/timm_tower.py)
        from labelless.models.timm_tower import build_timm_tower, split_timm_kwargs

        cfg, tower = split_timm_kwargs(cfg)
    model = (open_clip.CustomTextCLIP if custom else open_clip.CLIP)(**cfg)
    if tower is not None:
        model.visual = build_timm_tower(tower, cfg["embed_dim"])
    return model


def make_tokenizer(name: str, cfg: dict, cache_dir: str | None = None):
    """The tokenizer open_clip gives ``name``; CLIP's BPE from the config when it needs no hub.

    Hub tokenizers (SigLIP / SigLIP 2, ``hf_tokenizer_name``) that cannot be fetched give a
    ``WeightsError`` saying how to pass a local folder (``tokenizer_help``)."""
    import open_clip

    text = cfg.get("text_cfg", {})
    needs_hub = bool(text.get("hf_tokenizer_name")) or "siglip" in name.lower()
    if needs_hub and (_has_schema(name) or open_clip.get_model_config(name) is not None):
        try:
            return open_clip.get_tokenizer(name, cache_dir=cache_dir)
        except (OSError, ValueError, RuntimeError) as e:
            raise tokenizer_help(name, text.get("hf_tokenizer_name"), e) from e
    return open_clip.SimpleTokenizer(context_length=text.get("context_length", 77),
                                     **text.get("tokenizer_kwargs", {}))


def tokenizer_help(name: str, repo: str | None, err: Exception) -> WeightsError:
    """The offline error of a hub tokenizer, with the two ways to give it locally."""
    repo = repo or name
    first = str(err).splitlines()[0] if str(err) else type(err).__name__
    return WeightsError(
        f"the tokenizer of {name} comes from the Hugging Face hub ({repo}) and could not be loaded: {first}\n"
        f"Offline, give it a local folder: on a machine with network access download the model's hub repo "
        f"(e.g. `hf download timm/{name} --local-dir DIR`; it holds open_clip_config.json, the weights and the "
        f"tokenizer files) and pass --model local-dir:DIR; or point HF_HOME (or --cache-dir) at a Hugging Face "
        f"cache that already holds {repo} (with HF_HUB_OFFLINE=1).")


# ----------------------------------------------------------------------------- files

def load_state(model: nn.Module, state: dict[str, torch.Tensor], source) -> None:
    """Load ``state`` into an open_clip model, strictly (ViT positions resized to the model's grid)."""
    state = dict(state)
    key = "visual.positional_embedding"
    if key in state and hasattr(model.visual, "positional_embedding"):
        target = model.visual.positional_embedding
        if state[key].shape != target.shape:
            side = int(round((target.shape[0] - 1) ** 0.5))
            state[key] = resize_pos_embed(state[key], (side, side))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise WeightsError(
            f"checkpoint {source} does not match the model: "
            f"{len(missing)} missing keys {missing[:8]}, {len(unexpected)} unexpected keys {unexpected[:8]}")


def _state_plan(state: dict, name: str | None, openai_format: bool, cache_dir=None) -> tuple[str, dict]:
    """(name, model config) for a bare state dict: the named config, or told from the shapes."""
    quick = openai_format or None  # None: the named config decides
    if name:
        cfg = named_model_cfg(name, cache_dir)
        return name, (cfg if quick is None else convert.with_quick_gelu(cfg, True))
    try:
        if convert.clip_arch(state) == "convnext":
            guessed = convert.guess_model_name(state)
            return guessed, named_model_cfg(guessed)
        cfg = convert.vit_model_cfg(state, quick_gelu=bool(openai_format))
    except ValueError as e:
        raise WeightsError(f"{e}; pass the model name (--model)") from e
    return convert.builtin_name_for(cfg) or f"ViT-{cfg['vision_cfg']['width']}-{cfg['vision_cfg']['patch_size']}", cfg


def _file_plan(name: str | None, wf: WeightsFile, cache_dir=None) -> tuple[str, dict, tuple, tuple]:
    """(name, model config, mean, std) to build for weight file ``wf`` (the activation rule)."""
    mean, std = OPENAI_MEAN, OPENAI_STD
    if wf.format == "labelless":
        meta = wf.meta
        mean, std = tuple(meta.get("mean", mean)), tuple(meta.get("std", std))
        if "model_cfg" in meta:
            return meta["model"], meta["model_cfg"], mean, std
        name = name or meta.get("model")  # older checkpoints: rebuilt by name
        openai = meta.get("converted_from") == "pixelclip" and wf.arch == "vit"
        return (*_state_plan(wf.state, name, openai, cache_dir), mean, std)
    openai = wf.format == "openai" or (wf.format == "pixelclip" and wf.arch == "vit")
    return (*_state_plan(wf.state, name, openai, cache_dir), mean, std)


def build_from_state(state: dict[str, torch.Tensor], name: str | None = None, source: str | None = None,
                     openai_format: bool = False) -> "DenseCLIP":
    """A ``DenseCLIP`` around a CLIP state dict (open_clip key names); ``openai_format``:
    an OpenAI CLIP (QuickGELU)."""
    name, cfg = _state_plan(state, name, openai_format)
    return _assemble(name, cfg, state, source, OPENAI_MEAN, OPENAI_STD)


def _assemble(name: str, cfg: dict, state, source, mean, std, cache_dir=None) -> "DenseCLIP":
    model = clip_from_cfg(cfg)
    if state is not None:
        load_state(model, state, source)
    return DenseCLIP(model, make_tokenizer(name, cfg, cache_dir), mean, std, name, source, cfg)


def clip_from_weights(wf: WeightsFile, name: str | None = None, cache_dir: str | None = None) -> "DenseCLIP":
    """The ``DenseCLIP`` a weight file describes (``read_weights``), built as the activation
    rule says (module docstring)."""
    name, cfg, mean, std = _file_plan(name, wf, cache_dir)
    return _assemble(name, cfg, wf.state, str(wf.path), mean, std, cache_dir)


def clip_spec(dense: "DenseCLIP") -> dict:
    """What rebuilds ``dense``'s architecture: ``{"model", "model_cfg", "mean", "std"}``
    (stored in training checkpoints; ``clip_from_spec`` reads it)."""
    return {"model": dense.name, "model_cfg": copy.deepcopy(dense.model_cfg),
            "mean": [float(v) for v in dense.mean.flatten()], "std": [float(v) for v in dense.std.flatten()]}


def clip_from_spec(spec: dict, device: str | torch.device = "cpu") -> "DenseCLIP":
    """A ``DenseCLIP`` with random weights of the architecture ``clip_spec`` recorded."""
    dense = _assemble(spec["model"], spec["model_cfg"], None, None, tuple(spec["mean"]), tuple(spec["std"]))
    return dense.to(device)


# ----------------------------------------------------------------------------- building

def _check_tag(name: str, pretrained: str) -> None:
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(name)
    if pretrained not in tags:
        raise WeightsError(f"{pretrained!r} is neither a file nor a pretrained tag of {name} "
                           f"(tags: {', '.join(tags) or 'none'})")


def _from_open_clip(name: str, pretrained: str | None, cache_dir: str | None) -> "DenseCLIP":
    """Tags and schema names: open_clip builds and fetches; the activation as the rule says."""
    import open_clip

    schema = _has_schema(name)
    cfg = named_model_cfg(name, cache_dir)  # unknown names: ValueError; schema: fetches open_clip_config.json
    tag = None if schema or _is_none(pretrained) else pretrained
    if tag is not None:
        _check_tag(name, tag)
    quick = bool(cfg.get("quick_gelu", False)) or (tag is not None and tag_quick_gelu(name, tag))
    tokenizer = make_tokenizer(name, cfg, cache_dir)  # before the model: a hub tokenizer offline fails fast
    try:
        model = open_clip.create_model(name, pretrained=tag, force_quick_gelu=quick,
                                       pretrained_text=schema or tag is not None, cache_dir=cache_dir)
    except (OSError, RuntimeError) as e:
        raise _offline_help(name, pretrained, e) from e
    pp = open_clip.get_model_preprocess_cfg(model)
    cfg = convert.with_quick_gelu(cfg, quick)
    return DenseCLIP(model, tokenizer, tuple(pp.get("mean", OPENAI_MEAN)), tuple(pp.get("std", OPENAI_STD)),
                     name, None if _is_none(pretrained) else pretrained, cfg)


def build_clip(name: str | None, pretrained: str | None = None, device: str | torch.device = "cpu",
               cache_dir: str | None = None) -> "DenseCLIP":
    """Build ``name`` with weights from ``pretrained`` (tag, file, or None) as a ``DenseCLIP``.

    ``name`` may be None for a weight file whose tower can be told (module docstring); with
    no file it means ``ViT-B-16``. A labelless checkpoint is rebuilt from the model config it
    records, whatever ``name`` says.
    """
    is_file = not _has_schema(name) and not _is_none(pretrained) and Path(str(pretrained)).exists()
    if is_file:
        dense = clip_from_weights(read_weights(pretrained), name, cache_dir)
    elif (name or DEFAULT_MODEL) in TINY_MODELS:
        if not _is_none(pretrained):
            raise WeightsError(f"{name} has no pretrained tags; pass a checkpoint file or 'none' "
                               f"(got {pretrained!r})")
        dense = _assemble(name, tiny_model_config(name), None, None, OPENAI_MEAN, OPENAI_STD)
    else:
        dense = _from_open_clip(name or DEFAULT_MODEL, pretrained, cache_dir)
    return dense.to(device).eval()


# ----------------------------------------------------------------------------- DenseCLIP

class DenseCLIP(nn.Module):
    """An open_clip CLIP with one dense-feature call for every backbone.

    ``dense_features(images)``: normalised ``B×3×H×W`` → ``B×D×h×w`` (not L2-normalised).
    ``encode_text(texts)``: list of strings → ``N×D`` L2-normalised.
    ``model_cfg``: the open_clip model config it was built from (``quick_gelu`` included).
    """

    def __init__(self, clip: nn.Module, tokenizer, mean, std, name: str, pretrained: str | None = None,
                 model_cfg: dict | None = None):
        super().__init__()
        self.clip = clip
        self.tokenizer = tokenizer
        self.name = name
        self.pretrained = None if _is_none(pretrained) else str(pretrained)
        self.model_cfg = None  # the activation is always written out: quick_gelu true / false
        if model_cfg is not None:
            self.model_cfg = convert.with_quick_gelu(model_cfg, model_cfg.get("quick_gelu", False))
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        visual = clip.visual
        if hasattr(visual, "trunk"):
            self.kind, self.stride, self.modes = _timm_tower_kind(visual, name)
        elif hasattr(visual, "transformer") and hasattr(visual, "conv1"):
            self.kind = "vit"
            self.stride = visual.patch_size[0]
            self.modes = VIT_MODES + PROXY_MODES
            if not getattr(visual.transformer, "batch_first", True):
                raise SettingError(f"{name}: only batch-first open_clip ViTs are supported")
        else:
            raise SettingError(f"{name}: unsupported vision tower {type(visual).__name__} "
                             "(labelless supports open_clip ViTs, timm ViTs / EVAs and timm ConvNeXts)")
        size = visual.image_size
        self.image_size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)

    def text_parameters(self):
        """The parameters text embeddings depend on (everything outside the vision tower)."""
        return (p for name, p in self.clip.named_parameters() if not name.startswith("visual."))

    @property
    def quick_gelu(self) -> bool:
        return bool((self.model_cfg or {}).get("quick_gelu", False))

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(self.name, self.pretrained, self.kind, self.image_size, self.stride,
                         self.embed_dim, self.quick_gelu)

    @property
    def embed_dim(self) -> int:
        # CustomTextCLIP (EVA02, SigLIP, PE-Core configs) keeps its projection in its text tower
        proj = getattr(self.clip, "text_projection", None)
        if proj is None:
            proj = getattr(getattr(self.clip, "text", None), "text_projection", None)
        if isinstance(proj, torch.Tensor):
            return proj.shape[1]
        if isinstance(proj, nn.Linear):
            return proj.out_features
        return int(self.model_cfg["embed_dim"])

    @property
    def logit_scale(self) -> float:
        return float(self.clip.logit_scale.exp())

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """``B×3×H×W`` in [0, 1] → CLIP-normalised."""
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    def check_mode(self, mode: str) -> None:
        if mode not in self.modes:
            why = " (the tower has no class token)" if mode == "pixelclip" and self.kind == "timm-vit" else ""
            raise SettingError(f"mode {mode!r} is not available for {self.name} ({self.kind}){why}; "
                             f"choose from {', '.join(self.modes)}")

    def dense_features(self, images: torch.Tensor, mode: str = "vanilla") -> torch.Tensor:
        self.check_mode(mode)
        if mode in PROXY_MODES:
            raise SettingError(f"mode {mode} attends with a vision foundation model's features: "
                               "call proxy_features(images, vfm_features) (scorers.ProxyCLIPScorer does)")
        return visual_dense_features(self.kind, self.clip.visual, images, mode)

    def proxy_features(self, images: torch.Tensor, vfm_features: torch.Tensor, beta: float = 1.2,
                       gamma: float = 3.0) -> torch.Tensor:
        """ProxyCLIP dense features (``models/proxyclip.py``): normalised ``B×3×H×W`` and the VFM's
        patch features ``B×C×H'×W'`` of the same images → ``B×D×H'×W'`` (the VFM's grid). ViTs only."""
        self.check_mode("proxyclip")
        if self.kind == "timm-vit":
            from labelless.models.timm_dense import timm_proxy_features

            return timm_proxy_features(self.clip.visual, images, vfm_features, beta, gamma)
        return vit_proxy_features(self.clip.visual, images, vfm_features, beta, gamma)

    @property
    def fixed_input_size(self) -> bool:
        """Whether the tower's own forward (``clip.encode_image``, used in training) takes only
        ``image_size`` inputs (open_clip ViTs; timm ViTs without ``dynamic_img_size``). Dense
        features take any size."""
        if self.kind == "vit":
            return True
        return self.kind == "timm-vit" and not getattr(self.clip.visual.trunk, "dynamic_img_size", False)

    @torch.no_grad()
    def encode_text(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        device = self.mean.device
        out = []
        for i in range(0, len(texts), batch_size):
            tokens = self.tokenizer(texts[i:i + batch_size]).to(device)
            out.append(F.normalize(self.clip.encode_text(tokens).float(), dim=-1))
        return torch.cat(out) if out else torch.zeros(0, self.embed_dim, device=device)


def _timm_tower_kind(visual: nn.Module, name: str) -> tuple[str, int, tuple[str, ...]]:
    """(kind, stride, modes) of an open_clip ``TimmModel``: "timm-vit" (timm ViT / EVA,
    ``models/timm_dense.py``) or "convnext"; other timm trunks: SettingError."""
    from timm.models.convnext import ConvNeXt

    from labelless.models import timm_dense

    trunk = visual.trunk
    if timm_dense.is_timm_vit(trunk):
        why = timm_dense.unsupported(visual)
        if why:
            raise SettingError(f"{name}: dense features of this timm {type(trunk).__name__} tower are not "
                               f"supported: {why}")
        return "timm-vit", int(trunk.patch_embed.patch_size[0]), timm_dense.timm_vit_modes(visual) + PROXY_MODES
    if isinstance(trunk, ConvNeXt):
        return "convnext", 32, CONVNEXT_MODES
    raise SettingError(f"{name}: unsupported timm vision tower {type(trunk).__name__} (labelless supports "
                       "open_clip ViTs, timm ViTs / EVAs and timm ConvNeXts)")


def visual_dense_features(kind: str, visual: nn.Module, images: torch.Tensor, mode: str = "vanilla") -> torch.Tensor:
    """Dense features ``B×D×h×w`` of a vision tower of ``kind`` ("vit" | "timm-vit" | "convnext";
    ``DenseCLIP.kind``) in ``mode``: the dispatch ``DenseCLIP.dense_features`` uses, for
    callers holding a tower copy (an EMA teacher)."""
    if kind == "vit":
        return vit_dense_features(visual, images, mode)
    if kind == "timm-vit":
        from labelless.models.timm_dense import timm_dense_features

        return timm_dense_features(visual, images, mode)
    return convnext_dense_features(visual, images)


def save_checkpoint(dense: DenseCLIP, path: str | os.PathLike, **extra) -> Path:
    """Write a labelless CLIP checkpoint atomically (``torch.save`` to a temp file, then rename).

    It records the model name, the model config (activation included), mean and std, so
    ``build_clip(None, path)`` rebuilds exactly this model."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    spec = clip_spec(dense)
    if spec["model_cfg"] is None:
        del spec["model_cfg"]
    payload = {"format": LABELLESS_FORMAT, **extra, **spec,
               "state_dict": {k: v.detach().cpu() for k, v in dense.clip.state_dict().items()}}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def list_models() -> list[dict]:
    """Models, their kind, pretrained tags (and which of them need QuickGELU) and dense modes.

    timm ViT / EVA towers (``kind`` "timm-vit") list the modes every such tower has;
    ``class_token_modes`` (pixelclip) come on top where the tower has a class token, which
    only building it tells (EVA02, PE-Core B/L: yes; SigLIP: no)."""
    import open_clip
    import timm

    from labelless.models.timm_dense import TIMM_VIT_EXCLUDED, TIMM_VIT_MODES, TIMM_VIT_MODULES

    vit_modes = list(VIT_MODES + PROXY_MODES)
    timm_modes = [m for m in TIMM_VIT_MODES if m != "pixelclip"] + list(PROXY_MODES)
    by_kind = {"vit": vit_modes, "convnext": list(CONVNEXT_MODES), "timm-vit": timm_modes}
    rows = [{"name": n, "kind": k, "tags": [], "quick_gelu_tags": [], "modes": list(by_kind[k])}
            for n, k in TINY_KINDS.items()]
    for n in open_clip.list_models():
        cfg = open_clip.get_model_config(n) or {}
        vcfg = cfg.get("vision_cfg", {})
        timm_name = vcfg.get("timm_model_name") or ""
        extra = {}
        if timm_name.startswith("convnext"):
            kind = "convnext"
        elif (timm_name and timm_name not in TIMM_VIT_EXCLUDED and timm.is_model(timm_name)
              and timm.models.model_entrypoint(timm_name).__module__ in TIMM_VIT_MODULES):
            kind, extra = "timm-vit", {"class_token_modes": ["pixelclip"]}
        elif "timm_model_name" not in vcfg and not isinstance(vcfg.get("layers"), (list, tuple)):
            kind = "vit"
        else:
            continue  # ResNets, other timm towers: not supported for dense features
        tags = open_clip.list_pretrained_tags_by_model(n)
        quick = [t for t in tags if cfg.get("quick_gelu") or tag_quick_gelu(n, t)]
        rows.append({"name": n, "kind": kind, "tags": tags, "quick_gelu_tags": quick, "modes": list(by_kind[kind]),
                     **extra})
    return rows
