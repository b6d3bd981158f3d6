"""One loader from "what the user named" to a scorer, for ``segment``, ``eval`` and the
Python API.

A weight file says what it is: labelless checkpoints carry ``"format"`` (and their model
config); foreign files are recognised by their keys (``models/weights.py``). The format
picks the builder from an explicit table (no registration by import side effect):

=====================  ============================================  =====================
format                 what                                          scorer
=====================  ============================================  =====================
``labelless-clip``     a CLIP (exported by ``train clip`` / ``train  ``DenseCLIPScorer``
                       pixelclip``, ``convert``)
(foreign CLIP files)   OpenAI state dicts / TorchScript, official    ``DenseCLIPScorer``
                       PixelCLIP, open_clip state dicts
``labelless-sseg``     an S-Seg model (``train sseg``)               ``MaskClassification
                                                                     Scorer``
``labelless-           a closed-vocabulary segmenter (``train        ``ClosedSetScorer``
segmenter``            selftrain``)
=====================  ============================================  =====================

Tags (``openai``), ``hf-hub:`` / ``local-dir:`` names and ``none`` build a CLIP.

``mode="proxyclip"`` (a CLIP ViT only) also loads its vision foundation model (``vfm``: a
DINO / DINOv2 hub name or folder, default the paper's ``facebook/dino-vitb8``) first, so a
VFM that cannot be loaded stops the run before anything else is built; the VFM settings
(``vfm``, ``proxy_beta``, ``proxy_gamma``) are refused with any other mode.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Callable

import torch

from labelless.errors import SettingError
from labelless.io import pick_device
from labelless.models.weights import LABELLESS_FORMAT


def checkpoint_format(path: str | Path) -> str:
    """The ``format`` a labelless checkpoint records; ``"foreign"`` for any other file
    (safetensors, TorchScript archives, state dicts). Reads the file memory-mapped."""
    path = Path(path)
    if path.suffix == ".safetensors" or not zipfile.is_zipfile(path):
        return "foreign"  # legacy (non-zip) torch files and safetensors hold no labelless format
    from labelless.models.torchscript import is_torchscript_archive

    if is_torchscript_archive(path):
        return "foreign"
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # the CLIP reader gives the full message (and the --trust hint)
        return "foreign"
    fmt = ckpt.get("format") if isinstance(ckpt, dict) else None
    return fmt if isinstance(fmt, str) else "foreign"


def _clip_mode(model, mode: str) -> str:
    mode = mode if mode != "auto" else ("pixelclip" if "pixelclip" in model.modes else "vanilla")
    model.check_mode(mode)
    return mode


def _clip_scorer(name, pretrained, mode, device, cache_dir):
    from labelless.models.clip import build_clip
    from labelless.scorers import DenseCLIPScorer

    model = build_clip(name, pretrained, device=device, cache_dir=cache_dir)
    return DenseCLIPScorer(model, _clip_mode(model, mode))


def _sseg_scorer(name, pretrained, mode, device, cache_dir):
    from labelless.models.sseg import load_sseg
    from labelless.scorers import MaskClassificationScorer

    if mode not in ("auto", None):
        raise SettingError(f"--mode {mode} is a CLIP dense mode; an S-Seg model classifies masks (leave --mode out)")
    return MaskClassificationScorer(load_sseg(pretrained, device))


def _segmenter_scorer(name, pretrained, mode, device, cache_dir):
    from labelless.models.segmenter import load_segmenter
    from labelless.scorers import ClosedSetScorer

    if mode not in ("auto", None):
        raise SettingError(f"--mode {mode} is a CLIP dense mode; a segmenter has none (leave --mode out)")
    return ClosedSetScorer(load_segmenter(pretrained, device))


# format -> builder(name, pretrained, mode, device, cache_dir) -> scorer
FORMATS: dict[str, Callable] = {LABELLESS_FORMAT: _clip_scorer, "foreign": _clip_scorer,
                                "labelless-sseg": _sseg_scorer, "labelless-segmenter": _segmenter_scorer}


def _load_vfm(mode: str, vfm: str | None, beta: float | None, gamma: float | None, device):
    """``(DinoBackbone, beta, gamma)`` for mode proxyclip (defaults filled in), None for other
    modes, which refuse any VFM setting."""
    from labelless.models.proxyclip import DEFAULT_BETA, DEFAULT_GAMMA, DEFAULT_VFM, check_proxy_settings

    if mode != "proxyclip":
        given = [f for f, v in (("--vfm", vfm), ("--proxy-beta", beta), ("--proxy-gamma", gamma)) if v is not None]
        if given:
            raise SettingError(f"{', '.join(given)} given, but VFM settings apply only to --mode proxyclip "
                              f"(got --mode {mode})")
        return None
    beta = DEFAULT_BETA if beta is None else float(beta)
    gamma = DEFAULT_GAMMA if gamma is None else float(gamma)
    check_proxy_settings(beta, gamma)
    from labelless.masks.dino import load_dino

    return load_dino(vfm or DEFAULT_VFM, device, option="--vfm"), beta, gamma


def load_scorer(name: str | None, pretrained: str | None, mode: str = "auto", device="auto",
                cache_dir: str | None = None, vfm: str | None = None, proxy_beta: float | None = None,
                proxy_gamma: float | None = None):
    """The scorer for model ``name`` with weights ``pretrained`` (a tag, a file of any
    supported format, or none). ``mode``: the CLIP dense mode (``auto``: pixelclip for ViTs,
    vanilla for ConvNeXts; ``proxyclip`` with the VFM ``vfm`` and β, γ, module doc). The
    scorer's model is ``scorer.model``."""
    device = pick_device(device)
    is_file = pretrained is not None and str(pretrained).lower() not in ("", "none", "random") \
        and Path(str(pretrained)).is_file()
    fmt = checkpoint_format(pretrained) if is_file else "foreign"
    if fmt not in FORMATS:
        raise SettingError(f"{pretrained} is a {fmt!r} checkpoint, which segment/eval cannot use "
                           f"(known: {', '.join(k for k in FORMATS if k != 'foreign')}, or CLIP weight files)")
    if mode == "proxyclip" and FORMATS[fmt] is not _clip_scorer:
        raise SettingError(f"--mode proxyclip needs a CLIP; {pretrained} is a {fmt!r} checkpoint (leave --mode out)")
    proxy = _load_vfm(mode, vfm, proxy_beta, proxy_gamma, device)
    scorer = FORMATS[fmt](name, pretrained, mode, device, cache_dir)
    if proxy is None:
        return scorer
    from labelless.scorers import ProxyCLIPScorer

    return ProxyCLIPScorer(scorer.model, *proxy)
