"""Refinement (``labelless.refine``): mask refinement and PAMR against direct per-mask /
per-pixel loops, labels made chunk by chunk against the full-size reference, zero-shot mask
classification (ground-truth masks + a perfect scorer give 100 mIoU through ``eval``), and
``--refine masks`` with each mask source (a fabricated store, DINO k-means of the real
DINOv2-S, a tiny SAM) end to end, every setting read back from results.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from labelless.cli import build_parser, main
from labelless.errors import SettingError
from labelless.labelmaps import labels_from_similarity, upsample_labels
from labelless.refine import MaskRefinement, PAMRRefinement, pamr, pamr_affinity, refine_with_masks, refined_labels
from labelless.segment import Segmenter
from labelless.vocab.encode import Vocabulary

REAL_DINOV2 = Path(__file__).resolve().parents[1].parent / "shared" / "weights" / "dinov2-small"
TINY = ["--model", "tiny-vit", "--pretrained", "none"]
K = 4  # classes of the fabricated dataset
H, W = 20, 24


# ------------------------------------------------------------------------ references

def reference_refine(scores, masks, overlap):
    """Per-mask means by explicit loops over each mask's pixels, then every pixel on its own."""
    C, h, w = scores.shape
    masks = [m for m in masks if m.any()]
    means = []
    for m in masks:
        total, n = torch.zeros(C, dtype=torch.float64), 0
        for y in range(h):
            for x in range(w):
                if m[y, x]:
                    total += scores[:, y, x].double()
                    n += 1
        means.append(total / n)
    out = scores.clone().double()
    for y in range(h):
        for x in range(w):
            cover = [i for i, m in enumerate(masks) if m[y, x]]
            if not cover:
                continue
            if overlap == "mean":
                out[:, y, x] = sum(means[i] for i in cover) / len(cover)
            else:
                areas = [int(masks[i].sum()) for i in cover]
                out[:, y, x] = means[cover[areas.index(min(areas))]]  # first of the smallest
    return out.float()


def reference_pamr(image, scores, iterations, dilations):
    """PAMR's formula pixel by pixel: neighbours by clamped coordinates, the unbiased std of
    the 3×3 windows (centre once per dilation), softmax over the 8·len(d) neighbours."""
    C, h, w = image.shape
    img = image.double()

    def at(t, y, x):
        return t[:, min(max(y, 0), h - 1), min(max(x, 0), w - 1)]

    offsets = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    weights = {}
    for y in range(h):
        for x in range(w):
            window = torch.stack([at(img, y + d * dy, x + d * dx) for d in dilations
                                  for dy in (-1, 0, 1) for dx in (-1, 0, 1)])  # (9·nd)×C
            std = window.std(0, unbiased=True)
            logits = torch.stack([-((img[:, y, x] - at(img, y + d * dy, x + d * dx)).abs()
                                    / (1e-8 + 0.1 * std)).mean() for d in dilations for dy, dx in offsets])
            weights[y, x] = logits.softmax(0)
    m = scores.double()
    for _ in range(iterations):
        new = torch.zeros_like(m)
        for y in range(h):
            for x in range(w):
                nbrs = [at(m, y + d * dy, x + d * dx) for d in dilations for dy, dx in offsets]
                new[:, y, x] = sum(a * v for a, v in zip(weights[y, x], nbrs))
        m = new
    return m.float()


def _masks(seed=0, n=5, h=9, w=11):
    """``n`` random rectangles of growing size (overlapping, some pixels in none), one of them
    emptied, and a corner pixel shared by the last two."""
    g = torch.Generator().manual_seed(seed)
    m = torch.zeros(n, h, w, dtype=torch.bool)
    for i in range(n):
        y0, x0 = int(torch.randint(0, h - 2, (1,), generator=g)), int(torch.randint(0, w - 2, (1,), generator=g))
        m[i, y0:y0 + 2 + i, x0:x0 + 3 + i] = True
    m[n // 2] = False
    m[-1, 0, 0] = m[-2, 0, 0] = True
    return m


# ----------------------------------------------------------------- pure functions

@pytest.mark.parametrize("overlap", ["mean", "smallest"])
def test_mask_refinement_equals_per_mask_loops(overlap):
    scores = torch.randn(3, 9, 11, generator=torch.Generator().manual_seed(1))
    masks = _masks()
    assert (~masks.any(0)).any() and (masks.sum(0) > 1).any()  # the case has uncovered and shared pixels
    out = refine_with_masks(scores, masks, overlap)
    torch.testing.assert_close(out, reference_refine(scores, masks, overlap), rtol=1e-5, atol=1e-6)
    uncovered = ~masks.any(0)
    assert torch.equal(out[:, uncovered], scores[:, uncovered])  # kept bit for bit
    # tiny chunks of masks give the same
    torch.testing.assert_close(refine_with_masks(scores, masks, overlap, max_elements=1), out)


def test_mask_refinement_without_masks_and_bad_rule():
    s = torch.randn(2, 4, 5)
    assert torch.equal(refine_with_masks(s, torch.zeros(0, 4, 5, dtype=torch.bool)), s)
    assert torch.equal(refine_with_masks(s, torch.zeros(3, 4, 5, dtype=torch.bool)), s)
    with pytest.raises(SettingError, match="overlap"):
        refine_with_masks(s, torch.ones(1, 4, 5, dtype=torch.bool), "largest")
    with pytest.raises(SettingError, match="--mask-overlap"):
        MaskRefinement("largest")
    with pytest.raises(SettingError, match="iterations"):
        PAMRRefinement(0)
    with pytest.raises(SettingError, match="dilations"):
        PAMRRefinement(10, (8, 0))


def test_pamr_equals_the_formula_pixel_by_pixel():
    g = torch.Generator().manual_seed(2)
    image = torch.rand(3, 7, 8, generator=g)
    image[:, :, :4] += 1.0  # an edge for the affinities to respect
    scores = torch.randn(2, 7, 8, generator=g)
    out = pamr(image, scores, iterations=3, dilations=(1, 2))
    torch.testing.assert_close(out, reference_pamr(image, scores, 3, (1, 2)), rtol=1e-4, atol=1e-5)
    aff = pamr_affinity(image, (1, 2))
    assert aff.shape == (16, 7, 8)
    torch.testing.assert_close(aff.sum(0), torch.ones(7, 8))
    const = torch.full((2, 7, 8), 0.3)
    torch.testing.assert_close(pamr(image, const, 4, (1, 2)), const)  # a weighted mean keeps constants


@pytest.mark.parametrize("threshold,probabilities", [(None, False), (0.4, False), (0.85, True)])
def test_refined_labels_equal_full_size_reference(threshold, probabilities):
    g = torch.Generator().manual_seed(3)
    scores = torch.rand(12, 4, 5, generator=g)  # 12 classes at low resolution
    size = (9, 11)
    masks = _masks(4)
    transform = MaskRefinement("mean").transform(masks, None)
    full = F.interpolate(scores[None], size=size, mode="bilinear", align_corners=False)[0]
    want = labels_from_similarity(reference_refine(full, masks, "mean"), 20.0, threshold, probabilities)
    seen = []

    def spy(chunk):
        seen.append(chunk.shape[0])
        return transform(chunk)

    for max_elements in (2 ** 25, 8 * 9 * 11):  # one chunk, and chunks of 8 classes
        seen.clear()
        got = refined_labels(scores, size, spy, 20.0, threshold, probabilities, max_elements)
        assert torch.equal(got, want)
        assert sum(seen) == 12 and (max_elements > 12 * 99 or max(seen) < 12)  # never all 12 at once
    if threshold is not None:
        assert (want == 0).any() and (want > 0).any()  # the threshold decides somewhere


def test_identity_refinement_gives_the_plain_labels_bit_for_bit():
    scores = torch.randn(10, 6, 7, generator=torch.Generator().manual_seed(4))
    for thr in (None, 0.2):
        assert torch.equal(refined_labels(scores, (31, 23), lambda c: c, 10.0, thr),
                           upsample_labels(scores, (31, 23), 10.0, thr))


# --------------------------------------------------------- fabricated benchmark

def _encode(label):
    """The image of a label: red channel 40·class + 20 (ignored pixels 250), noisy green/blue."""
    rng = np.random.default_rng(int(label.sum()))
    img = rng.integers(0, 256, (*label.shape, 3), dtype=np.uint8)
    img[..., 0] = np.where(label == 255, 250, 40 * label.astype(np.int64) + 20)
    return img


def _labels():
    a = np.zeros((H, W), np.uint8)
    a[:, 10:] = 1
    a[12:, :] = 2
    a[12:, 16:] = 3
    a[5, :] = 255
    b = np.full((H, W), 3, np.uint8)
    b[4:15, 3:20] = 0
    b[8:12, 8:14] = 2
    b[:, 22:] = 255
    return {"a": a, "b": b}


def _dataset(root):
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "classes.txt").write_text("".join(f"c{i}\n" for i in range(K)))
    for name, lab in _labels().items():
        Image.fromarray(_encode(lab)).save(root / "images" / f"{name}.png")
        Image.fromarray(lab).save(root / "labels" / f"{name}.png")
    return root


class PerfectScorer:
    """Reads the class from the red channel: scores = one-hot(label) (probabilities). With
    ``noise``, a third of the pixels (a diagonal pattern) score a wrong class higher, so the
    pixels alone are not perfect but every region's mean still is."""

    image_size = (H, H)
    stride = 1
    probabilities = True
    device = torch.device("cpu")
    mean = torch.zeros(1, 3, 1, 1)
    std = torch.ones(1, 3, 1, 1)

    def __init__(self, noise=False):
        self.noise = noise

    def configure(self, precision="auto", compile=False):
        pass

    def normalize(self, images):
        return images

    def vocabulary(self, classes, templates=None, reduce="mean"):
        return Vocabulary([str(c) for c in classes], torch.eye(len(classes)), torch.arange(len(classes)), "mean")

    def info(self):
        return {"model": "perfect", "pretrained": None, "mode": None, "scorer": "test"}

    def scores(self, images, vocab, feature_size=None):
        lab = ((images[:, 0] * 255 - 20) / 40).round().clamp(0, K - 1).long()
        s = F.one_hot(lab, K).permute(0, 3, 1, 2).float()
        if self.noise:
            h, w = lab.shape[-2:]
            yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
            hit = ((yy + xx) % 3 == 0).expand_as(lab)
            wrong = F.one_hot((lab + 1) % K, K).permute(0, 3, 1, 2).float()
            s = s + 1.5 * wrong * hit[:, None]
        return s


def _eval(data, out, *opts, monkeypatch=None, scorer=None):
    if scorer is not None:
        monkeypatch.setattr("labelless.loader.load_scorer", lambda *a, **k: scorer)
    code = main(["eval", "--dataset", "folder", "--data-root", str(data), "--split", "val", "--out", str(out),
                 "--workers", "0", *opts])
    return code, (json.loads((out / "results.json").read_text()) if code == 0 else None)


@pytest.mark.parametrize("noise", [False, True])
def test_ground_truth_masks_and_a_perfect_scorer_give_100(tmp_path, monkeypatch, noise):
    data = _dataset(tmp_path / "d")
    whole = ["--protocol", "whole", "--short-side", str(H)]
    code, plain = _eval(data, tmp_path / "plain", *whole, monkeypatch=monkeypatch, scorer=PerfectScorer(noise))
    assert code == 0 and (plain["mIoU"] < 90 if noise else plain["mIoU"] == 100.0)
    assert plain["refine"] is None
    code, res = _eval(data, tmp_path / "gt", *whole, "--refine", "masks", "--masks", "gt",
                      monkeypatch=monkeypatch, scorer=PerfectScorer(noise))
    assert code == 0 and res["mIoU"] == 100.0 and res["pAcc"] == 100.0
    assert res["refine"] == {"method": "masks", "overlap": "mean", "resolution": "image",
                             "masks": {"source": "gt", "ignore_index": 255}}
    labelled = sum(int((lab != 255).sum()) for lab in _labels().values())
    assert res["num_pixels"] == labelled


def test_mask_classification_is_exact_at_full_size_for_a_coarse_scorer(tmp_path, monkeypatch):
    """squash: the scorer sees an 8×8 squashed image and its scores are upsampled, so its
    plain labels blur at region borders; each ground-truth region still takes its class whole."""
    data = _dataset(tmp_path / "d")
    squash = ["--protocol", "squash", "--input-size", "8", "--feature-size", "8"]
    _, plain = _eval(data, tmp_path / "plain", *squash, monkeypatch=monkeypatch, scorer=PerfectScorer())
    _, res = _eval(data, tmp_path / "gt", *squash, "--refine", "masks", "--masks", "gt",
                   monkeypatch=monkeypatch, scorer=PerfectScorer())
    assert plain["mIoU"] < 100 and res["mIoU"] == 100.0


def test_mask_classification_equals_per_mask_vote_of_pooled_scores():
    """Python API: each ground-truth segment labelled with the argmax of the scores pooled in it."""
    from labelless.masks.ops import labels_to_masks

    seg = Segmenter(PerfectScorer(noise=True), PerfectScorer().vocabulary(list("abcd")), "squash",
                    batch_size=2, refine=MaskRefinement())
    labs = _labels()
    images = [torch.from_numpy(_encode(lab)).permute(2, 0, 1) for lab in labs.values()]
    masks = [labels_to_masks(torch.from_numpy(lab), ignore=255) for lab in labs.values()]
    preds = seg.predict(images, masks)
    for im, m, pred in zip(images, masks, preds):
        full = seg.similarity([im])[0]
        for mask in m:
            pooled = torch.stack([full[:, y, x] for y, x in mask.nonzero().tolist()]).mean(0)
            assert (pred[mask] == int(pooled.argmax())).all()
    with pytest.raises(SettingError, match="refines with masks"):
        seg.predict(images)


# ------------------------------------------------------------------- mask sources

def _reference_labels(data, out, opts, masks_of):
    """Labels of the saved predictions against the reference: the segmenter's full-size scores
    (``similarity``), refined by per-mask loops with ``masks_of(name, image)``, argmax."""
    args = build_parser().parse_args(["eval", "--dataset", "folder", "--data-root", str(data), "--out", str(out),
                                      *TINY, *opts])
    from labelless.cli import _build

    _, seg = _build(args, [f"c{i}" for i in range(K)], False)
    changed = 0
    for name in _labels():
        image = torch.from_numpy(np.array(Image.open(data / "images" / f"{name}.png"))).permute(2, 0, 1)
        full = seg.similarity([image])[0]
        want = reference_refine(full, masks_of(name, image), "mean").argmax(0)
        got = torch.from_numpy(np.array(Image.open(out / "predictions" / f"{name}.png"))).long()
        assert torch.equal(got, want), name
        changed += int((want != full.argmax(0)).sum())
    assert changed > 0  # the masks changed some labels: the comparison is not that of plain labels


def test_refine_with_a_mask_store(tmp_path, capsys):
    pytest.importorskip("pycocotools")
    from labelless.masks.store import create_store, write_masks

    data = _dataset(tmp_path / "d")
    store = create_store(tmp_path / "store", "test", {"made": "by hand"})
    big = torch.zeros(2, H, W, dtype=torch.bool)
    big[0, :, :14] = big[1, 6:, 8:] = True  # two large overlapping masks, then small ones
    stored = {"a": torch.cat([big, _masks(5, 4, H, W)]), "b": torch.cat([big, _masks(6, 6, H, W)])}
    for name, m in stored.items():
        write_masks(store, name, data / "images" / f"{name}.png", m.numpy())
    out = tmp_path / "out"
    code, res = _eval(data, out, *TINY, "--refine", "masks", "--masks", str(store), "--save-predictions")
    assert code == 0
    assert res["refine"] == {"method": "masks", "overlap": "mean", "resolution": "image",
                             "masks": {"source": "store", "store": str(store.resolve()), "store_source": "test",
                                       "store_params": {"made": "by hand"}}}
    _reference_labels(data, out, [], lambda name, image: stored[name])
    # smallest-mask rule: recorded, and a different result where masks overlap
    code, res2 = _eval(data, tmp_path / "small", *TINY, "--refine", "masks", "--masks", str(store),
                       "--mask-overlap", "smallest")
    assert code == 0 and res2["refine"]["overlap"] == "smallest"
    # an image without a record: an error naming it and the store
    (store / "masks" / "b.json").unlink()
    code, _ = _eval(data, tmp_path / "missing", *TINY, "--refine", "masks", "--masks", str(store))
    assert code == 2 and "has no record for image 'b'" in capsys.readouterr().err


def test_refine_with_online_dino_kmeans_of_the_real_dinov2(tmp_path):
    pytest.importorskip("transformers")
    if not (REAL_DINOV2 / "config.json").is_file():
        pytest.skip(f"no DINOv2-S weights at {REAL_DINOV2}")
    from labelless.masks.dino import dino_kmeans_masks, load_dino

    data = _dataset(tmp_path / "d")
    out = tmp_path / "out"
    opts = f"model={REAL_DINOV2},k=3,size=56"
    code, res = _eval(data, out, *TINY, "--refine", "masks", "--masks", "dino", "--mask-options", opts,
                      "--save-predictions")
    assert code == 0
    masks = res["refine"]["masks"]
    assert masks["source"] == "dino" and masks["params"]["k"] == 3 and masks["params"]["size"] == 56
    assert masks["params"]["model"] == str(REAL_DINOV2.resolve()) and masks["params"]["features"] == "tokens"
    backbone = load_dino(REAL_DINOV2)
    direct = {}

    def masks_of(name, image):
        direct[name] = dino_kmeans_masks(backbone, [image], 3, size=56)[0]
        return direct[name]

    _reference_labels(data, out, [], masks_of)
    assert all(1 < m.shape[0] <= 3 for m in direct.values())  # real clusters, so a real refinement


def test_refine_with_tiny_sam_masks(tmp_path):
    pytest.importorskip("segment_anything")
    pytest.importorskip("torchvision")
    from labelless.masks.sam import build_sam_generator, sam_masks, save_tiny_sam

    ckpt = save_tiny_sam(tmp_path / "sam.pt")
    loose = dict(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)
    data = _dataset(tmp_path / "d")
    out = tmp_path / "out"
    opts = f"checkpoint={ckpt},model_type=tiny," + ",".join(f"{k}={v}" for k, v in loose.items())
    code, res = _eval(data, out, *TINY, "--refine", "masks", "--masks", "sam", "--mask-options", opts,
                      "--save-predictions")
    assert code == 0
    params = res["refine"]["masks"]["params"]
    assert res["refine"]["masks"]["source"] == "sam" and params["model_type"] == "tiny"
    assert params["points_per_side"] == 4 and params["checkpoint"] == str(ckpt.resolve())
    gen = build_sam_generator(ckpt, "tiny", **loose)
    _reference_labels(data, out, [], lambda name, image: torch.from_numpy(sam_masks(gen, image)[0]))


def test_pamr_through_eval_equals_pamr_of_the_full_size_scores(tmp_path):
    data = _dataset(tmp_path / "d")
    out = tmp_path / "out"
    opts = ["--refine", "pamr", "--pamr-iterations", "3", "--pamr-dilations", "1,2"]
    code, res = _eval(data, out, *TINY, *opts, "--save-predictions")
    assert code == 0
    assert res["refine"]["method"] == "pamr" and res["refine"]["iterations"] == 3
    assert res["refine"]["dilations"] == [1, 2]
    args = build_parser().parse_args(["eval", "--dataset", "folder", "--data-root", str(data), "--out", str(out),
                                      *TINY, *opts])
    from labelless.cli import _build

    _, seg = _build(args, [f"c{i}" for i in range(K)], False)
    p = seg.protocol
    changed = 0
    for name in _labels():
        image = torch.from_numpy(np.array(Image.open(data / "images" / f"{name}.png"))).permute(2, 0, 1)
        full = seg.similarity([image])[0]
        small = F.interpolate(image[None].float() / 255, size=(p.short_side, p.short_side * W // H),
                              mode="bilinear", align_corners=False, antialias=True)
        guide = F.interpolate(seg.scorer.normalize(small), size=(H, W), mode="bilinear", align_corners=False)[0]
        want = reference_pamr(guide, full, 3, (1, 2)).argmax(0)
        got = torch.from_numpy(np.array(Image.open(out / "predictions" / f"{name}.png"))).long()
        assert torch.equal(got, want), name
        changed += int((want != full.argmax(0)).sum())
    assert changed > 0  # PAMR changed some labels
    code, res = _eval(data, tmp_path / "default", *TINY, "--refine", "pamr")
    assert code == 0 and res["refine"]["iterations"] == 10 and res["refine"]["dilations"] == [8, 16]


def test_segment_refines_with_a_store_and_refuses_ground_truth(tmp_path, capsys):
    pytest.importorskip("pycocotools")
    from labelless.masks.store import create_store, write_masks

    data = _dataset(tmp_path / "d")
    store = create_store(tmp_path / "store", "test")
    write_masks(store, "a", data / "images" / "a.png", _masks(7, 3, H, W).numpy())
    seg = ["segment", str(data / "images" / "a.png"), "--labels", "x,y,z", *TINY, "--out"]
    assert main([*seg, str(tmp_path / "s"), "--refine", "masks", "--masks", str(store)]) == 0
    assert np.array(Image.open(tmp_path / "s" / "a.png")).shape == (H, W)
    assert main([*seg, str(tmp_path / "g"), "--refine", "masks", "--masks", "gt"]) == 2
    assert "use it with eval" in capsys.readouterr().err


@pytest.mark.parametrize("opts,message", [
    (["--masks", "gt"], "goes only with --refine masks"),
    (["--refine", "masks"], "needs --masks"),
    (["--refine", "pamr", "--masks", "gt"], "goes only with --refine masks"),
    (["--refine", "masks", "--masks", "gt", "--pamr-iterations", "3"], "goes only with --refine pamr"),
    (["--refine", "pamr", "--pamr-dilations", "8,x"], "give integers"),
    (["--refine", "pamr", "--pamr-iterations", "0"], "must be >= 1"),
    (["--refine", "masks", "--masks", "gt", "--mask-options", "k=3"], "apply to a computed mask source"),
    (["--refine", "masks", "--masks", "slic", "--mask-options", "k"], "not KEY=VALUE"),
    (["--refine", "masks", "--masks", "slic", "--mask-options", "kk=3"], "unknown slic parameter"),
    (["--refine", "masks", "--masks", "no/such/store"], "not gt, a mask source"),
])
def test_bad_refinement_options_are_one_line_errors(tmp_path, capsys, opts, message):
    data = _dataset(tmp_path / "d")
    code, _ = _eval(data, tmp_path / "out", *TINY, *opts)
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
