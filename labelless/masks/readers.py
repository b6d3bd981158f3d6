"""Read existing class-agnostic masks: SA-1B (folder or the original .tar shards) and
COCO instance annotations; :func:`import_masks` writes any of them into a mask store.

Every reader yields :class:`MaskItem` tuples ``(name, image, masks)``: ``image`` a
``3×H×W`` uint8 tensor, ``masks`` an ``N×H×W`` bool numpy array. Shared options:

- ``sort_by_area`` (default True): largest mask first (areas from the RLEs, exact);
- ``max_masks``: keep the first N after sorting (masks beyond are never decoded);
- ``short_side``: resize image (bilinear) and masks (nearest) to this short side;
- ``skip``: names to leave out without decoding anything — a set, or a predicate such
  as ``lambda n: has_masks(store, n)`` for a fast resume;
- ``on_error``: ``"raise"`` (default) or ``"skip"`` — an unreadable image or annotation
  is then reported with a warning naming the file and left out.

SA-1B layout (https://segment-anything.com/dataset): ``sa_<id>.jpg`` next to
``sa_<id>.json``, the JSON being ``{"image": {"image_id", "width", "height",
"file_name"}, "annotations": [{"id", "segmentation": {"size": [h, w], "counts": str},
"area", "bbox", "predicted_iou", "stability_score", "crop_box", "point_coords"}]}``.
The shards ``sa_000000.tar`` ... hold those pairs; :func:`iter_sa1b_tars` streams them
with webdataset (local paths or any URL webdataset opens, e.g. ``pipe:curl -s URL``)
without extracting anything to disk. Tar members are paired by their stem whatever
their order or folder prefix (``./sa_1.jpg``).
"""

from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from labelless.data.shards import tar_members
from labelless.errors import DatasetError, ImageError, MissingFileError, SettingError, require
from labelless.fileio import atomic_write_bytes
from labelless.io import decode_image, load_image
from labelless.masks import ops
from labelless.masks.store import (
    _decode_many,
    _mask_utils,
    _to_compressed,
    check_store_params,
    create_store,
    has_masks,
    write_masks,
)

__all__ = ["MaskItem", "iter_sa1b_folder", "iter_sa1b_tars", "iter_coco_instances", "import_masks"]


class MaskItem(tuple):
    """``(name, image, masks)`` plus where the image came from, for :func:`import_masks`.

    Attributes: ``path`` — a file holding exactly this image (None when the image was
    resized or came from a tar); ``data``/``ext`` — the original encoded bytes and their
    extension (``".jpg"``) when the image came from a tar unresized, else None.
    """

    def __new__(cls, name: str, image: torch.Tensor, masks: np.ndarray, path: Path | None = None,
                data: bytes | None = None, ext: str | None = None):
        item = super().__new__(cls, (name, image, masks))
        item.path, item.data, item.ext = path, data, ext
        return item

    name = property(lambda self: self[0])
    image = property(lambda self: self[1])
    masks = property(lambda self: self[2])


def _skipper(skip) -> Callable[[str], bool]:
    if skip is None:
        return lambda name: False
    if callable(skip):
        return skip
    names = set(skip)
    return names.__contains__


def _check_options(on_error: str, max_masks: int | None, short_side: int | None) -> None:
    """The readers' shared options, checked once before anything is read (a bad value
    would otherwise fail on every image and, with ``on_error="skip"``, skip them all)."""
    if on_error not in ("raise", "skip"):
        raise SettingError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if max_masks is not None and max_masks < 0:
        raise SettingError(f"max_masks must be >= 0, got {max_masks}")
    if short_side is not None and short_side < 1:
        raise SettingError(f"short_side must be >= 1, got {short_side}")


def _select_rles(rles: list[dict], sort_by_area: bool, max_masks: int | None) -> list[dict]:
    """Order (largest first) and cap RLEs before decoding them."""
    if sort_by_area and rles:
        areas = _mask_utils().area([_to_compressed(r) for r in rles]).astype(np.int64)
        rles = [rles[i] for i in np.argsort(-areas, kind="stable")]
    if max_masks is not None:
        rles = rles[:max_masks]
    return rles


def _finish(name: str, image: torch.Tensor, rles: list[dict], where: str, sort_by_area: bool,
            max_masks: int | None, short_side: int | None, path=None, data=None, ext=None) -> MaskItem:
    h, w = (int(s) for s in image.shape[-2:])
    for r in rles:
        try:
            size = [int(s) for s in r["size"]]
            r["counts"]
        except (KeyError, TypeError, ValueError):
            raise DatasetError(f"{where}: a segmentation is not an RLE with 'size' [h, w] and 'counts'") from None
        if size != [h, w]:
            raise DatasetError(f"{where}: a mask has size {list(r['size'])} but the image is {[h, w]}")
    try:  # (a missing pycocotools raises MissingExtraError, an ImportError: not caught here)
        masks = _decode_many(_select_rles(rles, sort_by_area, max_masks), h, w)
    except (TypeError, ValueError) as e:
        raise DatasetError(f"{where}: cannot decode its RLE masks ({type(e).__name__}: {e})") from e
    if short_side is not None and ops.short_side_size(h, w, short_side) != (h, w):
        image, masks = ops.resize_short_side(image, masks, short_side)
        path = data = ext = None
    return MaskItem(name, image, masks, path=path, data=data, ext=ext)


def _sa1b_rles(meta: dict, where: str) -> list[dict]:
    try:
        return [a["segmentation"] for a in meta["annotations"]]
    except (KeyError, TypeError) as e:
        raise DatasetError(f"{where} is not an SA-1B annotation file (no annotations[].segmentation)") from e


def _warn_or_raise(on_error: str, err: Exception) -> None:
    if on_error == "raise":
        raise err
    warnings.warn(f"skipped: {err}", stacklevel=3)


# -------------------------------------------------------------------------- SA-1B


def iter_sa1b_folder(dir, short_side: int | None = None, sort_by_area: bool = True,
                     max_masks: int | None = None, skip=None, on_error: str = "raise") -> Iterator[MaskItem]:
    """Yield ``(name, image, masks)`` for each ``sa_*.jpg`` with its ``sa_*.json`` in ``dir``
    (sorted by name; name = file stem). A jpg without its json is an error (or skipped).
    The options and the folder are checked when called, before anything is yielded."""
    _check_options(on_error, max_masks, short_side)
    folder = Path(dir)
    if not folder.is_dir():
        raise MissingFileError(f"SA-1B folder {folder} does not exist")
    images = sorted(folder.glob("sa_*.jpg"))
    if not images:
        raise DatasetError(f"no sa_*.jpg images in {folder} (not an SA-1B folder)")
    return _sa1b_folder_items(images, short_side, sort_by_area, max_masks, _skipper(skip), on_error)


def _sa1b_folder_items(images: list[Path], short_side, sort_by_area, max_masks, skipped,
                       on_error) -> Iterator[MaskItem]:
    for img_path in images:
        name = img_path.stem
        if skipped(name):
            continue
        ann_path = img_path.with_suffix(".json")
        try:
            try:
                meta = json.loads(ann_path.read_text(encoding="utf-8"))
            except FileNotFoundError:
                raise DatasetError(f"SA-1B image {img_path} has no annotation file {ann_path}") from None
            except (OSError, ValueError) as e:
                raise DatasetError(f"cannot read SA-1B annotation file {ann_path}: {e}") from e
            rles = _sa1b_rles(meta, str(ann_path))
            image = load_image(img_path)
            item = _finish(name, image, rles, str(ann_path), sort_by_area, max_masks, short_side,
                           path=img_path)
        except (DatasetError, ImageError) as e:
            _warn_or_raise(on_error, e)
            continue
        yield item


def _is_local(url: str) -> bool:
    return "://" not in url and not url.startswith("pipe:")


def iter_sa1b_tars(paths, short_side: int | None = None, sort_by_area: bool = True,
                   max_masks: int | None = None, skip=None, on_error: str = "raise") -> Iterator[MaskItem]:
    """Yield ``(name, image, masks)`` from SA-1B ``.tar`` shards, streamed (nothing extracted).

    ``paths``: one path/URL or a list, read in the order given; in each shard a
    ``<stem>.jpg`` and ``<stem>.json`` are paired (in any order) and yielded in the order
    their pair completes. A member without its partner at the end of a shard is an error
    (or skipped with ``on_error="skip"``). The options, webdataset and the local shard
    paths are checked when called, before anything is yielded.
    """
    _check_options(on_error, max_masks, short_side)
    urls = [os.fspath(paths)] if isinstance(paths, (str, os.PathLike)) else [os.fspath(p) for p in paths]
    if not urls:
        raise SettingError("no SA-1B shards given")
    require("webdataset.tariterators", "reading SA-1B tar shards")
    for url in urls:
        if _is_local(url) and not os.path.isfile(url):
            raise MissingFileError(f"SA-1B shard {url} does not exist")
    return _sa1b_tar_items(urls, short_side, sort_by_area, max_masks, _skipper(skip), on_error)


def _sa1b_tar_items(urls: list[str], short_side, sort_by_area, max_masks, skipped,
                    on_error) -> Iterator[MaskItem]:
    for url in urls:
        pending: dict[str, dict[str, bytes]] = {}
        for member in tar_members(url, "SA-1B shard"):
            fname = member["fname"]
            base = fname.rsplit("/", 1)[-1]
            stem, dot, ext = base.partition(".")
            if ext.lower() not in ("jpg", "json") or not stem.startswith("sa_"):
                continue
            if skipped(stem):
                continue
            parts = pending.setdefault(stem, {})
            parts[ext.lower()] = member["data"]
            if len(parts) < 2:
                continue
            del pending[stem]
            where = f"{url}:{stem}"
            try:
                try:
                    meta = json.loads(parts["json"])
                except ValueError as e:
                    raise DatasetError(f"cannot read SA-1B annotation {where}.json: {e}") from e
                rles = _sa1b_rles(meta, f"{where}.json")
                image = decode_image(parts["jpg"], f"{where}.jpg")
                item = _finish(stem, image, rles, f"{where}.json", sort_by_area, max_masks, short_side,
                               data=parts["jpg"], ext=".jpg")
            except (DatasetError, ImageError) as e:
                _warn_or_raise(on_error, e)
                continue
            yield item
        for stem, parts in sorted(pending.items()):
            missing = "json" if "jpg" in parts else "jpg"
            _warn_or_raise(on_error, DatasetError(f"SA-1B shard {url}: {stem} has no .{missing} member"))


# --------------------------------------------------------------------------- COCO


def _coco_rle(ann: dict, h: int, w: int, where: str) -> dict:
    mu = _mask_utils()
    seg = ann.get("segmentation") if isinstance(ann, dict) else None
    if seg is None:
        raise DatasetError(f"{where}: no 'segmentation'")
    try:
        if isinstance(seg, list):  # polygons [[x1, y1, x2, y2, ...], ...]
            polys = [p for p in seg if len(p) >= 6]
            if not polys:
                return {"size": [h, w], "counts": mu.encode(np.zeros((h, w, 1), np.uint8, order="F"))[0]["counts"]}
            return mu.merge(mu.frPyObjects(polys, h, w))
        if isinstance(seg, dict) and "counts" in seg and "size" in seg:
            if [int(s) for s in seg["size"]] != [h, w]:
                raise DatasetError(f"{where}: RLE size {seg['size']} differs from the image size {[h, w]}")
            return _to_compressed(seg)
    except (TypeError, ValueError) as e:
        if isinstance(e, DatasetError):
            raise
        raise DatasetError(f"{where}: bad segmentation ({type(e).__name__}: {e})") from e
    raise DatasetError(f"{where}: unsupported segmentation {type(seg).__name__}")


def iter_coco_instances(annotation_json, image_dir, short_side: int | None = None,
                        sort_by_area: bool = True, max_masks: int | None = None, skip=None,
                        on_error: str = "raise", include_crowd: bool = True,
                        keep_empty: bool = False) -> Iterator[MaskItem]:
    """Yield ``(name, image, masks)`` from a COCO instances JSON, class-agnostic.

    Each annotation becomes one mask, whatever its category: polygons (several polygons
    of one annotation are merged), compressed or uncompressed RLE. ``include_crowd``:
    keep ``iscrowd=1`` regions (a group of objects) as masks. Images without any mask
    are left out unless ``keep_empty``. Images are read from ``image_dir/file_name`` in
    the JSON's image order; name = file stem. The options, the image folder and the
    whole JSON are checked when called, before anything is yielded.
    """
    _check_options(on_error, max_masks, short_side)
    ann_file = Path(annotation_json)
    if not Path(image_dir).is_dir():
        raise MissingFileError(f"COCO image folder {image_dir} does not exist")
    try:
        coco = json.loads(ann_file.read_text(encoding="utf-8"))
        images = [(str(info["file_name"]), info["id"], info) for info in coco["images"]]
        by_image: dict[int, list[dict]] = {}
        for ann in coco.get("annotations", []):
            if not include_crowd and ann.get("iscrowd", 0):
                continue
            by_image.setdefault(ann["image_id"], []).append(ann)
    except FileNotFoundError:
        raise MissingFileError(f"COCO annotation file {ann_file} not found") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        why = f"no {e} key" if isinstance(e, KeyError) else f"{type(e).__name__}: {e}"
        raise DatasetError(f"cannot read COCO annotation file {ann_file}: {why}") from e
    seen: dict[str, str] = {}
    for file_name, _, _ in images:
        name = Path(file_name).stem
        if name in seen:
            raise DatasetError(f"{ann_file}: two images named {name!r}: {seen[name]} and {file_name}")
        seen[name] = file_name
    return _coco_items(ann_file, Path(image_dir), images, by_image, short_side, sort_by_area, max_masks,
                       _skipper(skip), on_error, keep_empty)


def _coco_items(ann_file: Path, image_dir: Path, images: list, by_image: dict, short_side, sort_by_area,
                max_masks, skipped, on_error, keep_empty) -> Iterator[MaskItem]:
    for file_name, image_id, info in images:
        name = Path(file_name).stem
        anns = by_image.get(image_id, [])
        if (not anns and not keep_empty) or skipped(name):
            continue
        img_path = image_dir / file_name
        try:
            image = load_image(img_path)
            h, w = (int(s) for s in image.shape[-2:])
            if (info.get("height", h), info.get("width", w)) != (h, w):
                raise DatasetError(f"image {img_path} is {h}×{w} but {ann_file} says "
                                   f"{info.get('height')}×{info.get('width')}")
            rles = [_coco_rle(a, h, w, f"{ann_file} annotation {a.get('id')}") for a in anns]
            item = _finish(name, image, rles, str(ann_file), sort_by_area, max_masks, short_side,
                           path=img_path)
        except (DatasetError, ImageError) as e:
            _warn_or_raise(on_error, e)
            continue
        yield item


# ------------------------------------------------------------------------- import


def _save_image(item: MaskItem, folder: Path, image_ext: str) -> Path:
    """Write an image that has no file of its own into ``STORE/images`` (atomically)."""
    folder.mkdir(parents=True, exist_ok=True)
    name = item[0]
    if item.data is not None:
        path, payload = folder / f"{name}{item.ext}", item.data
    else:
        from PIL import Image

        fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}.get(image_ext.lower())
        if fmt is None:
            raise SettingError(f"image_ext must be .png or .jpg, got {image_ext!r}")
        buf = io.BytesIO()
        arr = item[1].permute(1, 2, 0).contiguous().numpy()
        Image.fromarray(arr).save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
        path, payload = folder / f"{name}{image_ext}", buf.getvalue()
    return atomic_write_bytes(path, payload)


def import_masks(iterator: Iterable, store_dir, source: str, params: dict | None = None,
                 image_ext: str = ".png", progress: bool = True, total: int | None = None) -> dict:
    """Write ``(name, image, masks)`` items into a mask store; returns counts.

    Resumable: names that already have a complete record are skipped (pass the readers
    ``skip=lambda n: has_masks(store, n)`` to avoid even decoding them). The record points
    at the original image file when the item has one (``MaskItem.path``); otherwise (tar
    shards, resized images, plain tuples) the image is saved as ``STORE/images/<name>``:
    the original bytes for unresized tar members, else ``image_ext`` (``.png`` lossless,
    or ``.jpg`` quality 95). Returns ``{"written", "skipped_existing", "seen", "masks"}``.

    A store holds one source made with one setting: a store of another ``source``, or
    of this source made with other ``params``, raises MaskStoreError naming the store
    (and the parameters that differ) before anything is read.
    """
    from tqdm import tqdm

    check_store_params(store_dir, source, params)
    store = create_store(store_dir, source, params or {})
    counts = {"written": 0, "skipped_existing": 0, "seen": 0, "masks": 0}
    for item in tqdm(iterator, desc=f"import {source} masks", unit="img", disable=not progress, total=total):
        name, image, masks = item[0], item[1], item[2]
        counts["seen"] += 1
        if has_masks(store, name):
            counts["skipped_existing"] += 1
            continue
        path = getattr(item, "path", None)
        if path is None:
            if not isinstance(item, MaskItem):
                item = MaskItem(name, image, masks)
            path = _save_image(item, store / "images", image_ext)
        write_masks(store, name, path, masks)
        counts["written"] += 1
        counts["masks"] += int(masks.shape[0])
    return counts
