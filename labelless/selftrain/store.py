"""The pseudo-label store: written by ``labelless selftrain label``, read by self-training.

Layout::

    STORE/store.json              what made the store (below)
    STORE/labels/<name>.png       the pseudo-label of a benchmark sample, at the image's own size:
                                  class index (the dataset's order) or ``ignore_index``; 8-bit
                                  palette PNG when every class and ``ignore_index`` are < 256,
                                  else 16-bit grey
    STORE/confidence/<name>.png   8-bit grey: ``round(255 · min(confidence, 1))`` per pixel
                                  (``labelless.selftrain.label`` says what the confidence is)

``<name>`` is the sample's name; a name with ``/`` keeps its sub-folders. Every file is
written atomically (``labelless.fileio``), so a PNG either is complete or absent: an image
is done when both of its PNGs exist.

``store.json`` (written before labelling with ``"complete": false``, rewritten at the end)::

    {"format": "labelless-pseudo-labels", "version": 1, "complete": bool,
     "dataset": str, "split": str, "data_root": str, "layout": str,
     "classes": [str, ...], "background": bool, "ignore_index": int, "min_confidence": float | null,
     "model": {scorer info: model, pretrained, mode, scorer, ...},
     "inference": {"protocol": {...}, "templates", "synonyms", "logit_scale", "bg_threshold", "seed",
                   "confidence": str},
     "run": {"device", "world_size", "max_images"},
     "counts": {"samples", "labelled", "resumed", "skipped", "images"},   # of the last run; images = in store
     "skipped": [{"image": path, "error": str}, ...],
     "histogram": {"pixels_per_class": [int, ...], "ignored": int, "total": int}}   # over every image in store

The keys of :data:`SETTINGS` decide the labels; resuming into a store made with other
values is refused. ``--min-confidence p`` marks ``ignore_index`` where the *stored*
confidence is below ``p`` (:func:`apply_min_confidence`: ``q < 255·p`` for the stored
``q``), so :func:`load_pseudo_label` re-applying a threshold to an unfiltered store gives
exactly the labels of a store filtered at that threshold.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

import numpy as np

from labelless.errors import DatasetError, MissingFileError, SettingError
from labelless.fileio import atomic_path, atomic_write_text

__all__ = ["FORMAT", "SETTINGS", "VERSION", "apply_min_confidence", "check_resume", "confidence_path", "label_path",
           "load_confidence", "load_pseudo_label", "read_label_png", "read_store", "save_pseudo_label",
           "store_samples", "write_store"]

FORMAT = "labelless-pseudo-labels"
VERSION = 1
# store.json keys that decide the labels: a store holds labels of one setting
SETTINGS = ("dataset", "split", "classes", "background", "ignore_index", "min_confidence", "model", "inference")


def _relative(name: str) -> str:
    """``name`` as a safe relative path (sub-folders kept); DatasetError for absolute or ``..`` names."""
    parts = PurePosixPath(str(name).replace("\\", "/")).parts
    if not parts or parts[0] == "/" or ".." in parts:
        raise DatasetError(f"sample name {name!r} cannot name a file inside the store")
    return "/".join(parts)


def label_path(store, name: str) -> Path:
    return Path(store) / "labels" / f"{_relative(name)}.png"


def confidence_path(store, name: str) -> Path:
    return Path(store) / "confidence" / f"{_relative(name)}.png"


def apply_min_confidence(labels: np.ndarray, confidence: np.ndarray, min_confidence: float | None,
                         ignore_index: int) -> np.ndarray:
    """``labels`` (``H×W``) with ``ignore_index`` where the stored confidence ``q`` (``H×W``
    uint8, 255 = 1) is below ``min_confidence``, i.e. ``q < 255·min_confidence``. A copy."""
    out = np.array(labels, copy=True)
    if min_confidence is not None:
        out[np.asarray(confidence, dtype=np.float64) < 255.0 * min_confidence] = ignore_index
    return out


def _atomic_png(img, path: Path) -> None:
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def save_pseudo_label(store, name: str, labels: np.ndarray, confidence: np.ndarray, num_classes: int,
                      ignore_index: int) -> None:
    """Write ``labels`` (``H×W`` ints) and ``confidence`` (``H×W`` uint8), confidence first: the
    label PNG, written last, marks the image done together with it."""
    from PIL import Image

    from labelless.visualize import palette

    _atomic_png(Image.fromarray(np.ascontiguousarray(confidence, dtype=np.uint8), mode="L"),
                confidence_path(store, name))
    if max(num_classes - 1, ignore_index) < 256:  # one dtype per store, whatever an image holds
        img = Image.fromarray(labels.astype(np.uint8), mode="P")
        pal = np.zeros((256, 3), dtype=np.uint8)
        pal[:num_classes] = palette(num_classes)  # ignore and unused values black
        img.putpalette(pal.flatten().tolist())
    else:
        img = Image.fromarray(labels.astype(np.uint16))
    _atomic_png(img, label_path(store, name))


def read_label_png(path) -> np.ndarray:
    """An index PNG (8-bit palette / grey or 16-bit) → ``H×W`` int64; DatasetError naming it."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            arr = np.array(im)
    except FileNotFoundError:
        raise MissingFileError(f"no such file: {path}") from None
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ...
        raise DatasetError(f"cannot read {path}: {type(e).__name__}: {e}") from e
    if arr.ndim != 2:
        raise DatasetError(f"{path} is not a single-channel index PNG (shape {arr.shape})")
    return arr.astype(np.int64)


def read_store(path) -> dict:
    """``store.json`` of the store folder ``path`` (or the file itself)."""
    path = Path(path)
    file = path if path.suffix == ".json" else path / "store.json"
    if not file.is_file():
        raise MissingFileError(f"no pseudo-label store at {path}: {file} does not exist")
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DatasetError(f"cannot read {file}: {type(e).__name__}: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DatasetError(f"{file} is not a pseudo-label store (format {FORMAT!r} expected)")
    if meta.get("version") != VERSION:
        raise DatasetError(f"{file} has version {meta.get('version')!r}; this labelless reads {VERSION}")
    return meta


def write_store(store, meta: dict) -> Path:
    """``store.json`` (atomic), with the format and version."""
    payload = {"format": FORMAT, "version": VERSION, **meta}
    return atomic_write_text(Path(store) / "store.json", json.dumps(payload, indent=2) + "\n")


def check_resume(store, meta: dict) -> None:
    """SettingError when ``store`` already holds labels made with other :data:`SETTINGS` than ``meta``'s."""
    if not (Path(store) / "store.json").exists():
        return
    old = read_store(store)
    new = json.loads(json.dumps({k: meta[k] for k in SETTINGS}))  # as stored (tuples → lists)
    differ = [k for k in SETTINGS if old.get(k) != new[k]]
    if differ:
        shown = "; ".join(f"{k}: {old.get(k)!r} there, {new[k]!r} now" for k in differ)
        raise SettingError(f"{store} holds pseudo-labels made with other settings ({shown}); "
                           "use another --out, or the same settings to resume")


def load_confidence(store, name: str) -> np.ndarray:
    """The stored confidence of ``name``: ``H×W`` uint8 (255 = 1)."""
    return read_label_png(confidence_path(store, name)).astype(np.uint8)


def load_pseudo_label(store, name: str, min_confidence: float | None = None,
                      ignore_index: int | None = None, meta: dict | None = None) -> np.ndarray:
    """The pseudo-label of sample ``name``: ``H×W`` int64 class indices or the ignore value.

    ``min_confidence``: also ignore pixels whose stored confidence is below it (exactly as
    ``--min-confidence`` would have; it cannot be lower than the store's own, whose ignored
    pixels are gone). ``ignore_index``: the value for ignored pixels (default the store's).
    ``meta``: the store's ``read_store`` when the caller already has it (a data loader reads
    it once, not per sample).
    """
    meta = read_store(store) if meta is None else meta
    stored, classes = meta["ignore_index"], len(meta["classes"])
    ignore = stored if ignore_index is None else int(ignore_index)
    if 0 <= ignore < classes:
        raise SettingError(f"ignore index {ignore} is a class of the store (0..{classes - 1})")
    own = meta.get("min_confidence")
    if min_confidence is not None and own is not None and min_confidence < own:
        raise SettingError(f"{store} was filtered at min_confidence {own}; a lower threshold "
                           f"({min_confidence}) cannot bring its ignored pixels back")
    labels = read_label_png(label_path(store, name))
    if ignore != stored:
        labels[labels == stored] = ignore
    if min_confidence is None:
        return labels
    return apply_min_confidence(labels, load_confidence(store, name), min_confidence, ignore)


def store_samples(store, samples) -> list[tuple[Path, Path, Path]]:
    """``(image, label PNG, confidence PNG)`` of each benchmark sample (``.name``, ``.image``)
    whose two PNGs are in ``store``, in the samples' order."""
    out = []
    for s in samples:
        lab, conf = label_path(store, s.name), confidence_path(store, s.name)
        if lab.is_file() and conf.is_file():
            out.append((Path(s.image), lab, conf))
    return out
