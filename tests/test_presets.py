"""Harness presets (labelless/presets.py): what each preset sets, read back from eval's results.json;
the harness class-name files against the benchmarks; explicit options over presets; and the mmseg
harness's label computation (softmax over every synonym, named background, SCLIP's area threshold)
against a direct transcription of SCLIP's ``forward_slide`` + ``postprocess_result``."""

import json

import pytest
import torch
import torch.nn.functional as F
from _fab_datasets import CASES

from labelless.cli import main
from labelless.errors import SettingError
from labelless.presets import DEFAULTS, PRESETS, resolve
from labelless.scorers import DenseCLIPScorer
from labelless.segment import Protocol, Segmenter, resize_short_side
from labelless.vocab.classnames import HARNESS_LISTS, load_classnames
from labelless.vocab.encode import build_vocabulary

TINY = ["--model", "tiny-vit", "--pretrained", "none", "--mode", "sclip"]
FAB = {c.id: c for c in CASES}


def _fab(tmp_path, case_id):
    case = FAB[case_id]
    root = tmp_path / case_id
    case.write(root, case.labels())
    return case, root


@pytest.fixture
def fast_text(monkeypatch):
    """The tiny CLIP's text tower replaced by seeded vectors per prompt: the presets' 80 templates ×
    every synonym are thousands of prompts, and what these tests read back does not need the tower."""
    import zlib

    from labelless.models.clip import DenseCLIP

    def encode_text(self, texts, batch_size=256):
        rows = [torch.randn(self.embed_dim, generator=torch.Generator().manual_seed(zlib.crc32(t.encode())))
                for t in texts]
        return F.normalize(torch.stack(rows), dim=-1)

    monkeypatch.setattr(DenseCLIP, "encode_text", encode_text)


def _eval(tmp_path, case_id, *extra) -> dict:
    case, root = _fab(tmp_path, case_id)
    out = tmp_path / f"out-{case_id}-{len(list(tmp_path.iterdir()))}"
    argv = ["eval", "--dataset", case.key, "--data-root", str(root), "--layout", case.layout,
            "--split", case.split, "--out", str(out), *TINY, *extra]
    assert main(argv) == 0
    return json.loads((out / "results.json").read_text())


# ---------------------------------------------------------------- resolve (pure)


def test_resolve_layers_defaults_preset_dataset_and_explicit():
    assert {k: v for k, v in resolve(None, "camvid").items() if k in DEFAULTS} == {**DEFAULTS, "class_names": "camvid"}
    s = resolve("mmseg", "voc21")
    assert (s["protocol"], s["short_side"], s["input_size"], s["stride"], s["logit_scale"], s["bg_threshold"],
            s["area_threshold"], s["class_names"], s["preset_entry"]) == \
        ("slide", 336, 224, 112, 65.0, 0.1, 0.1, "mmseg/voc21", "voc21")
    generic = resolve("mmseg", "camvid")  # a benchmark the preset does not list: its "*" entry
    assert generic["preset_entry"] == "*" and generic["short_side"] == 336 and generic["class_names"] == "camvid"
    s = resolve("mmseg", "voc21", {"protocol": "squash", "bg_threshold": "none", "area_threshold": None,
                                    "logit_scale": 7.0})
    assert (s["protocol"], s["bg_threshold"], s["area_threshold"], s["logit_scale"]) == ("squash", None, 0.1, 7.0)
    assert resolve("pixelclip", "ade150", model_kind="vit")["input_size"] == 320
    assert resolve("pixelclip", "ade150", model_kind="convnext")["input_size"] == 640
    assert resolve("pixelclip", None, model_kind=None)["input_size"] is None  # another model: its own size
    with pytest.raises(SettingError, match="unknown preset"):
        resolve("mmseg2", "voc21")


def test_harness_class_name_files_name_the_benchmarks_classes_in_order():
    """Line i of every preset's class-name file names class i of the benchmark: the same word
    (spaces dropped), or one of the harness's known renamings."""
    renamed = {("background", "sky"), ("boat", "ship"), ("diningtable", "table"), ("tvmonitor", "televisionmonitor")}
    used = set()
    for preset, table in PRESETS.items():
        for dataset, entry in table.items():
            if dataset == "*" or entry.get("class_names") is None:
                continue
            used.add(entry["class_names"])
            ours = load_classnames(dataset)
            theirs = load_classnames(entry["class_names"])
            assert len(theirs) == len(ours), (preset, dataset)
            for a, b in zip(ours, theirs):
                a, b = (x.split(", ")[0].replace(" ", "").lower() for x in (a, b))
                assert a == b or (a, b) in renamed, (preset, dataset, a, b)
    assert set(HARNESS_LISTS) <= used  # every packaged harness file is some preset's
    assert len(load_classnames("mmseg/voc21")[0].split(", ")) == 26  # SCLIP's stuff words for background
    assert load_classnames("mmseg/clearclip/voc21")[0] == "background"
    assert len(load_classnames("mmseg/proxyclip/cocoobject")[0].split(", ")) == 17


# ---------------------------------------------------------------- eval reads back what each preset sets


def _protocol(name, short, long_side, size, stride, feat, antialias):
    return {"name": name, "short_side": short, "max_long_side": long_side, "input_size": size, "stride": stride,
            "feature_size": feat, "antialias": antialias}


# (preset, fabricated dataset, protocol as resolved for tiny-vit (64 px input, patch 8), templates,
#  template count, synonyms, logit scale, bg threshold, score background, area threshold, class names)
NAMED = [
    ("mmseg", "voc21-devkit", _protocol("slide", 336, 2048, 224, 112, None, False),
     "imagenet80", 80, "max_prob", 65.0, 0.1, True, 0.1, "mmseg/voc21"),
    ("mmseg", "cityscapes-trainIds", _protocol("slide", 560, 2048, 224, 112, None, False),
     "imagenet80", 80, "max_prob", 40.0, None, False, None, "mmseg/cityscapes"),
    ("mmseg-naclip", "voc21-devkit", _protocol("whole", 336, 2048, 64, 42, None, False),
     "imagenet80", 80, "max_prob", 40.0, 0.1, True, None, "mmseg/voc21"),
    ("mmseg-clearclip", "pc60-context", _protocol("slide", 448, 2048, 448, 224, None, False),
     "imagenet80", 80, "max_prob", 50.0, 0.15, True, None, "mmseg/pc60"),
    ("mmseg-proxyclip", "cocoobject-instanceTrainIds", _protocol("slide", 336, 2048, 336, 112, None, False),
     "imagenet80", 80, "max_prob", 40.0, 0.25, True, None, "mmseg/proxyclip/cocoobject"),
    ("pixelclip", "ade150-raw", _protocol("squash", 640, 2560, 320, 213, 64, True),  # a ViT: 320
     "imagenet_select", 8, "mean", 100.0, None, False, None, "ade150"),
    ("mmseg", "camvid-val", _protocol("slide", 336, 2048, 224, 112, None, False),  # not in the table: "*"
     "imagenet80", 80, "max_prob", 40.0, None, False, None, "camvid"),
]


@pytest.mark.parametrize("row", NAMED, ids=lambda r: f"{r[0]}-{r[1]}")
def test_eval_records_the_settings_each_preset_names(tmp_path, row, fast_text):
    preset, case_id, protocol, templates, n_templates, synonyms, scale, bg, named, area, names = row
    res = _eval(tmp_path, case_id, "--preset", preset)
    assert res["preset"] == preset and res["preset_source"]
    assert res["protocol"] == protocol
    assert res["templates"] == templates and len(res["template_list"]) == n_templates
    assert (res["synonyms"], res["logit_scale"], res["bg_threshold"], res["score_background"],
            res["area_threshold"], res["class_names"]) == (synonyms, scale, bg, named, area, names)
    assert res["class_names_file"].endswith(names + ".txt")
    assert res["num_images"] == 2


def test_explicit_options_win_over_the_preset(tmp_path, fast_text):
    res = _eval(tmp_path, "voc21-devkit", "--preset", "mmseg", "--protocol", "squash", "--short-side", "80",
                "--input-size", "64", "--antialias", "--templates", "a photo of {}", "--synonyms", "mean",
                "--logit-scale", "20", "--bg-threshold", "none", "--area-threshold", "none",
                "--no-score-background", "--class-names", "voc21")
    assert res["protocol"]["name"] == "squash" and res["protocol"]["short_side"] == 80
    assert res["protocol"]["antialias"] is True and res["protocol"]["max_long_side"] == 2048  # the preset's
    assert res["template_list"] == ["a photo of {}"] and res["synonyms"] == "mean" and res["logit_scale"] == 20
    assert res["bg_threshold"] is None and res["area_threshold"] is None and res["score_background"] is False
    assert res["class_names"] == "voc21"


def test_no_preset_is_labelless_defaults(tmp_path, fast_text):
    res = _eval(tmp_path, "voc21-devkit")
    assert res["preset"] is None and res["protocol"] == _protocol("squash", 640, 2560, 64, 42, 64, True)
    assert (res["templates"], res["synonyms"], res["logit_scale"], res["bg_threshold"]) == \
        ("imagenet_select", "mean", 100.0, None)


def test_bad_class_names_file_is_named(tmp_path, capsys, fast_text):
    case, root = _fab(tmp_path, "voc21-devkit")
    short = tmp_path / "names.txt"
    short.write_text("background\ncat\n")
    argv = ["eval", "--dataset", "voc21", "--data-root", str(root), "--layout", "mmseg", "--out", str(tmp_path / "o"),
            *TINY, "--class-names", str(short)]
    assert main(argv) == 2
    assert "names.txt" in capsys.readouterr().err
    assert main([*argv[:-1], "mmseg/voc20"]) == 2  # 20 lines for 21 classes
    assert "line i must name" in capsys.readouterr().err


# ---------------------------------------------------------------- the mmseg computation vs SCLIP's code


def _sclip_reference(model, image, rows, query_idx, short, crop, stride, scale, prob_thd, area_thd=None):
    """SCLIP's forward_slide + postprocess_result, transcribed: per-synonym window logits
    averaged, resized to the image, softmax over every synonym, max per class, area and
    probability thresholds."""
    x = resize_short_side(image.float()[None] / 255, short, 2048, antialias=False)
    x = (x - model.mean) / model.std
    h_img, w_img = x.shape[-2:]
    preds = x.new_zeros(1, rows.shape[0], h_img, w_img)
    count = x.new_zeros(1, 1, h_img, w_img)
    for h_idx in range(max(h_img - crop + stride - 1, 0) // stride + 1):
        for w_idx in range(max(w_img - crop + stride - 1, 0) // stride + 1):
            y1, x1 = h_idx * stride, w_idx * stride
            y2, x2 = min(y1 + crop, h_img), min(x1 + crop, w_img)
            y1, x1 = max(y2 - crop, 0), max(x2 - crop, 0)
            with torch.no_grad():
                feats = F.normalize(model.dense_features(x[..., y1:y2, x1:x2], "sclip"), dim=1)
            logits = torch.einsum("bdhw,qd->bqhw", feats, rows)
            logits = F.interpolate(logits, size=(y2 - y1, x2 - x1), mode="bilinear")
            preds += F.pad(logits, (x1, w_img - x2, y1, h_img - y2))
            count[..., y1:y2, x1:x2] += 1
    seg = F.interpolate(preds / count, size=image.shape[-2:], mode="bilinear")[0]
    seg = (seg * scale).softmax(0)
    num_cls = int(query_idx.max()) + 1
    onehot = F.one_hot(query_idx, num_cls).T.view(num_cls, -1, 1, 1).float()
    probs = (seg[None] * onehot).max(1)[0]  # num_cls×H×W
    if area_thd is not None:
        pred = F.one_hot(probs.argmax(0), num_cls).float()
        area = pred[:, :, 1:].sum((0, 1), keepdim=True)
        area = (area > area_thd * area.sum()).float()
        probs[1:] *= area.transpose(0, -1)
    out = probs.argmax(0)
    out[probs.max(0)[0] < prob_thd] = 0
    return out, probs.max(0)[0]


@pytest.fixture(scope="module")
def scene():
    """A 50×70 image of 5×7 random colour blocks and 4 classes (9 synonyms) on which the random
    tiny ViT predicts all four (background 377, cat 896, person 2096, dog 131 pixels)."""
    blocks = torch.rand(3, 5, 7, generator=torch.Generator().manual_seed(0))
    image = (F.interpolate(blocks[None], size=(50, 70), mode="nearest")[0] * 255).to(torch.uint8)
    classes = [["background", "sky", "wall", "grass"], ["cat"], ["person", "man", "woman"], ["dog"]]
    return image, classes


@pytest.mark.parametrize("area", [None, 0.3])
def test_max_prob_named_background_and_area_equal_sclips_postprocess(tiny_vit, scene, area):
    image, classes = scene
    vocab = build_vocabulary(tiny_vit, classes, "a photo of a {}.", "max_prob")
    ref_args = (tiny_vit, image, vocab.embeddings, vocab.class_index, 48, 32, 16)
    scale = 10.0
    thd = float(_sclip_reference(*ref_args, scale, 0.0, area)[1].median())  # half the pixels fall below
    seg = Segmenter(DenseCLIPScorer(tiny_vit, "sclip"), vocab,
                    Protocol("slide", 48, 2048, input_size=32, stride=16, antialias=False),
                    scale, thd, batch_size=4, named_background=True, area_threshold=area)
    (ours,) = seg.predict([image])
    ref, _ = _sclip_reference(*ref_args, scale, thd, area)
    assert (ours == ref).float().mean() >= 0.999
    assert len(ref.unique()) >= (2 if area else 3)  # background and classes occur (area 0.3: cat, dog removed)
    # the same words reduced per class (softmax over 4 classes, not 9 synonyms) label differently
    plain = Segmenter(DenseCLIPScorer(tiny_vit, "sclip"), build_vocabulary(tiny_vit, classes, "a photo of a {}.", "max"),
                      seg.protocol, scale, thd, batch_size=4, named_background=True, area_threshold=area)
    assert (plain.predict([image])[0] != ref).float().mean() > 0.05


def test_area_threshold_removes_small_classes(tiny_vit, scene):
    image, classes = scene
    vocab = build_vocabulary(tiny_vit, classes, "a photo of a {}.", "max_prob")
    make = lambda area: Segmenter(DenseCLIPScorer(tiny_vit, "sclip"), vocab,  # noqa: E731
                                  Protocol("slide", 48, 2048, input_size=32, stride=16, antialias=False),
                                  10.0, None, named_background=True, area_threshold=area)
    (full,) = make(None).predict([image])
    (cut,) = make(0.3).predict([image])
    fg = torch.bincount(full.flatten(), minlength=4)[1:].float()
    small = [c + 1 for c in range(3) if 0 < fg[c] <= 0.3 * fg.sum()]
    assert small and not any((cut == c).any() for c in small)
    assert ((cut == full) | torch.isin(full, torch.tensor(small))).all()  # only their pixels move


def test_mask_classification_refuses_max_prob():
    from _tiny_models import TinyMaskClassifier

    from labelless.scorers import MaskClassificationScorer

    with pytest.raises(SettingError, match="max_prob"):
        MaskClassificationScorer(TinyMaskClassifier()).vocabulary([["a"], ["b"]], "single", "max_prob")


def test_segment_takes_the_presets_dataset_independent_settings(tmp_path, fast_text):
    import numpy as np
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    argv = ["segment", str(tmp_path / "a.png"), "--labels", "sky,road|street,car", "--out", str(tmp_path / "o"), *TINY]
    assert main([*argv, "--preset", "mmseg"]) == 0
    assert np.array(Image.open(tmp_path / "o" / "a.png")).shape == (30, 40)
    assert main([*argv, "--preset", "mmseg", "--bg-threshold", "0.5"]) == 0
    assert (tmp_path / "o" / "labels.txt").read_text().splitlines()[0] == "0 background"
