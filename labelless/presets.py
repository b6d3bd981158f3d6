"""Harness presets: every inference setting of the evaluation protocols the field uses, per
benchmark, as data (``PRESETS``), and ``resolve(preset, dataset, explicit)``.

A preset is one dict literal per benchmark (``"*"``: the entry for any benchmark it does
not list, and for ``segment``), each over the preset's ``"*"``, over ``DEFAULTS``
(labelless's own defaults, what runs without ``--preset``). Explicit settings win over
all of them (``resolve``). The keys are ``SETTINGS``:

==================  ==========================================================================
protocol …          ``segment.Protocol``: name, short_side, max_long_side, input_size (or
antialias           ``{"vit": n, "convnext": m}``: per architecture), stride, feature_size, antialias
templates           a template set (``vocab/templates.py``)
synonyms            the synonym reduction (``vocab/encode.py``; ``max_prob``: the mmseg one)
logit_scale         softmax temperature of the background threshold
bg_threshold        label 0 below this top probability (VOC-21, Context-60, COCO-Object)
score_background    class 0 is scored by its names too (mmseg) instead of only being the
                    threshold's fallback (GroupViT / TCL / S-Seg)
area_threshold      SCLIP's ``area_thd`` (``Segmenter``)
class_names         a packaged class-name list (``vocab/classnames.py``) or a file
==================  ==========================================================================

The presets (read from each method's official repository, HEAD; ViT-B/16 numbers in the
README's table of methods):

- ``mmseg``: the harness SCLIP (Wang et al., ECCV 2024) introduced and NACLIP, ClearCLIP and
  ProxyCLIP copied (mmsegmentation 1.x): github wangf3014/SCLIP ``configs/cfg_*.py`` and
  ``CLIPForSegmentation``. mmseg's ``Resize(scale=(2048, S), keep_ratio=True)`` (short side
  S, long side at most 2048, OpenCV bilinear: no antialiasing) with S = 336, 448 on
  COCO-Stuff, 560 on Cityscapes; ``slide_crop=224``, ``slide_stride=112``; the 80 OpenAI
  ImageNet templates (``openai_imagenet_template``, equal to open_clip's); the
  ``configs/cls_*.txt`` names (``mmseg/<benchmark>``); synonyms as ``get_cls_idx`` and
  ``postprocess_result`` do them (softmax of ``logit_scale`` · cosine over every synonym
  of every class, a class's probability the largest of its synonyms': ``max_prob``);
  ``logit_scale`` 40 (65 on VOC-21, 50 on Context-60 and COCO-Object); ``prob_thd`` 0.1 on
  VOC-21, Context-60 and COCO-Object, where class 0 is a named class (VOC-21's and
  COCO-Object's name 26 stuff words, Context-60's says "background"); ``area_thd`` 0.1 on
  VOC-21 only.
- ``mmseg-naclip``: github sinahmr/NACLIP: SCLIP's files, but short side 336 on COCO-Stuff,
  ``logit_scale`` 40 everywhere, no area threshold, and on VOC-20 / VOC-21
  ``slide_crop=0`` (the whole image at short side 336: ``whole``). NACLIP runs PAMR by
  default (``pamr_steps=10``); its paper's table without post-processing (avg 39.4) is
  ``test_all.sh ... off``; labelless has no PAMR here.
- ``mmseg-clearclip``: github mc-lan/ClearCLIP: short side 448 everywhere, 448 windows at
  stride 224 (Cityscapes 224 at 224), ``logit_scale`` 50, ``prob_thd`` 0.5 / 0.15 / 0.4
  (VOC-21 / Context-60 / COCO-Object) with class 0 named "background", and no synonyms
  (``mmseg/clearclip/*``).
- ``mmseg-proxyclip``: github mc-lan/ProxyCLIP: short side 336 (448 on ADE-150 and
  Cityscapes), 336 windows at stride 112 (Cityscapes 224), ``logit_scale`` 40,
  ``prob_thd`` 0.2 / 0.15 / 0.25 (its configs' "OURS" values), its own VOC and COCO-Object
  names (``mmseg/proxyclip/*``). Its VFM (DINO ViT-B/8) is the method's, not the harness's.
- ``pixelclip``: github cvlab-kaist/PixelCLIP (42f5c9c) ``configs/*.yaml``, ``eval.sh``,
  ``pixelclip.py``: short side 640 (``MIN_SIZE_TEST``, long side ≤ ``MAX_SIZE_TEST``
  2560, detectron2's antialiased PIL resize), squashed to ``CLIP_RESOLUTION`` 320 (ViT-B/16;
  640 for ConvNeXt-B), features bilinearly to 64×64 before the cosine, ``imagenet_select``
  (``PROMPT_ENSEMBLE_TYPE``), synonyms ``", "`` averaged per template (``mean``), the
  ``datasets/*.json`` names (the packaged benchmark lists: equal), no background threshold
  (it reports no benchmark with background). These are labelless's squash defaults, except
  the input size (the model's own without a preset: 224 for an open_clip ViT-B/16).

Where labelless still differs from these harnesses: images are resized as float [0, 1]
tensors (mmcv resizes uint8 with OpenCV's fixed-point bilinear: within 1/255); sizes are
rounded with ``round`` (mmcv and detectron2: ``int(x + 0.5)``); ``whole`` rounds the image
up to a multiple of the patch (NACLIP drops the last partial patch); windows smaller than
the crop are run as they are (ClearCLIP / ProxyCLIP pad them to a patch multiple; at these
short sides no window is smaller); precision is the device's (ClearCLIP and ProxyCLIP run
fp16).
"""

from __future__ import annotations

from labelless.errors import SettingError

SETTINGS = ("protocol", "short_side", "max_long_side", "input_size", "stride", "feature_size", "antialias",
            "templates", "synonyms", "logit_scale", "bg_threshold", "score_background", "area_threshold",
            "class_names")

# No preset: labelless's defaults (short side, input size, stride, feature size: the protocol's / model's).
DEFAULTS = {
    "protocol": "squash", "short_side": None, "max_long_side": 2560, "input_size": None, "stride": None,
    "feature_size": None, "antialias": True, "templates": "imagenet_select", "synonyms": "mean",
    "logit_scale": 100.0, "bg_threshold": None, "score_background": False, "area_threshold": None,
    "class_names": None,
}

_MMSEG_BASE = {
    "protocol": "slide", "short_side": 336, "max_long_side": 2048, "input_size": 224, "stride": 112,
    "feature_size": None, "antialias": False, "templates": "imagenet80", "synonyms": "max_prob",
    "logit_scale": 40.0, "bg_threshold": None, "score_background": False, "area_threshold": None,
    "class_names": None,
}
_WHOLE_336 = {"protocol": "whole", "short_side": 336, "input_size": None, "stride": None}

MMSEG = {  # SCLIP
    "*": _MMSEG_BASE,
    "voc21": {"class_names": "mmseg/voc21", "logit_scale": 65.0, "bg_threshold": 0.1, "score_background": True,
              "area_threshold": 0.1},
    "voc20": {"class_names": "mmseg/voc20"},
    "pc60": {"class_names": "mmseg/pc60", "logit_scale": 50.0, "bg_threshold": 0.1, "score_background": True},
    "pc59": {"class_names": "mmseg/pc59"},
    "cocoobject": {"class_names": "mmseg/cocoobject", "logit_scale": 50.0, "bg_threshold": 0.1,
                   "score_background": True},
    "cocostuff171": {"class_names": "mmseg/cocostuff171", "short_side": 448},
    "ade150": {"class_names": "mmseg/ade150"},
    "cityscapes": {"class_names": "mmseg/cityscapes", "short_side": 560},
}

MMSEG_NACLIP = {
    "*": _MMSEG_BASE,
    "voc21": {**_WHOLE_336, "class_names": "mmseg/voc21", "bg_threshold": 0.1, "score_background": True},
    "voc20": {**_WHOLE_336, "class_names": "mmseg/voc20"},
    "pc60": {"class_names": "mmseg/pc60", "bg_threshold": 0.1, "score_background": True},
    "pc59": {"class_names": "mmseg/pc59"},
    "cocoobject": {"class_names": "mmseg/cocoobject", "bg_threshold": 0.1, "score_background": True},
    "cocostuff171": {"class_names": "mmseg/cocostuff171"},
    "ade150": {"class_names": "mmseg/ade150"},
    "cityscapes": {"class_names": "mmseg/cityscapes", "short_side": 560},
}

MMSEG_CLEARCLIP = {
    "*": {**_MMSEG_BASE, "short_side": 448, "input_size": 448, "stride": 224, "logit_scale": 50.0},
    "voc21": {"class_names": "mmseg/clearclip/voc21", "bg_threshold": 0.5, "score_background": True},
    "voc20": {"class_names": "mmseg/clearclip/voc20"},
    "pc60": {"class_names": "mmseg/pc60", "bg_threshold": 0.15, "score_background": True},
    "pc59": {"class_names": "mmseg/pc59"},
    "cocoobject": {"class_names": "mmseg/clearclip/cocoobject", "bg_threshold": 0.4, "score_background": True},
    "cocostuff171": {"class_names": "mmseg/cocostuff171"},
    "ade150": {"class_names": "mmseg/ade150"},
    "cityscapes": {"class_names": "mmseg/cityscapes", "input_size": 224, "stride": 224},
}

MMSEG_PROXYCLIP = {
    "*": {**_MMSEG_BASE, "input_size": 336, "stride": 112},
    "voc21": {"class_names": "mmseg/proxyclip/voc21", "bg_threshold": 0.2, "score_background": True},
    "voc20": {"class_names": "mmseg/proxyclip/voc20"},
    "pc60": {"class_names": "mmseg/pc60", "bg_threshold": 0.15, "score_background": True},
    "pc59": {"class_names": "mmseg/pc59"},
    "cocoobject": {"class_names": "mmseg/proxyclip/cocoobject", "bg_threshold": 0.25, "score_background": True},
    "cocostuff171": {"class_names": "mmseg/cocostuff171"},
    "ade150": {"class_names": "mmseg/ade150", "short_side": 448},
    "cityscapes": {"class_names": "mmseg/cityscapes", "short_side": 448, "input_size": 224},
}

PIXELCLIP = {
    "*": {"protocol": "squash", "short_side": 640, "max_long_side": 2560, "input_size": {"vit": 320, "convnext": 640},
          "stride": None, "feature_size": 64, "antialias": True, "templates": "imagenet_select", "synonyms": "mean",
          "logit_scale": 100.0, "bg_threshold": None, "score_background": False, "area_threshold": None,
          "class_names": None},
    "ade150": {"class_names": "ade150"},  # datasets/ade150.json
    "cocostuff171": {"class_names": "cocostuff171"},  # datasets/coco.json
    "pc59": {"class_names": "pc59"},  # datasets/pc59.json
    "cityscapes": {"class_names": "cityscapes"},  # datasets/cityscapes.json
    "voc20": {"class_names": "voc20"},  # datasets/voc20.json
}

PRESETS = {"mmseg": MMSEG, "mmseg-naclip": MMSEG_NACLIP, "mmseg-clearclip": MMSEG_CLEARCLIP,
           "mmseg-proxyclip": MMSEG_PROXYCLIP, "pixelclip": PIXELCLIP}

SOURCES = {
    "mmseg": "SCLIP (ECCV 2024), github wangf3014/SCLIP configs/cfg_*.py",
    "mmseg-naclip": "NACLIP (WACV 2025), github sinahmr/NACLIP configs/cfg_*.py",
    "mmseg-clearclip": "ClearCLIP (ECCV 2024), github mc-lan/ClearCLIP configs/cfg_*.py",
    "mmseg-proxyclip": "ProxyCLIP (ECCV 2024), github mc-lan/ProxyCLIP configs/cfg_*.py",
    "pixelclip": "PixelCLIP (NeurIPS 2024), github cvlab-kaist/PixelCLIP configs/*.yaml + eval.sh",
}

OFF = "none"  # an explicit value that switches a preset's threshold off (``--bg-threshold none``)


def resolve(preset: str | None, dataset: str | None, explicit: dict | None = None,
            model_kind: str | None = None) -> dict:
    """Every setting of ``SETTINGS`` for ``dataset`` (None: ``segment``, the ``"*"`` entry).

    Order, later wins: ``DEFAULTS``, the preset's ``"*"``, the preset's entry for
    ``dataset``, the ``explicit`` values that are not None (``OFF`` for a threshold: off).
    An ``input_size`` given per architecture is taken for ``model_kind`` (``"vit"`` /
    ``"convnext"``; any other: the model's own). ``class_names`` left None on a packaged
    benchmark becomes that benchmark's list. Also returns ``preset``, ``preset_entry`` (the
    entry used: the dataset, ``"*"``, or None without preset) and ``preset_source``.
    """
    from labelless.vocab.classnames import CLASSNAME_LISTS

    explicit = dict(explicit or {})
    unknown = sorted(set(explicit) - set(SETTINGS))
    if unknown:
        raise ValueError(f"not preset settings: {', '.join(unknown)}")
    if preset is not None and preset not in PRESETS:
        raise SettingError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    table = PRESETS.get(preset, {})
    entry = None if preset is None else (dataset if dataset in table else "*")
    values = {**DEFAULTS, **table.get("*", {}), **(table[entry] if entry and entry != "*" else {})}
    values.update({k: v for k, v in explicit.items() if v is not None})
    if isinstance(values["input_size"], dict):
        values["input_size"] = values["input_size"].get(model_kind)
    for key in ("bg_threshold", "area_threshold"):
        if values[key] == OFF:
            values[key] = None
    if values["class_names"] is None and dataset in CLASSNAME_LISTS:
        values["class_names"] = dataset
    return {**values, "preset": preset, "preset_entry": entry, "preset_source": SOURCES.get(preset)}


def explicit_settings(args) -> dict:
    """The settings an argparse namespace gives (its attributes named as ``SETTINGS``; None: not given)."""
    return {k: getattr(args, k, None) for k in SETTINGS}


def protocol_of(settings: dict):
    """The ``segment.Protocol`` of resolved ``settings``."""
    from labelless.segment import Protocol

    return Protocol(settings["protocol"], settings["short_side"], settings["max_long_side"],
                    input_size=settings["input_size"], stride=settings["stride"],
                    feature_size=settings["feature_size"], antialias=settings["antialias"])


def load_class_names(spec: str, count: int) -> tuple[list[str], str]:
    """The class lines of ``spec`` (a packaged list such as ``mmseg/voc21``, or a file: one
    class per line, synonyms ``", "``) and the path read; SettingError unless there are
    exactly ``count`` (the dataset's classes: line ``i`` names class ``i``)."""
    from pathlib import Path

    from labelless.vocab.classnames import CLASSNAME_LISTS, HARNESS_LISTS, classnames_path, load_classnames
    from labelless.vocab.encode import read_labels_file

    if spec in CLASSNAME_LISTS or spec in HARNESS_LISTS:
        lines, path = load_classnames(spec), str(classnames_path(spec))
    else:
        lines, path = [", ".join(c) for c in read_labels_file(spec)], str(Path(spec).resolve())
    if len(lines) != count:
        raise SettingError(f"class names {spec} ({path}) list {len(lines)} classes, the dataset has {count}: "
                           "line i must name the dataset's class i")
    return lines, path
