"""Smoke runs of the inference benchmark scripts (benchmarks/inference_vs_reference.py,
benchmarks/precision_agreement.py) on the tiny model and two CamVid images: they run, their
rows hold every figure, and the reference loop gives labelless's labels. No timing is checked."""

from __future__ import annotations

import importlib.util
import sys

from conftest import REPO


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_inference_vs_reference_smoke(camvid_root, capsys):
    bench = _script("inference_vs_reference")
    rows = bench.main(["--model", "tiny-vit", "--images", "2", "--classes", "camvid", "--batch-size", "2",
                       "--data-root", str(camvid_root), "--in-process"])
    assert [(r["protocol"], r["side"]) for r in rows] == [
        ("squash", "reference"), ("squash", "labelless"), ("slide", "reference"), ("slide", "labelless")]
    for r in rows:
        assert set(r["ms_per_image"]) == {"decode", "backbone", "labels", "metric"}
        assert r["images_per_s"] > 0 and r["peak_memory_mb"] > 0 and r["speedup_vs_reference"] > 0
        assert r["equal_labels"] == 1.0  # the reference written from METHODS.md = labelless, label for label
    out = capsys.readouterr().out
    assert "ratio" in out and out.count('{"protocol"') == 4


def test_precision_agreement_smoke(camvid_root, tiny_vit, tmp_path, capsys):
    from labelless.models.clip import save_checkpoint

    ckpt = save_checkpoint(tiny_vit, tmp_path / "clip.pt")
    rows = _script("precision_agreement").main(["--images", "2", "--dino", "", "--clip", str(ckpt),
                                                "--data-root", str(camvid_root), "--precisions", "bf16"])
    (row,) = rows
    assert row["precision"] == "bf16" and 0.5 < row["label_agreement"] <= 1.0
    assert 0 <= row["mIoU_fp32"] <= 100 and 0 <= row["mIoU"] <= 100
    assert "agree" in capsys.readouterr().out
