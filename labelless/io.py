"""One place for reading images, telling image files, expanding folders and picking a
device, so every command behaves the same way."""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

import numpy as np
import torch

from labelless.errors import ImageError, MissingFileError, SettingError, describe

T = TypeVar("T")
R = TypeVar("R")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def is_image_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def _to_tensor(im) -> torch.Tensor:
    """A PIL image → ``3×H×W`` uint8 RGB (``load`` first: a truncated file fails here)."""
    im.load()
    arr = np.asarray(im.convert("RGB"))
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def load_image(path) -> torch.Tensor:
    """Read an image file as a ``3×H×W`` uint8 tensor (RGB). Raises ImageError naming the file."""
    from PIL import Image

    path = Path(path)
    try:
        with Image.open(path) as im:
            return _to_tensor(im)
    except FileNotFoundError:
        raise ImageError(f"image not found: {path}") from None
    except Exception as e:
        raise ImageError(f"cannot read image {path}: {describe(e)}") from e


def decode_image(data: bytes, where: str) -> torch.Tensor:
    """Image bytes (a member of a tar shard) → ``3×H×W`` uint8; ImageError naming ``where``."""
    import io as _io

    from PIL import Image

    try:
        with Image.open(_io.BytesIO(data)) as im:
            return _to_tensor(im)
    except Exception as e:
        raise ImageError(f"cannot read image {where}: {describe(e)}") from e


def expand_images(paths, recursive: bool = False) -> list[Path]:
    """Files as given (in order); folders → their image files, sorted, hidden files left out
    (``recursive``: also in sub-folders). A path that does not exist raises MissingFileError."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            found = p.rglob("*") if recursive else p.iterdir()
            # hidden files (macOS "._x.jpg" resource forks, editors' temp files) are not images
            out.extend(sorted(f for f in found if f.is_file() and is_image_file(f) and not f.name.startswith(".")))
        elif p.exists():
            out.append(p)
        else:
            raise MissingFileError(f"no such image file or folder: {p}")
    return out


def pick_device(name: str | torch.device | None = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` (or None): CUDA when present, else the CPU; a bare ``cuda`` means
    ``cuda:local_rank`` (one GPU per process under torchrun)."""
    if name is None or str(name) == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise SettingError(f"unknown device {name!r} (cpu, cuda, cuda:1, …, or auto)") from e
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    if device.type == "cuda" and (not torch.cuda.is_available() or device.index >= torch.cuda.device_count()):
        raise SettingError(f"device {name!r} asked for, but this machine has {torch.cuda.device_count()} CUDA "
                           "device(s); use --device cpu or auto")
    return device


def prefetch(items: Iterable[T], fn: Callable[[T], R], depth: int = 2, workers: int = 2) -> Iterator[R]:
    """``fn(item)`` for every item, in order, computed in ``workers`` threads at most
    ``depth`` items ahead of the consumer: at any moment no more than ``depth`` results
    are computed or waiting beyond the one the consumer holds (memory bounded by
    ``depth``, not by the number of items)."""
    depth = max(1, depth)
    it = iter(items)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        queue = deque(pool.submit(fn, item) for _, item in zip(range(depth), it))
        while queue:
            result = queue.popleft().result()
            for item in it:  # refill one slot, then hand the result over
                queue.append(pool.submit(fn, item))
                break
            yield result
