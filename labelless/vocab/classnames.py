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


def load_classnames(name: str) -> list[str]:
    """Return the class names of the packaged list ``name`` (one entry per class index).

    Raises SettingError (a ValueError) listing the available names when ``name`` is unknown.
    """
    if name not in CLASSNAME_LISTS:
        raise SettingError(
            f"unknown class-name list {name!r}; available: {', '.join(CLASSNAME_LISTS)}"
        )
    text = (resources.files("labelless.vocab") / "classnames" / f"{name}.txt").read_text(
        encoding="utf-8"
    )
    return [line.strip() for line in text.splitlines() if line.strip()]
