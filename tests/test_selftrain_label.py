"""``labelless selftrain label``: pseudo-labels equal the model's own segmentation (dense CLIP
and S-Seg), the confidence is the background threshold's quantity, filtering, resume, skipped
images, labels never read, and two gloo processes writing the same store as one."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _dist import run_ranks
from _train_fixtures import one_thread  # noqa: F401 (autouse: one thread, as the gloo workers)
from PIL import Image

from labelless.cli import _build, build_parser, main
from labelless.data.benchmarks import Benchmark, load_benchmark
from labelless.errors import DatasetError, SettingError
from labelless.io import load_image
from labelless.labelmaps import upsample_labels
from labelless.selftrain.label import labels_and_confidence
from labelless.selftrain.store import (
    apply_min_confidence,
    load_pseudo_label,
    read_label_png,
    read_store,
    save_pseudo_label,
    store_samples,
)
from labelless.vocab.classnames import load_classnames

TINY = ["--model", "tiny-vit", "--pretrained", "none"]
CLASSES = ["sky", "road", "car"]
SIZES = [(24, 32), (30, 20), (17, 41), (24, 24), (36, 28)]


def _folder(root, n=3):
    """A ``folder`` dataset of ``n`` random images whose label files are garbage (never read)."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (*SIZES[i], 3), dtype=np.uint8)).save(root / "images" / f"im{i}.png")
        (root / "labels" / f"im{i}.png").write_bytes(b"not a png")
    return root


def _voc21(root, n=2):
    """VOC-21 (background class 0), CAT-Seg layout, train split; label files garbage."""
    base = root / "VOCdevkit" / "VOC2012"
    (base / "JPEGImages").mkdir(parents=True)
    (base / "annotations_detectron2_bg" / "train").mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (*SIZES[i], 3), dtype=np.uint8)).save(base / "JPEGImages" / f"v{i}.png")
        (base / "annotations_detectron2_bg" / "train" / f"v{i}.png").write_bytes(b"garbage")
    return root


def _label(root, out, *opts, dataset="folder"):
    return main(["selftrain", "label", "--dataset", dataset, "--data-root", str(root), "--out", str(out), *opts])


def _png(path) -> np.ndarray:
    return np.array(Image.open(path))


def _segmenter(opts, bench):
    """The command's own segmenter for ``opts`` (the same parser and builder)."""
    args = build_parser().parse_args(["selftrain", "label", "--dataset", "x", "--data-root", "x", "--out", "x", *opts])
    return _build(args, bench.classes, bench.background)[1]


def _files(store) -> dict:
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*.png"))}


@pytest.fixture(scope="module")
def sseg_pt(tmp_path_factory):
    from labelless.models.sseg import build_sseg, save_sseg

    torch.manual_seed(0)
    model = build_sseg("sseg-tiny").eval()
    with torch.no_grad():  # random sseg-tiny gives one class everywhere: sharpen masks and classes
        for name, p in model.named_parameters():
            if "mask_embed" in name:
                p.mul_(8)
        model.log_scale.fill_(4.0)
    return save_sseg(model, tmp_path_factory.mktemp("sseg") / "sseg.pt")


@pytest.fixture(autouse=True)
def labels_are_never_read(monkeypatch):
    def refuse(self, sample):
        raise AssertionError(f"read the label of {sample.name}")
    monkeypatch.setattr(Benchmark, "load_label", refuse)


# --------------------------------------------------------------------------- pure functions
@pytest.mark.parametrize("probabilities", [False, True])
@pytest.mark.parametrize("bg", [None, 0.4])
@pytest.mark.parametrize("channels_last", [False, True])
def test_labels_and_confidence_match_labelmaps_and_reference(probabilities, bg, channels_last):
    g = torch.Generator().manual_seed(3)
    scores = torch.rand(11, 5, 7, generator=g) * (1.0 if probabilities else 0.1)
    if channels_last:  # what the einsum of the scorers returns
        scores = scores[None].contiguous(memory_format=torch.channels_last)[0]
    size = (37, 29)
    for max_elements in (2 ** 25, 3 * 37 * 29):  # one call, and chunks of 3 classes
        labels, conf = labels_and_confidence(scores, size, 50.0, bg, probabilities, max_elements)
        assert torch.equal(labels, upsample_labels(scores, size, 50.0, bg, probabilities, max_elements))
        sim = F.interpolate(scores[None].float(), size=size, mode="bilinear", align_corners=False)[0]
        ref = sim.max(0).values if probabilities else (50.0 * sim).softmax(0).max(0).values
        torch.testing.assert_close(conf, ref, rtol=1e-5, atol=1e-6)


def test_store_files_names_dtypes_and_filtering(tmp_path):
    labels = np.array([[0, 1], [2, 255]])
    conf = np.array([[10, 200], [127, 128]], dtype=np.uint8)
    save_pseudo_label(tmp_path, "city/a", labels, conf, 3, 255)  # sub-folders kept
    assert _png(tmp_path / "labels/city/a.png").dtype == np.uint8 and Image.open(tmp_path / "labels/city/a.png").mode == "P"
    assert np.array_equal(read_label_png(tmp_path / "labels/city/a.png"), labels)
    assert np.array_equal(_png(tmp_path / "confidence/city/a.png"), conf)
    save_pseudo_label(tmp_path, "b", np.array([[299, 0]]), np.zeros((1, 2), np.uint8), 300, 65535)
    assert np.array_equal(read_label_png(tmp_path / "labels/b.png"), [[299, 0]])  # 16-bit
    with pytest.raises(DatasetError):
        save_pseudo_label(tmp_path, "../x", labels, conf, 3, 255)
    # q < 255·p: 127 < 127.5 is ignored, 128 kept
    assert apply_min_confidence(labels, conf, 0.5, 255).tolist() == [[255, 1], [255, 255]]
    assert apply_min_confidence(labels, conf, None, 255).tolist() == labels.tolist()


# --------------------------------------------------------------------------- = segment output
@pytest.mark.parametrize("kind", ["dense-squash", "dense-slide", "sseg"])
def test_pseudo_labels_equal_segment_output(tmp_path, kind, sseg_pt):
    root = _folder(tmp_path / "ds")
    opts = {"dense-squash": TINY, "dense-slide": [*TINY, "--mode", "naclip", "--protocol", "slide",
                                                 "--input-size", "32", "--stride", "16", "--batch-size", "3"],
            "sseg": ["--pretrained", str(sseg_pt)]}[kind]
    assert _label(root, tmp_path / "store", "--split", "train", *opts) == 0
    assert main(["segment", str(root / "images"), "--labels", ",".join(CLASSES), "--out", str(tmp_path / "seg"),
                 *opts]) == 0
    meta = read_store(tmp_path / "store")
    assert meta["classes"] == CLASSES and meta["counts"]["labelled"] == 3 and meta["complete"]
    assert meta["model"]["scorer"] == ("mask-classification" if kind == "sseg" else "dense-clip")
    hist = np.zeros(4, np.int64)
    for i in range(3):
        got = _png(tmp_path / "store" / "labels" / f"im{i}.png")
        assert got.shape == SIZES[i]
        assert np.array_equal(got, _png(tmp_path / "seg" / f"im{i}.png")), f"im{i}"
        hist += np.bincount(got.ravel(), minlength=4)[:4]
    assert meta["histogram"]["pixels_per_class"] == hist[:3].tolist() and meta["histogram"]["ignored"] == 0
    assert (hist[:3] > 0).sum() >= 2, hist  # the models say more than one class: the equality means something


def test_background_threshold_dataset_labels_and_confidence(tmp_path):
    """VOC-21: background is class 0, predicted by --bg-threshold; the confidence is the top
    foreground probability, the value the threshold tests."""
    root = _voc21(tmp_path / "voc")
    opts = [*TINY, "--bg-threshold", "0.4", "--templates", "single"]
    assert _label(root, tmp_path / "store", "--split", "train", *opts, dataset="voc21") == 0
    bench = load_benchmark("voc21", root, "train")
    meta = read_store(tmp_path / "store")
    assert meta["classes"] == bench.classes and meta["classes"][0] == "background" and meta["background"]
    seg = _segmenter(opts, bench)
    background = []
    for s in bench.samples:
        image = load_image(s.image)
        got = _png(tmp_path / "store" / "labels" / f"{s.name}.png")
        background.append(got == 0)
        assert np.array_equal(got, seg.predict([image])[0].numpy())
        sim = F.interpolate(seg.scores([image])[0][None], size=image.shape[-2:], mode="bilinear",
                            align_corners=False)[0]
        ref = (100.0 * sim).softmax(0).max(0).values.numpy()
        q = _png(tmp_path / "store" / "confidence" / f"{s.name}.png").astype(np.float64)
        assert np.abs(q / 255 - ref).max() <= 0.5 / 255 + 1e-6
        assert np.all(ref[got == 0] < 0.4 + 1e-5) and np.all(ref[got != 0] >= 0.4 - 1e-5)
    assert 0 < np.concatenate([b.ravel() for b in background]).mean() < 1  # both kinds of pixel
    assert _label(root, tmp_path / "s2", *TINY, "--bg-threshold", "0.4") == 2  # folder: no background class


def test_mmseg_harness_labels_equal_predict(tmp_path):
    """The mmseg harness's settings (per-synonym softmax, class 0 scored by its 26 stuff words and
    the threshold's label): the stored labels are the segmenter's classes, not synonym rows."""
    root = _voc21(tmp_path / "voc")
    names = tmp_path / "names.txt"  # SCLIP's VOC-21 words with a shorter background line
    names.write_text("\n".join(["background, sky, wall"] + load_classnames("mmseg/voc21")[1:]) + "\n")
    opts = [*TINY, "--mode", "sclip", "--protocol", "slide", "--short-side", "48", "--input-size", "32",
            "--stride", "16", "--templates", "single", "--synonyms", "max_prob", "--class-names", str(names),
            "--score-background", "--logit-scale", "10", "--bg-threshold", "0.04"]
    assert _label(root, tmp_path / "store", "--split", "train", *opts, dataset="voc21") == 0
    bench = load_benchmark("voc21", root, "train")
    meta = read_store(tmp_path / "store")
    assert meta["inference"]["synonyms"] == "max_prob" and meta["inference"]["score_background"] is True
    assert meta["inference"]["class_names"] == str(names)
    seg = _segmenter(opts, bench)
    assert len(seg.vocab) == 21 and seg.vocab.embeddings.shape[0] == 3 + 18 + 7 + 5  # every synonym a row
    got = [_png(tmp_path / "store" / "labels" / f"{s.name}.png") for s in bench.samples]
    for s, g in zip(bench.samples, got):
        assert np.array_equal(g, seg.predict([load_image(s.image)])[0].numpy())
    values = np.unique(np.concatenate([g.ravel() for g in got]))
    assert values.max() <= 20 and 0 in values and len(values) >= 2
    assert _label(root, tmp_path / "s2", "--split", "train", *opts, "--area-threshold", "0.1", dataset="voc21") == 2


# --------------------------------------------------------------------------- confidence
def _mask_segmenter():
    """A mask-classification segmenter whose scores lie around 1 (sseg-tiny's random ones are all
    above it, where the stored confidence saturates): masks pushed towards 0 by their bias."""
    from _tiny_models import TinyMaskClassifier

    from labelless.scorers import MaskClassificationScorer
    from labelless.segment import Segmenter

    model = TinyMaskClassifier(num_masks=5).eval()
    with torch.no_grad():
        model.head.bias -= 1.5
    scorer = MaskClassificationScorer(model)
    return Segmenter(scorer, scorer.vocabulary(CLASSES, "single"), "squash")


def _label_with(seg, root, store, min_confidence=None, ignore=255):
    """``label_benchmark`` with a ready segmenter (the command's loop without the model loading)."""
    from labelless.selftrain.label import label_benchmark

    bench = load_benchmark("folder", root, "train")
    meta = {"dataset": "folder", "split": "train", "classes": bench.classes, "background": False,
            "ignore_index": ignore, "min_confidence": min_confidence, "model": {"scorer": "test"}, "inference": {}}
    return label_benchmark(seg, bench, store, meta, progress=False)


@pytest.mark.parametrize("kind", ["dense", "mask"])
def test_confidence_is_top_class_probability_and_filtering(tmp_path, kind):
    root = _folder(tmp_path / "ds", n=2)
    bench = load_benchmark("folder", root, "train")
    seg = _segmenter(TINY, bench) if kind == "dense" else _mask_segmenter()

    def run(store, p=None, ignore=255):
        if kind == "dense":  # through the command
            return _label(root, store, *TINY, *([] if p is None else ["--min-confidence", f"{p}",
                                                                      "--ignore-index", str(ignore)]))
        return 0 if _label_with(seg, root, store, p, ignore)["counts"]["images"] else 1

    assert run(tmp_path / "all") == 0
    qs = {}
    for s in bench.samples:
        image = load_image(s.image)
        sim = F.interpolate(seg.scores([image])[0][None], size=image.shape[-2:], mode="bilinear",
                            align_corners=False)[0]
        ref = sim.max(0).values.clamp(max=1) if kind == "mask" else (100.0 * sim).softmax(0).max(0).values
        qs[s.name] = _png(tmp_path / "all" / "confidence" / f"{s.name}.png")
        assert np.abs(qs[s.name] / 255.0 - ref.numpy()).max() <= 0.5 / 255 + 1e-6
    all_q = np.concatenate([q.ravel() for q in qs.values()])
    p = float(np.median(all_q)) / 255 + 1e-3  # about half the pixels below
    assert 0 < (all_q < 255 * p).mean() < 1
    assert run(tmp_path / "filtered", p, 200) == 0
    for name, q in qs.items():
        full = _png(tmp_path / "all" / "labels" / f"{name}.png")
        got = _png(tmp_path / "filtered" / "labels" / f"{name}.png")
        low = q < 255 * p
        assert np.all(got[low] == 200) and np.array_equal(got[~low], full[~low])
        assert np.array_equal(_png(tmp_path / "filtered" / "confidence" / f"{name}.png"), q)
        # re-filtering the unfiltered store later gives the same labels
        assert np.array_equal(load_pseudo_label(tmp_path / "all", name, p, 200), got)
        assert np.array_equal(load_pseudo_label(tmp_path / "filtered", name), got)
    meta = read_store(tmp_path / "filtered")
    assert meta["min_confidence"] == p and meta["ignore_index"] == 200
    assert meta["histogram"]["ignored"] == int((all_q < 255 * p).sum())
    with pytest.raises(SettingError, match="lower threshold"):
        load_pseudo_label(tmp_path / "filtered", "im0", p / 2)
    assert [t[1].name for t in store_samples(tmp_path / "filtered", bench.samples)] == ["im0.png", "im1.png"]


# --------------------------------------------------------------------------- resume, skips
def test_resume_is_byte_identical_and_redoes_missing(tmp_path, capsys):
    root = _folder(tmp_path / "ds")
    store = tmp_path / "store"
    assert _label(root, store, *TINY) == 0
    first, meta = _files(store), read_store(store)
    assert _label(root, store, *TINY) == 0
    assert _files(store) == first
    again = read_store(store)
    assert again["counts"] == {"samples": 3, "labelled": 0, "resumed": 3, "skipped": 0, "images": 3}
    assert {k: v for k, v in again.items() if k != "counts"} == {k: v for k, v in meta.items() if k != "counts"}
    (store / "confidence" / "im1.png").unlink()
    assert _label(root, store, *TINY) == 0
    assert _files(store) == first
    assert read_store(store)["counts"]["labelled"] == 1 and read_store(store)["histogram"] == meta["histogram"]
    capsys.readouterr()
    assert _label(root, store, *TINY, "--templates", "single") == 2  # another setting: refused
    assert "other settings" in capsys.readouterr().err


def test_unreadable_images_are_skipped_and_counted(tmp_path, capsys):
    root = _folder(tmp_path / "ds")
    (root / "images" / "im1.png").write_bytes(b"\x89PNG garbage")
    store = tmp_path / "store"
    assert _label(root, store, *TINY) == 0
    assert "im1.png" in capsys.readouterr().err
    meta = read_store(store)
    assert meta["counts"]["labelled"] == 2 and meta["counts"]["skipped"] == 1
    assert "im1.png" in meta["skipped"][0]["image"]
    assert sorted(p.name for p in (store / "labels").iterdir()) == ["im0.png", "im2.png"]
    assert _label(root, tmp_path / "workers", *TINY, "--workers", "2") == 0  # decoded in 2 worker processes
    assert "im1.png" in capsys.readouterr().err
    assert _files(tmp_path / "workers") == _files(store)
    assert {k: read_store(tmp_path / "workers")[k] for k in ("counts", "skipped")} == \
        {k: meta[k] for k in ("counts", "skipped")}
    for i in (0, 2):
        (root / "images" / f"im{i}.png").write_bytes(b"garbage")
    assert _label(root, tmp_path / "none", *TINY) == 1  # nothing could be labelled


# --------------------------------------------------------------------------- two processes
def test_two_processes_write_the_same_store(tmp_path):
    root = _folder(tmp_path / "ds", n=5)
    (root / "images" / "im3.png").write_bytes(b"broken")  # one rank skips one
    argv = ["selftrain", "label", "--dataset", "folder", "--data-root", str(root), *TINY, "--min-confidence", "0.3"]
    assert main([*argv, "--out", str(tmp_path / "one")]) == 0
    run_ranks(tmp_path, [*argv, "--out", str(tmp_path / "two")])
    one, two = read_store(tmp_path / "one"), read_store(tmp_path / "two")
    assert two["run"]["world_size"] == 2 and two["counts"]["labelled"] == 4 and two["counts"]["skipped"] == 1
    assert {k: v for k, v in one.items() if k != "run"} == {k: v for k, v in two.items() if k != "run"}
    assert _files(tmp_path / "one") == _files(tmp_path / "two")
    with open(tmp_path / "two" / "store.json") as f:
        assert json.load(f)["complete"] is True


def test_options_checked_and_max_images(tmp_path, capsys):
    root = _folder(tmp_path / "ds")
    for bad in (["--min-confidence", "1.5"], ["--ignore-index", "2"], ["--max-images", "0"]):
        assert _label(root, tmp_path / "bad", *TINY, *bad) == 2
    assert not (tmp_path / "bad").exists()  # refused before anything is written
    assert _label(root, tmp_path / "two", *TINY, "--max-images", "2") == 0
    assert read_store(tmp_path / "two")["counts"]["samples"] == 2
    assert sorted(p.name for p in (tmp_path / "two" / "labels").iterdir()) == ["im0.png", "im1.png"]


# --------------------------------------------------------------------------- refined pseudo-labels
@pytest.mark.parametrize("probabilities", [False, True])
@pytest.mark.parametrize("bg", [None, 0.4])
def test_refined_labels_confidence_is_the_refined_top_probability(probabilities, bg):
    """refined_labels(confidence=True): the labels refined_labels gives, and the top class
    probability of the whole refined map (the plain labels_and_confidence for the identity)."""
    from labelless.refine import pamr, refined_labels

    g = torch.Generator().manual_seed(5)
    scores = torch.rand(7, 6, 5, generator=g) * (1.0 if probabilities else 0.1)
    size, guide = (29, 23), torch.rand(3, 29, 23, generator=g)
    full = pamr(guide, F.interpolate(scores[None], size=size, mode="bilinear", align_corners=False)[0], 3, (1, 2))
    ref = full.max(0).values if probabilities else (50.0 * full).softmax(0).max(0).values
    for max_elements in (2 ** 25, 2 * 29 * 23):  # one chunk, and chunks of 2 classes
        def transform(c):
            return pamr(guide, c, 3, (1, 2))
        labels, conf = refined_labels(scores, size, transform, 50.0, bg, probabilities, max_elements, confidence=True)
        assert torch.equal(labels, refined_labels(scores, size, transform, 50.0, bg, probabilities, max_elements))
        torch.testing.assert_close(conf, ref, rtol=1e-5, atol=1e-6)
        ident = refined_labels(scores, size, lambda c: c, 50.0, bg, probabilities, max_elements, confidence=True)
        plain = labels_and_confidence(scores, size, 50.0, bg, probabilities, max_elements)
        assert torch.equal(ident[0], plain[0])
        torch.testing.assert_close(ident[1], plain[1], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("refine", [["--refine", "pamr", "--pamr-iterations", "3", "--pamr-dilations", "1,2"],
                                    ["--refine", "masks", "--masks", "rgb-kmeans", "--mask-options", "k=3"]])
def test_refined_pseudo_labels_equal_segment_output(tmp_path, refine):
    root = _folder(tmp_path / "ds")
    opts = [*TINY, "--protocol", "slide", "--input-size", "32", "--stride", "16"]
    assert _label(root, tmp_path / "store", *opts, *refine) == 0
    assert _label(root, tmp_path / "plain", *opts) == 0
    assert main(["segment", str(root / "images"), "--labels", ",".join(CLASSES), "--out", str(tmp_path / "seg"),
                 *opts, *refine]) == 0
    meta = read_store(tmp_path / "store")
    assert meta["inference"]["refine"]["method"] == refine[1]
    assert "refine" not in read_store(tmp_path / "plain")["inference"]  # stores made before refinement resume
    changed = 0
    for i in range(3):
        got = _png(tmp_path / "store" / "labels" / f"im{i}.png")
        assert np.array_equal(got, _png(tmp_path / "seg" / f"im{i}.png")), f"im{i}"
        changed += int((got != _png(tmp_path / "plain" / "labels" / f"im{i}.png")).sum())
        conf = _png(tmp_path / "store" / "confidence" / f"im{i}.png")
        assert conf.shape == got.shape and conf.min() >= 255 // len(CLASSES)  # a top probability: >= 1/K
    assert changed > 0  # the refinement did something: the equality with segment means something
    # another refinement is other settings: refused, not mixed into the store
    assert _label(root, tmp_path / "store", *opts) == 2


def test_refinement_with_ground_truth_masks_is_refused(tmp_path):
    root = _folder(tmp_path / "ds")
    assert _label(root, tmp_path / "gt", *TINY, "--refine", "masks", "--masks", "gt") == 2
    assert not (tmp_path / "gt").exists()
