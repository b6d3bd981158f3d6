"""Image-text pair sources: img2dataset webdataset shards (their real layout), CSV / TSV /
JSONL caption files, streamed across ranks and resumed; unreadable samples skipped."""

from __future__ import annotations

import io
import json
import tarfile
from functools import partial

import numpy as np
import pytest
import torch
from PIL import Image

from labelless.data.pairs import CaptionFileDataset, collate_pairs, crop_pair
from labelless.data.shards import iter_pair_shards
from labelless.data.stream import PairShardStream
from labelless.errors import ConfigError, DatasetError, MissingFileError


def _jpeg(seed: int, size=(24, 32)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def make_img2dataset_shard(path, start: int = 0, n: int = 5, broken: int | None = None,
                           no_caption: int | None = None):
    """A shard as img2dataset writes it: <key>.jpg, <key>.txt, <key>.json per sample, in order."""
    with tarfile.open(path, "w") as tar:
        for i in range(start, start + n):
            key = f"{i:09d}"
            caption = "" if i == no_caption else f"a photo number {i}"
            members = {"jpg": b"\xff\xd8broken" if i == broken else _jpeg(i),
                       "txt": caption.encode(),
                       "json": json.dumps({"key": key, "caption": caption, "status": "success"}).encode()}
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def test_img2dataset_shard_reader(tmp_path):
    shard = make_img2dataset_shard(tmp_path / "00000.tar", n=5, broken=2, no_caption=3)
    with pytest.warns(UserWarning, match="000000002"):
        items = list(iter_pair_shards([shard]))
    assert [k for k, _ in items] == ["000000000", "000000001", "000000004"]  # broken and captionless skipped
    image, caption = items[0][1]
    assert image.dtype == torch.uint8 and image.shape == (3, 24, 32) and caption == "a photo number 0"
    with pytest.raises(DatasetError, match="000000003 has no caption"):
        list(iter_pair_shards([make_img2dataset_shard(tmp_path / "b.tar", n=5, no_caption=3)], on_error="raise"))
    with pytest.raises(MissingFileError, match="nowhere.tar"):
        iter_pair_shards([tmp_path / "nowhere.tar"])


def _take(stream, n):
    it = iter(stream)
    return [next(it) for _ in range(n)]


def test_pair_stream_splits_ranks_and_resumes(tmp_path):
    shards = [str(make_img2dataset_shard(tmp_path / f"{s:05d}.tar", start=10 * s, n=4)) for s in range(2)]
    transform = partial(crop_pair, size=16, scale=(0.5, 1.0), hflip=True)

    def stream(rank, world, start=0):
        return PairShardStream(shards, transform, 2, 0, rank, world, start_batches=start)

    first = _take(stream(0, 1), 10)  # 8 samples per epoch, then the next epoch
    assert len({s["name"] for s in first[:8]}) == 8 and first[8]["name"] in {s["name"] for s in first[:8]}
    resumed = _take(stream(0, 1, start=1), 4)  # a run that consumed one batch of 2
    for a, b in zip(resumed, first[2:6]):
        assert a["name"] == b["name"] and torch.equal(a["image"], b["image"]) and a["caption"] == b["caption"]
    r0 = {s["name"] for s in _take(stream(0, 2), 4)}
    r1 = {s["name"] for s in _take(stream(1, 2), 4)}
    assert len(r0) == 4 and len(r1) == 4 and not r0 & r1  # one shard each


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
def test_caption_files(tmp_path, suffix):
    for i in range(2):
        (tmp_path / f"im{i}.jpg").write_bytes(_jpeg(i))
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    rows = [("im0.jpg", "a red thing"), ("bad.jpg", "unreadable"), ("im1.jpg", "a blue thing")]
    if suffix == ".jsonl":
        text = "".join(json.dumps({"path": p, "text": c}) + "\n" for p, c in rows)
    else:
        sep = "\t" if suffix == ".tsv" else ","
        text = f"path{sep}text\n" + "".join(f"{p}{sep}{c}\n" for p, c in rows)
    f = tmp_path / f"pairs{suffix}"
    f.write_text(text)
    ds = CaptionFileDataset(f, None, 16, image_column="path", caption_column="text")
    with pytest.warns(UserWarning, match="bad.jpg"):
        batch = collate_pairs([ds[(i, i)] for i in range(3)])
    assert batch["caption"] == ["a red thing", "a blue thing"] and batch["skipped"] == 1
    assert batch["image"].shape == (2, 3, 16, 16) and batch["name"] == ["im0", "im1"]
    with pytest.raises(ConfigError, match="caption"):
        CaptionFileDataset(f, None, 16, image_column="path", caption_column="caption")
