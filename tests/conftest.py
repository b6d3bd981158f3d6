import os
from pathlib import Path

# Never reach for the network in tests: open_clip / huggingface_hub fail fast offline.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

# GLOO_EXIT: the gloo worker scripts of the DDP tests end with ``os._exit(0)`` after a final
# barrier instead of ``destroy_process_group()`` + interpreter shutdown. Tearing gloo down can
# abort the process now and then ("terminate called without an active exception", exit -6:
# a joinable C++ thread destroyed, cf. pytorch/pytorch#190489) after every result is written;
# that made CI fail once on a test whose figures were right. Results are checked, not teardown.


def data_root() -> Path:
    """Real data (CamVid, ADE20K samples): $LABELLESS_DATA, default ../shared/data."""
    return Path(os.environ.get("LABELLESS_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return data_root()


@pytest.fixture(scope="session")
def camvid_root() -> Path:
    root = data_root() / "camvid"
    if not (root / "val.txt").is_file():
        pytest.skip(f"CamVid not found at {root} (set LABELLESS_DATA to the folder holding camvid/)")
    return root


@pytest.fixture(scope="session")
def dinov2_small() -> Path:
    """The real DINOv2-S folder (Hugging Face layout) of ../shared/weights; skipped when absent."""
    root = REPO.parent / "shared" / "weights" / "dinov2-small"
    if not (root / "config.json").is_file():
        pytest.skip(f"DINOv2-S weights not found at {root}")
    return root


@pytest.fixture(scope="session")
def tiny_vit():
    import torch

    from labelless.models.clip import build_clip

    torch.manual_seed(0)
    return build_clip("tiny-vit", None)


@pytest.fixture(scope="session")
def tiny_convnext():
    import torch

    from labelless.models.clip import build_clip

    torch.manual_seed(0)
    return build_clip("tiny-convnext", None)
