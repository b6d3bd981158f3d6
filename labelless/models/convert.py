"""Converters from foreign checkpoint formats to labelless CLIP checkpoints.

PixelCLIP's released weights (Hugging Face ``hsshin98/PixelCLIP``, ``weights/``:
``pixelclip_vit_base.pth``, ``pixelclip_vit_base_dino.pth``, ``pixelclip_convnext_base.pth``,
``pixelclip_convnext_base_dino.pth``) are detectron2 checkpoints of the whole training
model: ``{"model": state_dict, ...}`` (optimizer/scheduler/iteration entries may be
present). In the official code (github cvlab-kaist/PixelCLIP, ``pixelclip/pixelclip.py``,
``pixelclip/modeling/heads/pixelclip_head.py``,
``pixelclip/modeling/transformer/pixelclip_predictor.py``) the meta-architecture
``PixelCLIP`` holds

=======================================  ===============================================
key prefix                               what
=======================================  ===============================================
``sem_seg_head.predictor.clip_model.``   the fine-tuned CLIP (student), whole model: ViT
                                         in OpenAI CLIP key names (``clip.load``, which
                                         open_clip shares), ConvNeXt in open_clip names
                                         (``visual.trunk.*`` timm keys, ``visual.head.proj``)
``sem_seg_head.predictor.prompt_tokens``  the k learnable class-prompt tokens (k×4×width)
``teacher_encoder.``                     the EMA image encoder: a copy of the CLIP model
                                         whose text ``transformer`` was removed
``head.``                                the upsampling decoder (training only)
``dino.``                                DINO ViT-S/16 (only in DINO-mask runs)
=======================================  ===============================================

Inference in the official code uses the student (``sem_seg_head``), so that is the
default; ``which="teacher"`` takes the EMA image encoder instead (its text tower is
the student's, which training never changes). The CLIP weights are copied unchanged;
the ViT positional embedding stays at its stored grid (labelless resizes it at run
time, as the official code does).

``python -m labelless.models.convert pixelclip pixelclip_vit_base.pth pixelclip_vit_b16.pt``
then ``labelless eval --model ViT-B-16 --pretrained pixelclip_vit_b16.pt --mode pixelclip ...``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

STUDENT_PREFIX = "sem_seg_head.predictor.clip_model."
TEACHER_PREFIX = "teacher_encoder."
# entries of an OpenAI / open_clip state dict that are not weights of the model we build
_NOT_WEIGHTS = ("input_resolution", "context_length", "vocab_size", "attn_mask")


def _unwrap(ckpt) -> dict:
    if isinstance(ckpt, dict):
        for key in ("model", "state_dict"):
            if isinstance(ckpt.get(key), dict):
                ckpt = ckpt[key]
                break
    if not isinstance(ckpt, dict):
        raise ValueError("not a checkpoint dict")
    if ckpt and all(k.startswith("module.") for k in ckpt):
        ckpt = {k[len("module."):]: v for k, v in ckpt.items()}
    return ckpt


def _take(state: dict, prefix: str) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        if k.startswith(prefix) and isinstance(v, torch.Tensor):
            name = k[len(prefix):]
            if name.split(".")[-1] in _NOT_WEIGHTS:
                continue
            out[name] = v.float() if v.is_floating_point() else v
    return out


def _prefixes(state: dict) -> str:
    tops = sorted({".".join(k.split(".")[:2]) for k in state})
    return ", ".join(tops[:12]) + (" ..." if len(tops) > 12 else "")


def pixelclip_clip_state_dict(state: dict, which: str = "student") -> dict[str, torch.Tensor]:
    """The CLIP state dict (open_clip key names) inside a PixelCLIP training state dict."""
    if which not in ("student", "teacher"):
        raise ValueError(f"which must be student or teacher, got {which!r}")
    state = _unwrap(state)
    clip = _take(state, STUDENT_PREFIX)
    if not clip:
        raise ValueError(f"no PixelCLIP CLIP weights (keys {STUDENT_PREFIX}*) in this checkpoint; "
                         f"its keys start with: {_prefixes(state)}")
    if which == "teacher":
        teacher = {k: v for k, v in _take(state, TEACHER_PREFIX).items() if k.startswith("visual.")}
        if not teacher:
            raise ValueError(f"no EMA teacher weights ({TEACHER_PREFIX}visual.*) in this checkpoint")
        clip = {k: v for k, v in clip.items() if not k.startswith("visual.")}
        clip.update(teacher)
    return clip


def clip_arch(state: dict[str, torch.Tensor]) -> str:
    """``"vit"`` or ``"convnext"`` from the keys of a CLIP state dict."""
    if "visual.proj" in state or "visual.conv1.weight" in state:
        return "vit"
    if any(k.startswith("visual.trunk.") for k in state):
        return "convnext"
    raise ValueError("unrecognised CLIP vision tower (neither an OpenAI/open_clip ViT nor a timm ConvNeXt)")


def guess_model_name(state: dict[str, torch.Tensor]) -> str:
    """The open_clip model name of a PixelCLIP CLIP state dict (ViT-B/16 or ConvNeXt-B/L at 320)."""
    if clip_arch(state) == "vit":
        width, _, patch, _ = state["visual.conv1.weight"].shape
        layers = len({k.split(".")[3] for k in state if k.startswith("visual.transformer.resblocks.")})
        names = {(768, 16, 12): "ViT-B-16", (768, 32, 12): "ViT-B-32", (1024, 14, 24): "ViT-L-14"}
        key = (width, patch, layers)
    else:
        width = state["visual.trunk.stem.0.weight"].shape[0]
        names = {128: "convnext_base_w_320", 192: "convnext_large_d_320"}
        key = width
    if key not in names:
        raise ValueError(f"cannot tell the open_clip model of this checkpoint ({key}); pass model=NAME")
    return names[key]


def read_foreign_checkpoint(path: str | os.PathLike, trust: bool = False) -> dict:
    """Load a torch checkpoint, with ``weights_only`` unless ``trust`` (pickles run code)."""
    from labelless.models.clip import WeightsError

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"checkpoint file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust)
    except Exception as e:
        hint = "" if trust else (" If you trust this file, convert with --trust (full pickle loading; "
                                 "it can run code).")
        raise WeightsError(f"cannot read {path}: {type(e).__name__}: {e}.{hint}") from e


def convert_pixelclip(src: str | os.PathLike, dst: str | os.PathLike, model: str | None = None,
                      which: str = "student", trust: bool = False) -> Path:
    """Official PixelCLIP checkpoint ``src`` → labelless CLIP checkpoint ``dst``.

    ``model``: the open_clip name to build (default: guessed, ViT-B-16 or
    convnext_base_w_320). The weights are loaded strictly: every key must match.
    """
    from labelless.models.clip import DenseCLIP, WeightsError, create_open_clip, save_checkpoint
    from labelless.models.dense import resize_pos_embed

    try:
        state = pixelclip_clip_state_dict(read_foreign_checkpoint(src, trust), which)
    except ValueError as e:
        raise WeightsError(f"{src}: {e}") from e
    name = model or guess_model_name(state)
    clip, tokenizer, (mean, std) = create_open_clip(name, None)
    key = "visual.positional_embedding"
    target = clip.state_dict().get(key)
    if key in state and target is not None and state[key].shape != target.shape:
        side = int(round((target.shape[0] - 1) ** 0.5))
        state[key] = resize_pos_embed(state[key], (side, side))
    missing, unexpected = clip.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise WeightsError(f"{src} ({which}) does not match open_clip {name}: {len(missing)} missing keys "
                           f"{missing[:6]}, {len(unexpected)} unexpected keys {unexpected[:6]}")
    dense = DenseCLIP(clip, tokenizer, mean, std, name)
    return save_checkpoint(dense, dst, source=str(src), converted_from="pixelclip", which=which)


# ----------------------------------------------------------------------------- CLI

def _add_pixelclip_args(q: argparse.ArgumentParser) -> None:
    q.add_argument("src", help="official checkpoint, e.g. pixelclip_vit_base.pth")
    q.add_argument("dst", help="labelless CLIP checkpoint to write")
    q.add_argument("--model", default=None, help="open_clip model name (default: guessed from the weights)")
    q.add_argument("--teacher", action="store_true", help="take the EMA image encoder instead of the student")
    q.add_argument("--trust", action="store_true", help="load with full pickle (only for files you trust)")
    q.set_defaults(func=cmd_convert)


def add_convert_parser(subparsers) -> argparse.ArgumentParser:
    """``convert pixelclip SRC DST [--model NAME] [--teacher] [--trust]`` (for ``labelless convert``)."""
    p = subparsers.add_parser("convert", help="convert foreign checkpoints to labelless CLIP checkpoints")
    sub = p.add_subparsers(dest="format", required=True)
    _add_pixelclip_args(sub.add_parser("pixelclip", help="official PixelCLIP weights (hsshin98/PixelCLIP *.pth)"))
    return p


def cmd_convert(args) -> int:
    out = convert_pixelclip(args.src, args.dst, args.model, "teacher" if args.teacher else "student", args.trust)
    print(f"wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m labelless.models.convert pixelclip SRC DST [...]`` = ``labelless convert pixelclip ...``."""
    from labelless.cli import main as labelless_main

    return labelless_main(["convert", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
