"""The mask store: class-agnostic masks for a set of images, one JSON record per image.

Layout::

    STORE/store.json          {"format": "labelless-masks", "version": 1, "source": str, "params": {...}}
    STORE/masks/<name>.json   one record per image
    STORE/images/<name>.*     only for images imported without a file of their own
                              (tar shards, resized imports; see labelless.masks.readers)

Record::

    {"name": str, "image": absolute path of the image file, "height": H, "width": W,
     "source": str,
     "masks": [{"rle": {"size": [H, W], "counts": str}, "area": int,
                "bbox": [x, y, w, h], "score": float | null}, ...]}

Masks are COCO run-length encodings (pycocotools, compressed ``counts`` string), so a
round trip is bit-exact. ``bbox`` is the tight integer box (``[0, 0, 0, 0]`` for an
empty mask). Records are written atomically (temp file ``.<name>.json.*.tmp`` in the
same folder, then ``os.replace``): a record file either is complete or does not exist,
so resuming only needs :func:`has_masks`. Names are file stems: no path separator, not
starting with ``.``.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from labelless.errors import ImageError, MaskStoreError, SettingError, require
from labelless.fileio import atomic_write_text
from labelless.masks import ops

__all__ = ["FORMAT", "VERSION", "MaskStoreError", "create_store", "open_store", "check_store_params",
           "write_masks", "read_masks", "has_masks", "list_names", "record_path", "encode_rle",
           "decode_rle", "MaskStoreDataset"]

FORMAT = "labelless-masks"
VERSION = 1


# ---------------------------------------------------------------------------- RLE


def _mask_utils():
    """``pycocotools.mask``, or MissingExtraError saying how to install it."""
    return require("pycocotools.mask", "a mask store (COCO RLE masks)")


def encode_rle(mask) -> dict:
    """COCO compressed RLE of an ``H×W`` bool mask: ``{"size": [H, W], "counts": str}``."""
    m = mask.cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be H×W, got shape {m.shape}")
    rle = _mask_utils().encode(np.asfortranarray(m.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _encode_many(masks: np.ndarray) -> list[dict]:
    """RLEs of N×H×W masks in one pycocotools call."""
    if masks.shape[0] == 0:
        return []
    rles = _mask_utils().encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    return [{"size": [int(s) for s in r["size"]], "counts": r["counts"].decode("ascii")} for r in rles]


def _to_compressed(rle: dict) -> dict:
    """A pycocotools RLE (``counts`` bytes) from a stored one (str, bytes or an uncompressed list)."""
    h, w = (int(s) for s in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, list):  # uncompressed (COCO iscrowd)
        return _mask_utils().frPyObjects({"size": [h, w], "counts": counts}, h, w)
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    return {"size": [h, w], "counts": counts}


def _decode(rles):
    # pycocotools' decode trips numpy 2's __array__(copy=) deprecation; harmless, keep it quiet
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*__array__")
        return _mask_utils().decode(rles)


def decode_rle(rle: dict) -> np.ndarray:
    """``H×W`` bool mask from a COCO RLE (compressed string/bytes or uncompressed list)."""
    return _decode(_to_compressed(rle)).astype(bool)


def _decode_many(rles: list[dict], h: int, w: int) -> np.ndarray:
    if not rles:
        return np.zeros((0, h, w), dtype=bool)
    dec = _decode([_to_compressed(r) for r in rles])  # H×W×N, Fortran order
    return np.ascontiguousarray(dec.transpose(2, 0, 1)).astype(bool)


def _bbox(mask: np.ndarray) -> list[int]:
    rows = np.flatnonzero(mask.any(1))
    if rows.size == 0:
        return [0, 0, 0, 0]
    cols = np.flatnonzero(mask.any(0))
    return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]


# -------------------------------------------------------------------------- files


def _atomic_write_json(path: Path, obj) -> None:
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":")) + "\n"
    atomic_write_text(path, text)


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not name or name.startswith(".") or "/" in name or "\\" in name \
            or "\0" in name:
        raise MaskStoreError(f"bad mask record name {name!r}: records are named by image file stem "
                             "(no '/' or '\\', not starting with '.')")
    return name


def record_path(store_dir, name: str) -> Path:
    """``STORE/masks/<name>.json``."""
    return Path(store_dir) / "masks" / f"{_check_name(name)}.json"


def _read_json(path: Path, what: str) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MaskStoreError(f"{what} not found: {path}") from None
    except OSError as e:
        raise MaskStoreError(f"cannot read {what} {path}: {e}") from e
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise MaskStoreError(f"corrupt {what} {path}: not valid JSON ({e})") from e
    if not isinstance(obj, dict):
        raise MaskStoreError(f"corrupt {what} {path}: expected a JSON object, got {type(obj).__name__}")
    return obj


# -------------------------------------------------------------------------- store


def open_store(store_dir) -> dict:
    """Read and check ``STORE/store.json``; returns it. MaskStoreError when it is not a store."""
    path = Path(store_dir) / "store.json"
    if not path.is_file():
        raise MaskStoreError(f"{store_dir} is not a mask store: {path} not found (create it with create_store)")
    meta = _read_json(path, "mask store file")
    if meta.get("format") != FORMAT:
        raise MaskStoreError(f"{path} is not a labelless mask store (format {meta.get('format')!r})")
    if meta.get("version") != VERSION:
        raise MaskStoreError(f"{path} has version {meta.get('version')!r}; this labelless reads version {VERSION}")
    if not isinstance(meta.get("source"), str):
        raise MaskStoreError(f"{path} has no 'source' string")
    return meta


def create_store(store_dir, source: str, params: dict | None = None) -> Path:
    """Create a store (or re-open an existing one made by the same ``source``).

    A different ``source`` raises MaskStoreError (masks from two producers never mix in
    one store). Different ``params`` on re-open only warn here (store.json keeps the first
    ones); producers that must not mix settings call :func:`check_store_params` first.
    """
    store = Path(store_dir)
    if not isinstance(source, str) or not source:
        raise ValueError(f"source must be a non-empty string, got {source!r}")
    params = dict(params or {})
    meta_path = store / "store.json"
    if meta_path.exists():
        meta = open_store(store)
        _refuse_other_source(store, meta, source)
        old = meta.get("params") or {}
        if _jsonable(old) != _jsonable(params):
            warnings.warn(f"mask store {store} was created with params {old}; keeping them "
                          f"(this run asked for {params})", stacklevel=2)
    else:
        store.mkdir(parents=True, exist_ok=True)
        _atomic_write_json(meta_path, {"format": FORMAT, "version": VERSION, "source": source,
                                       "params": _jsonable(params)})
    (store / "masks").mkdir(exist_ok=True)
    return store


def _refuse_other_source(store, meta: dict, source: str) -> None:
    if meta["source"] != source:
        raise MaskStoreError(
            f"mask store {store} holds {meta['source']!r} masks; refusing to add {source!r} masks "
            "(use another folder)"
        )


def check_store_params(store_dir, source: str, params: dict | None) -> None:
    """Refuse to add ``source`` masks made with ``params`` to an existing store of another
    source or made with other params (one store never mixes two settings): MaskStoreError
    naming the store and every parameter that differs. Nothing to check when the store
    does not exist yet. Cheap: call it before loading a model or reading any input."""
    if not (Path(store_dir) / "store.json").exists():
        return
    meta = open_store(store_dir)
    _refuse_other_source(store_dir, meta, source)
    old = meta.get("params") or {}
    new = _jsonable(dict(params or {}))
    # a parameter left out is the same as one given as None (null in store.json)
    diff = [(k, old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    if diff:
        raise MaskStoreError(
            f"mask store {store_dir} was made with other {source} params "
            f"({', '.join(f'{k}: {a!r} there, {b!r} now' for k, a, b in diff)}); "
            "use another output folder, or the same options to resume")


def _jsonable(obj):
    """Params as JSON would read them back (Path -> str, tuples -> lists, NaN -> None)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.generic,)):
        return _jsonable(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    return str(obj)


def _as_numpy_masks(masks) -> np.ndarray:
    m = masks.detach().cpu().numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
    if m.ndim != 3:
        raise ValueError(f"masks must be N×H×W, got shape {m.shape}")
    if m.dtype != bool:
        if m.dtype.kind not in "uib" or (m.size and not np.isin(m, (0, 1)).all()):
            raise ValueError(f"masks must be bool (or 0/1), got dtype {m.dtype}")
        m = m.astype(bool)
    return m


def write_masks(store_dir, name: str, image_path, masks, scores=None) -> Path:
    """Write the record of one image atomically; returns its path.

    masks: ``N×H×W`` bool (numpy or torch; N may be 0), H×W the size of the image the masks
    belong to. scores: None or N floats (None / NaN stored as null). The store must exist
    (:func:`create_store`); its source is copied into the record.
    """
    store = Path(store_dir)
    meta = open_store(store)
    path = record_path(store, name)
    m = _as_numpy_masks(masks)
    n, h, w = m.shape
    if h < 1 or w < 1:
        raise ValueError(f"masks of {name!r} have an empty image size {h}×{w}")
    if scores is None:
        scores = [None] * n
    else:
        if isinstance(scores, torch.Tensor):
            scores = scores.detach().cpu().tolist()
        else:
            scores = list(np.asarray(scores, dtype=object).reshape(-1))
        if len(scores) != n:
            raise ValueError(f"{len(scores)} scores for {n} masks of {name!r}")
        scores = [None if s is None or not math.isfinite(float(s)) else float(s) for s in scores]
    rles = _encode_many(m)
    areas = ops.mask_areas(m)
    record = {
        "name": name,
        "image": os.path.abspath(os.fspath(image_path)),
        "height": int(h),
        "width": int(w),
        "source": meta["source"],
        "masks": [{"rle": rle, "area": int(a), "bbox": _bbox(mk), "score": s}
                  for rle, a, mk, s in zip(rles, areas, m, scores)],
    }
    path.parent.mkdir(exist_ok=True)
    _atomic_write_json(path, record)
    return path


def _check_record(record: dict, path: Path) -> None:
    def bad(why: str):
        raise MaskStoreError(f"corrupt mask record {path}: {why}")

    for key, typ in (("name", str), ("image", str), ("height", int), ("width", int), ("masks", list)):
        if not isinstance(record.get(key), typ):
            bad(f"'{key}' missing or not a {typ.__name__}")
    h, w = record["height"], record["width"]
    for i, m in enumerate(record["masks"]):
        rle = m.get("rle") if isinstance(m, dict) else None
        if not isinstance(rle, dict) or "counts" not in rle or "size" not in rle:
            bad(f"mask {i} has no 'rle' with 'size' and 'counts'")
        try:
            size = [int(s) for s in rle["size"]]
        except (TypeError, ValueError):
            size = None
        if size != [h, w]:
            bad(f"mask {i} has size {rle['size']}, the record says {[h, w]}")


def read_masks(store_dir_or_record_path, name: str | None = None) -> tuple[np.ndarray, dict]:
    """Read one record: ``(masks N×H×W bool numpy, record dict)``.

    Either ``read_masks(store_dir, name)`` or ``read_masks(path_to_record_json)``.
    A missing, unreadable or corrupt record raises MaskStoreError naming the file.
    """
    path = Path(store_dir_or_record_path) if name is None else record_path(store_dir_or_record_path, name)
    record = _read_json(path, "mask record")
    _check_record(record, path)
    _mask_utils()  # a missing pycocotools is not a corrupt record
    try:
        masks = _decode_many([m["rle"] for m in record["masks"]], record["height"], record["width"])
    except Exception as e:
        raise MaskStoreError(f"corrupt mask record {path}: cannot decode its RLEs ({e})") from e
    return masks, record


def has_masks(store_dir, name: str) -> bool:
    """True when a complete record of ``name`` exists (temp files of interrupted writes do not count)."""
    path = record_path(store_dir, name)
    try:
        size = path.stat().st_size
        if size < 2:
            return False
        with open(path, "rb") as f:  # cheap completeness check: a record ends with "}\n"
            f.seek(max(0, size - 8))
            return f.read().rstrip().endswith(b"}")
    except OSError:
        return False


def list_names(store_dir) -> list[str]:
    """Sorted names of the records in the store (temp files excluded)."""
    folder = Path(store_dir) / "masks"
    if not folder.is_dir():
        return []
    return sorted(p.name[:-5] for p in folder.iterdir()
                  if p.name.endswith(".json") and not p.name.startswith(".") and p.is_file())


# ------------------------------------------------------------------------ dataset


class MaskStoreDataset(torch.utils.data.Dataset):
    """The images of a store with their masks, for training and inspection.

    ``__getitem__(i) -> {"name": str, "image": uint8 tensor 3×H×W, "masks": bool tensor N×H×W}``.
    Masks are ordered by area (largest first, from the stored areas) when ``sort_by_area``,
    then cut to the first ``max_masks``, then image and masks are resized so that the
    short side is ``short_side`` (bilinear image, nearest masks). N varies between images:
    batch with :meth:`collate` (lists) or a collate of your own.
    A record whose image file is missing or unreadable raises ImageError naming both the
    image and the record; an image whose size differs from the record raises MaskStoreError.
    """

    def __init__(self, store_dir, short_side: int | None = None, sort_by_area: bool = True,
                 max_masks: int | None = None):
        self.store_dir = Path(store_dir)
        self.meta = open_store(self.store_dir)
        self.names = list_names(self.store_dir)
        self.short_side = short_side
        self.sort_by_area = sort_by_area
        self.max_masks = max_masks
        if max_masks is not None and max_masks < 0:
            raise SettingError(f"max_masks must be >= 0, got {max_masks}")
        if short_side is not None and short_side < 1:
            raise SettingError(f"short_side must be >= 1, got {short_side}")

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> dict:
        from labelless.io import load_image

        name = self.names[i]
        path = record_path(self.store_dir, name)
        record = _read_json(path, "mask record")
        _check_record(record, path)
        entries = record["masks"]
        if self.sort_by_area:
            areas = [int(m.get("area", 0)) for m in entries]
            order = np.argsort(-np.asarray(areas, dtype=np.int64), kind="stable")
            entries = [entries[j] for j in order]
        if self.max_masks is not None:
            entries = entries[: self.max_masks]
        h, w = record["height"], record["width"]
        _mask_utils()
        try:
            masks = _decode_many([m["rle"] for m in entries], h, w)
        except Exception as e:
            raise MaskStoreError(f"corrupt mask record {path}: cannot decode its RLEs ({e})") from e
        try:
            image = load_image(record["image"])
        except ImageError as e:
            raise ImageError(f"{e} (the image of mask record {path})") from e
        if tuple(image.shape[-2:]) != (h, w):
            raise MaskStoreError(
                f"image {record['image']} is {image.shape[-2]}×{image.shape[-1]} but mask record {path} "
                f"is {h}×{w}"
            )
        image, masks_t = ops.resize_short_side(image, torch.from_numpy(masks), self.short_side)
        return {"name": name, "image": image, "masks": masks_t}

    @staticmethod
    def collate(batch: list[dict]) -> dict:
        """Batch items as lists: ``{"name": [...], "image": [...], "masks": [...]}``."""
        return {k: [item[k] for item in batch] for k in ("name", "image", "masks")}
