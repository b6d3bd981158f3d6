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
                   help="open_clip model name, hf-hub:org/repo, local-dir:PATH, or tiny-vit / tiny-convnext / "
                        "tiny-timm-vit (default: told from a --pretrained file, else ViT-B-16)")
    g.add_argument("--pretrained", default="openai",
                   help="open_clip pretrained tag, a weight file (labelless, open_clip, OpenAI state dict or "
                        "TorchScript archive, official PixelCLIP .pth), or 'none' for random weights")
    g.add_argument("--mode", default="auto",
                   help="dense last-block mode: vanilla, maskclip, pixelclip, sclip, clearclip, naclip, "
                        "proxyclip (with --vfm) (ViT, timm ViT); auto = pixelclip where the tower has it "
                        "(open_clip ViTs, timm ViTs with a class token), else vanilla")
    _add_preset_args(p)
    g.add_argument("--cache-dir", default=None, help="where open_clip keeps downloaded weights")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (auto: cuda when present)")
    g.add_argument("--seed", type=int, default=0, help="seed of the random weights of --pretrained none")
    _add_proxy_args(p)
    g = p.add_argument_group("inference")
    g.add_argument("--protocol", default=None, choices=["squash", "slide", "whole"], help="(default: squash)")
    g.add_argument("--short-side", type=int, default=None, help="resize short side first (squash 640, slide 448)")
    g.add_argument("--input-size", type=int, default=None, help="model input / window size (default: model's)")
    g.add_argument("--stride", type=int, default=None, help="slide stride (default: 2/3 of the window)")
    g.add_argument("--feature-size", type=int, default=None, help="squash: upsample features to this grid (64)")
    g.add_argument("--templates", default=None,
                   help="single, imagenet_select (default), imagenet80, a file with one template per line, "
                        "or one template containing '{}'")
    g.add_argument("--synonyms", default=None, choices=["mean", "mean_per_synonym", "max", "max_prob"],
                   help="how synonyms combine: mean (default; PixelCLIP: averaged per template), mean_per_synonym "
                        "(each synonym's template mean, then averaged), max (best synonym per location), max_prob "
                        "(the mmseg harness: best synonym's probability under a softmax over every synonym)")
    g.add_argument("--logit-scale", type=float, default=None,
                   help="softmax temperature for --bg-threshold (default: 100)")
    g.add_argument("--bg-threshold", type=_float_or_off, default=None,
                   help="label 0 (background) where the top class probability is below this ('none': off)")
    g.add_argument("--batch-size", type=int, default=None,
                   help="images (squash) or windows (slide) per batch (default: 1 for squash on a CPU, else 8)")
    g.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="autocast of the image forward, CUDA and CPU (auto: bf16 on CUDA, fp32 on the CPU)")
    g.add_argument("--compile", action="store_true", help="run the image forward through torch.compile")


def _float_or_off(text: str):
    """A threshold value, or ``none`` (switch a preset's threshold off)."""
    from labelless.presets import OFF

    return OFF if text.strip().lower() == OFF else float(text)


def _add_preset_args(p: argparse.ArgumentParser) -> None:
    """``--preset`` and the settings only presets needed so far (all resolved by ``labelless.presets``)."""
    from labelless.presets import PRESETS

    g = p.add_argument_group("harness preset", "every inference setting of a published evaluation harness, per "
                                               "dataset (labelless/presets.py); options given explicitly win")
    g.add_argument("--preset", default=None, choices=list(PRESETS),
                   help="mmseg (SCLIP's mmsegmentation harness, shared by the training-free CLIP methods), "
                        "mmseg-naclip / mmseg-clearclip / mmseg-proxyclip (each paper's own values), "
                        "pixelclip (PixelCLIP's squash set-up)")
    g.add_argument("--max-long-side", type=int, default=None, help="cap of the long side after the short-side "
                                                                   "resize (default 2560; mmseg 2048)")
    g.add_argument("--antialias", action=argparse.BooleanOptionalAction, default=None,
                   help="antialiased short-side resize (default on; the mmseg harness: off, OpenCV bilinear)")
    g.add_argument("--area-threshold", type=_float_or_off, default=None,
                   help="SCLIP's area threshold: classes with at most this share of the non-background argmax "
                        "pixels lose their pixels ('none': off)")


def _add_proxy_args(p: argparse.ArgumentParser) -> None:
    """The vision foundation model of ``--mode proxyclip`` (``labelless/models/proxyclip.py``)."""
    g = p.add_argument_group("proxyclip (--mode proxyclip only)")
    g.add_argument("--vfm", default=None,
                   help="DINO / DINOv2 Hugging Face name or local save_pretrained folder whose patch similarity "
                        "is the attention of CLIP's last block (default: facebook/dino-vitb8, the paper's)")
    g.add_argument("--proxy-beta", type=float, default=None,
                   help="beta: similarities below beta x their mean are masked (default 1.2)")
    g.add_argument("--proxy-gamma", type=float, default=None,
                   help="gamma: the softmax's inverse temperature on the shifted similarities (default 3.0)")


def _add_dataset_model_args(p: argparse.ArgumentParser) -> None:
    """The model options plus ``--workers``, for the commands that run over a dataset split (eval, selftrain label)."""
    p.add_argument("--workers", type=int, default=None,
                   help="DataLoader processes decoding images and labels while the model runs, 0: in the main "
                        "process (default: min(4, CPUs per process) on CUDA, 0 on the CPU)")
    _add_model_args(p)
    g = p.add_argument_group("dataset vocabulary")
    g.add_argument("--class-names", default=None,
                   help="the words of the dataset's classes: a packaged list (e.g. mmseg/voc21) or a file, one "
                        "class per line in the dataset's order, synonyms ', ' (default: the dataset's list)")
    g.add_argument("--score-background", action=argparse.BooleanOptionalAction, default=None,
                   help="with --bg-threshold: class 0 is also scored by its names (the mmseg harness) instead of "
                        "being only the threshold's label (default off)")


def _resolve_settings(args, scorer) -> dict:
    """The resolved inference settings (``labelless.presets.resolve``), written back into
    ``args`` (its ``SETTINGS`` attributes, and ``args.settings``) for what reads them later."""
    from labelless.presets import SETTINGS, explicit_settings, resolve

    kind = getattr(getattr(scorer, "model", None), "kind", None)
    settings = resolve(args.preset, getattr(args, "dataset", None), explicit_settings(args), kind)
    for key in SETTINGS:
        setattr(args, key, settings[key])
    args.settings = settings
    return settings


def _add_refine_args(p: argparse.ArgumentParser) -> None:
    """``--refine masks|pamr`` and its settings (segment, eval; ``labelless/refine.py``)."""
    g = p.add_argument_group("refinement (scores refined at the image's size before labelling)")
    g.add_argument("--refine", default=None, choices=["masks", "pamr"],
                   help="masks: class scores averaged inside each image's --masks; pamr: pixel-adaptive mask "
                        "refinement (SCLIP / NACLIP settings)")
    g.add_argument("--masks", default=None,
                   help="--refine masks: gt (the benchmark's ground-truth segments: zero-shot mask classification, "
                        "eval only), a masks generate source computed per image (dino, sam, felzenszwalb, slic, "
                        "rgb-kmeans), or a mask store folder (records by image name)")
    g.add_argument("--mask-options", default=None,
                   help="the computed source's parameters as in masks generate, KEY=VALUE,... (dino: "
                        "model=PATH,k=8,size=448,features=tokens; sam: checkpoint=PATH,model_type=vit_b,...)")
    g.add_argument("--mask-overlap", default=None, choices=["mean", "smallest"],
                   help="a pixel in several masks takes the mean of their means (default) or its smallest mask's")
    g.add_argument("--pamr-iterations", type=int, default=None, help="PAMR iterations (10)")
    g.add_argument("--pamr-dilations", default=None, help="PAMR dilations, comma-separated (8,16)")


def _refinement(args):
    """``(refine for the Segmenter, mask spec, mask options)`` from the refinement options;
    SettingError for options that do not go together."""
    from labelless.errors import SettingError
    from labelless.masks.per_image import parse_mask_options
    from labelless.refine import MaskRefinement, PAMRRefinement

    method = getattr(args, "refine", None)
    mask_opts = [o for o in ("masks", "mask_options", "mask_overlap") if getattr(args, o, None) is not None]
    pamr_opts = [o for o in ("pamr_iterations", "pamr_dilations") if getattr(args, o, None) is not None]
    stray = [o for o in mask_opts if method != "masks"] + [o for o in pamr_opts if method != "pamr"]
    if stray:
        flags = ", ".join("--" + o.replace("_", "-") for o in stray)
        raise SettingError(f"{flags} {'go' if len(stray) > 1 else 'goes'} only with --refine "
                           f"{'masks' if stray[0] in mask_opts else 'pamr'}")
    if method == "masks":
        if args.masks is None:
            raise SettingError("--refine masks needs --masks (gt, dino, sam, felzenszwalb, slic, rgb-kmeans or a "
                               "mask store folder)")
        return MaskRefinement(args.mask_overlap or "mean"), args.masks, parse_mask_options(args.mask_options)
    if method == "pamr":
        try:
            dilations = tuple(int(d) for d in (args.pamr_dilations or "8,16").split(","))
        except ValueError:
            raise SettingError(f"--pamr-dilations {args.pamr_dilations!r}: give integers, e.g. 8,16") from None
        return PAMRRefinement(10 if args.pamr_iterations is None else args.pamr_iterations, dilations), None, {}
    return None, None, {}


def _add_label_args(p: argparse.ArgumentParser) -> None:
    """``selftrain label``'s model, inference and refinement options (those of eval)."""
    _add_dataset_model_args(p)
    _add_refine_args(p)


def _label_masks(args, seg, ignore_index: int):
    """``selftrain label``: the mask source of ``--refine masks`` (None otherwise) and what
    store.json records of the refinement."""
    from labelless.masks.per_image import build_mask_source

    _, spec, options = _refinement(args)
    masks = None if spec is None else build_mask_source(spec, options, seg.device, ignore_index)
    return masks, _refine_info(seg, masks)


def _refine_info(seg, masks) -> dict | None:
    """What results.json records of the refinement (None: none)."""
    if seg.refine is None:
        return None
    return {**seg.refine.info(), **({"masks": masks.info()} if masks is not None else {})}


def _build(args, classes: list, background: bool | None = None):
    """Scorer + vocabulary + segmenter from the parsed arguments. ``background``: whether a
    dataset's class 0 is background (eval, selftrain label: ``--bg-threshold`` then predicts
    it, and is refused when the dataset has none); None for a free vocabulary (segment: the
    threshold adds a background label 0)."""
    import torch

    from labelless.errors import SettingError
    from labelless.loader import load_scorer

    if background is False and args.bg_threshold not in (None, "none"):
        raise SettingError(f"--bg-threshold labels background as class 0, but {args.dataset} has no background "
                           "class (its class 0 would be lost and every index shifted by one): leave it out")
    if background is None and getattr(args, "score_background", None):
        raise SettingError("--score-background scores a dataset's class 0 (background) by its names: it needs a "
                           "dataset with a background class (eval, selftrain label)")
    from labelless.presets import load_class_names, protocol_of
    from labelless.segment import Segmenter, default_batch_size

    refine, _, _ = _refinement(args)  # bad refinement options fail before the model loads
    torch.manual_seed(args.seed)  # --pretrained none: the same random model every run
    scorer = load_scorer(args.model, args.pretrained, args.mode, args.device, args.cache_dir,
                         vfm=args.vfm, proxy_beta=args.proxy_beta, proxy_gamma=args.proxy_gamma)
    scorer.configure(args.precision, args.compile)
    settings = _resolve_settings(args, scorer)
    if background is not None and settings["class_names"] is not None:
        classes, settings["class_names_file"] = load_class_names(settings["class_names"], len(classes))
    named = bool(background and settings["score_background"])
    if background and args.bg_threshold is not None and not named:
        classes = classes[1:]  # class 0 is background, predicted by the threshold only
    vocab = scorer.vocabulary(classes, args.templates, args.synonyms)
    protocol = protocol_of(settings)
    batch = default_batch_size(scorer.device, protocol.name) if args.batch_size is None else args.batch_size
    return scorer, Segmenter(scorer, vocab, protocol, args.logit_scale, args.bg_threshold, batch,
                             named_background=named, area_threshold=args.area_threshold, refine=refine)


def cmd_segment(args) -> int:
    from labelless.errors import ImageError, SettingError
    from labelless.io import expand_images, load_image
    from labelless.masks.per_image import build_mask_source
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
    _, spec, options = _refinement(args)
    if spec == "gt":
        raise SettingError("--masks gt takes a benchmark's ground-truth segments: use it with eval")
    _, seg = _build(args, classes)
    masks = None if spec is None else build_mask_source(spec, options, seg.device)
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
        (pred,) = seg.predict([image], None if masks is None else masks([image], [path.stem], None))
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
    from labelless.masks.per_image import build_mask_source
    from labelless.scoring import score_benchmark

    bench = load_benchmark(args.dataset, args.data_root, args.split, args.layout)
    if len(bench.samples) == 0:
        raise DatasetError(f"{args.dataset} split {args.split!r} under {args.data_root} has no samples")
    with process_group(args.device) as info:  # WORLD_SIZE > 1 (torchrun): join the process group
        args = argparse.Namespace(**{**vars(args), "device": str(info.device)})  # cuda:LOCAL_RANK per process
        scorer, seg = _build(args, bench.classes, bench.background)
        _, spec, options = _refinement(args)
        masks = None if spec is None else build_mask_source(spec, options, seg.device, bench.ignore_index)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        results = score_benchmark(seg, bench, out, args.save_predictions, args.limit, workers=args.workers,
                                  masks=masks)
        results.update(
            dataset=bench.name, split=args.split, data_root=str(args.data_root), **scorer.info(),
            **settings_record(args.settings, seg), device=str(seg.device), refine=_refine_info(seg, masks))
        if info.is_main:
            title = f"{bench.name} {args.split}: {results['model']} ({results['mode']})"
            paths = write_report(results, out, title=title)
            print(format_table(results))
            print(f"results: {paths['json']}  table: {paths['markdown']}  plot: {paths['plot']}")
        barrier()  # the report is there when any rank returns
    return 0 if results["num_images"] else 1


def settings_record(settings: dict, seg) -> dict:
    """What results.json says about how a number was made: the preset and every resolved
    inference setting (the protocol as the segmenter resolved it, the template strings,
    the class-name file read)."""
    from labelless.vocab.templates import get_templates

    return {
        "preset": settings["preset"], "preset_entry": settings["preset_entry"],
        "preset_source": settings["preset_source"], "protocol": vars(seg.protocol),
        "templates": settings["templates"], "template_list": list(get_templates(settings["templates"])),
        "synonyms": settings["synonyms"], "logit_scale": settings["logit_scale"],
        "bg_threshold": settings["bg_threshold"], "score_background": seg.named_background,
        "area_threshold": settings["area_threshold"], "class_names": settings["class_names"],
        "class_names_file": settings.get("class_names_file"), "batch_size": seg.batch_size,
    }


def cmd_models(args) -> int:
    from labelless.models.clip import list_models

    rows = list_models()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print("Dense modes: ViT: vanilla maskclip pixelclip sclip clearclip naclip proxyclip; ConvNeXt: vanilla; "
          "timm-vit (timm ViT / EVA towers: SigLIP, EVA02, PE-Core): the ViT modes, pixelclip only where the "
          "tower has a class token (EVA02, PE-Core B/L; not SigLIP)")
    print("proxyclip (ProxyCLIP, ECCV 2024): a DINO / DINOv2 model's patch similarity is the attention of CLIP's "
          "last block: --mode proxyclip --vfm NAME_OR_FOLDER (default facebook/dino-vitb8) --proxy-beta 1.2 "
          "--proxy-gamma 3.0.")
    print("Tags marked * were trained with QuickGELU; labelless builds them with it.")
    print(f"{'model':40s} {'modes':8s} pretrained tags")
    for r in rows:
        tags = [t + ("*" if t in r["quick_gelu_tags"] else "") for t in r["tags"]]
        print(f"{r['name']:40s} {r['kind']:8s} {', '.join(tags) or '(none: random or a checkpoint file)'}")
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
    _add_refine_args(p)
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
    _add_refine_args(p)
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
    add_selftrain_parser(sub, _add_label_args, _build, _label_masks)
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
