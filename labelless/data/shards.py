"""Tar shards, streamed (nothing extracted): their members, and the image-text pairs of
img2dataset's webdataset output (CC3M, CC12M, RedCaps mirrors …).

img2dataset writes each sample as consecutive members sharing a key:
``<key>.jpg`` (or ``.png`` / ``.webp``), ``<key>.txt`` (the caption) and ``<key>.json``
(metadata, with ``"caption"`` too). A sample is the run of consecutive members with one
key (webdataset's grouping); its caption is the ``.txt``, else the ``.json``'s
``"caption"``. A sample without image or caption, or whose image cannot be decoded, is
reported by name and skipped (``on_error="skip"``) or stops the read (``"raise"``).
"""

from __future__ import annotations

import json
import os
import tarfile
import warnings
from typing import Callable, Iterator

from labelless.errors import DatasetError, ImageError, MissingFileError, SettingError, describe, require
from labelless.io import decode_image

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


def _is_local(url: str) -> bool:
    return "://" not in url and not url.startswith("pipe:")


def tar_members(url: str, what: str = "shard") -> Iterator[dict]:
    """``{"fname", "data"}`` of every member of one tar shard (a path, URL or ``pipe:``), in order."""
    tariterators = require("webdataset.tariterators", f"reading {what}s")
    try:
        for source in tariterators.url_opener([{"url": url}]):
            try:
                yield from tariterators.tar_file_expander([source], eof_value=None)
            finally:
                source["stream"].close()
    except (tarfile.TarError, OSError, EOFError) as e:
        why = e.args[0] if e.args else e  # webdataset appends the stream and url to the args
        raise DatasetError(f"cannot read {what} {url}: {type(e).__name__}: {why}") from e


def _grouped(url: str, skip: Callable[[str], bool]) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Runs of consecutive members with one key → (key, {extension: bytes}); skipped keys
    are passed over without keeping their bytes."""
    key, parts = None, {}
    for member in tar_members(url, "image-text shard"):
        base = member["fname"].rsplit("/", 1)[-1]
        stem, _, ext = base.partition(".")
        if stem != key:
            if key is not None and parts:
                yield key, parts
            key, parts = stem, {}
            dropped = skip(stem)
        if not dropped:
            parts[ext.lower()] = member["data"]
    if key is not None and parts:
        yield key, parts


def _pair(key: str, parts: dict[str, bytes], where: str):
    image_ext = next((e for e in IMAGE_EXTS if e in parts), None)
    if image_ext is None:
        raise DatasetError(f"{where}: sample {key} has no image ({', '.join(sorted(parts))})")
    if "txt" in parts:
        caption = parts["txt"].decode("utf-8", errors="replace").strip()
    else:
        try:
            caption = str(json.loads(parts.get("json", b"{}")).get("caption") or "").strip()
        except ValueError as e:
            raise DatasetError(f"{where}: sample {key}: unreadable .json ({describe(e)})") from e
    if not caption:
        raise DatasetError(f"{where}: sample {key} has no caption (.txt or .json 'caption')")
    return decode_image(parts[image_ext], f"{where}:{key}.{image_ext}"), caption


def iter_pair_shards(urls, skip: Callable[[str], bool] | None = None,
                     on_error: str = "skip") -> Iterator[tuple[str, tuple]]:
    """``(key, (image uint8 3×H×W, caption))`` of img2dataset shards, in order (module docstring).
    Local shard paths are checked when called."""
    if on_error not in ("skip", "raise"):
        raise SettingError(f"on_error must be skip or raise, got {on_error!r}")
    urls = [os.fspath(urls)] if isinstance(urls, (str, os.PathLike)) else [os.fspath(u) for u in urls]
    if not urls:
        raise SettingError("no image-text shards given")
    for url in urls:
        if _is_local(url) and not os.path.isfile(url):
            raise MissingFileError(f"image-text shard {url} does not exist")
    return _pairs(urls, skip or (lambda name: False), on_error)


def _pairs(urls: list[str], skip, on_error: str):
    for url in urls:
        for key, parts in _grouped(url, skip):
            try:
                yield key, _pair(key, parts, url)
            except (DatasetError, ImageError) as e:
                if on_error == "raise":
                    raise
                warnings.warn(f"skipped: {e}", stacklevel=2)
