"""Readers of existing masks (SA-1B folder and tar shards, COCO instances) and import_masks,
on tiny fabricated files in the real formats."""

import io
import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("pycocotools")
from pycocotools import mask as mask_utils  # noqa: E402

from labelless.errors import (  # noqa: E402
    DatasetError,
    ImageError,
    LabellessError,
    MaskStoreError,
    MissingFileError,
    SettingError,
)
from labelless.io import load_image  # noqa: E402
from labelless.masks import readers, store  # noqa: E402
from labelless.masks.store import MaskStoreDataset  # noqa: E402


def _rle(mask):
    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in r["size"]], "counts": r["counts"].decode("ascii")}


def _sa1b_masks(seed, h, w):
    """Masks of distinct areas (so sorting is unambiguous), in random order."""
    rng = np.random.default_rng(seed)
    masks = []
    for i in range(5):
        m = np.zeros((h, w), bool)
        y, x = rng.integers(0, h - 3), rng.integers(0, w - 3)
        m[y:y + 1 + i, x:x + 2 + i] = True
        masks.append(m)
    order = rng.permutation(5)
    return np.stack([masks[i] for i in order])


def _sa1b_pair(image_id, h, w):
    """(jpg bytes, json bytes, masks) of one fabricated SA-1B image in the release format."""
    rng = np.random.default_rng(image_id)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format="JPEG")
    masks = _sa1b_masks(image_id, h, w)
    anns = []
    for k, m in enumerate(masks):
        ys, xs = np.nonzero(m)
        anns.append({
            "bbox": [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)],
            "area": int(m.sum()),
            "segmentation": _rle(m),
            "predicted_iou": 0.9, "point_coords": [[float(xs.mean()), float(ys.mean())]],
            "crop_box": [0.0, 0.0, float(w), float(h)], "id": 1000 * image_id + k,
            "stability_score": 0.95,
        })
    meta = {"image": {"image_id": image_id, "width": w, "height": h, "file_name": f"sa_{image_id}.jpg"},
            "annotations": anns}
    return buf.getvalue(), json.dumps(meta).encode(), masks


SA1B = {1: (11, 14), 2: (9, 8), 10: (12, 10)}  # image_id -> (h, w)


@pytest.fixture
def sa1b(tmp_path):
    """A folder with sa_*.jpg + sa_*.json and the same pairs in a .tar shard."""
    folder = tmp_path / "sa1b"
    folder.mkdir()
    shard = tmp_path / "sa_000000.tar"
    truth = {}
    with tarfile.open(shard, "w") as tar:
        for image_id, (h, w) in SA1B.items():
            jpg, js, masks = _sa1b_pair(image_id, h, w)
            (folder / f"sa_{image_id}.jpg").write_bytes(jpg)
            (folder / f"sa_{image_id}.json").write_bytes(js)
            members = [(f"./sa_{image_id}.jpg", jpg), (f"./sa_{image_id}.json", js)]
            if image_id == 2:
                members.reverse()  # json before jpg: pairing must not depend on order
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            truth[f"sa_{image_id}"] = masks
    return folder, shard, truth


def _by_area(masks):
    areas = masks.reshape(len(masks), -1).sum(1)
    return masks[np.argsort(-areas, kind="stable")]


def test_sa1b_folder(sa1b):
    folder, _, truth = sa1b
    items = list(readers.iter_sa1b_folder(folder, sort_by_area=False))
    assert [it[0] for it in items] == ["sa_1", "sa_10", "sa_2"]  # sorted by name
    for name, image, masks in items:
        assert image.dtype == torch.uint8 and image.shape == (3, *SA1B[int(name[3:])])
        assert masks.dtype == bool
        np.testing.assert_array_equal(masks, truth[name])
        assert torch.equal(image, load_image(folder / f"{name}.jpg"))
    for name, _, masks in readers.iter_sa1b_folder(folder):  # default: largest first
        np.testing.assert_array_equal(masks, _by_area(truth[name]))


def test_sa1b_tar_streams_same_as_folder(sa1b, monkeypatch):
    folder, shard, truth = sa1b
    # streamed: nothing may be extracted
    monkeypatch.setattr(tarfile.TarFile, "extract", lambda *a, **k: pytest.fail("extracted"))
    monkeypatch.setattr(tarfile.TarFile, "extractall", lambda *a, **k: pytest.fail("extracted"))
    from_tar = {it[0]: it for it in readers.iter_sa1b_tars([shard], max_masks=3)}
    from_dir = {it[0]: it for it in readers.iter_sa1b_folder(folder, max_masks=3)}
    assert sorted(from_tar) == sorted(from_dir) == sorted(truth)
    for name in truth:
        assert torch.equal(from_tar[name][1], from_dir[name][1])
        np.testing.assert_array_equal(from_tar[name][2], from_dir[name][2])
        np.testing.assert_array_equal(from_tar[name][2], _by_area(truth[name])[:3])
        assert from_tar[name].data == (folder / f"{name}.jpg").read_bytes()
        assert from_dir[name].path == folder / f"{name}.jpg"
    assert [it[0] for it in readers.iter_sa1b_tars(str(shard), skip={"sa_1"})] == ["sa_2", "sa_10"]


def test_sa1b_short_side(sa1b):
    folder, shard, truth = sa1b
    for it in (readers.iter_sa1b_folder(folder, short_side=18, sort_by_area=False),
               readers.iter_sa1b_tars([shard], short_side=18, sort_by_area=False)):
        for name, image, masks in it:
            h, w = SA1B[int(name[3:])]
            s = 18 / min(h, w)
            assert image.shape[-2:] == masks.shape[-2:] == (round(h * s), round(w * s))
            assert masks.shape[0] == 5 and masks.dtype == bool
            if name == "sa_2":  # 9×8 -> 20×18: compare to nearest upsampling of the truth
                ys = np.floor((np.arange(20) + 0.5) * 9 / 20).astype(int)
                xs = np.floor((np.arange(18) + 0.5) * 8 / 18).astype(int)
                np.testing.assert_array_equal(masks, truth[name][:, ys][:, :, xs])


def test_sa1b_errors(sa1b, tmp_path):
    folder, _, _ = sa1b
    (folder / "sa_2.json").unlink()
    with pytest.raises(DatasetError, match=r"sa_2\.jpg has no annotation file .*sa_2\.json"):
        list(readers.iter_sa1b_folder(folder))
    with pytest.warns(UserWarning, match=r"sa_2\.json"):
        assert [it[0] for it in readers.iter_sa1b_folder(folder, on_error="skip")] == ["sa_1", "sa_10"]
    (folder / "sa_1.jpg").write_bytes(b"garbage")
    with pytest.raises(ImageError, match=r"sa_1\.jpg"):
        next(readers.iter_sa1b_folder(folder))
    with pytest.raises(MissingFileError, match="missing.tar does not exist"):
        list(readers.iter_sa1b_tars([tmp_path / "missing.tar"]))
    with pytest.raises(MissingFileError, match="nowhere does not exist"):
        next(readers.iter_sa1b_folder(tmp_path / "nowhere"))
    with pytest.raises(DatasetError, match=r"no sa_\*\.jpg images in"):
        next(readers.iter_sa1b_folder(tmp_path))
    (tmp_path / "notatar.tar").write_bytes(b"this is not a tar file" * 40)
    with pytest.raises(DatasetError, match="notatar.tar"):
        list(readers.iter_sa1b_tars([tmp_path / "notatar.tar"]))
    half = tmp_path / "half.tar"
    with tarfile.open(half, "w") as tar:
        info = tarfile.TarInfo("sa_5.jpg")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    with pytest.raises(DatasetError, match=r"sa_5 has no \.json"):
        list(readers.iter_sa1b_tars([half]))


def test_reader_options_are_checked_before_reading(sa1b, tmp_path):
    folder, shard, _ = sa1b
    # a bad option is one error up front, not a warning (and a skip) per image
    for opts, match in (({"on_error": "ignore"}, "on_error"), ({"max_masks": -1}, "max_masks"),
                        ({"short_side": 0}, "short_side")):
        with pytest.raises(SettingError, match=match):
            next(readers.iter_sa1b_folder(folder, **{"on_error": "skip", **opts}))
        with pytest.raises(SettingError, match=match):
            next(readers.iter_sa1b_tars([shard], **opts))
    with pytest.raises(SettingError, match="no SA-1B shards"):
        next(readers.iter_sa1b_tars([]))


# --------------------------------------------------------------------------- COCO


@pytest.fixture
def coco(tmp_path):
    h, w = 12, 16
    img_dir = tmp_path / "val"
    img_dir.mkdir()
    for name in ("a", "b", "c"):
        Image.fromarray(np.full((h, w, 3), ord(name), np.uint8)).save(img_dir / f"{name}.png")
    rect = np.zeros((h, w), bool)
    rect[3:5, 2:7] = True  # the polygon below
    two = np.zeros((h, w), bool)
    two[3:5, 2:7] = True
    two[8:10, 10:13] = True  # two polygons of one annotation
    rle_m = np.zeros((h, w), bool)
    rle_m[:, 12:] = True
    crowd = np.zeros((h, w), bool)
    crowd[6:12, 0:4] = True
    flat = crowd.flatten(order="F").astype(int)  # uncompressed RLE: runs, column-major, from 0s
    runs = [int(len(g)) for g in np.split(flat, np.flatnonzero(np.diff(flat)) + 1)]
    if flat[0]:
        runs = [0] + runs
    anns = [
        {"id": 1, "image_id": 1, "category_id": 3, "iscrowd": 0,
         "segmentation": [[1.5, 2.5, 6.5, 2.5, 6.5, 4.5, 1.5, 4.5]]},
        {"id": 2, "image_id": 1, "category_id": 7, "iscrowd": 0, "segmentation": _rle(rle_m)},
        {"id": 3, "image_id": 1, "category_id": 1, "iscrowd": 1,
         "segmentation": {"size": [h, w], "counts": runs}},
        {"id": 4, "image_id": 2, "category_id": 3, "iscrowd": 0,
         "segmentation": [[1.5, 2.5, 6.5, 2.5, 6.5, 4.5, 1.5, 4.5], [9.5, 7.5, 12.5, 7.5, 12.5, 9.5, 9.5, 9.5]]},
    ]
    images = [{"id": i, "file_name": f"{n}.png", "height": h, "width": w} for i, n in ((1, "a"), (2, "b"), (3, "c"))]
    ann_file = tmp_path / "instances_val.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": anns,
                                    "categories": [{"id": i, "name": str(i)} for i in (1, 3, 7)]}))
    return ann_file, img_dir, {"a": [rect, rle_m, crowd], "b": [two]}


def test_coco_instances(coco):
    ann_file, img_dir, truth = coco
    items = list(readers.iter_coco_instances(ann_file, img_dir, sort_by_area=False))
    assert [it[0] for it in items] == ["a", "b"]  # c has no annotation
    for name, image, masks in items:
        assert image.shape == (3, 12, 16) and int(image[0, 0, 0]) == ord(name)
        np.testing.assert_array_equal(masks, np.stack(truth[name]))
    a = next(readers.iter_coco_instances(ann_file, img_dir))  # by area: rle 48, crowd 24, rect 10
    np.testing.assert_array_equal(a[2], np.stack([truth["a"][i] for i in (1, 2, 0)]))
    a = next(readers.iter_coco_instances(ann_file, img_dir, include_crowd=False, sort_by_area=False))
    np.testing.assert_array_equal(a[2], np.stack(truth["a"][:2]))
    items = list(readers.iter_coco_instances(ann_file, img_dir, keep_empty=True, max_masks=1, short_side=6))
    assert [it[0] for it in items] == ["a", "b", "c"]
    assert items[0][2].shape == (1, 6, 8) and items[2][2].shape == (0, 6, 8)
    assert items[0][1].shape == (3, 6, 8)


def test_coco_errors(coco, tmp_path):
    ann_file, img_dir, _ = coco
    (img_dir / "b.png").unlink()
    with pytest.raises(ImageError, match=r"b\.png"):
        list(readers.iter_coco_instances(ann_file, img_dir))
    with pytest.warns(UserWarning, match=r"b\.png"):
        assert [it[0] for it in readers.iter_coco_instances(ann_file, img_dir, on_error="skip")] == ["a"]
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(DatasetError, match=r"cannot read COCO annotation file .*bad\.json"):
        list(readers.iter_coco_instances(bad, img_dir))
    bad.write_text(json.dumps({"images": [{"file_name": "a.png"}]}))  # no image id
    with pytest.raises(DatasetError, match=r"bad\.json: no 'id' key"):
        list(readers.iter_coco_instances(bad, img_dir))
    with pytest.raises(MissingFileError, match=r"nope\.json not found"):
        list(readers.iter_coco_instances(tmp_path / "nope.json", img_dir))
    with pytest.raises(MissingFileError, match="no_images"):
        list(readers.iter_coco_instances(ann_file, tmp_path / "no_images"))
    # an annotation without a usable segmentation is the file's fault: DatasetError, skippable
    coco_json = json.loads(ann_file.read_text())
    coco_json["annotations"] = [{"id": 9, "image_id": 1}, {"id": 10, "image_id": 3, "segmentation": "x"}]
    ann_file.write_text(json.dumps(coco_json))
    with pytest.raises(DatasetError, match="annotation 9: no 'segmentation'"):
        list(readers.iter_coco_instances(ann_file, img_dir))
    with pytest.warns(UserWarning) as caught:
        assert list(readers.iter_coco_instances(ann_file, img_dir, on_error="skip")) == []
    assert [str(w.message).split(": ", 2)[-1] for w in caught] == ["no 'segmentation'", "unsupported segmentation str"]


# ------------------------------------------------------------------------- import


def test_import_masks_resumes(sa1b, tmp_path):
    folder, shard, truth = sa1b
    s = tmp_path / "store"
    it = readers.iter_sa1b_folder(folder)
    first = [next(it)]  # an interrupted import: one image done
    counts = readers.import_masks(first, s, "sa1b", {"from": "folder"}, progress=False)
    assert counts == {"written": 1, "skipped_existing": 0, "seen": 1, "masks": 5}
    counts = readers.import_masks(readers.iter_sa1b_folder(folder), s, "sa1b", {"from": "folder"}, progress=False)
    assert counts == {"written": 2, "skipped_existing": 1, "seen": 3, "masks": 10}
    assert store.list_names(s) == ["sa_1", "sa_10", "sa_2"]
    for name in truth:
        masks, rec = store.read_masks(s, name)
        np.testing.assert_array_equal(masks, _by_area(truth[name]))
        assert rec["image"] == str(folder / f"{name}.jpg")  # points at the original file
    # a fast resume decodes nothing already done
    left = list(readers.iter_sa1b_folder(folder, skip=lambda n: store.has_masks(s, n)))
    assert left == []
    with pytest.raises(MaskStoreError, match="sa1b"):
        readers.import_masks([], s, "coco", progress=False)


def test_import_masks_refuses_other_params(sa1b, tmp_path):
    folder, _, _ = sa1b
    s = tmp_path / "store"
    readers.import_masks(readers.iter_sa1b_folder(folder, max_masks=2), s, "sa1b", {"max_masks": 2},
                         progress=False)
    before = sorted(p.name for p in (s / "masks").iterdir())
    never_read = iter(())  # the check comes before anything is read or written

    with pytest.raises(MaskStoreError, match=r"store.*other sa1b params \(max_masks: 2 there, 3 now\)") as err:
        readers.import_masks(never_read, s, "sa1b", {"max_masks": 3}, progress=False)
    assert isinstance(err.value, LabellessError) and str(s) in str(err.value)
    with pytest.raises(MaskStoreError, match=r"short_side: None there, 8 now"):
        readers.import_masks([], s, "sa1b", {"max_masks": 2, "short_side": 8}, progress=False)
    assert sorted(p.name for p in (s / "masks").iterdir()) == before
    assert json.loads((s / "store.json").read_text())["params"] == {"max_masks": 2}
    # the same params resume
    counts = readers.import_masks(readers.iter_sa1b_folder(folder, max_masks=2), s, "sa1b", {"max_masks": 2},
                                  progress=False)
    assert counts["written"] == 0 and counts["skipped_existing"] == 3


def test_import_from_tar_and_resized(sa1b, coco, tmp_path):
    folder, shard, truth = sa1b
    s = tmp_path / "tarstore"
    counts = readers.import_masks(readers.iter_sa1b_tars([shard]), s, "sa1b", progress=False)
    assert counts["written"] == 3
    ds = MaskStoreDataset(s, sort_by_area=False)
    for item in ds:
        rec = store.read_masks(s, item["name"])[1]
        assert rec["image"] == str(s / "images" / f"{item['name']}.jpg")  # the original bytes
        assert (s / "images" / f"{item['name']}.jpg").read_bytes() == (folder / f"{item['name']}.jpg").read_bytes()
        np.testing.assert_array_equal(item["masks"].numpy(), _by_area(truth[item["name"]]))
    ann_file, img_dir, _ = coco
    s2 = tmp_path / "cocostore"
    readers.import_masks(readers.iter_coco_instances(ann_file, img_dir, short_side=6), s2, "coco", progress=False)
    item = MaskStoreDataset(s2)[0]
    assert item["name"] == "a" and item["image"].shape == (3, 6, 8) and item["masks"].shape == (3, 6, 8)
    assert store.read_masks(s2, "a")[1]["image"] == str(s2 / "images" / "a.png")  # resized copy, lossless
    assert int(item["image"][0, 0, 0]) == ord("a")
