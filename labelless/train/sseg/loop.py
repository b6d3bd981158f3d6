"""``labelless train sseg``: the S-Seg training loop, top to bottom.

    torchrun --nproc_per_node 8 -m labelless train sseg --config configs/sseg_paper.yaml

1. the run (``train/run.py``): processes, run folder + config.yaml, TensorBoard, seeds;
2. the model (``models/sseg.py``: MaskFormer without class head + text encoder from
   scratch, learnable temperature), in DDP when there are several processes;
3. AdamW (no weight decay on norms, biases, embeddings and the temperature), cosine
   schedule with warmup; resume from the run folder's latest checkpoint;
4. data: image-text pairs (shards, captions file or captioned crops) at the training side;
5. per step: the pseudo-masks of every micro-batch (DINO k-means online, or the mask store),
   then ``losses.contrastive_accumulation``: the InfoNCE of the whole step's pairs
   (negatives gathered over ranks and micro-batches, GradCache style: the big batch's
   loss) plus each micro-batch's matched mask loss normalised by the step's pseudo-mask
   count (so the sum is the big batch's); total = mask_weight · mask + contrastive_weight ·
   InfoNCE; grad clip, optimizer and scheduler step; scalars; checkpoints;
6. at the end: the model exported as a labelless S-Seg checkpoint (``run_dir/model.pt``),
   which ``labelless segment`` / ``eval --pretrained run_dir/model.pt`` use.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from labelless.distributed import all_reduce_mean, get_world_size, is_distributed
from labelless.train.common import autocast, cosine_scheduler, empty_batch_limit, next_nonempty
from labelless.train.config import config_dict
from labelless.train.losses import contrastive_accumulation
from labelless.train.run import Run
from labelless.train.sseg.cache import cached_tokens_usable
from labelless.train.sseg.config import SSegTrainConfig
from labelless.train.sseg.criterion import mask_loss, resize_targets
from labelless.train.sseg.data import PseudoMasks, build_loader


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on 1-d parameters (norms, biases, the temperature) and embeddings."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exclude = p.ndim < 2 or "embed" in name or "positional" in name or name.endswith("log_scale")
        (no_decay if exclude else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_model(cfg: SSegTrainConfig, device):
    from labelless.models.sseg import build_sseg, load_sseg

    model = build_sseg(cfg.model, device)
    if cfg.init:
        model.load_state_dict(load_sseg(cfg.init).state_dict())
    return model


def step_mask_count(micro: list[dict]) -> float:
    """Pseudo-masks of the step on this rank, averaged over ranks (MaskFormer's ``num_masks``), ≥ 1."""
    n = torch.tensor(float(sum(int(mb["valid"].sum()) for mb in micro)))
    if is_distributed():
        import torch.distributed as dist

        n = n.to(torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else "cpu")
        dist.all_reduce(n)
        n = n / get_world_size()
    return max(float(n), 1.0)


def loss_weights(cfg: SSegTrainConfig) -> dict:
    """``criterion.mask_loss``'s weights from the config."""
    return dict(dice_weight=cfg.dice_weight, focal_weight=cfg.focal_weight, match_dice=cfg.match_dice_weight,
                match_focal=cfg.match_focal_weight, alpha=cfg.focal_alpha, gamma=cfg.focal_gamma)


def attach_pseudo_masks(micro: list[dict], pseudo: PseudoMasks) -> None:
    """Every micro-batch's ``masks`` / ``valid`` from one batched k-means call for the whole step
    (an image's masks are those it would get alone: ``masks.kmeans``)."""
    masks, valid = pseudo(torch.cat([mb["image"] for mb in micro]))
    sizes = [len(mb["caption"]) for mb in micro]
    for mb, m, v in zip(micro, masks.split(sizes), valid.split(sizes)):
        mb["masks"], mb["valid"] = m, v


def step_scalars(cfg: SSegTrainConfig, losses: dict, micro: list[dict], count: float, model, lr: float,
                 grad_norm, skipped: int, device) -> tuple[dict, dict]:
    """The step's scalars (losses averaged over ranks: collectives) and tqdm's short form."""
    mask = all_reduce_mean(losses["extra"].to(device)).item() / cfg.mask_weight if cfg.mask_weight else 0.0
    contrastive = all_reduce_mean(losses["contrastive"]).item()
    scalars = {"loss": cfg.mask_weight * mask + cfg.contrastive_weight * contrastive,
               "mask_loss": mask, "contrastive_loss": contrastive,
               "dice": float(micro[-1]["stats"]["dice"]), "focal": float(micro[-1]["stats"]["focal"]),
               "pseudo_masks": count, "logit_scale": model.logit_scale, "lr": lr, "grad_norm": float(grad_norm),
               "skipped_images": skipped}
    return scalars, {"mask": f"{mask:.3f}", "nce": f"{contrastive:.3f}"}


def train_sseg(cfg: SSegTrainConfig, on_step=None) -> Path | None:
    """Train (or resume) S-Seg as ``cfg`` says; returns the exported checkpoint (None when
    stopped early by ``exit_at``). ``on_step(step, model, scalars)`` after every step."""
    from labelless.data.pairs import caption_id
    from labelless.models.sseg import save_sseg

    run = Run(cfg, "sseg")
    device = run.device
    model = build_model(cfg, device).train()
    ddp = run.wrap(model)
    size = cfg.image_size or model.cfg.image_size
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    scheduler = cosine_scheduler(optimizer, cfg.max_steps, cfg.warmup_steps, cfg.lr_end)
    step = run.resume(model, optimizer, scheduler)
    batches = iter(build_loader(cfg, size, run.info.rank, run.info.world_size, run.micro_batch,
                                run.samples_before(step), run.pin_memory))
    pseudo = PseudoMasks(cfg, device) if cfg.masks == "dino" and cfg.data != "cache" else None
    use_tokens = cached_tokens_usable(cfg, model)
    empty_limit = empty_batch_limit(batches)
    skipped, weights = [0], loss_weights(cfg)
    run.start(step)

    def encode(mb: dict, net=ddp) -> dict:
        with autocast(device, cfg.amp):
            tokens = mb["tokens"].to(device) if use_tokens else None  # a frozen ViT's cached output
            out = net(model.normalize(mb["image"].to(device, non_blocking=True)), model.text.tokenize(mb["caption"]),
                      tokens)
        targets = resize_targets(mb["masks"].to(device), tuple(out["masks"][-1].shape[-2:]))
        loss, mb["stats"] = mask_loss([m.float() for m in out["masks"]], targets, mb["valid"].to(device),
                                      mb["num_masks"], cfg.deep_supervision, **weights)
        return {"image": out["image"], "text": out["text"], "logit_scale": out["logit_scale"],
                "loss": cfg.mask_weight * loss}

    while step < run.stop:
        micro = [next_nonempty(batches, skipped, empty_limit) for _ in range(cfg.grad_accum)]
        if pseudo is not None:
            attach_pseudo_masks(micro, pseudo)
        count = step_mask_count(micro)
        for mb in micro:
            mb["num_masks"] = count
        ids = [torch.tensor([caption_id(c) for c in mb["caption"]], device=device) for mb in micro]
        optimizer.zero_grad(set_to_none=True)
        losses = contrastive_accumulation(encode, micro, ids, run.micro_steps(ddp), cfg.contrastive_weight)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or math.inf)
        optimizer.step()
        scheduler.step()
        step += 1

        scalars = None
        if run.log_due(step):
            scalars = run.log(step, *step_scalars(cfg, losses, micro, count, model, scheduler.get_last_lr()[0],
                                                  grad_norm, skipped[0], device))
        run.end_step(step, model, optimizer, scheduler)
        if on_step is not None:
            on_step(step, model, scalars)

    del ddp, encode  # the DDP wrapper goes before the process group (run.finish)
    return run.finish(step, lambda path: save_sseg(model, path, step=step, config=config_dict(cfg)))
