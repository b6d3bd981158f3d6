"""PixelCLIPModel: trainable sets, optimiser groups, teacher, one step's wiring, a few
training steps that lower the loss, and export to a labelless CLIP checkpoint."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from labelless.masks.pooling import prepare_masks
from labelless.models.clip import build_clip, read_state_dict
from labelless.train.pixelclip.clustering import merge_masks, pixelclip_loss, sinkhorn
from labelless.train.pixelclip.model import PixelCLIPModel


def _model(name="tiny-vit", seed=0, **kw):
    torch.manual_seed(seed)
    return PixelCLIPModel(build_clip(name, None), **{"num_clusters": 8, "mask_size": 32, **kw})


def _batch(b=2, size=64, mask_size=32, seed=0):
    """Images in [0, 1] of 4 vertical stripes of random colours (+ a little noise), and
    6 masks per image: the 4 stripes and two quadrants (the second image's last one padding)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.zeros(b, 3, size, size)
    masks = torch.zeros(b, 6, mask_size, mask_size, dtype=torch.bool)
    q, p = mask_size // 4, size // 4
    for i in range(b):
        for j in range(4):
            images[i, :, :, j * p:(j + 1) * p] = torch.rand(3, 1, 1, generator=g)
            masks[i, j, :, j * q:(j + 1) * q] = True
        masks[i, 4, : 2 * q, : 2 * q] = True
        masks[i, 5, 2 * q:, 2 * q:] = True
    images = (images + 0.05 * torch.randn(images.shape, generator=g)).clamp(0, 1)
    valid = torch.ones(b, 6, dtype=torch.bool)
    valid[1, 5] = False
    strong = (images * 0.8 + 0.1).clamp(0, 1)
    return {"image_weak": images, "image_strong": strong, "masks": masks, "valid": valid}


# ----------------------------------------------------------------------------- parameters
def test_trainable_sets_vit_and_convnext():
    vit = _model("tiny-vit")
    names = {n for n, _ in vit.named_trainable_parameters()}
    visual = {n for n in names if n.startswith("student.clip.visual.")}
    expected = {f"student.clip.visual.{n}" for n, _ in vit.student.clip.visual.named_parameters()
                if "attn" in n or "position" in n}
    assert visual == expected and "student.clip.visual.positional_embedding" in visual
    assert len(expected) == 1 + 4 * 2  # positions + in/out proj weight/bias of 2 blocks
    assert not any(n.startswith("student.clip.") and not n.startswith("student.clip.visual.") for n in names)
    assert not any(n.startswith("teacher.") for n in names)
    assert "prompts.prompts" in names
    decoder = {f"decoder.{n}" for n, _ in vit.decoder.named_parameters()}
    assert decoder <= names
    assert names == visual | decoder | {"prompts.prompts"}
    assert vit.logit_scale == 100.0 and vit.feature_mode == "pixelclip"

    cnx = _model("tiny-convnext")
    names = {n for n, _ in cnx.named_trainable_parameters()}
    visual = {n for n in names if n.startswith("student.clip.visual.")}
    assert visual == {f"student.clip.visual.{n}" for n, _ in cnx.student.clip.visual.named_parameters()}
    assert cnx.logit_scale == 1.0 and cnx.feature_mode == "vanilla"
    assert len(cnx.trainable_parameters()) == len(names)


def test_param_groups_lr_multipliers_and_weight_decay():
    m = _model("tiny-convnext")
    groups = m.param_groups(2e-4, clip_mult=0.01, prompt_mult=10.0, weight_decay=1e-4)
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"clip", "clip_norm", "prompts", "decoder", "decoder_norm"}
    assert by_name["clip"]["lr"] == pytest.approx(2e-6) and by_name["clip_norm"]["lr"] == pytest.approx(2e-6)
    assert by_name["prompts"]["lr"] == pytest.approx(2e-3) and by_name["decoder"]["lr"] == pytest.approx(2e-4)
    assert by_name["prompts"]["params"] == [m.prompts.prompts]
    assert by_name["clip"]["weight_decay"] == 1e-4 and by_name["clip_norm"]["weight_decay"] == 0.0
    assert by_name["decoder_norm"]["weight_decay"] == 0.0
    assert all(g["lr"] == pytest.approx(2e-4 * g["lr_mult"]) for g in groups)
    # every trainable parameter in exactly one group
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in m.trainable_parameters()}
    torch.optim.AdamW(groups)  # accepted as is


# ----------------------------------------------------------------------------- teacher
def test_teacher_is_frozen_and_updates_by_ema_only_when_asked():
    m = _model("tiny-vit", ema_gamma=0.9, mask_size=16)
    m.train()
    small = _batch(size=32, mask_size=16)
    out = m.forward_train(small)
    out["loss"].backward()
    _all_trainable_get_gradients(m)
    assert all(p.grad is None and not p.requires_grad for p in m.teacher.parameters())
    assert out["stats"]["teacher_updates"].item() == 0
    teacher_before = {k: v.clone() for k, v in m.teacher.state_dict().items()}
    opt = torch.optim.AdamW(m.param_groups(1e-2))
    opt.step()
    m.forward_train(small)  # forward never touches the teacher
    for k, v in m.teacher.state_dict().items():
        assert torch.equal(v, teacher_before[k])
    m.update_teacher()
    student = m.student.clip.visual.state_dict()
    changed = 0
    for k, v in m.teacher.state_dict().items():
        torch.testing.assert_close(v, 0.9 * teacher_before[k] + 0.1 * student[k])
        changed += not torch.equal(v, teacher_before[k])
    assert changed > 0 and m.num_teacher_updates.item() == 1
    assert m.forward_train(small)["stats"]["teacher_updates"].item() == 1
    # masks given at another resolution are resized to mask_size (same assignment here)
    big = _batch(size=32, mask_size=64)
    torch.testing.assert_close(m.forward_train(big)["loss"], m.forward_train(small)["loss"])


# ----------------------------------------------------------------------------- one step
def test_forward_train_wiring():
    m = _model("tiny-vit")
    m.eval()
    batch = _batch()
    out = m.forward_train(batch)
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    assert out["assign"].shape == (2, 6)
    stats = out["stats"]
    assert stats["num_masks"].item() == 11 and stats["coverage"].item() == 1.0
    assert 1 <= stats["clusters_used"].item() <= 8

    # assignments depend on the weak (teacher) image only
    other_strong = {**batch, "image_strong": torch.rand_like(batch["image_strong"])}
    assert torch.equal(m.forward_train(other_strong)["assign"], out["assign"])

    # the loss is BCE between the decoder on the student's strong-image cosine maps and
    # the union of the masks per assigned cluster
    with torch.no_grad():
        masks, valid = prepare_masks(batch["masks"], batch["valid"], 32)
        targets, covered = merge_masks(masks, valid, out["assign"], 8)
        feats = F.normalize(m.student.dense_features(m.student.normalize(batch["image_strong"]), "pixelclip"), dim=1)
        cos = torch.einsum("kd,bdhw->bkhw", m.cluster_embeddings(), feats)
        logits = m.decoder(cos.flatten(0, 1)[:, None]).view(2, 8, 32, 32)
        ref = pixelclip_loss(logits, targets, covered)
    assert out["loss"].item() == pytest.approx(ref.item(), rel=1e-5)

    # the teacher starts as the student: its mask features give the same clusters as the
    # student's on the weak image
    with torch.no_grad():
        t_feats = m.student.dense_features(m.student.normalize(batch["image_weak"]), "pixelclip")
        up = F.interpolate(t_feats, size=(32, 32), mode="bilinear", align_corners=False)
        pooled = torch.stack([torch.stack([up[b][:, masks[b, j]].mean(1) for j in range(6)]) for b in range(2)])
        q = sinkhorn(100 * F.normalize(pooled[valid], dim=-1) @ m.cluster_embeddings().T)
    assert torch.equal(q.argmax(1), out["assign"][valid])


def _all_trainable_get_gradients(m):
    """DDP without find_unused_parameters needs a gradient for every trainable parameter."""
    missing = [n for n, p in m.named_trainable_parameters() if p.grad is None]
    assert not missing, missing[:5]


def test_forward_train_gradients_and_edge_cases():
    m = _model("tiny-convnext", decoder_size=16)
    m.train()
    out = m.forward_train(_batch())
    out["loss"].backward()
    _all_trainable_get_gradients(m)
    assert m.prompts.prompts.grad.abs().sum() > 0
    assert m.decoder.proj.weight.grad.abs().sum() > 0
    assert sum(p.grad.abs().sum() for p in m.student.clip.visual.parameters()) > 0
    assert all(p.grad is None for n, p in m.student.clip.named_parameters() if not n.startswith("visual."))
    # no masks at all: loss 0, backward still reaches every trainable parameter
    m.zero_grad(set_to_none=True)
    empty = {**_batch(), "masks": torch.zeros(2, 0, 32, 32, dtype=torch.bool),
             "valid": torch.zeros(2, 0, dtype=torch.bool)}
    out = m.forward_train(empty)
    assert out["loss"].item() == 0.0 and out["stats"]["num_masks"].item() == 0
    out["loss"].backward()
    _all_trainable_get_gradients(m)


def test_a_few_steps_lower_the_loss():
    """AdamW on param_groups, the loop's order: update_teacher → forward → backward → step.
    32 px images (4×4 grid) and 16 px masks keep it fast on a CPU."""
    m = _model("tiny-vit", seed=1, num_clusters=4, mask_size=16)
    m.train()
    opt = torch.optim.AdamW(m.param_groups(2e-3, clip_mult=0.1, prompt_mult=10.0, weight_decay=1e-4))
    batch = _batch(size=32, mask_size=16, seed=1)
    losses = []
    for _ in range(30):
        m.update_teacher()
        loss = m.forward_train(batch)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.trainable_parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) / 3 < 0.7 * losses[0], losses  # seeds 0-5 reach < 0.4×


# ----------------------------------------------------------------------------- export
def test_export_clip_roundtrip(tmp_path):
    m = _model("tiny-vit")
    m.train()
    opt = torch.optim.AdamW(m.param_groups(1e-2, clip_mult=1.0))
    m.forward_train(_batch())["loss"].backward()
    opt.step()
    path = m.export_clip(tmp_path / "clip.pt", step=1)
    _, meta = read_state_dict(path)
    assert meta["trained_with"] == "pixelclip" and meta["dense_mode"] == "pixelclip" and meta["step"] == 1
    loaded = build_clip("tiny-vit", str(path))
    x = torch.rand(2, 3, 64, 64)
    m.eval()
    with torch.no_grad():
        ref = m.student.dense_features(m.student.normalize(x), "pixelclip")
        got = loaded.dense_features(loaded.normalize(x), "pixelclip")
        fresh = build_clip("tiny-vit", None).dense_features(loaded.normalize(x), "pixelclip")
    torch.testing.assert_close(got, ref)
    assert not torch.allclose(fresh, ref)


# ----------------------------------------------------------------------------- DDP
_DDP_WORKER = textwrap.dedent("""
    import json, os, sys
    import torch, torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from labelless.models.clip import build_clip
    from labelless.train.pixelclip.model import PixelCLIPModel
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    batch = torch.load(sys.argv[1])
    torch.manual_seed(0)
    model = PixelCLIPModel(build_clip("tiny-vit", None), num_clusters=4, mask_size=16)
    model.train()
    ddp = DistributedDataParallel(model)  # no find_unused_parameters: every trainable param is used
    model.update_teacher()
    out = ddp({k: v[rank:rank + 1] for k, v in batch.items()})  # one image per rank
    out["loss"].backward()
    with open(sys.argv[2] + f".{rank}.json", "w") as f:
        json.dump({"assign": out["assign"][0].tolist(), "grad": model.prompts.prompts.grad.flatten()[:8].tolist()}, f)
    dist.barrier()
    sys.stdout.flush()
    os._exit(0)  # see tests/conftest.py GLOO_EXIT: no gloo teardown, which can abort ("terminate called")
""")


def test_ddp_two_processes_cluster_the_global_batch(tmp_path):
    """Two gloo ranks with one image each assign masks exactly as one process on both images."""
    batch = _batch(size=32, mask_size=16, seed=3)
    batch["valid"][0, 3] = False  # uneven mask counts per rank
    torch.save(batch, tmp_path / "batch.pt")
    script = tmp_path / "worker.py"
    script.write_text(_DDP_WORKER)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2",
           "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "batch.pt"), str(tmp_path / "out")],
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for r in range(2)]
    for p in procs:
        out, _ = p.communicate(timeout=180)
        assert p.returncode == 0, out.decode()[-3000:]
    res = [json.loads((tmp_path / f"out.{r}.json").read_text()) for r in range(2)]
    assert res[0]["grad"] == pytest.approx(res[1]["grad"])  # gradients all-reduced

    torch.manual_seed(0)
    single = PixelCLIPModel(build_clip("tiny-vit", None), num_clusters=4, mask_size=16)
    single.train()
    single.update_teacher()
    assign = single.forward_train(batch)["assign"]
    assert assign.tolist() == [res[0]["assign"], res[1]["assign"]]


def test_a_timm_vit_student_trains_attention_and_positions():
    """A LiT-style timm DINOv2 tower (class token, layer scale): PixelCLIP's ViT recipe applies
    (pixelclip features, scale 100, the blocks' attention and pos_embed trainable), and one
    step reaches every trainable parameter."""
    from labelless.models.clip import OPENAI_MEAN, OPENAI_STD, clip_from_spec, tiny_model_config

    cfg = {"embed_dim": 64, "text_cfg": tiny_model_config("tiny-vit")["text_cfg"],
           "vision_cfg": {"timm_model_name": "vit_small_patch14_dinov2", "timm_pool": "token", "timm_proj": "linear",
                          "image_size": 64, "timm_model_kwargs": {"img_size": 64, "patch_size": 8, "embed_dim": 32,
                                                                  "depth": 2, "num_heads": 2}}}
    torch.manual_seed(0)
    dense = clip_from_spec({"model": "lit-like", "model_cfg": cfg, "mean": OPENAI_MEAN, "std": OPENAI_STD})
    m = PixelCLIPModel(dense, num_clusters=8, mask_size=32)
    assert m.feature_mode == "pixelclip" and m.logit_scale == 100.0 and m.finetune == "attention"
    visual = {n.removeprefix("student.clip.visual.") for n, _ in m.named_trainable_parameters()
              if n.startswith("student.clip.visual.")}
    assert visual == {"trunk.pos_embed"} | {f"trunk.blocks.{i}.attn.{p}.{w}" for i in range(2)
                                            for p in ("qkv", "proj") for w in ("weight", "bias")}
    m.train()
    out = m.forward_train(_batch())
    out["loss"].backward()
    _all_trainable_get_gradients(m)
