"""``labelless eval`` loading and processes: DataLoader workers give the in-process results and
still report a bad image by name, a bad label still stops the run with its name, and two gloo
processes give the results of one (CamVid val, a random tiny CLIP)."""

from __future__ import annotations

import json

import numpy as np
from _dist import run_ranks
from _train_fixtures import one_thread  # noqa: F401 (autouse: one thread, as the gloo workers)
from PIL import Image

from labelless.cli import main
from labelless.data.benchmarks import load_benchmark

TINY = ["--model", "tiny-vit", "--pretrained", "none"]


def _camvid_subset(camvid_root, root, n: int, broken_at: int):
    """A CamVid root whose ``val.txt`` lists the first ``n`` val samples (absolute paths) and an
    unreadable JPEG with a real label, named to sort (samples sort by name) at ``broken_at``."""
    samples = load_benchmark("camvid", camvid_root, "val", "auto").samples[:n]
    lines = [f"{s.image} {s.label}" for s in samples]
    broken = root / "bad" / f"{samples[broken_at - 1].name}_broken.jpg"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(samples[0].image.read_bytes()[:300])
    lines.insert(broken_at, f"{broken} {samples[0].label}")
    (root / "val.txt").write_text("\n".join(lines) + "\n")
    return root


def _eval(root, out, *opts) -> int:
    return main(["eval", "--dataset", "camvid", "--data-root", str(root), "--out", str(out), *TINY, *opts])


def _results(out) -> dict:
    res = json.loads((out / "results.json").read_text())
    assert res.pop("seconds") >= 0
    return res


def _labelled_pixels(root) -> int:
    """Pixels not ignored in the labels of the readable samples (what the matrix must count)."""
    bench = load_benchmark("camvid", root, "val", "auto")
    return sum(int((bench.load_label(s) != bench.ignore_index).sum()) for s in bench.samples
               if not s.name.endswith("_broken"))


def test_worker_loading_equals_in_process_and_reports_a_bad_image(camvid_root, tmp_path, capsys):
    root = _camvid_subset(camvid_root, tmp_path / "cv", n=5, broken_at=2)
    runs = {}
    for workers in ("0", "2"):
        assert _eval(root, tmp_path / workers, "--workers", workers, "--save-predictions") == 0
        text = capsys.readouterr()
        assert "skipped: cannot read image" in text.out and "_broken.jpg" in text.out
        runs[workers] = _results(tmp_path / workers)
    assert runs["0"] == runs["2"]
    res = runs["2"]
    assert res["num_images"] == 5 and res["num_skipped"] == 1 and res["skipped"][0]["image"].endswith("_broken.jpg")
    assert res["num_pixels"] == _labelled_pixels(root) > 4 * 480 * 360
    assert 0 < res["pAcc"] < 100 and len(res["per_class"]) == 11
    for name in (s.name for s in load_benchmark("camvid", root, "val", "auto").samples[:2]):
        a, b = (np.array(Image.open(tmp_path / w / "predictions" / f"{name}.png")) for w in ("0", "2"))
        assert a.shape == (360, 480) and np.array_equal(a, b)


def test_a_bad_label_stops_worker_loading_with_its_name(tmp_path, capsys):
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "classes.txt").write_text("sky\nroad\ncar\n")
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(root / "images" / f"im{i}.png")
        Image.fromarray(np.full((24, 32), 7 if i == 2 else 1, np.uint8)).save(root / "labels" / f"im{i}.png")
    code = main(["eval", "--dataset", "folder", "--data-root", str(root), "--out", str(tmp_path / "o"), *TINY,
                 "--workers", "2", "--batch-size", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "im2.png" in err  # the DatasetError itself, not a DataLoader traceback
    assert "labelless eval: error: " in err and "Traceback" not in err and "DataLoader" not in err
    assert not (tmp_path / "o" / "results.json").exists()


def test_two_gloo_processes_score_like_one(camvid_root, tmp_path):
    root = _camvid_subset(camvid_root, tmp_path / "cv", n=6, broken_at=3)  # 7 samples: 4 + 3, rank 1 skips one
    opts = ["--batch-size", "1", "--workers", "1"]  # one image per forward: labels independent of batch-mates
    assert _eval(root, tmp_path / "one", *opts) == 0
    argv = ["eval", "--dataset", "camvid", "--data-root", str(root), "--out", str(tmp_path / "two"), *TINY, *opts]
    outputs = run_ranks(tmp_path, argv)
    assert "results:" in outputs[0] and "results:" not in outputs[1]  # rank 0 alone reports
    assert "_broken.jpg" in outputs[1] and "_broken.jpg" not in outputs[0]  # the rank that met it names it
    one, two = _results(tmp_path / "one"), _results(tmp_path / "two")
    assert one == two
    assert two["num_images"] == 6 and two["num_skipped"] == 1 and two["num_pixels"] == _labelled_pixels(root)
