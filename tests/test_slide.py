"""labelless.slide: the window grid and the windows' mean as matrix products, against the
per-window loop of mmseg's slide_inference (resize each window's scores, add, divide)."""

import pytest
import torch
import torch.nn.functional as F

from labelless.slide import bilinear_matrix, slide_grid, slide_windows, window_mean


@pytest.mark.parametrize("n_out,n_in", [(224, 14), (14, 14), (360, 448), (7, 3), (5, 1), (1, 6), (97, 13)])
def test_bilinear_matrix_is_pytorchs_resize(n_out, n_in):
    v = torch.randn(4, n_in, generator=torch.Generator().manual_seed(n_out))
    want = F.interpolate(v[None, :, None, :], size=(1, n_out), mode="bilinear", align_corners=False)[0, :, 0]
    m = bilinear_matrix(n_out, n_in)
    assert m.shape == (n_out, n_in)
    torch.testing.assert_close(m.sum(1), torch.ones(n_out))  # a convex combination per output
    torch.testing.assert_close(v @ m.T, want, rtol=0, atol=1e-6)


def _loop_mean(scores, windows, size):
    """mmseg's slide_inference, written out: resize, add, count, divide."""
    k = scores.shape[1]
    acc, count = torch.zeros(k, *size), torch.zeros(1, *size)
    for (y1, x1, y2, x2), s in zip(windows, scores):
        acc[:, y1:y2, x1:x2] += F.interpolate(s[None], size=(y2 - y1, x2 - x1), mode="bilinear",
                                              align_corners=False)[0]
        count[:, y1:y2, x1:x2] += 1
    return acc / count


@pytest.mark.parametrize("h,w,crop,stride,cells", [
    (448, 597, 224, 112, (14, 14)),  # the SCLIP harness on a CamVid image
    (100, 170, 48, 31, (3, 3)),  # last windows shifted back to the border
    (30, 50, 64, 40, (2, 4)),  # image smaller than the window: one window, the image
    (64, 200, 64, 64, (4, 4)),  # one row of windows, no overlap
    (90, 90, 40, 20, (5, 2)),  # non-square low-resolution window scores
])
def test_window_mean_is_the_per_window_loop(h, w, crop, stride, cells):
    ys, xs, ch, cw = slide_grid(h, w, crop, stride)
    windows = slide_windows(h, w, crop, stride)
    assert windows == [(y, x, y + ch, x + cw) for y in ys for x in xs]
    scores = torch.randn(len(windows), 6, *cells, generator=torch.Generator().manual_seed(h + w))
    got = window_mean(scores, ys, xs, (h, w), (ch, cw))
    assert got.shape == (6, h, w) and got.is_contiguous()
    torch.testing.assert_close(got, _loop_mean(scores, windows, (h, w)), rtol=0, atol=2e-6)


def test_window_mean_checks_the_grid():
    ys, xs, ch, cw = slide_grid(100, 170, 48, 31)
    with pytest.raises(ValueError, match="window grid"):
        window_mean(torch.zeros(len(ys) * len(xs) - 1, 2, 3, 3), ys, xs, (100, 170), (ch, cw))
    with pytest.raises(ValueError, match="uncovered"):
        window_mean(torch.zeros(2, 2, 3, 3), [0], [0, 100], (100, 170), (48, 48))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_window_mean_on_cuda_is_the_per_window_loop():
    ys, xs, ch, cw = slide_grid(448, 597, 224, 112)
    scores = torch.randn(len(ys) * len(xs), 150, 14, 14, generator=torch.Generator().manual_seed(0))
    got = window_mean(scores.cuda(), ys, xs, (448, 597), (ch, cw))
    assert got.device.type == "cuda"
    want = _loop_mean(scores, slide_windows(448, 597, 224, 112), (448, 597))
    torch.testing.assert_close(got.cpu(), want, rtol=0, atol=2e-5)  # TF32 is off by default for matmul
