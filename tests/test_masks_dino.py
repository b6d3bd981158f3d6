from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from labelless.errors import SettingError, WeightsError  # noqa: E402
from labelless.masks.dino import _key_projection, dino_kmeans_masks, input_size, last_layer, load_dino  # noqa: E402

REAL_DINOV2 = Path(__file__).resolve().parents[1].parent / "shared" / "weights" / "dinov2-small"


def save_tiny_dinov2(folder: Path, registers: int = 0) -> Path:
    from transformers import Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    torch.manual_seed(0)
    common = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                  image_size=56, patch_size=14)
    if registers:
        model = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(num_register_tokens=registers, **common))
    else:
        model = Dinov2Model(Dinov2Config(mlp_ratio=2, **common))
    model.save_pretrained(folder)
    return folder


def save_tiny_vit(folder: Path, patch: int = 8) -> Path:
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    cfg = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                    image_size=32, patch_size=patch)
    ViTModel(cfg, add_pooling_layer=False).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_dinov2(tmp_path_factory):
    return save_tiny_dinov2(tmp_path_factory.mktemp("tiny-dinov2"))


@pytest.fixture(scope="module")
def tiny_vit8(tmp_path_factory):
    return save_tiny_vit(tmp_path_factory.mktemp("tiny-dino-vit8"), 8)


def _images(B=2, H=40, W=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (B, 3, H, W), generator=g, dtype=torch.uint8)


def test_input_size_rounds_to_patch_multiples():
    assert input_size(360, 480, 14, 448) == (448, 602)  # CamVid at 448: 32×43 patches
    assert input_size(360, 480, 16, 448) == (448, 592)
    assert input_size(40, 60, 14) == (42, 56)
    assert input_size(5, 5, 14) == (14, 14)  # at least one patch


@pytest.mark.parametrize("which", ["tokens", "keys"])
def test_dinov2_folder_shapes(tiny_dinov2, which):
    bb = load_dino(tiny_dinov2)
    assert bb.family == "dinov2" and bb.patch_size == 14 and bb.num_prefix_tokens == 1
    feats = bb.patch_features(_images(), size=28, which=which)  # 40×60 → 28×42 → 2×3 patches
    assert feats.shape == (2, 2, 3, 32) and feats.dtype == torch.float32
    feats = bb.patch_features(_images(), which=which)  # own size 40×60 → 42×56 → 3×4
    assert feats.shape == (2, 3, 4, 32)
    assert torch.isfinite(feats).all()


def test_keys_differ_from_tokens(tiny_dinov2, tiny_vit8):
    for folder in (tiny_dinov2, tiny_vit8):
        bb = load_dino(folder)
        t = bb.patch_features(_images(), which="tokens")
        k = bb.patch_features(_images(), which="keys")
        assert t.shape == k.shape
        assert not torch.allclose(t, k)
        # the hook is removed after the call: later calls are unaffected
        assert torch.equal(bb.patch_features(_images(), which="tokens"), t)
        assert len(_key_projection(last_layer(bb.model))._forward_hooks) == 0


def test_vit_dino_v1_patch8_interpolates_positions(tiny_vit8):
    bb = load_dino(str(tiny_vit8))
    assert bb.family == "dino" and bb.patch_size == 8 and bb.interpolate_kwarg
    feats = bb.patch_features(_images(H=48, W=72))  # not the config's 32×32
    assert feats.shape == (2, 6, 9, 32)
    # batch items are independent (no mixing across the batch)
    one = bb.patch_features(_images(H=48, W=72)[1:])
    assert torch.allclose(one[0], feats[1], atol=1e-5)


def test_registers_are_dropped(tmp_path):
    bb = load_dino(save_tiny_dinov2(tmp_path / "reg", registers=4))
    assert bb.num_prefix_tokens == 5
    assert bb.patch_features(_images(), size=28).shape == (2, 2, 3, 32)


def test_kmeans_masks_partition_the_image(tiny_dinov2):
    bb = load_dino(tiny_dinov2)
    imgs = [_images(1, 40, 60)[0], _images(1, 30, 50, seed=1)[0], _images(1, 40, 60, seed=2)[0]]
    masks = dino_kmeans_masks(bb, imgs, k=4, size=42)
    assert len(masks) == 3
    for m, im in zip(masks, imgs):
        assert m.dtype == torch.bool and m.shape[1:] == im.shape[1:]
        assert 1 <= m.shape[0] <= 4
        assert torch.equal(m.sum(0), torch.ones(im.shape[1:], dtype=torch.long))  # a partition
        assert (m.flatten(1).sum(1) > 0).all()  # empty clusters dropped
        areas = m.flatten(1).sum(1)
        assert torch.equal(areas, areas.sort(descending=True).values)
    # batched tensor input = the list path; k larger than the grid is capped
    again = dino_kmeans_masks(bb, torch.stack([imgs[0], imgs[2]]), k=4, size=42)
    assert torch.equal(again[0], masks[0]) and torch.equal(again[1], masks[2])
    tiny = dino_kmeans_masks(bb, _images(1, 14, 14), k=8)[0]
    assert tiny.shape == (1, 14, 14)
    # an image's masks do not depend on the batch it comes in
    batch = _images(5, 40, 60, seed=3)
    together = dino_kmeans_masks(bb, batch, k=4, size=42)
    for i in range(5):
        assert torch.equal(dino_kmeans_masks(bb, batch[i:i + 1], k=4, size=42)[0], together[i])


def test_clear_errors(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        load_dino(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match="config.json"):
        load_dino(tmp_path / "empty")
    # conftest sets HF_HUB_OFFLINE=1: an uncached hub name says how to pass a folder
    with pytest.raises(WeightsError, match="local-dir") as err:
        load_dino("facebook/dino-not-cached-xyz")
    assert "\n" not in str(err.value)  # one line
    with pytest.raises(SettingError, match="tokens or keys"):
        bb = load_dino(save_tiny_vit(tmp_path / "v", 16))
        bb.patch_features(_images(), which="values")


def test_rejects_non_dino_architecture(tmp_path):
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, vocab_size=50)).save_pretrained(tmp_path / "bert")
    with pytest.raises(SettingError, match="not a DINO backbone"):
        load_dino(tmp_path / "bert")


@pytest.mark.skipif(not (REAL_DINOV2 / "config.json").is_file(), reason=f"{REAL_DINOV2} absent")
def test_real_dinov2_small_grid():
    bb = load_dino(REAL_DINOV2)
    assert bb.patch_size == 14 and bb.hidden_size == 384
    img = _images(1, 120, 160)
    feats = bb.patch_features(img, size=112)  # 112×149 → 112×154 → 8×11 patches
    assert feats.shape == (1, 8, 11, 384)
    assert torch.isfinite(feats).all()
    masks = dino_kmeans_masks(bb, img, k=4, size=112)[0]
    assert masks.shape[1:] == (120, 160) and torch.equal(masks.sum(0), torch.ones(120, 160, dtype=torch.long))
