"""Tests for labelless.evaluate (confusion matrix, metrics, reports)."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch

from labelless.evaluate import ConfusionMatrix, compute_metrics, format_table, write_report

sklearn_metrics = pytest.importorskip("sklearn.metrics")


def _random_pair(rng, shape, k, ignore_frac=0.1, ignore=255):
    target = rng.integers(0, k, size=shape)
    pred = rng.integers(0, k, size=shape)
    target[rng.random(shape) < ignore_frac] = ignore
    return pred, target


def _reference_iou(pred, target, k, ignore=255):
    """Straightforward per-class IoU from flat arrays, NaN where union is empty."""
    keep = target != ignore
    p, t = pred[keep], target[keep]
    out = np.full(k, np.nan)
    for c in range(k):
        inter = np.sum((p == c) & (t == c))
        union = np.sum((p == c) | (t == c))
        if union > 0:
            out[c] = inter / union
    return out


# --------------------------------------------------------------------------- #
# Confusion matrix
# --------------------------------------------------------------------------- #
def test_import_does_not_load_matplotlib():
    code = (
        "import sys, labelless.evaluate; "
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported at module level'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_confusion_matrix_matches_sklearn_and_accumulates():
    rng = np.random.default_rng(0)
    k = 7
    cm = ConfusionMatrix(k)
    preds, targets = [], []
    for i in range(5):
        pred, target = _random_pair(rng, (13, 17), k)
        # mix numpy and torch inputs, and integer dtypes
        if i % 2:
            cm.update(torch.from_numpy(pred), torch.from_numpy(target.astype(np.uint8)))
        else:
            cm.update(pred.astype(np.int32), target)
        preds.append(pred.ravel())
        targets.append(target.ravel())
    p = np.concatenate(preds)
    t = np.concatenate(targets)
    keep = t != 255
    ref = sklearn_metrics.confusion_matrix(t[keep], p[keep], labels=list(range(k)))

    assert cm.matrix.dtype == torch.int64
    assert tuple(cm.matrix.shape) == (k, k)
    np.testing.assert_array_equal(cm.matrix.numpy(), ref)
    assert int(cm.matrix.sum()) == int(keep.sum())

    one = ConfusionMatrix(k)
    one.update(p, t)
    assert torch.equal(one.matrix, cm.matrix)


def _numpy_counts(pairs, k, ignore=255):
    """The K×K counts as the numpy code before torch accumulation: mask, then np.bincount."""
    out = np.zeros((k, k), dtype=np.int64)
    for pred, target in pairs:
        p, t = np.asarray(pred).ravel(), np.asarray(target).ravel()
        keep = t != ignore
        out += np.bincount(t[keep] * k + p[keep], minlength=k * k).reshape(k, k)
    return out


@pytest.mark.parametrize("defer", [False, True])
def test_torch_counts_equal_the_numpy_version(defer):
    rng = np.random.default_rng(5)
    k = 11
    pairs = [_random_pair(rng, shape, k, ignore_frac=0.3) for shape in ((360, 480), (7, 5), (2, 9, 4), (1,))]
    cm = ConfusionMatrix(k, device=None, defer_checks=defer)  # None: counts where the prediction is
    for pred, target in pairs:
        cm.update(torch.from_numpy(pred), torch.from_numpy(target.astype(np.uint8)))
    assert cm.device == torch.device("cpu") and cm.matrix.dtype == torch.int64
    np.testing.assert_array_equal(cm.matrix.numpy(), _numpy_counts(pairs, k))
    assert int(cm.matrix.sum()) == sum(int((t != 255).sum()) for _, t in pairs) > 100_000


def test_deferred_checks_count_bad_values_and_raise_when_read():
    cm = ConfusionMatrix(4, defer_checks=True)
    cm.update(np.array([0, 1, 9, 2, 1]), np.array([0, 6, 1, 255, 1]))  # target 6 bad, pred 9 bad: no raise yet
    with pytest.raises(ValueError, match=r"1 target pixel\(s\) outside \[0, 4\).* and 1 pred pixel"):
        cm.matrix
    cm.reset()
    cm.update(np.array([3]), np.array([3]))
    assert int(cm.matrix[3, 3]) == 1 and int(cm.matrix.sum()) == 1
    lazy = ConfusionMatrix(4, device=None)
    assert int(lazy.matrix.sum()) == 0 and lazy.device == torch.device("cpu")  # nothing counted: zeros


def test_confusion_matrix_rows_are_ground_truth():
    cm = ConfusionMatrix(3)
    cm.update(np.array([[2]]), np.array([[0]]))  # GT 0 predicted as 2
    expected = np.zeros((3, 3), dtype=np.int64)
    expected[0, 2] = 1
    np.testing.assert_array_equal(cm.matrix.numpy(), expected)


def test_ignore_index_custom_and_none():
    cm = ConfusionMatrix(3, ignore_index=-1)
    cm.update(np.array([0, 1, 2, 0]), np.array([0, -1, 2, 1]))
    assert int(cm.matrix.sum()) == 3
    cm0 = ConfusionMatrix(3, ignore_index=None)
    cm0.update(np.array([0, 1]), np.array([0, 1]))
    assert int(cm0.matrix.trace()) == 2
    with pytest.raises(ValueError, match="target") as err:
        cm0.update(np.array([0]), np.array([255]))
    # labels reach the matrix checked by the benchmark reader: a bad value here is a bug,
    # a plain ValueError (with its traceback), not a LabellessError (a one-line user message)
    from labelless.errors import LabellessError

    assert not isinstance(err.value, LabellessError)


def test_prediction_on_ignored_pixel_is_not_checked():
    cm = ConfusionMatrix(3)
    cm.update(np.array([0, 99]), np.array([0, 255]))
    assert int(cm.matrix.sum()) == 1


def test_batched_and_empty_inputs():
    rng = np.random.default_rng(1)
    pred, target = _random_pair(rng, (2, 4, 5), 4)
    a = ConfusionMatrix(4)
    a.update(pred, target)
    b = ConfusionMatrix(4)
    for i in range(2):
        b.update(pred[i], target[i])
    assert torch.equal(a.matrix, b.matrix)
    a.update(np.full((3, 3), 255), np.full((3, 3), 255))  # all ignored
    a.update(np.zeros((0,), dtype=np.int64), np.zeros((0,), dtype=np.int64))
    assert torch.equal(a.matrix, b.matrix)


@pytest.mark.parametrize(
    "pred, target, match",
    [
        (np.zeros((2, 3), int), np.zeros((3, 2), int), r"pred \(2, 3\).*target \(3, 2\)"),
        (np.zeros((2, 3), int), np.full((2, 3), 5), r"target .*outside \[0, 4\).*\[5\]"),
        (np.zeros((2, 3), int), np.full((2, 3), -3), r"target .*outside \[0, 4\).*\[-3\]"),
        (np.full((2, 3), 4), np.zeros((2, 3), int), r"pred .*outside \[0, 4\).*\[4\]"),
        (np.full((2, 3), -1), np.zeros((2, 3), int), r"pred .*outside \[0, 4\).*\[-1\]"),
        (np.zeros((2, 3), np.float32), np.zeros((2, 3), int), r"pred must hold integer"),
        (torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long), r"pred must hold integer"),
        (np.zeros((2, 3), int), np.zeros((2, 3), np.float64), r"target must hold integer"),
    ],
)
def test_bad_inputs_raise(pred, target, match):
    cm = ConfusionMatrix(4)
    with pytest.raises(ValueError, match=match):
        cm.update(pred, target)
    assert int(cm.matrix.sum()) == 0  # nothing half-applied


def test_bad_construction_and_merge():
    with pytest.raises(ValueError):
        ConfusionMatrix(0)
    with pytest.raises(ValueError, match="3 and 4 classes|4 and 3 classes"):
        ConfusionMatrix(4).merge(ConfusionMatrix(3))
    with pytest.raises(ValueError, match="class names"):
        compute_metrics(np.zeros((3, 3)), ["a", "b"])
    with pytest.raises(ValueError, match="square"):
        compute_metrics(np.zeros((3, 2)), ["a", "b", "c"])


def test_merge_adds_matrices():
    rng = np.random.default_rng(2)
    a, b, both = ConfusionMatrix(5), ConfusionMatrix(5), ConfusionMatrix(5)
    p1, t1 = _random_pair(rng, (8, 8), 5)
    p2, t2 = _random_pair(rng, (8, 8), 5)
    a.update(p1, t1)
    b.update(p2, t2)
    both.update(p1, t1)
    both.update(p2, t2)
    before_b = b.matrix.clone()
    expected = a.matrix + b.matrix
    a.merge(b)
    assert torch.equal(a.matrix, expected)
    assert torch.equal(a.matrix, both.matrix)
    assert torch.equal(b.matrix, before_b)  # other untouched


def test_all_reduce_noop_without_distributed():
    import torch.distributed as dist

    assert not (dist.is_available() and dist.is_initialized())
    cm = ConfusionMatrix(3)
    cm.update(np.array([0, 1, 2]), np.array([0, 1, 1]))
    before = cm.matrix.clone()
    cm.all_reduce()
    assert torch.equal(cm.matrix, before)


_DIST_SCRIPT = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    import torch
    import torch.distributed as dist
    import torch.multiprocessing as mp
    from labelless.evaluate import ConfusionMatrix

    def worker(rank, world, init_file, out_file):
        dist.init_process_group("gloo", init_method="file://" + init_file,
                                rank=rank, world_size=world)
        cm = ConfusionMatrix(3)
        cm.update(np.array([rank % 3]), np.array([0]))   # rank r: GT 0 -> pred r
        cm.all_reduce()
        if rank == 0:
            np.save(out_file, cm.matrix.numpy())
        dist.barrier()
        os._exit(0)  # see tests/conftest.py GLOO_EXIT: no gloo teardown, which can abort ("terminate called")

    if __name__ == "__main__":
        mp.spawn(worker, args=(2, sys.argv[1], sys.argv[2]), nprocs=2, join=True)
    """
)


@pytest.mark.skipif(
    not torch.distributed.is_available() or sys.platform == "win32",
    reason="torch.distributed / gloo unavailable",
)
def test_all_reduce_sums_over_two_gloo_ranks(tmp_path):
    script = tmp_path / "dist_script.py"
    script.write_text(_DIST_SCRIPT)
    out = tmp_path / "matrix.npy"
    subprocess.run(
        [sys.executable, str(script), str(tmp_path / "init"), str(out)],
        check=True, timeout=120,
    )
    m = np.load(out)
    expected = np.zeros((3, 3), dtype=np.int64)
    expected[0, 0] = 1
    expected[0, 1] = 1
    np.testing.assert_array_equal(m, expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_counts_without_host_syncs():
    rng = np.random.default_rng(4)
    pairs = [_random_pair(rng, (64, 48), 6) for _ in range(3)]
    gpu = [(torch.from_numpy(p).cuda(), torch.from_numpy(t).cuda()) for p, t in pairs]
    cm = ConfusionMatrix(6, device=None)  # takes the prediction's device
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host sync inside update raises
    try:
        for p, t in gpu:
            cm.update(p, t)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert cm.device.type == "cuda"
    np.testing.assert_array_equal(cm.matrix.cpu().numpy(), _numpy_counts(pairs, 6))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    rng = np.random.default_rng(3)
    pred, target = _random_pair(rng, (32, 32), 6)
    cpu = ConfusionMatrix(6)
    cpu.update(pred, target)
    gpu = ConfusionMatrix(6, device="cuda")
    gpu.update(torch.from_numpy(pred).cuda(), torch.from_numpy(target).cuda())
    assert gpu.matrix.device.type == "cuda"
    assert torch.equal(gpu.matrix.cpu(), cpu.matrix)
    assert compute_metrics(gpu.matrix, list("abcdef")) == compute_metrics(cpu.matrix, list("abcdef"))


# --------------------------------------------------------------------------- #
# Metrics
# --------------------------------------------------------------------------- #
def test_hand_computed_tiny_example():
    # classes: 0, 1, 2 ; 255 ignored
    target = np.array([[0, 0, 1],
                       [1, 2, 255]])
    pred = np.array([[0, 1, 1],
                     [1, 1, 0]])
    cm = ConfusionMatrix(3)
    cm.update(pred, target)
    # rows GT, cols pred:
    #   GT0: pred0 x1, pred1 x1 ; GT1: pred1 x2 ; GT2: pred1 x1
    np.testing.assert_array_equal(cm.matrix.numpy(), [[1, 1, 0], [0, 2, 0], [0, 1, 0]])
    r = compute_metrics(cm.matrix, ["sky", "road", "car"])
    # IoU0 = 1/(2+1-1) = 1/2 ; IoU1 = 2/(2+4-2) = 1/2 ; IoU2 = 0/(1+0-0) = 0
    assert r["per_class"] == pytest.approx({"sky": 50.0, "road": 50.0, "car": 0.0})
    assert r["mIoU"] == pytest.approx(100 / 3)
    # acc0 = 1/2, acc1 = 1, acc2 = 0
    assert r["per_class_acc"] == pytest.approx({"sky": 50.0, "road": 100.0, "car": 0.0})
    assert r["mAcc"] == pytest.approx(50.0)
    assert r["pAcc"] == pytest.approx(60.0)  # 3 correct of 5 valid
    # fwIoU = 2/5*1/2 + 2/5*1/2 + 1/5*0 = 0.4
    assert r["fwIoU"] == pytest.approx(40.0)
    assert r["num_classes"] == 3
    assert r["num_pixels"] == 5
    assert all(isinstance(r[k], float) for k in ("mIoU", "pAcc", "mAcc", "fwIoU"))


def test_metrics_match_reference_and_sklearn():
    rng = np.random.default_rng(4)
    k = 9
    pred, target = _random_pair(rng, (40, 50), k, ignore_frac=0.15)
    # make class 3 absent from both, class 6 only predicted, class 7 only in GT
    target[target == 3] = 0
    pred[pred == 3] = 1
    target[target == 6] = 2
    pred[pred == 7] = 4
    cm = ConfusionMatrix(k)
    cm.update(pred, target)
    names = [f"c{i}" for i in range(k)]
    r = compute_metrics(cm.matrix.numpy(), names)

    ref = _reference_iou(pred.ravel(), target.ravel(), k)
    got = np.array([np.nan if r["per_class"][n] is None else r["per_class"][n] for n in names])
    np.testing.assert_allclose(got, ref * 100, equal_nan=True)
    assert r["mIoU"] == pytest.approx(np.nanmean(ref) * 100)

    keep = target.ravel() != 255
    present = [c for c in range(k) if not np.isnan(ref[c])]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk = sklearn_metrics.jaccard_score(
            target.ravel()[keep], pred.ravel()[keep], labels=present, average=None
        )
    np.testing.assert_allclose([r["per_class"][names[c]] for c in present], sk * 100)
    assert r["pAcc"] == pytest.approx(
        sklearn_metrics.accuracy_score(target.ravel()[keep], pred.ravel()[keep]) * 100
    )
    gt_present = [c for c in range(k) if (target.ravel()[keep] == c).any()]
    rec = sklearn_metrics.recall_score(
        target.ravel()[keep], pred.ravel()[keep], labels=gt_present, average=None
    )
    assert r["mAcc"] == pytest.approx(rec.mean() * 100)
    freq = np.array([(target.ravel()[keep] == c).mean() for c in gt_present])
    assert r["fwIoU"] == pytest.approx(float((freq * ref[gt_present]).sum() * 100))

    # NaN-exclusion rule
    assert r["per_class"]["c3"] is None and r["per_class_acc"]["c3"] is None
    assert r["per_class"]["c6"] == 0.0          # only predicted: IoU 0, counted
    assert r["per_class_acc"]["c6"] is None     # no GT: excluded from mAcc
    assert r["per_class"]["c7"] == 0.0          # only in GT, never predicted
    assert r["per_class_acc"]["c7"] == 0.0
    assert len(present) == k - 1


def test_only_predicted_class_counts_and_absent_class_excluded():
    cm = np.array([[2, 1, 0],
                   [0, 0, 0],
                   [0, 0, 0]])
    r = compute_metrics(cm, ["a", "b", "c"])
    # a: 2/3, b: only predicted -> 0 and counted, c: absent -> excluded
    assert r["per_class"] == {"a": pytest.approx(200 / 3), "b": 0.0, "c": None}
    assert r["mIoU"] == pytest.approx(100 / 3)
    assert r["mAcc"] == pytest.approx(200 / 3)
    assert r["per_class_acc"] == {"a": pytest.approx(200 / 3), "b": None, "c": None}


def test_empty_matrix_gives_nan_summary():
    r = compute_metrics(torch.zeros(3, 3, dtype=torch.int64), ["a", "b", "c"])
    for key in ("mIoU", "pAcc", "mAcc", "fwIoU"):
        assert math.isnan(r[key])
    assert set(r["per_class"].values()) == {None}
    assert r["num_pixels"] == 0


def test_duplicate_class_names_kept_apart():
    cm = np.diag([1, 2, 3, 4])
    r = compute_metrics(cm, ["wall", "floor", "wall", "sky"])
    assert list(r["per_class"]) == ["wall (0)", "floor", "wall (2)", "sky"]
    assert list(r["per_class_acc"]) == ["wall (0)", "floor", "wall (2)", "sky"]
    assert len(r["per_class"]) == 4


def test_accepts_confusion_matrix_object():
    cm = ConfusionMatrix(2)
    cm.update(np.array([0, 1, 1]), np.array([0, 1, 0]))
    assert compute_metrics(cm, ["a", "b"]) == compute_metrics(cm.matrix, ["a", "b"])


# --------------------------------------------------------------------------- #
# Reports
# --------------------------------------------------------------------------- #
def _example_results():
    cm = np.array([[5, 1, 0, 0],
                   [2, 3, 0, 1],
                   [0, 0, 0, 0],
                   [0, 0, 0, 4]])
    r = compute_metrics(cm, ["sky", "road | lane", "ghost", "car"])
    r.update({"dataset": "toy", "model": "pixelclip-vitb16", "num_images": 2,
              "skipped": ["a.png"]})
    return r


def test_write_report_writes_three_files(tmp_path):
    from PIL import Image

    results = _example_results()
    out = tmp_path / "nested" / "report"
    paths = write_report(results, out, title="toy eval")
    assert set(paths) == {"json", "markdown", "plot"}
    assert paths["json"] == out / "results.json"
    assert paths["markdown"] == out / "results.md"
    assert paths["plot"] == out / "per_class_iou.png"
    for p in paths.values():
        assert p.is_file() and p.stat().st_size > 0
    # no temp files left behind
    assert sorted(p.name for p in out.iterdir()) == ["per_class_iou.png", "results.json", "results.md"]

    text = paths["json"].read_text()
    assert "NaN" not in text
    assert text.startswith("{\n  ")  # indent 2
    loaded = json.loads(text)
    assert loaded["per_class"]["ghost"] is None
    assert loaded["per_class_acc"]["ghost"] is None
    assert loaded["per_class"]["sky"] == pytest.approx(results["per_class"]["sky"])
    assert loaded["mIoU"] == pytest.approx(results["mIoU"])
    assert loaded["dataset"] == "toy" and loaded["model"] == "pixelclip-vitb16"
    assert loaded["num_images"] == 2 and loaded["skipped"] == ["a.png"]
    assert list(loaded["per_class"]) == list(results["per_class"])
    assert format_table(loaded) == format_table(results)

    md = paths["markdown"].read_text()
    assert md.startswith("# toy eval")
    for name in ("sky", "ghost", "car"):
        assert name in md
    assert "road \\| lane" in md
    assert "—" in md
    for key in ("mIoU", "pAcc", "mAcc", "fwIoU"):
        assert key in md
    assert f"{results['mIoU']:.2f}" in md

    with Image.open(paths["plot"]) as im:
        im.verify()
        assert im.format == "PNG"
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_write_report_nan_summary_and_overwrite(tmp_path):
    results = compute_metrics(np.zeros((2, 2)), ["a", "b"])
    paths = write_report(results, tmp_path)
    loaded = json.loads(paths["json"].read_text())
    assert loaded["mIoU"] is None and loaded["per_class"] == {"a": None, "b": None}
    # second write replaces the files
    paths = write_report(_example_results(), tmp_path)
    assert json.loads(paths["json"].read_text())["dataset"] == "toy"


def test_plot_scales_with_many_classes(tmp_path):
    from PIL import Image

    k = 300
    rng = np.random.default_rng(5)
    cm = rng.integers(0, 3, size=(k, k))
    cm[10] = 0
    cm[:, 10] = 0
    names = [f"class_{i}" for i in range(k)]
    small = write_report(compute_metrics(cm[:5, :5], names[:5]), tmp_path / "small")
    big = write_report(compute_metrics(cm, names), tmp_path / "big")
    with Image.open(small["plot"]) as a, Image.open(big["plot"]) as b:
        assert b.size[1] > 10 * a.size[1] / 2
        assert b.size[1] >= k * 10  # at least ~10 px per class row


def test_format_table_order_and_content():
    results = _example_results()
    table = format_table(results)
    rows = [ln for ln in table.splitlines() if ln.startswith("| ") and ln[2].isdigit()]
    # first numeric row is the summary; then per-class rows in index order
    class_rows = rows[1:]
    cells = [re.split(r"(?<!\\)\|", r)[2].strip() for r in class_rows]
    assert cells == ["sky", "road \\| lane", "ghost", "car"]
    assert "| 2 | ghost | — | — |" in table
    assert "toy" in table and "pixelclip-vitb16" in table
