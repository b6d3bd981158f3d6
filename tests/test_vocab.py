import pytest
import torch
import torch.nn.functional as F

from labelless.errors import MissingFileError, SettingError
from labelless.vocab.encode import (
    build_vocabulary,
    class_similarity,
    parse_labels,
    read_labels_file,
    split_synonyms,
)
from labelless.vocab.templates import IMAGENET_SELECT, get_templates


class CountingModel:
    """Wraps a DenseCLIP and counts how many prompts reach the text tower."""

    def __init__(self, model):
        self.model, self.calls, self.embed_dim = model, [], model.embed_dim

    def encode_text(self, texts):
        self.calls.extend(texts)
        return self.model.encode_text(texts)


def test_template_sets():
    assert len(get_templates("single")) == 1
    assert len(get_templates("imagenet_select")) == 8 == len(IMAGENET_SELECT)
    assert IMAGENET_SELECT[-1] == "A photo of a {} in the scene"
    t80 = get_templates("imagenet80")
    assert len(t80) == 80 and all(t.count("{}") == 1 for t in t80)
    assert get_templates("a sketch of a {}.") == ("a sketch of a {}.",)
    with pytest.raises(SettingError, match="unknown-set"):
        get_templates("unknown-set")
    with pytest.raises(SettingError, match="placeholder"):
        get_templates(["no placeholder"])


def test_template_file(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("a {} here\n\nthere is a {}\n")
    assert get_templates(str(f)) == ("a {} here", "there is a {}")
    f.write_bytes(b"\xff\xfe {} not utf-8")
    with pytest.raises(SettingError, match="cannot read template file .*t.txt"):
        get_templates(str(f))


def test_parsing(tmp_path):
    assert parse_labels("sky, road|street ,car,") == [["sky"], ["road", "street"], ["car"]]
    assert split_synonyms("person, people") == ["person", "people"]
    f = tmp_path / "labels.txt"
    f.write_text("# comment\nsky\nperson, people\n\n")
    assert read_labels_file(f) == [["sky"], ["person", "people"]]
    with pytest.raises(MissingFileError, match="nowhere.txt"):
        read_labels_file(tmp_path / "nowhere.txt")
    f.write_bytes(b"\xff\xfe sky")
    with pytest.raises(SettingError, match="cannot read labels file .*labels.txt"):
        read_labels_file(f)


def _official_class_embedding(model, synonyms, templates):
    """PixelCLIP's ``class_embeddings`` (pixelclip_predictor.py), template by template:
    texts template-major, every embedding normalised, averaged over the synonyms of each
    template and normalised; at inference averaged over the templates and normalised."""
    texts = []
    for template in templates:
        for syn in synonyms:
            texts.append(template.format(syn))
    e = model.encode_text(texts)
    e = e / e.norm(dim=-1, keepdim=True)
    if len(templates) != e.shape[0]:
        e = e.reshape(len(templates), -1, e.shape[-1]).mean(dim=1)
        e = e / e.norm(dim=-1, keepdim=True)
    e = e.mean(dim=0)  # pixelclip.py inference: text_feat.mean(dim=1), then F.normalize
    return e / e.norm()


def test_mean_is_pixelclips_synonym_order(tiny_vit):
    classes = ["cat", "person, pedestrian, people"]
    vocab = build_vocabulary(tiny_vit, classes, "imagenet_select")
    assert vocab.names == ["cat", "person"] and vocab.class_index.tolist() == [0, 1]
    for row, c in zip(vocab.class_embeddings(), classes):
        ref = _official_class_embedding(tiny_vit, c.split(", "), IMAGENET_SELECT)
        torch.testing.assert_close(row, ref, rtol=0, atol=1e-6)


def test_mean_per_synonym_and_max_rows(tiny_vit):
    vocab = build_vocabulary(tiny_vit, ["cat", "dog, puppy"], ["a {}.", "the {}!"], reduce="mean_per_synonym")
    per_syn = [F.normalize(F.normalize(tiny_vit.encode_text([f"a {s}.", f"the {s}!"]), dim=-1).mean(0), dim=0)
               for s in ("cat", "dog", "puppy")]
    torch.testing.assert_close(vocab.embeddings[0], per_syn[0])
    torch.testing.assert_close(vocab.embeddings[1], F.normalize(per_syn[1] + per_syn[2], dim=0))
    mx = build_vocabulary(tiny_vit, ["cat", "dog, puppy"], ["a {}.", "the {}!"], reduce="max")
    assert mx.class_index.tolist() == [0, 1, 1]
    torch.testing.assert_close(mx.embeddings, torch.stack(per_syn))
    # without synonyms the three reductions agree exactly
    one = [build_vocabulary(tiny_vit, ["cat", "dog"], "imagenet_select", reduce=r).embeddings
           for r in ("mean", "mean_per_synonym", "max")]
    assert torch.equal(one[0], one[1]) and torch.equal(one[0], one[2])
    # with synonyms the two means differ (the order matters)
    a = build_vocabulary(tiny_vit, ["dog, puppy"], "imagenet_select", reduce="mean").embeddings
    b = build_vocabulary(tiny_vit, ["dog, puppy"], "imagenet_select", reduce="mean_per_synonym").embeddings
    assert not torch.allclose(a, b, atol=1e-6)


def test_cache_encodes_each_prompt_once(tiny_vit):
    m = CountingModel(tiny_vit)
    build_vocabulary(m, ["cat", "dog"], "imagenet_select")
    assert len(m.calls) == 16
    build_vocabulary(m, ["dog", "bird"], "imagenet_select")
    assert len(m.calls) == 24  # only 'bird' is new


def test_similarity_mean_and_max():
    emb = F.normalize(torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]]), dim=-1)
    idx = torch.tensor([0, 1, 1])  # class 1 has two synonyms
    feats = torch.tensor([0.0, 0.2, 1.0]).view(1, 3, 1, 1)
    f = F.normalize(feats, dim=1)[0, :, 0, 0]
    mx = class_similarity(feats, emb, idx, 2, "max")[0, :, 0, 0]
    torch.testing.assert_close(mx, torch.stack([f[0], torch.maximum(f[1], f[2])]))
    mean = class_similarity(feats, emb, idx, 2, "mean")[0, :, 0, 0]
    c1 = F.normalize(emb[1] + emb[2], dim=0)
    torch.testing.assert_close(mean, torch.stack([f @ emb[0], f @ c1]))
    with pytest.raises(SettingError, match="median"):
        class_similarity(feats, emb, idx, 2, "median")


def test_empty_vocabulary(tiny_vit):
    with pytest.raises(SettingError, match="empty"):
        build_vocabulary(tiny_vit, [])
    with pytest.raises(SettingError, match="unknown synonym reduction 'median'"):
        build_vocabulary(tiny_vit, ["sky"], reduce="median")
    with pytest.raises(ValueError, match="empty"):
        build_vocabulary(tiny_vit, [[]])


def test_cache_is_not_stale_after_the_text_weights_change():
    """A text tower that trains (S-Seg) or is reloaded gets fresh embeddings; the vision
    tower changing does not empty the cache."""
    from labelless.models.clip import build_clip

    torch.manual_seed(0)
    model = build_clip("tiny-vit", None)
    counting = CountingModel(model)
    counting.text_parameters = model.text_parameters  # the wrapper sees the tower's weights
    first = build_vocabulary(counting, ["cat", "dog"], "single").embeddings
    with torch.no_grad():
        model.clip.visual.conv1.weight.add_(1.0)
    build_vocabulary(counting, ["cat", "dog"], "single")
    assert len(counting.calls) == 2  # vision weights: cache kept
    opt = torch.optim.SGD([model.clip.token_embedding.weight], lr=1.0)
    model.clip.token_embedding.weight.grad = torch.ones_like(model.clip.token_embedding.weight)
    opt.step()
    second = build_vocabulary(counting, ["cat", "dog"], "single").embeddings
    assert len(counting.calls) == 4 and not torch.allclose(first, second)
    torch.testing.assert_close(second, build_vocabulary(model, ["cat", "dog"], "single").embeddings)
    model.clip.ln_final.weight.data.mul_(2.0)  # a write that bypasses the version counter
    build_vocabulary(counting, ["cat", "dog"], "single")
    assert len(counting.calls) == 6
