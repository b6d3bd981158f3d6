"""Foreign checkpoint formats → what labelless builds: one small function per format.

**OpenAI CLIP** (``clip.load`` state dicts, the TorchScript archives OpenAI released):
open_clip's key names plus three int entries (``input_resolution``, ``context_length``,
``vocab_size``) that are not weights. The architecture follows from the shapes, as
OpenAI's own ``build_model`` reads it: widths from ``visual.conv1`` / ``ln_final``, layer
counts from the block keys, 64-wide attention heads in both towers, the image size
from the positional grid. OpenAI trained every tower with QuickGELU.

**PixelCLIP** (Hugging Face ``hsshin98/PixelCLIP``, ``weights/``: ``pixelclip_vit_base.pth``,
``pixelclip_vit_base_dino.pth``, ``pixelclip_convnext_base.pth``,
``pixelclip_convnext_base_dino.pth``): detectron2 checkpoints of the whole training model,
``{"model": state_dict, ...}``. In the official code (github cvlab-kaist/PixelCLIP,
``pixelclip/pixelclip.py``, ``pixelclip/modeling/transformer/pixelclip_predictor.py``)
the meta-architecture ``PixelCLIP`` holds

=======================================  ===============================================
key prefix                               what
=======================================  ===============================================
``sem_seg_head.predictor.clip_model.``   the fine-tuned CLIP (student), whole model: ViT
                                         in OpenAI CLIP key names (``clip.load``: OpenAI's
                                         model class, QuickGELU), ConvNeXt in open_clip
                                         names (``visual.trunk.*`` timm keys, GELU)
``sem_seg_head.predictor.prompt_tokens``  the k learnable class-prompt tokens (k×4×width)
``teacher_encoder.``                     the EMA image encoder: a copy of the CLIP model
                                         whose text ``transformer`` was removed
``head.``                                the upsampling decoder ``ConvHead`` (training only)
``dino.``                                DINO ViT-S/16 (only in DINO-mask runs)
=======================================  ===============================================

**DINOv2** (a transformers ``Dinov2Model`` / ``Dinov2WithRegistersModel`` state dict, such as
the DINOv2-S of ../shared/weights): ``dinov2_to_timm`` renames it into the timm ViT of the
same architecture (``vit_*_patch14_dinov2``, ``vit_*_patch14_reg4_dinov2``; the LiT towers of
``models/lit.py``): q, k, v stacked into ``qkv``, ``lambda1`` → ``ls*.gamma``. With registers
timm's model has no position for the class token (``no_embed_class``), so the class token's
position is added to the class token, as timm's own DINOv2 converter does.

``pixelclip_parts`` splits such a checkpoint into the CLIP (student or EMA teacher
tower), the EMA visual tower, the prompt tokens and the decoder in labelless key names
(``ConvHead.convN.double_conv.i`` → ``UpsampleDecoder.convN.i``), so that inference
(``--pretrained FILE``), ``labelless train pixelclip init=FILE`` and ``show-prompts`` all
read the released files directly. Inference in the official code uses the student.
The ViT positional embedding stays at its stored grid (resized at run time, as the
official code does).
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path

import torch

from labelless.errors import WeightsError, describe

STUDENT_PREFIX = "sem_seg_head.predictor.clip_model."
TEACHER_PREFIX = "teacher_encoder."
PROMPTS_KEY = "sem_seg_head.predictor.prompt_tokens"
DECODER_PREFIX = "head."
# entries of an OpenAI / open_clip state dict that are not weights of the model we build
NOT_WEIGHTS = ("input_resolution", "context_length", "vocab_size", "attn_mask")
OPENAI_INT_ENTRIES = ("input_resolution", "context_length", "vocab_size")


def unwrap_state_dict(ckpt) -> dict:
    """The state dict inside ``{"model": ...}`` / ``{"state_dict": ...}``, without ``module.``."""
    if isinstance(ckpt, dict):
        for key in ("state_dict", "model"):
            if isinstance(ckpt.get(key), dict):
                ckpt = ckpt[key]
                break
    if not isinstance(ckpt, dict):
        raise ValueError("not a checkpoint dict")
    if ckpt and all(k.startswith("module.") for k in ckpt):
        ckpt = {k[len("module."):]: v for k, v in ckpt.items()}
    return ckpt


def drop_non_weights(state: dict) -> dict[str, torch.Tensor]:
    """Tensors only, without the entries of ``NOT_WEIGHTS`` (floats as float32)."""
    out = {}
    for k, v in state.items():
        if not isinstance(v, torch.Tensor) or k.split(".")[-1] in NOT_WEIGHTS:
            continue
        out[k] = v.float() if v.is_floating_point() else v
    return out


def _take(state: dict, prefix: str) -> dict[str, torch.Tensor]:
    return drop_non_weights({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})


def _prefixes(state: dict) -> str:
    tops = sorted({".".join(k.split(".")[:2]) for k in state})
    return ", ".join(tops[:12]) + (" ..." if len(tops) > 12 else "")


# ----------------------------------------------------------------------------- OpenAI

def is_openai_state_dict(state: dict) -> bool:
    """OpenAI's ``clip.load`` / TorchScript state dicts carry the three int entries."""
    return any(k in state for k in OPENAI_INT_ENTRIES)


def clip_arch(state: dict[str, torch.Tensor]) -> str:
    """``"vit"`` or ``"convnext"`` from the keys of a CLIP state dict."""
    if "visual.proj" in state or "visual.conv1.weight" in state:
        return "vit"
    if any(k.startswith("visual.trunk.") for k in state):
        return "convnext"
    raise ValueError("unrecognised CLIP vision tower (neither an OpenAI/open_clip ViT nor a timm ConvNeXt)")


def vit_model_cfg(state: dict[str, torch.Tensor], quick_gelu: bool) -> dict:
    """The open_clip model config of a ViT CLIP state dict in OpenAI key names."""
    try:
        width, _, patch, _ = state["visual.conv1.weight"].shape
        grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        layers = len({k.split(".")[3] for k in state if k.startswith("visual.transformer.resblocks.")})
        text_width = state["ln_final.weight"].shape[0]
        cfg = {
            "embed_dim": int(state["text_projection"].shape[1]),
            "quick_gelu": bool(quick_gelu),
            "vision_cfg": {"image_size": int(patch * grid), "layers": layers, "width": int(width),
                           "patch_size": int(patch)},
            "text_cfg": {"context_length": int(state["positional_embedding"].shape[0]),
                         "vocab_size": int(state["token_embedding.weight"].shape[0]), "width": int(text_width),
                         "heads": int(text_width // 64),
                         "layers": len({k.split(".")[2] for k in state if k.startswith("transformer.resblocks.")})},
        }
    except KeyError as e:
        raise ValueError(f"not a CLIP ViT state dict in OpenAI key names (no {e.args[0]})") from None
    if width % 64:
        raise ValueError(f"vision width {width} is not a multiple of OpenAI's 64-wide heads; pass the model name")
    return cfg


def _arch_fields(cfg: dict) -> tuple:
    v, t = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
    return (cfg.get("embed_dim"), v.get("image_size"), v.get("layers"), v.get("width"), v.get("patch_size"),
            v.get("head_width", 64), v.get("mlp_ratio", 4.0), t.get("context_length", 77),
            t.get("vocab_size", 49408), t.get("width"), t.get("heads", 8), t.get("layers"))


def builtin_name_for(cfg: dict) -> str | None:
    """The plain open_clip name (no ``-quickgelu`` suffix) whose architecture is ``cfg``'s."""
    import open_clip

    want = _arch_fields(cfg)
    for name in open_clip.list_models():
        other = open_clip.get_model_config(name) or {}
        extra = set(other) - {"embed_dim", "vision_cfg", "text_cfg", "quick_gelu"}
        if name.endswith("-quickgelu") or extra or set(other.get("vision_cfg", {})) - {
                "image_size", "layers", "width", "patch_size", "head_width", "mlp_ratio"}:
            continue
        if _arch_fields(other) == want:
            return name
    return None


def guess_model_name(state: dict[str, torch.Tensor]) -> str:
    """The open_clip name of a CLIP state dict: any plain open_clip ViT, or ConvNeXt-B/L at 320."""
    if clip_arch(state) == "vit":
        name = builtin_name_for(vit_model_cfg(state, False))
        if name is None:
            raise ValueError("cannot tell the open_clip model of this checkpoint; pass model=NAME")
        return name
    width = state["visual.trunk.stem.0.weight"].shape[0]
    names = {128: "convnext_base_w_320", 192: "convnext_large_d_320"}
    if width not in names:
        raise ValueError(f"cannot tell the open_clip model of this ConvNeXt (stem width {width}); pass model=NAME")
    return names[width]


# ----------------------------------------------------------------------------- PixelCLIP

def is_pixelclip_state_dict(state: dict) -> bool:
    return any(k.startswith(STUDENT_PREFIX) for k in state)


_DOUBLE_CONV = re.compile(r"^(conv[12])\.double_conv\.(\d+)\.")


def pixelclip_decoder_state(state: dict) -> dict[str, torch.Tensor]:
    """Official ``ConvHead`` weights (``head.*``) in ``train.decoder.UpsampleDecoder`` names."""
    out = {}
    for k, v in _take(state, DECODER_PREFIX).items():
        out[_DOUBLE_CONV.sub(r"\1.\2.", k)] = v
    return out


def pixelclip_clip_state_dict(state: dict, which: str = "student") -> dict[str, torch.Tensor]:
    """The CLIP state dict (open_clip key names) inside a PixelCLIP training state dict;
    ``which="teacher"``: its vision tower replaced by the EMA encoder's."""
    if which not in ("student", "teacher"):
        raise ValueError(f"which must be student or teacher, got {which!r}")
    state = unwrap_state_dict(state)
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


def pixelclip_parts(state: dict) -> dict:
    """Everything of an official PixelCLIP state dict that labelless uses.

    Returns ``{"clip": student CLIP state, "teacher": EMA visual-tower state (keys relative
    to the tower) or {}, "prompts": k×length×width tensor or None, "decoder": decoder
    state (labelless names) or {}}``.
    """
    state = unwrap_state_dict(state)
    clip = pixelclip_clip_state_dict(state)
    teacher = {k[len("visual."):]: v for k, v in _take(state, TEACHER_PREFIX).items() if k.startswith("visual.")}
    prompts = state.get(PROMPTS_KEY)
    return {"clip": clip, "teacher": teacher,
            "prompts": prompts.float() if isinstance(prompts, torch.Tensor) else None,
            "decoder": pixelclip_decoder_state(state)}


def read_foreign_checkpoint(path: str | os.PathLike, trust: bool = False) -> dict:
    """Load a torch checkpoint, with ``weights_only`` unless ``trust`` (pickles run code)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"checkpoint file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust)
    except Exception as e:
        hint = "" if trust else (" If you trust this file, convert with --trust (full pickle loading; "
                                 "it can run code).")
        raise WeightsError(f"cannot read {path}: {describe(e)}.{hint}") from e


def convert_pixelclip(src: str | os.PathLike, dst: str | os.PathLike, model: str | None = None,
                      which: str = "student", trust: bool = False) -> Path:
    """Official PixelCLIP checkpoint ``src`` → labelless CLIP checkpoint ``dst``.

    ``model``: the open_clip name to build (default: told from the weights). ViTs are
    built with QuickGELU (OpenAI CLIPs), ConvNeXts as open_clip builds them. The weights
    load strictly: every key must match. The file records the model config, so
    ``--pretrained dst`` rebuilds the same model (activation included).
    """
    from labelless.models.clip import build_from_state, save_checkpoint

    try:
        state = pixelclip_clip_state_dict(read_foreign_checkpoint(src, trust), which)
    except ValueError as e:
        raise WeightsError(f"{src}: {e}") from e
    dense = build_from_state(state, model, source=str(src), openai_format=clip_arch(state) == "vit")
    return save_checkpoint(dense, dst, source=str(src), converted_from="pixelclip", which=which)


def with_quick_gelu(cfg: dict, quick_gelu: bool) -> dict:
    out = copy.deepcopy(cfg)
    out["quick_gelu"] = bool(quick_gelu)
    return out


# transformers DINOv2 layer keys (5.x names and the classic ones) -> timm VisionTransformer block keys
_DINOV2_LAYER = {"norm1": "norm1", "norm2": "norm2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
                 "layer_scale1.lambda1": "ls1.gamma", "layer_scale2.lambda1": "ls2.gamma",
                 "attention.o_proj": "attn.proj", "attention.output.dense": "attn.proj"}
_DINOV2_QKV = (("attention.q_proj", "attention.k_proj", "attention.v_proj"),
               ("attention.attention.query", "attention.attention.key", "attention.attention.value"))


def _dinov2_layer(i: int, layer: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One ``encoder.layer.{i}`` (keys relative to it) → timm ``blocks.{i}.*``."""
    out = {}
    for names in _DINOV2_QKV:
        if f"{names[0]}.weight" in layer:
            for part in ("weight", "bias"):
                if f"{names[0]}.{part}" in layer:
                    out[f"blocks.{i}.attn.qkv.{part}"] = torch.cat([layer.pop(f"{n}.{part}") for n in names])
    for key, value in layer.items():
        module, _, part = key.rpartition(".")
        if key in _DINOV2_LAYER:  # lambda1 has no .weight / .bias suffix
            out[f"blocks.{i}.{_DINOV2_LAYER[key]}"] = value
        elif module in _DINOV2_LAYER:
            out[f"blocks.{i}.{_DINOV2_LAYER[module]}.{part}"] = value
        else:
            raise WeightsError(f"DINOv2 weight encoder.layer.{i}.{key} has no timm counterpart")
    return out


def dinov2_to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A transformers DINOv2 state dict (module docstring) → timm ``VisionTransformer`` keys."""
    state = {k.removeprefix("dinov2."): v for k, v in state.items()}
    out = {"patch_embed.proj.weight": state.pop("embeddings.patch_embeddings.projection.weight"),
           "patch_embed.proj.bias": state.pop("embeddings.patch_embeddings.projection.bias"),
           "norm.weight": state.pop("layernorm.weight"), "norm.bias": state.pop("layernorm.bias")}
    cls, pos = state.pop("embeddings.cls_token"), state.pop("embeddings.position_embeddings")
    state.pop("embeddings.mask_token", None)  # masked-image training only
    if "embeddings.register_tokens" in state:  # timm: no_embed_class (module docstring)
        out.update(reg_token=state.pop("embeddings.register_tokens"), cls_token=cls + pos[:, :1], pos_embed=pos[:, 1:])
    else:
        out.update(cls_token=cls, pos_embed=pos)
    layers: dict[int, dict] = {}
    for key, value in state.items():
        m = re.match(r"encoder\.layer\.(\d+)\.(.+)$", key)
        if m is None:
            raise WeightsError(f"DINOv2 weight {key} has no timm counterpart")
        layers.setdefault(int(m.group(1)), {})[m.group(2)] = value
    for i, layer in sorted(layers.items()):
        out.update(_dinov2_layer(i, layer))
    return out
