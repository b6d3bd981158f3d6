"""Produce class-agnostic masks for a list of images into a mask store, resumably.

``generate(source, images, store_dir, params)`` runs one mask source over image files and
writes one record per image (``labelless.masks.store``). Sources (explicit dict
:data:`SOURCES`; each entry builds a "masker" from its params once, then maps a batch of
``3×H×W`` uint8 images to ``(masks bool N×H×W, scores | None)`` per image):

==============  ==========================================================================
source          params (defaults)
==============  ==========================================================================
dino            model (facebook/dinov2-small; a hub name or a local folder), k (8),
                size (448: short side in pixels), features (tokens | keys), cosine (True),
                iters (20), seed (0) — :func:`labelless.masks.dino.dino_kmeans_masks`
sam             checkpoint (required unless model_type is tiny), model_type (vit_b), and
                the SamAutomaticMaskGenerator knobs of :mod:`labelless.masks.sam`
felzenszwalb    scale, sigma, min_size — :func:`labelless.masks.classical.felzenszwalb_masks`
slic            n_segments, compactness — :func:`labelless.masks.classical.slic_masks`
rgb-kmeans      k, seed — :func:`labelless.masks.classical.rgb_kmeans_masks`
==============  ==========================================================================

Params left out (or None) take the function's defaults; the resolved params go into the
store's ``store.json``, and resuming into a store made with other params is refused
(:class:`~labelless.errors.MaskStoreError`), so one store never mixes two settings.
Resuming: images whose record already exists are skipped before any model is built, so
an interrupted run is simply started again. An image that cannot be read is reported
by name (stderr), skipped and counted; it has no record, so the next run tries it again.
Images are decoded by ``workers`` DataLoader processes (:func:`labelless.io.load_batches`).

Processes (``torchrun --nproc_per_node N -m labelless masks generate ...``): every rank lists
the records already there, rank 0 creates the store, and after a barrier rank ``r`` writes
images ``r::N`` of the rest into the same store. Records are one file per image, written
atomically, and there is no shared index to update (``store.json`` holds only the source
and params), so each image is written once, by one rank, and an interrupted run resumes
under any number of processes. The counts are gathered; rank 0 logs the summary.
"""

from __future__ import annotations

import inspect
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from labelless.distributed import all_gather_object, barrier, get_rank, get_world_size, in_list_order
from labelless.errors import SettingError
from labelless.io import default_workers, load_batches, pick_device
from labelless.masks.store import check_store_params, create_store, has_masks, write_masks

__all__ = ["SOURCES", "generate", "build_masker", "resolve_params"]

Masker = Callable[[list], list]  # list of 3×H×W uint8 tensors -> list of (masks N×H×W bool, scores | None)

DINO_DEFAULTS = dict(model="facebook/dinov2-small", k=8, size=448, features="tokens", cosine=True, iters=20,
                     seed=0, batch_size=4)


def _np(masks) -> np.ndarray:
    return masks.detach().cpu().numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)


# ----------------------------------------------------------------------------- dino

def _dino_params(params: dict) -> dict:
    p = _merge("dino", DINO_DEFAULTS, params)
    if Path(str(p["model"])).expanduser().is_dir():  # a local folder: record it absolute
        p["model"] = str(Path(str(p["model"])).expanduser().resolve())
    return p


def _dino_masker(params: dict, device: torch.device) -> Masker:
    from labelless.masks.dino import dino_kmeans_masks, load_dino

    if params["features"] not in ("tokens", "keys"):
        raise SettingError(f"dino features must be tokens or keys, got {params['features']!r}")
    if int(params["k"]) < 1:
        raise SettingError(f"dino k (--k) must be >= 1, got {params['k']}")
    backbone = load_dino(params["model"], device)

    def run(images: list) -> list:
        masks = dino_kmeans_masks(backbone, images, int(params["k"]), size=params["size"],
                                  which=params["features"], iters=int(params["iters"]),
                                  seed=int(params["seed"]), cosine=bool(params["cosine"]))
        return [(_np(m), None) for m in masks]

    return run


# ------------------------------------------------------------------------------ sam

def _sam_params(params: dict) -> dict:
    from labelless.masks.sam import GENERATOR_DEFAULTS

    p = _merge("sam", {"checkpoint": None, "model_type": "vit_b", **GENERATOR_DEFAULTS}, params)
    if p["checkpoint"] is not None:
        p["checkpoint"] = str(Path(p["checkpoint"]).expanduser().resolve())
    return p


def _sam_masker(params: dict, device: torch.device) -> Masker:
    from labelless.masks.sam import build_sam_generator, sam_masks

    knobs = {k: v for k, v in params.items() if k not in ("checkpoint", "model_type")}
    if params["checkpoint"] is None and params["model_type"] != "tiny":
        raise SettingError("the sam source needs a checkpoint (--sam-checkpoint sam_vit_b_01ec64.pth with "
                           "--sam-model vit_b; vit_l / vit_h likewise)")
    generator = build_sam_generator(params["checkpoint"], params["model_type"], device, **knobs)
    return lambda images: [sam_masks(generator, im) for im in images]


# ------------------------------------------------------------------------ classical

def _classical_fn(source: str):
    from labelless.masks import classical

    return {"felzenszwalb": classical.felzenszwalb_masks, "slic": classical.slic_masks,
            "rgb-kmeans": classical.rgb_kmeans_masks}[source]


def _fn_defaults(fn) -> dict:
    sig = inspect.signature(fn)
    names = list(sig.parameters)[1:]  # after the image
    return {n: (None if sig.parameters[n].default is inspect.Parameter.empty else sig.parameters[n].default)
            for n in names if sig.parameters[n].kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                         inspect.Parameter.KEYWORD_ONLY)}


def _classical_params(source: str):
    return lambda params: _merge(source, _fn_defaults(_classical_fn(source)), params)


def _classical_masker(source: str):
    def build(params: dict, device: torch.device) -> Masker:
        fn = _classical_fn(source)
        kwargs = {k: v for k, v in params.items() if v is not None}
        try:  # a bad value fails now, on a blank 16×16 image, not at the first real image
            fn(torch.zeros(3, 16, 16, dtype=torch.uint8), **kwargs)
        except SettingError:
            raise
        except (TypeError, ValueError) as e:
            raise SettingError(f"{source} params {kwargs} cannot be used: {type(e).__name__}: {e}") from e
        return lambda images: [(_np(fn(im, **kwargs)), None) for im in images]

    return build


# ------------------------------------------------------------------------- registry

# name -> (resolve params, build masker); explicit, nothing registered by import
SOURCES: dict[str, tuple[Callable[[dict], dict], Callable[[dict, torch.device], Masker]]] = {
    "dino": (_dino_params, _dino_masker),
    "sam": (_sam_params, _sam_masker),
    "felzenszwalb": (_classical_params("felzenszwalb"), _classical_masker("felzenszwalb")),
    "slic": (_classical_params("slic"), _classical_masker("slic")),
    "rgb-kmeans": (_classical_params("rgb-kmeans"), _classical_masker("rgb-kmeans")),
}


def _merge(source: str, defaults: dict, params: dict | None) -> dict:
    params = dict(params or {})
    unknown = set(params) - set(defaults)
    if unknown:
        raise SettingError(f"unknown {source} parameter(s) {sorted(unknown)}; known: {sorted(defaults)}")
    return {k: (params[k] if params.get(k) is not None else v) for k, v in defaults.items()}


def _check_source(source: str) -> None:
    if source not in SOURCES:
        raise SettingError(f"unknown mask source {source!r}; choose from {', '.join(SOURCES)}")


def resolve_params(source: str, params: dict | None = None) -> dict:
    """``params`` completed with the source's defaults (SettingError on unknown keys)."""
    _check_source(source)
    return SOURCES[source][0](params)


def build_masker(source: str, params: dict | None = None, device="auto") -> Masker:
    """The masker of ``source`` (loads its model once): list of uint8 ``3×H×W`` images →
    list of ``(masks bool N×H×W numpy, scores | None)``."""
    _check_source(source)
    return SOURCES[source][1](resolve_params(source, params), pick_device(device))


# ------------------------------------------------------------------------- generate

def _names(paths: list[Path]) -> list[str]:
    """Record names (file stems) of ``paths``; SettingError when two images share one."""
    seen: dict[str, Path] = {}
    for p in paths:
        if p.stem in seen:
            raise SettingError(f"two images share the name {p.stem!r}: {seen[p.stem]} and {p} (records are named "
                               "by file stem; use separate stores)")
        seen[p.stem] = p
    return list(seen)


def _batch_size(source: str, params: dict, batch_size: int | None) -> int:
    """Images per masker call (dino's ``batch_size`` param leaves ``params``: not a store setting)."""
    if batch_size is None:
        batch_size = int(params.pop("batch_size", 1) or 1) if source == "dino" else 1
    else:
        params.pop("batch_size", None)
    if batch_size < 1:
        raise SettingError(f"batch_size must be >= 1, got {batch_size}")
    return batch_size


def _write_shard(store: Path, source: str, masker: Masker, todo: list, batch_size: int, workers: int,
                 progress: bool) -> dict:
    """Masks of ``todo`` (``(name, path)`` pairs) into ``store``, images decoded by ``workers``
    DataLoader processes. Returns ``{"written", "masks", "unreadable": [(index in todo, file name)]}``."""
    from tqdm import tqdm

    part = {"written": 0, "masks": 0, "unreadable": []}
    if not todo:
        return part
    with tqdm(total=len(todo), desc=f"{source} masks", unit="img", disable=not progress) as bar:
        for batch in load_batches([p for _, p in todo], batch_size, workers):
            for it in (it for it in batch if it["error"] is not None):
                print(f"skipped: {it['error']}", file=sys.stderr)
                part["unreadable"].append((it["index"], todo[it["index"]][1].name))
                bar.update(1)
            good = [it for it in batch if it["error"] is None]
            for it, (masks, scores) in zip(good, masker([it["image"] for it in good]) if good else []):
                name, path = todo[it["index"]]
                if tuple(masks.shape[-2:]) != tuple(it["image"].shape[-2:]):
                    raise RuntimeError(f"{source} gave {tuple(masks.shape[-2:])} masks for the "
                                       f"{tuple(it['image'].shape[-2:])} image {path}")
                write_masks(store, name, path, masks, scores)
                part["written"] += 1
                part["masks"] += int(masks.shape[0])
                bar.update(1)
    return part


def _merge_shards(parts: list[dict]) -> dict:
    """The ranks' ``_write_shard`` results summed; unreadable names in the order of the list to do."""
    unreadable = in_list_order([p["unreadable"] for p in parts])
    return {"written": sum(p["written"] for p in parts), "unreadable": len(unreadable),
            "unreadable_names": unreadable, "masks": sum(p["masks"] for p in parts)}


def _summary(source: str, counts: dict) -> str:
    mean = f" ({counts['mean_masks']:.1f} per image)" if counts["written"] else ""
    line = (f"{source}: {counts['written']} image(s) written with {counts['masks']} masks{mean}, "
            f"{counts['skipped_existing']} already done, {counts['unreadable']} unreadable")
    if counts["unreadable_names"]:
        shown = counts["unreadable_names"][:10]
        more = len(counts["unreadable_names"]) - len(shown)
        line += f" (skipped: {', '.join(shown)}{f' and {more} more' if more > 0 else ''})"
    return f"{line}; store: {counts['store']}"


def generate(source: str, images: Sequence, store_dir, params: dict | None = None, device="auto",
             batch_size: int | None = None, limit: int | None = None, masker: Masker | None = None,
             progress: bool = True, log=print, workers: int | None = None) -> dict:
    """Write ``source`` masks of ``images`` (file paths) into the store ``store_dir``.

    params: the source's parameters (module doc; defaults filled in and saved in
    store.json). device: "auto" (cuda when present), "cpu", "cuda:1", ... batch_size:
    images per model call (default: dino's ``batch_size`` param, 4; 1 otherwise).
    limit: only the first N images of the list. masker: a ready masker (see
    :func:`build_masker`) to use instead of building one — e.g. a loaded model shared by
    several calls, or a stand-in in tests; ``source`` then only names the store's source
    (any name; params of a known source are still completed with its defaults).
    workers: image-decoding DataLoader processes (default :func:`labelless.io.default_workers`).
    Under torch.distributed every rank calls this with the same arguments (module docstring).

    Record names are the image file stems (they must be unique). Returns counts
    ``{"images", "written", "skipped_existing", "unreadable", "unreadable_names",
    "masks", "mean_masks", "seconds", "store"}`` (of all ranks) and logs a one-line summary.
    """
    t0 = time.time()
    params = resolve_params(source, params) if masker is None or source in SOURCES else dict(params or {})
    paths = [Path(p) for p in images]
    if limit is not None:
        if limit < 0:
            raise SettingError(f"limit must be >= 0, got {limit}")
        paths = paths[:limit]
    names = _names(paths)
    batch_size = _batch_size(source, params, batch_size)
    rank, world = get_rank(), get_world_size()
    check_store_params(store_dir, source, params)  # one store, one source, one setting (each rank raises alike)
    todo = [(n, p) for n, p in zip(names, paths) if not has_masks(store_dir, n)]
    mine = todo[rank::world]
    if mine:  # before the store is created: a bad --device / --model / checkpoint leaves no store
        dev = pick_device(device)
        masker = SOURCES[source][1](params, dev) if masker is None else masker
        workers = default_workers(dev) if workers is None else workers
    if rank == 0:
        create_store(store_dir, source, params)
    barrier()  # every rank has listed the records already there, and the store exists
    part = _write_shard(Path(store_dir), source, masker, mine, batch_size, workers, progress and rank == 0)
    counts = {"images": len(paths), "skipped_existing": len(paths) - len(todo),
              **_merge_shards(all_gather_object(part))}
    counts["mean_masks"] = counts["masks"] / counts["written"] if counts["written"] else None
    counts["seconds"] = round(time.time() - t0, 2)
    counts["store"] = str(Path(store_dir))
    if log is not None and rank == 0:
        log(_summary(source, counts))
    return counts
