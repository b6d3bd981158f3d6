"""``labelless masks generate`` in two gloo processes: one store, each image written exactly once
by one rank, the same records as one process (byte for byte), bad images counted, and resuming
writes only what is missing. DINO k-means records do not depend on the batch size or the
number of ranks either."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _dist import run_ranks
from PIL import Image

pytest.importorskip("skimage")
pytest.importorskip("pycocotools")

from test_masks_dino import save_tiny_dinov2  # noqa: E402

from labelless.cli import main  # noqa: E402
from labelless.masks.store import list_names  # noqa: E402

# every write_masks call of a rank is appended to LOG/rank<RANK> (one record name a line)
_PRELUDE = """
import os
import labelless.masks.generate as _generate
_write = _generate.write_masks
def _logged(store, name, *args, **kwargs):
    with open(os.path.join({log!r}, "rank" + os.environ["RANK"]), "a") as f:
        f.write(name + "\\n")
    return _write(store, name, *args, **kwargs)
_generate.write_masks = _logged
"""


def _images(folder, n: int = 6):
    """``n`` random RGB images of varied sizes and one unreadable ``im3_broken.png`` (4th by name)."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (20 + 3 * i, 28 + i, 3), dtype=np.uint8)).save(folder / f"im{i}.png")
    (folder / "im2_broken.png").write_bytes(b"\x89PNG garbage")
    return folder


def _records(store) -> dict:
    return {p.name: p.read_bytes() for p in sorted((store / "masks").iterdir())}


def _sharded(tmp_path, argv, log_name: str) -> tuple[dict, dict]:
    """Run ``argv`` in 2 ranks; (rank 0's JSON counts, {rank: names it wrote})."""
    log = tmp_path / log_name
    log.mkdir()
    outputs = run_ranks(tmp_path, argv, prelude=_PRELUDE.format(log=str(log)))
    counts = json.loads(outputs[0].strip().splitlines()[-1])
    assert "store:" not in outputs[1]  # rank 0 alone logs the summary
    written = {r: (log / f"rank{r}").read_text().split() if (log / f"rank{r}").exists() else [] for r in (0, 1)}
    return counts, written


def test_two_processes_write_each_image_once_into_one_store(tmp_path, capsys):
    images = _images(tmp_path / "images")
    argv = ["masks", "generate", "--source", "rgb-kmeans", "--k", "3", "--images", str(images), "--quiet", "--json"]
    assert main([*argv, "--out", str(tmp_path / "one"), "--workers", "2"]) == 0
    assert "im2_broken.png" in capsys.readouterr().err
    two = tmp_path / "two"
    counts, written = _sharded(tmp_path, [*argv, "--out", str(two), "--workers", "1"], "log1")
    names = ["im0", "im1", "im2", "im3", "im4", "im5"]
    assert sorted(written[0] + written[1]) == names  # every image once, by one rank
    # rank r takes images r::2 of the sorted list im0 im1 im2 im2_broken im3 im4 im5
    assert written[0] == ["im0", "im2", "im3", "im5"] and written[1] == ["im1", "im4"]
    assert counts["written"] == 6 and counts["unreadable"] == 1 and counts["unreadable_names"] == ["im2_broken.png"]
    assert counts["images"] == 7 and counts["skipped_existing"] == 0 and counts["masks"] >= 6
    assert list_names(two) == names and not list((two / "masks").glob(".*"))  # no temp files left
    assert _records(two) == _records(tmp_path / "one")
    assert (two / "store.json").read_bytes() == (tmp_path / "one" / "store.json").read_bytes()

    for name in ("im1", "im4"):  # interrupted: resume under two processes writes only these
        (two / "masks" / f"{name}.json").unlink()
    counts, written = _sharded(tmp_path, [*argv, "--out", str(two)], "log2")
    assert sorted(written[0] + written[1]) == ["im1", "im4"]
    assert counts["written"] == 2 and counts["skipped_existing"] == 4 and counts["unreadable"] == 1
    assert _records(two) == _records(tmp_path / "one")


def test_dino_records_do_not_depend_on_batch_size_or_ranks(tmp_path):
    # same-size images, so they are batched together: with 4 a batch, 1 a batch, and 2 ranks
    # of 3 images the batches differ, and every image still gets the same masks
    folder = tmp_path / "same_size"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(folder / f"s{i}.png")
    model = save_tiny_dinov2(tmp_path / "dino")
    argv = ["masks", "generate", "--source", "dino", "--model", str(model), "--k", "4", "--size", "42",
            "--images", str(folder), "--device", "cpu", "--quiet", "--json"]
    assert main([*argv, "--out", str(tmp_path / "b4"), "--batch-size", "4"]) == 0
    assert main([*argv, "--out", str(tmp_path / "b1"), "--batch-size", "1"]) == 0
    counts, written = _sharded(tmp_path, [*argv, "--out", str(tmp_path / "two"), "--batch-size", "2"], "log")
    assert sorted(written[0] + written[1]) == [f"s{i}" for i in range(6)] and counts["written"] == 6
    assert _records(tmp_path / "b1") == _records(tmp_path / "b4") == _records(tmp_path / "two")
