"""Training checkpoints: atomic writes, RNG state, and exact resume — on a toy model and
on the PixelCLIP loop (train N steps vs. train, get killed / stop at k, resume to N:
identical weights)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from _train_fixtures import make_store, one_thread, tiny_values  # noqa: F401 (one_thread: autouse)

from labelless.train import checkpoint as ckpt
from labelless.train.common import cosine_scheduler


def test_rng_state_round_trip():
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    state = ckpt.capture_rng_state()
    a = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    ckpt.restore_rng_state(state)
    b = (random.random(), np.random.rand(), torch.rand(3))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])


class Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Dropout(0.3),
                                       torch.nn.Linear(16, 1))
        self.register_buffer("seen", torch.zeros(()))

    def forward(self, x):
        self.seen += x.shape[0]
        return self.net(x)


def toy_run(run_dir, steps: int, stop_at: int | None = None, init_seed: int = 0):
    """Train the toy model; data and dropout draw from the global RNG, so an exact
    resume needs the restored RNG state. Resumes from run_dir when a checkpoint is there."""
    torch.manual_seed(init_seed)
    model = Toy()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    sched = cosine_scheduler(opt, steps, warmup=1, end=0.5)
    step = 0
    torch.manual_seed(123)
    latest = ckpt.latest_checkpoint(run_dir)
    if latest is not None:
        step = ckpt.load_checkpoint(latest, model, opt, sched)["step"]
    while step < (stop_at or steps):
        x = torch.randn(8, 4)
        loss = (model(x) - x.sum(1, keepdim=True)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        ckpt.save_checkpoint(ckpt.checkpoint_path(run_dir, step), step=step, model=model, optimizer=opt,
                             scheduler=sched, config={"steps": steps})
    return model, opt


def test_toy_exact_resume(tmp_path):
    full, full_opt = toy_run(tmp_path / "a", 6)
    toy_run(tmp_path / "b", 6, stop_at=3)
    resumed, resumed_opt = toy_run(tmp_path / "b", 6, init_seed=99)  # other init: all comes from the file
    for (n, p), (_, q) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(p, q), n
    assert full_opt.param_groups[0]["lr"] == resumed_opt.param_groups[0]["lr"]
    saved = ckpt.read_checkpoint(ckpt.latest_checkpoint(tmp_path / "b"))
    assert saved["step"] == 6 and saved["config"] == {"steps": 6}


def test_atomic_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model = Toy()
    good = ckpt.save_checkpoint(ckpt.checkpoint_path(tmp_path, 1), step=1, model=model)
    before = good.read_bytes()

    def broken_save(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        ckpt.save_checkpoint(ckpt.checkpoint_path(tmp_path, 1), step=1, model=model)
    with pytest.raises(OSError):
        ckpt.save_checkpoint(ckpt.checkpoint_path(tmp_path, 2), step=2, model=model)
    monkeypatch.undo()
    assert good.read_bytes() == before
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_00000001.pt"]  # no temp files
    assert ckpt.latest_checkpoint(tmp_path) == good


def test_list_prune_and_errors(tmp_path):
    model = Toy()
    for s in (1, 2, 10):
        ckpt.save_checkpoint(ckpt.checkpoint_path(tmp_path, s), step=s, model=model)
    (tmp_path / "checkpoints" / "notes.txt").write_text("x")
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [1, 2, 10]
    assert ckpt.latest_checkpoint(tmp_path).name == "step_00000010.pt"
    ckpt.prune_checkpoints(tmp_path, keep=2)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [2, 10]
    assert ckpt.latest_checkpoint(tmp_path / "nothing") is None
    torch.save({"a": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a labelless training checkpoint"):
        ckpt.read_checkpoint(tmp_path / "other.pt")


# ------------------------------------------------------------------ the PixelCLIP loop


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("data"))


def _run(run_dir, store, **kw):
    from labelless.train.config import make_config
    from labelless.train.pixelclip.config import PixelCLIPConfig
    from labelless.train.pixelclip.loop import train_pixelclip

    on_step = kw.pop("on_step", None)
    cfg = make_config(PixelCLIPConfig, tiny_values(run_dir, masks="store", mask_store=str(store), **kw))
    return train_pixelclip(cfg, on_step=on_step)


def _final(run_dir):
    return ckpt.read_checkpoint(ckpt.checkpoint_path(run_dir, 4))


def _same(a: dict, b: dict, what: str):
    assert a.keys() == b.keys(), what
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), f"{what}: {k}"
        elif isinstance(a[k], dict):
            _same(a[k], b[k], f"{what}.{k}")
        else:
            assert a[k] == b[k], f"{what}: {k}"


def test_pixelclip_kill_and_resume_is_exact(tmp_path, store):
    """N=4 steps straight vs. killed after step 3 (last checkpoint at 2) + resumed, and
    vs. stopped by exit_at=1 + resumed: identical model, optimizer, scheduler, export."""
    straight = _run(tmp_path / "straight", store)

    class Killed(RuntimeError):
        pass

    def kill_at_3(step, model, scalars):
        if step == 3:
            raise Killed

    with pytest.raises(Killed):
        _run(tmp_path / "killed", store, on_step=kill_at_3)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "killed")] == [2]
    resumed = _run(tmp_path / "killed", store)

    assert _run(tmp_path / "stopped", store, exit_at=1) is None  # no export before the end
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "stopped")] == [1]
    _run(tmp_path / "stopped", store)

    ref = _final(tmp_path / "straight")
    assert ref["model"]["num_teacher_updates"] == 4
    for name in ("killed", "stopped"):
        got = _final(tmp_path / name)
        _same(ref["model"], got["model"], f"{name} model")
        _same(ref["optimizer"], got["optimizer"], f"{name} optimizer")
        _same(ref["scheduler"], got["scheduler"], f"{name} scheduler")
    a = torch.load(straight, weights_only=True)["state_dict"]
    b = torch.load(resumed, weights_only=True)["state_dict"]
    _same(a, b, "exported student")
