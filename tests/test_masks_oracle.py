"""Oracle labels and oracle mIoU of a mask store on a fabricated `folder` benchmark."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("pycocotools")

from labelless.data.benchmarks import load_benchmark  # noqa: E402
from labelless.errors import MaskStoreError  # noqa: E402
from labelless.evaluate import ConfusionMatrix, compute_metrics  # noqa: E402
from labelless.masks import ops, store  # noqa: E402
from labelless.masks.oracle import oracle_labels, oracle_score  # noqa: E402

I = 255  # ignore


def _mask(h, w, cells):
    m = np.zeros((h, w), bool)
    for r, c in cells:
        m[r, c] = True
    return m


def test_oracle_labels_hand_built():
    gt = np.array([[0, 0, 0, 1, 1, 1],
                   [0, 0, 0, 1, 1, 1],
                   [2, 2, I, I, I, 1],
                   [2, 2, 2, 2, 1, 1]])
    A = np.zeros((4, 6), bool)
    A[:, :3] = True  # 6× class 0, 5× class 2, 1 ignored -> 0
    B = np.zeros((4, 6), bool)
    B[2:, :4] = True  # 6× class 2, 2 ignored -> 2, wins over A where they overlap (later)
    C = np.zeros((4, 6), bool)
    C[:2, 3:] = True  # all class 1 -> 1
    D = _mask(4, 6, [(2, 4)])  # only an ignored pixel: labels nothing
    masks = np.stack([A, B, C, D])
    K = 3
    expected = np.array([[0, 0, 0, 1, 1, 1],
                         [0, 0, 0, 1, 1, 1],
                         [2, 2, 2, 2, K, K],  # (2,4) covered by D only, (2,5) by nothing
                         [2, 2, 2, 2, K, K]])
    out = oracle_labels(masks, gt, K, I)
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, expected)
    # the later mask wins: A last paints its columns with class 0
    rev = oracle_labels(masks[[1, 0, 2, 3]], gt, K, I)
    np.testing.assert_array_equal(rev[2:, :3], 0)
    np.testing.assert_array_equal(rev[2:, 3], 2)
    # sorted by area (largest first) the smaller mask wins, whatever the stored order
    np.testing.assert_array_equal(oracle_labels(ops.sort_by_area(masks[[2, 1, 3, 0]]), gt, K, I), expected)
    # torch in -> torch out
    t = oracle_labels(torch.from_numpy(masks), torch.from_numpy(gt), K, I)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.int64
    np.testing.assert_array_equal(t.numpy(), expected)
    # no mask: everything uncovered
    np.testing.assert_array_equal(oracle_labels(np.zeros((0, 4, 6), bool), gt, K, I), K)


def test_oracle_labels_tie_and_errors():
    gt = np.array([[2, 2, 1, 1]])
    np.testing.assert_array_equal(oracle_labels(np.ones((1, 1, 4), bool), gt, 3, I), 1)  # tie: smallest
    with pytest.raises(ValueError, match="outside"):
        oracle_labels(np.ones((1, 1, 4), bool), np.array([[0, 7, 0, 0]]), 3, I)
    with pytest.raises(ValueError, match="same size"):
        oracle_labels(np.ones((1, 2, 4), bool), gt, 3, I)


def test_gt_regions_give_100_miou():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 5, (9, 13))
    gt[0] = I
    masks = ops.labels_to_masks(gt, ignore=I)
    out = oracle_labels(masks, gt, 5, I)
    np.testing.assert_array_equal(out[1:], gt[1:])
    cm = ConfusionMatrix(6, I)
    cm.update(out, gt)
    m = compute_metrics(cm.matrix, list("abcde") + ["uncovered"])
    assert m["pAcc"] == 100.0 and m["mIoU"] == 100.0


# ------------------------------------------------------------------ folder benchmark

H, W = 4, 6


def _png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8)).save(path)


@pytest.fixture
def bench_and_store(tmp_path):
    root = tmp_path / "bench"
    root.mkdir()
    (root / "classes.txt").write_text("sky\nroad\ncar\n")
    gt_a = np.zeros((H, W), int)
    gt_a[:, 3:] = 1
    gt_b = np.full((H, W), 2)
    gt_b[0] = I
    for name in "abcd":
        _png(root / "images" / f"{name}.png", np.full((H, W, 3), 100))
    _png(root / "labels" / "a.png", gt_a)
    _png(root / "labels" / "b.png", gt_b)  # c has no label, d no masks
    (root / "val.txt").write_text("a\nb\nc\nd\n")
    bench = load_benchmark("folder", root, "val")

    s = store.create_store(tmp_path / "store", "test", {})
    store.write_masks(s, "a", root / "images" / "a.png", ops.labels_to_masks(gt_a))  # = the GT regions
    big = np.zeros((1, 2 * H, 2 * W), bool)
    big[0, :4] = True  # stored at twice the label size: rows 0-1 at label size
    store.write_masks(s, "b", root / "images" / "b.png", big)
    store.write_masks(s, "c", root / "images" / "c.png", np.ones((1, H, W), bool))
    store.write_masks(s, "zzz", tmp_path / "other.png", np.ones((1, H, W), bool))  # not in the split
    return bench, s


def test_oracle_score_folder_benchmark(bench_and_store, tmp_path):
    bench, s = bench_and_store
    res = oracle_score(s, bench, out_dir=tmp_path / "out", progress=False)
    assert res["num_images_in_split"] == 4
    assert res["num_images_with_masks"] == 3  # a, b, c (zzz is not in the split, d has none)
    assert res["num_images_without_label"] == 1 and res["num_images_scored"] == 2
    assert res["mean_masks_per_image"] == pytest.approx(1.5)  # a: 2, b: 1
    assert res["pixel_coverage"] == pytest.approx(100 * 36 / 48)  # a full, b half
    # a: 24 px right; b: row 0 ignored, row 1 right (6), rows 2-3 uncovered (12 errors)
    assert res["uncovered_scored_pixels"] == pytest.approx(100 * 12 / 42)
    assert res["pAcc"] == pytest.approx(100 * 30 / 42)
    assert res["per_class"] == pytest.approx({"sky": 100.0, "road": 100.0, "car": 100 * 6 / 18})
    assert res["mIoU"] == pytest.approx((200 + 100 / 3) / 3)  # over the 3 real classes only
    assert res["mAcc"] == pytest.approx((200 + 100 / 3) / 3)
    assert res["num_classes"] == 3 and res["num_pixels"] == 42
    assert res["source"] == "test" and res["dataset"] == "folder"
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["mIoU"] == pytest.approx(res["mIoU"]) and saved["num_images_with_masks"] == 3
    assert "(uncovered)" not in saved["per_class"]
    assert (tmp_path / "out" / "results.md").is_file() and (tmp_path / "out" / "per_class_iou.png").is_file()


def test_oracle_score_max_masks_and_no_match(bench_and_store, tmp_path):
    bench, s = bench_and_store
    res = oracle_score(s, bench, max_masks=1, progress=False)
    # a keeps only its larger mask (tie 12/12: stable order keeps sky) -> road uncovered
    assert res["per_class"]["road"] == 0.0 and res["per_class"]["sky"] == 100.0
    other = store.create_store(tmp_path / "empty", "test", {})
    store.write_masks(other, "x", tmp_path / "x.png", np.ones((1, H, W), bool))
    with pytest.raises(MaskStoreError, match="no folder sample .*has masks in .*empty"):
        oracle_score(other, bench, progress=False)
