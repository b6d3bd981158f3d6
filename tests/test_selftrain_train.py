"""``labelless train selftrain``: a segmenter trained on a pseudo-label store made by
``labelless selftrain label`` (loss goes down, accumulation = the bigger batch, kill and
resume exact, the export evaluates through ``eval``, poly schedule)."""

from __future__ import annotations

import json

import pytest
import torch
from _train_fixtures import one_thread  # noqa: F401 (autouse)
from test_train_clip import make_folder

from labelless.train.config import make_config
from labelless.train.selftrain.config import SelfTrainConfig
from labelless.train.selftrain.loop import train_selftrain


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A fabricated labelled folder and a label store for it: made by ``selftrain label``
    with a random tiny CLIP (whose labels are one class everywhere), then each pseudo-label
    replaced by a teacher that is right on the left 3/4 of the image and says class 0 on the
    rest (so the student has something to learn, and something wrong too), confidence 0.9."""
    import numpy as np
    from PIL import Image

    from labelless.cli import main
    from labelless.selftrain.store import read_store, save_pseudo_label

    root = tmp_path_factory.mktemp("selftrain")
    data = make_folder(root / "data", n=6, size=48)
    assert main(["selftrain", "label", "--dataset", "folder", "--data-root", str(data), "--split", "train",
                 "--model", "tiny-vit", "--pretrained", "none", "--protocol", "whole", "--templates", "a photo of {}",
                 "--out", str(root / "store"), "--device", "cpu"]) == 0
    meta = read_store(root / "store")
    for i in range(6):
        teacher = np.array(Image.open(data / "labels" / f"im{i}.png")).astype(np.int64)
        teacher[:, 36:] = 0
        save_pseudo_label(root / "store", f"im{i}", teacher, np.full(teacher.shape, 230, np.uint8),
                          len(meta["classes"]), meta["ignore_index"])
    return data, root / "store"


def _cfg(tmp_path, store, run: str, **over) -> SelfTrainConfig:
    data, st = store
    values = dict(run_dir=str(tmp_path / run), dataset="folder", data_root=str(data), split="train", store=str(st),
                  crop_size=32, scale_min=0.75, scale_max=1.25, backbone="tiny", backbone_options={"width": 8},
                  pretrained=False, head="fpn", channels=16, norm="gn", dropout=0.0, backbone_lr_mult=1.0,
                  batch_size=4, max_steps=4, lr=5e-3, weight_decay=0.0, warmup_steps=0, amp="none",
                  num_workers=0, log_every=1, checkpoint_every=2, keep_checkpoints=0, tensorboard=False,
                  device="cpu")
    values.update(over)
    return make_config(SelfTrainConfig, values)


def _weights(path):
    return torch.load(path, weights_only=True)["state_dict"]


def test_loss_goes_down_and_the_export_evaluates(tmp_path, store):
    from labelless.cli import main

    losses = []
    torch.manual_seed(0)
    exported = train_selftrain(_cfg(tmp_path, store, "run", max_steps=30, color_jitter=0.0, hue_jitter=0.0,
                                    scale_min=1.0, scale_max=1.0, crop_size=48),
                               on_step=lambda s, m, sc: losses.append(sc))
    assert {"loss", "lr", "grad_norm", "labelled_pixels", "skipped_images"} <= set(losses[0])
    losses = [sc["loss"] for sc in losses]
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5, losses
    out = tmp_path / "eval"
    assert main(["eval", "--dataset", "folder", "--data-root", str(store[0]), "--split", "train",
                 "--pretrained", str(exported), "--protocol", "whole", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["scorer"] == "closed-set" and res["num_images"] == 6


def test_student_fits_its_teacher(tmp_path, store):
    """On the images it was trained on, the student's labels agree with the pseudo-labels
    (not with the ground truth where the teacher is wrong): it learned the store's labels."""
    import numpy as np

    from labelless.io import load_image
    from labelless.loader import load_scorer
    from labelless.segment import Segmenter
    from labelless.selftrain.store import load_pseudo_label, read_store

    torch.manual_seed(0)
    exported = train_selftrain(_cfg(tmp_path, store, "fit", max_steps=40, color_jitter=0.0, hue_jitter=0.0,
                                    scale_min=1.0, scale_max=1.0, crop_size=48, lr=1e-2))
    scorer = load_scorer(None, str(exported), device="cpu")
    classes = read_store(store[1])["classes"]
    seg = Segmenter(scorer, scorer.vocabulary(classes), "whole")
    agree = []
    for i in range(6):
        pred = seg.predict([load_image(store[0] / "images" / f"im{i}.png")])[0].numpy()
        teacher = load_pseudo_label(store[1], f"im{i}")
        agree.append(float(np.mean(pred[:, 40:] == teacher[:, 40:])))  # the teacher's wrong quarter
    assert np.mean(agree) > 0.8, agree


def test_accumulation_is_the_bigger_batch(tmp_path, store):
    torch.manual_seed(0)
    one = train_selftrain(_cfg(tmp_path, store, "one", max_steps=2, checkpoint_every=100))
    torch.manual_seed(0)
    two = train_selftrain(_cfg(tmp_path, store, "two", max_steps=2, grad_accum=2, checkpoint_every=100))
    a, b = _weights(one), _weights(two)
    worst = max(float((a[k] - b[k]).abs().max()) for k in a if a[k].is_floating_point())
    assert worst < 1e-5, worst


def test_micro_batch_losses_add_up_to_the_batch_mean():
    """pixel_ce over micro-batches with unequal ignored counts sums to the whole batch's mean CE."""
    import torch.nn.functional as F

    from labelless.train.selftrain.loop import pixel_ce

    torch.manual_seed(0)
    logits, labels = torch.randn(4, 5, 6, 6), torch.randint(0, 5, (4, 12, 12))
    labels[0, :9] = 255  # most of one image ignored
    labels[3, :, :2] = 255
    total = float((labels != 255).sum())
    parts = sum(pixel_ce(logits[i:i + 2], labels[i:i + 2], 255, total) for i in (0, 2))
    up = F.interpolate(logits, size=(12, 12), mode="bilinear", align_corners=False)
    torch.testing.assert_close(parts, F.cross_entropy(up, labels, ignore_index=255))


def test_kill_and_resume_is_exact(tmp_path, store):
    over = dict(dropout=0.1, norm="bn")  # the RNG of dropout and the BN buffers must come back too
    torch.manual_seed(0)
    straight = train_selftrain(_cfg(tmp_path, store, "straight", **over))
    torch.manual_seed(0)
    assert train_selftrain(_cfg(tmp_path, store, "resumed", exit_at=2, **over)) is None
    torch.manual_seed(123)  # the resume restores every RNG itself
    resumed = train_selftrain(_cfg(tmp_path, store, "resumed", **over))
    a, b = _weights(straight), _weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_neck_trains_at_the_full_lr(tmp_path, store):
    from labelless.train.selftrain.loop import build_model, param_groups

    cfg = _cfg(tmp_path, store, "g", backbone="timm:vit_tiny_patch16_224", backbone_options={"img_size": 32},
               pretrained=True, backbone_lr_mult=0.1)
    import dataclasses

    model = build_model(dataclasses.replace(cfg, pretrained=False), ["a", "b"], "cpu")  # no download in tests
    lr_of = {id(p): g["lr"] for g in param_groups(model, cfg) for p in g["params"]}
    assert {lr_of[id(p)] for p in model.backbone.body.parameters()} == {cfg.lr * 0.1}
    assert {lr_of[id(p)] for p in model.backbone.neck.parameters()} == {cfg.lr}
    assert {lr_of[id(p)] for p in model.head.parameters()} == {cfg.lr}


def test_a_store_of_another_split_is_refused(tmp_path, store):
    from labelless.errors import DatasetError

    with pytest.raises(DatasetError, match="pseudo-labels of folder train"):
        train_selftrain(_cfg(tmp_path, store, "other", split="val"))


def test_poly_schedule_and_checks(tmp_path, store):
    from labelless.errors import ConfigError
    from labelless.train.selftrain.data import poly_factor

    assert poly_factor(0, 100, warmup=10) == pytest.approx(0.1)
    assert poly_factor(10, 100, warmup=10) == pytest.approx(1.0)
    assert poly_factor(55, 100, warmup=10, power=1.0) == pytest.approx(0.5)
    assert poly_factor(100, 100, warmup=10, power=0.9) == pytest.approx(0.0)
    with pytest.raises(ConfigError, match="store="):
        make_config(SelfTrainConfig, dict(dataset="folder", data_root="x"))
    with pytest.raises(ConfigError, match="schedule"):
        _cfg(tmp_path, store, "x", schedule="step")


def test_frozen_dino_backbone_stays_as_loaded(tmp_path, store):
    """freeze_backbone: the DINO ViT keeps its weights (and eval mode); the pyramid and head train."""
    from _train_fixtures import save_tiny_dino

    from labelless.models.segmenter import load_segmenter

    dino = save_tiny_dino(tmp_path / "dino")
    cfg = _cfg(tmp_path, store, "frozen", backbone=f"hf:{dino}", backbone_options={}, freeze_backbone=True,
               max_steps=2, checkpoint_every=100)
    torch.manual_seed(0)
    model = load_segmenter(train_selftrain(cfg))
    from labelless.masks.dino import load_dino

    fresh = load_dino(str(dino)).model.state_dict()
    trained = model.backbone.vit.state_dict()
    assert all(torch.equal(fresh[k], trained[k]) for k in fresh)
    assert model.train().backbone.vit.training is False and model.head.training
