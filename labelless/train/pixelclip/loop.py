"""``labelless train pixelclip``: the PixelCLIP training loop, top to bottom.

    torchrun --nproc_per_node 4 -m labelless train pixelclip --config configs/pixelclip_vitb16_sam.yaml

``train_pixelclip(cfg)`` does, in this order (the shared pieces are ``train/run.py``'s):

1. the run: processes (NCCL / gloo), TF32, the run folder (``config.yaml``, ``checkpoints/``,
   ``tb/``), seeds;
2. the model: ``build.build_model(cfg)`` (student, EMA teacher, class prompts, decoder),
   in DistributedDataParallel when there are several processes;
3. AdamW over the model's parameter groups (CLIP ×0.01, prompts ×10, decoder ×1),
   cosine from 1 to ``lr_end`` (0.5) without warmup;
4. resume from the latest checkpoint of the run folder (model, optimizer, scheduler,
   RNG; the data stream skips what was consumed);
5. data: images + masks (mask store, SA-1B tar shards, or DINO k-means computed online
   on the weak view), augmented into weak/strong views (``data.py``);
6. the loop: per step ``update_teacher`` (EMA, before the teacher forward), then
   ``grad_accum`` micro-batches of ``forward_train`` + backward, global grad-norm clip
   (0.01), optimizer and scheduler step; scalars to tqdm/TensorBoard; a checkpoint
   every ``checkpoint_every`` steps;
7. at the end: the student exported as a labelless CLIP checkpoint (``run_dir/clip.pt``)
   for ``labelless eval --pretrained run_dir/clip.pt --mode pixelclip``.

Gradient accumulation: each micro-batch is clustered on its own (Sinkhorn's
equipartition spans one micro-batch's masks on all ranks, and the BCE is averaged per
micro-batch), so ``grad_accum`` > 1 is not the same as a bigger batch here; the paper ran
48 images on 4 GPUs without accumulation.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from labelless.distributed import all_reduce_mean
from labelless.train.common import autocast, cosine_scheduler
from labelless.train.config import config_dict
from labelless.train.pixelclip.build import build_model
from labelless.train.pixelclip.config import PixelCLIPConfig
from labelless.train.pixelclip.data import OnlineDinoMasks, build_loader
from labelless.train.run import Run

BATCH_KEYS = ("image_weak", "image_strong", "masks", "valid")


def _scalars(out: dict, grad_norm, optimizer) -> dict:
    """The step's scalars: loss (mean over ranks), grad norm, the model's stats, every group's lr."""
    scalars = {"loss": all_reduce_mean(out["loss"].detach()).item(), "grad_norm": float(grad_norm)}
    scalars.update({k: float(v) for k, v in out["stats"].items()})
    scalars.update({f"lr_{g.get('name', i)}": g["lr"] for i, g in enumerate(optimizer.param_groups)})
    return scalars


def build_optimizer(cfg: PixelCLIPConfig, model) -> tuple[torch.optim.Optimizer, object]:
    """AdamW over the model's parameter groups and the cosine schedule."""
    groups = model.param_groups(cfg.lr, cfg.clip_lr_mult, cfg.prompt_lr_mult, cfg.weight_decay,
                                cfg.norm_weight_decay)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return optimizer, cosine_scheduler(optimizer, cfg.max_steps, cfg.warmup_steps, cfg.lr_end)


def accumulate(cfg: PixelCLIPConfig, run: Run, ddp, batches, dino, device) -> dict:
    """``grad_accum`` micro-batches: forward (DINO masks first when online), backward of the
    loss / ``grad_accum``; DDP syncs gradients on the last. Returns the last forward's output."""
    for sync in run.micro_steps(ddp):
        batch = next(batches)
        batch = dino(batch) if dino is not None else batch
        batch = {k: batch[k].to(device, non_blocking=True) for k in BATCH_KEYS}
        with sync:
            with autocast(device, cfg.amp):
                out = ddp(batch)
            (out["loss"] / cfg.grad_accum).backward()
    return out


def train_pixelclip(cfg: PixelCLIPConfig, on_step=None) -> Path | None:
    """Train (or resume) PixelCLIP as ``cfg`` says.

    ``on_step(step, model, scalars)`` is called after every optimizer step (``scalars`` is
    None between log steps; tests use it to interrupt a run). Returns the exported
    student checkpoint, or None when the run stopped before ``max_steps`` (``exit_at``).
    """
    from labelless.models.clip import clip_spec

    run = Run(cfg, "pixelclip")
    device = run.device

    # ---- model (same initial weights on every rank; DDP also broadcasts rank 0's)
    model = build_model(cfg, device)
    model.train()
    ddp = run.wrap(model)

    # ---- optimizer, schedule, resume
    optimizer, scheduler = build_optimizer(cfg, model)
    params = model.trainable_parameters()
    step = run.resume(model, optimizer, scheduler)

    # ---- data (a resumed run skips the samples it already consumed)
    loader = build_loader(cfg, run.info.rank, run.info.world_size, run.micro_batch, run.samples_before(step),
                          pin=run.pin_memory)
    batches = iter(loader)
    dino = OnlineDinoMasks(cfg, device) if cfg.masks == "dino" else None
    run.start(step)

    def export(path: Path, at: int) -> Path:
        return model.export_clip(path, step=at, config=config_dict(cfg))

    # ---- the loop
    while step < run.stop:
        model.update_teacher()  # EMA once per step, before this step's teacher forward
        optimizer.zero_grad(set_to_none=True)
        out = accumulate(cfg, run, ddp, batches, dino, device)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip or math.inf)
        optimizer.step()
        scheduler.step()
        step += 1

        scalars = None
        if run.log_due(step):
            scalars = _scalars(out, grad_norm, optimizer)  # (the loss mean is a collective)
            scalars = run.log(step, scalars, {"loss": f"{scalars['loss']:.4f}",
                                              "clusters": str(int(scalars.get("clusters_used", 0)))})
        run.end_step(step, model, optimizer, scheduler, {"clip_spec": clip_spec(model.student)},
                     export=lambda path, at=step: export(path, at))
        if on_step is not None:
            on_step(step, model, scalars)

    del ddp  # the DDP wrapper goes before the process group (run.finish)
    exported = run.finish(step, lambda path: export(path, step))
    if exported is not None:
        print(f"  labelless eval --pretrained {exported} --mode {model.feature_mode} ...", flush=True)
    return exported
