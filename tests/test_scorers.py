"""Scorers under the segmenter: the mask-classification scorer (MaskFormer's semantic
inference) through every protocol, the dense-CLIP scorer as today's path, and the one
loader that builds a scorer from what the user names."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _tiny_models import TinyMaskClassifier

from labelless.errors import SettingError
from labelless.loader import checkpoint_format, load_scorer
from labelless.scorers import DenseCLIPScorer, MaskClassificationScorer, semantic_inference
from labelless.segment import Protocol, Segmenter

CLASSES = ["sky", "road", "car, automobile"]


def _img(h, w, seed=0):
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def mask_scorer():
    return MaskClassificationScorer(TinyMaskClassifier().eval())


def test_semantic_inference_is_maskformers_formula(mask_scorer):
    vocab = mask_scorer.vocabulary(CLASSES, "single")
    g = torch.Generator().manual_seed(1)
    logits, emb = torch.randn(2, 5, 6, 7, generator=g), torch.randn(2, 5, 16, generator=g)
    got = semantic_inference(logits, emb, vocab, 10.0)
    classes = vocab.class_embeddings()  # mean synonyms: one row per class
    ref = torch.zeros(2, 3, 6, 7)
    for b in range(2):
        for n in range(5):
            p = (10.0 * F.normalize(emb[b, n], dim=0) @ classes.T).softmax(0)  # this mask's class probabilities
            ref[b] += p[:, None, None] * logits[b, n].sigmoid()
    torch.testing.assert_close(got, ref)


@pytest.mark.parametrize("protocol", ["squash", "slide", "whole"])
def test_mask_scorer_through_every_protocol(mask_scorer, protocol):
    vocab = mask_scorer.vocabulary(CLASSES, "single")
    seg = Segmenter(mask_scorer, vocab, Protocol(protocol, short_side=40, input_size=32, stride=16), batch_size=2)
    images = [_img(30, 50, 1), _img(45, 33, 2), _img(32, 32, 3)]
    preds, sims = seg.predict(images), seg.similarity(images)
    for im, p, s in zip(images, preds, sims):
        assert p.shape == im.shape[1:] and s.shape == (3, *im.shape[1:])
        assert torch.equal(p, s.argmax(0))  # labels = argmax of the full-size scores
        assert s.min() >= 0 and s.max() <= 5  # Σ over 5 masks of sigmoid × probability


def test_mask_scorer_background_thresholds_the_scores_themselves(mask_scorer):
    vocab = mask_scorer.vocabulary(CLASSES, "single")
    img = _img(30, 40, 4)
    plain = Segmenter(mask_scorer, vocab, "whole")
    s = plain.similarity([img])[0]
    t = float(s.max(0).values.median())
    (p,) = Segmenter(mask_scorer, vocab, "whole", bg_threshold=t).predict([img])
    conf, idx = s.max(0)
    assert torch.equal(p, torch.where(conf < t, 0, idx + 1))  # no softmax: the scores are probabilities
    assert (p == 0).any() and (p > 0).any()


def test_dense_clip_scorer_is_cosine_of_dense_features(tiny_vit):
    scorer = DenseCLIPScorer(tiny_vit, "maskclip")
    vocab = scorer.vocabulary(CLASSES, "single")
    x = torch.rand(2, 3, 64, 64)
    got = scorer.scores(scorer.normalize(x), vocab, feature_size=16)
    feats = F.interpolate(tiny_vit.dense_features(tiny_vit.normalize(x), "maskclip"), size=(16, 16),
                          mode="bilinear", align_corners=False)
    ref = torch.einsum("bdhw,kd->bkhw", F.normalize(feats, dim=1), vocab.class_embeddings())
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert not scorer.probabilities and MaskClassificationScorer.probabilities


def test_loader_builds_the_scorer_a_file_describes(tmp_path, tiny_vit):
    from labelless.models.clip import save_checkpoint

    path = save_checkpoint(tiny_vit, tmp_path / "clip.pt")
    assert checkpoint_format(path) == "labelless-clip"
    scorer = load_scorer(None, str(path), "auto", "cpu")
    assert isinstance(scorer, DenseCLIPScorer) and scorer.mode == "pixelclip"
    assert load_scorer("tiny-convnext", "none", "auto", "cpu").mode == "vanilla"
    torch.save(tiny_vit.clip.state_dict(), tmp_path / "plain.pt")
    assert checkpoint_format(tmp_path / "plain.pt") == "foreign"
    torch.save({"format": "labelless-train", "model": {}}, tmp_path / "train.pt")
    with pytest.raises(SettingError, match="labelless-train"):
        load_scorer(None, str(tmp_path / "train.pt"))
    with pytest.raises(SettingError, match="mode"):
        load_scorer("tiny-vit", "none", "nomode", "cpu")


def test_precision_resolves_per_device_and_autocasts_on_the_cpu(tiny_vit):
    from labelless.scorers import resolve_precision

    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("auto", torch.device("cuda")) == "bf16"
    assert resolve_precision("fp16", torch.device("cpu")) == "fp16"
    with pytest.raises(SettingError, match="precision"):
        resolve_precision("int8", torch.device("cpu"))
    scorer = DenseCLIPScorer(tiny_vit, "pixelclip")
    vocab = scorer.vocabulary(CLASSES, "single")
    x = scorer.normalize(_img(64, 64).float()[None] / 255)
    ref = scorer.scores(x, vocab)
    for precision in ("bf16", "fp16"):
        scorer.configure(precision)
        got = scorer.scores(x, vocab)
        assert got.dtype == torch.float32 and not torch.equal(got, ref)  # computed in lower precision
        torch.testing.assert_close(got, ref, rtol=0, atol=0.1)
    scorer.configure("fp32")
    assert torch.equal(scorer.scores(x, vocab), ref)


def test_cli_precision_and_compile_reach_the_scorer(monkeypatch):
    from labelless import cli

    args = cli.build_parser().parse_args(["segment", "x.png", "--labels", "a,b", "--out", "o", "--model", "tiny-vit",
                                          "--pretrained", "none", "--precision", "bf16", "--compile"])
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda fn: compiled.append(fn) or fn)
    scorer, seg = cli._build(args, [["a"], ["b"]])
    assert scorer.precision == "bf16" and scorer.compiled and compiled == [scorer._image_forward]
    args = cli.build_parser().parse_args(["segment", "x.png", "--labels", "a", "--out", "o", "--model", "tiny-vit",
                                          "--pretrained", "none"])
    scorer, _ = cli._build(args, [["a"]])
    assert scorer.precision == "fp32" and not scorer.compiled
