"""The error policy of the command line: bad input (a ``LabellessError``) is one line on
stderr and exit status 2; an internal error keeps its traceback (it propagates)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from labelless.cli import main
from labelless.errors import LabellessError

TINY = ["--model", "tiny-vit", "--pretrained", "none"]


def _bad(argv, capsys, match: str) -> None:
    """Exit 2; on stderr, besides progress bars, exactly one line: the error, naming ``match``."""
    assert main(argv) == 2
    lines = [ln for ln in capsys.readouterr().err.replace("\r", "\n").splitlines()
             if ln.strip() and "it/s]" not in ln and "img/s]" not in ln]
    assert len(lines) == 1 and lines[0].startswith("labelless ") and match in lines[0], lines


def _folder(root, label_value: int = 1):
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "classes.txt").write_text("sky\nroad\n")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "images" / "a.png")
    Image.fromarray(np.full((8, 8), label_value, np.uint8)).save(root / "labels" / "a.png")
    return root


def test_bad_image_is_one_line_and_exit_2(tmp_path, capsys):
    """Training skips unreadable images (warned by name); when nothing can be read it stops."""
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (tmp_path / "caps.jsonl").write_text(json.dumps({"image": "broken.jpg", "caption": "a cat"}) + "\n")
    _bad(["train", "clip", f"run_dir={tmp_path / 'run'}", "data=captions", f"captions={tmp_path / 'caps.jsonl'}",
          "batch_size=1", "max_steps=1", "num_workers=0", "tensorboard=false", "device=cpu"], capsys,
         "no readable sample")


def test_bad_label_is_one_line_and_exit_2(tmp_path, capsys):
    root = _folder(tmp_path / "data", label_value=7)  # class 7 of a 2-class dataset
    _bad(["eval", "--dataset", "folder", "--data-root", str(root), "--out", str(tmp_path / "o"), *TINY],
         capsys, "a.png")


def test_bad_config_is_one_line_and_exit_2(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("lr: 1e-4\nno_such_key: 3\n")
    _bad(["train", "pixelclip", "--config", str(cfg)], capsys, "no_such_key")
    cfg.write_text("batch_size: many\n")
    _bad(["train", "clip", "--config", str(cfg)], capsys, "batch_size")


def test_bad_checkpoint_is_one_line_and_exit_2(tmp_path, capsys):
    root = _folder(tmp_path / "data")
    bad = tmp_path / "weights.pt"
    bad.write_bytes(b"not a checkpoint")
    _bad(["eval", "--dataset", "folder", "--data-root", str(root), "--out", str(tmp_path / "o"),
          "--model", "tiny-vit", "--pretrained", str(bad)], capsys, "weights.pt")


def test_bad_setting_is_one_line_and_exit_2(tmp_path, capsys):
    img = tmp_path / "a.png"
    Image.new("RGB", (16, 16)).save(img)
    _bad(["segment", str(img), "--labels", "sky", "--out", str(tmp_path / "o"), "--mode", "nomode", *TINY],
         capsys, "nomode")
    _bad(["segment", str(img), "--labels", "sky", "--out", str(tmp_path / "o"), "--model", "ViT-Nope",
          "--pretrained", "none"], capsys, "ViT-Nope")


def test_internal_error_keeps_its_traceback(tmp_path, monkeypatch):
    """A bug (here: a ValueError deep inside) is not turned into 'bad input'."""
    import labelless.segment

    def broken(*args, **kwargs):
        raise ValueError("an internal invariant failed")

    monkeypatch.setattr(labelless.segment, "upsample_labels", broken)
    img = tmp_path / "a.png"
    Image.new("RGB", (16, 16)).save(img)
    with pytest.raises(ValueError, match="internal invariant") as info:
        main(["segment", str(img), "--labels", "sky", "--out", str(tmp_path / "o"), *TINY])
    assert not isinstance(info.value, LabellessError)


def test_missing_extra_says_which_pip_install(monkeypatch):
    import sys

    from labelless.errors import MissingExtraError, require

    monkeypatch.setitem(sys.modules, "webdataset", None)  # makes `import webdataset` fail
    with pytest.raises(MissingExtraError, match=r"SA-1B shards needs webdataset.*pip install 'labelless\[masks\]'"):
        require("webdataset", "SA-1B shards")
