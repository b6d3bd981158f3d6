"""Overlays: the banded blend gives the pixels of a whole-image blend."""

import numpy as np

from labelless.visualize import _blend, overlay, palette


def test_banded_blend_equals_the_whole_image_blend():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (37, 23, 3), dtype=np.uint8)
    lab = rng.integers(-1, 6, (37, 23))  # -1 and 5: outside the 5 classes, left as they are
    cols = palette(5)
    valid = (lab >= 0) & (lab < 5)
    colour = np.zeros_like(img)
    colour[valid] = cols[lab[valid]]
    ref = img.astype(np.float32)
    ref[valid] = 0.5 * ref[valid] + 0.5 * colour[valid]
    ref = ref.round().clip(0, 255).astype(np.uint8)
    out, counts = _blend(img, lab, cols, 0.5, rows=4)
    assert np.array_equal(out, ref)
    assert counts.tolist() == [int((lab == c).sum()) for c in range(5)]
    canvas = overlay(img, lab, ["a", "b", "c", "d", "e"])
    assert canvas.height >= 37 and canvas.width > 23
    assert np.array_equal(np.asarray(canvas)[:37, :23], ref)
