"""Training checkpoints: everything needed to continue a run exactly.

A checkpoint ``run_dir/checkpoints/step_00001000.pt`` holds::

    {"format": "labelless-train", "step": int,            # optimizer steps done
     "model": state dict (student, EMA teacher, prompts, decoder: the whole module),
     "optimizer": ..., "scheduler": ...,
     "rng": [per-rank RNG states: python, numpy, torch, cuda],
     "config": the resolved run config (dict), so the model can be rebuilt,
     "extra": {...}}                                       # e.g. the data position

It is written atomically (``torch.save`` to a temp file in the same folder, then
``os.replace``): a crash while saving leaves the previous checkpoint intact and no
half-written file under the final name. Files are read back with
``torch.load(weights_only=True)``, so every value is a tensor or a plain Python value.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import numpy as np
import torch

from labelless.errors import CheckpointError, MissingFileError, describe
from labelless.fileio import atomic_path

FORMAT = "labelless-train"
CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^step_(\d+)\.pt$")


def checkpoint_path(run_dir: str | os.PathLike, step: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"step_{step:08d}.pt"


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(step, path)`` of the complete checkpoints of a run, oldest first."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = _NAME.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


# ------------------------------------------------------------------------- RNG

def capture_rng_state() -> dict:
    """This process's RNG states (python, numpy, torch CPU, every CUDA device), as tensors
    and plain values so that ``weights_only`` loading accepts them."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].cpu().numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["gauss"]))
    torch.set_rng_state(state["torch"].cpu())  # (a checkpoint read with map_location=cuda)
    if "cuda" in state and torch.cuda.is_available():
        states = [s.cpu() for s in state["cuda"]]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
        else:  # a different machine: restore what fits
            for i, s in enumerate(states[: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(s, i)


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def gather_rng_states() -> list[dict]:
    """Every rank's RNG state, in rank order (a collective: call it on all ranks)."""
    import torch.distributed as dist

    mine = capture_rng_state()
    if not (dist.is_available() and dist.is_initialized()):
        return [mine]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, mine)
    return out


# ------------------------------------------------------------------ save / load

def save_checkpoint(path: str | os.PathLike, *, step: int, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer | None = None, scheduler=None,
                    config: dict | None = None, rng: list[dict] | None = None,
                    extra: dict | None = None) -> Path:
    """Write a training checkpoint atomically. ``rng``: per-rank states (default: this
    process's). Call it on the main process only."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "step": int(step),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": rng if rng is not None else [capture_rng_state()],
        "config": config or {},
        "extra": extra or {},
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def read_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Read a training checkpoint (``weights_only``); CheckpointError naming the file if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(f"cannot read training checkpoint {path}: {describe(e)}") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a labelless training checkpoint")
    return ckpt


def load_checkpoint(path: str | os.PathLike, model: torch.nn.Module | None = None,
                    optimizer: torch.optim.Optimizer | None = None, scheduler=None,
                    rank: int = 0, restore_rng: bool = True, map_location="cpu") -> dict:
    """Restore model / optimizer / scheduler (those given) and this rank's RNG state.

    Returns the checkpoint dict (``step``, ``config``, ``extra``, ...).
    """
    ckpt = read_checkpoint(path, map_location)
    if model is not None:
        model.load_state_dict(ckpt["model"])
    if optimizer is not None and ckpt.get("optimizer") is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
    if scheduler is not None and ckpt.get("scheduler") is not None:
        scheduler.load_state_dict(ckpt["scheduler"])
    if restore_rng and ckpt.get("rng"):
        states = ckpt["rng"]
        restore_rng_state(states[rank] if rank < len(states) else states[0])
    return ckpt


def prune_checkpoints(run_dir: str | os.PathLike, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints (``keep <= 0``: delete none)."""
    if keep <= 0:
        return []
    found = list_checkpoints(run_dir)
    gone = [p for _, p in found[:-keep]]
    for p in gone:
        p.unlink(missing_ok=True)
    return gone
