import pytest
import torch
import torch.nn.functional as F

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
    with pytest.raises(ValueError):
        get_templates("unknown-set")
    with pytest.raises(ValueError):
        get_templates(["no placeholder"])


def test_template_file(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("a {} here\n\nthere is a {}\n")
    assert get_templates(str(f)) == ("a {} here", "there is a {}")


def test_parsing(tmp_path):
    assert parse_labels("sky, road|street ,car,") == [["sky"], ["road", "street"], ["car"]]
    assert split_synonyms("person, people") == ["person", "people"]
    f = tmp_path / "labels.txt"
    f.write_text("# comment\nsky\nperson, people\n\n")
    assert read_labels_file(f) == [["sky"], ["person", "people"]]
    with pytest.raises(FileNotFoundError, match="nowhere.txt"):
        read_labels_file(tmp_path / "nowhere.txt")


def test_embeddings_are_template_means(tiny_vit):
    vocab = build_vocabulary(tiny_vit, ["cat", "dog, puppy"], ["a {}.", "the {}!"])
    assert vocab.names == ["cat", "dog"]
    assert vocab.class_index.tolist() == [0, 1, 1]
    raw = tiny_vit.encode_text(["a dog.", "the dog!"])
    ref = F.normalize(F.normalize(raw, dim=-1).mean(0), dim=0)
    torch.testing.assert_close(vocab.embeddings[1], ref)
    ce = vocab.class_embeddings()
    torch.testing.assert_close(ce[1], F.normalize(vocab.embeddings[1] + vocab.embeddings[2], dim=0))


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
    with pytest.raises(ValueError):
        class_similarity(feats, emb, idx, 2, "median")


def test_empty_vocabulary(tiny_vit):
    with pytest.raises(ValueError, match="empty"):
        build_vocabulary(tiny_vit, [])
    with pytest.raises(ValueError, match="empty"):
        build_vocabulary(tiny_vit, [[]])
