"""``labelless masks ...`` through the top-level CLI, and generate() (resume, bad images).

Bad input must be a LabellessError (one line, exit status 2 from ``labelless.cli.main``);
:func:`bad_input` checks both the exit status and, by calling the command's ``func``
itself, that the error is a LabellessError and not a plain exception.
"""

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("skimage")
pytest.importorskip("pycocotools")

from labelless.cli import main as labelless_main  # noqa: E402
from labelless.errors import (  # noqa: E402
    DatasetError,
    LabellessError,
    MaskStoreError,
    MissingExtraError,
    MissingFileError,
    SettingError,
    WeightsError,
)
from labelless.masks.cli import add_masks_parser  # noqa: E402
from labelless.masks.generate import generate, resolve_params  # noqa: E402
from labelless.masks.store import has_masks, list_names, read_masks  # noqa: E402

H, W = 40, 56


def run(argv: list[str]) -> int:
    """``labelless masks ...`` as the command line runs it."""
    return labelless_main(argv)


def leaf_error(argv: list[str]) -> LabellessError:
    """The exception the command's ``func`` raises (it must be a LabellessError)."""
    parser = argparse.ArgumentParser(prog="labelless")
    add_masks_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    with pytest.raises(LabellessError) as err:
        args.func(args)
    return err.value


def bad_input(argv: list[str], capsys, match: str, error: type = LabellessError) -> str:
    """Bad input: exit status 2 and one line on stderr matching ``match``; the command
    itself raises ``error`` (a LabellessError), so the top-level CLI shows no traceback."""
    capsys.readouterr()
    assert run(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and re.search(match, err), err
    exc = leaf_error(argv)
    assert isinstance(exc, error) and re.search(match, str(exc)) and "\n" not in str(exc)
    return err


def _label_map(i: int) -> np.ndarray:
    lab = np.zeros((H, W), np.uint8)  # 0 "sky" on top
    split = 20 + 4 * i
    lab[split:, : W // 2] = 1  # "road" bottom left
    lab[split:, W // 2:] = 2  # "car" bottom right
    return lab


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A ``folder`` benchmark: 3 images of 3 flat colour regions with their labels."""
    root = tmp_path_factory.mktemp("fab")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    (root / "classes.txt").write_text("sky\nroad\ncar\n")
    colours = np.array([[70, 130, 220], [90, 90, 90], [220, 30, 30]], np.uint8)
    rng = np.random.default_rng(0)
    for i in range(3):
        lab = _label_map(i)
        img = colours[lab].astype(np.int16) + rng.integers(-6, 7, (H, W, 3))
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(root / "images" / f"im{i}.png")
        Image.fromarray(lab).save(root / "labels" / f"im{i}.png")
    (root / "broken").mkdir()
    (root / "broken" / "bad.jpg").write_bytes(b"not an image")
    return root


def _images(dataset: Path) -> list[Path]:
    return sorted((dataset / "images").glob("*.png"))


def test_generate_felzenszwalb_reports_unreadable_and_resumes(dataset, tmp_path, capsys):
    store = tmp_path / "fz"
    argv = ["masks", "generate", "--source", "felzenszwalb", "--images", str(dataset / "images"),
            str(dataset / "broken" / "bad.jpg"), "--out", str(store), "--scale", "300", "--min-size", "40",
            "--quiet", "--json"]
    assert run(argv) == 0
    out, err = capsys.readouterr()
    counts = json.loads(out.strip().splitlines()[-1])
    assert counts["written"] == 3 and counts["unreadable"] == 1 and counts["unreadable_names"] == ["bad.jpg"]
    assert "bad.jpg" in err and "1 unreadable (skipped: bad.jpg)" in out
    assert list_names(store) == ["im0", "im1", "im2"]
    masks, record = read_masks(store, "im0")
    assert masks.dtype == bool and masks.shape[1:] == (H, W) and 2 <= masks.shape[0] <= 6
    assert np.array_equal(masks.sum(0), np.ones((H, W)))  # felzenszwalb partitions the image
    assert Path(record["image"]) == (dataset / "images" / "im0.png").resolve()
    meta = json.loads((store / "store.json").read_text())
    assert meta["source"] == "felzenszwalb" and meta["params"]["scale"] == 300 and meta["params"]["min_size"] == 40
    # second run: everything done is skipped, the bad image is tried (and reported) again
    assert run(argv) == 0
    counts = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert counts["written"] == 0 and counts["skipped_existing"] == 3 and counts["unreadable"] == 1


def test_generate_limit_then_full_run(dataset, tmp_path, capsys):
    store = tmp_path / "slic"
    base = ["masks", "generate", "--source", "slic", "--images", str(dataset / "images"), "--out", str(store),
            "--n-segments", "6", "--quiet", "--json"]
    assert run(base + ["--limit", "1"]) == 0
    assert list_names(store) == ["im0"]
    mtime = (store / "masks" / "im0.json").stat().st_mtime_ns
    capsys.readouterr()
    assert run(base) == 0
    counts = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert counts["written"] == 2 and counts["skipped_existing"] == 1
    assert (store / "masks" / "im0.json").stat().st_mtime_ns == mtime  # not rewritten


def test_generate_resumes_after_a_crash(dataset, tmp_path):
    store = tmp_path / "crash"
    calls = []
    real = None

    def flaky(images):
        calls.append(len(images))
        if len(calls) == 2:
            raise RuntimeError("power cut")
        return [(real(im), None) for im in images]

    from labelless.masks.classical import rgb_kmeans_masks
    real = lambda im: rgb_kmeans_masks(im, k=3)  # noqa: E731
    with pytest.raises(RuntimeError, match="power cut"):
        generate("rgb-kmeans", _images(dataset), store, {"k": 3}, masker=flaky, progress=False, log=None)
    assert list_names(store) == ["im0"]  # the first image was written before the crash
    assert not list((store / "masks").glob(".*"))  # no temp files left behind
    counts = generate("rgb-kmeans", _images(dataset), store, {"k": 3}, progress=False, log=None)
    assert counts["written"] == 2 and counts["skipped_existing"] == 1 and counts["unreadable"] == 0
    assert all(has_masks(store, n) for n in ("im0", "im1", "im2"))
    m0, _ = read_masks(store, "im0")
    assert np.array_equal(m0, rgb_kmeans_masks(torch.from_numpy(np.array(Image.open(_images(dataset)[0])))
                                               .permute(2, 0, 1), k=3))


def test_generate_rejects_bad_input(dataset, tmp_path, capsys):
    out = str(tmp_path / "x")
    bad_input(["masks", "generate", "--source", "slic", "--images", str(dataset / "images"), "--out", out,
               "--k", "4"], capsys, "--k not used by the slic source", SettingError)
    bad_input(["masks", "generate", "--source", "slic", "--images", str(tmp_path / "missing"),
               "--out", out], capsys, "no such image file or folder: .*missing", MissingFileError)
    (tmp_path / "no_images").mkdir()
    bad_input(["masks", "generate", "--source", "slic", "--images", str(tmp_path / "no_images"),
               "--out", out], capsys, "--images: no image files in .*no_images", SettingError)
    with pytest.raises(SystemExit):  # argparse: unknown source
        run(["masks", "generate", "--source", "watershed", "--images", "x", "--out", out])
    for opt, value in (("--limit", "-1"), ("--k", "0"), ("--batch-size", "0")):  # argparse: out of range
        with pytest.raises(SystemExit) as exit_:
            run(["masks", "generate", "--source", "rgb-kmeans", "--images", "x", "--out", out, opt, value])
        assert exit_.value.code == 2 and f"argument {opt}: must be >= " in capsys.readouterr().err
    with pytest.raises(SettingError, match="unknown mask source"):
        resolve_params("watershed")
    with pytest.raises(SettingError, match="unknown dino parameter"):
        resolve_params("dino", {"kk": 3})
    # a store keeps one source
    run(["masks", "generate", "--source", "slic", "--images", str(dataset / "images"), "--out", out,
         "--limit", "1", "--quiet"])
    bad_input(["masks", "generate", "--source", "felzenszwalb", "--images", str(dataset / "images"),
               "--out", out, "--quiet"], capsys, r"holds 'slic' masks; refusing to add 'felzenszwalb'",
              MaskStoreError)
    # a store keeps one setting: other params are refused, the same ones resume
    bad_input(["masks", "generate", "--source", "slic", "--images", str(dataset / "images"), "--out", out,
               "--n-segments", "50", "--quiet"], capsys, "x was made with other slic params .*"
              "n_segments: 100 there, 50 now", MaskStoreError)
    # only unreadable images: nothing done
    assert run(["masks", "generate", "--source", "slic", "--images", str(dataset / "broken"),
                "--out", str(tmp_path / "y"), "--quiet"]) == 1


def test_generate_settings_are_setting_errors(dataset, tmp_path):
    images = _images(dataset)
    for kwargs, match in (({"limit": -1}, "limit"), ({"batch_size": 0}, "batch_size")):
        with pytest.raises(SettingError, match=match):
            generate("rgb-kmeans", images, tmp_path / "s", {"k": 2}, progress=False, log=None, **kwargs)
    (tmp_path / "other").mkdir()
    twin = tmp_path / "other" / images[0].name
    twin.write_bytes(images[0].read_bytes())
    with pytest.raises(SettingError, match="two images share the name 'im0'"):
        generate("rgb-kmeans", [images[0], twin], tmp_path / "s", {"k": 2}, progress=False, log=None)
    with pytest.raises(SettingError, match="k .*must be >= 1"):
        generate("dino", images, tmp_path / "d", {"k": 0, "model": str(tmp_path)}, progress=False, log=None)
    with pytest.raises(SettingError, match="space"):  # a bad masker setting: found before any record
        generate("rgb-kmeans", images, tmp_path / "k", {"space": "hsv"}, progress=False, log=None)
    with pytest.raises(SettingError, match="slic params .*cannot be used"):  # skimage refuses it
        generate("slic", images, tmp_path / "k", {"n_segments": "many"}, progress=False, log=None)
    with pytest.raises(SettingError, match="unknown device 'gpu'"):
        generate("rgb-kmeans", images, tmp_path / "k", {}, device="gpu", progress=False, log=None)
    if not torch.cuda.is_available():
        with pytest.raises(SettingError, match="0 CUDA device"):
            generate("rgb-kmeans", images, tmp_path / "k", {}, device="cuda", progress=False, log=None)
    assert [d for d in ("s", "d", "k") if (tmp_path / d).exists()] == []  # no store was created


def test_generate_dino_tiny_folder(dataset, tmp_path, capsys):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    model = tmp_path / "tiny-dinov2"
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
                             image_size=56, patch_size=14)).save_pretrained(model)
    store = tmp_path / "dino"
    argv = ["masks", "generate", "--source", "dino", "--model", str(model), "--images", str(dataset / "images"),
            "--out", str(store), "--k", "3", "--size", "28", "--features", "keys", "--device", "cpu", "--quiet"]
    assert run(argv) == 0
    assert "3 image(s) written" in capsys.readouterr().out
    for name in list_names(store):
        masks, record = read_masks(store, name)
        assert 1 <= masks.shape[0] <= 3 and masks.shape[1:] == (H, W)
        assert np.array_equal(masks.sum(0), np.ones((H, W)))
        assert record["source"] == "dino"
    params = json.loads((store / "store.json").read_text())["params"]
    assert params["k"] == 3 and params["features"] == "keys" and params["size"] == 28
    assert params["model"] == str(model)
    # offline with an uncached hub name: a clear error, exit code 2
    bad_input(["masks", "generate", "--source", "dino", "--model", "facebook/dino-uncached-xyz", "--images",
               str(dataset / "images"), "--out", str(tmp_path / "d2"), "--quiet"], capsys, "--model DIR",
              WeightsError)
    assert not (tmp_path / "d2").exists()  # no store made with the bad --model: the fixed run is not refused


def test_generate_sam_tiny(dataset, tmp_path, capsys):
    pytest.importorskip("segment_anything")
    from labelless.masks.sam import save_tiny_sam

    ckpt = save_tiny_sam(tmp_path / "tiny_sam.pt")
    store = tmp_path / "sam"
    assert run(["masks", "generate", "--source", "sam", "--sam-checkpoint", str(ckpt), "--sam-model", "tiny",
                "--points-per-side", "3", "--pred-iou-thresh", "0", "--stability-score-thresh", "0",
                "--box-nms-thresh", "1", "--images", str(dataset / "images"), "--out", str(store),
                "--limit", "2", "--quiet"]) == 0
    assert list_names(store) == ["im0", "im1"]
    masks, record = read_masks(store, "im0")
    assert masks.shape[0] >= 1 and all(isinstance(m["score"], float) for m in record["masks"])
    bad_input(["masks", "generate", "--source", "sam", "--images", str(dataset / "images"),
               "--out", str(tmp_path / "sam2")], capsys, "needs a checkpoint", SettingError)


def test_show_writes_one_png_per_image(dataset, tmp_path, capsys):
    store = tmp_path / "fz"
    generate("felzenszwalb", _images(dataset), store, {"scale": 300}, progress=False, log=None)
    out = tmp_path / "show"
    assert run(["masks", "show", "--masks", str(store), "--out", str(out), "--limit", "2"]) == 0
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["im0.png", "im1.png"]
    with Image.open(out / "im0.png") as im:
        assert im.size == (W, H) and im.mode == "RGB"
    assert "2 overlay(s)" in capsys.readouterr().out
    bad_input(["masks", "show", "--masks", str(tmp_path / "nostore"), "--out", str(out)], capsys,
              "nostore is not a mask store", MaskStoreError)


def test_oracle_on_folder_benchmark(dataset, tmp_path, capsys):
    pytest.importorskip("labelless.masks.oracle")
    store = tmp_path / "fz"
    generate("felzenszwalb", _images(dataset)[:2], store, {"scale": 300, "min_size": 40}, progress=False,
             log=None)
    out = tmp_path / "oracle"
    assert run(["masks", "oracle", "--masks", str(store), "--dataset", "folder", "--data-root", str(dataset),
                "--split", "val", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "2 of 3 folder val images had felzenszwalb masks" in text
    res = json.loads((out / "results.json").read_text())
    assert res["num_images_with_masks"] == 2 and res["num_images_in_split"] == 3
    assert res["mIoU"] > 90 and res["pixel_coverage"] == pytest.approx(100.0)
    assert res["mean_masks_per_image"] >= 3
    empty = tmp_path / "empty"
    generate("felzenszwalb", [], empty, {}, progress=False, log=None)
    assert run(["masks", "oracle", "--masks", str(empty), "--dataset", "folder", "--data-root", str(dataset),
                "--out", str(tmp_path / "o2")]) == 1
    bad_input(["masks", "oracle", "--masks", str(store), "--dataset", "camvid", "--data-root",
               str(tmp_path / "nowhere"), "--out", str(tmp_path / "o3")], capsys, "nowhere", DatasetError)
    bad_input(["masks", "oracle", "--masks", str(store), "--dataset", "kitti", "--data-root",
               str(dataset), "--out", str(tmp_path / "o3")], capsys, "unknown benchmark 'kitti'", DatasetError)


def _sa1b_folder(root: Path) -> Path:
    from labelless.masks.store import encode_rle

    root.mkdir()
    for i in range(2):
        img = np.full((H, W, 3), 120, np.uint8)
        Image.fromarray(img).save(root / f"sa_{i}.jpg", quality=95)
        anns = []
        for j, (y0, y1) in enumerate([(0, 20), (20, 40), (5, 10)]):
            m = np.zeros((H, W), bool)
            m[y0:y1, :] = True
            anns.append({"id": j, "segmentation": encode_rle(m), "area": int(m.sum()), "bbox": [0, y0, W, y1 - y0]})
        (root / f"sa_{i}.json").write_text(json.dumps({"image": {"image_id": i, "width": W, "height": H,
                                                                 "file_name": f"sa_{i}.jpg"},
                                                       "annotations": anns}))
    return root


def test_import_sa1b_folder_and_coco(dataset, tmp_path, capsys):
    pytest.importorskip("labelless.masks.readers")
    sa = _sa1b_folder(tmp_path / "sa1b")
    store = tmp_path / "sa_store"
    argv = ["masks", "import", "--sa1b", str(sa), "--out", str(store), "--max-masks", "2", "--quiet"]
    assert run(argv) == 0
    assert "2 image(s) written with 4 masks" in capsys.readouterr().out
    masks, _ = read_masks(store, "sa_0")
    assert masks.shape == (2, H, W) and masks[0].sum() == masks[1].sum() == 20 * W  # the 2 largest
    assert run(argv) == 0  # resume: nothing new, still fine
    assert "0 image(s) written" in capsys.readouterr().out

    coco = {"images": [{"id": 1, "file_name": "im0.png", "height": H, "width": W}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "iscrowd": 0,
                             "segmentation": [[0, 0, 20, 0, 20, 10, 0, 10]], "area": 200, "bbox": [0, 0, 20, 10]}],
            "categories": [{"id": 3, "name": "car"}]}
    (tmp_path / "inst.json").write_text(json.dumps(coco))
    cstore = tmp_path / "coco_store"
    assert run(["masks", "import", "--coco-json", str(tmp_path / "inst.json"), "--coco-images",
                str(dataset / "images"), "--out", str(cstore), "--quiet"]) == 0
    masks, record = read_masks(cstore, "im0")
    assert masks.shape == (1, H, W) and 150 < masks.sum() < 260
    assert json.loads((cstore / "store.json").read_text())["source"] == "coco"
    bad_input(["masks", "import", "--coco-json", str(tmp_path / "inst.json"), "--out", str(cstore)], capsys,
              "--coco-json needs --coco-images", SettingError)
    bad_input(["masks", "import", "--coco-json", str(tmp_path / "nope.json"), "--coco-images",
               str(dataset / "images"), "--out", str(tmp_path / "c2")], capsys, r"nope\.json not found",
              MissingFileError)
    bad_input(["masks", "import", "--sa1b", str(tmp_path / "sa_missing.tar"), "--out", str(store)], capsys,
              "--sa1b: no such folder or tar file: .*sa_missing.tar", MissingFileError)


def test_import_refuses_a_store_made_with_other_params(tmp_path, capsys):
    sa = _sa1b_folder(tmp_path / "sa1b")
    store = tmp_path / "store"
    base = ["masks", "import", "--sa1b", str(sa), "--out", str(store), "--quiet"]
    assert run(base + ["--max-masks", "2", "--limit", "1"]) == 0
    assert list_names(store) == ["sa_0"]
    # other params: refused, naming the store and each parameter that differs; nothing is added
    err = bad_input(base + ["--max-masks", "3"], capsys, r"max_masks: 2 there, 3 now", MaskStoreError)
    assert f"mask store {store} was made with other sa1b params" in err
    bad_input(base + ["--max-masks", "2", "--short-side", "20"], capsys, r"short_side: None there, 20 now",
              MaskStoreError)
    assert list_names(store) == ["sa_0"]
    # another source: refused too
    coco = {"images": [{"id": 1, "file_name": "sa_1.jpg", "height": H, "width": W}],
            "annotations": [{"id": 1, "image_id": 1, "segmentation": [[0, 0, 20, 0, 20, 10, 0, 10]]}]}
    (tmp_path / "inst.json").write_text(json.dumps(coco))
    bad_input(["masks", "import", "--coco-json", str(tmp_path / "inst.json"), "--coco-images", str(sa),
               "--out", str(store), "--max-masks", "2", "--quiet"], capsys,
              "holds 'sa1b' masks; refusing to add 'coco'", MaskStoreError)
    # the same params resume, also from other inputs (the inputs are not params)
    assert run(base + ["--max-masks", "2"]) == 0
    assert "1 image(s) written with 2 masks, 1 already done" in capsys.readouterr().out
    assert json.loads((store / "store.json").read_text())["params"] == {"short_side": None, "max_masks": 2}


def test_missing_extra_names_the_pip_install(dataset, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "skimage.segmentation", None)  # as if scikit-image were not installed
    err = leaf_error(["masks", "generate", "--source", "slic", "--images", str(dataset / "images"),
                      "--out", str(tmp_path / "s"), "--quiet"])
    assert isinstance(err, MissingExtraError)
    assert "scikit-image" in str(err) or "skimage" in str(err)
    assert "pip install 'labelless[masks]'" in str(err)


def test_masks_cli_does_not_import_the_top_level_cli():
    code = ("import sys, labelless.masks.cli as m; "
            "assert 'labelless.cli' not in sys.modules, 'labelless.cli imported'; "
            "assert 'torch' not in sys.modules, 'torch imported to build the parser'; "
            "assert not hasattr(m, 'main')")
    subprocess.run([sys.executable, "-c", code], check=True)
