"""Command line: ``labelless masks generate | show | oracle | import``.

``add_masks_parser(subparsers)`` registers the ``masks`` command on the main parser's
sub-parsers (``labelless.cli``); each leaf sets ``func``, called with the parsed
arguments, which returns the exit code: 0 ok, 1 nothing could be processed. Bad input
(a missing file, an option the source does not take, a store made with other
parameters, a missing optional package) raises a :class:`labelless.errors.LabellessError`
naming the file or the option, which ``labelless.cli.main`` turns into a one-line
message and exit status 2; any other exception is a bug and keeps its traceback.

    labelless masks generate --source dino --images DIR --out STORE [--model facebook/dinov2-small|PATH]
                             [--k 8] [--size 448] [--features tokens|keys] [--limit N] [--device auto]
    labelless masks generate --source sam --sam-checkpoint sam_vit_b_01ec64.pth --sam-model vit_b ...
    labelless masks generate --source felzenszwalb|slic|rgb-kmeans ... [--workers N]
    torchrun --nproc_per_node N -m labelless masks generate ...   (one store, each rank its share)
    labelless masks show --masks STORE --out DIR [--limit N]
    labelless masks oracle --masks STORE --dataset camvid --data-root PATH --split val --out DIR
    labelless masks import --sa1b DIR|TAR... --out STORE [--short-side N --max-masks N]
    labelless masks import --coco-json F --coco-images DIR --out STORE
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np

from labelless.errors import DatasetError, ImageError, MissingFileError, SettingError
from labelless.fileio import atomic_path

SOURCE_NAMES = ("dino", "sam", "felzenszwalb", "slic", "rgb-kmeans")

# CLI option (dest) -> parameter name, per source
_DINO_OPTS = {"model": "model", "k": "k", "size": "size", "features": "features", "seed": "seed",
              "iters": "iters"}
_SAM_OPTS = {"sam_checkpoint": "checkpoint", "sam_model": "model_type", "points_per_side": "points_per_side",
             "points_per_batch": "points_per_batch", "pred_iou_thresh": "pred_iou_thresh",
             "stability_score_thresh": "stability_score_thresh", "box_nms_thresh": "box_nms_thresh",
             "crop_n_layers": "crop_n_layers", "min_mask_region_area": "min_mask_region_area"}
_CLASSICAL_OPTS = {"k": "k", "seed": "seed", "scale": "scale", "sigma": "sigma", "min_size": "min_size",
                   "n_segments": "n_segments", "compactness": "compactness", "space": "space",
                   "xy_weight": "xy_weight"}
_ALL_OPTS = sorted(set(_DINO_OPTS) | set(_SAM_OPTS) | set(_CLASSICAL_OPTS))


def source_params(source: str, args) -> dict:
    """The generate options that apply to ``source`` as its params; SettingError naming
    any option given that the source does not use."""
    from labelless.masks.generate import resolve_params

    if source == "dino":
        table = _DINO_OPTS
    elif source == "sam":
        table = _SAM_OPTS
    else:
        known = resolve_params(source, {})  # the classical function's parameters
        table = {opt: name for opt, name in _CLASSICAL_OPTS.items() if name in known}
    given = {opt for opt in _ALL_OPTS if getattr(args, opt, None) is not None}
    unused = sorted(given - set(table))
    if unused:
        flags = ", ".join("--" + o.replace("_", "-") for o in unused)
        raise SettingError(f"{flags} not used by the {source} source (it takes: "
                           f"{', '.join('--' + o.replace('_', '-') for o in table)})")
    return {name: getattr(args, opt) for opt, name in table.items() if getattr(args, opt, None) is not None}


# ------------------------------------------------------------------------ commands

def cmd_generate(args) -> int:
    """Masks of a folder into a store; under torchrun each rank writes its share of the images."""
    from labelless.distributed import process_group
    from labelless.io import expand_images
    from labelless.masks.generate import generate

    images = expand_images(args.images)
    if not images:
        raise SettingError(f"--images: no image files in {' '.join(args.images)}")
    params = source_params(args.source, args)
    if args.source == "dino" and args.batch_size is not None:
        params["batch_size"] = args.batch_size
    with process_group(args.device) as info:  # WORLD_SIZE > 1 (torchrun): join the process group
        counts = generate(args.source, images, args.out, params, device=str(info.device),
                          batch_size=args.batch_size if args.source != "dino" else None,
                          limit=args.limit, progress=not args.quiet, workers=args.workers,
                          log=print if info.is_main else None)
    if args.json and info.is_main:
        print(json.dumps(counts))
    return 0 if counts["written"] + counts["skipped_existing"] > 0 else 1


def render_masks(image, masks, alpha: float = 0.55):
    """PIL image: ``image`` (uint8 3×H×W) with each mask (N×H×W bool) in its own colour,
    smaller masks drawn over larger ones, mask borders dark; uncovered pixels unchanged."""
    from PIL import Image

    from labelless.masks.ops import masks_to_labels, sort_by_area
    from labelless.visualize import palette

    img = np.asarray(image.cpu() if hasattr(image, "cpu") else image)
    if img.shape[0] == 3 and img.shape[-1] != 3:
        img = img.transpose(1, 2, 0)
    masks = np.asarray(masks, dtype=bool)
    lab = masks_to_labels(sort_by_area(masks, descending=False))  # smallest first wins
    out = img.astype(np.float32)
    if masks.shape[0]:
        valid = lab >= 0
        cols = palette(masks.shape[0]).astype(np.float32)
        out[valid] = (1 - alpha) * out[valid] + alpha * cols[lab[valid]]
        edge = np.zeros(lab.shape, dtype=bool)
        edge[:, 1:] |= lab[:, 1:] != lab[:, :-1]
        edge[1:, :] |= lab[1:, :] != lab[:-1, :]
        out[edge] *= 0.25
    return Image.fromarray(out.round().clip(0, 255).astype(np.uint8))


def cmd_show(args) -> int:
    from labelless.io import load_image
    from labelless.masks.store import list_names, open_store, read_masks

    meta = open_store(args.masks)
    names = list_names(args.masks)
    if args.limit is not None:
        names = names[: args.limit]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    done = skipped = 0
    for name in names:
        masks, record = read_masks(args.masks, name)
        try:
            image = load_image(record["image"])
        except ImageError as e:
            print(f"skipped {name}: {e}", file=sys.stderr)
            skipped += 1
            continue
        if tuple(image.shape[-2:]) != tuple(masks.shape[-2:]):
            print(f"skipped {name}: image {record['image']} is {tuple(image.shape[-2:])}, its masks "
                  f"{tuple(masks.shape[-2:])}", file=sys.stderr)
            skipped += 1
            continue
        path = out / f"{name}.png"
        with atomic_path(path) as tmp:
            render_masks(image, masks, args.alpha).save(tmp, format="PNG")
        done += 1
    print(f"{done} overlay(s) of {meta['source']} masks written to {out}, {skipped} skipped")
    return 0 if done else 1


def cmd_oracle(args) -> int:
    from labelless.data.benchmarks import load_benchmark
    from labelless.masks.oracle import oracle_score
    from labelless.masks.store import list_names, open_store

    meta = open_store(args.masks)
    bench = load_benchmark(args.dataset, args.data_root, args.split, args.layout)
    if len(bench.samples) == 0:
        raise DatasetError(f"{args.dataset} split {args.split!r} under {args.data_root} has no samples")
    have = set(list_names(args.masks))
    n = sum(s.name in have for s in bench.samples)
    print(f"{n} of {len(bench.samples)} {bench.name} {args.split} images had {meta['source']} masks "
          f"in {args.masks}")
    if n:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        res = oracle_score(args.masks, bench, out)
        print(f"oracle mIoU {res['mIoU']:.2f}  pAcc {res['pAcc']:.2f}  "
              f"mean masks/image {res['mean_masks_per_image']:.2f}  pixel coverage {res['pixel_coverage']:.2f}%")
        print(f"results: {out / 'results.json'}")
    return 0 if n else 1


def _import_inputs(args) -> tuple[str, list[str], list[str]]:
    """``(source, SA-1B folders, SA-1B shards)`` from the import options, checked."""
    if args.coco_json:
        if not args.coco_images:
            raise SettingError("--coco-json needs --coco-images DIR (the folder of the images it names)")
        return "coco", [], []
    if args.coco_images:
        raise SettingError("--coco-images goes with --coco-json")
    folders = [p for p in args.sa1b if Path(p).is_dir()]
    tars = [p for p in args.sa1b if not Path(p).is_dir()]
    for t in tars:
        if not Path(t).is_file() and "://" not in t and not t.startswith("pipe:"):
            raise MissingFileError(f"--sa1b: no such folder or tar file: {t}")
    return "sa1b", folders, tars


def _import_iterator(args, folders: list[str], tars: list[str], skip):
    from labelless.masks import readers

    opts = dict(short_side=args.short_side, max_masks=args.max_masks, skip=skip, on_error="skip")
    if args.coco_json:
        return readers.iter_coco_instances(args.coco_json, args.coco_images, **opts)
    its = [readers.iter_sa1b_folder(f, **opts) for f in folders]
    if tars:
        its.append(readers.iter_sa1b_tars(tars, **opts))
    return itertools.chain(*its)


def cmd_import(args) -> int:
    from labelless.masks.readers import import_masks
    from labelless.masks.store import check_store_params, has_masks

    store = Path(args.out)
    already = []

    def skip(name: str) -> bool:  # resume: done names are not even decoded
        done = has_masks(store, name)
        if done:
            already.append(name)
        return done

    source, folders, tars = _import_inputs(args)
    # what shapes the masks; the inputs are not params (like generate's images), so more
    # shards or folders can be imported into one store made with the same options
    params = {"short_side": args.short_side, "max_masks": args.max_masks}
    check_store_params(store, source, params)  # before any input is read
    it = _import_iterator(args, folders, tars, skip=skip)
    if args.limit is not None:
        it = itertools.islice(it, args.limit)
    counts = import_masks(it, store, source, params, progress=not args.quiet)
    counts["skipped_existing"] += len(already)
    print(f"import {source}: {counts['written']} image(s) written with {counts['masks']} masks, "
          f"{counts['skipped_existing']} already done; store: {store}")
    if args.json:
        print(json.dumps(counts))
    return 0 if counts["written"] + counts["skipped_existing"] > 0 else 1


# -------------------------------------------------------------------------- parser

def _at_least(low: int):
    """argparse type: an int >= ``low`` (argparse reports a bad value with exit status 2)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    parse.__name__ = "int"
    return parse


def add_masks_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``masks`` (with generate / show / oracle / import) on ``subparsers``."""
    masks = subparsers.add_parser("masks", help="class-agnostic masks: generate, show, oracle, import",
                                  description=__doc__.splitlines()[0])
    sub = masks.add_subparsers(dest="masks_command", required=True)
    _add_generate(sub)
    _add_show(sub)
    _add_oracle(sub)
    _add_import(sub)
    return masks


def _add_generate(sub) -> None:
    """``masks generate``: the command's own options, then every source's."""
    p = sub.add_parser("generate", help="produce masks for a folder of images (resumable)")
    p.add_argument("--source", required=True, choices=SOURCE_NAMES)
    p.add_argument("--images", required=True, nargs="+", help="image folders or files")
    p.add_argument("--out", required=True, help="mask store folder (created, or resumed)")
    p.add_argument("--limit", type=_at_least(0), default=None, help="only the first N images")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (auto: cuda when present)")
    p.add_argument("--batch-size", type=_at_least(1), default=None, help="images per model call (dino: 4)")
    p.add_argument("--workers", type=_at_least(0), default=None,
                   help="DataLoader processes decoding images, 0: in the main process (default: min(4, CPUs "
                        "per process) on CUDA, 0 on the CPU)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="also print the counts as one JSON line")
    _add_source_options(p)
    p.set_defaults(func=cmd_generate)


def _add_source_options(p) -> None:
    """The per-source options of ``masks generate`` (None: the source's default)."""
    g = p.add_argument_group("dino (k-means of DINO / DINOv2 patch features)")
    g.add_argument("--model", default=None,
                   help="hub name (facebook/dinov2-small, facebook/dino-vits8, ...) or a local folder "
                        "(default facebook/dinov2-small)")
    g.add_argument("--k", type=_at_least(1), default=None, help="clusters per image (dino: 8; rgb-kmeans too)")
    g.add_argument("--size", type=_at_least(1), default=None, help="input short side in pixels (default 448)")
    g.add_argument("--features", choices=["tokens", "keys"], default=None,
                   help="last-layer patch tokens (default) or last-layer attention keys")
    g.add_argument("--iters", type=int, default=None, help="k-means iterations (20)")
    g.add_argument("--seed", type=int, default=None, help="k-means seed (0)")
    g = p.add_argument_group("sam (Segment Anything automatic masks)")
    g.add_argument("--sam-checkpoint", default=None, help="sam_vit_b_01ec64.pth, ... (a state dict)")
    g.add_argument("--sam-model", default=None, choices=["vit_b", "vit_l", "vit_h", "tiny"],
                   help="the checkpoint's architecture (default vit_b)")
    g.add_argument("--points-per-side", type=_at_least(1), default=None, help="point grid (32)")
    g.add_argument("--points-per-batch", type=_at_least(1), default=None, help="points per decoder call (64)")
    g.add_argument("--pred-iou-thresh", type=float, default=None, help="0.88")
    g.add_argument("--stability-score-thresh", type=float, default=None, help="0.95")
    g.add_argument("--box-nms-thresh", type=float, default=None, help="0.7")
    g.add_argument("--crop-n-layers", type=_at_least(0), default=None, help="0")
    g.add_argument("--min-mask-region-area", type=_at_least(0), default=None, help="0 (> 0 needs OpenCV)")
    g = p.add_argument_group("classical (scikit-image)")
    g.add_argument("--scale", type=float, default=None, help="felzenszwalb scale")
    g.add_argument("--sigma", type=float, default=None, help="felzenszwalb smoothing")
    g.add_argument("--min-size", type=_at_least(0), default=None, help="felzenszwalb minimum segment size")
    g.add_argument("--n-segments", type=_at_least(1), default=None, help="slic target number of segments")
    g.add_argument("--compactness", type=float, default=None, help="slic compactness")
    g.add_argument("--space", choices=["lab", "rgb"], default=None, help="rgb-kmeans colour space (lab)")
    g.add_argument("--xy-weight", type=float, default=None, help="rgb-kmeans weight of pixel position (0)")


def _add_show(sub) -> None:
    """``masks show``."""
    p = sub.add_parser("show", help="coloured overlays of stored masks, one PNG per image")
    p.add_argument("--masks", required=True, help="mask store folder")
    p.add_argument("--out", required=True, help="output folder for <name>.png")
    p.add_argument("--limit", type=_at_least(0), default=None, help="only the first N records (by name)")
    p.add_argument("--alpha", type=float, default=0.55, help="mask colour opacity")
    p.set_defaults(func=cmd_show)


def _add_oracle(sub) -> None:
    """``masks oracle``."""
    p = sub.add_parser("oracle", help="oracle mIoU: each mask takes its majority ground-truth class")
    p.add_argument("--masks", required=True, help="mask store folder")
    p.add_argument("--dataset", required=True, help="benchmark key (camvid, ade150, voc21, ...)")
    p.add_argument("--data-root", required=True, help="folder holding the dataset (or the dataset folder)")
    p.add_argument("--split", default="val")
    p.add_argument("--layout", default="auto", choices=["auto", "detectron2", "mmseg"])
    p.add_argument("--out", required=True, help="output folder for results.json / .md / plot")
    p.set_defaults(func=cmd_oracle)


def _add_import(sub) -> None:
    """``masks import``."""
    p = sub.add_parser("import", help="import SA-1B or COCO instance masks into a store")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--sa1b", nargs="+", help="SA-1B folders (sa_*.jpg + sa_*.json) and/or .tar shards")
    src.add_argument("--coco-json", help="COCO instances JSON (masks taken class-agnostic)")
    p.add_argument("--coco-images", help="the folder of the images the COCO JSON names")
    p.add_argument("--out", required=True, help="mask store folder (created, or resumed)")
    p.add_argument("--short-side", type=_at_least(1), default=None, help="resize images and masks to this short side")
    p.add_argument("--max-masks", type=_at_least(0), default=None, help="keep the N largest masks per image")
    p.add_argument("--limit", type=_at_least(0), default=None, help="only the first N images")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="also print the counts as one JSON line")
    p.set_defaults(func=cmd_import)

