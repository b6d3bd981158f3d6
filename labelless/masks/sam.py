"""Segment Anything (``segment_anything`` package) automatic masks.

``build_sam_generator(checkpoint, model_type, device, **knobs)`` builds the SAM model of
``model_type`` — ``vit_b``, ``vit_l``, ``vit_h`` (the official architectures, built by
``segment_anything.sam_model_registry``; checkpoints ``sam_vit_b_01ec64.pth``,
``sam_vit_l_0b3195.pth``, ``sam_vit_h_4b8939.pth``) or ``tiny`` (a 128-pixel, 2-block,
32-channel SAM for tests and smoke runs) — loads the state-dict ``checkpoint`` (read
with ``torch.load(weights_only=True)``; ``None`` keeps random weights, only useful for
tests and speed measurements) and wraps it in ``SamAutomaticMaskGenerator`` with the
knobs (``points_per_side`` 32, ``points_per_batch`` 64, ``pred_iou_thresh`` 0.88,
``stability_score_thresh`` 0.95, ``stability_score_offset`` 1.0, ``box_nms_thresh`` 0.7,
``crop_n_layers`` 0, ``crop_nms_thresh`` 0.7, ``crop_overlap_ratio`` 512/1500,
``crop_n_points_downscale_factor`` 1, ``min_mask_region_area`` 0 — SAM's defaults;
``min_mask_region_area > 0`` needs OpenCV).

``sam_masks(generator, image)`` → ``(bool N×H×W, float32 N scores)`` — the masks largest
first, each with SAM's predicted IoU as its score.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import torch

from labelless.errors import MissingExtraError, SettingError, WeightsError, require

__all__ = ["SAM_MODEL_TYPES", "GENERATOR_DEFAULTS", "build_sam_model", "build_sam_generator", "sam_masks",
           "save_tiny_sam"]

SAM_MODEL_TYPES = ("vit_b", "vit_l", "vit_h", "tiny")
GENERATOR_DEFAULTS = dict(points_per_side=32, points_per_batch=64, pred_iou_thresh=0.88,
                          stability_score_thresh=0.95, stability_score_offset=1.0, box_nms_thresh=0.7,
                          crop_n_layers=0, crop_nms_thresh=0.7, crop_overlap_ratio=512 / 1500,
                          crop_n_points_downscale_factor=1, min_mask_region_area=0)


def _why(e: BaseException) -> str:
    """``Type: first line of the message``, so an error stays one line."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def _build_tiny_sam():
    """SAM's building blocks at toy size: 128-pixel input, 2 encoder blocks of 32 channels
    (window 4, one global block), 32-channel prompt/mask decoder. Random weights."""
    m = require("segment_anything.modeling", "the sam mask source")
    ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer = (
        m.ImageEncoderViT, m.MaskDecoder, m.PromptEncoder, m.Sam, m.TwoWayTransformer)

    img, patch, dim = 128, 16, 32
    grid = img // patch
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=2, embed_dim=32, img_size=img, mlp_ratio=2, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=2, patch_size=patch, qkv_bias=True, use_rel_pos=True, global_attn_indexes=[1],
            window_size=4, out_chans=dim),
        prompt_encoder=PromptEncoder(embed_dim=dim, image_embedding_size=(grid, grid),
                                     input_image_size=(img, img), mask_in_chans=4),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=1, embedding_dim=dim, mlp_dim=64, num_heads=2),
            transformer_dim=dim, iou_head_depth=2, iou_head_hidden_dim=32),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


def build_sam_model(model_type: str = "vit_b", checkpoint=None, device="cpu"):
    """A ``segment_anything.modeling.Sam`` of ``model_type`` with the weights of the
    state-dict file ``checkpoint`` (None: random), in eval mode on ``device``."""
    if model_type not in SAM_MODEL_TYPES:
        raise SettingError(f"unknown SAM model type {model_type!r}; choose from {', '.join(SAM_MODEL_TYPES)}")
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise WeightsError(f"SAM checkpoint not found: {checkpoint} (download sam_vit_b_01ec64.pth, "
                           "sam_vit_l_0b3195.pth or sam_vit_h_4b8939.pth from the segment-anything release "
                           "and pass its path with --sam-checkpoint)")
    if model_type == "tiny":
        sam = _build_tiny_sam()
    else:
        sam = require("segment_anything", "the sam mask source").sam_model_registry[model_type](checkpoint=None)
    if checkpoint is not None:
        try:
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        except Exception as e:
            raise WeightsError(f"cannot read SAM checkpoint {checkpoint}: {_why(e)}") from e
        if isinstance(state, dict) and isinstance(state.get("model"), dict):
            state = state["model"]
        try:
            sam.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError) as e:
            raise WeightsError(f"SAM checkpoint {checkpoint} does not fit model type {model_type!r} ({_why(e)}); "
                               f"pass the matching --sam-model ({', '.join(SAM_MODEL_TYPES)})") from e
    return sam.eval().requires_grad_(False).to(device)


def save_tiny_sam(path, seed: int = 0) -> Path:
    """Write a random ``tiny`` SAM state dict to ``path`` (for tests and smoke runs)."""
    torch.manual_seed(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(_build_tiny_sam().state_dict(), path)
    return path


def build_sam_generator(checkpoint, model_type: str = "vit_b", device="cpu", **knobs):
    """``SamAutomaticMaskGenerator`` around :func:`build_sam_model` (knobs: see module doc)."""
    SamAutomaticMaskGenerator = require("segment_anything", "the sam mask source").SamAutomaticMaskGenerator

    unknown = set(knobs) - set(GENERATOR_DEFAULTS)
    if unknown:
        raise SettingError(f"unknown SAM generator option(s) {sorted(unknown)}; known: {sorted(GENERATOR_DEFAULTS)}")
    opts = {**GENERATOR_DEFAULTS, **{k: v for k, v in knobs.items() if v is not None}}
    if opts["min_mask_region_area"] > 0:
        try:
            import cv2  # noqa: F401
        except ImportError:
            raise MissingExtraError("min_mask_region_area > 0 (--min-mask-region-area) needs OpenCV, which is "
                                    "not installed: pip install opencv-python-headless; or leave it at 0") from None
    if opts["points_per_side"] < 1:
        raise SettingError(f"points_per_side (--points-per-side) must be >= 1, got {opts['points_per_side']}")
    model = build_sam_model(model_type, checkpoint, device)
    return SamAutomaticMaskGenerator(model, output_mode="binary_mask", **opts)


def sam_masks(generator, image) -> tuple[np.ndarray, np.ndarray]:
    """Run SAM's automatic mask generator on one image.

    image: ``3×H×W`` uint8 tensor/array or ``H×W×3`` uint8 array (RGB).
    Returns ``(masks bool N×H×W, scores float32 N)`` sorted by area, largest first;
    scores are SAM's predicted IoUs. N may be 0.
    """
    arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] == 3 and arr.shape[-1] != 3:
        arr = arr.transpose(1, 2, 0)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"image must be 3×H×W or H×W×3 RGB, got shape {arr.shape}")
    arr = np.ascontiguousarray(arr.astype(np.uint8, copy=False))
    H, W = arr.shape[:2]
    anns = generator.generate(arr)
    if not anns:
        return np.zeros((0, H, W), dtype=bool), np.zeros(0, dtype=np.float32)
    anns = sorted(anns, key=lambda a: -int(a["area"]))
    masks = np.stack([np.asarray(a["segmentation"], dtype=bool) for a in anns])
    scores = np.array([a["predicted_iou"] for a in anns], dtype=np.float32)
    return masks, scores
