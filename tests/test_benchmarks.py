"""Tests for labelless.data.benchmarks and labelless.vocab.classnames."""

from __future__ import annotations

import numpy as np
import pytest
from _fab_datasets import (
    CASES,
    Case,
    H,
    W,
    lvis_image,
    raw_array,
    rle_counts,
    write_image,
    write_label,
    write_lvis_json,
    write_rgb_id_label,
)
from PIL import Image

from labelless.data.benchmarks import (
    BENCHMARKS,
    Benchmark,
    DatasetError,
    Sample,
    load_benchmark,
)
from labelless.vocab.classnames import CLASSNAME_LISTS, load_classnames

COUNTS = {
    "ade150": 150, "ade847": 847, "voc20": 20, "voc21": 21, "pc59": 59, "pc60": 60,
    "pc459": 459, "cocostuff171": 171, "cocoobject": 81, "cityscapes": 19, "camvid": 11,
    "imagenets50": 51, "imagenets300": 301, "imagenets919": 920, "lvis": 1203,
}


# --------------------------------------------------------------------------- class names


def test_classname_counts():
    assert set(CLASSNAME_LISTS) == set(COUNTS)
    for name, n in COUNTS.items():
        names = load_classnames(name)
        assert len(names) == n, name
        assert all(c and c == c.strip() for c in names), name


def test_classname_background_lists_extend_the_plain_ones():
    assert load_classnames("voc21") == ["background"] + load_classnames("voc20")
    assert load_classnames("pc60") == ["background"] + load_classnames("pc59")
    assert load_classnames("cocoobject") == ["background"] + load_classnames("cocostuff171")[:80]


def test_classname_spot_checks():
    ade150, ade847 = load_classnames("ade150"), load_classnames("ade847")
    assert ade150[0] == "wall" and ade150[7] == "bed" and ade150[-1] == "flag"
    assert ade847[1] == "building, edifice" and ade847[-1] == "adding machine, totalizer, totaliser"
    assert load_classnames("pc459")[0] == "accordion" and load_classnames("pc459")[-1] == "wool"
    coco = load_classnames("cocostuff171")
    assert coco[0] == "person" and coco[79] == "toothbrush" and coco[80] == "banner" and coco[-1] == "wood"
    assert load_classnames("cityscapes")[:2] == ["road", "sidewalk"]
    assert load_classnames("camvid")[0] == "sky" and load_classnames("camvid")[-1] == "bicyclist"


def test_imagenets_classnames():
    im50, im300, im919 = (load_classnames(f"imagenets{n}") for n in (50, 300, 919))
    assert im50[0] == im300[0] == im919[0] == "background"
    assert im50[1] == "goldfish, Carassius auratus" and im50[-1].startswith("agaric")
    assert im300[1].startswith("tench") and im300[-1].startswith("bolete")
    assert im919[1].startswith("tench") and im919[-1].startswith("toilet tissue")
    assert im919[3] == "great white shark, white shark, man-eater, man-eating shark, Carcharodon carcharias"
    # each subset's classes (sorted wnids) are an ordered subsequence of the larger one's
    for small, big in ((im50, im300), (im300, im919)):
        it = iter(big[1:])
        assert all(name in it for name in small[1:])
    # first names as in the official evaluator (LUSSeg/ImageNet-S data/data.py)
    first = [c.split(", ")[0] for c in im50[1:6]]
    assert first == ["goldfish", "tiger shark", "goldfinch", "tree frog", "kuvasz"]


def test_lvis_classnames():
    names = load_classnames("lvis")
    assert names[0] == "aerosol can, spray can" and names[-1] == "zucchini, courgette"
    assert names[22] == "trash can, garbage can, wastebin, dustbin, trash barrel, trash bin"
    assert names[161] == "bull, horned cow" and names[599] == "jumpsuit"
    assert len({n.split(", ")[0] for n in names}) == 1203 and all("_" not in n for n in names)


def test_unknown_classname_list():
    from labelless.errors import SettingError

    with pytest.raises(SettingError, match="available: .*ade150"):
        load_classnames("nope")


# ------------------------------------------------------------------- fabricated layouts


def _check(bench: Benchmark, case: Case, labels) -> None:
    assert isinstance(bench, Benchmark) and bench.name == case.key
    assert [s.name for s in bench.samples] == sorted(case.names) and len(bench) == 2
    if case.key != "folder":
        assert bench.classes == load_classnames(case.key)
    assert bench.ignore_index == case.ignore_index and bench.background == case.background
    for sample in bench.samples:
        assert isinstance(sample, Sample) and sample.image.is_file() and sample.label.is_file()
        got = bench.load_label(sample)
        raw = labels[sample.name]
        want = np.vectorize(case.expected.__getitem__, otypes=[np.int64])(raw)
        assert got.dtype == np.int64 and got.shape == (H, W)
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_reads_layout(tmp_path, case: Case):
    labels = case.labels()
    case.write(tmp_path, labels)
    bench = load_benchmark(case.key, tmp_path, split=case.split, layout=case.layout)
    _check(bench, case, labels)
    # the dataset folder itself is accepted as root, and "auto" finds the same layout
    same = load_benchmark(case.key, tmp_path / case.folder, split=case.split, layout="auto")
    assert same.samples == bench.samples
    np.testing.assert_array_equal(same.lut, bench.lut)


def test_lut_maps_to_class_range():
    for case in CASES:
        if case.key == "folder":
            continue
        k = COUNTS[case.key]
        assert all(v == case.ignore_index or 0 <= v < k for v in case.expected.values()), case.id


def test_split_spellings(tmp_path):
    ade = next(c for c in CASES if c.id == "ade150-d2")
    ade.write(tmp_path, ade.labels())
    assert len(load_benchmark("ade150", tmp_path, split="validation")) == 2
    coco = next(c for c in CASES if c.id == "cocostuff171-maskformer")
    coco.write(tmp_path, coco.labels())
    assert len(load_benchmark("cocostuff171", tmp_path, split="val2017")) == 2


def test_cityscapes_any_layout_name(tmp_path):
    case = next(c for c in CASES if c.id == "cityscapes-trainIds")
    case.write(tmp_path, case.labels())
    for layout in ("detectron2", "mmseg"):
        assert len(load_benchmark("cityscapes", tmp_path, layout=layout)) == 2


def test_camvid_absolute_segnet_paths(tmp_path):
    base = tmp_path / "CamVid"
    write_image(base / "val" / "a.png")
    write_label(base / "valannot" / "a.png", raw_array([3, 11]))
    (base / "val.txt").write_text("/SegNet/CamVid/val/a.png /SegNet/CamVid/valannot/a.png\n")
    bench = load_benchmark("camvid", tmp_path)
    assert bench.samples == [Sample("a", base / "val" / "a.png", base / "valannot" / "a.png")]
    assert set(np.unique(bench.load_label(bench.samples[0]))) == {3, 255}


def test_folder_split_file_and_unlabelled_image(tmp_path):
    case = next(c for c in CASES if c.key == "folder")
    case.write(tmp_path, case.labels())
    write_image(tmp_path / "images" / "img_c.jpg")  # no label
    bench = load_benchmark("folder", tmp_path)
    assert bench.classes == ["cat", "dog, puppy", "grass"]
    assert [s.name for s in bench.samples] == ["img_a", "img_b", "img_c"]
    assert bench.samples[2].label is None
    with pytest.raises(DatasetError, match="no label"):
        bench.load_label(bench.samples[2])
    (tmp_path / "val.txt").write_text("img_b\n")
    assert [s.name for s in load_benchmark("folder", tmp_path).samples] == ["img_b"]
    (tmp_path / "test.txt").write_text("img_b\nimg_x\n")
    with pytest.raises(DatasetError, match="img_x"):
        load_benchmark("folder", tmp_path, split="test")


# ---------------------------------------------------------------------------- bad input


def test_unknown_benchmark(tmp_path):
    with pytest.raises(DatasetError, match="known: .*ade150.*cocoobject"):
        load_benchmark("imagenet", tmp_path)
    with pytest.raises(DatasetError, match="layout"):
        load_benchmark("ade150", tmp_path, layout="coco")


def test_missing_root(tmp_path):
    with pytest.raises(DatasetError, match="does_not_exist"):
        load_benchmark("ade150", tmp_path / "does_not_exist")


def test_root_without_dataset_lists_looked_for_folders(tmp_path):
    (tmp_path / "something_else").mkdir()
    with pytest.raises(DatasetError) as err:
        load_benchmark("ade150", tmp_path)
    msg = str(err.value)
    assert "ADEChallengeData2016/annotations_detectron2/validation" in msg
    assert "ADEChallengeData2016/annotations/validation" in msg
    assert "\n" not in msg  # one line: the CLI prints it as one message
    with pytest.raises(DatasetError, match="pc60 has no 'detectron2' layout"):
        load_benchmark("pc60", tmp_path, layout="detectron2")
    with pytest.raises(DatasetError, match="VOC2012/ImageSets/Segmentation/val.txt"):
        load_benchmark("voc20", tmp_path, layout="mmseg")


def test_requested_layout_absent(tmp_path):
    case = next(c for c in CASES if c.id == "voc20-catseg")
    case.write(tmp_path, case.labels())
    with pytest.raises(DatasetError, match="no voc20 dataset"):
        load_benchmark("voc20", tmp_path, layout="mmseg")


@pytest.mark.parametrize("case_id, bad", [
    ("voc20-catseg", 20),            # background value of the _bg flavour is no voc20 class
    ("ade150-d2", 150),
    ("cityscapes-trainIds", 19),
    ("camvid-val", 12),
    ("folder-folder", 3),            # 3 classes in classes.txt
    ("ade847-d2", 847),              # 16-bit TIFF
    ("pc459-catseg", 1000),
    ("imagenets50-val", 51),         # RGB R + 256*G
    ("imagenets300-val", 999),
    ("imagenets919-mmseg", 920),
])
def test_out_of_range_label_value(tmp_path, case_id, bad):
    case = next(c for c in CASES if c.id == case_id)
    labels = case.labels()
    name = case.names[0]
    labels[name] = labels[name].copy()
    labels[name][0, 0] = bad
    case.write(tmp_path, labels)
    bench = load_benchmark(case.key, tmp_path, split=case.split, layout=case.layout)
    sample = next(s for s in bench.samples if s.name == name)
    with pytest.raises(DatasetError, match=rf"{sample.label.name}.*\[{bad}\]"):
        bench.load_label(sample)
    bench.load_label(next(s for s in bench.samples if s.name != name))  # the other is fine


def test_16bit_png_value_beyond_lut(tmp_path):
    case = next(c for c in CASES if c.id == "ade150-d2")
    case.write(tmp_path, case.labels())
    bench = load_benchmark("ade150", tmp_path)
    write_label(bench.samples[0].label, np.full((H, W), 300, np.uint16))
    with pytest.raises(DatasetError, match=r"\[300\]"):
        bench.load_label(bench.samples[0])


def test_corrupt_and_rgb_label_files(tmp_path):
    case = next(c for c in CASES if c.id == "cocostuff171-maskformer")
    case.write(tmp_path, case.labels())
    bench = load_benchmark("cocostuff171", tmp_path)
    first, second = bench.samples
    first.label.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(DatasetError, match=f"cannot read label file .*{first.label.name}"):
        bench.load_label(first)
    Image.new("RGB", (W, H)).save(second.label)
    with pytest.raises(DatasetError, match=f"{second.label.name}.*single-channel"):
        bench.load_label(second)
    first.label.unlink()
    with pytest.raises(DatasetError, match=first.label.name):
        bench.load_label(first)


@pytest.mark.parametrize("case_id", [
    "ade150-d2", "ade150-flat", "voc21-devkit", "pc459-catseg", "cocoobject-instanceTrainIds",
    "cityscapes-trainIds", "camvid-val", "folder-folder", "imagenets50-val", "imagenets919-train-semi",
    "lvis-d2", "lvis-mmdet",
])
def test_label_without_image(tmp_path, case_id):
    case = next(c for c in CASES if c.id == case_id)
    case.write(tmp_path, case.labels())
    bench = load_benchmark(case.key, tmp_path, split=case.split, layout=case.layout)
    sample = bench.samples[1]
    sample.image.unlink()
    with pytest.raises(DatasetError, match=sample.name):
        load_benchmark(case.key, tmp_path, split=case.split, layout=case.layout)


def test_listed_sample_without_label(tmp_path):
    case = next(c for c in CASES if c.id == "pc59-context")
    case.write(tmp_path, case.labels())
    (tmp_path / "VOCdevkit/VOC2010/SegmentationClassContext" / f"{case.names[0]}.png").unlink()
    with pytest.raises(DatasetError, match=f"{case.names[0]}.*missing"):
        load_benchmark("pc59", tmp_path, layout="mmseg")


def test_empty_label_folder(tmp_path):
    (tmp_path / "ADEChallengeData2016/annotations_detectron2/validation").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no \\*.png label files"):
        load_benchmark("ade150", tmp_path)


def test_registry_is_a_plain_dict():
    assert isinstance(BENCHMARKS, dict)
    assert set(BENCHMARKS) == set(COUNTS) | {"folder"}
    assert {c.key for c in CASES} == set(BENCHMARKS)
    assert issubclass(DatasetError, ValueError)


def test_dataset_error_is_the_labelless_one():
    import labelless.errors

    assert DatasetError is labelless.errors.DatasetError  # still importable from here
    assert issubclass(DatasetError, labelless.errors.LabellessError)


def test_unreadable_list_file_is_a_dataset_error(tmp_path):
    case = next(c for c in CASES if c.id == "camvid-val")
    case.write(tmp_path, case.labels())
    (list_file,) = tmp_path.rglob("val.txt")
    list_file.write_bytes(b"\xff\xfe not utf-8\n")
    with pytest.raises(DatasetError, match=r"cannot read .*val\.txt"):
        load_benchmark("camvid", tmp_path)


# ---------------------------------------------------------------------------- ImageNet-S


def _case(case_id: str) -> Case:
    return next(c for c in CASES if c.id == case_id)


def test_imagenets_test_split_has_no_labels(tmp_path):
    case = _case("imagenets50-val")
    case.write(tmp_path, case.labels())
    bench = load_benchmark("imagenets50", tmp_path, split="test")
    image = tmp_path / "imagenet-s/ImageNetS50/test/n01443537/ILSVRC2012_val_00099999.JPEG"
    assert bench.samples == [Sample("ILSVRC2012_val_00099999", image, None)]
    with pytest.raises(DatasetError, match="no label"):
        bench.load_label(bench.samples[0])
    assert len(load_benchmark("imagenets50", tmp_path, split="validation")) == 2
    with pytest.raises(DatasetError, match="imagenets50 has no split 'train'"):
        load_benchmark("imagenets50", tmp_path, split="train")


def test_imagenets_other_subset_is_refused(tmp_path):
    case = _case("imagenets300-val")
    case.write(tmp_path, case.labels())
    with pytest.raises(DatasetError, match="holds ImageNet-S300, not imagenets919"):
        load_benchmark("imagenets919", tmp_path / "ImageNetS300")
    with pytest.raises(DatasetError, match="no imagenets50 dataset"):
        load_benchmark("imagenets50", tmp_path)
    # a folder with more classes than the subset (not named ImageNetS*) is refused too
    base = tmp_path / "mine"
    for i in range(51):
        write_image(base / "validation" / f"n{i:08d}" / "a.JPEG")
        write_rgb_id_label(base / "validation-segmentation" / f"n{i:08d}" / f"a{i}.png", raw_array([1]))
    with pytest.raises(DatasetError, match="51 class folders, more than the 50"):
        load_benchmark("imagenets50", base)


def test_imagenets_label_must_be_rgb(tmp_path):
    case = _case("imagenets50-val")
    case.write(tmp_path, case.labels())
    bench = load_benchmark("imagenets50", tmp_path)
    first, second = bench.samples
    write_label(first.label, raw_array([0, 3]))  # 8-bit grayscale
    with pytest.raises(DatasetError, match=f"{first.label.name} is not an 8-bit RGB ImageNet-S label"):
        bench.load_label(first)
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 3] = 44, 0, 255  # RGBA is read as RGB
    Image.fromarray(rgba, "RGBA").save(second.label)
    assert (bench.load_label(second) == 44).all()


# ---------------------------------------------------------------------------------- LVIS


def _square(x0: int, y0: int, x1: int, y1: int) -> list[list[float]]:
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def _lvis_ann(ann_id: int, cat: int, segm, image_id: int = 139) -> dict:
    return {"id": ann_id, "image_id": image_id, "category_id": cat, "segmentation": segm,
            "area": 1.0, "bbox": [0, 0, 1, 1]}


def _one_image_lvis(tmp_path, anns: list[dict], h: int = 40, w: int = 40):
    write_image(tmp_path / "coco/val2017/000000000139.jpg")
    write_lvis_json(tmp_path / "lvis/lvis_v1_val.json", [lvis_image(139, "val2017", h, w)], anns)
    return load_benchmark("lvis", tmp_path)


def _rle(rows: slice, cols: slice, h: int = 40, w: int = 40) -> dict:
    mask = np.zeros((h, w), bool)
    mask[rows, cols] = True
    return {"size": [h, w], "counts": rle_counts(mask)}


def test_lvis_smaller_instance_on_top(tmp_path):
    bench = _one_image_lvis(tmp_path, [
        _lvis_ann(1, 9, _square(10, 10, 20, 20)),        # small polygon, listed first
        _lvis_ann(2, 5, _square(0, 0, 40, 40)),          # covers the whole image
        _lvis_ann(4, 8, _rle(slice(25, 35), slice(30, 40))),  # same area as 3: the higher id
        _lvis_ann(3, 7, _rle(slice(30, 40), slice(30, 40))),  # is on top where they overlap
    ])
    (sample,) = bench.samples
    assert sample == Sample("000000000139", tmp_path / "coco/val2017/000000000139.jpg",
                            tmp_path / "lvis/lvis_v1_val.json")
    label = bench.load_label(sample)
    assert label.shape == (40, 40)
    assert label[15, 15] == 8 and label[2, 2] == 4  # category 9 / 5 -> class 8 / 4
    assert (label[25:35, 30:] == 7).all() and (label[35:, 30:] == 6).all()


def test_lvis_uncovered_pixels_are_ignored(tmp_path):
    mask = np.zeros((H, W), bool)
    mask[1:3, 2:5] = True
    bench = _one_image_lvis(tmp_path, [_lvis_ann(1, 1, {"size": [H, W], "counts": rle_counts(mask)})], H, W)
    label = bench.load_label(bench.samples[0])
    np.testing.assert_array_equal(label, np.where(mask, 0, 65535))
    assert bench.ignore_index == 65535 and not bench.background and len(bench.classes) == 1203


def test_lvis_lvis_folder_as_root_and_split_spelling(tmp_path):
    case = _case("lvis-d2")
    case.write(tmp_path, case.labels())
    bench = load_benchmark("lvis", tmp_path)
    assert load_benchmark("lvis", tmp_path / "lvis").samples == bench.samples
    assert load_benchmark("lvis", tmp_path, split="val2017").samples == bench.samples
    assert [s.image.parent.name for s in bench.samples] == ["val2017", "train2017"]


@pytest.mark.parametrize("edit, match", [
    (lambda d: d["categories"].pop(), "has 1202 categories, not LVIS v1's ids 1..1203"),
    (lambda d: d["categories"][4].update(name="alcohol_free"), "category 5 is 'alcohol free', not 'alcohol'"),
    (lambda d: d["annotations"][0].update(category_id=1204), "annotation 100 has category 1204"),
    (lambda d: d["images"][0].pop("coco_url"),
     r"not an LVIS annotation file \(bad or missing entry: KeyError: 'coco_url'\)"),
    (lambda d: d.pop("annotations"), "not an LVIS annotation file"),
])
def test_lvis_bad_annotation_file(tmp_path, edit, match):
    import json

    case = _case("lvis-d2")
    case.write(tmp_path, case.labels())
    path = tmp_path / "lvis/lvis_v1_val.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=rf"lvis_v1_val\.json.*{match}"):
        load_benchmark("lvis", tmp_path)


def test_lvis_unreadable_json_and_bad_mask(tmp_path):
    path = tmp_path / "lvis/lvis_v1_val.json"
    bench = _one_image_lvis(tmp_path, [_lvis_ann(7, 1, {"size": [3, 3], "counts": [9]})])
    with pytest.raises(DatasetError, match=r"lvis_v1_val\.json: cannot decode the mask of annotation 7 "
                                           r"\(image 000000000139\)"):
        bench.load_label(bench.samples[0])
    path.write_text("{not json")
    with pytest.raises(DatasetError, match=r"cannot read .*lvis_v1_val\.json: JSONDecodeError"):
        load_benchmark("lvis", tmp_path)


def test_lvis_without_pycocotools(tmp_path, monkeypatch):
    import sys

    from labelless.errors import MissingExtraError

    case = _case("lvis-d2")
    case.write(tmp_path, case.labels())
    monkeypatch.setitem(sys.modules, "pycocotools.mask", None)
    with pytest.raises(MissingExtraError, match=r"LVIS labels needs pycocotools.*labelless\[masks\]"):
        load_benchmark("lvis", tmp_path)


# ---------------------------------------------------------------------------- real data


def test_camvid_real_val(camvid_root):
    bench = load_benchmark("camvid", camvid_root.parent)
    assert len(bench) == 101 and bench.classes == load_classnames("camvid")
    names = [s.name for s in bench.samples]
    assert names == sorted(names) and len(set(names)) == 101
    classes_txt = (camvid_root / "classes.txt").read_text().split("\n")
    assert bench.classes == [c.strip() for c in classes_txt if c.strip()]
    seen: set[int] = set()
    for sample in bench.samples:
        label = bench.load_label(sample)
        seen |= set(np.unique(label).tolist())
    assert seen <= set(range(11)) | {255}
    assert len(load_benchmark("camvid", camvid_root, split="train")) == 367


def test_ade20k_real_samples(shared_data):
    root = shared_data / "ade20k-samples"
    if not (root / "annotations").is_dir():
        pytest.skip(f"ADE20K samples not found at {root} (set LABELLESS_DATA)")
    bench = load_benchmark("ade150", root)
    assert [s.name for s in bench.samples] == [f"ADE_val_0000000{i}" for i in (1, 2, 3)]
    for sample in bench.samples:
        raw = np.array(Image.open(sample.label)).astype(np.int64)
        label = bench.load_label(sample)
        assert label.shape == raw.shape
        np.testing.assert_array_equal(label, np.where(raw == 0, 255, raw - 1))
        assert (label[raw > 0] < 150).all()
