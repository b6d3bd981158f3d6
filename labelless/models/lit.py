"""LiT CLIPs (Zhai et al., CVPR 2022, "LiT: Zero-Shot Transfer with Locked-image text Tuning"):
a pretrained image model, locked, as the image tower of an open_clip CLIP whose text tower
(and projections) are trained against it (``labelless train clip image_tower=FOLDER``).

``build_lit_clip(text_model, folder)``: the DINOv2 of a transformers ``save_pretrained``
folder (``Dinov2Model`` / ``Dinov2WithRegistersModel``, e.g. ../shared/weights/dinov2-small)
becomes the timm ViT it is (``convert.dinov2_to_timm``; built as the ``vit_small_patch14_dinov2``
architecture with the folder's sizes as ``timm_model_kwargs``, ``models/timm_tower.py``), the
image tower of a CLIP whose text tower and ``embed_dim`` are those of the open_clip / labelless
model ``text_model`` (random: trained by LiT). The image tower's output is its class token
after the final LayerNorm (DINOv2's global embedding: timm ``global_pool="token"``), then a
trainable head into the joint space: ``proj="linear"`` (LiT's linear head on a locked tower; no
bias, open_clip's default) or ``"mlp"``. Mean / std are ImageNet's (DINOv2's).

The trunk is built with ``dynamic_img_size``: positions are kept at the checkpoint's grid
(DINOv2: 37×37 for 518 px) and resampled to every input (timm's bicubic, antialiased:
DINOv2's own code does not antialias; the two differ only when shrinking the grid), so the
CLIP trains at any ``image_size`` (default 224) and the dense modes (``models/timm_dense.py``,
kind "timm-vit": pixelclip included, DINOv2 has a class token) run on it unchanged.

``lock_image_tower(dense)``: LiT's lock: every image-tower parameter except the projection
head stops taking gradients, and the locked part stays in eval mode (no drop path).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from labelless.errors import SettingError, WeightsError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DINOV2_ARCH = "vit_small_patch14_dinov2"  # the timm architecture function; sizes from the folder
LIT_PROJ = ("linear", "mlp")


def dinov2_vision_cfg(config: dict, image_size: int = 224, proj: str = "linear") -> dict:
    """The open_clip ``vision_cfg`` of the timm ViT equal to a DINOv2 ``config.json`` (dict)."""
    if config.get("model_type") not in ("dinov2", "dinov2_with_registers"):
        raise SettingError(f"a LiT image tower must be a DINOv2 folder; its config.json says model_type "
                           f"{config.get('model_type')!r}")
    if config.get("use_swiglu_ffn") or config.get("hidden_act", "gelu") != "gelu":
        raise SettingError("DINOv2 with a SwiGLU / non-GELU FFN (ViT-g) is not supported as a LiT tower")
    if abs(float(config.get("layer_norm_eps", 1e-6)) - 1e-6) > 1e-12:
        raise SettingError(f"DINOv2 layer_norm_eps {config['layer_norm_eps']} (timm's DINOv2 ViT uses 1e-6)")
    if proj not in LIT_PROJ:
        raise SettingError(f"LiT image projection must be one of {', '.join(LIT_PROJ)}, got {proj!r}")
    patch = config["patch_size"] if isinstance(config["patch_size"], int) else config["patch_size"][0]
    side = config["image_size"] if isinstance(config["image_size"], int) else config["image_size"][0]
    regs = int(config.get("num_register_tokens", 0) or 0)
    kwargs = {"img_size": side, "patch_size": patch, "embed_dim": config["hidden_size"],
              "depth": config["num_hidden_layers"], "num_heads": config["num_attention_heads"],
              "mlp_ratio": float(config.get("mlp_ratio", 4)), "qkv_bias": bool(config.get("qkv_bias", True)),
              "init_values": float(config.get("layerscale_value", 1.0)), "reg_tokens": regs,
              "no_embed_class": regs > 0, "dynamic_img_size": True}
    return {"timm_model_name": DINOV2_ARCH, "timm_model_kwargs": kwargs, "timm_pool": "token",
            "timm_proj": proj, "image_size": int(image_size)}


def build_lit_clip(text_model: str, folder: str | Path, image_size: int | None = None, proj: str = "linear",
                   device="cpu", cache_dir: str | None = None):
    """A ``DenseCLIP``: the DINOv2 of ``folder`` (weights loaded) as the image tower, the text
    tower of ``text_model`` (random) — module docstring."""
    from labelless.masks.dino import load_dino
    from labelless.models import convert
    from labelless.models.clip import DenseCLIP, clip_from_cfg, make_tokenizer, named_model_cfg

    dino = load_dino(folder, option="image_tower=")
    if dino.family != "dinov2":
        raise SettingError(f"{folder}: a LiT image tower must be a DINOv2 folder, this is {dino.family}")
    base = named_model_cfg(text_model, cache_dir)
    text = base.get("text_cfg")
    if text is None or "hf_model_name" in text or text.get("hf_tokenizer_name"):
        raise SettingError(f"{text_model}: a LiT text tower is an open_clip text transformer with CLIP's BPE "
                           "tokenizer (a text_cfg without hf_model_name / hf_tokenizer_name), e.g. tiny-vit, ViT-B-16")
    cfg = {"embed_dim": base["embed_dim"], "quick_gelu": bool(base.get("quick_gelu", False)),
           "vision_cfg": dinov2_vision_cfg(dino.model.config.to_dict(), image_size or 224, proj),
           "text_cfg": text}
    model = clip_from_cfg(cfg)
    state = convert.dinov2_to_timm({k: v.float() for k, v in dino.model.state_dict().items()})
    missing, unexpected = model.visual.trunk.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise WeightsError(f"{folder}: the DINOv2 weights do not fit the timm ViT: {len(missing)} missing "
                           f"{missing[:6]}, {len(unexpected)} unexpected {unexpected[:6]}")
    name = f"LiT-{Path(folder).name}-{text_model}"
    dense = DenseCLIP(model, make_tokenizer(name, cfg, cache_dir), IMAGENET_MEAN, IMAGENET_STD, name,
                      str(folder), cfg)
    return dense.to(device)


def lock_image_tower(dense) -> nn.Module:
    """LiT's lock (module docstring) on a ``DenseCLIP``; returns the locked module (to be put
    back in eval mode after any ``.train()``). timm towers: ``visual.trunk`` (the head trains);
    open_clip ViTs: everything but ``visual.proj``."""
    visual = dense.clip.visual
    if hasattr(visual, "trunk"):
        locked = visual.trunk
        locked.requires_grad_(False)
    elif dense.kind == "vit":
        locked = visual
        for name, p in visual.named_parameters():
            p.requires_grad_(name == "proj")
    else:
        raise SettingError(f"cannot lock the image tower of {dense.name} ({dense.kind})")
    return locked.eval()
