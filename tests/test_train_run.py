"""The shared run scaffold (``train/run.py``) under both loops: kill-and-resume is exact
for CLIP training too, gradient accumulation equals a bigger batch where the loss allows
it (a per-sample loss; InfoNCE with cached features), and the scaffold's own pieces."""

from __future__ import annotations

import pytest
import torch
from _train_fixtures import one_thread  # noqa: F401 (autouse: one intra-op thread)
from test_train_clip import make_folder

from labelless.errors import ConfigError
from labelless.train import checkpoint as ckpt
from labelless.train.clip.config import ClipConfig
from labelless.train.clip.loop import train_clip
from labelless.train.common import SeededSampler
from labelless.train.config import RunConfig, make_config
from labelless.train.losses import contrastive_accumulation, info_nce
from labelless.train.run import Run


def _clip_cfg(tmp_path, data, run: str, **over) -> ClipConfig:
    values = dict(run_dir=str(tmp_path / run), model="tiny-vit", data="benchmark", dataset="folder",
                  data_root=str(data), split="train", batch_size=8, max_steps=4, lr=2e-3, warmup_steps=1,
                  weight_decay=0.0, num_workers=0, log_every=1, checkpoint_every=2, tensorboard=False,
                  crops_per_image=2, device="cpu", min_class_fraction=0.1)
    values.update(over)
    return make_config(ClipConfig, values)


def _weights(path):
    return torch.load(path, weights_only=True)["state_dict"]


def test_clip_kill_and_resume_is_exact(tmp_path):
    data = make_folder(tmp_path / "data")
    torch.manual_seed(0)
    straight = train_clip(_clip_cfg(tmp_path, data, "straight"))

    class Killed(RuntimeError):
        pass

    def kill_at_3(step, model, scalars):
        if step == 3:
            raise Killed

    torch.manual_seed(0)
    with pytest.raises(Killed):
        train_clip(_clip_cfg(tmp_path, data, "killed"), on_step=kill_at_3)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "killed")] == [2]
    torch.manual_seed(0)
    resumed = train_clip(_clip_cfg(tmp_path, data, "killed"))
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_clip_accumulation_is_the_bigger_batch(tmp_path):
    """batch 8 in one micro-batch vs 4 micro-batches of 2: InfoNCE over the same 8 pairs
    (cached features), so the same weights up to float summation order."""
    data = make_folder(tmp_path / "data")
    torch.manual_seed(0)
    one = train_clip(_clip_cfg(tmp_path, data, "one", max_steps=3))
    torch.manual_seed(0)
    four = train_clip(_clip_cfg(tmp_path, data, "four", max_steps=3, grad_accum=4))
    a, b = _weights(one), _weights(four)
    worst = max(float((a[k] - b[k]).abs().max()) for k in a if a[k].is_floating_point())
    assert worst < 1e-4, worst
    torch.manual_seed(0)
    naive = train_clip(_clip_cfg(tmp_path, data, "naive", max_steps=3, batch_size=2))
    c = _weights(naive)
    assert max(float((a[k] - c[k]).abs().max()) for k in a if a[k].is_floating_point()) > 1e-3


def test_contrastive_accumulation_gradient_equals_the_full_batch():
    """Image tower, text features and the learnable temperature all get the full batch's
    gradient (the temperature once, not once per micro-step), and a per-sample term added
    per micro-batch sums to the big batch's."""
    from contextlib import nullcontext

    torch.manual_seed(0)
    lin = torch.nn.Linear(6, 4)
    temp = torch.nn.Parameter(torch.tensor(2.3))
    x, y = torch.randn(8, 6), torch.randn(8, 4, requires_grad=True)
    ids = torch.tensor([0, 1, 2, 3, 4, 1, 6, 7])  # a duplicate pair: not a negative

    def encode(mb):
        return {"image": torch.nn.functional.normalize(lin(mb["x"]), dim=-1),
                "text": torch.nn.functional.normalize(mb["y"], dim=-1), "logit_scale": temp.exp(),
                "loss": (lin(mb["x"]) ** 2).sum() / 8}  # a per-sample term, normalised for the step

    out = encode({"x": x, "y": y})
    full = info_nce(out["image"], out["text"], out["logit_scale"], ids)
    (full + out["loss"]).backward()
    ref = [t.grad.clone() for t in (lin.weight, lin.bias, temp, y)]
    for t in (lin.weight, lin.bias, temp, y):
        t.grad = None
    micro = [{"x": x[i:i + 2], "y": y[i:i + 2]} for i in range(0, 8, 2)]
    losses = contrastive_accumulation(encode, micro, [ids[i:i + 2] for i in range(0, 8, 2)],
                                      [nullcontext() for _ in micro])
    torch.testing.assert_close(losses["contrastive"], full.detach())
    torch.testing.assert_close(losses["extra"], out["loss"].detach())
    for got, want in zip((lin.weight.grad, lin.bias.grad, temp.grad, y.grad), ref):
        torch.testing.assert_close(got, want)


def _toy_loop(tmp_path, name: str, **over) -> torch.nn.Module:
    """A per-sample-loss loop written over the scaffold, as a method's loop is."""
    cfg = make_config(RunConfig, dict(run_dir=str(tmp_path / name), device="cpu", batch_size=8, max_steps=5,
                                      tensorboard=False, checkpoint_every=100, **over))
    run = Run(cfg, "toy")
    model = torch.nn.Linear(3, 1)
    ddp = run.wrap(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    step = run.resume(model, opt, None)
    g = torch.Generator().manual_seed(0)
    xs, ys = torch.randn(64, 3, generator=g), torch.randn(64, 1, generator=g)
    order = iter(SeededSampler(64, 0, start=run.samples_before(step)))
    run.start(step)
    while step < run.stop:
        opt.zero_grad()
        for sync in run.micro_steps(ddp):
            idx = [next(order)[0] for _ in range(run.micro_batch)]
            with sync:
                loss = ((ddp(xs[idx]) - ys[idx]) ** 2).mean()  # per-sample mean
                (loss / cfg.grad_accum).backward()
        opt.step()
        step += 1
        run.end_step(step, model, opt, None)
    del ddp
    run.finish(step, lambda path: path)
    return model


def test_scaffold_accumulation_equals_a_bigger_batch_for_a_per_sample_loss(tmp_path):
    a = _toy_loop(tmp_path, "big")
    b = _toy_loop(tmp_path, "accum", grad_accum=4)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)


def test_scaffold_checks_its_settings(tmp_path):
    with pytest.raises(ConfigError, match="multiple of world size"):
        Run(make_config(RunConfig, dict(run_dir=str(tmp_path / "r"), device="cpu", batch_size=6, grad_accum=4)),
            "toy")
    with pytest.raises(ConfigError, match="grad_accum"):
        make_config(RunConfig, dict(grad_accum=0))


def _clip_ddp_worker(rank: int, world: int, port: int, values: dict) -> None:
    import os

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.manual_seed(0)
    train_clip(make_config(ClipConfig, values))


def test_clip_accumulation_under_two_processes_is_the_one_process_batch(tmp_path):
    """2 gloo ranks × 2 micro-batches × 2 pairs = the same 8 pairs per step as one process
    with batch 8 (negatives gathered over ranks and micro-batches): the same weights."""
    import socket

    import torch.multiprocessing as mp

    data = make_folder(tmp_path / "data")
    torch.manual_seed(0)
    single = train_clip(_clip_cfg(tmp_path, data, "single", max_steps=2, checkpoint_every=100))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    values = vars(_clip_cfg(tmp_path, data, "ddp", max_steps=2, checkpoint_every=100, grad_accum=2))
    mp.start_processes(_clip_ddp_worker, args=(2, port, values), nprocs=2, join=True,
                       start_method="fork" if "fork" in mp.get_all_start_methods() else "spawn")
    a, b = _weights(single), _weights(tmp_path / "ddp" / "clip.pt")
    worst = max(float((a[k] - b[k]).abs().max()) for k in a if a[k].is_floating_point())
    assert worst < 1e-4, worst
