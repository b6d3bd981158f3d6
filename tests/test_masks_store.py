"""Mask store (labelless.masks.store) and mask helpers (labelless.masks.ops) on tiny fabricated data."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("pycocotools")

from labelless.errors import ImageError, LabellessError, MissingExtraError, SettingError  # noqa: E402
from labelless.masks import ops, store  # noqa: E402
from labelless.masks.store import MaskStoreDataset, MaskStoreError  # noqa: E402


def random_masks(rng, n, h, w):
    m = rng.random((n, h, w)) < rng.random((n, 1, 1))
    if n >= 2:
        m[0] = False  # empty
        m[1] = True  # full
    return m


def write_png(path, h, w, seed=0):
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return arr


# ------------------------------------------------------------------------------ RLE


@pytest.mark.parametrize("h,w", [(1, 1), (1, 7), (7, 1), (13, 5), (31, 17)])
def test_rle_round_trip_bit_exact(h, w):
    rng = np.random.default_rng(h * 100 + w)
    for m in random_masks(rng, 6, h, w):
        rle = store.encode_rle(m)
        assert rle["size"] == [h, w] and isinstance(rle["counts"], str)
        json.dumps(rle)  # JSON-serialisable
        back = store.decode_rle(rle)
        assert back.dtype == bool and back.shape == (h, w)
        np.testing.assert_array_equal(back, m)
        np.testing.assert_array_equal(store.decode_rle(store.encode_rle(torch.from_numpy(m))), m)


def test_decode_uncompressed_rle():
    # COCO iscrowd style: counts as a list, column-major runs starting with zeros
    m = store.decode_rle({"size": [2, 3], "counts": [1, 2, 3]})
    expected = np.zeros(6, bool)
    expected[1:3] = True
    np.testing.assert_array_equal(m, expected.reshape(3, 2).T)


# ---------------------------------------------------------------------------- store


def test_store_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    s = store.create_store(tmp_path / "s", "test", {"k": 3, "path": tmp_path})
    assert json.loads((s / "store.json").read_text()) == {
        "format": "labelless-masks", "version": 1, "source": "test", "params": {"k": 3, "path": str(tmp_path)}}
    cases = {"a": (5, 13, 7), "b": (1, 1, 1), "c": (0, 4, 9), "d": (3, 9, 16)}
    written = {}
    for name, (n, h, w) in cases.items():
        m = random_masks(rng, n, h, w)
        scores = None if name != "d" else [0.25, None, float("nan")]
        masks_in = torch.from_numpy(m) if name == "a" else m
        path = store.write_masks(s, name, f"rel/{name}.png", masks_in, scores=scores)
        assert path == s / "masks" / f"{name}.json"
        written[name] = m
    assert store.list_names(s) == ["a", "b", "c", "d"]
    for name, m in written.items():
        assert store.has_masks(s, name)
        back, rec = store.read_masks(s, name)
        assert back.dtype == bool and back.shape == m.shape
        np.testing.assert_array_equal(back, m)
        back2, rec2 = store.read_masks(s / "masks" / f"{name}.json")
        np.testing.assert_array_equal(back2, m)
        assert rec == rec2
        assert rec["name"] == name and rec["source"] == "test"
        assert rec["image"] == os.path.abspath(f"rel/{name}.png")
        assert (rec["height"], rec["width"]) == m.shape[1:]
        assert [e["area"] for e in rec["masks"]] == [int(x.sum()) for x in m]
    rec = store.read_masks(s, "a")[1]
    assert rec["masks"][0]["bbox"] == [0, 0, 0, 0]  # empty mask
    assert rec["masks"][1]["bbox"] == [0, 0, 7, 13]  # full mask
    assert [e["score"] for e in store.read_masks(s, "d")[1]["masks"]] == [0.25, None, None]
    assert not store.has_masks(s, "zzz")


def test_bbox_is_tight(tmp_path):
    s = store.create_store(tmp_path, "t", {})
    m = np.zeros((1, 10, 12), bool)
    m[0, 2:5, 3:9] = True
    m[0, 7, 4] = True
    rec = store.read_masks(store.write_masks(s, "x", "x.png", m))[1]
    assert rec["masks"][0]["bbox"] == [3, 2, 6, 6] and rec["masks"][0]["area"] == 19


def test_write_is_atomic(tmp_path, monkeypatch):
    s = store.create_store(tmp_path, "t", {})
    m = np.ones((2, 4, 4), bool)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(store.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        store.write_masks(s, "x", "x.png", m)
    monkeypatch.undo()
    assert list((s / "masks").iterdir()) == []  # no record, no temp file left
    assert not store.has_masks(s, "x")
    store.write_masks(s, "x", "x.png", m)
    assert [p.name for p in (s / "masks").iterdir()] == ["x.json"]


def test_stale_tmp_and_truncated_records_are_not_done(tmp_path):
    s = store.create_store(tmp_path, "t", {})
    full = store.write_masks(s, "full", "f.png", np.ones((1, 3, 3), bool))
    text = full.read_text()
    (s / "masks" / ".y.json.abc123.tmp").write_text(text[: len(text) // 2])  # interrupted write
    (s / "masks" / "z.json").write_text(text[: len(text) // 2])  # truncated by a foreign copy
    (s / "masks" / "e.json").write_text("")
    assert not store.has_masks(s, "y")
    assert not store.has_masks(s, "z")
    assert not store.has_masks(s, "e")
    assert store.has_masks(s, "full")
    assert "y" not in store.list_names(s)
    with pytest.raises(MaskStoreError, match="z.json"):
        store.read_masks(s, "z")


def test_create_store_refuses_other_source(tmp_path):
    s = store.create_store(tmp_path / "s", "dino", {"k": 5})
    store.write_masks(s, "a", "a.png", np.ones((1, 2, 2), bool))
    assert store.create_store(tmp_path / "s", "dino", {"k": 5}) == s  # re-open
    assert store.list_names(s) == ["a"]
    with pytest.raises(MaskStoreError, match="dino.*sam|sam.*dino"):
        store.create_store(tmp_path / "s", "sam", {})
    with pytest.warns(UserWarning, match="params"):
        store.create_store(tmp_path / "s", "dino", {"k": 6})
    assert store.open_store(s)["params"] == {"k": 5}  # first params kept


def test_check_store_params(tmp_path):
    s = store.create_store(tmp_path / "s", "dino", {"k": 5, "model": tmp_path, "size": (1, 2)})
    store.check_store_params(s, "dino", {"k": 5, "model": tmp_path, "size": [1, 2]})  # as JSON reads them back
    store.check_store_params(tmp_path / "new", "dino", {"k": 6})  # no store yet: nothing to compare
    store.check_store_params(s, "dino", {"k": 5, "model": tmp_path, "size": [1, 2], "new": None})  # None = absent
    with pytest.raises(MaskStoreError, match="holds 'dino' masks; refusing to add 'sam' masks"):
        store.check_store_params(s, "sam", {})
    with pytest.raises(MaskStoreError, match=r"mask store .*s was made with other dino params "
                                             r"\(extra: None there, 1 now, k: 5 there, 6 now\)"):
        store.check_store_params(s, "dino", {"k": 6, "model": tmp_path, "size": (1, 2), "extra": 1})


def test_store_errors_name_the_file(tmp_path):
    with pytest.raises(MaskStoreError, match="store.json"):
        store.write_masks(tmp_path / "nostore", "a", "a.png", np.ones((1, 2, 2), bool))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "store.json").write_text("{oops")
    with pytest.raises(MaskStoreError, match=r"bad[/\\]store.json"):
        store.open_store(tmp_path / "bad")
    s = store.create_store(tmp_path / "s", "t", {})
    for bad in ("../x", "a/b", ".hidden", ""):  # names are image stems: the user's to fix
        with pytest.raises(MaskStoreError, match="name"):
            store.write_masks(s, bad, "a.png", np.ones((1, 2, 2), bool))
    # a masker's output of the wrong shape is a bug: a plain ValueError, not a LabellessError
    with pytest.raises(ValueError, match="scores"):
        store.write_masks(s, "a", "a.png", np.ones((2, 2, 2), bool), scores=[1.0])
    with pytest.raises(ValueError, match="N×H×W") as err:
        store.write_masks(s, "a", "a.png", np.ones((2, 2), bool))
    assert not isinstance(err.value, LabellessError)
    with pytest.raises(MaskStoreError, match="not found.*nope.json"):
        store.read_masks(s, "nope")


def test_corrupt_record_names_the_file(tmp_path):
    s = store.create_store(tmp_path, "t", {})
    p = store.write_masks(s, "a", "a.png", np.ones((1, 2, 2), bool))
    p.write_text('{"name": "a", "masks": [')
    with pytest.raises(MaskStoreError, match=r"corrupt mask record .*a\.json"):
        store.read_masks(p)
    rec = {"name": "a", "image": "a.png", "height": 2, "width": 2, "source": "t",
           "masks": [{"rle": {"size": [3, 3], "counts": "9"}, "area": 9}]}
    p.write_text(json.dumps(rec))
    with pytest.raises(MaskStoreError, match=r"a\.json.*size"):
        store.read_masks(s, "a")
    rec["masks"][0]["rle"]["size"] = "2x2"
    p.write_text(json.dumps(rec))
    with pytest.raises(MaskStoreError, match=r"a\.json.*size"):
        store.read_masks(s, "a")


def test_missing_pycocotools_says_how_to_install(monkeypatch, tmp_path):
    import sys

    s = store.create_store(tmp_path, "t", {})
    store.write_masks(s, "a", "a.png", np.ones((1, 2, 2), bool))
    monkeypatch.setitem(sys.modules, "pycocotools.mask", None)  # import fails as if not installed
    with pytest.raises(MissingExtraError, match=r"pycocotools.*pip install 'labelless\[masks\]'"):
        store.read_masks(s, "a")  # not reported as a corrupt record


# -------------------------------------------------------------------------- dataset


def _store_with_image(tmp_path, h=6, w=10):
    s = store.create_store(tmp_path / "s", "t", {})
    img = write_png(tmp_path / "im.png", h, w)
    m = np.zeros((3, h, w), bool)
    m[0, :, :2] = True  # area 2h
    m[1, :, 2:] = True  # area 8h (largest)
    m[2, :3, 5:9] = True  # area 12
    store.write_masks(s, "im", tmp_path / "im.png", m, scores=[0.1, 0.2, 0.3])
    return s, img, m


def test_dataset_plain(tmp_path):
    s, img, m = _store_with_image(tmp_path)
    ds = MaskStoreDataset(s, sort_by_area=False)
    assert len(ds) == 1
    item = ds[0]
    assert item["name"] == "im"
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 6, 10)
    np.testing.assert_array_equal(item["image"].permute(1, 2, 0).numpy(), img)
    assert item["masks"].dtype == torch.bool
    np.testing.assert_array_equal(item["masks"].numpy(), m)
    batch = MaskStoreDataset.collate([item, item])
    assert batch["name"] == ["im", "im"] and len(batch["masks"]) == 2


def test_dataset_sort_cap_resize(tmp_path):
    s, img, m = _store_with_image(tmp_path)
    item = MaskStoreDataset(s)[0]  # sorted by area by default
    np.testing.assert_array_equal(item["masks"].numpy(), m[[1, 0, 2]])
    item = MaskStoreDataset(s, max_masks=2)[0]
    np.testing.assert_array_equal(item["masks"].numpy(), m[[1, 0]])
    item = MaskStoreDataset(s, max_masks=0)[0]
    assert item["masks"].shape == (0, 6, 10)
    item = MaskStoreDataset(s, short_side=12, sort_by_area=False)[0]  # ×2
    assert item["image"].shape == (3, 12, 20) and item["masks"].shape == (3, 12, 20)
    big = np.repeat(np.repeat(m, 2, axis=1), 2, axis=2)  # nearest: exact block copy
    np.testing.assert_array_equal(item["masks"].numpy(), big)
    item = MaskStoreDataset(s, short_side=3, sort_by_area=False)[0]  # ×1/2
    assert item["image"].shape == (3, 3, 5) and item["masks"].dtype == torch.bool
    np.testing.assert_array_equal(item["masks"].numpy(), m[:, 1::2, 1::2])  # pixel-centre nearest


def test_dataset_missing_or_bad_image(tmp_path):
    s, _, _ = _store_with_image(tmp_path)
    os.remove(tmp_path / "im.png")
    ds = MaskStoreDataset(s)
    with pytest.raises(ImageError, match=r"im\.png.*im\.json"):
        ds[0]
    (tmp_path / "im.png").write_bytes(b"not a png")
    with pytest.raises(ImageError, match=r"cannot read image .*im\.png"):
        ds[0]
    write_png(tmp_path / "im.png", 5, 10)
    with pytest.raises(MaskStoreError, match=r"im\.png.*5×10.*im\.json.*6×10"):
        ds[0]


def test_dataset_corrupt_record(tmp_path):
    s, _, _ = _store_with_image(tmp_path)
    (s / "masks" / "im.json").write_text("{")
    with pytest.raises(MaskStoreError, match=r"corrupt mask record .*im\.json"):
        MaskStoreDataset(s)[0]


def test_dataset_needs_a_store(tmp_path):
    with pytest.raises(MaskStoreError, match="not a mask store"):
        MaskStoreDataset(tmp_path)
    s = store.create_store(tmp_path / "s", "t", {})
    with pytest.raises(SettingError, match="max_masks"):
        MaskStoreDataset(s, max_masks=-1)
    with pytest.raises(SettingError, match="short_side"):
        MaskStoreDataset(s, short_side=0)


# ------------------------------------------------------------------------------ ops


def test_sort_and_cap():
    m = np.zeros((4, 3, 3), bool)
    m[0, 0, 0] = True
    m[1] = True
    m[2, :2] = True
    m[3, 0, :1] = True  # ties with mask 0
    out, order = ops.sort_by_area(m, return_index=True)
    assert order.tolist() == [1, 2, 0, 3]  # stable for ties
    np.testing.assert_array_equal(out, m[order])
    assert ops.sort_by_area(torch.from_numpy(m), descending=False).sum((1, 2)).tolist() == [1, 1, 6, 9]
    assert ops.cap_masks(m, 2).shape == (2, 3, 3)
    assert ops.cap_masks(m, None).shape == (4, 3, 3)
    assert ops.cap_masks(m, 10).shape == (4, 3, 3)
    assert ops.sort_by_area(np.zeros((0, 2, 2), bool)).shape == (0, 2, 2)


def test_labels_masks_conversions():
    lab = np.array([[3, 3, 0], [255, 7, 0]])
    m = ops.labels_to_masks(lab, ignore=255)
    assert m.shape == (3, 2, 3) and m.dtype == bool
    np.testing.assert_array_equal(m[0], lab == 0)
    np.testing.assert_array_equal(m[2], lab == 7)
    assert ops.labels_to_masks(lab).shape[0] == 4
    assert ops.labels_to_masks(lab, ignore=[0, 255]).shape[0] == 2
    back = ops.masks_to_labels(m)
    np.testing.assert_array_equal(back, [[1, 1, 0], [-1, 2, 0]])
    assert back.dtype == np.int64
    tm = ops.labels_to_masks(torch.from_numpy(lab), ignore=255)
    assert isinstance(tm, torch.Tensor) and tm.dtype == torch.bool
    np.testing.assert_array_equal(ops.masks_to_labels(tm).numpy(), back)
    # first mask wins where masks overlap
    over = np.stack([np.eye(3, dtype=bool), np.ones((3, 3), bool)])
    np.testing.assert_array_equal(ops.masks_to_labels(over), 1 - np.eye(3, dtype=int))
    np.testing.assert_array_equal(ops.masks_to_labels(np.zeros((0, 2, 2), bool)), -np.ones((2, 2)))


def test_resize_short_side():
    img = torch.full((3, 4, 6), 200, dtype=torch.uint8)
    m = np.zeros((2, 4, 6), bool)
    m[0, :2] = True
    im2, m2 = ops.resize_short_side(img, m, 8)
    assert im2.shape == (3, 8, 12) and im2.dtype == torch.uint8 and (im2 == 200).all()
    assert isinstance(m2, np.ndarray) and m2.shape == (2, 8, 12) and m2.dtype == bool
    np.testing.assert_array_equal(m2[0], np.repeat(np.repeat(m[0], 2, 0), 2, 1))
    assert ops.resize_short_side(img, m, None) == (img, m)
    assert ops.resize_short_side(img, m, 4)[1] is m
    _, e = ops.resize_short_side(None, torch.zeros((0, 4, 6), dtype=torch.bool), 2)
    assert e.shape == (0, 2, 3)
    with pytest.raises(ValueError, match="differ"):
        ops.resize_short_side(img, m[:, :3], 8)
