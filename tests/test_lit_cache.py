"""The LiT feature cache (``train/clip/cache.py``, ``train clip image_cache=FILE``): the cached
features are the locked trunk's output for the crops the config draws; a cached run trains
exactly as an uncached one on the same crops, lowers the loss with the trunk untouched,
reuses its file (whatever the run's seed), refuses one made with other settings, and
resumes exactly."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from _train_fixtures import one_thread  # noqa: F401 (autouse: one intra-op thread)
from test_lit import _hf, _lit_config, save_tiny_dinov2
from test_train_clip import read_scalars

pytest.importorskip("transformers")

from labelless.data.benchmarks import load_benchmark  # noqa: E402
from labelless.data.pairs import LabelledCaptionDataset  # noqa: E402
from labelless.errors import ConfigError  # noqa: E402
from labelless.models import convert  # noqa: E402
from labelless.models.clip import build_clip  # noqa: E402
from labelless.models.lit import build_lit_clip  # noqa: E402
from labelless.train.clip import cache as lit_cache  # noqa: E402
from labelless.train.clip.loop import train_clip  # noqa: E402


@pytest.fixture(scope="module")
def tower(tmp_path_factory):
    return save_tiny_dinov2(tmp_path_factory.mktemp("dinov2"))


def _weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


@torch.no_grad()
def test_cached_feats_are_the_trunk_output_of_the_configs_crops(tmp_path, tower):
    cfg = _lit_config(tmp_path, tower, image_cache=str(tmp_path / "c.pt"), cache_views=3, hflip=True)
    dense = build_lit_clip("tiny-vit", tower, image_size=32)
    dense.clip.train()  # the build puts the trunk in eval mode itself, and back
    modes = []
    dense.clip.visual.trunk.register_forward_pre_hook(lambda module, args: modes.append(module.training))
    lit_cache.build_cache(cfg, dense, 32, tmp_path / "c.pt")
    assert modes == [False, False, False] and dense.clip.visual.trunk.training  # 24 crops in batches of 8
    data = torch.load(tmp_path / "c.pt", weights_only=True)
    assert data["feats"].dtype == torch.float32 and data["feats"].shape == (8 * 3, 32) and data["skipped"] == 0

    # the crops, drawn independently: images × views positions, item (i, i) with cache_seed 0
    bench = load_benchmark("folder", cfg.data_root, "train")
    ds = LabelledCaptionDataset(bench, 32, crops_per_image=3, template=cfg.caption_template,
                                min_fraction=cfg.min_class_fraction, max_names=cfg.max_names, hflip=True)
    items = [ds[(i, i)] for i in range(24)]
    assert data["captions"] == [it["caption"] for it in items] and data["names"] == [it["name"] for it in items]
    assert any(it["flip"] for it in items) and not all(it["flip"] for it in items)  # hflip as configured
    x = dense.normalize(torch.stack([it["image"] for it in items]))
    dense.clip.eval()
    torch.testing.assert_close(data["feats"], dense.clip.visual.trunk(x), atol=1e-5, rtol=0)
    # ... which is the transformers DINOv2's CLS token after its final LayerNorm
    torch.testing.assert_close(data["feats"], _hf(tower)(pixel_values=x).pooler_output, atol=1e-5, rtol=0)
    # the cached step's image embedding is the CLIP's encode_image of the crop
    image, _, scale = lit_cache.CachedLiT(dense.clip)(data["feats"], dense.tokenizer(["a photo of road"]))
    torch.testing.assert_close(image, dense.clip.encode_image(x, normalize=True), atol=1e-5, rtol=0)
    assert torch.allclose(image.norm(dim=-1), torch.ones(24)) and scale == dense.clip.logit_scale.exp()

    other = lit_cache.cache_items(_lit_config(tmp_path, tower, cache_views=3, cache_seed=1), 32)[1]
    assert [i for i, _ in other] == list(range(24)) and other[5][1] == 2**40 + 5  # other crops, same images


def test_a_cached_run_trains_as_an_uncached_run_on_the_same_crops(tmp_path, tower):
    """Whole-image crops, no flip: every view of an image is the image itself, so the uncached
    run (crops_per_image = cache_views) sees the same pairs in the same order."""
    same = dict(crop_scale_min=1.0, crop_scale_max=1.0, hflip=False, crops_per_image=2, cache_views=2,
                max_steps=4, log_every=1)
    plain = train_clip(_lit_config(tmp_path, tower, run_dir=str(tmp_path / "plain"), **same))
    cached = train_clip(_lit_config(tmp_path, tower, run_dir=str(tmp_path / "cached"),
                                    image_cache=str(tmp_path / "c.pt"), **same))
    a, b = (read_scalars(tmp_path / name / "tb", "train/loss") for name in ("plain", "cached"))
    assert len(a) == 4 and a[0] == pytest.approx(b[0], abs=1e-5) and np.allclose(a, b, atol=1e-4), (a, b)
    wa, wb = _weights(plain), _weights(cached)
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)
    assert a[-1] < a[0]  # it trained (equal runs that did nothing would pass the rest)


def test_a_cached_run_lowers_the_loss_keeps_the_trunk_and_exports(tmp_path, tower):
    dino = convert.dinov2_to_timm(_hf(tower).state_dict())

    def on_step(step, clip, scalars):
        assert clip.training and not clip.visual.trunk.training

    exported = train_clip(_lit_config(tmp_path, tower, image_cache=str(tmp_path / "c.pt"), cache_views=4),
                          on_step=on_step)
    losses = read_scalars(tmp_path / "run" / "tb", "train/loss")
    assert len(losses) == 30 and np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses
    model = build_clip(None, str(exported))  # the full LiT CLIP, as an uncached run exports it
    trunk = model.clip.visual.trunk.state_dict()
    assert all(torch.equal(trunk[k], v) for k, v in dino.items())
    assert model.kind == "timm-vit" and "pixelclip" in model.modes
    fresh = build_lit_clip("tiny-vit", tower, image_size=32)
    assert not torch.allclose(model.clip.visual.head.proj.weight, fresh.clip.visual.head.proj.weight)


def test_the_cache_is_reused_by_every_seed_and_refused_with_other_settings(tmp_path, tower, monkeypatch):
    path = tmp_path / "c.pt"
    short = dict(image_cache=str(path), cache_views=2, max_steps=2)
    train_clip(_lit_config(tmp_path, tower, run_dir=str(tmp_path / "s0"), **short))
    stamp = path.stat().st_mtime_ns
    built = []
    monkeypatch.setattr(lit_cache, "build_cache", lambda *a, **k: built.append(a))
    relative = os.path.relpath(tmp_path / "data")  # another spelling of the same folder
    train_clip(_lit_config(tmp_path, tower, run_dir=str(tmp_path / "s1"), seed=1, data_root=str(relative), **short))
    assert built == [] and path.stat().st_mtime_ns == stamp

    for key, value in (("image_size", 24), ("cache_views", 3), ("crop_scale_min", 0.5), ("cache_seed", 1)):
        with pytest.raises(ConfigError, match=f"{path}.*{key}: cache") as info:
            train_clip(_lit_config(tmp_path, tower, run_dir=str(tmp_path / key), **{**short, key: value}))
        assert info.value.args[0].count(": cache ") == 1  # only the differing key is named
    assert built == []
    torch.save({"feats": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="not a LiT feature cache"):
        train_clip(_lit_config(tmp_path, tower, run_dir=str(tmp_path / "o"), **{**short,
                                                                               "image_cache": str(tmp_path / "other.pt")}))


def test_a_resumed_cached_run_ends_with_the_same_weights(tmp_path, tower):
    over = dict(image_cache=str(tmp_path / "c.pt"), cache_views=2, max_steps=6, checkpoint_every=2)
    straight = train_clip(_lit_config(tmp_path, tower, run_dir=str(tmp_path / "straight"), **over))
    assert train_clip(_lit_config(tmp_path, tower, run_dir=str(tmp_path / "resumed"), exit_at=3, **over)) is None
    torch.manual_seed(123)  # the resume restores every RNG itself
    resumed = train_clip(_lit_config(tmp_path, tower, run_dir=str(tmp_path / "resumed"), **over))
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_image_cache_needs_a_locked_lit_tower(tmp_path, tower):
    from test_train_clip import make_folder

    from labelless.train.clip.config import ClipConfig
    from labelless.train.config import make_config

    data = make_folder(tmp_path / "plain_data", n=2)
    with pytest.raises(ConfigError, match="image_cache=.*needs image_tower"):
        make_config(ClipConfig, dict(model="tiny-vit", dataset="folder", data_root=str(data),
                                     image_cache=str(tmp_path / "c.pt")))
    with pytest.raises(ConfigError, match="lock_image true"):
        _lit_config(tmp_path, tower, image_cache=str(tmp_path / "c.pt"), lock_image=False)
    with pytest.raises(ConfigError, match="cache_views"):
        _lit_config(tmp_path, tower, image_cache=str(tmp_path / "c.pt"), cache_views=0)
    assert _lit_config(tmp_path, tower, image_cache=str(tmp_path / "c.pt")).image_cache


def test_unreadable_images_are_skipped_and_counted(tmp_path, tower):
    from test_train_clip import make_folder

    data = make_folder(tmp_path / "data", n=3)
    (data / "images" / "im1.png").write_bytes(b"not a png")
    cfg = _lit_config(tmp_path, tower, image_cache=str(tmp_path / "c.pt"), cache_views=2, batch_size=4)
    with pytest.warns(UserWarning, match="im1.png"):
        lit_cache.build_cache(cfg, build_lit_clip("tiny-vit", tower, image_size=32), 32, tmp_path / "c.pt")
    got = torch.load(tmp_path / "c.pt", weights_only=True)
    assert got["skipped"] == 2 and got["names"] == ["im0", "im0", "im2", "im2"] and got["feats"].shape == (4, 32)
