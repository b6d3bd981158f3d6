"""``labelless train selftrain``: a closed-vocabulary segmenter trained on pseudo-labels, top
to bottom (S-Seg+'s second stage, for the labels of any labelless model).

    labelless selftrain label --dataset voc20 ... --pretrained sseg.pt --out stores/voc_sseg
    torchrun --nproc_per_node 8 -m labelless train selftrain --config configs/selftrain_voc.yaml

1. the run (``train/run.py``): processes, run folder + config.yaml, TensorBoard, seeds;
2. the label store's classes and ignore value (``store.json``) → the segmenter
   (``models/segmenter.py``: backbone + UperNet / FPN / linear head) over those classes;
3. AdamW, backbone lr × ``backbone_lr_mult``, no weight decay on norms and biases; poly
   (mmseg) or cosine schedule with linear warmup; resume from the latest checkpoint;
4. data: the split's images (never its labels) with the store's pseudo-labels, scale
   jitter, crop, flip, colour (``selftrain/data.py``);
5. per step: logits upsampled to the crop, cross-entropy with the store's ignore value,
   averaged over the labelled pixels of the step (micro-batches weighted by their pixel
   counts, so ``grad_accum`` gives the big batch's loss); grad clip, optimizer, scheduler;
6. at the end the segmenter is exported (``run_dir/model.pt``, format
   ``labelless-segmenter``): ``labelless segment`` / ``eval --pretrained run_dir/model.pt``
   score it with the dataset's class names (its closed vocabulary).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from labelless.distributed import all_reduce_mean, is_distributed
from labelless.train.common import autocast, empty_batch_limit, lr_factor, next_nonempty
from labelless.train.config import config_dict
from labelless.train.run import Run
from labelless.train.selftrain.config import SelfTrainConfig
from labelless.train.selftrain.data import PseudoLabelDataset, build_loader, poly_factor


def store_items(cfg: SelfTrainConfig, meta: dict) -> list[tuple[str, str]]:
    """``(image path, name)`` of the split's samples that the store (``meta``: its
    store.json) has pseudo-labels for (the split's own labels are never read); DatasetError
    when there are none or the store is of another dataset or split."""
    from labelless.data.benchmarks import load_benchmark
    from labelless.errors import DatasetError
    from labelless.selftrain.store import store_samples

    if (meta.get("dataset"), meta.get("split")) != (cfg.dataset, cfg.split):
        raise DatasetError(f"{cfg.store} holds pseudo-labels of {meta.get('dataset')} {meta.get('split')}, "
                           f"the config trains on {cfg.dataset} {cfg.split}")
    if not meta.get("complete", True):
        warnings.warn(f"{cfg.store} is not complete (its labelling stopped early): training on the images it has",
                      stacklevel=2)
    bench = load_benchmark(cfg.dataset, cfg.data_root, cfg.split, meta.get("layout", "auto"))
    labelled = {str(image) for image, _, _ in store_samples(cfg.store, bench.samples)}
    items = [(str(s.image), s.name) for s in bench.samples if str(s.image) in labelled]
    if not items:
        raise DatasetError(f"{cfg.store} holds no pseudo-label of the {len(bench.samples)} images of {cfg.dataset} "
                           f"{cfg.split} at {cfg.data_root} (make them with labelless selftrain label)")
    return items


def build_model(cfg: SelfTrainConfig, classes: list[str], device):
    from labelless.models.segmenter import SegmenterConfig, SemanticSegmenter

    mc = SegmenterConfig(classes=list(classes), backbone=cfg.backbone, backbone_options=dict(cfg.backbone_options),
                         pretrained=cfg.pretrained, weights=cfg.weights, freeze_backbone=cfg.freeze_backbone,
                         head=cfg.head, channels=cfg.channels,
                         norm=cfg.norm, dropout=cfg.dropout, image_size=cfg.crop_size)
    return SemanticSegmenter(mc).to(device)


def param_groups(model, cfg: SelfTrainConfig) -> list[dict]:
    """Pretrained part / the rest × decay / no decay. The pretrained part (a timm model, a
    DINO ViT; none for ``tiny`` or random weights) gets lr × ``backbone_lr_mult``; a ViT neck
    or pyramid is new and gets the full lr (as BEiT / MAE). No decay on 1-d parameters
    (norms, biases) and position embeddings / class tokens. The head's groups come first."""
    pretrained = cfg.pretrained or cfg.weights or cfg.backbone.startswith("hf:")
    part = getattr(model.backbone, "pretrained_part", None) if pretrained else None
    backbone_ids = {id(p) for p in part.parameters()} if part is not None else set()
    groups: dict = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = not (p.ndim < 2 or "pos_embed" in name or "cls_token" in name or "position" in name)
        groups.setdefault((id(p) in backbone_ids, decay), []).append(p)
    return [{"params": ps, "lr": cfg.lr * (cfg.backbone_lr_mult if is_bb else 1.0),
             "weight_decay": cfg.weight_decay if decay else 0.0}
            for (is_bb, decay), ps in sorted(groups.items(), key=lambda kv: kv[0][0])]


def scheduler_for(optimizer, cfg: SelfTrainConfig):
    if cfg.schedule == "poly":
        f = lambda s: poly_factor(s, cfg.max_steps, cfg.warmup_steps, cfg.poly_power, cfg.lr_end)  # noqa: E731
    else:
        f = lambda s: lr_factor(s, cfg.max_steps, cfg.warmup_steps, cfg.lr_end)  # noqa: E731
    return torch.optim.lr_scheduler.LambdaLR(optimizer, f)


def pixel_ce(logits: torch.Tensor, labels: torch.Tensor, ignore: int, total: float) -> torch.Tensor:
    """Cross-entropy of ``B×C×h×w`` logits (bilinearly upsampled to the labels) against
    ``B×H×W`` labels, summed over the labelled pixels and divided by ``total`` (the step's
    labelled pixel count): micro-batches add up to the big batch's mean."""
    logits = F.interpolate(logits.float(), size=labels.shape[-2:], mode="bilinear", align_corners=False)
    return F.cross_entropy(logits, labels, ignore_index=ignore, reduction="sum") / max(total, 1.0)


def step_pixels(micro: list[dict], ignore: int, device) -> float:
    """Labelled pixels of the step, averaged over ranks (DDP averages the gradients)."""
    n = torch.tensor(float(sum(int((mb["label"] != ignore).sum()) for mb in micro)), device=device)
    return float(all_reduce_mean(n)) if is_distributed() else float(n)


def train_selftrain(cfg: SelfTrainConfig, on_step=None) -> Path | None:
    """Train (or resume) a segmenter on ``cfg.store``; returns the exported checkpoint (None
    when stopped early by ``exit_at``). ``on_step(step, model, scalars)`` after every step."""
    from labelless.models.segmenter import save_segmenter
    from labelless.selftrain.store import read_store

    run = Run(cfg, "selftrain")
    device = run.device
    meta = read_store(cfg.store)
    ignore = int(meta["ignore_index"])
    model = build_model(cfg, meta["classes"], device).train()
    if run.distributed and cfg.sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ddp = run.wrap(model)
    optimizer = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr)
    scheduler = scheduler_for(optimizer, cfg)
    step = run.resume(model, optimizer, scheduler)
    dataset = PseudoLabelDataset(store_items(cfg, meta), cfg.store,
                                 cfg.crop_size, cfg.base_size, (cfg.scale_min, cfg.scale_max), cfg.hflip,
                                 cfg.color_jitter, cfg.hue_jitter, cfg.min_confidence, ignore)
    batches = iter(build_loader(dataset, cfg.seed, cfg.num_workers, run.info.rank, run.info.world_size,
                                run.micro_batch, run.samples_before(step), run.pin_memory))
    empty_limit, skipped = empty_batch_limit(batches), [0]
    export = lambda path: save_segmenter(model, path, step=step, run_config=config_dict(cfg))  # noqa: E731
    run.start(step)
    while step < run.stop:
        micro = [next_nonempty(batches, skipped, empty_limit) for _ in range(cfg.grad_accum)]
        total = step_pixels(micro, ignore, device)
        optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=device)
        for mb, sync in zip(micro, run.micro_steps(ddp)):
            with sync:  # forward and backward under the same no_sync (all but the last micro-batch)
                with autocast(device, cfg.amp):
                    logits = ddp(model.normalize(mb["image"].to(device, non_blocking=True)))
                loss = pixel_ce(logits, mb["label"].to(device, non_blocking=True), ignore, total)
                loss.backward()
            loss_sum += loss.detach()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or math.inf)
        optimizer.step()
        scheduler.step()
        step += 1
        scalars = None
        if run.log_due(step):
            value = all_reduce_mean(loss_sum).item()
            scalars = run.log(step, {"loss": value, "lr": scheduler.get_last_lr()[0],  # the head's group (first)
                                     "grad_norm": float(grad_norm), "labelled_pixels": total,
                                     "skipped_images": skipped[0]}, {"ce": f"{value:.3f}"})
        run.end_step(step, model, optimizer, scheduler, export=export)
        if on_step is not None:
            on_step(step, model, scalars)
    del ddp  # the DDP wrapper goes before the process group (run.finish)
    return run.finish(step, export)
