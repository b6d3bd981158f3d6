"""``labelless train ...``: PixelCLIP and CLIP training, learned-prompt pictures, export.

    labelless train pixelclip --config configs/pixelclip_vitb16_sam.yaml [key=value ...]
    labelless train clip --config configs/clip_tiny_camvid.yaml [key=value ...]
    labelless train sseg --config configs/sseg_tiny_cpu.yaml [key=value ...]
    labelless train sseg-cache --config FILE --out DIR [--backbone hf:FOLDER] [key=value ...]
    labelless train selftrain --config configs/selftrain_tiny_cpu.yaml store=STORE [key=value ...]
    labelless train show-prompts --run runs/pixelclip --vocabulary ade150 --images DIR --out DIR
    labelless train export --run runs/pixelclip [--out FILE]

Several GPUs / nodes: ``torchrun --nproc_per_node N -m labelless train pixelclip ...``.
``add_train_parser(subparsers)`` registers the ``train`` command on the top-level parser
(``labelless/cli.py``); nothing here is imported until a ``train`` command runs.
"""

from __future__ import annotations

import argparse


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="flat YAML run config (configs/*.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="override config keys, e.g. max_steps=100 lr=1e-4 run_dir=runs/x")


def cmd_pixelclip(args) -> int:
    from labelless.train.config import load_config
    from labelless.train.pixelclip.config import PixelCLIPConfig
    from labelless.train.pixelclip.loop import train_pixelclip

    train_pixelclip(load_config(PixelCLIPConfig, args.config, args.overrides))
    return 0


def cmd_clip(args) -> int:
    from labelless.train.clip.config import ClipConfig
    from labelless.train.clip.loop import train_clip
    from labelless.train.config import load_config

    train_clip(load_config(ClipConfig, args.config, args.overrides))
    return 0


def cmd_sseg(args) -> int:
    from labelless.train.config import load_config
    from labelless.train.sseg.config import SSegTrainConfig
    from labelless.train.sseg.loop import train_sseg

    train_sseg(load_config(SSegTrainConfig, args.config, args.overrides))
    return 0


def cmd_selftrain(args) -> int:
    from labelless.train.config import load_config
    from labelless.train.selftrain.config import SelfTrainConfig
    from labelless.train.selftrain.loop import train_selftrain

    train_selftrain(load_config(SelfTrainConfig, args.config, args.overrides))
    return 0


def cmd_sseg_cache(args) -> int:
    import json
    import time
    from pathlib import Path

    from labelless.train.config import load_config
    from labelless.train.sseg.cache import build_cache, caption_stats, default_backbone
    from labelless.train.sseg.config import SSegTrainConfig

    cfg = load_config(SSegTrainConfig, args.config, args.overrides)
    backbone = args.backbone or default_backbone(cfg)
    t = time.time()
    path = build_cache(cfg, args.out, backbone=backbone, batch=args.batch)
    settings = {k: getattr(cfg, k) for k in ("dataset", "split", "image_size", "crops_per_image", "crop_scale_min",
                                             "crop_scale_max", "max_names", "min_class_fraction", "caption_order",
                                             "caption_template", "dino_k", "dino_cosine", "seed")}
    stats = {**caption_stats(args.out, cfg.caption_template), "seconds": round(time.time() - t, 1),
             "backbone": backbone, "settings": settings}
    (Path(args.out) / "captions.json").write_text(json.dumps(stats, indent=2) + "\n")
    print(f"{stats['crops']} crops, {stats['distinct_captions']} distinct captions, tokens of {backbone or 'none'} "
          f"({stats['seconds']} s): {path} (caption statistics: {args.out}/captions.json)")
    return 0


def cmd_sseg_show(args) -> int:
    from labelless.train.sseg.show import show_sseg

    report = show_sseg(args.run, args.images, args.vocabulary, args.out, args.dino_model, args.k, args.templates,
                       args.max_images)
    for item in report["images"]:
        labels = ", ".join(sorted({p["class"] for p in item["pairs"]}))
        print(f"{item['image']}: {item['pseudo_masks']} pseudo-masks, matched predictions labelled {labels}")
    print(f"written: {args.out}/sseg_show.json and {len(report['images'])} picture(s)")
    return 0


def cmd_show_prompts(args) -> int:
    from labelless.train.pixelclip.show_prompts import format_clusters, show_prompts

    result = show_prompts(args.run, args.vocabulary, args.out, args.images, args.templates, args.top,
                          args.max_images, args.device, args.tsne, args.tsne_perplexity, args.seed)
    print(format_clusters(result))
    tsne = f", {args.out}/prompts_tsne.png (+ .json)" if result["tsne"] else ""
    print(f"written: {args.out}/clusters.json{tsne} and {len(result['images'])} cluster map(s)")
    return 0


def cmd_export(args) -> int:
    from labelless.train.pixelclip.build import export_run

    print(f"exported {export_run(args.run, args.out)}")
    return 0


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``train`` (pixelclip | clip | sseg | sseg-cache | sseg-show | selftrain | show-prompts |
    export) on ``subparsers``."""
    p = subparsers.add_parser("train", help="train PixelCLIP, CLIP, S-Seg or a self-trained segmenter; pictures; "
                                            "export")
    sub = p.add_subparsers(dest="train_command", required=True)

    q = sub.add_parser("pixelclip", help="PixelCLIP: fine-tune CLIP with unlabeled masks")
    _config_args(q)
    q.set_defaults(func=cmd_pixelclip)

    q = sub.add_parser("clip", help="plain CLIP contrastive training from image-caption pairs")
    _config_args(q)
    q.set_defaults(func=cmd_clip)

    q = sub.add_parser("sseg", help="S-Seg: MaskFormer + DINO pseudo-masks + image-text contrastive, from scratch")
    _config_args(q)
    q.set_defaults(func=cmd_sseg)

    q = sub.add_parser("selftrain", help="self-training (S-Seg+): a closed-vocabulary segmenter on a pseudo-label "
                                         "store (labelless selftrain label)")
    _config_args(q)
    q.set_defaults(func=cmd_selftrain)

    _add_sseg_cache(sub)
    _add_sseg_show(sub)
    _add_show_prompts(sub)
    _add_export(sub)
    return p


def _add_sseg_cache(sub) -> None:
    """``train sseg-cache``."""
    q = sub.add_parser("sseg-cache", help="S-Seg: crops, frozen-ViT tokens and pseudo-masks once, for data=cache")
    _config_args(q)
    q.add_argument("--out", required=True, help="cache folder (then train with data=cache cache=FOLDER)")
    q.add_argument("--backbone", default=None,
                   help="hf:FOLDER of the frozen ViT whose tokens are cached (default: the model config's, "
                        "when it is a frozen hf: ViT; else no tokens, pseudo-masks from dino_model)")
    q.add_argument("--batch", type=int, default=16, help="crops per backbone forward")
    q.set_defaults(func=cmd_sseg_cache)


def _add_sseg_show(sub) -> None:
    """``train sseg-show``."""
    q = sub.add_parser("sseg-show", help="S-Seg: predicted masks, the pseudo-masks they match, their labels")
    q.add_argument("--run", required=True, help="an S-Seg checkpoint (RUN/model.pt)")
    q.add_argument("--images", nargs="+", required=True, help="sample images or folders")
    q.add_argument("--vocabulary", default="ade150", help="class list name, a labels file, or 'a,b|c'")
    q.add_argument("--templates", default="a photo of {}")
    q.add_argument("--dino-model", default="facebook/dino-vits8", help="DINO for the pseudo-masks (hub name or folder)")
    q.add_argument("--k", type=int, default=8, help="pseudo-masks per image (k-means clusters)")
    q.add_argument("--max-images", type=int, default=8)
    q.add_argument("--out", required=True)
    q.set_defaults(func=cmd_sseg_show)


def _add_show_prompts(sub) -> None:
    """``train show-prompts``."""
    q = sub.add_parser("show-prompts", help="nearest class names of the learned cluster prompts + cluster maps")
    q.add_argument("--run", required=True, help="PixelCLIP run folder (latest checkpoint) or a checkpoint file")
    q.add_argument("--vocabulary", default="ade150",
                   help="class list name (ade150, cocostuff171, ...), a labels file, or 'a,b|c'")
    q.add_argument("--templates", default="imagenet_select", help="prompt templates for the vocabulary")
    q.add_argument("--images", nargs="*", default=[], help="sample images or folders for the cluster maps")
    q.add_argument("--max-images", type=int, default=8)
    q.add_argument("--top", type=int, default=5, help="nearest class names per cluster")
    q.add_argument("--out", required=True, help="output folder (clusters.json, PNGs)")
    q.add_argument("--device", default="cpu")
    q.add_argument("--tsne", action=argparse.BooleanOptionalAction, default=True,
                   help="also a t-SNE map of the prompts beside the class embeddings (prompts_tsne.png / .json; "
                        "scikit-learn)")
    q.add_argument("--tsne-perplexity", type=float, default=None,
                   help="t-SNE perplexity (default: min(30, (points - 1) / 3), always below the point count)")
    q.add_argument("--seed", type=int, default=0, help="t-SNE random state")
    q.set_defaults(func=cmd_show_prompts)


def _add_export(sub) -> None:
    """``train export``."""
    q = sub.add_parser("export", help="export the student CLIP of a run's latest checkpoint")
    q.add_argument("--run", required=True, help="run folder or checkpoint file")
    q.add_argument("--out", default=None, help="output file (default: RUN/clip_step_N.pt)")
    q.set_defaults(func=cmd_export)

