"""Read a CLIP weight file of any supported format and say what it is.

``read_weights(path)`` → ``WeightsFile(format, state, meta, parts)``:

=============  ====================================================  ==================
format         how it is recognised                                  activation
=============  ====================================================  ==================
``labelless``  ``{"format": "labelless-clip", ...}`` (``save_checkpoint``;  recorded in
               records the model config)                              ``model_cfg``
``openai``     a TorchScript archive (OpenAI's released ``*.pt``), or  QuickGELU
               a state dict with OpenAI's int entries
               (``input_resolution``, ``context_length``, ``vocab_size``)
``pixelclip``  an official PixelCLIP checkpoint (keys                 QuickGELU (ViT),
               ``sem_seg_head.predictor.clip_model.*``), converted    GELU (ConvNeXt)
               on the fly (``convert.pixelclip_parts``)
``open_clip``  any other state dict of tensors (``{"state_dict"}``,    the named model's
               ``module.`` prefixes and safetensors included)          config
=============  ====================================================  ==================

Files are read with ``safetensors`` or ``torch.load(weights_only=True)``; TorchScript
archives with labelless's weights-only reader (``models/torchscript.py``), so no code
from a file runs. ``state`` is the CLIP state dict in open_clip key names, without the
entries that are not weights.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from labelless.errors import WeightsError, describe
from labelless.models import convert

LABELLESS_FORMAT = "labelless-clip"


@dataclass
class WeightsFile:
    path: Path
    format: str  # labelless | openai | pixelclip | open_clip
    state: dict[str, torch.Tensor]
    meta: dict = field(default_factory=dict)  # labelless checkpoint entries other than the weights
    parts: dict = field(default_factory=dict)  # pixelclip: teacher, prompts, decoder (convert.pixelclip_parts)

    @property
    def arch(self) -> str:
        """``vit`` or ``convnext`` (WeightsError for other towers)."""
        try:
            return convert.clip_arch(self.state)
        except ValueError as e:
            raise WeightsError(f"{self.path}: {e}") from None


def _load(path: Path):
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    from labelless.models.torchscript import is_torchscript_archive, read_torchscript_state_dict

    if is_torchscript_archive(path):
        return {"__torchscript__": read_torchscript_state_dict(path)}
    return torch.load(path, map_location="cpu", weights_only=True)


def _tensors(path: Path, state) -> dict[str, torch.Tensor]:
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} does not hold a state dict of tensors")
    return state


def read_weights(path: str | os.PathLike) -> WeightsFile:
    """Read ``path`` and tell its format (module docstring). WeightsError names the file."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"checkpoint file not found: {path}")
    try:
        ckpt = _load(path)
    except Exception as e:  # corrupt file, pickle with code, wrong format, ...
        hint = (" (an official PixelCLIP file that needs full pickle loading can be converted with "
                "`labelless convert pixelclip --trust`)") if path.suffix == ".pth" else ""
        raise WeightsError(f"cannot read checkpoint {path}: {describe(e)}{hint}") from e
    if isinstance(ckpt, dict) and "__torchscript__" in ckpt:
        state = ckpt["__torchscript__"]
        if "visual.conv1.weight" not in state and not any(k.startswith("visual.") for k in state):
            raise WeightsError(f"{path} is a TorchScript archive but not of an OpenAI CLIP (no visual.* weights)")
        return WeightsFile(path, "openai", convert.drop_non_weights(state))
    meta = {}
    if isinstance(ckpt, dict) and ckpt.get("format") == LABELLESS_FORMAT:
        meta = {k: v for k, v in ckpt.items() if k != "state_dict"}
    try:
        state = convert.unwrap_state_dict(ckpt)
    except ValueError:
        raise WeightsError(f"{path} does not hold a state dict of tensors") from None
    if meta:
        return WeightsFile(path, "labelless", _tensors(path, state), meta)
    if convert.is_pixelclip_state_dict(state):
        parts = convert.pixelclip_parts(state)
        return WeightsFile(path, "pixelclip", parts.pop("clip"), parts=parts)
    state = _tensors(path, state)
    fmt = "openai" if convert.is_openai_state_dict(state) else "open_clip"
    return WeightsFile(path, fmt, convert.drop_non_weights(state))


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """(CLIP state dict, labelless metadata or {}) of a weight file of any format."""
    wf = read_weights(path)
    return wf.state, wf.meta
