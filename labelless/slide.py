"""Sliding-window inference as linear algebra: the window grid and the mean of its windows.

mmseg's ``slide_inference`` (the SCLIP / NACLIP / ClearCLIP harness) resizes each window's
``K×h×w`` scores bilinearly to the window, adds them into a ``K×H×W`` sum and divides by the
number of windows covering each pixel. Every step is linear and separable, so the whole mean is
``R · G_k · Cᵀ`` for each class ``k``: ``G_k`` (``ny·h × nx·w``) holds the low-resolution
window scores side by side as the windows' grid places them, ``R`` (``H × ny·h``) and ``C``
(``W × nx·w``) are the bilinear resize matrices of one window's rows and columns placed at each
window's offset and divided by the number of windows covering the row (column); a pixel's
count is its row count times its column count because the windows form a grid.

Two matrix products per image replace ``ny·nx`` upsampled ``K×c×c`` window maps and their slice
adds, which are memory-bound: on a 2-core CPU, 150 classes, 15 windows of 224 px over a 448×597
image, the per-window way spent ~435 ms an image (one thread; ``benchmarks/slide_accumulate.py``
times both). The values equal the per-window loop's up to float rounding (summation order),
not bit for bit.
"""

from __future__ import annotations

import functools

import torch

__all__ = ["bilinear_matrix", "grid_windows", "slide_grid", "slide_windows", "window_mean"]


def slide_grid(h: int, w: int, crop: int, stride: int) -> tuple[list[int], list[int], int, int]:
    """mmseg's slide grid over an ``h×w`` image: (window top rows, window left columns, window
    height, window width); a window is smaller than ``crop`` where the image is."""
    ch, cw = min(crop, h), min(crop, w)
    ny = max(h - ch + stride - 1, 0) // stride + 1
    nx = max(w - cw + stride - 1, 0) // stride + 1
    return [min(i * stride, h - ch) for i in range(ny)], [min(i * stride, w - cw) for i in range(nx)], ch, cw


def grid_windows(grid: tuple[list[int], list[int], int, int]) -> list[tuple[int, int, int, int]]:
    """The windows ``(y1, x1, y2, x2)`` of a ``slide_grid``, row after row (mmseg's order)."""
    ys, xs, ch, cw = grid
    return [(y, x, y + ch, x + cw) for y in ys for x in xs]


def slide_windows(h: int, w: int, crop: int, stride: int) -> list[tuple[int, int, int, int]]:
    """Windows ``(y1, x1, y2, x2)`` covering an ``h×w`` image, row after row (mmseg's order)."""
    return grid_windows(slide_grid(h, w, crop, stride))


def bilinear_matrix(n_out: int, n_in: int, device=None) -> torch.Tensor:
    """``n_out×n_in`` float32 weights of 1-D bilinear resizing as ``F.interpolate(...,
    mode="bilinear", align_corners=False)`` without a scale factor: output ``i`` samples the
    input at ``(i + 0.5)·n_in/n_out − 0.5``, clamped at 0, between its two neighbours (PyTorch's
    ``area_pixel_compute_source_index`` and ``guard_index_and_lambda``)."""
    # in float32, step for step as PyTorch's CPU kernel for float input (its opmath type), so
    # that the weights are its weights, not a more exact float64 version of them
    scale = torch.tensor(n_in, dtype=torch.float32) / n_out
    src = (scale * (torch.arange(n_out, dtype=torch.float32) + 0.5) - 0.5).clamp_(min=0)
    lo = src.floor().long().clamp_(max=n_in - 1)
    lam = (src - lo).clamp_(0, 1)
    hi = (lo + 1).clamp_(max=n_in - 1)
    m = torch.zeros(n_out, n_in)
    rows = torch.arange(n_out)
    m.index_put_((rows, lo), 1 - lam, accumulate=True)
    m.index_put_((rows, hi), lam, accumulate=True)
    return m.to(device)


@functools.lru_cache(maxsize=64)
def _placed(starts: tuple[int, ...], span: int, size: int, cells: int) -> torch.Tensor:
    """``size × len(starts)·cells`` on the CPU: the ``span×cells`` resize matrix at each window's
    offset (block ``j`` at rows ``starts[j]…+span``), each row divided by the windows covering it.
    Cached: the images of a dataset share a few grids (read only; moved to the scores' device)."""
    one = bilinear_matrix(span, cells)
    out = torch.zeros(size, len(starts) * cells)
    count = torch.zeros(size)
    for j, s in enumerate(starts):
        out[s:s + span, j * cells:(j + 1) * cells] = one
        count[s:s + span] += 1
    if not bool((count > 0).all()):
        raise ValueError(f"the windows at {list(starts)} (span {span}) leave rows of {size} uncovered")
    return out / count[:, None]


def window_mean(scores: torch.Tensor, ys: list[int], xs: list[int], size: tuple[int, int],
                window: tuple[int, int]) -> torch.Tensor:
    """The mean of the grid's windows: ``scores`` ``(ny·nx)×K×h×w`` (window scores, row after
    row as ``slide_windows`` lists them), window tops ``ys``, lefts ``xs``, image ``size``
    ``(H, W)``, window ``(height, width)`` → ``K×H×W`` float32, contiguous: each window's scores
    resized bilinearly to the window (align_corners=False), summed, divided by the covering
    count — mmseg's slide_inference, as two matrix products (module docstring)."""
    n, k, h, w = scores.shape
    ny, nx = len(ys), len(xs)
    if n != ny * nx:
        raise ValueError(f"{n} window score maps for a {ny}×{nx} window grid")
    rows = _placed(tuple(ys), window[0], size[0], h).to(scores.device)  # H × ny·h
    cols = _placed(tuple(xs), window[1], size[1], w).to(scores.device)  # W × nx·w
    grid = scores.float().reshape(ny, nx, k, h, w).permute(2, 0, 3, 1, 4).reshape(k, ny * h, nx * w)
    a, b = ny * h, nx * w
    if a * b * size[1] + size[0] * a * size[1] <= size[0] * a * b + size[0] * b * size[1]:  # fewer products
        return torch.matmul(rows, torch.matmul(grid, cols.T))  # K×H×W
    return torch.matmul(torch.matmul(rows, grid), cols.T).contiguous()
