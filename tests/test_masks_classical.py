"""Classical mask baselines on a synthetic image with two flat colour regions."""

import numpy as np
import pytest
import torch

pytest.importorskip("skimage")

from labelless.masks import classical  # noqa: E402

H, W = 24, 32


@pytest.fixture
def two_regions():
    """3×H×W uint8 tensor: red left of an oblique boundary, blue right; and the region map."""
    yy, xx = np.mgrid[0:H, 0:W]
    region = (xx > 10 + yy // 2).astype(np.int64)
    arr = np.where(region[..., None] == 0, [200, 40, 30], [20, 60, 210]).astype(np.uint8)
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous(), region


def _check_partition(masks):
    assert isinstance(masks, np.ndarray) and masks.dtype == bool and masks.shape[1:] == (H, W)
    np.testing.assert_array_equal(masks.sum(0), 1)  # every pixel in exactly one mask


def _check_recovered(masks, region):
    """Exactly the two regions, in any order."""
    assert masks.shape[0] == 2
    got = sorted((m.tobytes() for m in masks))
    want = sorted(((region == r).tobytes() for r in (0, 1)))
    assert got == want


def _check_pure(masks, region):
    """Every mask inside one region (an over-segmentation of the two)."""
    for m in masks:
        assert len(np.unique(region[m])) == 1


def test_felzenszwalb(two_regions):
    image, region = two_regions
    masks = classical.felzenszwalb_masks(image, scale=100, sigma=0.0, min_size=20)
    _check_partition(masks)
    _check_recovered(masks, region)
    hwc = image.permute(1, 2, 0).numpy()  # H×W×3 arrays work too
    np.testing.assert_array_equal(classical.felzenszwalb_masks(hwc, scale=100, sigma=0.0, min_size=20), masks)


def test_slic(two_regions):
    image, region = two_regions
    masks = classical.slic_masks(image, n_segments=8, compactness=1.0)
    _check_partition(masks)
    _check_pure(masks, region)
    assert 2 <= masks.shape[0] <= 16


@pytest.mark.parametrize("space", ["lab", "rgb"])
def test_rgb_kmeans(two_regions, space):
    image, region = two_regions
    masks = classical.rgb_kmeans_masks(image, k=2, seed=0, space=space)
    _check_partition(masks)
    _check_recovered(masks, region)
    # more clusters than colours: the duplicates get no pixel and are dropped
    masks = classical.rgb_kmeans_masks(image, k=5, seed=1, space=space)
    _check_partition(masks)
    _check_recovered(masks, region)
    # fitted on a pixel sample: same result
    _check_recovered(classical.rgb_kmeans_masks(image, k=2, space=space, max_fit_pixels=50), region)


def test_rgb_kmeans_xy_and_seed(two_regions):
    image, _ = two_regions
    flat = torch.full_like(image, 128)  # one colour: only position can split it
    masks = classical.rgb_kmeans_masks(flat, k=2, xy_weight=1.0, seed=3)
    _check_partition(masks)
    assert masks.shape[0] == 2
    np.testing.assert_array_equal(masks, classical.rgb_kmeans_masks(flat, k=2, xy_weight=1.0, seed=3))
    assert classical.rgb_kmeans_masks(flat, k=2).shape[0] == 1  # without xy: one mask


def test_bad_inputs():
    from labelless.errors import LabellessError, SettingError

    # images come from load_image: another shape or dtype is a bug, a plain ValueError
    with pytest.raises(ValueError, match="3×H×W") as err:
        classical.slic_masks(torch.zeros(4, 5, 5, dtype=torch.uint8))
    assert not isinstance(err.value, LabellessError)
    with pytest.raises(ValueError, match="uint8"):
        classical.felzenszwalb_masks(torch.zeros(3, 5, 5))
    # a parameter value is the user's
    with pytest.raises(SettingError, match="space"):
        classical.rgb_kmeans_masks(torch.zeros(3, 5, 5, dtype=torch.uint8), space="hsv")


def test_missing_scikit_image_says_how_to_install(monkeypatch):
    import sys

    from labelless.errors import MissingExtraError

    monkeypatch.setitem(sys.modules, "skimage.segmentation", None)  # as if not installed
    with pytest.raises(MissingExtraError, match=r"skimage.*pip install 'labelless\[masks\]'"):
        classical.slic_masks(torch.zeros(3, 5, 5, dtype=torch.uint8))


def test_kmeans_numpy_empty_cluster_reseed():
    x = np.array([[0.0], [0.0], [0.0], [10.0]])
    assign, centers = classical.kmeans_numpy(x, 3, seed=0)
    assert assign.shape == (4,) and centers.shape == (3, 1)
    assert assign[3] != assign[0]
