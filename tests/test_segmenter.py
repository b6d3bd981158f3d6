"""The closed-vocabulary segmenter (the student of self-training): backbones × heads, the
plain-ViT neck, checkpoints through the one loader, the closed-set scorer's class picking,
local backbone weights, and the augmentation of its training data."""

from __future__ import annotations

import json

import pytest
import torch
from _train_fixtures import one_thread  # noqa: F401 (autouse)
from test_train_clip import CLASSES, make_folder

from labelless.errors import SettingError, WeightsError
from labelless.models.segmenter import SegmenterConfig, SemanticSegmenter, load_segmenter, save_segmenter


def _model(head="upernet", backbone="tiny", options=None, classes=CLASSES, norm="gn"):
    torch.manual_seed(0)
    options = {"width": 8} if options is None else options
    cfg = SegmenterConfig(classes=list(classes), backbone=backbone, backbone_options=options,
                          head=head, channels=16, norm=norm, image_size=64)
    return SemanticSegmenter(cfg).eval()


@pytest.mark.parametrize("head", ["upernet", "fpn", "linear"])
def test_heads_give_class_logits_at_their_stride(head):
    m = _model(head)
    out = m(torch.rand(2, 3, 64, 96))
    assert out.shape == (2, len(CLASSES), 64 // m.stride, 96 // m.stride)
    assert m.stride == (16 if head == "linear" else 4)


def test_plain_vit_gets_four_blocks_through_the_neck():
    m = _model("upernet", "timm:vit_tiny_patch16_224", {"img_size": 64})
    bb = m.backbone
    assert bb.strides == [4, 8, 16, 32] and bb.neck is not None
    assert [i["index"] for i in bb.body.feature_info.get_dicts()] == [2, 5, 8, 11]  # the quarters of 12 blocks
    feats = bb(torch.rand(1, 3, 64, 64))
    assert [f.shape[-1] for f in feats] == [16, 8, 4, 2]


def test_checkpoint_round_trip_and_loader(tmp_path):
    from labelless.loader import load_scorer
    from labelless.scorers import ClosedSetScorer

    m = _model()
    path = save_segmenter(m, tmp_path / "seg.pt")
    again = load_segmenter(path)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(again(x), m(x))
    scorer = load_scorer(None, str(path), device="cpu")
    assert isinstance(scorer, ClosedSetScorer) and scorer.probabilities
    with pytest.raises(SettingError, match="dense mode"):
        load_scorer(None, str(path), mode="maskclip", device="cpu")
    with pytest.raises(WeightsError, match="not a labelless segmenter"):
        torch.save({"format": "other"}, tmp_path / "x.pt")
        load_segmenter(tmp_path / "x.pt")


def test_closed_set_scorer_picks_classes_by_name():
    from labelless.scorers import ClosedSetScorer

    m = _model(classes=["road", "sky, heaven", "car"])
    scorer = ClosedSetScorer(m)
    vocab = scorer.vocabulary(["car", "heaven", "road"])
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        probs = m(scorer.normalize(x)).softmax(1)
    s = scorer.scores(scorer.normalize(x), vocab)
    torch.testing.assert_close(s, probs[:, [2, 1, 0]])  # the requested order, synonyms matched
    assert vocab.names == ["car", "heaven", "road"]
    with pytest.raises(SettingError, match="not one of this closed-vocabulary"):
        scorer.vocabulary(["bicycle"])


def test_eval_scores_a_segmenter_with_the_datasets_classes(tmp_path):
    from labelless.cli import main

    data = make_folder(tmp_path / "data", n=3, size=48)
    path = save_segmenter(_model(), tmp_path / "seg.pt")
    out = tmp_path / "eval"
    assert main(["eval", "--dataset", "folder", "--data-root", str(data), "--split", "train", "--pretrained",
                 str(path), "--protocol", "whole", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["scorer"] == "closed-set" and res["num_images"] == 3


@pytest.mark.parametrize("name", ["convnext_atto", "vit_tiny_patch16_224"])
def test_local_backbone_weights_in_timms_own_layout(tmp_path, name):
    """weights=FILE takes what ``timm.create_model(name).state_dict()`` saves (a ViT's position
    embeddings resized to the segmenter's img_size); a file of something else is a WeightsError."""
    import timm

    torch.manual_seed(1)
    src = timm.create_model(name)
    torch.save(src.state_dict(), tmp_path / "bb.pt")
    options = {"img_size": 64} if "vit" in name else {}
    m = SemanticSegmenter(SegmenterConfig(classes=list(CLASSES), backbone=f"timm:{name}", backbone_options=options,
                                          weights=str(tmp_path / "bb.pt"), head="fpn", channels=16, norm="gn"))
    own = m.backbone.body.state_dict()
    key = "stem_0.weight" if "convnext" in name else "model.patch_embed.proj.weight"
    ref = "stem.0.weight" if "convnext" in name else "patch_embed.proj.weight"
    assert torch.equal(own[key], src.state_dict()[ref])
    torch.save({"something": torch.zeros(3)}, tmp_path / "bad.pt")
    with pytest.raises(WeightsError, match="bad.pt"):
        SemanticSegmenter(SegmenterConfig(classes=list(CLASSES), backbone=f"timm:{name}", backbone_options=options,
                                          weights=str(tmp_path / "bad.pt"), head="fpn", channels=16, norm="gn"))


def test_plain_vit_takes_any_input_size():
    m = _model("upernet", "timm:vit_tiny_patch16_224", {"img_size": 64})
    with torch.no_grad():
        assert m(torch.rand(1, 3, 48, 80)).shape == (1, len(CLASSES), 12, 20)


@pytest.mark.parametrize("head", ["upernet", "fpn"])
def test_every_parameter_gets_a_gradient(head):
    """No parameter is left out of the loss (DDP without find_unused_parameters needs it);
    the linear head reads one level, so its run config sets ddp_find_unused."""
    m = _model(head, norm="bn").train()
    m(torch.rand(2, 3, 64, 64)).square().mean().backward()
    assert [n for n, p in m.named_parameters() if p.grad is None] == []


def test_linear_head_run_finds_unused_parameters():
    from labelless.train.config import make_config
    from labelless.train.selftrain.config import SelfTrainConfig

    cfg = make_config(SelfTrainConfig, dict(dataset="folder", data_root="x", store="y", head="linear"))
    assert cfg.ddp_find_unused


def test_group_norm_groups_divide_the_channels():
    from labelless.models.segmenter import _norm

    assert _norm("gn", 70).num_groups == 14 and _norm("gn", 512).num_groups == 32 and _norm("gn", 3).num_groups == 1


def test_augmentation_keeps_image_and_label_aligned():
    from labelless.data.pairs import sample_generator
    from labelless.train.selftrain.data import photometric, random_crop, rescale

    label = torch.zeros(40, 60, dtype=torch.long)
    label[:, 30:] = 1
    image = torch.zeros(3, 40, 60, dtype=torch.uint8)
    image[0, :, 30:] = 255  # red exactly where the label is 1
    x, y = rescale(image, label, 80)
    assert y.shape == (80, 120) and x.shape == (3, 80, 120)
    x, y = random_crop(x, y, 96, 255, sample_generator(3))
    assert y.shape == (96, 96) and (y == 255).any()  # padded (80 < 96) with ignore
    red = x[0] > 0.5
    assert torch.equal(red, y == 1)  # nearest label, bilinear image: the same edge
    g1, g2 = sample_generator(5), sample_generator(5)
    torch.testing.assert_close(photometric(x, 0.4, 0.05, g1), photometric(x, 0.4, 0.05, g2))  # seeded
