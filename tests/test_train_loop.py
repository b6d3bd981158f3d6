"""The PixelCLIP training loop end to end on tiny data: the seeded data stream, the three
mask sources (store, SA-1B shards, DINO k-means online), the CLI (train, show-prompts,
export), the exported student in ``labelless eval``, and two gloo processes (DDP)."""

from __future__ import annotations

import argparse
import json
import os
import socket
from functools import partial

import pytest
import torch
from _train_fixtures import (  # noqa: F401 (one_thread: autouse)
    make_sa1b_tar,
    make_store,
    one_thread,
    save_tiny_dino,
    tiny_values,
)

from labelless.data.stream import SA1BStream, stream_start
from labelless.train.common import SeededSampler, lr_factor
from labelless.train.config import make_config
from labelless.train.pixelclip.config import PixelCLIPConfig
from labelless.train.pixelclip.data import augment_config, augmented_sample
from labelless.train.pixelclip.loop import train_pixelclip


def run_cli(argv: list[str]) -> int:
    from labelless.train.cli import add_train_parser

    parser = argparse.ArgumentParser(prog="labelless")
    add_train_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


# ------------------------------------------------------------------ pure pieces


def take(it, n):
    return [next(it) for _ in range(n)]


def test_seeded_sampler_splits_and_resumes():
    full = SeededSampler(10, seed=3, rank=1, world_size=3)
    items = take(iter(full), 12)  # 4 per epoch on this rank (10 padded to 12)
    assert len(full) == 4 and len({i for i, _ in items[:4]}) == 4
    resumed = take(iter(SeededSampler(10, seed=3, rank=1, world_size=3, start=5)), 7)
    assert resumed == items[5:]
    epoch0 = [i for r in range(3) for i, _ in take(iter(SeededSampler(10, 3, r, 3)), 4)]
    assert sorted(set(epoch0)) == list(range(10))  # the ranks together cover the data
    assert items[:4] != items[4:8]  # reshuffled every epoch


def test_lr_schedule_is_the_papers():
    assert lr_factor(0, 10000, 0, 0.5) == 1.0
    assert abs(lr_factor(5000, 10000, 0, 0.5) - 0.75) < 1e-12
    assert lr_factor(10000, 10000, 0, 0.5) == 0.5
    assert lr_factor(0, 100, warmup=10) == 0.1


def test_stream_start_follows_round_robin_workers():
    # 5 batches delivered by 2 workers: worker 0 made batches 0, 2, 4; worker 1 made 1, 3
    assert [stream_start(5, w, 2) for w in (0, 1)] == [3, 2]
    assert stream_start(7, 0, 1) == 7


def test_sa1b_stream_resumes_where_it_stopped(tmp_path):
    shard = make_sa1b_tar(tmp_path / "sa_000000.tar", n=5)
    cfg = make_config(PixelCLIPConfig, tiny_values(tmp_path, masks="sa1b", sa1b_tars=[str(shard)]))
    aug = partial(augmented_sample, augment_config(cfg))
    names = [s["name"] for s in take(iter(SA1BStream([str(shard)], aug, 2, 0, 0, 1)), 7)]
    assert names[:5] == [f"sa_{i}" for i in range(5)] and names[5:] == names[:2]  # next epoch
    later = take(iter(SA1BStream([str(shard)], aug, 2, 0, 0, 1, start_batches=1)), 3)
    first = take(iter(SA1BStream([str(shard)], aug, 2, 0, 0, 1)), 5)
    for a, b in zip(later, first[2:]):
        assert a["name"] == b["name"] and torch.equal(a["image_strong"], b["image_strong"])
    # two ranks share one shard by name hashing: disjoint
    r0 = {s["name"] for s in take(iter(SA1BStream([str(shard)], aug, 1, 0, 0, 2)), 2)}
    r1 = {s["name"] for s in take(iter(SA1BStream([str(shard)], aug, 1, 0, 1, 2)), 2)}
    assert not r0 & r1


# ------------------------------------------------------------------ runs


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_store(root)
    return root


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """A run through the CLI: YAML config + key=value overrides, TensorBoard on."""
    import yaml

    run = tmp_path_factory.mktemp("run")
    values = tiny_values(run, masks="store", mask_store=str(data / "store"), tensorboard=True)
    (run / "cfg.yaml").write_text(yaml.safe_dump({k: v for k, v in values.items() if k != "max_steps"}))
    assert run_cli(["train", "pixelclip", "--config", str(run / "cfg.yaml"), "max_steps=3", "grad_accum=2"]) == 0
    return run


def test_run_writes_config_checkpoints_scalars_and_export(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from labelless.train.checkpoint import list_checkpoints, read_checkpoint

    assert (trained / "config.yaml").is_file() and "grad_accum: 2" in (trained / "config.yaml").read_text()
    assert [s for s, _ in list_checkpoints(trained)] == [2, 3]
    state = read_checkpoint(trained / "checkpoints" / "step_00000003.pt")
    assert state["config"]["max_steps"] == 3 and state["extra"]["samples_per_rank"] == 3 * 2 * 1
    acc = EventAccumulator(str(trained / "tb"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    for tag in ("train/loss", "train/grad_norm", "train/lr_clip", "train/lr_prompts", "train/lr_decoder",
                "train/clusters_used", "train/num_masks"):
        assert tag in tags, tag
    lrs = [e.value for e in acc.Scalars("train/lr_decoder")]
    assert lrs[0] < 2e-4 and abs(lrs[-1] - 1e-4) < 1e-9  # cosine from 2e-4 to 0.5x
    assert abs(acc.Scalars("train/lr_clip")[-1].value - 1e-6) < 1e-12  # x0.01
    assert (trained / "clip.pt").is_file()


def test_export_is_a_labelless_clip_checkpoint_for_eval(trained, data, tmp_path):
    from labelless.cli import main as labelless_main

    out = tmp_path / "eval"
    code = labelless_main(["eval", "--dataset", "folder", "--data-root", str(data), "--split", "all",
                           "--model", "tiny-vit", "--pretrained", str(trained / "clip.pt"), "--mode", "pixelclip",
                           "--out", str(out), "--templates", "single"])
    assert code == 0
    assert json.loads((out / "results.json").read_text())["num_images"] == 6

    assert run_cli(["train", "export", "--run", str(trained), "--out", str(tmp_path / "again.pt")]) == 0
    a = torch.load(trained / "clip.pt", weights_only=True)
    b = torch.load(tmp_path / "again.pt", weights_only=True)
    assert a["model"] == b["model"] == "tiny-vit" and a["dense_mode"] == "pixelclip"
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])


def test_show_prompts(trained, data, tmp_path, capsys):
    out = tmp_path / "prompts"
    assert run_cli(["train", "show-prompts", "--run", str(trained), "--vocabulary", str(data / "classes.txt"),
                    "--images", str(data / "images"), "--max-images", "2", "--top", "3", "--out", str(out)]) == 0
    result = json.loads((out / "clusters.json").read_text())
    assert result["num_clusters"] == 4 and result["step"] == 3
    assert all(len(c["nearest"]) == 3 for c in result["clusters"])
    assert abs(sum(c["pixel_fraction"] for c in result["clusters"]) - 1) < 1e-3
    assert len(result["images"]) == 2
    assert (out / result["images"][0]["overlay"]).is_file() and (out / result["images"][0]["clusters"]).is_file()
    assert "nearest classes" in capsys.readouterr().out


def test_show_prompts_tsne_map(trained, data, tmp_path):
    """PixelCLIP Fig. 5: the prompts and the class embeddings in one t-SNE map, each prompt named by
    its nearest class (checked against a cosine argmax computed here from the run's own parts)."""
    import math

    import torch.nn.functional as F

    from labelless.train.pixelclip.build import load_run
    from labelless.vocab.encode import build_vocabulary

    out = tmp_path / "tsne"
    assert run_cli(["train", "show-prompts", "--run", str(trained), "--vocabulary", str(data / "classes.txt"),
                    "--out", str(out), "--seed", "1"]) == 0
    tsne = json.loads((out / "prompts_tsne.json").read_text())
    assert (out / "prompts_tsne.png").stat().st_size > 1000
    assert len(tsne["prompts"]) == 4 and len(tsne["classes"]) == 4
    assert tsne["perplexity"] == 7 / 3 and tsne["seed"] == 1  # 8 points: min(30, (8 - 1) / 3), below 8
    points = [(p["x"], p["y"]) for p in tsne["prompts"] + tsne["classes"]]
    assert all(math.isfinite(v) for p in points for v in p) and len(set(points)) == 8

    model, _, _ = load_run(str(trained), "cpu")
    names = [line.strip() for line in (data / "classes.txt").read_text().splitlines() if line.strip()]
    classes = build_vocabulary(model.student, names, "imagenet_select").class_embeddings()
    cos = F.normalize(model.cluster_embeddings().float(), dim=-1) @ F.normalize(classes.float(), dim=-1).T
    assert [p["nearest"][0] for p in tsne["prompts"]] == [names[j] for j in cos.argmax(1).tolist()]

    from labelless.errors import SettingError
    from labelless.train.pixelclip.show_prompts import tsne_points

    with pytest.raises(SettingError, match="below the 8 points"):
        tsne_points(model.cluster_embeddings(), classes, perplexity=8)
    assert tsne_points(model.cluster_embeddings()[:1], classes[:1])[0].shape == (2, 2)  # 2 points: perplexity 1/3


def test_sa1b_and_dino_sources(tmp_path, data):
    shard = make_sa1b_tar(tmp_path / "shards" / "sa_000000.tar")
    seen = []
    cfg = make_config(PixelCLIPConfig, tiny_values(tmp_path / "sa1b", masks="sa1b", max_steps=2,
                                               sa1b_tars=[str(tmp_path / "shards" / "*.tar")]))
    train_pixelclip(cfg, on_step=lambda step, model, s: seen.append(s))
    assert all(s["num_masks"] > 0 and s["loss"] > 0 for s in seen)

    dino = save_tiny_dino(tmp_path / "dino")
    seen.clear()
    for source in ({"images": str(data / "images")}, {"sa1b_tars": [str(shard)]}):
        cfg = make_config(PixelCLIPConfig, tiny_values(tmp_path / f"dino{len(seen)}", masks="dino", dino_model=str(dino),
                                                   dino_k=3, max_steps=1, dino_remove_cutout=True, **source))
        train_pixelclip(cfg, on_step=lambda step, model, s: seen.append(s))
    assert len(seen) == 2 and all(0 < s["num_masks"] <= 2 * 3 for s in seen)


def test_bad_batch_split_is_refused(tmp_path, data):
    cfg = make_config(PixelCLIPConfig, tiny_values(tmp_path, masks="store", mask_store=str(data / "store"),
                                               batch_size=3, grad_accum=2))
    with pytest.raises(ValueError, match="multiple of world size"):
        train_pixelclip(cfg)


# ------------------------------------------------------------------ DDP (gloo, 2 processes)


def _ddp_worker(rank: int, world: int, port: int, values: dict, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    cfg = make_config(PixelCLIPConfig, values)

    def on_step(step, model, scalars):
        if step == cfg.max_steps:
            torch.save({k: v.clone() for k, v in model.state_dict().items()}, f"{out}/rank{rank}.pt")

    train_pixelclip(cfg, on_step=on_step)


def test_two_gloo_processes_stay_in_sync(tmp_path, data):
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    values = tiny_values(tmp_path / "run", masks="store", mask_store=str(data / "store"), max_steps=2)
    # fork: the children start with torch and open_clip already imported (seconds saved)
    mp.start_processes(_ddp_worker, args=(2, port, values, str(tmp_path)), nprocs=2, join=True,
                       start_method="fork" if "fork" in mp.get_all_start_methods() else "spawn")
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)  # gradients averaged, teacher updated alike
    from labelless.train.checkpoint import list_checkpoints, read_checkpoint

    found = list_checkpoints(tmp_path / "run")
    assert [s for s, _ in found] == [2]  # written once, by rank 0
    state = read_checkpoint(found[-1][1])
    assert state["extra"]["world_size"] == 2 and len(state["rng"]) == 2
    assert (tmp_path / "run" / "clip.pt").is_file()
