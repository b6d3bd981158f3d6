"""The command line end to end on tiny models (CamVid val from ../shared/data when present)."""

import json

import numpy as np
import pytest
from _fab_datasets import random_folder_dataset as _folder_dataset
from PIL import Image

from labelless.cli import main

TINY = ["--model", "tiny-vit", "--pretrained", "none"]


def test_segment_end_to_end(tmp_path, capsys):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(imgs / "a.jpg")
    Image.fromarray(rng.integers(0, 256, (50, 30, 3), dtype=np.uint8)).save(imgs / "b.png")
    (imgs / "broken.jpg").write_bytes((imgs / "a.jpg").read_bytes()[:80])
    out = tmp_path / "out"
    code = main(["segment", str(imgs), "--labels", "sky,road|street,car", "--out", str(out), *TINY])
    assert code == 0
    text = capsys.readouterr()
    assert "broken.jpg" in text.err and "1 skipped" in text.out
    for stem, shape in (("a", (40, 60)), ("b", (50, 30))):
        lab = np.array(Image.open(out / f"{stem}.png"))
        assert lab.shape == shape and lab.max() < 3
        ov = Image.open(out / f"{stem}_overlay.png")
        assert ov.height >= shape[0] and ov.width > shape[1]  # legend on the right
    assert (out / "labels.txt").read_text().splitlines() == ["0 sky", "1 road", "2 car"]


def test_segment_with_background_threshold_numbers_background_first(tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(imgs / "a.png")
    out = tmp_path / "out"
    assert main(["segment", str(imgs), "--labels", "sky,car", "--out", str(out), "--bg-threshold", "0.99", *TINY]) == 0
    assert (out / "labels.txt").read_text().splitlines() == ["0 background", "1 sky", "2 car"]
    lab = np.array(Image.open(out / "a.png"))
    assert lab.max() <= 2 and (lab == 0).any()  # a random tiny CLIP is never 99 % sure


def test_eval_refuses_a_background_threshold_without_background_class(tmp_path, capsys):
    data = _folder_dataset(tmp_path / "d")
    assert main(["eval", "--dataset", "folder", "--data-root", str(data), "--split", "train", "--bg-threshold", "0.5",
                 "--out", str(tmp_path / "e"), *TINY]) == 2
    assert "no background class" in capsys.readouterr().err


def test_segment_bad_vocabulary(tmp_path, capsys):
    img = tmp_path / "a.png"
    Image.new("RGB", (16, 16)).save(img)
    assert main(["segment", str(img), "--labels", " , ", "--out", str(tmp_path / "o"), *TINY]) == 2
    assert "empty" in capsys.readouterr().err
    assert main(["segment", str(img), "--out", str(tmp_path / "o"), *TINY]) == 2
    empty = tmp_path / "labels.txt"
    empty.write_text("\n# nothing\n")
    assert main(["segment", str(img), "--labels-file", str(empty), "--out", str(tmp_path / "o"), *TINY]) == 2


def test_eval_camvid_val(camvid_root, tmp_path):
    out = tmp_path / "out"
    code = main(["eval", "--dataset", "camvid", "--data-root", str(camvid_root), "--split", "val",
                 "--out", str(out), "--save-predictions", *TINY])
    assert code == 0
    res = json.loads((out / "results.json").read_text())
    for key in ("mIoU", "pAcc", "mAcc", "fwIoU", "per_class"):
        assert key in res
    assert res["num_images"] == 101 and res["num_skipped"] == 0
    assert len(res["per_class"]) == 11 and "sky" in res["per_class"]
    assert 0 <= res["mIoU"] <= 100 and 0 <= res["pAcc"] <= 100
    assert res["dataset"] == "camvid" and res["model"] == "tiny-vit" and res["mode"] == "pixelclip"
    preds = sorted(p.stem for p in (out / "predictions").glob("*.png"))
    stems = sorted(line.split()[0].split("/")[-1].rsplit(".", 1)[0]
                   for line in (camvid_root / "val.txt").read_text().splitlines() if line.strip())
    assert preds == stems
    assert (out / "results.md").is_file() and (out / "per_class_iou.png").is_file()


def test_eval_skips_bad_images_and_counts_them(tmp_path):
    root = _folder_dataset(tmp_path / "ds")
    (root / "images" / "im1.png").write_bytes(b"\x89PNG garbage")
    out = tmp_path / "out"
    assert main(["eval", "--dataset", "folder", "--data-root", str(root), "--out", str(out),
                 "--protocol", "slide", "--mode", "naclip", *TINY]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["num_images"] == 2 and res["num_skipped"] == 1
    assert "im1.png" in res["skipped"][0]["image"]


def test_eval_bad_inputs(tmp_path, capsys):
    root = _folder_dataset(tmp_path / "ds")
    out = str(tmp_path / "out")
    assert main(["eval", "--dataset", "nope", "--data-root", str(root), "--out", out, *TINY]) == 2
    assert main(["eval", "--dataset", "folder", "--data-root", str(root), "--out", out,
                 "--model", "no-such-model", "--pretrained", "none"]) == 2
    assert main(["eval", "--dataset", "folder", "--data-root", str(root), "--out", out,
                 "--mode", "dreamclip", *TINY]) == 2
    capsys.readouterr()
    lab = np.array(Image.open(root / "labels" / "im2.png"))
    lab[3, 3] = 7  # only classes 0..2 exist
    Image.fromarray(lab).save(root / "labels" / "im2.png")
    assert main(["eval", "--dataset", "folder", "--data-root", str(root), "--out", out, *TINY]) == 2
    assert "im2.png" in capsys.readouterr().err


def test_models_lists(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "tiny-vit" in out and "ViT-B-16" in out and "openai" in out
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert any(r["name"] == "convnext_base_w_320" for r in rows)


def test_console_script_help():
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0


def test_random_model_is_seeded(tmp_path):
    """--pretrained none gives the same model (and scores) on every run for a given --seed."""
    root = _folder_dataset(tmp_path / "ds")
    scores = []
    for run, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        out = tmp_path / run
        assert main(["eval", "--dataset", "folder", "--data-root", str(root), "--out", str(out),
                     "--seed", seed, *TINY]) == 0
        scores.append(json.loads((out / "results.json").read_text())["per_class"])
    assert scores[0] == scores[1]
    assert scores[0] != scores[2]


def test_batch_size_default_is_per_device_and_protocol():
    """No --batch-size: 1 image per batch for squash on a CPU (batch 8 lost to batch 1 there,
    segment.default_batch_size), 8 windows for slide; an explicit value is kept."""
    from labelless.cli import _build, build_parser

    def batch(*extra):
        args = build_parser().parse_args(["segment", "x.png", "--labels", "sky,car", "--out", "o", *TINY, *extra])
        return _build(args, ["sky", "car"])[1].batch_size

    assert batch("--protocol", "squash") == 1
    assert batch("--protocol", "slide") == 8
    assert batch("--protocol", "squash", "--batch-size", "4") == 4
