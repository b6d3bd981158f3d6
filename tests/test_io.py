"""One place for image reading, folder expansion, devices and the bounded prefetch."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from PIL import Image

from labelless.errors import ImageError, MissingFileError
from labelless.io import expand_images, load_image, pick_device, prefetch


def test_prefetch_keeps_order_and_never_runs_more_than_its_bound_ahead():
    lock, state = threading.Lock(), {"started": 0, "consumed": 0, "ahead": 0}

    def load(i):
        with lock:
            state["started"] += 1
            state["ahead"] = max(state["ahead"], state["started"] - state["consumed"])
        return i * i

    out = []
    for value in prefetch(range(40), load, depth=3, workers=2):
        time.sleep(0.002)  # a slow consumer: the loader would race ahead if it could
        out.append(value)
        with lock:
            state["consumed"] += 1
    assert out == [i * i for i in range(40)]
    assert state["ahead"] <= 3 + 1, state  # the bound, plus the item the consumer holds


def test_prefetch_passes_errors_through_in_order():
    def load(i):
        if i == 2:
            raise ImageError("bad 2")
        return i

    got = prefetch(range(5), load, depth=2)
    assert [next(got), next(got)] == [0, 1]
    with pytest.raises(ImageError, match="bad 2"):
        next(got)


def test_expand_images_and_load(tmp_path):
    Image.new("RGB", (5, 4)).save(tmp_path / "b.png")
    Image.new("RGB", (5, 4)).save(tmp_path / "a.jpg")
    (tmp_path / "._a.jpg").write_bytes(b"resource fork")  # hidden: not an image
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "sub").mkdir()
    Image.new("RGB", (5, 4)).save(tmp_path / "sub" / "c.webp")
    assert [p.name for p in expand_images([tmp_path])] == ["a.jpg", "b.png"]
    assert [p.name for p in expand_images([tmp_path], recursive=True)] == ["a.jpg", "b.png", "c.webp"]
    assert load_image(tmp_path / "a.jpg").shape == (3, 4, 5)
    with pytest.raises(MissingFileError, match="nowhere"):
        expand_images([tmp_path / "nowhere"])


def test_pick_device():
    from labelless.errors import SettingError

    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(SettingError, match="unknown device"):
        pick_device("gpu")
    if torch.cuda.is_available():
        assert pick_device("cuda", local_rank=0) == torch.device("cuda", 0)  # bare cuda: this rank's GPU
    else:
        with pytest.raises(SettingError, match="0 CUDA device"):
            pick_device("cuda")
