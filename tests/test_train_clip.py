"""``labelless train clip``: captions from label maps, the duplicate-aware contrastive
loss, and a short run on a fabricated labelled folder whose loss goes down."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _train_fixtures import one_thread  # noqa: F401 (autouse: one intra-op thread)
from PIL import Image

from labelless.data.pairs import CaptionFileDataset, LabelledCaptionDataset, caption_for_labels, join_names
from labelless.train.clip.config import ClipConfig
from labelless.train.clip.loop import train_clip
from labelless.train.config import make_config
from labelless.train.losses import info_nce

CLASSES = ["road", "car, automobile", "sky", "tree"]
COLOURS = [(128, 64, 128), (200, 20, 20), (70, 130, 180), (20, 160, 20)]


def test_caption_builder_on_a_known_label_map():
    label = np.full((10, 10), 255, dtype=np.int64)
    label[:5] = 2  # sky 50 px
    label[5:9] = 0  # road 40 px
    label[9, :3] = 1  # car 3 px
    assert caption_for_labels(label, CLASSES) == "a photo of sky, road and car"  # largest first, 1st synonym
    assert caption_for_labels(label, CLASSES, max_names=2) == "a photo of sky and road"
    # car is 3 of the 93 labelled pixels (3.2 %): dropped at 5 %, ignore pixels not counted
    assert caption_for_labels(label, CLASSES, min_fraction=0.05) == "a photo of sky and road"
    assert caption_for_labels(label[:5], CLASSES, template="{} only") == "sky only"
    assert caption_for_labels(np.full((4, 4), 255), CLASSES) is None
    assert join_names(["a", "b", "c", "d"]) == "a, b, c and d"
    # class order: the same classes, the same caption, whatever their areas
    assert caption_for_labels(label, CLASSES, order="class") == "a photo of road, car and sky"


def test_duplicate_captions_are_not_negatives():
    torch.manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    scale = torch.tensor(10.0)
    ids = torch.tensor([7, 7, 3, 5])
    masked = info_nce(img, txt, scale, ids)
    # reference: drop the 0<->1 pair from each softmax by hand
    logits = scale * img @ txt.t()
    def ce(rows):
        total = 0.0
        for i in range(4):
            keep = [j for j in range(4) if j == i or ids[j] != ids[i]]
            total += -torch.log_softmax(rows[i, keep], 0)[keep.index(i)]
        return total / 4
    assert torch.allclose(masked, 0.5 * (ce(logits) + ce(logits.t())), atol=1e-6)
    # and it differs from the plain loss (where they would be negatives)
    assert not torch.allclose(masked, info_nce(img, txt, scale, None))
    # identical duplicate pairs: the masked loss does not push them apart
    same = info_nce(img[[0, 0]], txt[[0, 0]], scale, torch.tensor([1, 1]))
    assert same.abs() < 1e-6


def make_folder(root, n: int = 8, size: int = 48):
    """A labelled ``folder`` benchmark: each image is 2-3 flat colour regions, one per class."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    for i in range(n):
        label = np.zeros((size, size), dtype=np.uint8)
        a, b = rng.choice(len(CLASSES), 2, replace=False)
        label[:] = a
        cut = int(rng.integers(size // 4, 3 * size // 4))
        label[:, cut:] = b
        img = np.array(COLOURS, dtype=np.uint8)[label]
        Image.fromarray(img).save(root / "images" / f"im{i}.png")
        Image.fromarray(label).save(root / "labels" / f"im{i}.png")
    return root


def test_labelled_dataset_is_seeded(tmp_path):
    from labelless.data.benchmarks import load_benchmark

    bench = load_benchmark("folder", make_folder(tmp_path / "data", n=2), "train")
    ds = LabelledCaptionDataset(bench, size=32, crops_per_image=3, min_fraction=0.0)
    assert len(ds) == 6
    a, b = ds[(4, 123)], ds[(4, 123)]
    assert torch.equal(a["image"], b["image"]) and a["caption"] == b["caption"]
    assert a["image"].shape == (3, 32, 32) and 0 <= a["image"].min() and a["image"].max() <= 1
    caps = {ds[(0, s)]["caption"] for s in range(12)}
    assert len(caps) > 1  # crops make the captions vary
    assert all(c.startswith("a photo of ") for c in caps)


def test_caption_file_dataset(tmp_path):
    Image.new("RGB", (20, 16), (1, 2, 3)).save(tmp_path / "a.png")
    (tmp_path / "caps.jsonl").write_text(json.dumps({"image": "a.png", "captions": ["x", "y"]}) + "\n\n")
    ds = CaptionFileDataset(tmp_path / "caps.jsonl", None, size=16)
    item = ds[(0, 5)]
    assert item["image"].shape == (3, 16, 16) and item["caption"] in ("x", "y")
    (tmp_path / "bad.jsonl").write_text('{"img": 1}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        CaptionFileDataset(tmp_path / "bad.jsonl", None, size=16)


def test_a_few_steps_make_the_loss_go_down(tmp_path):
    from labelless.models.clip import build_clip

    torch.manual_seed(0)
    data = make_folder(tmp_path / "data")
    cfg = make_config(ClipConfig, dict(
        run_dir=str(tmp_path / "run"), model="tiny-vit", data="benchmark", dataset="folder",
        data_root=str(data), split="train", batch_size=8, max_steps=30, lr=2e-3, warmup_steps=2,
        weight_decay=0.0, num_workers=0, log_every=1, checkpoint_every=1000, tensorboard=True,
        crops_per_image=2, device="cpu", min_class_fraction=0.1))
    exported = train_clip(cfg)
    losses = read_scalars(tmp_path / "run" / "tb", "train/loss")
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses
    assert (tmp_path / "run" / "config.yaml").is_file()
    assert exported == tmp_path / "run" / "clip.pt"
    model = build_clip("tiny-vit", str(exported))  # loadable as a labelless CLIP checkpoint
    assert model.kind == "vit"


def read_scalars(tb_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir))
    acc.Reload()
    return [e.value for e in acc.Scalars(tag)]


def _gather_worker(rank: int, port: int, out: str) -> None:
    import os

    import torch.distributed as dist

    from labelless.data.pairs import caption_id
    from labelless.train.losses import gather_features, gather_ids

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.manual_seed(0)
    img_proj, txt_proj = torch.nn.Linear(6, 4), torch.nn.Linear(6, 4)
    x, y = torch.randn(6, 6), torch.randn(6, 6)
    caps = ["a", "b", "a", "c", "d", "b"]
    part = slice(3 * rank, 3 * rank + 3)
    img = torch.nn.functional.normalize(img_proj(x[part]), dim=-1)
    txt = torch.nn.functional.normalize(txt_proj(y[part]), dim=-1)
    ids = torch.tensor([caption_id(c) for c in caps[part]])
    loss = info_nce(gather_features(img), gather_features(txt), torch.tensor(5.0), gather_ids(ids))
    loss.backward()
    grads = [p.grad for p in (*img_proj.parameters(), *txt_proj.parameters())]
    for g in grads:  # what DistributedDataParallel does
        dist.all_reduce(g)
        g /= 2
    if rank == 0:
        torch.save({"loss": loss.detach(), "grads": grads}, f"{out}/ddp.pt")
    dist.destroy_process_group()


def test_gathered_loss_equals_the_full_batch_loss(tmp_path):
    """Two ranks with half a batch each (negatives and caption ids gathered, gradients
    averaged) get the loss and gradients of one process with the whole batch."""
    import socket

    import torch.multiprocessing as mp

    from labelless.data.pairs import caption_id

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_gather_worker, args=(port, str(tmp_path)), nprocs=2, join=True,
                       start_method="fork" if "fork" in mp.get_all_start_methods() else "spawn")
    torch.manual_seed(0)
    img_proj, txt_proj = torch.nn.Linear(6, 4), torch.nn.Linear(6, 4)
    x, y = torch.randn(6, 6), torch.randn(6, 6)
    ids = torch.tensor([caption_id(c) for c in ["a", "b", "a", "c", "d", "b"]])
    loss = info_nce(torch.nn.functional.normalize(img_proj(x), dim=-1),
                                 torch.nn.functional.normalize(txt_proj(y), dim=-1), torch.tensor(5.0), ids)
    loss.backward()
    got = torch.load(tmp_path / "ddp.pt", weights_only=True)
    assert torch.allclose(got["loss"], loss.detach(), atol=1e-6)
    for g, p in zip(got["grads"], (*img_proj.parameters(), *txt_proj.parameters())):
        assert torch.allclose(g, p.grad, atol=1e-6)
