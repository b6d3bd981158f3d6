"""Command line: ``labelless segment | eval | models | masks | train | selftrain | convert | compare | demo``.

Each sub-command is a plain function over parsed arguments; ``main(argv)`` returns
the exit code (0 ok; 1 it ran but nothing could be processed, e.g. every image
unreadable; 2 bad input: a ``LabellessError``, printed on one line), so tests call it
directly. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default=None,
                   help="open_clip model name, hf-hub:org/repo, local-dir:PATH, or tiny-vit / tiny-convnext "
                        "(default: told from a --pretrained file, else ViT-B-16)")
    g.add_argument("--pretrained", default="openai",
                   help="open_clip pretrained tag, a weight file (labelless, open_clip, OpenAI state dict or "
                        "TorchScript archive, official PixelCLIP .pth), or 'none' for random weights")
    g.add_argument("--mode", default="auto",
                   help="dense last-block mode: vanilla, maskclip, pixelclip, sclip, clearclip, naclip "
                        "(ViT); auto = pixelclip for ViTs, vanilla for ConvNeXts")
    g.add_argument("--cache-dir", default=None, help="where open_clip keeps downloaded weights")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (auto: cuda when present)")
    g.add_argument("--seed", type=int, default=0, help="seed of the random weights of --pretrained none")
    g = p.add_argument_group("inference")
    g.add_argument("--protocol", default="squash", choices=["squash", "slide", "whole"])
    g.add_argument("--short-side", type=int, default=None, help="resize short side first (squash 640, slide 448)")
    g.add_argument("--input-size", type=int, default=None, help="model input / window size (default: model's)")
    g.add_argument("--stride", type=int, default=None, help="slide stride (default: 2/3 of the window)")
    g.add_argument("--feature-size", type=int, default=None, help="squash: upsample features to this grid (64)")
    g.add_argument("--templates", default="imagenet_select",
                   help="single, imagenet_select, imagenet80, a file with one template per line, "
                        "or one template containing '{}'")
    g.add_argument("--synonyms", default="mean", choices=["mean", "mean_per_synonym", "max"],
                   help="how synonyms combine: mean (PixelCLIP: averaged per template), mean_per_synonym "
                        "(each synonym's template mean, then averaged), max (mmseg harness: best synonym)")
    g.add_argument("--logit-scale", type=float, default=100.0, help="softmax temperature for --bg-threshold")
    g.add_argument("--bg-threshold", type=float, default=None,
                   help="label 0 (background) where the top class probability is below this")
    g.add_argument("--batch-size", type=int, default=None,
                   help="images (squash) or windows (slide) per batch (default: 1 for squash on a CPU, else 8)")
    g.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="autocast of the image forward, CUDA and CPU (auto: bf16 on CUDA, fp32 on the CPU)")
    g.add_argument("--compile", action="store_true", help="run the image forward through torch.compile")


def _add_dataset_model_args(p: argparse.ArgumentParser) -> None:
    """The model options plus ``--workers``, for the commands that run over a dataset split (eval, selftrain label)."""
    p.add_argument("--workers", type=int, default=None,
                   help="DataLoader processes decoding images and labels while the model runs, 0: in the main "
                        "process (default: min(4, CPUs per process) on CUDA, 0 on the CPU)")
    _add_model_args(p)


def _build(args, classes: list, background: bool | None = None):
    """Scorer + vocabulary + segmenter from the parsed arguments. ``background``: whether a
    dataset's class 0 is background (eval, selftrain label: ``--bg-threshold`` then predicts
    it, and is refused when the dataset has none); None for a free vocabulary (segment: the
    threshold adds a background label 0)."""
    import torch

    from labelless.errors import SettingError
    from labelless.loader import load_scorer

    if background is False and args.bg_threshold is not None:
        raise SettingError(f"--bg-threshold labels background as class 0, but {args.dataset} has no background "
                           "class (its class 0 would be lost and every index shifted by one): leave it out")
    from labelless.segment import Protocol, Segmenter, default_batch_size

    torch.manual_seed(args.seed)  # --pretrained none: the same random model every run
    scorer = load_scorer(args.model, args.pretrained, args.mode, args.device, args.cache_dir)
    scorer.configure(args.precision, args.compile)
    if background and args.bg_threshold is not None:
        classes = classes[1:]  # class 0 is background, predicted by the threshold
    vocab = scorer.vocabulary(classes, args.templates, args.synonyms)
    protocol = Protocol(args.protocol, args.short_side, input_size=args.input_size, stride=args.stride,
                        feature_size=args.feature_size)
    batch = default_batch_size(scorer.device, protocol.name) if args.batch_size is None else args.batch_size
    return scorer, Segmenter(scorer, vocab, protocol, args.logit_scale, args.bg_threshold, batch)


def cmd_segment(args) -> int:
    from labelless.errors import ImageError, SettingError
    from labelless.io import expand_images, load_image
    from labelless.visualize import save_index_png, save_overlay
    from labelless.vocab.encode import parse_labels, read_labels_file

    if bool(args.labels) == bool(args.labels_file):
        raise SettingError("give the vocabulary with exactly one of --labels or --labels-file")
    classes = parse_labels(args.labels) if args.labels else read_labels_file(args.labels_file)
    if not classes:
        raise SettingError("the vocabulary is empty: give at least one class name")
    images = expand_images(args.images)
    if not images:
        raise SettingError("no images given")
    _, seg = _build(args, classes)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = [c[0] for c in classes]
    if args.bg_threshold is not None:  # label 0 is the threshold's background, the words are 1..K
        names = ["background"] + names
    (out / "labels.txt").write_text("".join(f"{i} {n}\n" for i, n in enumerate(names)))
    done = skipped = 0
    for path in images:
        try:
            image = load_image(path)
        except ImageError as e:
            print(f"skipped: {e}", file=sys.stderr)
            skipped += 1
            continue
        (pred,) = seg.predict([image])
        idx = save_index_png(pred, out / f"{path.stem}.png", len(names))
        ovl = save_overlay(image, pred, names, out / f"{path.stem}_overlay.png")
        print(f"{path}: labels {idx}, overlay {ovl}")
        done += 1
    print(f"{done} image(s) segmented, {skipped} skipped; class indices in {out / 'labels.txt'}")
    return 0 if done else 1


def cmd_eval(args) -> int:
    """Score on a benchmark; under torchrun every rank scores its share and rank 0 writes the report."""
    from labelless.data.benchmarks import load_benchmark
    from labelless.distributed import barrier, process_group
    from labelless.errors import DatasetError
    from labelless.evaluate import format_table, write_report
    from labelless.scoring import score_benchmark

    bench = load_benchmark(args.dataset, args.data_root, args.split, args.layout)
    if len(bench.samples) == 0:
        raise DatasetError(f"{args.dataset} split {args.split!r} under {args.data_root} has no samples")
    with process_group(args.device) as info:  # WORLD_SIZE > 1 (torchrun): join the process group
        args = argparse.Namespace(**{**vars(args), "device": str(info.device)})  # cuda:LOCAL_RANK per process
        scorer, seg = _build(args, bench.classes, bench.background)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        results = score_benchmark(seg, bench, out, args.save_predictions, args.limit, workers=args.workers)
        results.update(
            dataset=bench.name, split=args.split, data_root=str(args.data_root), **scorer.info(),
            protocol=vars(seg.protocol), templates=args.templates, synonyms=args.synonyms,
            bg_threshold=args.bg_threshold, device=str(seg.device))
        if info.is_main:
            title = f"{bench.name} {args.split}: {results['model']} ({results['mode']})"
            paths = write_report(results, out, title=title)
            print(format_table(results))
            print(f"results: {paths['json']}  table: {paths['markdown']}  plot: {paths['plot']}")
        barrier()  # the report is there when any rank returns
    return 0 if results["num_images"] else 1


def cmd_models(args) -> int:
    from labelless.models.clip import list_models

    rows = list_models()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print("Dense modes: ViT: vanilla maskclip pixelclip sclip clearclip naclip; ConvNeXt: vanilla")
    print("Tags marked * were trained with QuickGELU; labelless builds them with it.")
    print(f"{'model':40s} {'modes':6s} pretrained tags")
    for r in rows:
        kind = "vit" if len(r["modes"]) > 1 else "convnext"
        tags = [t + ("*" if t in r["quick_gelu_tags"] else "") for t in r["tags"]]
        print(f"{r['name']:40s} {kind:6s} {', '.join(tags) or '(none: random or a checkpoint file)'}")
    print("S-Seg (mask classification, open vocabulary): model configs sseg-paper, sseg-tiny; train with "
          "`labelless train sseg`, then segment/eval with --pretrained RUN/model.pt (no --model, no --mode).")
    print("Self-trained segmenters (closed vocabulary: only the class names of the dataset they were trained for; "
          "backbone timm:<name> / hf:<DINO> / tiny, head upernet | fpn | linear): `labelless selftrain label`, "
          "then `labelless train selftrain`; segment/eval with --pretrained RUN/model.pt.")
    print("Also: hf-hub:org/repo and local-dir:PATH model names, and --pretrained /path/to/checkpoint "
          "(OpenAI-format files and PixelCLIP ViTs: QuickGELU; labelless checkpoints: as recorded).")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="labelless", description="Open-vocabulary semantic segmentation trained without semantic labels.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("segment", help="segment images with any words")
    p.add_argument("images", nargs="+", help="image files or folders of images")
    p.add_argument("--labels", help='comma-separated classes, synonyms with "|": "sky,road|street,car"')
    p.add_argument("--labels-file", help="one class per line, synonyms separated by ', '")
    p.add_argument("--out", required=True, help="output folder")
    _add_model_args(p)
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("eval", help="score on a benchmark (mIoU, pAcc, mAcc, fwIoU, per class)")
    p.add_argument("--dataset", required=True,
                   help="ade150, ade847, voc20, voc21, pc59, pc60, pc459, cocostuff171, cocoobject, "
                        "cityscapes, camvid, folder")
    p.add_argument("--data-root", required=True, help="folder holding the dataset (or the dataset folder)")
    p.add_argument("--split", default="val")
    p.add_argument("--layout", default="auto", choices=["auto", "detectron2", "mmseg"])
    p.add_argument("--out", required=True, help="output folder for results.json, results.md, the plot")
    p.add_argument("--save-predictions", action="store_true", help="write an index PNG per image")
    p.add_argument("--limit", type=int, default=None, help="score only the first N images")
    _add_dataset_model_args(p)
    p.set_defaults(func=cmd_eval)
    eval_parser = p

    p = sub.add_parser("models", help="list models, pretrained tags and dense modes")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    # the sub-command modules import their heavy dependencies only when a command runs
    from labelless.compare.cli import add_compare_parser
    from labelless.demo import add_demo_parser
    from labelless.masks.cli import add_masks_parser
    from labelless.selftrain.cli import add_selftrain_parser
    from labelless.train.cli import add_train_parser

    add_masks_parser(sub)
    add_train_parser(sub)
    add_selftrain_parser(sub, _add_dataset_model_args, _build)
    _add_convert_parser(sub)
    add_compare_parser(sub, eval_parser)  # cells are parsed by eval's parser and run by its func
    add_demo_parser(sub, _add_model_args)  # gradio is imported when the demo runs
    return parser


def _add_convert_parser(sub) -> None:
    p = sub.add_parser("convert", help="convert foreign checkpoints to labelless CLIP checkpoints")
    fmt = p.add_subparsers(dest="format", required=True)
    q = fmt.add_parser("pixelclip", help="official PixelCLIP weights (hsshin98/PixelCLIP *.pth)")
    q.add_argument("src", help="official checkpoint, e.g. pixelclip_vit_base.pth")
    q.add_argument("dst", help="labelless CLIP checkpoint to write")
    q.add_argument("--model", default=None, help="open_clip model name (default: told from the weights)")
    q.add_argument("--teacher", action="store_true", help="take the EMA image encoder instead of the student")
    q.add_argument("--trust", action="store_true", help="load with full pickle (only for files you trust)")
    q.set_defaults(func=cmd_convert)


def cmd_convert(args) -> int:
    from labelless.models.convert import convert_pixelclip

    out = convert_pixelclip(args.src, args.dst, args.model, "teacher" if args.teacher else "student", args.trust)
    print(f"wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run one command. Bad input (a ``LabellessError``: a file, setting or dataset the user
    gave) prints one line and returns 2; any other exception is a bug and propagates with
    its traceback."""
    from labelless.errors import LabellessError, one_line

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except LabellessError as e:
        print(f"labelless {args.command}: error: {one_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
