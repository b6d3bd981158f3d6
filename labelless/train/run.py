"""The training-run scaffold: what every method's run does, in one place.

A method's loop (``train/pixelclip/loop.py``, ``train/clip/loop.py``) stays an explicit
function read top to bottom; it calls these pieces in this order::

    run = Run(cfg, "pixelclip")            # processes, TF32, run folder + config.yaml, TensorBoard, seed
    model = ...; ddp = run.wrap(model)     # DistributedDataParallel when there are several processes
    optimizer, scheduler = ...
    step = run.resume(model, optimizer, scheduler)   # latest checkpoint of run_dir, if any
    loader = ... (skips step × grad_accum × micro_batch samples per rank)
    run.start(step)                        # RNG: restored (resume) or seeded per rank; progress bar
    while step < run.stop:
        for sync in run.micro_steps(ddp):  # grad_accum micro-batches; DDP syncs on the last only
            with sync: ... forward, backward
        ... clip, optimizer.step(), scheduler.step(); step += 1
        if run.log_due(step): run.log(step, {...})
        run.end_step(step, model, optimizer, scheduler, extra)   # progress; checkpoint when due
    run.finish(step, export)               # export at max_steps (main process), clean shutdown

Nothing here calls back into a loop (no hooks): it owns set-up, resume, RNG, atomic
checkpoints, logging, progress and the clean finish, so two loops never repeat them.

Exact resume: all data randomness comes from per-sample seeds (``common.SeededSampler``),
model randomness from the global RNG saved per rank in every checkpoint, so "train N
steps" and "train k, stop, resume to N" end with identical weights (deterministic kernels
assumed: the CPU, or CUDA with deterministic algorithms). A run resumes with the world
size it was started with (the data position is per rank).
"""

from __future__ import annotations

import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import torch

from labelless import distributed as ddist
from labelless.errors import CheckpointError, ConfigError
from labelless.train import checkpoint as ckpt
from labelless.train.common import seed_everything, set_tf32
from labelless.train.config import RunConfig, config_dict, save_config


class ScalarLogger:
    """Scalars to TensorBoard (``run_dir/tb``) on the main process; a no-op elsewhere."""

    def __init__(self, run_dir: str | Path, enabled: bool = True):
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is the "train" extra
            print("tensorboard is not installed (pip install 'labelless[train]'): scalars are not logged",
                  file=sys.stderr)
            return
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tb"))

    def log(self, scalars: dict[str, float], step: int) -> None:
        if self.writer is not None:
            for k, v in scalars.items():
                self.writer.add_scalar(k, float(v), step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class Run:
    """One training run of ``cfg`` (any :class:`RunConfig`); see the module docstring."""

    def __init__(self, cfg: RunConfig, name: str):
        self.cfg, self.name = cfg, name
        self.info = ddist.init_distributed(cfg.device)
        self.device = self.info.device
        set_tf32(cfg.tf32)
        per_rank, rest = divmod(cfg.batch_size, self.info.world_size * cfg.grad_accum)
        if rest or per_rank < 1:
            raise ConfigError(f"batch_size {cfg.batch_size} must be a multiple of world size "
                              f"{self.info.world_size} × grad_accum {cfg.grad_accum}")
        self.micro_batch = per_rank  # samples per micro-batch on each process
        self.dir = Path(cfg.run_dir)
        if self.is_main:
            save_config(cfg, self.dir)
        self.logger = ScalarLogger(self.dir, cfg.tensorboard and self.is_main)
        self.stop = min(cfg.max_steps, cfg.exit_at) if cfg.exit_at else cfg.max_steps
        self._ddp, self._rng, self._bar = None, None, None
        seed_everything(cfg.seed)  # the same initial weights on every rank

    @property
    def is_main(self) -> bool:
        return self.info.is_main

    @property
    def distributed(self) -> bool:
        return self.info.distributed

    @property
    def pin_memory(self) -> bool:
        return self.device.type == "cuda"

    def samples_before(self, step: int) -> int:
        """Samples this process consumed in ``step`` optimizer steps (where its data resumes)."""
        return step * self.cfg.grad_accum * self.micro_batch

    # ------------------------------------------------------------------ set-up
    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` in DistributedDataParallel when there are several processes."""
        if not self.distributed:
            return model
        dev = self.device
        self._ddp = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.index] if dev.type == "cuda" else None,
            find_unused_parameters=self.cfg.ddp_find_unused)
        return self._ddp

    def resume(self, model, optimizer, scheduler) -> int:
        """Load the latest checkpoint of the run folder (if ``resume`` and there is one) into
        model, optimizer and scheduler; returns the steps already done. The RNG state is
        kept for ``start`` (restored once everything is built)."""
        latest = ckpt.latest_checkpoint(self.dir) if self.cfg.resume else None
        if latest is None:
            return 0
        state = ckpt.load_checkpoint(latest, model, optimizer, scheduler, restore_rng=False,
                                     map_location=self.device)
        world = state.get("extra", {}).get("world_size", self.info.world_size)
        if world != self.info.world_size:
            raise CheckpointError(f"{latest} was written by a run of {world} processes; resume it with "
                                  f"{world} (this one has {self.info.world_size})")
        self._rng = state["rng"]
        if self.is_main:
            print(f"resumed from {latest} at step {state['step']}", flush=True)
        return int(state["step"])

    def start(self, step: int) -> None:
        """Per-rank RNG (restored on resume, else seeded with seed + rank) and the progress bar."""
        from tqdm import tqdm

        if self._rng is None:
            seed_everything(self.cfg.seed + self.info.rank)  # from here on each rank draws its own numbers
        else:
            rank = self.info.rank
            ckpt.restore_rng_state(self._rng[rank] if rank < len(self._rng) else self._rng[0])
        self._bar = tqdm(total=self.cfg.max_steps, initial=step, desc=self.name, disable=not self.is_main,
                         file=sys.stdout)
        self._tick, self._logged = time.perf_counter(), step

    # ------------------------------------------------------------------ the step
    def micro_steps(self, ddp: torch.nn.Module):
        """``grad_accum`` contexts, one per micro-batch: DDP's gradient all-reduce is skipped
        (``no_sync``) on all but the last, so it runs once per optimizer step."""
        n = self.cfg.grad_accum
        for i in range(n):
            last = i == n - 1
            yield nullcontext() if (last or not self.distributed) else ddp.no_sync()

    def log_due(self, step: int) -> bool:
        return step % self.cfg.log_every == 0 or step == self.stop

    def log(self, step: int, scalars: dict[str, float], postfix: dict[str, str] | None = None) -> dict:
        """Add ``images_per_s`` and write ``scalars`` to TensorBoard (``train/…``) and the bar."""
        now = time.perf_counter()
        scalars = {**scalars, "images_per_s": self.cfg.batch_size * (step - self._logged) / max(now - self._tick,
                                                                                                  1e-9)}
        self._tick, self._logged = now, step
        self.logger.log({f"train/{k}": v for k, v in scalars.items()}, step)
        self._bar.set_postfix(postfix or {"loss": f"{scalars.get('loss', float('nan')):.4f}"})
        return scalars

    def end_step(self, step: int, model, optimizer, scheduler, extra: dict | None = None,
                 export: Callable[[Path], Path] | None = None) -> None:
        """Progress; a checkpoint every ``checkpoint_every`` steps and at the stop; an export
        every ``export_every`` steps (main process) when ``export`` is given."""
        self._bar.update(1)
        if step % self.cfg.checkpoint_every == 0 or step == self.stop:
            self.save(step, model, optimizer, scheduler, extra)
        every = self.cfg.export_every
        if export is not None and every and step % every == 0 and step < self.cfg.max_steps and self.is_main:
            name = self.dir / self.cfg.export
            export(name.with_name(f"{name.stem}_step_{step:08d}{name.suffix}"))

    def save(self, step: int, model, optimizer, scheduler, extra: dict | None = None) -> None:
        """An atomic checkpoint of everything the run needs to continue (a collective: every rank)."""
        rng = ckpt.gather_rng_states()
        if self.is_main:
            extra = {"samples_per_rank": self.samples_before(step), "world_size": self.info.world_size,
                     **(extra or {})}
            ckpt.save_checkpoint(ckpt.checkpoint_path(self.dir, step), step=step, model=model,
                                 optimizer=optimizer, scheduler=scheduler, config=config_dict(self.cfg),
                                 rng=rng, extra=extra)
            ckpt.prune_checkpoints(self.dir, self.cfg.keep_checkpoints)
        ddist.barrier()

    # ------------------------------------------------------------------ the end
    def finish(self, step: int, export: Callable[[Path], Path]) -> Path | None:
        """Close the bar and the logger; at ``max_steps`` the main process exports the model to
        ``run_dir/export`` (``export(path) -> path``). Returns that path, or None when the run
        stopped early (``exit_at``)."""
        if self._bar is not None:
            self._bar.close()
        self.logger.close()
        exported = None
        if step >= self.cfg.max_steps and self.is_main:
            exported = export(self.dir / self.cfg.export)
            print(f"exported {exported}", flush=True)
        ddist.barrier()
        self._ddp = None  # before the process group goes (gloo may abort on a live DDP reducer)
        ddist.cleanup()
        return exported
