"""Tiny fabricated training data for the training tests: a mask store, an SA-1B shard,
a random DINO folder, and a PixelCLIP config small enough for a CPU step in well under
a second."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

COLOURS = np.array([[200, 50, 50], [50, 200, 50], [50, 50, 200], [220, 220, 40]], dtype=np.uint8)


def label_map(rng: np.random.Generator, h: int = 48, w: int = 64) -> np.ndarray:
    """Up to 4 regions: two vertical bands, a block, a stripe."""
    lab = np.zeros((h, w), np.int64)
    lab[:, int(rng.integers(w // 4, 3 * w // 4)):] = 1
    lab[int(rng.integers(h // 4, 3 * h // 4)):, : w // 3] = 2
    lab[: h // 6, w // 2:] = 3
    return lab


def picture(lab: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return (COLOURS[lab].astype(np.int64) + rng.integers(0, 30, (*lab.shape, 3))).clip(0, 255).astype(np.uint8)


CLASSES = ["red thing", "green thing", "blue thing", "yellow thing"]


def make_store(root: Path, n: int = 6, seed: int = 0) -> Path:
    """A labelless mask store (``root/store``) of ``n`` synthetic 48×64 images with one
    mask per region; ``root`` is also a ``folder`` benchmark (images/, labels/, classes.txt)."""
    from labelless.masks.store import create_store, write_masks

    rng = np.random.default_rng(seed)
    store = root / "store"
    create_store(store, "synthetic", {})
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(exist_ok=True)
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    for i in range(n):
        lab = label_map(rng)
        path = root / "images" / f"im{i}.png"
        Image.fromarray(picture(lab, rng)).save(path)
        Image.fromarray(lab.astype(np.uint8)).save(root / "labels" / f"im{i}.png")
        write_masks(store, f"im{i}", path, np.stack([lab == c for c in np.unique(lab)]))
    return store


def make_sa1b_tar(path: Path, n: int = 4, seed: int = 1) -> Path:
    """An SA-1B-style shard: ``sa_<i>.jpg`` + ``sa_<i>.json`` (COCO RLE annotations)."""
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for i in range(n):
            lab = label_map(rng)
            buf = io.BytesIO()
            Image.fromarray(picture(lab, rng)).save(buf, format="JPEG", quality=95)
            anns = []
            for c in np.unique(lab):
                rle = mask_utils.encode(np.asfortranarray((lab == c).astype(np.uint8)))
                anns.append({"id": int(c), "segmentation": {"size": list(rle["size"]),
                                                            "counts": rle["counts"].decode()},
                             "area": int((lab == c).sum()), "bbox": [0, 0, 1, 1]})
            meta = json.dumps({"image": {"image_id": i, "width": lab.shape[1], "height": lab.shape[0],
                                         "file_name": f"sa_{i}.jpg"}, "annotations": anns}).encode()
            for name, data in ((f"sa_{i}.jpg", buf.getvalue()), (f"sa_{i}.json", meta)):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def save_tiny_dino(folder: Path) -> Path:
    """A random DINO v1-style ViT (patch 8, width 32) written with save_pretrained."""
    import torch
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    cfg = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                    image_size=64, patch_size=8)
    ViTModel(cfg, add_pooling_layer=False).save_pretrained(folder)
    return folder


def tiny_values(run_dir: Path, **overrides) -> dict:
    """A PixelCLIP config for tests: tiny-vit at 32 px (4×4 grid), k=4, 16-px masks, batch 2."""
    values = dict(run_dir=str(run_dir), model="tiny-vit", pretrained=None, resolution=32, num_clusters=4,
                  mask_size=16, short_side=48, max_size=96, crop_size=40, batch_size=2, max_steps=4,
                  num_workers=0, log_every=1, checkpoint_every=2, keep_checkpoints=0, device="cpu",
                  tf32=False, tensorboard=False)
    values.update(overrides)
    return values


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread for the tiny models of these tests: on a small shared machine,
    more threads mostly wait for each other (10-100x slower steps)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
