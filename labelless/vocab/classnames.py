"""Packaged class-name lists of the evaluation benchmarks.

Each list is a text file ``labelless/vocab/classnames/<name>.txt`` with one class per
line, in label-index order (line ``i`` names class index ``i``). A class with synonyms
is written on one line as ``"name1, name2"`` (comma + space), as CAT-Seg and PixelCLIP
do; splitting the synonyms is left to the text encoder.

Sources of the names (counts are checked by the tests):

- ``ade150``, ``ade847``, ``voc20``, ``pc59``, ``pc459``, ``cocostuff171``: the class
  files CAT-Seg / PixelCLIP evaluate with (``datasets/<name>.json``).
- ``voc21``, ``pc60``, ``cocoobject``: ``"background"`` followed by the voc20 / pc59 /
  first 80 (thing) COCO-Stuff names, the class order of the mmseg-style datasets used
  by SCLIP / ClearCLIP / NACLIP.
- ``cityscapes``: PixelCLIP's ``datasets/cityscapes.json`` (the 19 train ids).
- ``camvid``: ``classes.txt`` of the SegNet CamVid copy (11 classes).
- ``imagenets50``, ``imagenets300``, ``imagenets919``: ``"background"`` (ImageNet-S
  label 0, scored as a class by the official evaluator) followed by the ImageNet synset
  names of the wnids in LUSSeg/ImageNet-S ``data/categories/ImageNetS_categories_im<N>.txt``
  (sorted wnids; line ``i`` is ImageNet-S class id ``i``). Names are the
  ``LOC_synset_mapping.txt`` entries (WordNet synonyms, Latin names included); the first
  name of each line is the one in the official evaluator (``data/data.py``). ImageNet
  names "crane" (bird, n02012849) and "crane" (machine, n03126707) are both in the 919 list.
- ``lvis``: the 1,203 LVIS v1 categories in category-id order (id ``i + 1`` is line
  ``i``): ``name`` then its ``synonyms``, ``_`` written as a space, duplicates dropped
  (from ``lvis_v1_val.json`` as copied in detectron2's ``lvis_v1_categories.py``).

Harness lists (``HARNESS_LISTS``, used by ``labelless.presets``): the class-name files
of the mmsegmentation harness of the training-free CLIP methods, under
``classnames/mmseg/``, one per benchmark, in the same class order as the benchmark lists
above (line ``i`` names class ``i``; tested). Their words are the harness's own:
concatenated names (``trafficlight``, ``pottedplant``), ``ship`` for boat, ``table`` for
dining table, synonyms (``person, person in shirt, ...``), and on VOC-21 / COCO-Object a
class 0 that names stuff instead of saying "background" (the harness scores it like any
class and also falls back to it below the probability threshold). Sources:

- ``mmseg/<name>``: ``configs/cls_*.txt`` of github wangf3014/SCLIP (HEAD), identical in
  github sinahmr/NACLIP (HEAD) — ``voc21`` / ``voc20`` / ``pc60`` / ``pc59`` /
  ``cocoobject`` / ``cocostuff171`` / ``ade150`` / ``cityscapes`` are ``cls_voc21`` /
  ``cls_voc20`` / ``cls_context60`` / ``cls_context59`` / ``cls_coco_object`` /
  ``cls_coco_stuff`` / ``cls_ade20k`` / ``cls_city_scapes``; github mc-lan/ClearCLIP and
  mc-lan/ProxyCLIP ship the same words for every benchmark but the three below.
- ``mmseg/clearclip/{voc21,voc20,cocoobject}``: mc-lan/ClearCLIP (class 0
  "background", ``person``, ``tvmonitor``: no synonyms).
- ``mmseg/proxyclip/{voc21,voc20,cocoobject}``: mc-lan/ProxyCLIP, whose files separate
  synonyms with ``"; "`` (rewritten here as ``", "``; no name in them holds a comma):
  VOC-21's class 0 lists SCLIP's 26 stuff names, COCO-Object's 17 of them; ``person``
  and ``tvmonitor`` without synonyms.

Lines were stripped of surrounding spaces (SCLIP's ``cls_context60.txt`` ends in
``"wood "``; CLIP's tokenizer drops the space anyway) and the files end with a newline.
"""

from __future__ import annotations

from importlib import resources

from labelless.errors import SettingError

CLASSNAME_LISTS: tuple[str, ...] = (
    "ade150",
    "ade847",
    "voc20",
    "voc21",
    "pc59",
    "pc60",
    "pc459",
    "cocostuff171",
    "cocoobject",
    "cityscapes",
    "camvid",
    "imagenets50",
    "imagenets300",
    "imagenets919",
    "lvis",
)

HARNESS_LISTS: tuple[str, ...] = tuple(
    [f"mmseg/{n}" for n in ("voc21", "voc20", "pc60", "pc59", "cocoobject", "cocostuff171", "ade150", "cityscapes")]
    + [f"mmseg/{m}/{n}" for m in ("clearclip", "proxyclip") for n in ("voc21", "voc20", "cocoobject")]
)


def classnames_path(name: str):
    """The packaged file of list ``name`` (a benchmark list or a harness list such as
    ``mmseg/voc21``); SettingError listing the available names when there is none."""
    if name not in CLASSNAME_LISTS and name not in HARNESS_LISTS:
        raise SettingError(
            f"unknown class-name list {name!r}; available: {', '.join(CLASSNAME_LISTS + HARNESS_LISTS)}"
        )
    return resources.files("labelless.vocab") / "classnames" / f"{name}.txt"


def load_classnames(name: str) -> list[str]:
    """Return the class names of the packaged list ``name`` (one entry per class index).

    Raises SettingError (a ValueError) listing the available names when ``name`` is unknown.
    """
    text = classnames_path(name).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]
