"""Tests for labelless.data.benchmarks and labelless.vocab.classnames."""

from __future__ import annotations

import numpy as np
import pytest
from _fab_datasets import CASES, Case, H, W, raw_array, write_image, write_label
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
    "cityscapes-trainIds", "camvid-val", "folder-folder",
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
