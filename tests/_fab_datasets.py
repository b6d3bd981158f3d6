"""Fabricate tiny benchmark folders (8×6 px) in the exact on-disk layouts that
labelless.data.benchmarks reads, for tests.

Each ``Case`` writes two labelled samples (plus distractor files that a reader must
skip) and states the raw label values written and the class indices expected back.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

H, W = 6, 8


def write_image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (W, H), (120, 30, 200)).save(path)


def raw_array(values: list[int], dtype=np.uint8) -> np.ndarray:
    """An H×W array cycling through ``values`` (so every value occurs)."""
    return np.resize(np.asarray(values, dtype=dtype), (H, W))


def write_label(path: Path, arr: np.ndarray, palette: bool = False) -> None:
    """uint8 -> 8-bit PNG (mode L, or P with ``palette``); uint16 -> 16-bit TIFF (I;16)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if palette:
        im = Image.frombytes("P", (arr.shape[1], arr.shape[0]), arr.astype(np.uint8).tobytes())
        im.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    else:
        im = Image.fromarray(arr)
    im.save(path)


Labels = dict[str, np.ndarray]  # sample name -> raw label array


@dataclass
class Case:
    key: str  # benchmark key
    layout: str  # layout to request ("detectron2", "mmseg"; "auto" for single-layout sets)
    variant: str  # short id of the on-disk flavour
    folder: str  # dataset folder relative to the fabricated root ("." = root itself)
    names: tuple[str, str]  # sample names (sorted)
    raw: list[int]  # raw label values written (the 2nd sample gets them reversed)
    expected: dict[int, int]  # raw value -> expected class index / ignore
    write: Callable[[Path, Labels], None]
    dtype: type = np.uint8
    split: str = "val"
    ignore_index: int = 255
    background: bool = False

    @property
    def id(self) -> str:
        return f"{self.key}-{self.variant}"

    def labels(self) -> Labels:
        a = raw_array(self.raw, self.dtype)
        b = raw_array(self.raw[::-1], self.dtype)
        return {self.names[0]: a, self.names[1]: b}


# ------------------------------------------------------------------------------ writers


def paired(image_dir: str, label_dir: str, suffix: str = ".png", image_ext: str = ".jpg",
           extra: Callable[[Path, str], None] | None = None, palette: bool = False):
    """Images ``image_dir/<name><image_ext>`` + labels ``label_dir/<name><suffix>``, plus one
    unlabelled image that must be skipped."""
    def write(root: Path, labels: Labels) -> None:
        for name, arr in labels.items():
            write_image(root / image_dir / f"{name}{image_ext}")
            write_label(root / label_dir / f"{name}{suffix}", arr, palette)
            if extra:
                extra(root, name)
        write_image(root / image_dir / f"zz_unlabelled{image_ext}")
    return write


def listed(image_dir: str, label_dir: str, list_file: str, palette: bool = True):
    """VOC / Pascal-Context devkit: ``ImageSets`` list + JPEGImages + palette PNG labels."""
    def write(root: Path, labels: Labels) -> None:
        paired(image_dir, label_dir, palette=palette)(root, labels)
        (root / list_file).parent.mkdir(parents=True, exist_ok=True)
        (root / list_file).write_text("\n".join(labels) + "\n")
    return write


def cityscapes(suffix: str):
    def write(root: Path, labels: Labels) -> None:
        for name, arr in labels.items():
            prefix = name.removesuffix("_leftImg8bit")
            city = prefix.split("_")[0]
            write_image(root / "cityscapes/leftImg8bit/val" / city / f"{name}.png")
            write_label(root / "cityscapes/gtFine/val" / city / f"{prefix}{suffix}", arr)
            # distractors shipped with gtFine
            write_label(root / "cityscapes/gtFine/val" / city / f"{prefix}_gtFine_instanceIds.png", arr)
    return write


def camvid(split: str):
    def write(root: Path, labels: Labels) -> None:
        base = root / "camvid"
        lines = []
        for name, arr in labels.items():
            write_image(base / split / f"{name}.jpg")
            write_label(base / f"{split}annot" / f"{name}.png", arr)
            lines.append(f"{split}/{name}.jpg {split}annot/{name}.png")
        (base / f"{split}.txt").write_text("\n".join(lines) + "\n")
        (base / "classes.txt").write_text("\n".join(f"c{i}" for i in range(11)) + "\n")
    return write


def folder(classes: list[str]):
    def write(root: Path, labels: Labels) -> None:
        for name, arr in labels.items():
            write_image(root / "images" / f"{name}.png")
            write_label(root / "labels" / f"{name}.png", arr)
        (root / "classes.txt").write_text("\n".join(classes) + "\n")
    return write


def coco_distractors(other_suffix: str):
    """mmseg's COCO annotation folder also holds the raw maps and the other *TrainIds file."""
    def extra(root: Path, name: str) -> None:
        d = root / "coco_stuff164k/annotations/val2017"
        write_label(d / f"{name}.png", raw_array([181, 0]))
        write_label(d / f"{name}{other_suffix}", raw_array([200]))
    return extra


def ident(*values: int) -> dict[int, int]:
    return {v: v for v in values}


ADE = ("ADE_val_00000001", "ADE_val_00000002")
VOC = ("2007_000033", "2007_000042")
COCO = ("000000000139", "000000000285")
CS = ("frankfurt_000000_000294_leftImg8bit", "lindau_000001_000019_leftImg8bit")
CAMVID = ("0001TP_008550", "Seq05VD_f00000")

CASES: list[Case] = [
    Case("ade150", "detectron2", "d2", "ADEChallengeData2016", ADE, [0, 5, 149, 255], ident(0, 5, 149, 255),
         paired("ADEChallengeData2016/images/validation", "ADEChallengeData2016/annotations_detectron2/validation")),
    Case("ade150", "mmseg", "raw", "ade/ADEChallengeData2016", ADE, [0, 1, 77, 150], {0: 255, 1: 0, 77: 76, 150: 149},
         paired("ade/ADEChallengeData2016/images/validation", "ade/ADEChallengeData2016/annotations/validation")),
    Case("ade150", "mmseg", "flat", ".", ADE, [0, 1, 150, 3], {0: 255, 1: 0, 150: 149, 3: 2},
         paired("images", "annotations")),
    Case("ade847", "detectron2", "d2", "ADE20K_2021_17_01", ADE, [0, 300, 846, 65535], ident(0, 300, 846, 65535),
         paired("ADE20K_2021_17_01/images_detectron2/validation",
                "ADE20K_2021_17_01/annotations_detectron2/validation", ".tif"),
         dtype=np.uint16, ignore_index=65535),
    Case("voc20", "detectron2", "catseg", "VOCdevkit/VOC2012", VOC, [0, 19, 255, 7], ident(0, 19, 255, 7),
         paired("VOCdevkit/VOC2012/JPEGImages", "VOCdevkit/VOC2012/annotations_detectron2/val")),
    Case("voc20", "detectron2", "ovs", "VOCdevkit/VOC2012", VOC, [0, 19, 255, 7], ident(0, 19, 255, 7),
         paired("VOCdevkit/VOC2012/images_detectron2/val", "VOCdevkit/VOC2012/annotations_ovs/val")),
    Case("voc20", "mmseg", "devkit", "VOCdevkit/VOC2012", VOC, [0, 1, 20, 255], {0: 255, 1: 0, 20: 19, 255: 255},
         listed("VOCdevkit/VOC2012/JPEGImages", "VOCdevkit/VOC2012/SegmentationClass",
                "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt")),
    Case("voc21", "detectron2", "catseg_bg", "VOCdevkit/VOC2012", VOC, [0, 19, 20, 255], {0: 1, 19: 20, 20: 0, 255: 255},
         paired("VOCdevkit/VOC2012/JPEGImages", "VOCdevkit/VOC2012/annotations_detectron2_bg/val"), background=True),
    Case("voc21", "mmseg", "devkit", "VOCdevkit/VOC2012", VOC, [0, 1, 20, 255], ident(0, 1, 20, 255),
         listed("VOCdevkit/VOC2012/JPEGImages", "VOCdevkit/VOC2012/SegmentationClass",
                "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt"), background=True),
    Case("pc59", "detectron2", "catseg", "VOCdevkit/VOC2010", VOC, [0, 58, 255, 30], ident(0, 58, 255, 30),
         paired("VOCdevkit/VOC2010/JPEGImages", "VOCdevkit/VOC2010/annotations_detectron2/pc59_val")),
    Case("pc59", "mmseg", "context", "VOCdevkit/VOC2010", VOC, [0, 1, 59, 255], {0: 255, 1: 0, 59: 58, 255: 255},
         listed("VOCdevkit/VOC2010/JPEGImages", "VOCdevkit/VOC2010/SegmentationClassContext",
                "VOCdevkit/VOC2010/ImageSets/SegmentationContext/val.txt", palette=False)),
    Case("pc60", "mmseg", "context", "VOCdevkit/VOC2010", VOC, [0, 1, 59, 255], ident(0, 1, 59, 255),
         listed("VOCdevkit/VOC2010/JPEGImages", "VOCdevkit/VOC2010/SegmentationClassContext",
                "VOCdevkit/VOC2010/ImageSets/SegmentationContext/val.txt", palette=False), background=True),
    Case("pc459", "detectron2", "catseg", "VOCdevkit/VOC2010", VOC, [0, 458, 65535, 459],
         {0: 0, 458: 458, 65535: 65535, 459: 65535},
         paired("VOCdevkit/VOC2010/JPEGImages", "VOCdevkit/VOC2010/annotations_detectron2/pc459_val", ".tif"),
         dtype=np.uint16, ignore_index=65535),
    Case("cocostuff171", "detectron2", "maskformer", "coco", COCO, [0, 170, 255, 80], ident(0, 170, 255, 80),
         paired("coco/val2017", "coco/stuffthingmaps_detectron2/val2017")),
    Case("cocostuff171", "detectron2", "pixelclip", "coco", COCO, [0, 170, 255, 80], ident(0, 170, 255, 80),
         paired("coco/val2017", "coco/annotations_detectron2/val2017")),
    Case("cocostuff171", "detectron2", "catseg", "coco-stuff", COCO, [0, 170, 255, 80], ident(0, 170, 255, 80),
         paired("coco-stuff/images/val2017", "coco-stuff/annotations_detectron2/val2017")),
    Case("cocostuff171", "mmseg", "labelTrainIds", "coco_stuff164k", COCO, [0, 170, 255, 80], ident(0, 170, 255, 80),
         paired("coco_stuff164k/images/val2017", "coco_stuff164k/annotations/val2017", "_labelTrainIds.png",
                extra=coco_distractors("_instanceTrainIds.png"))),
    Case("cocoobject", "mmseg", "instanceTrainIds", "coco_stuff164k", COCO, [0, 1, 80, 255], ident(0, 1, 80, 255),
         paired("coco_stuff164k/images/val2017", "coco_stuff164k/annotations/val2017", "_instanceTrainIds.png",
                extra=coco_distractors("_labelTrainIds.png")),
         background=True),
    Case("cityscapes", "auto", "trainIds", "cityscapes", CS, [0, 18, 255, 9], ident(0, 18, 255, 9),
         cityscapes("_gtFine_labelTrainIds.png")),
    Case("cityscapes", "auto", "labelIds", "cityscapes", CS, [7, 33, 0, 6, 9, 255, 26],
         {7: 0, 33: 18, 0: 255, 6: 255, 9: 255, 255: 255, 26: 13}, cityscapes("_gtFine_labelIds.png")),
    Case("camvid", "auto", "val", "camvid", CAMVID, [0, 10, 11, 5], {0: 0, 10: 10, 11: 255, 5: 5}, camvid("val")),
    Case("camvid", "auto", "test", "camvid", CAMVID, [0, 10, 11, 5], {0: 0, 10: 10, 11: 255, 5: 5}, camvid("test"),
         split="test"),
    Case("folder", "auto", "folder", ".", ("img_a", "img_b"), [0, 2, 255, 1], ident(0, 2, 255, 1),
         folder(["cat", "dog, puppy", "grass"])),
]
