"""open_clip's timm image tower (``TimmModel``) built with extra timm architecture arguments.

open_clip builds a timm tower from a registered timm name alone (``vision_cfg.timm_model_name``,
``timm_pool``, ``timm_proj``, …). A labelless model config may add
``vision_cfg.timm_model_kwargs``: a one-level dict passed to ``timm.create_model`` on top of the
name's own arguments (``depth``, ``embed_dim``, ``num_heads``, ``img_size``, ``patch_size``,
``reg_tokens``, ``dynamic_img_size``, …). That is how tiny timm towers for tests
(``models/configs/tiny-timm-vit.json``) and the DINOv2 towers of LiT models (``models/lit.py``)
are architectures as data: a checkpoint's ``model_cfg`` rebuilds them. (Imports open_clip:
``models/clip.py`` imports this module only when a config needs it.)

``TimmTower`` is a ``TimmModel`` (same ``trunk`` / ``head`` modules, state-dict keys, forward,
``lock``) whose constructor passes those arguments; its head follows ``TimmModel``'s rules
(``proj`` linear / mlp on ``trunk.num_features``, or the trunk's own classifier as the
projection when ``proj`` is none / null). Custom attention pools (``abs_attn`` / ``rot_attn``,
for convolutional trunks) are not offered here.
"""

from __future__ import annotations

import copy
from collections import OrderedDict

from open_clip.timm_model import TimmModel
from torch import nn

from labelless.errors import SettingError

KWARGS_KEY = "timm_model_kwargs"
# the image tower open_clip builds while the real one is made here: one tiny block, discarded
PLACEHOLDER_VISION = {"image_size": 32, "layers": 1, "width": 32, "head_width": 32, "patch_size": 32}


class TimmTower(TimmModel):
    """``TimmModel`` over ``timm.create_model(model_name, **model_kwargs)`` (module docstring)."""

    def __init__(self, model_name: str, embed_dim: int, image_size=224, pool: str = "avg",
                 proj: str | None = "linear", proj_bias: bool = False, drop: float = 0.0,
                 drop_path: float | None = None, patch_drop: float | None = None,
                 model_kwargs: dict | None = None):
        nn.Module.__init__(self)
        import timm
        from timm.layers import Mlp, to_2tuple

        if pool in ("abs_attn", "rot_attn"):
            raise SettingError(f"timm_pool {pool!r} with timm_model_kwargs is not supported (a ViT's own pool "
                               "or map head is)")
        self.image_size = to_2tuple(image_size)
        kwargs = dict(model_kwargs or {})
        if drop_path is not None:
            kwargs["drop_path_rate"] = drop_path
        if patch_drop is not None:
            kwargs["patch_drop_rate"] = patch_drop
        extra_proj = proj in ("linear", "mlp")
        if extra_proj:  # TimmModel: the classifier removed, the pool as configured
            pool_kw = {"global_pool": pool} if pool else {}
            self.trunk = timm.create_model(model_name, pretrained=False, num_classes=0, **pool_kw, **kwargs)
            width = self.trunk.num_features
        else:  # TimmModel: the trunk's classifier is the projection (none: no projection)
            self.trunk = timm.create_model(model_name, pretrained=False, num_classes=0 if proj == "none" else embed_dim,
                                           global_pool=pool, **kwargs)
            width = embed_dim
        head = OrderedDict()
        if proj == "linear":
            head["drop"] = nn.Dropout(drop)
            head["proj"] = nn.Linear(width, embed_dim, bias=proj_bias)
        elif proj == "mlp":
            head["mlp"] = Mlp(width, 2 * embed_dim, embed_dim, drop=(drop, 0), bias=(True, proj_bias))
        self.head = nn.Sequential(head)


def split_timm_kwargs(cfg: dict) -> tuple[dict, dict | None]:
    """``(cfg for open_clip, the vision config to build here or None)``: a model config whose
    ``vision_cfg`` has ``timm_model_kwargs`` gets open_clip's placeholder image tower instead."""
    vision = cfg.get("vision_cfg", {})
    if KWARGS_KEY not in vision:
        return cfg, None
    kwargs = vision[KWARGS_KEY]
    if not isinstance(kwargs, dict) or not vision.get("timm_model_name"):
        raise SettingError(f"vision_cfg.{KWARGS_KEY} must be a dict of timm.create_model arguments, "
                           "beside a timm_model_name")
    cfg = copy.deepcopy(cfg)
    tower = cfg["vision_cfg"]
    cfg["vision_cfg"] = dict(PLACEHOLDER_VISION)
    return cfg, tower


def build_timm_tower(vision: dict, embed_dim: int) -> TimmTower:
    """The ``TimmTower`` an open_clip ``vision_cfg`` with ``timm_model_kwargs`` describes."""
    try:
        return TimmTower(
            vision["timm_model_name"], embed_dim, image_size=vision.get("image_size", 224),
            pool=vision.get("timm_pool", "avg"), proj=vision.get("timm_proj", "linear"),
            proj_bias=vision.get("timm_proj_bias", False), drop=vision.get("timm_drop", 0.0),
            drop_path=vision.get("timm_drop_path"),
            patch_drop=vision.get("patch_dropout") or None, model_kwargs=vision[KWARGS_KEY])
    except (TypeError, RuntimeError) as e:  # an argument this architecture does not take, an unknown name
        raise SettingError(f"timm tower {vision['timm_model_name']!r} with {KWARGS_KEY} "
                           f"{vision[KWARGS_KEY]}: {str(e).splitlines()[0]}") from e
