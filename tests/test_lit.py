"""LiT (``models/lit.py``, ``labelless train clip image_tower=FOLDER``): a transformers DINOv2
converted to timm equals the original; training keeps the locked tower bit for bit, moves
its projection and the text tower, and lowers the loss; the exported checkpoint loads as a
timm-vit CLIP and segments in every dense mode (pixelclip included)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from _train_fixtures import one_thread  # noqa: F401 (autouse: one intra-op thread)
from PIL import Image
from test_train_clip import make_folder, read_scalars

pytest.importorskip("transformers")

from labelless.cli import main  # noqa: E402
from labelless.errors import ConfigError, SettingError  # noqa: E402
from labelless.models import convert  # noqa: E402
from labelless.models.clip import build_clip  # noqa: E402
from labelless.models.lit import build_lit_clip, lock_image_tower  # noqa: E402
from labelless.train.clip.config import ClipConfig  # noqa: E402
from labelless.train.clip.loop import train_clip  # noqa: E402
from labelless.train.config import make_config  # noqa: E402

REAL_DINOV2 = Path(__file__).resolve().parents[1].parent / "shared" / "weights" / "dinov2-small"


def save_tiny_dinov2(folder: Path, registers: bool = False, seed: int = 0) -> Path:
    """A random 2-layer DINOv2 (width 32, patch 8, 4×4 grid; 4 registers or none), its
    weights moved off the init (layer scale 1.0, zero biases would hide mistakes)."""
    from transformers import Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    torch.manual_seed(seed)
    cls_cfg, cls_model = (Dinov2WithRegistersConfig, Dinov2WithRegistersModel) if registers else \
        (Dinov2Config, Dinov2Model)
    model = cls_model(cls_cfg(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                              image_size=32, patch_size=8, layerscale_value=0.5))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def dinov2_folders(tmp_path_factory):
    return {reg: save_tiny_dinov2(tmp_path_factory.mktemp(f"dinov2_reg{reg}"), reg) for reg in (False, True)}


def _hf(folder):
    from labelless.masks.dino import load_dino

    return load_dino(folder).model


@torch.no_grad()
@pytest.mark.parametrize("registers", [False, True])
def test_converted_tower_equals_the_transformers_dinov2(dinov2_folders, registers):
    dense = build_lit_clip("tiny-vit", dinov2_folders[registers], image_size=32)
    trunk = dense.clip.visual.trunk
    assert dense.kind == "timm-vit" and "pixelclip" in dense.modes
    assert trunk.num_prefix_tokens == (5 if registers else 1) and dense.clip.visual.head.proj.in_features == 32
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ref = _hf(dinov2_folders[registers])(pixel_values=x).last_hidden_state  # [CLS, registers, patches]
    assert torch.allclose(trunk.forward_features(x), ref, atol=1e-5)
    assert tuple(dense.mean.flatten().tolist()) == pytest.approx((0.485, 0.456, 0.406))


@torch.no_grad()
def test_real_dinov2_small_converts_exactly():
    """The real DINOv2-S of ../shared/weights: every weight has its timm place (strict load)
    and at its own 518-px grid the timm tower gives the transformers tokens."""
    if not (REAL_DINOV2 / "config.json").is_file():
        pytest.skip(f"the real DINOv2-S weights are not at {REAL_DINOV2}")
    dense = build_lit_clip("tiny-vit", REAL_DINOV2)
    assert dense.image_size == (224, 224) and dense.stride == 14
    x = torch.randn(1, 3, 518, 518, generator=torch.Generator().manual_seed(0))
    ref = _hf(REAL_DINOV2)(pixel_values=x).last_hidden_state
    got = dense.clip.visual.trunk.forward_features(x)
    assert (got - ref).abs().max() < 1e-4 * ref.abs().max()
    assert dense.dense_features(torch.randn(1, 3, 56, 42), "pixelclip").shape == (1, 64, 4, 3)


def test_lock_keeps_only_the_projection_trainable(dinov2_folders):
    lit = build_lit_clip("tiny-vit", dinov2_folders[False], image_size=32)
    lit.clip.train()
    locked = lock_image_tower(lit)
    assert locked is lit.clip.visual.trunk and not locked.training
    trainable = {n for n, p in lit.clip.visual.named_parameters() if p.requires_grad}
    assert trainable == {"head.proj.weight"}
    vit = build_clip("tiny-vit", None)
    lock_image_tower(vit)
    assert {n for n, p in vit.clip.visual.named_parameters() if p.requires_grad} == {"proj"}


def _lit_config(tmp_path, folder, **over):
    data = make_folder(tmp_path / "data") if not (tmp_path / "data").exists() else tmp_path / "data"
    values = dict(run_dir=str(tmp_path / "run"), model="tiny-vit", image_tower=str(folder), image_size=32,
                  data="benchmark", dataset="folder", data_root=str(data), split="train", batch_size=8,
                  max_steps=30, lr=2e-3, warmup_steps=2, weight_decay=0.0, num_workers=0, log_every=1,
                  checkpoint_every=1000, tensorboard=True, crops_per_image=2, device="cpu", min_class_fraction=0.1)
    return make_config(ClipConfig, {**values, **over})


def test_lit_training_locks_the_tower_lowers_the_loss_and_exports(tmp_path, dinov2_folders, capsys):
    torch.manual_seed(0)
    folder = dinov2_folders[True]
    dino = convert.dinov2_to_timm(_hf(folder).state_dict())
    seen = {}

    def on_step(step, clip, scalars):
        assert clip.training and not clip.visual.trunk.training  # the locked tower stays in eval mode
        if step == 1:
            seen["proj"] = clip.visual.head.proj.weight.detach().clone()
            seen["text"] = clip.text_projection.detach().clone()

    exported = train_clip(_lit_config(tmp_path, folder), on_step=on_step)
    losses = read_scalars(tmp_path / "run" / "tb", "train/loss")
    assert len(losses) == 30 and np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses

    model = build_clip(None, str(exported))  # rebuilt from the model config the checkpoint records
    trunk = model.clip.visual.trunk.state_dict()
    assert all(torch.equal(trunk[k], v) for k, v in dino.items())  # the locked tower did not move
    assert not torch.allclose(model.clip.visual.head.proj.weight, seen["proj"])  # its projection did
    assert not torch.allclose(model.clip.text_projection, seen["text"])
    assert model.kind == "timm-vit" and model.name.startswith("LiT-") and "pixelclip" in model.modes

    Image.new("RGB", (48, 40), (128, 64, 128)).save(tmp_path / "a.png")
    for mode in ("pixelclip", "sclip", "naclip"):
        out = tmp_path / f"seg_{mode}"
        assert main(["segment", str(tmp_path / "a.png"), "--labels", "road,sky", "--out", str(out),
                     "--pretrained", str(exported), "--mode", mode]) == 0, capsys.readouterr().err
        assert (out / "a.png").is_file()


def test_lit_config_errors(tmp_path, dinov2_folders):
    from _tiny_models import save_tiny_dino_vit

    with pytest.raises(ConfigError, match="pretrained must be none"):
        _lit_config(tmp_path, dinov2_folders[False], pretrained="openai")
    with pytest.raises(ConfigError, match="image_proj"):
        _lit_config(tmp_path, dinov2_folders[False], image_proj="conv")
    assert _lit_config(tmp_path, dinov2_folders[False]).locks_image
    assert not _lit_config(tmp_path, dinov2_folders[False], lock_image=False).locks_image
    with pytest.raises(SettingError, match="DINOv2"):
        build_lit_clip("tiny-vit", save_tiny_dino_vit(tmp_path / "dino_v1"))
    with pytest.raises(SettingError, match="BPE"):  # SigLIP's text tower needs its own hub tokenizer
        build_lit_clip("ViT-B-16-SigLIP", dinov2_folders[False])
