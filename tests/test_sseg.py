"""S-Seg: the model's shapes and scorer interface, the whole loop on a fabricated labelled
folder (both losses go down, kill-and-resume exact, accumulation = the bigger batch), the
exported model through ``eval``, and a Hugging Face DINO backbone."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _train_fixtures import one_thread, save_tiny_dino  # noqa: F401 (one_thread: autouse)
from test_train_clip import make_folder, read_scalars

from labelless.models.sseg import build_sseg, load_sseg, save_sseg, sseg_config
from labelless.train import checkpoint as ckpt
from labelless.train.config import make_config
from labelless.train.sseg.config import SSegTrainConfig
from labelless.train.sseg.loop import train_sseg


def test_model_shapes_and_scorer_interface(tmp_path):
    model = build_sseg("sseg-tiny").eval()
    x = torch.rand(2, 3, 64, 64)
    out = model(model.normalize(x), model.text.tokenize(["a photo of road", "sky"]))
    assert len(out["masks"]) == 2 and out["masks"][-1].shape == (2, 8, 16, 16)  # N = 8 queries at 1/4
    assert out["image"].shape == (2, 32) and out["text"].shape == (2, 32)
    torch.testing.assert_close(out["image"].norm(dim=-1), torch.ones(2))
    masks, emb = model.mask_predictions(model.normalize(x))
    assert torch.equal(masks, out["masks"][-1]) and emb.shape == (2, 8, 32)
    # the image embedding is the same MLP on the mean of the query features
    _, queries = model.image(model.normalize(x))
    torch.testing.assert_close(out["image"], torch.nn.functional.normalize(model.proj(queries[-1].mean(1)), dim=-1))
    path = save_sseg(model, tmp_path / "m.pt")
    again = load_sseg(path)
    with torch.no_grad():
        torch.testing.assert_close(again.mask_predictions(x)[0], model.mask_predictions(x)[0])
    assert sseg_config("sseg-paper").image.num_queries == 64 and sseg_config("sseg-paper").text.layers == 12


def _cfg(tmp_path, folder, dino, run: str, **over) -> SSegTrainConfig:
    values = dict(run_dir=str(tmp_path / run), model="sseg-tiny", data="benchmark", dataset="folder",
                  data_root=str(folder), split="train", masks="dino", dino_model=str(dino), dino_k=3,
                  batch_size=4, max_steps=4, lr=2e-3, warmup_steps=1, weight_decay=0.0, amp="none",
                  num_workers=0, log_every=1, checkpoint_every=2, keep_checkpoints=0, tensorboard=False,
                  crops_per_image=2, min_class_fraction=0.1, device="cpu")
    values.update(over)
    return make_config(SSegTrainConfig, values)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("sseg")
    return make_folder(root / "data", n=8, size=64), save_tiny_dino(root / "dino")


def _weights(path):
    return torch.load(path, weights_only=True)["state_dict"]


def test_both_losses_go_down(tmp_path, setup):
    data, dino = setup
    torch.manual_seed(0)
    train_sseg(_cfg(tmp_path, data, dino, "run", max_steps=40, tensorboard=True, checkpoint_every=100))
    mask = read_scalars(tmp_path / "run" / "tb", "train/mask_loss")
    nce = read_scalars(tmp_path / "run" / "tb", "train/contrastive_loss")
    assert len(mask) == 40
    assert np.mean(mask[-5:]) < 0.8 * np.mean(mask[:5]), mask
    assert np.mean(nce[-5:]) < 0.9 * np.mean(nce[:5]), nce


def test_kill_and_resume_is_exact(tmp_path, setup):
    data, dino = setup
    torch.manual_seed(0)
    straight = train_sseg(_cfg(tmp_path, data, dino, "straight"))

    class Killed(RuntimeError):
        pass

    def kill_at_3(step, model, scalars):
        if step == 3:
            raise Killed

    torch.manual_seed(0)
    with pytest.raises(Killed):
        train_sseg(_cfg(tmp_path, data, dino, "killed"), on_step=kill_at_3)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "killed")] == [2]
    torch.manual_seed(0)
    resumed = train_sseg(_cfg(tmp_path, data, dino, "killed"))
    a, b = _weights(straight), _weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_accumulation_is_the_bigger_batch(tmp_path, setup):
    """4 pairs in one micro-batch vs 2 micro-batches of 2: InfoNCE over the same 4 pairs
    (cached embeddings), the mask loss normalised by the step's pseudo-masks."""
    data, dino = setup
    torch.manual_seed(0)
    one = train_sseg(_cfg(tmp_path, data, dino, "one", max_steps=2, checkpoint_every=100))
    torch.manual_seed(0)
    two = train_sseg(_cfg(tmp_path, data, dino, "two", max_steps=2, grad_accum=2, checkpoint_every=100))
    a, b = _weights(one), _weights(two)
    worst = max(float((a[k] - b[k]).abs().max()) for k in a if a[k].is_floating_point())
    assert worst < 1e-4, worst


def test_exported_model_evaluates_through_eval(tmp_path, setup):
    from labelless.cli import main

    data, dino = setup
    torch.manual_seed(0)
    exported = train_sseg(_cfg(tmp_path, data, dino, "run", max_steps=2))
    out = tmp_path / "eval"
    assert main(["eval", "--dataset", "folder", "--data-root", str(data), "--split", "train",
                 "--pretrained", str(exported), "--out", str(out), "--protocol", "whole",
                 "--templates", "a photo of {}"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["scorer"] == "mask-classification" and res["num_images"] == 8 and res["mode"] is None


def test_hugging_face_dino_backbone(tmp_path):
    from labelless.models.sseg import SSegConfig, SSegModel

    cfg = sseg_config("sseg-tiny")
    cfg.image.backbone = f"hf:{save_tiny_dino(tmp_path / 'dino')}"
    cfg.image.freeze_backbone = True
    model = SSegModel(SSegConfig.from_dict(cfg.to_dict()))
    masks, emb = model.mask_predictions(model.normalize(torch.rand(1, 3, 64, 64)))
    assert masks.shape == (1, 8, 32, 32) and emb.shape == (1, 8, 32)  # patch 8: the pyramid's finest stride is 2
    assert not any(p.requires_grad for p in model.image.backbone.vit.parameters())
    assert any(p.requires_grad for p in model.image.backbone.up4.parameters())


def test_feature_cache_gives_the_frozen_backbones_own_forward(tmp_path, setup):
    """A cache of a frozen ViT's tokens: training reads them instead of running the ViT, and
    the model's outputs are those of the live forward; the pseudo-masks partition each crop."""
    from labelless.models.sseg import SSegConfig, SSegModel
    from labelless.train.sseg.cache import CachedPairs, build_cache

    data, dino = setup
    cfg = _cfg(tmp_path, data, dino, "c", image_size=64, dino_k=3, crops_per_image=2)
    build_cache(cfg, tmp_path / "cache", backbone=f"hf:{dino}")
    pairs = CachedPairs(tmp_path / "cache")
    assert len(pairs) == 16
    item = pairs[(3, 0)]
    assert item["masks"].sum(0).eq(1).all() and 1 <= item["masks"].shape[0] <= 3  # a partition
    mc = sseg_config("sseg-tiny")
    mc.image.backbone, mc.image.freeze_backbone = f"hf:{dino}", True
    model = SSegModel(SSegConfig.from_dict(mc.to_dict())).eval()
    x = model.normalize(item["image"][None])
    tok = model.text.tokenize([item["caption"]])
    live, cached = model(x, tok), model(x, tok, item["tokens"][None])
    torch.testing.assert_close(cached["masks"][-1], live["masks"][-1], rtol=1e-2, atol=1e-2)  # fp16 tokens
    torch.testing.assert_close(cached["image"], live["image"], rtol=1e-2, atol=1e-2)
    # and a run on the cache trains (the small backbone takes the cached crops and pseudo-masks)
    torch.manual_seed(0)
    exported = train_sseg(_cfg(tmp_path, data, dino, "cached", data="cache", cache=str(tmp_path / "cache"),
                               max_steps=2))
    assert exported.is_file()


def test_store_masks_are_cropped_like_the_image(tmp_path, setup):
    from labelless.data.benchmarks import load_benchmark
    from labelless.data.pairs import LabelledCaptionDataset
    from labelless.masks.generate import generate
    from labelless.masks.store import read_masks
    from labelless.train.sseg.data import StoreMasks

    data, _ = setup
    bench = load_benchmark("folder", data, "train")
    generate("slic", [s.image for s in bench.samples], tmp_path / "store", {"n_segments": 4}, progress=False, log=None)
    pairs = LabelledCaptionDataset(bench, 32, crops_per_image=1, min_fraction=0.0, hflip=True)
    with_masks = StoreMasks(pairs, str(tmp_path / "store"), 32)
    for i in range(4):
        item = with_masks[(i, 10 + i)]
        masks, _ = read_masks(tmp_path / "store", item["name"])
        top, left, h, w = item["box"]
        ref = torch.nn.functional.interpolate(torch.from_numpy(masks[:, top:top + h, left:left + w])[None].float(),
                                              size=(32, 32), mode="nearest")[0] > 0.5
        assert torch.equal(item["masks"], ref.flip(-1) if item["flip"] else ref)


def test_sseg_cache_command_caches_the_model_configs_frozen_vit(tmp_path, setup):
    """``labelless train sseg-cache``: the frozen hf: ViT of the model config gives the tokens
    (no --backbone needed), and captions.json counts what the captions name."""
    from labelless.cli import main
    from labelless.train.sseg.cache import CACHE_FILE

    data, dino = setup
    mc = sseg_config("sseg-tiny")
    mc.image.backbone, mc.image.freeze_backbone = f"hf:{dino}", True
    (tmp_path / "model.json").write_text(json.dumps(mc.to_dict()))
    out = tmp_path / "cache"
    assert main(["train", "sseg-cache", "--out", str(out), "--batch", "5", "run_dir=" + str(tmp_path / "r"),
                 "data=benchmark", "dataset=folder", f"data_root={data}", "split=train", f"model={tmp_path}/model.json",
                 "image_size=32", "crops_per_image=2", "dino_k=3", "min_class_fraction=0.1", "device=cpu"]) == 0
    cache = torch.load(out / CACHE_FILE, weights_only=True)
    assert cache["backbone"] == f"hf:{dino}" and cache["tokens"].shape[0] == 16 == len(cache["captions"])
    stats = json.loads((out / "captions.json").read_text())
    assert stats["crops"] == 16 and sum(stats["names_per_caption"].values()) == 16
    words = [c.removeprefix("a photo of ") for c in cache["captions"]]
    named = sum(w.count(" and ") + w.count(", ") + 1 for w in words)
    assert sum(stats["captions_naming_class"].values()) == named
