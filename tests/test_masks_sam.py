import numpy as np
import pytest
import torch

pytest.importorskip("segment_anything")
pytest.importorskip("torchvision")

from labelless.errors import SettingError, WeightsError  # noqa: E402
from labelless.masks.sam import build_sam_generator, build_sam_model, sam_masks, save_tiny_sam  # noqa: E402

# random weights: SAM's quality filters would drop everything, so open them wide
LOOSE = dict(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return save_tiny_sam(tmp_path_factory.mktemp("sam") / "tiny_sam.pt")


def _image(H=48, W=64):
    img = torch.zeros(3, H, W, dtype=torch.uint8)
    img[:, :, W // 2:] = 200
    img[0, 10:30, 5:20] = 255
    return img


def test_tiny_sam_generates_masks(tiny_ckpt):
    gen = build_sam_generator(tiny_ckpt, "tiny", "cpu", **LOOSE)
    masks, scores = sam_masks(gen, _image())
    assert isinstance(masks, np.ndarray) and masks.dtype == bool
    assert masks.ndim == 3 and masks.shape[1:] == (48, 64) and masks.shape[0] >= 1
    assert scores.shape == (masks.shape[0],) and scores.dtype == np.float32
    assert np.isfinite(scores).all()
    areas = masks.reshape(masks.shape[0], -1).sum(1)
    assert (np.diff(areas) <= 0).all()  # largest first
    # H×W×3 numpy input gives the same
    masks2, _ = sam_masks(gen, _image().permute(1, 2, 0).numpy())
    assert np.array_equal(masks, masks2)


def test_checkpoint_round_trip_is_deterministic(tiny_ckpt):
    a = build_sam_model("tiny", tiny_ckpt)
    b = build_sam_model("tiny", tiny_ckpt)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    assert not a.training


def test_default_thresholds_may_reject_everything(tiny_ckpt):
    gen = build_sam_generator(tiny_ckpt, "tiny", points_per_side=2, pred_iou_thresh=0.999,
                              stability_score_thresh=0.999)
    masks, scores = sam_masks(gen, _image(32, 40))
    assert masks.shape[1:] == (32, 40) and masks.shape[0] == scores.shape[0]  # possibly zero masks


def test_errors(tmp_path, tiny_ckpt):
    with pytest.raises(WeightsError, match="not found"):
        build_sam_model("vit_b", tmp_path / "nope.pth")
    with pytest.raises(SettingError, match="unknown SAM model type"):
        build_sam_model("vit_x")
    with pytest.raises(WeightsError, match="does not fit model type 'vit_b'"):
        build_sam_model("vit_b", tiny_ckpt)
    with pytest.raises(SettingError, match="unknown SAM generator option"):
        build_sam_generator(tiny_ckpt, "tiny", points_per_sid=4)
    with pytest.raises(SettingError, match="points_per_side"):
        build_sam_generator(tiny_ckpt, "tiny", points_per_side=0)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"garbage")
    with pytest.raises(WeightsError, match="cannot read SAM checkpoint") as err:
        build_sam_model("tiny", bad)
    assert "\n" not in str(err.value)  # one line
    with pytest.raises(ValueError, match="3×H×W or H×W×3"):
        sam_masks(build_sam_generator(tiny_ckpt, "tiny", **LOOSE), np.zeros((4, 4)))
