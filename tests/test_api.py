"""The Python API (``labelless.load``) on tiny random models: every input type, batching,
scores, overlays, files, errors, option routing and checkpoints of other methods."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _train_fixtures import one_thread  # noqa: F401 (autouse)
from PIL import Image

import labelless
from labelless.errors import ImageError, SettingError
from labelless.visualize import palette

WORDS = ["sky", "road|street", "car"]


@pytest.fixture(scope="module")
def seg():
    return labelless.load("tiny-vit", "none", device="cpu")


def _photo(h=40, w=60, seed=0) -> np.ndarray:
    """Smooth colour regions plus noise: labels that are not all one class."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    base = np.stack([255 * yy / h, 255 * xx / w, 128 + 100 * np.sin(xx / 5.0)], -1)
    return (base + rng.integers(0, 40, (h, w, 3))).clip(0, 255).astype(np.uint8)


def test_every_input_type_gives_the_same_labels_as_the_cli(seg, tmp_path):
    from labelless.cli import main

    arr = _photo()
    Image.fromarray(arr).save(tmp_path / "photo.png")
    tensor = torch.from_numpy(arr).permute(2, 0, 1)
    inputs = {"path": tmp_path / "photo.png", "str": str(tmp_path / "photo.png"), "pil": Image.fromarray(arr),
              "array": arr, "uint8": tensor, "float": tensor.float() / 255,
              "pil-rgba": Image.fromarray(arr).convert("RGBA")}
    results = {k: seg(v, WORDS) for k, v in inputs.items()}
    ref = results["array"].labels
    assert ref.shape == (40, 60) and ref.dtype == torch.int64 and len(ref.unique()) > 1
    for k, r in results.items():
        assert torch.equal(r.labels, ref), k
        assert r.names == ["sky", "road", "car"] and torch.equal(r.image, tensor)
    assert results["path"].stem == "photo" and results["array"].stem == "image"
    # the command line, through its own _build, labels the file the same way (same seed, same defaults)
    assert main(["segment", str(tmp_path / "photo.png"), "--labels", "sky,road|street,car", "--out",
                 str(tmp_path / "cli"), "--model", "tiny-vit", "--pretrained", "none", "--device", "cpu"]) == 0
    assert np.array_equal(np.array(Image.open(tmp_path / "cli" / "photo.png")), ref.numpy())
    assert torch.equal(seg(arr, "sky, road|street, car").labels, ref)  # a comma string is the same vocabulary


@pytest.mark.parametrize("protocol", ["squash", "slide", "whole"])
def test_a_batched_call_equals_one_call_per_image(protocol):
    images = [_photo(40, 60, 0), _photo(52, 36, 1), _photo(64, 64, 2)]
    one = labelless.load("tiny-vit", "none", device="cpu", protocol=protocol, short_side=48, batch_size=1)
    singles = [one(im, WORDS).labels for im in images]
    batched = one(images, WORDS)
    assert [r.stem for r in batched] == ["image_0", "image_1", "image_2"]
    for r, s in zip(batched, singles):
        assert torch.equal(r.labels, s)  # batch size 1: bit-equal
    big = labelless.load("tiny-vit", "none", device="cpu", protocol=protocol, short_side=48, batch_size=3)
    for r, s in zip(big(images, WORDS), singles):  # batched kernels may round near-ties differently
        assert (r.labels == s).float().mean() > 0.99


def test_scores_on_request_match_the_labels(seg):
    arr = _photo()
    r = seg(arr, WORDS, scores=True)
    assert r.scores.shape == (3, 40, 60) and r.scores.dtype == torch.float32
    assert torch.equal(r.scores.argmax(0), r.labels)
    assert seg(arr, WORDS).scores is None
    # with a background threshold: label 0 where softmax(100 · scores) is not confident enough
    bg = seg.variant(bg_threshold=0.6)
    rb = bg(arr, WORDS, scores=True)
    assert rb.names == ["background", "sky", "road", "car"] and rb.scores.shape[0] == 3
    conf, idx = (100 * rb.scores).softmax(0).max(0)
    ref = torch.where(conf < 0.6, 0, idx + 1)
    assert (rb.labels == ref).float().mean() > 0.999 and (ref == 0).any() and (ref > 0).any()


def test_shares_overlay_and_save_write_what_they_say(seg, tmp_path):
    arr = _photo()
    r = seg(arr, WORDS)
    counts = np.bincount(r.labels.flatten().numpy(), minlength=3)
    assert list(r.shares) == ["sky", "road", "car"]
    assert np.allclose(list(r.shares.values()), counts / counts.sum()) and abs(sum(r.shares.values()) - 1) < 1e-9
    ov = np.asarray(r.overlay())
    assert ov.shape[0] >= 40 and ov.shape[1] > 60  # legend on the right
    blend = (0.5 * arr.astype(np.float32) + 0.5 * palette(3)[r.labels.numpy()]).round().clip(0, 255)
    assert np.array_equal(ov[:40, :60], blend.astype(np.uint8))
    paths = r.save(tmp_path / "out", stem="street")
    assert paths["labels"].name == "street.png" and paths["overlay"].name == "street_overlay.png"
    assert np.array_equal(np.array(Image.open(paths["labels"])), r.labels.numpy())
    assert np.array_equal(np.asarray(Image.open(paths["overlay"]).convert("RGB")), ov)
    assert paths["names"].read_text().splitlines() == ["0 sky", "1 road", "2 car"]


def test_bad_images_and_empty_words_are_clear_errors(seg, tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    bad = [(tmp_path / "missing.png", "image not found: .*missing.png"),
           (tmp_path / "broken.jpg", "cannot read image .*broken.jpg"),
           (np.zeros((8, 8), np.uint8), r"shape \(8, 8\).*H×W×3 uint8"),
           (np.zeros((8, 8, 3)), "dtype float64"),
           (torch.zeros(4, 8, 8, dtype=torch.uint8), "expected 3×H×W"),
           (torch.full((3, 8, 8), 2.0), r"\[0, 1\]"),
           (torch.zeros(3, 8, 8, dtype=torch.int32), "int32"),
           (torch.zeros(3, 0, 8), "empty image"),
           (object(), "cannot use a object")]
    for image, message in bad:
        with pytest.raises(ImageError, match=message):
            seg(image, WORDS)
    with pytest.raises(ImageError, match="image 1 of 2"):
        seg([_photo(), np.zeros((8, 8), np.uint8)], WORDS)
    for words in ([], "", " , | ,", ["", " | "]):
        with pytest.raises(SettingError, match="vocabulary is empty"):
            seg(_photo(), words)
    with pytest.raises(SettingError, match="give a string"):
        seg(_photo(), ["sky", 3])
    assert seg([], WORDS) == []


def test_options_route_by_name_and_variants_reuse_the_model(tmp_path):
    before = torch.get_rng_state()
    seg = labelless.load("tiny-vit", "none", device="cpu", protocol="slide", short_side=80, stride=20, batch_size=2)
    assert torch.equal(torch.get_rng_state(), before)  # the caller's RNG is left alone
    assert (seg.protocol.name, seg.protocol.short_side, seg.protocol.stride) == ("slide", 80, 20)
    assert seg.segmenter(WORDS).batch_size == 2
    with pytest.raises(SettingError, match="unknown option colour=.*bg_threshold"):
        labelless.load("tiny-vit", "none", device="cpu", colour=1)
    with pytest.raises(SettingError, match="protocol"):
        labelless.load("tiny-vit", "none", device="cpu", protocol="tiles")
    other = seg.variant("whole", bg_threshold=0.5)
    assert other.scorer is seg.scorer and other.protocol.name == "whole" and other.protocol.short_side == 64
    assert other.segmenter(WORDS).bg_threshold == 0.5 and seg.segmenter(WORDS).bg_threshold is None
    assert seg.variant(input_size=32).protocol.stride == 20  # given: kept
    plain = labelless.load("tiny-vit", "none", device="cpu", protocol="slide")
    assert plain.protocol.stride == 42 and plain.variant(input_size=32).protocol.stride == 21  # re-resolved, not stale
    squash = labelless.load("tiny-vit", "none", device="cpu")  # batch size not given: the default per protocol
    assert squash.segmenter(WORDS).batch_size == 1 and squash.variant("slide").segmenter(WORDS).batch_size == 8
    with pytest.raises(SettingError, match="device: model settings"):
        seg.variant(device="cpu")
    # the vocabulary is built once per word list, whatever its spelling
    assert seg.segmenter(WORDS) is seg.segmenter("sky, road|street, car")
    assert seg.segmenter(["sky"]) is not seg.segmenter(WORDS)
    # seeds: the same seed, the same random weights
    a, b, c = (labelless.load("tiny-vit", "none", device="cpu", seed=s).scorer.model for s in (0, 0, 1))
    pa, pb, pc = (next(m.parameters()) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


def test_checkpoint_files_of_every_method_load(tmp_path, tiny_vit):
    from labelless.models.clip import save_checkpoint
    from labelless.models.segmenter import SegmenterConfig, SemanticSegmenter, save_segmenter
    from labelless.models.sseg import build_sseg, save_sseg
    from labelless.scorers import DenseCLIPScorer
    from labelless.segment import Segmenter

    arr = _photo()
    image = torch.from_numpy(arr).permute(2, 0, 1)
    clip = labelless.load(None, str(save_checkpoint(tiny_vit, tmp_path / "clip.pt")), "maskclip", device="cpu")
    scorer = DenseCLIPScorer(tiny_vit, "maskclip")  # the same model, built by hand
    (ref,) = Segmenter(scorer, scorer.vocabulary([["sky"], ["road", "street"], ["car"]]), batch_size=1).predict([image])
    assert torch.equal(clip(arr, WORDS).labels, ref)

    torch.manual_seed(0)
    sseg = labelless.load(None, str(save_sseg(build_sseg("sseg-tiny").eval(), tmp_path / "sseg.pt")), device="cpu")
    r = sseg(arr, WORDS, scores=True)
    assert r.labels.shape == (40, 60) and (r.scores >= 0).all()  # mask-classification scores: Σ sigmoid · softmax
    assert torch.equal(r.scores.argmax(0), r.labels)
    cfg = SegmenterConfig(classes=["road", "sky", "car"], backbone="tiny", backbone_options={"width": 8},
                          head="linear", channels=16, norm="gn", image_size=64)
    closed = labelless.load(None, str(save_segmenter(SemanticSegmenter(cfg).eval(), tmp_path / "seg.pt")),
                            device="cpu")
    r = closed(arr, ["car", "sky"], scores=True)
    assert r.names == ["car", "sky"] and set(r.labels.unique().tolist()) <= {0, 1}
    assert torch.equal(r.scores.argmax(0), r.labels)
    with pytest.raises(SettingError, match="not one of this closed-vocabulary"):
        closed(arr, ["bicycle"])


def test_the_readme_example_runs(tmp_path, monkeypatch):
    import re
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    section = (repo / "README.md").read_text().split("### Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    (tmp_path / "labelless").mkdir()
    (tmp_path / "labelless" / "examples").symlink_to(repo / "labelless" / "examples")
    monkeypatch.chdir(tmp_path)  # the example's paths are relative to the repository root
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["result"].labels.shape == (360, 480) and scope["with_scores"].shape == (2, 360, 480)
    first = scope["batch"][0].labels  # the same photo three ways (batched kernels may round near-ties differently)
    assert len(scope["batch"]) == 3 and all((b.labels == first).float().mean() > 0.99 for b in scope["batch"])
    stem = "camvid_0016E5_07959"
    assert {p.name for p in (tmp_path / "seg").iterdir()} == {f"{stem}.png", f"{stem}_overlay.png", "labels.txt"}
    assert (tmp_path / "overlay.png").is_file()
