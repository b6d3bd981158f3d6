"""One place for image reading, folder expansion, devices and DataLoader worker loading."""

from __future__ import annotations

import os

import pytest
import torch
from PIL import Image

from labelless.errors import DatasetError, MissingFileError, SettingError
from labelless.io import default_workers, expand_images, load_batches, load_image, pick_device


def _images(folder, n=5):
    """``n`` PNGs of different sizes (``i+3`` × ``2i+4``), each filled with the value ``10·i``."""
    folder.mkdir(exist_ok=True)
    for i in range(n):
        Image.new("RGB", (2 * i + 4, i + 3), (10 * i, 10 * i, 10 * i)).save(folder / f"im{i}.png")
    return [folder / f"im{i}.png" for i in range(n)]


class _Twice:
    """Picklable extra: ``2·i``; a DatasetError naming the item for ``i == bad``."""

    def __init__(self, bad=None):
        self.bad = bad

    def __call__(self, i):
        if i == self.bad:
            raise DatasetError(f"bad label of item {i}")
        return 2 * i


@pytest.mark.parametrize("workers", [0, 2])
def test_load_batches_keeps_order_sizes_and_reports_bad_images(tmp_path, workers):
    paths = _images(tmp_path)
    paths[2].write_bytes(b"\x89PNG garbage")
    batches = list(load_batches(paths, 2, workers, extra=_Twice()))
    assert [len(b) for b in batches] == [2, 2, 1]
    items = [it for b in batches for it in b]
    assert [it["index"] for it in items] == [0, 1, 2, 3, 4]
    assert items[2]["image"] is None and items[2]["extra"] is None and "im2.png" in items[2]["error"]
    for i in (0, 1, 3, 4):
        assert items[i]["error"] is None and items[i]["extra"] == 2 * i
        assert items[i]["image"].dtype == torch.uint8 and tuple(items[i]["image"].shape) == (3, i + 3, 2 * i + 4)
        assert torch.equal(items[i]["image"], load_image(paths[i]))


@pytest.mark.parametrize("workers", [0, 2])
def test_load_batches_raises_a_bad_extra_as_itself(tmp_path, workers):
    got = load_batches(_images(tmp_path), 1, workers, extra=_Twice(bad=1))
    assert next(got)[0]["extra"] == 0
    with pytest.raises(DatasetError, match="bad label of item 1"):
        next(got)
    with pytest.raises(SettingError, match="--workers"):
        next(load_batches([], 1, -1))


def test_default_workers(monkeypatch):
    assert default_workers("cpu") == 0  # measured: workers lose on a small CPU (io.default_workers)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert default_workers("cuda") == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")  # 8 GPUs on the node share the 16 cores
    assert default_workers("cuda:3") == 2


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
