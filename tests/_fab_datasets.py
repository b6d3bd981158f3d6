"""Fabricate tiny benchmark folders (8×6 px) in the exact on-disk layouts that
labelless.data.benchmarks reads, for tests.

Each ``Case`` writes two labelled samples (plus distractor files that a reader must
skip) and states the raw label values written and the class indices expected back.
"""

from __future__ import annotations

import json
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


def write_rgb_id_label(path: Path, arr: np.ndarray) -> None:
    """ImageNet-S label: an RGB PNG whose class id is R + 256*G."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = arr.astype(np.int64)
    rgb = np.stack([arr % 256, arr // 256, np.zeros_like(arr)], axis=-1).astype(np.uint8)
    Image.fromarray(rgb, "RGB").save(path)


WNIDS = ("n01440764", "n01443537")


def imagenets(base: str, split: str = "validation"):
    """``<base>/<split>/<wnid>/<name>.JPEG`` + ``<base>/<split>-segmentation/<wnid>/<name>.png``,
    plus an unlabelled image and a ``test`` image (both skipped by the labelled splits)."""
    def write(root: Path, labels: Labels) -> None:
        for (name, arr), wnid in zip(labels.items(), WNIDS):
            write_image(root / base / split / wnid / f"{name}.JPEG")
            write_rgb_id_label(root / base / f"{split}-segmentation" / wnid / f"{name}.png", arr)
        write_image(root / base / split / WNIDS[0] / "zz_unlabelled.JPEG")
        write_image(root / base / "test" / WNIDS[1] / "ILSVRC2012_val_00099999.JPEG")
    return write


def rle_counts(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE counts of a bool mask (column-major runs, zeros first)."""
    flat = np.asarray(mask, bool).flatten(order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    return ([0] + runs) if flat[0] else runs


def lvis_categories() -> list[dict]:
    """LVIS v1 categories as in lvis_v1_val.json (names from the packaged list)."""
    from labelless.vocab.classnames import load_classnames

    cats = []
    for i, line in enumerate(load_classnames("lvis"), 1):
        names = [n.replace(" ", "_") for n in line.split(", ")]
        cats.append({"id": i, "name": names[0], "synonyms": names, "frequency": "f",
                     "synset": f"x.n.{i:02d}", "def": "", "image_count": 1, "instance_count": 1})
    return cats


def lvis_image(image_id: int, folder: str, h: int = H, w: int = W) -> dict:
    return {"id": image_id, "height": h, "width": w, "license": 1,
            "coco_url": f"http://images.cocodataset.org/{folder}/{image_id:012d}.jpg",
            "not_exhaustive_category_ids": [], "neg_category_ids": []}


def write_lvis_json(path: Path, images: list[dict], annotations: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"info": {}, "licenses": [], "images": images, "annotations": annotations,
            "categories": lvis_categories()}
    path.write_text(json.dumps(data))


def lvis(json_file: str, image_root: str):
    """LVIS v1 annotation file + COCO images: one instance per category value of each raw
    array (0 = no instance). The first image is in val2017 with uncompressed RLE masks,
    the second in train2017 (LVIS val holds both) with compressed RLE; a third image has
    no instances (skipped)."""
    def write(root: Path, labels: Labels) -> None:
        from pycocotools import mask as mask_utils

        images, anns = [], []
        for k, (name, arr) in enumerate(labels.items()):
            folder = ("val2017", "train2017")[k]
            write_image(root / image_root / folder / f"{name}.jpg")
            images.append(lvis_image(int(name), folder))
            for cat in sorted(set(np.unique(arr).tolist()) - {0}):
                m = arr == cat
                if k == 0:
                    segm = {"size": [H, W], "counts": rle_counts(m)}
                else:
                    segm = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
                    segm["counts"] = segm["counts"].decode("ascii")
                anns.append({"id": 100 + len(anns), "image_id": int(name), "category_id": cat,
                             "segmentation": segm, "area": float(m.sum()), "bbox": [0, 0, W, H]})
        write_image(root / image_root / "val2017" / "000000000632.jpg")
        images.append(lvis_image(632, "val2017"))
        write_lvis_json(root / json_file, images, anns)
    return write


def ident(*values: int) -> dict[int, int]:
    return {v: v for v in values}


ADE = ("ADE_val_00000001", "ADE_val_00000002")
VOC = ("2007_000033", "2007_000042")
COCO = ("000000000139", "000000000285")
CS = ("frankfurt_000000_000294_leftImg8bit", "lindau_000001_000019_leftImg8bit")
CAMVID = ("0001TP_008550", "Seq05VD_f00000")
IMNS = ("ILSVRC2012_val_00000293", "ILSVRC2012_val_00004677")
IMNS_SEMI = ("n01440764_10026", "n01443537_10007")
LVIS = {0: 65535, 1: 0, 1203: 1202, 600: 599, 256: 255}

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
    Case("imagenets50", "auto", "val", "imagenet-s/ImageNetS50", IMNS, [0, 1, 50, 1000, 7],
         ident(0, 1, 50, 1000, 7), imagenets("imagenet-s/ImageNetS50"), dtype=np.uint16,
         ignore_index=1000, background=True),
    Case("imagenets300", "auto", "val", "ImageNetS300", IMNS, [0, 300, 1000, 256, 255],
         ident(0, 300, 1000, 256, 255), imagenets("ImageNetS300"), dtype=np.uint16,
         ignore_index=1000, background=True),
    Case("imagenets919", "mmseg", "mmseg", "ImageNetS/ImageNetS919", IMNS, [0, 919, 1000, 513, 1],
         ident(0, 919, 1000, 513, 1), imagenets("ImageNetS/ImageNetS919"), dtype=np.uint16,
         ignore_index=1000, background=True),
    Case("imagenets919", "auto", "train-semi", "ImageNetS919", IMNS_SEMI, [0, 919, 1000, 600],
         ident(0, 919, 1000, 600), imagenets("ImageNetS919", "train-semi"), dtype=np.uint16,
         split="train-semi", ignore_index=1000, background=True),
    Case("lvis", "detectron2", "d2", ".", COCO, list(LVIS), LVIS,
         lvis("lvis/lvis_v1_val.json", "coco"), dtype=np.uint16, ignore_index=65535),
    Case("lvis", "mmseg", "mmdet", "lvis_v1", COCO, list(LVIS), LVIS,
         lvis("lvis_v1/annotations/lvis_v1_val.json", "lvis_v1"), dtype=np.uint16, ignore_index=65535),
]


def random_folder_dataset(root: Path, n: int = 3, size: tuple[int, int] = (24, 32), ignore_top_row: bool = True) -> Path:
    """A ``folder`` dataset of ``n`` random images and labels (classes sky, road, car; the top
    label row 255 = ignored unless ``ignore_top_row`` is False), ``root`` returned."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "classes.txt").write_text("sky\nroad\ncar\n")
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / "images" / f"im{i}.png")
        lab = rng.integers(0, 3, size, dtype=np.uint8)
        if ignore_top_row:
            lab[0, :] = 255
        Image.fromarray(lab).save(root / "labels" / f"im{i}.png")
    return root
