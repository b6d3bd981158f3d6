import pytest
import torch
import torch.nn.functional as F

from labelless.errors import ImageError, SettingError
from labelless.io import load_image
from labelless.labelmaps import labels_from_similarity
from labelless.scorers import DenseCLIPScorer
from labelless.segment import Protocol, resize_short_side
from labelless.segment import Segmenter as _Segmenter
from labelless.slide import slide_windows
from labelless.vocab.encode import build_vocabulary


def Segmenter(model, vocab, mode, protocol="squash", **kw):  # noqa: N802 (reads like the class)
    """A segmenter over the dense-CLIP scorer of ``model`` in ``mode``."""
    return _Segmenter(DenseCLIPScorer(model, mode), vocab, protocol, **kw)

CLASSES = ["sky", "road", "car", "tree"]


def _img(h, w, seed=0):
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def vocab(tiny_vit):
    return build_vocabulary(tiny_vit, CLASSES, "single")


def test_slide_windows_cover_like_mmseg():
    wins = slide_windows(100, 150, crop=64, stride=40)
    cover = torch.zeros(100, 150, dtype=torch.int32)
    for y1, x1, y2, x2 in wins:
        assert (y2 - y1, x2 - x1) == (64, 64)
        cover[y1:y2, x1:x2] += 1
    assert cover.min() >= 1
    # mmseg: h_grids = max(100-64+40-1, 0)//40 + 1 = 2, w_grids = (150-64+39)//40 + 1 = 4
    assert len(wins) == 8
    assert slide_windows(30, 50, crop=64, stride=40) == [(0, 0, 30, 50)]


def test_resize_short_side():
    x = torch.rand(1, 3, 360, 480)
    assert resize_short_side(x, 640).shape[-2:] == (640, 853)
    assert resize_short_side(x, 640, max_long=800).shape[-2:] == (600, 800)


def test_labels_from_similarity_background():
    sim = torch.tensor([[[0.30]], [[0.29]], [[0.10]]])  # K=3, 1×1
    assert labels_from_similarity(sim).item() == 0
    # softmax(100·sim) top prob ≈ 0.73 -> above 0.5 -> argmax+1 = 1
    assert labels_from_similarity(sim, 100.0, 0.5).item() == 1
    assert labels_from_similarity(sim, 100.0, 0.9).item() == 0


@pytest.mark.parametrize("protocol", ["squash", "slide", "whole"])
def test_predict_shapes(tiny_vit, vocab, protocol):
    seg = Segmenter(tiny_vit, vocab, "maskclip", Protocol(protocol, short_side=80), batch_size=3)
    images = [_img(60, 90, 1), _img(75, 50, 2), _img(64, 64, 3)]
    preds = seg.predict(images)
    for im, p in zip(images, preds):
        assert p.shape == im.shape[1:] and p.dtype == torch.int64
        assert 0 <= p.min() and p.max() < len(CLASSES)


def test_squash_batching_does_not_change_results(tiny_vit, vocab):
    images = [_img(60, 90, 1), _img(75, 50, 2), _img(64, 64, 3)]
    a = Segmenter(tiny_vit, vocab, "sclip", "squash", batch_size=1).similarity(images)
    b = Segmenter(tiny_vit, vocab, "sclip", "squash", batch_size=3).similarity(images)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)


def test_slide_with_one_window_equals_whole(tiny_vit, vocab):
    """An image exactly one window large: slide and whole run the same computation."""
    img = _img(64, 64, 5)
    s = Segmenter(tiny_vit, vocab, "clearclip", Protocol("slide", short_side=64)).similarity([img])[0]
    w = Segmenter(tiny_vit, vocab, "clearclip", Protocol("whole", short_side=64)).similarity([img])[0]
    torch.testing.assert_close(s, w)


def test_slide_averages_overlaps(tiny_vit, vocab):
    """Two overlapping windows: the overlap is the mean of both windows' maps."""
    img = _img(64, 96, 6).float() / 255
    seg = Segmenter(tiny_vit, vocab, "vanilla", Protocol("slide", short_side=64, stride=32))
    out = seg.similarity([img])[0]
    left = seg.similarity([img[:, :, :64]])[0]
    right = seg.similarity([img[:, :, 32:]])[0]
    torch.testing.assert_close(out[:, :, :32], left[:, :, :32], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out[:, :, 64:], right[:, :, 32:], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out[:, :, 32:64], (left[:, :, 32:] + right[:, :, :32]) / 2, rtol=1e-4, atol=1e-5)


def test_background_threshold_labels(tiny_vit, vocab):
    seg = Segmenter(tiny_vit, vocab, "maskclip", "squash", bg_threshold=1.01)
    (p,) = seg.predict([_img(40, 40)])
    assert torch.all(p == 0)  # nothing is that confident
    seg = Segmenter(tiny_vit, vocab, "maskclip", "squash", bg_threshold=0.0)
    (p,) = seg.predict([_img(40, 40)])
    assert p.min() >= 1 and p.max() <= len(CLASSES)


def test_bad_arguments(tiny_vit, vocab):
    with pytest.raises(SettingError, match="protocol"):
        Segmenter(tiny_vit, vocab, "vanilla", "zoom")
    with pytest.raises(SettingError, match="mode"):
        Segmenter(tiny_vit, vocab, "nomode", "squash")


def test_load_image_errors(tmp_path):
    from PIL import Image

    good = tmp_path / "good.jpg"
    Image.new("RGB", (20, 10), (10, 20, 30)).save(good)
    assert load_image(good).shape == (3, 10, 20)
    trunc = tmp_path / "trunc.jpg"
    trunc.write_bytes(good.read_bytes()[:100])
    with pytest.raises(ImageError, match="trunc.jpg"):
        load_image(trunc)
    with pytest.raises(ImageError, match="missing.jpg"):
        load_image(tmp_path / "missing.jpg")
    (tmp_path / "text.png").write_text("hello")
    with pytest.raises(ImageError, match="text.png"):
        load_image(tmp_path / "text.png")


def _reference_slide(seg, image):
    """mmseg's slide_inference written out for one image, window after window: scores ``K×h×w``."""
    p = seg.protocol
    x = resize_short_side(image[None].float() / 255, p.short_side, p.max_long_side)
    h, w = x.shape[-2:]
    acc = torch.zeros(len(seg.vocab), h, w)
    count = torch.zeros(1, h, w)
    for y1, x1, y2, x2 in slide_windows(h, w, p.input_size, p.stride):
        crop = x[..., y1:y2, x1:x2]
        s = seg.scorer.scores(seg.scorer.normalize(crop), seg.vocab).float()
        acc[:, y1:y2, x1:x2] += F.interpolate(s, size=crop.shape[-2:], mode="bilinear", align_corners=False)[0]
        count[:, y1:y2, x1:x2] += 1
    return acc / count


@pytest.mark.parametrize("batch_size", [1, 3, 5, 16])
def test_slide_batches_windows_of_several_images_like_one_at_a_time(tiny_vit, vocab, batch_size):
    """Windows of several images (of different sizes, the last one
    resized below the window height) batched
    together give each image the scores and labels of the plain per-window loop."""
    images = [_img(60, 90, 1), _img(75, 50, 2), _img(30, 40, 3), _img(64, 64, 4), _img(50, 130, 5)]
    seg = Segmenter(tiny_vit, vocab, "sclip", Protocol("slide", short_side=72, max_long_side=110, stride=24),
                    batch_size=batch_size)
    scores = seg.scores(images)
    preds = seg.predict(images)
    for im, s, pred in zip(images, scores, preds):
        ref = _reference_slide(seg, im)
        assert s.shape == ref.shape
        torch.testing.assert_close(s, ref, rtol=0, atol=1e-6)
        up = F.interpolate(ref[None], size=im.shape[-2:], mode="bilinear", align_corners=False)[0]
        assert (pred == labels_from_similarity(up)).float().mean() > 0.999  # ulp-level ties aside
        assert torch.equal(pred, labels_from_similarity(F.interpolate(
            s[None], size=im.shape[-2:], mode="bilinear", align_corners=False)[0]))


def test_slide_window_count_is_the_grid_product():
    """Every (row range, column range) pair is a window, so a pixel's count is a product."""
    wins = slide_windows(100, 170, 48, 31)
    ys = sorted({(a, c) for a, _, c, _ in wins})
    xs = sorted({(b, d) for _, b, _, d in wins})
    assert sorted(wins) == sorted((a, b, c, d) for a, c in ys for b, d in xs)
