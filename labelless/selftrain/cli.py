"""Command line: ``labelless selftrain label``.

    labelless selftrain label --dataset NAME --data-root DIR [--split train] --pretrained P [--model M]
        [--mode MODE] [every inference option of eval: --protocol, --short-side, --input-size, --stride,
        --templates, --synonyms, --bg-threshold, --batch-size, --device, ..., --refine pamr | masks
        --masks SOURCE] --out STORE
        [--min-confidence P] [--ignore-index I] [--max-images N] [--workers N]

Several processes: ``torchrun --nproc_per_node N -m labelless selftrain label ...`` (each
labels every N-th image; one GPU per process on CUDA).

``add_selftrain_parser(subparsers, add_model_args, build)`` registers the command on the
top-level parser (``labelless/cli.py``), which passes in its model/inference options and
its segmenter builder (sub-command modules never import ``labelless.cli``); nothing heavy
is imported until the command runs. Exit codes as ``labelless.cli.main``: 0 ok, 1 nothing
could be labelled, 2 bad input.
"""

from __future__ import annotations

import argparse
import functools


def _check_options(args, num_classes: int, ignore: int) -> None:
    import math

    from labelless.errors import SettingError

    p = args.min_confidence
    if p is not None and not (math.isfinite(p) and 0.0 <= p <= 1.0):
        raise SettingError(f"--min-confidence must be between 0 and 1, got {p}")
    if not 0 <= ignore <= 65535 or ignore < num_classes:
        raise SettingError(f"--ignore-index {ignore} must be in {num_classes}..65535: not one of the dataset's "
                           f"{num_classes} classes, and fit a 16-bit PNG")
    if args.max_images is not None and args.max_images < 1:
        raise SettingError(f"--max-images must be at least 1, got {args.max_images}")
    if getattr(args, "masks", None) == "gt":
        raise SettingError("--masks gt refines with the split's labels, which pseudo-labelling never reads: give a "
                           "mask source (dino, sam, felzenszwalb, slic, rgb-kmeans) or a mask store folder")


def _meta(args, bench, scorer, seg, ignore: int, world_size: int, refine: dict | None = None) -> dict:
    """store.json's description of the run (``labelless.selftrain.store``)."""
    from labelless.selftrain.label import confidence_definition

    info = scorer.info()
    random_weights = info.get("pretrained") in (None, "none")
    return {
        "dataset": bench.name, "split": args.split, "data_root": str(args.data_root), "layout": args.layout,
        "classes": list(bench.classes), "background": bool(bench.background), "ignore_index": ignore,
        "min_confidence": args.min_confidence, "model": info,
        "inference": {"preset": args.preset, "protocol": vars(seg.protocol), "templates": args.templates,
                      "synonyms": args.synonyms, "class_names": args.class_names,
                      "logit_scale": args.logit_scale, "bg_threshold": args.bg_threshold,
                      "score_background": seg.named_background,
                      "seed": args.seed if random_weights else None,  # only random weights depend on it
                      **({"refine": refine} if refine else {}),  # absent without one: older stores resume
                      "confidence": confidence_definition(scorer.probabilities, args.logit_scale)},
        "run": {"device": str(seg.device), "world_size": world_size, "max_images": args.max_images,
                "batch_size": seg.batch_size},
    }


def cmd_label(args, build, label_masks) -> int:
    """``build(args, classes, background) -> (scorer, Segmenter)``: ``labelless.cli._build``;
    ``label_masks(args, segmenter, ignore_index) -> (mask source | None, refinement record)``:
    ``labelless.cli._label_masks``."""
    from labelless.data.benchmarks import load_benchmark
    from labelless.distributed import process_group
    from labelless.errors import DatasetError
    from labelless.selftrain.label import label_benchmark

    bench = load_benchmark(args.dataset, args.data_root, args.split, args.layout)
    if not bench.samples:
        raise DatasetError(f"{args.dataset} split {args.split!r} under {args.data_root} has no samples")
    ignore = bench.ignore_index if args.ignore_index is None else args.ignore_index
    _check_options(args, len(bench.classes), ignore)
    with process_group(args.device) as info:  # WORLD_SIZE > 1 (torchrun): join the process group
        args = argparse.Namespace(**{**vars(args), "device": str(info.device)})  # cuda:LOCAL_RANK per process
        scorer, seg = build(args, bench.classes, bench.background)
        masks, refine = label_masks(args, seg, ignore)
        meta = _meta(args, bench, scorer, seg, ignore, info.world_size, refine)
        result = label_benchmark(seg, bench, args.out, meta, args.max_images, progress=True, workers=args.workers,
                                 masks=masks)
    c = result["counts"]
    if info.is_main:
        print(f"{c['labelled']} image(s) labelled, {c['resumed']} already in the store, {c['skipped']} skipped "
              f"(unreadable); {c['images']} of {c['samples']} in {args.out} (store.json)")
    return 0 if c["images"] else 1


def add_selftrain_parser(subparsers, add_model_args, build, label_masks) -> argparse.ArgumentParser:
    """Register ``selftrain`` (label) on ``subparsers``. ``add_model_args(parser)`` adds the
    model, inference and refinement options of eval; ``build`` makes the segmenter from them,
    ``label_masks`` the mask source of a mask refinement (:func:`cmd_label`)."""
    p = subparsers.add_parser("selftrain", help="self-training (S-Seg+): pseudo-label a dataset with any model")
    sub = p.add_subparsers(dest="selftrain_command", required=True)

    q = sub.add_parser("label", help="pseudo-label a dataset split (label + confidence PNG per image)")
    q.add_argument("--dataset", required=True, help="a benchmark key, as for eval (voc20, camvid, folder, ...)")
    q.add_argument("--data-root", required=True, help="folder holding the dataset (or the dataset folder)")
    q.add_argument("--split", default="train")
    q.add_argument("--layout", default="auto", choices=["auto", "detectron2", "mmseg"])
    q.add_argument("--out", required=True, help="the pseudo-label store (folder); an existing one is resumed")
    q.add_argument("--min-confidence", type=float, default=None,
                   help="label --ignore-index where the stored confidence is below this (0..1)")
    q.add_argument("--ignore-index", type=int, default=None,
                   help="value of ignored pixels (default: the dataset's, 255 for most)")
    q.add_argument("--max-images", type=int, default=None, help="label only the first N samples of the split")
    add_model_args(q)
    q.set_defaults(func=functools.partial(cmd_label, build=build, label_masks=label_masks))
    return p
