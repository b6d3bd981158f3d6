"""Building models and loading weights from every kind of source (no downloads)."""

import time

import pytest
import torch

from labelless.models.clip import WeightsError, build_clip, list_models, read_state_dict, save_checkpoint


def _x():
    return torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def test_tiny_models_build(tiny_vit, tiny_convnext):
    assert tiny_vit.kind == "vit" and tiny_vit.image_size == (64, 64) and tiny_vit.stride == 8
    assert tiny_convnext.kind == "convnext" and tiny_convnext.stride == 32
    assert tiny_vit.embed_dim == 64
    t = tiny_vit.encode_text(["a photo of a cat.", "a photo of a dog."])
    assert t.shape == (2, 64)
    torch.testing.assert_close(t.norm(dim=-1), torch.ones(2))


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-convnext"])
def test_checkpoint_round_trip(tmp_path, name):
    torch.manual_seed(3)
    a = build_clip(name, None)
    path = save_checkpoint(a, tmp_path / "ckpt.pt", step=7)
    assert not (tmp_path / "ckpt.pt.tmp").exists()
    torch.manual_seed(4)
    b = build_clip(name, str(path))
    assert b.pretrained == str(path)
    with torch.no_grad():
        torch.testing.assert_close(a.dense_features(_x()), b.dense_features(_x()))
    _, meta = read_state_dict(path)
    assert meta["model"] == name and meta["step"] == 7


def test_safetensors_and_plain_state_dict(tmp_path, tiny_vit):
    from safetensors.torch import save_file

    sd = {k: v.contiguous() for k, v in tiny_vit.clip.state_dict().items()}
    save_file(sd, str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, tmp_path / "w.pt")
    for f in ("w.safetensors", "w.pt"):
        m = build_clip("tiny-vit", str(tmp_path / f))
        with torch.no_grad():
            torch.testing.assert_close(m.dense_features(_x()), tiny_vit.dense_features(_x()))


def test_open_clip_name_with_local_file(tmp_path):
    """A built-in open_clip architecture loads a local file (here a random ViT-B-32 saved to disk)."""
    torch.manual_seed(0)
    a = build_clip("ViT-B-32", "none")
    save_checkpoint(a, tmp_path / "b32.pt")
    b = build_clip("ViT-B-32", str(tmp_path / "b32.pt"))
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(a.dense_features(x, "maskclip"), b.dense_features(x, "maskclip"))


def test_bad_weights(tmp_path):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="broken.pt"):
        build_clip("tiny-vit", str(bad))
    other = tmp_path / "other.pt"
    torch.save({"foo": torch.zeros(3)}, other)
    with pytest.raises(WeightsError, match="does not match"):
        build_clip("tiny-vit", str(other))
    with pytest.raises(WeightsError, match="no pretrained tags"):
        build_clip("tiny-vit", "openai")
    with pytest.raises(WeightsError, match="neither a file nor a pretrained tag"):
        build_clip("ViT-B-16", "no-such-tag")
    with pytest.raises(ValueError, match="unknown model"):
        build_clip("ViT-Nope", "none")


def test_offline_tag_gives_clear_error(monkeypatch):
    """Offline, a pretrained tag fails fast with instructions to pass a local file."""
    start = time.time()
    with pytest.raises(WeightsError, match="--pretrained"):
        build_clip("ViT-B-16", "openai", cache_dir="/nonexistent-cache")
    assert time.time() - start < 60


def test_list_models():
    rows = {r["name"]: r for r in list_models()}
    assert "tiny-vit" in rows and "ViT-B-16" in rows and "convnext_base_w_320" in rows
    assert "openai" in rows["ViT-B-16"]["tags"]
    assert "naclip" in rows["ViT-B-16"]["modes"]
    assert rows["convnext_base_w_320"]["modes"] == ["vanilla"]
    assert "RN50" not in rows
