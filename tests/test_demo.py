"""``labelless demo`` without a browser: the request handler on a tiny model, the model
cache, the error messages, a bad --pretrained stopping before the server, the examples."""

from __future__ import annotations

import re

import numpy as np
import pytest
from _train_fixtures import one_thread  # noqa: F401 (autouse)
from PIL import Image

import labelless
from labelless import demo
from labelless.cli import main
from labelless.demo import DemoApp, ModelChoice
from labelless.errors import ImageError, SettingError

WORDS = "sky, road|street, car"
TINY = ModelChoice("tiny-vit", "none")


@pytest.fixture
def app():
    a = DemoApp([TINY, ModelChoice("tiny-convnext", "none")], {"device": "cpu"})
    yield a
    a.close()


def _photo(h=36, w=48):
    rng = np.random.default_rng(3)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_a_request_gives_overlay_legend_label_map_and_shares(app):
    arr = _photo()
    out = app.segment(arr, WORDS, TINY.label, "auto", "squash", "none")
    ref = labelless.load("tiny-vit", "none", device="cpu")(arr, WORDS)  # the API, as a user would call it
    assert np.array_equal(np.array(Image.open(out.label_map)), ref.labels.numpy())
    assert np.array_equal(np.asarray(out.overlay), np.asarray(ref.overlay()))
    assert out.shares == ref.shares
    rows = re.findall(r'<tr class="labelless-class" data-index="(\d)">.*?class="name">(\w+)</td>'
                      r'<td class="share">([\d.]+) %</td>', out.legend)
    assert [(int(i), n) for i, n, _ in rows] == [(0, "sky"), (1, "road"), (2, "car")]
    assert [float(s) for _, _, s in rows] == [round(100 * v, 1) for v in ref.shares.values()]
    assert "tiny-vit · none · mode pixelclip · squash · 48×36 px" in out.status


def test_models_are_loaded_once_and_reused(app, monkeypatch):
    import labelless.api

    calls = []
    real = labelless.api.load
    monkeypatch.setattr(labelless.api, "load", lambda *a, **k: calls.append(a) or real(*a, **k))
    app.preload()
    assert [c[:3] for c in calls] == [("tiny-vit", "none", "auto"), ("tiny-convnext", "none", "auto")]
    for protocol in ("squash", "slide", "squash"):  # another protocol: the same loaded model
        app.segment(_photo(), WORDS, TINY.label, "auto", protocol, "none")
    assert len(calls) == 2
    app.segment(_photo(), WORDS, TINY.label, "maskclip", "squash", "none")  # another mode: loaded once more
    assert len(calls) == 3 and app.segmenter(TINY.label, "maskclip", "slide", "none").scorer.mode == "maskclip"


def test_what_the_user_can_fix_raises_a_labelless_error(app):
    with pytest.raises(ImageError, match="no image"):
        app.segment(None, WORDS, TINY.label, "auto", "squash", "none")
    with pytest.raises(SettingError, match="vocabulary is empty"):
        app.segment(_photo(), " , ", TINY.label, "auto", "squash", "none")
    with pytest.raises(SettingError, match="vocabulary is empty"):
        app.segment(_photo(), None, TINY.label, "auto", "squash", "none")
    with pytest.raises(SettingError, match="not available for tiny-convnext"):
        app.segment(_photo(), WORDS, "tiny-convnext · none", "pixelclip", "squash", "none")
    with pytest.raises(SettingError, match="unknown refinement"):
        app.segment(_photo(), WORDS, TINY.label, "auto", "squash", "crf")
    with pytest.raises(SettingError, match="unknown model"):
        app.segment(_photo(), WORDS, "ViT-H · laion", "auto", "squash", "none")


def test_the_gradio_handler_shows_the_message():
    gr = pytest.importorskip("gradio")
    a = DemoApp([TINY], {"device": "cpu"})
    try:
        with pytest.raises(gr.Error, match="the vocabulary is empty"):
            a.handle(_photo(), "", TINY.label, "auto", "squash", "none")
        overlay, legend, path, status = a.handle(_photo(), WORDS, TINY.label, "auto", "squash", "none")
        assert overlay.size[0] > 48 and overlay.size[1] >= 36 and "sky" in legend
        assert path.endswith("labels.png") and "s on cpu" in status
    finally:
        a.close()


def test_a_pretrained_that_cannot_load_stops_before_the_server(monkeypatch, capsys):
    pytest.importorskip("gradio")
    monkeypatch.setattr(demo, "launch", lambda *a: pytest.fail("the server started"))
    assert main(["demo", "--model", "tiny-vit", "--pretrained", "/no/such/weights.pt", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("labelless demo: error:") and "pass a checkpoint file or 'none'" in err
    code = main(["demo", "--model", "tiny-vit", "--pretrained", "none", "--extra-model", "ViT-B-16", "nosuchtag",
                 "--device", "cpu"])
    assert code == 2 and "'nosuchtag' is neither a file nor a pretrained tag" in capsys.readouterr().err


def test_demo_options_reach_the_app():
    from labelless.cli import build_parser

    args = build_parser().parse_args(["demo", "--model", "tiny-vit", "--pretrained", "none", "--extra-model", "auto",
                                      "run/model.pt", "--protocol", "slide", "--short-side", "96",
                                      "--bg-threshold", "0.5", "--port", "7999", "--server-name", "0.0.0.0", "--share"])
    a = demo.app_from_args(args)
    try:
        assert list(a.choices) == ["tiny-vit · none", "auto · run/model.pt"]
        assert a.choices["auto · run/model.pt"].model is None
        assert (a.protocol, a.geometry, a.load_options["bg_threshold"]) == ("slide", {"short_side": 96}, 0.5)
        assert (args.port, args.server_name, args.share) == (7999, "0.0.0.0", True)
        a.choices = {TINY.label: TINY}
        a.load_options["device"] = "cpu"
        assert a.segmenter(TINY.label, "auto", "slide", "none").protocol.short_side == 96
        assert a.segmenter(TINY.label, "auto", "squash", "none").protocol.short_side == 640  # its own default
    finally:
        a.close()


def test_the_examples_ship_with_their_licence():
    images = demo.example_images()
    assert len(images) == 3 and all(p.stat().st_size < 60_000 for p in images)
    for p in images:
        with Image.open(p) as im:
            assert im.size == (480, 360) and im.mode == "RGB"
    note = (demo.EXAMPLES_DIR / "README.md").read_text()
    assert "CC BY-NC 4.0" in note and "Brostow" in note


def test_ci_runs_the_readme_commands():
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    readme = (repo / "README.md").read_text()
    lines = [ln for ln in (repo / ".ci" / "run").read_text().splitlines()
             if ln and not ln.startswith(("#", "set ", "cd "))]
    assert len(lines) == 3
    for line in lines:
        assert line.removeprefix("LABELLESS_BROWSER_TEST=required ") in readme, line


def test_refinements_equal_the_api_with_the_same_refinement(app):
    """PAMR and SLIC-mask refinement in the page: the labels of the API given the same
    refinement (and, for masks, the photo's SLIC masks from the per-image mask source)."""
    from labelless.masks.per_image import build_mask_source
    from labelless.refine import MaskRefinement, PAMRRefinement

    pytest.importorskip("skimage")
    arr = _photo(48, 64)
    plain = labelless.load("tiny-vit", "none", device="cpu")
    image = labelless.api.as_image(arr, "image")
    masks = build_mask_source("slic")([image], ["image"], None)
    for name, seg, extra in [("pamr", plain.variant("squash", refine=PAMRRefinement()), {}),
                             ("masks: SLIC superpixels", plain.variant("squash", refine=MaskRefinement()),
                              {"masks": masks})]:
        out = app.segment(arr, WORDS, TINY.label, "auto", "squash", name)
        ref = seg(arr, WORDS, **extra)
        assert np.array_equal(np.array(Image.open(out.label_map)), ref.labels.numpy()), name
        assert not np.array_equal(ref.labels.numpy(), plain(arr, WORDS).labels.numpy()), name  # it did refine
