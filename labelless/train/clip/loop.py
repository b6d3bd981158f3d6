"""``labelless train clip``: plain CLIP contrastive training of an open_clip model, top to bottom.

Pairs come from ``data/pairs.py`` (a captions file, or a labelled benchmark whose
crops are captioned with the classes they show). Loss: symmetric InfoNCE with CLIP's
learnable temperature (clamped to ``logit_scale_max``); negatives are gathered over all
ranks and, with ``grad_accum``, over all micro-batches of the step
(``losses.contrastive_accumulation``: the loss of one big batch). Captions are few and
repeat within a batch, so a pair whose caption equals the positive's is *not* used as a
negative: it is masked out of the softmax (both directions).

LiT (``image_tower=FOLDER``, ``models/lit.py``): the CLIP is built around a pretrained DINOv2
image tower (``model`` gives the text tower's architecture); with ``lock_image`` (the default
there) the tower takes no gradient and stays in eval mode, and only its projection head, the
text tower and the temperature train. The locked tower builds no autograd graph (nothing in
it requires grad), so a step costs its forward only. ``image_cache=FILE`` (``cache.py``) removes
that too: the locked trunk's pooled output for ``cache_views`` fixed crops per image is computed
once (reused while its settings match) and each step samples cache entries and runs only
``visual.head`` (then the CLIP forward's normalisation), the text tower and the loss. The
crops come from ``cache_seed``, not ``seed``: runs of several seeds sharing a cache see the
same crops (in their own order).

At the end the model is exported as a labelless CLIP checkpoint (``run_dir/clip.pt``,
with its model config), which ``build_clip(None, path)`` and
``labelless eval --pretrained PATH`` load (a LiT model: every timm-vit dense mode,
``--mode pixelclip`` included).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from labelless.data.pairs import build_pairs, caption_id, collate_pairs
from labelless.distributed import all_reduce_mean
from labelless.errors import ConfigError
from labelless.train.clip.config import ClipConfig
from labelless.train.common import SeededSampler, autocast, cosine_scheduler, empty_batch_limit, next_nonempty
from labelless.train.config import config_dict
from labelless.train.losses import contrastive_accumulation
from labelless.train.run import Run


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """open_clip's rule: no weight decay on gains, biases, embeddings' scalars, logit_scale."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exclude = p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
        (no_decay if exclude else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def data_stream(cfg: ClipConfig, run: Run, size: int, step: int, cache: dict | None):
    """This rank's endless micro-batches from optimizer step ``step`` on (``SeededSampler``
    order, seeded by the run's seed): the pairs' crops, or ``cache``'s trunk features."""
    def order(n: int) -> SeededSampler:
        return SeededSampler(n, cfg.seed, run.info.rank, run.info.world_size, start=run.samples_before(step))

    if cache is not None:
        from labelless.train.clip.cache import cached_batches

        return cached_batches(cache, order(len(cache["captions"])), run.micro_batch)
    dataset = build_pairs(cfg, size)
    loader = DataLoader(dataset, batch_size=run.micro_batch, sampler=order(len(dataset)), num_workers=cfg.num_workers,
                        collate_fn=collate_pairs, pin_memory=run.pin_memory, persistent_workers=cfg.num_workers > 0,
                        generator=torch.Generator().manual_seed(cfg.seed))
    return iter(loader)


def build_model(cfg: ClipConfig, device, is_main: bool):
    """``(dense CLIP, crop size, the LiT feature cache or None, the module the step runs)``, the
    same initial weights on every rank; ``dense.clip`` is in train mode, a locked LiT tower in
    eval mode. The step's module is ``dense.clip``, or with the cache ``CachedLiT`` around it."""
    from labelless.models.clip import build_clip

    if cfg.image_tower:
        from labelless.models.lit import build_lit_clip

        dense = build_lit_clip(cfg.model, cfg.image_tower, cfg.image_size, cfg.image_proj, device, cfg.cache_dir)
    else:
        dense = build_clip(cfg.model, cfg.pretrained, device=device, cache_dir=cfg.cache_dir)
    size = cfg.image_size or dense.image_size[0]
    if dense.fixed_input_size and size != dense.image_size[0]:
        raise ConfigError(f"{cfg.model} is a ViT trained at {dense.image_size[0]} px: image_size must match")
    clip = dense.clip.train()
    if cfg.locks_image:
        from labelless.models.lit import lock_image_tower

        lock_image_tower(dense)  # after .train(): the locked part stays in eval mode
    if not cfg.image_cache:
        return dense, size, None, clip
    # the locked trunk's features of fixed crops (cache.py): the step runs head + text only
    from labelless.train.clip.cache import CachedLiT, load_or_build

    return dense, size, load_or_build(cfg, dense, size, is_main), CachedLiT(clip)


def train_clip(cfg: ClipConfig, on_step=None) -> Path | None:
    """Run (or resume) CLIP training; returns the exported checkpoint path (``None`` when
    stopped early by ``exit_at``). ``on_step(step, model, scalars)`` after every step."""
    from labelless.models.clip import save_checkpoint as save_clip

    run = Run(cfg, "clip")
    device = run.device

    # ---- model and optimizer
    dense, size, cache, net = build_model(cfg, device, run.is_main)
    clip = dense.clip
    ddp = run.wrap(net)
    optimizer = torch.optim.AdamW(param_groups(clip, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    scheduler = cosine_scheduler(optimizer, cfg.max_steps, cfg.warmup_steps, cfg.lr_end)
    step = run.resume(clip, optimizer, scheduler)

    # ---- data: an endless seeded stream; a resumed run skips what it already consumed
    batches, skipped = data_stream(cfg, run, size, step, cache), [0]
    empty_limit = empty_batch_limit(batches)
    run.start(step)

    def encode(batch: dict, net=ddp) -> dict:
        images = batch["image"].to(device, non_blocking=True)  # crops, or with the cache the trunk's features
        images = images if cache is not None else dense.normalize(images)
        with autocast(device, cfg.amp):
            image, text, logit_scale = net(images, dense.tokenizer(batch["caption"]).to(device))[:3]
        return {"image": image, "text": text, "logit_scale": logit_scale}

    def export(path: Path, at: int) -> Path:
        return save_clip(dense, path, step=at, trained_by="labelless train clip", config=config_dict(cfg))

    # ---- the loop
    max_scale = math.log(cfg.logit_scale_max)
    while step < run.stop:
        micro = [next_nonempty(batches, skipped, empty_limit) for _ in range(cfg.grad_accum)]
        ids = [torch.tensor([caption_id(c) for c in mb["caption"]], device=device) for mb in micro]
        optimizer.zero_grad(set_to_none=True)
        loss = contrastive_accumulation(encode, micro, ids, run.micro_steps(ddp))["contrastive"]
        grad_norm = torch.nn.utils.clip_grad_norm_(clip.parameters(), cfg.grad_clip or float("inf"))
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            clip.logit_scale.clamp_(0, max_scale)
        step += 1

        scalars = None
        if run.log_due(step):
            scalars = run.log(step, {"loss": all_reduce_mean(loss).item(), "lr": scheduler.get_last_lr()[0],
                                     "logit_scale": float(clip.logit_scale.detach().exp()),
                                     "grad_norm": float(grad_norm), "skipped_images": skipped[0]})
        run.end_step(step, clip, optimizer, scheduler, export=lambda path, at=step: export(path, at))
        if on_step is not None:
            on_step(step, clip, scalars)

    del ddp, encode  # the DDP wrapper goes before the process group (run.finish)
    return run.finish(step, lambda path: export(path, step))
