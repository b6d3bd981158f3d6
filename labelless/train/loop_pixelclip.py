"""``labelless train pixelclip``: the PixelCLIP training loop, top to bottom.

    torchrun --nproc_per_node 4 -m labelless.train.cli pixelclip --config configs/pixelclip_vitb16_sam.yaml

``train_pixelclip(cfg)`` does, in this order:

1. processes: torchrun env → process group (NCCL / gloo), device, seeds, TF32;
2. the run folder: ``config.yaml`` (resolved), ``checkpoints/``, ``tb/`` (TensorBoard);
3. the model: ``build_model(cfg)`` = ``build_clip`` + ``PixelCLIPModel`` (student, EMA
   teacher, class prompts, decoder), wrapped in DistributedDataParallel;
4. AdamW over the model's parameter groups (CLIP ×0.01, prompts ×10, decoder ×1),
   cosine from 1 to ``lr_end`` (0.5) without warmup;
5. resume from the latest checkpoint of the run folder (model, optimizer, scheduler,
   RNG; the data stream skips what was consumed);
6. data: images + masks (mask store, SA-1B tar shards, or DINO k-means computed online
   on the weak view), augmented into weak/strong views;
7. the loop: per step ``update_teacher`` (EMA, before the teacher forward), then
   ``grad_accum`` micro-batches of ``forward_train`` + backward, global grad-norm clip
   (0.01), optimizer and scheduler step; scalars to tqdm/TensorBoard; a checkpoint
   every ``checkpoint_every`` steps;
8. at the end: the student exported as a labelless CLIP checkpoint (``run_dir/clip.pt``)
   for ``labelless eval --pretrained run_dir/clip.pt --mode pixelclip``.

Exact resume: all data randomness comes from per-sample seeds (``common.SeededSampler``),
model randomness (e.g. ConvNeXt drop-path) from the global RNG saved per rank in the
checkpoint, so "train N steps" and "train k, stop, resume to N" end with identical
weights (deterministic kernels assumed: the CPU, or CUDA with deterministic algorithms).
"""

from __future__ import annotations

import glob
import math
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from labelless.train.augment import AugmentConfig, augment, collate
from labelless.train.common import (
    ScalarLogger,
    SeededSampler,
    autocast,
    cosine_scheduler,
    sample_generator,
    seed_everything,
    set_tf32,
)
from labelless.train.config import TrainConfig, config_dict, make_config, save_config
from labelless.train.pixelclip import PixelCLIPModel

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


# ============================================================================ model

def _pixelclip_model(cfg: TrainConfig, dense) -> PixelCLIPModel:
    return PixelCLIPModel(dense, num_clusters=cfg.num_clusters, prompt_len=cfg.prompt_length,
                          logit_scale=cfg.cluster_scale, ema_gamma=cfg.ema, mask_size=cfg.mask_size,
                          prompt_seed=cfg.prompt_seed, sinkhorn_iters=cfg.sinkhorn_iters,
                          finetune=cfg.finetune, prompt_words=cfg.prompt_words or None)


def build_model(cfg: TrainConfig, device: torch.device | str = "cpu", spec: dict | None = None
                ) -> PixelCLIPModel:
    """The PixelCLIP training model a config describes, with the config's weights
    (``pretrained``, or everything from the official checkpoint ``init``); with ``spec``
    (``models.clip.clip_spec``, stored in training checkpoints): that architecture with
    random weights, for a checkpoint to be loaded over it."""
    from labelless.models.clip import build_clip, clip_from_spec
    from labelless.models.weights import read_weights

    if spec is not None:
        return _pixelclip_model(cfg, clip_from_spec(spec, device))
    if not cfg.init:
        return _pixelclip_model(cfg, build_clip(cfg.model, cfg.pretrained, device=device, cache_dir=cfg.cache_dir))
    wf = read_weights(cfg.init)
    if wf.format != "pixelclip":
        raise ValueError(f"init={cfg.init}: not an official PixelCLIP checkpoint (it is a {wf.format} file; "
                         "give it as pretrained= instead)")
    return _from_official(cfg, wf, device)


def _from_official(cfg: TrainConfig, wf, device) -> PixelCLIPModel:
    from labelless.models.clip import clip_from_weights

    model = _pixelclip_model(cfg, clip_from_weights(wf, cfg.model, cfg.cache_dir).to(device))
    model.load_official(wf.parts, str(wf.path))
    return model


def _legacy_spec(cfg: TrainConfig) -> dict:
    """Checkpoints written before the CLIP spec was stored: the config's model by name,
    QuickGELU when its pretrained tag says so."""
    from labelless.models.clip import OPENAI_MEAN, OPENAI_STD, named_model_cfg, tag_quick_gelu
    from labelless.models.convert import with_quick_gelu

    model_cfg = named_model_cfg(cfg.model, cfg.cache_dir)
    tag = cfg.pretrained and not Path(cfg.pretrained).exists() and cfg.pretrained.lower() != "none"
    if tag and not cfg.model.startswith(("hf-hub:", "local-dir:")) and cfg.model not in ("tiny-vit", "tiny-convnext"):
        model_cfg = with_quick_gelu(model_cfg, model_cfg.get("quick_gelu") or tag_quick_gelu(cfg.model, cfg.pretrained))
    return {"model": cfg.model, "model_cfg": model_cfg, "mean": OPENAI_MEAN, "std": OPENAI_STD}


def _official_run(file: Path, wf, device) -> tuple[PixelCLIPModel, TrainConfig, dict]:
    """An official PixelCLIP checkpoint as a run: k and prompt length from its prompt tokens."""
    if wf.parts.get("prompts") is None:
        raise ValueError(f"{file}: an official PixelCLIP checkpoint without prompt tokens")
    k, length = wf.parts["prompts"].shape[:2]
    cfg = TrainConfig(model=None, pretrained=None, init=str(file), num_clusters=int(k), prompt_length=int(length),
                      resolution=320 if wf.arch == "vit" else 640)  # the paper's resolutions
    model = _from_official(cfg, wf, device)  # the CLIP's name told from its weights
    cfg.model = model.student.name
    return model.eval(), cfg, {"step": 0, "config": config_dict(cfg), "extra": {}}


def load_run(path: str | Path, device: torch.device | str = "cpu") -> tuple[PixelCLIPModel, TrainConfig, dict]:
    """Rebuild a trained model from a run folder (its latest checkpoint), a training
    checkpoint file, or an official PixelCLIP checkpoint. Returns (model, config, checkpoint)."""
    from labelless.models.weights import read_weights
    from labelless.train import checkpoint as ckpt

    path = Path(path)
    file = ckpt.latest_checkpoint(path) if path.is_dir() else path
    if file is None:
        raise FileNotFoundError(f"no checkpoint in {path / ckpt.CHECKPOINT_DIR}")
    if file.suffix == ".pth":
        wf = read_weights(file)
        if wf.format == "pixelclip":
            return _official_run(file, wf, device)
    state = ckpt.read_checkpoint(file)
    cfg = make_config(TrainConfig, state["config"], f"config in {file}")
    model = build_model(cfg, device, spec=state.get("extra", {}).get("clip_spec") or _legacy_spec(cfg))
    model.load_state_dict(state["model"])
    return model.eval(), cfg, state


# ============================================================================ data

def augment_config(cfg: TrainConfig) -> AugmentConfig:
    # DINO masks are computed on the weak view at crop resolution (as the official code
    # does on its 640 crop), so the views stay at crop size and are resized in the loop.
    out = cfg.crop_size if cfg.masks == "dino" else cfg.resolution
    return AugmentConfig(short_side=cfg.short_side, max_size=cfg.max_size, crop_size=cfg.crop_size,
                         clip_size=out, mask_size=cfg.mask_size, strong=cfg.strong_aug, cutout=cfg.strong_aug)


def _augmented(image: torch.Tensor, masks, seed: int, aug: AugmentConfig, name: str) -> dict:
    out = augment(image, torch.as_tensor(masks, dtype=torch.bool), sample_generator(seed), aug)
    params = out.pop("params")
    out["cutout"] = torch.tensor(params["cutout"])  # top, left, height, width in crop pixels
    out["crop_hw"] = torch.tensor(params["crop"][2:])  # crop height, width
    out["name"] = name
    return out


class ImageFolderDataset(Dataset):
    """Images without masks (for ``masks=dino``): ``{"name", "image" uint8 3×H×W, "masks" 0×H×W}``."""

    def __init__(self, paths: list[Path]):
        if not paths:
            raise ValueError("no training images found")
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        from labelless.segment import load_image

        image = load_image(self.paths[i])
        return {"name": self.paths[i].stem, "image": image,
                "masks": torch.zeros(0, *image.shape[-2:], dtype=torch.bool)}


class AugmentedDataset(Dataset):
    """A map-style source (``{"name", "image", "masks"}``) → augmented sample, item ``(index, seed)``."""

    def __init__(self, source: Dataset, aug: AugmentConfig):
        self.source, self.aug = source, aug

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, item) -> dict:
        index, seed = item
        s = self.source[index]
        return _augmented(s["image"], s["masks"], seed, self.aug, s["name"])


def expand_shards(patterns: list[str]) -> list[str]:
    """Shard paths, globs (sorted) and URLs, in the order given."""
    out = []
    for p in patterns:
        if "://" in p or p.startswith("pipe:") or not any(c in p for c in "*?["):
            out.append(p)
        else:
            found = sorted(glob.glob(p))
            if not found:
                raise FileNotFoundError(f"no SA-1B shards match {p}")
            out.extend(found)
    return out


def stream_start(consumed_batches: int, worker: int, num_workers: int) -> int:
    """Batches worker ``worker`` produced when the loader (round-robin over workers)
    delivered ``consumed_batches``."""
    return len(range(worker, consumed_batches, num_workers))


class SA1BStream(IterableDataset):
    """SA-1B ``.tar`` shards streamed (nothing extracted), split over ranks and workers.

    With at least as many shards as streams (ranks × workers), each stream reads its own
    shards; otherwise every stream reads all shards and keeps the images whose name
    hashes to it (others are skipped undecoded). Shard order is reshuffled every epoch
    (seeded). ``start_batches``: batches this rank already consumed (resume).
    """

    def __init__(self, shards: list[str], aug: AugmentConfig, batch_size: int, seed: int, rank: int,
                 world_size: int, start_batches: int = 0, load_short_side: int | None = None,
                 max_masks: int | None = None):
        self.shards, self.aug, self.batch_size, self.seed = shards, aug, batch_size, seed
        self.rank, self.world, self.start_batches = rank, world_size, start_batches
        self.load_short_side, self.max_masks = load_short_side, max_masks

    def __iter__(self):
        import zlib

        from labelless.masks.readers import iter_sa1b_tars

        info = get_worker_info()
        worker, nw = (info.id, info.num_workers) if info else (0, 1)
        stream, streams = self.rank * nw + worker, self.world * nw
        to_skip = stream_start(self.start_batches, worker, nw) * self.batch_size
        by_shard = len(self.shards) >= streams
        count = to_skip  # items of this stream so far (the per-item seed counts the skipped ones)
        epoch = 0
        while True:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = [self.shards[i] for i in torch.randperm(len(self.shards), generator=g).tolist()]
            mine = order[stream::streams] if by_shard else order
            decided: dict[str, bool] = {}

            def skip(name: str) -> bool:  # called for the .jpg and the .json of each image
                nonlocal to_skip
                if name in decided:
                    return decided.pop(name)
                owned = by_shard or zlib.crc32(name.encode()) % streams == stream
                drop = not owned or to_skip > 0
                if owned and to_skip > 0:
                    to_skip -= 1
                decided[name] = drop
                return drop

            for name, image, masks in iter_sa1b_tars(mine, short_side=self.load_short_side,
                                                     max_masks=self.max_masks, skip=skip, on_error="skip"):
                decided.pop(name, None)
                seed = ((self.seed * 1_000_003 + stream) * 2**31 + count) % (2**63 - 1)
                count += 1
                yield _augmented(image, masks, seed, self.aug, name)
            epoch += 1


def map_source(cfg: TrainConfig) -> Dataset:
    """The map-style source of images (+ masks): the mask store, or (``masks=dino``) an
    image folder or a benchmark's images."""
    from labelless.masks.store import MaskStoreDataset

    if cfg.masks == "store":
        return MaskStoreDataset(cfg.mask_store, short_side=cfg.load_short_side, max_masks=cfg.max_masks)
    if cfg.images:
        folder = Path(cfg.images)
        if not folder.is_dir():
            raise FileNotFoundError(f"image folder not found: {folder}")
        paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    else:
        from labelless.data.benchmarks import load_benchmark

        paths = [s.image for s in load_benchmark(cfg.dataset, cfg.data_root, cfg.split).samples]
    return ImageFolderDataset(paths)


def build_loader(cfg: TrainConfig, rank: int, world: int, micro_batch: int, start_batches: int,
                 pin: bool) -> DataLoader:
    aug = augment_config(cfg)
    # the loader's own generator: creating its iterator must not draw from the global RNG
    common = dict(batch_size=micro_batch, num_workers=cfg.num_workers, collate_fn=collate, pin_memory=pin,
                  persistent_workers=cfg.num_workers > 0, generator=torch.Generator().manual_seed(cfg.seed))
    if cfg.masks == "sa1b" or (cfg.masks == "dino" and cfg.sa1b_tars):
        max_masks = 0 if cfg.masks == "dino" else cfg.max_masks  # dino: SA-1B images only, no mask decoded
        stream = SA1BStream(expand_shards(cfg.sa1b_tars), aug, micro_batch, cfg.seed, rank, world,
                            start_batches, cfg.load_short_side, max_masks)
        return DataLoader(stream, **common)
    dataset = AugmentedDataset(map_source(cfg), aug)
    sampler = SeededSampler(len(dataset), cfg.seed, rank, world, start=start_batches * micro_batch)
    return DataLoader(dataset, sampler=sampler, **common)


class OnlineDinoMasks:
    """``masks=dino``: DINO k-means masks of the weak views (crop resolution), then both
    views resized to the CLIP resolution, as the official code (no cutout removal unless
    ``dino_remove_cutout``)."""

    def __init__(self, cfg: TrainConfig, device: torch.device):
        from labelless.masks.dino import load_dino

        self.cfg, self.device = cfg, device
        self.backbone = load_dino(cfg.dino_model, device)

    @torch.no_grad()
    def __call__(self, batch: dict) -> dict:
        from labelless.masks.dino import dino_kmeans_masks
        from labelless.train.augment import box_rows

        cfg = self.cfg
        weak = batch["image_weak"].to(self.device)  # B×3×C×C, C = crop_size
        images = (weak * 255).round().to(torch.uint8)
        found = dino_kmeans_masks(self.backbone, images, cfg.dino_k, size=cfg.dino_size, seed=cfg.seed,
                                  cosine=cfg.dino_cosine)
        n = max(m.shape[0] for m in found)
        side = weak.shape[-1]
        masks = torch.zeros(len(found), n, side, side, dtype=torch.bool, device=self.device)
        valid = torch.zeros(len(found), n, dtype=torch.bool, device=self.device)
        for i, m in enumerate(found):
            masks[i, : m.shape[0]] = m
            valid[i, : m.shape[0]] = True
            if cfg.dino_remove_cutout and cfg.strong_aug:
                top, left, bh, bw = (int(v) for v in batch["cutout"][i])
                ch, cw = (int(v) for v in batch["crop_hw"][i])
                box = box_rows(side, ch, top, bh)[:, None] & box_rows(side, cw, left, bw)[None, :]
                masks[i] &= ~box.to(self.device)
        size = (cfg.resolution, cfg.resolution)
        out = dict(batch)
        out["image_weak"] = F.interpolate(weak, size=size, mode="bilinear", align_corners=False)
        out["image_strong"] = F.interpolate(batch["image_strong"].to(self.device), size=size,
                                            mode="bilinear", align_corners=False)
        out["masks"], out["valid"] = masks, valid
        return out


# ============================================================================ loop

def train_pixelclip(cfg: TrainConfig, on_step=None) -> Path | None:
    """Train (or resume) PixelCLIP as ``cfg`` says.

    ``on_step(step, model, scalars)`` is called after every optimizer step (``scalars`` is
    None between log steps; tests use it to interrupt a run). Returns the exported
    student checkpoint, or None when the run stopped before ``max_steps`` (``exit_at``).
    """
    from tqdm import tqdm

    from labelless.models.clip import clip_spec
    from labelless.train import checkpoint as ckpt
    from labelless.train import distributed as ddist

    # ---- 1. processes, seeds, precision
    info = ddist.init_distributed(cfg.device)
    device = info.device
    set_tf32(cfg.tf32)
    per_rank, rest = divmod(cfg.batch_size, info.world_size * cfg.grad_accum)
    if rest or per_rank < 1:
        raise ValueError(f"batch_size {cfg.batch_size} must be a multiple of world size {info.world_size} "
                         f"× grad_accum {cfg.grad_accum}")

    # ---- 2. run folder
    run_dir = Path(cfg.run_dir)
    if info.is_main:
        save_config(cfg, run_dir)
    logger = ScalarLogger(run_dir, cfg.tensorboard and info.is_main)

    # ---- 3. model (same initial weights on every rank; DDP also broadcasts rank 0's)
    seed_everything(cfg.seed)
    model = build_model(cfg, device)
    model.train()
    ddp = model
    if info.distributed:
        ddp = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=cfg.ddp_find_unused)

    # ---- 4. optimizer and schedule
    groups = model.param_groups(cfg.lr, cfg.clip_lr_mult, cfg.prompt_lr_mult, cfg.weight_decay,
                                cfg.norm_weight_decay)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = cosine_scheduler(optimizer, cfg.max_steps, cfg.warmup_steps, cfg.lr_end)
    params = model.trainable_parameters()

    # ---- 5. resume (the RNG state is restored last, once everything is built)
    step, rng_state = 0, None
    latest = ckpt.latest_checkpoint(run_dir) if cfg.resume else None
    if latest is not None:
        state = ckpt.load_checkpoint(latest, model, optimizer, scheduler, restore_rng=False, map_location=device)
        step, rng_state = state["step"], state["rng"]
        if info.is_main:
            print(f"resumed from {latest} at step {step}", flush=True)

    # ---- 6. data (a resumed run skips the batches it already consumed)
    loader = build_loader(cfg, info.rank, info.world_size, per_rank, step * cfg.grad_accum,
                          pin=device.type == "cuda")
    batches = iter(loader)
    dino = OnlineDinoMasks(cfg, device) if cfg.masks == "dino" else None
    if rng_state is None:
        seed_everything(cfg.seed + info.rank)  # from here on each rank draws its own numbers
    else:
        ckpt.restore_rng_state(rng_state[info.rank] if info.rank < len(rng_state) else rng_state[0])

    def save(step_done: int) -> None:
        rng = ckpt.gather_rng_states()  # collective: every rank
        if info.is_main:
            ckpt.save_checkpoint(ckpt.checkpoint_path(run_dir, step_done), step=step_done, model=model,
                                 optimizer=optimizer, scheduler=scheduler, config=config_dict(cfg), rng=rng,
                                 extra={"samples_per_rank": step_done * cfg.grad_accum * per_rank,
                                        "world_size": info.world_size, "clip_spec": clip_spec(model.student)})
            ckpt.prune_checkpoints(run_dir, cfg.keep_checkpoints)
        ddist.barrier()

    # ---- 7. the loop
    stop = min(cfg.max_steps, cfg.exit_at) if cfg.exit_at else cfg.max_steps
    bar = tqdm(total=cfg.max_steps, initial=step, desc="pixelclip", disable=not info.is_main, file=sys.stdout)
    tick, logged = time.perf_counter(), step
    while step < stop:
        model.update_teacher()  # EMA once per step, before this step's teacher forward
        optimizer.zero_grad(set_to_none=True)
        for micro in range(cfg.grad_accum):
            batch = next(batches)
            if dino is not None:
                batch = dino(batch)
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()
                     if k in ("image_weak", "image_strong", "masks", "valid")}
            last = micro == cfg.grad_accum - 1
            sync = nullcontext() if (last or not info.distributed) else ddp.no_sync()
            with sync:
                with autocast(device, cfg.amp):
                    out = ddp(batch)
                (out["loss"] / cfg.grad_accum).backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip or math.inf)
        optimizer.step()
        scheduler.step()
        step += 1

        scalars = None
        if step % cfg.log_every == 0 or step == stop:
            now = time.perf_counter()
            scalars = {"loss": ddist.all_reduce_mean(out["loss"].detach()).item(), "grad_norm": float(grad_norm),
                       "images_per_s": cfg.batch_size * (step - logged) / max(now - tick, 1e-9)}
            scalars.update({k: float(v) for k, v in out["stats"].items()})
            scalars.update({f"lr_{g.get('name', i)}": g["lr"] for i, g in enumerate(optimizer.param_groups)})
            tick, logged = now, step
            logger.log({f"train/{k}": v for k, v in scalars.items()}, step)
            bar.set_postfix(loss=f"{scalars['loss']:.4f}", clusters=int(scalars.get("clusters_used", 0)))
        bar.update(1)
        if step % cfg.checkpoint_every == 0 or step == stop:
            save(step)
        if cfg.export_every and step % cfg.export_every == 0 and step < cfg.max_steps and info.is_main:
            model.export_clip(run_dir / f"clip_step_{step:08d}.pt", step=step, config=config_dict(cfg))
        if on_step is not None:
            on_step(step, model, scalars)

    # ---- 8. export the student
    bar.close()
    logger.close()
    exported = None
    if step >= cfg.max_steps and info.is_main:
        exported = model.export_clip(run_dir / cfg.export, step=step, config=config_dict(cfg))
        print(f"exported {exported}\n  labelless eval --model {cfg.model} --pretrained {exported} "
              f"--mode {model.feature_mode} ...", flush=True)
    ddist.barrier()
    ddist.cleanup()
    return exported


def export_run(run: str | Path, out: str | Path | None = None) -> Path:
    """Export the student of a run's latest checkpoint (or of a checkpoint file) on demand."""
    model, cfg, state = load_run(run)
    run_dir = Path(run) if Path(run).is_dir() else Path(run).parent.parent
    target = Path(out) if out else run_dir / f"clip_step_{state['step']:08d}.pt"
    return model.export_clip(target, step=state["step"], config=config_dict(cfg))
