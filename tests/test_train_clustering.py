"""PixelCLIP online clustering: every pure function against a reference written differently,
and Sinkhorn under 2-process DDP (gloo, CPU) against one process on the whole batch."""

import json
import math
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from labelless.masks.pooling import mask_pool, prepare_masks
from labelless.train.pixelclip.clustering import assign_clusters, merge_masks, pixelclip_loss, sinkhorn


def _random_masks(b, m, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(b, m, h, w, dtype=torch.bool)
    for i in range(b):
        for j in range(m):
            y0, x0 = torch.randint(0, h - 2, (2,), generator=g).tolist()
            hh, ww = torch.randint(1, h // 2, (2,), generator=g).tolist()
            masks[i, j, y0:y0 + hh, x0:x0 + ww] = True
    return masks


# ----------------------------------------------------------------------------- prepare_masks
def test_prepare_masks_nearest_and_drops_tiny_masks():
    masks = torch.zeros(1, 3, 8, 8, dtype=torch.bool)
    masks[0, 0, :4, :4] = True  # 16 px → 4 px at 4×4
    masks[0, 1, 1, 1] = True  # 1 px, not sampled at 4×4 (nearest takes even rows/cols)
    masks[0, 2, 2, 2:6] = True  # 4 px → 2 px at 4×4 (row 2 → 1, cols 2, 4 → 1, 2)
    valid = torch.tensor([[True, True, True]])
    out, ok = prepare_masks(masks, valid, 4)
    # reference: nearest = pick source index floor(i * 8 / 4) = 2i
    ref = masks[:, :, ::2, ::2]
    assert torch.equal(out[0, 0], ref[0, 0]) and torch.equal(out[0, 2], ref[0, 2])
    assert ok.tolist() == [[True, False, True]]
    assert not out[0, 1].any()
    # a 1-pixel mask left after resizing is dropped too (official: keep when sum > 1)
    one = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    one[0, 0, 0, 0] = True
    assert prepare_masks(one, torch.tensor([[True]]), 4)[1].tolist() == [[False]]
    # padding (valid False) stays invalid and zero
    _, ok = prepare_masks(masks, torch.tensor([[False, True, True]]), 8)
    assert ok.tolist() == [[False, False, True]]


# ----------------------------------------------------------------------------- mask_pool
def test_mask_pool_matches_loop_reference():
    torch.manual_seed(0)
    b, c, h, w, m, size = 2, 5, 4, 6, 4, 12
    feats = torch.randn(b, c, h, w)
    masks = _random_masks(b, m, size, size)
    valid = torch.tensor([[True, True, False, True], [True, True, True, True]])
    out = mask_pool(feats, masks, valid)
    assert out.shape == (b, m, c)

    # reference: bilinear upsampling with grid_sample at output pixel centres
    # (align_corners=False convention), then a plain mean over the mask's pixels
    ys = (torch.arange(size) + 0.5) / size * 2 - 1
    gy, gx = torch.meshgrid(ys, ys, indexing="ij")
    grid = torch.stack([gx, gy], -1)[None].expand(b, -1, -1, -1)
    up = F.grid_sample(feats, grid, mode="bilinear", padding_mode="border", align_corners=False)
    for i in range(b):
        for j in range(m):
            if not valid[i, j]:
                assert torch.all(out[i, j] == 0)
                continue
            sel = up[i][:, masks[i, j]]  # C×P
            torch.testing.assert_close(out[i, j], sel.mean(dim=1), atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- sinkhorn
def _sinkhorn_numpy(logits: np.ndarray, iters: int) -> np.ndarray:
    """SwAV Sinkhorn in the M×k layout with explicit loops (float64)."""
    m, k = logits.shape
    q = np.zeros_like(logits, dtype=np.float64)
    for i in range(m):  # softmax over clusters of every mask
        e = np.exp(logits[i] - logits[i].max())
        q[i] = e / e.sum()
    q /= q.sum()
    for _ in range(iters):
        for j in range(k):  # every cluster's total → 1/k
            q[:, j] /= q[:, j].sum() * k
        for i in range(m):  # every mask's total → 1/m
            q[i, :] /= q[i, :].sum() * m
    return q * m


def test_sinkhorn_matches_numpy_loop():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(37, 8, generator=g) * 10
    for iters in (1, 3, 7):
        q = sinkhorn(logits, iters=iters)
        ref = _sinkhorn_numpy(logits.double().numpy(), iters)
        np.testing.assert_allclose(q.numpy(), ref, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(q.sum(dim=1), torch.ones(37))


def test_sinkhorn_marginals_approach_uniform_cluster_totals():
    g = torch.Generator().manual_seed(2)
    m, k = 64, 8
    logits = torch.randn(m, k, generator=g) * 3 + torch.linspace(0, 4, k)  # biased towards the last cluster
    devs = []
    for iters in (0, 1, 3, 50):
        q = sinkhorn(logits, iters=iters)
        devs.append((q.sum(dim=0) - m / k).abs().max().item())
    assert devs[0] > devs[1] > devs[2] > devs[3]
    assert devs[3] < 1e-3
    # equipartition balances the hard assignment: the largest cluster shrinks vs a plain argmax
    sizes_sinkhorn = torch.bincount(assign_clusters(sinkhorn(logits, 3)), minlength=k)
    sizes_argmax = torch.bincount(logits.argmax(1), minlength=k)
    assert sizes_sinkhorn.max() < sizes_argmax.max()


def test_sinkhorn_is_stable_for_large_logits_and_has_no_grad():
    logits = torch.tensor([[1000.0, 0.0, -1000.0], [0.0, 1000.0, 0.0]], requires_grad=True)
    q = sinkhorn(logits * 1.0)
    assert torch.isfinite(q).all() and not q.requires_grad
    assert sinkhorn(torch.zeros(0, 4)).shape == (0, 4)


def test_assign_clusters_is_rowwise_argmax():
    q = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3], [0.0, 0.1, 0.9]])
    assert assign_clusters(q).tolist() == [1, 0, 2]
    g = torch.Generator().manual_seed(3)
    q = torch.rand(20, 6, generator=g)
    ref = [max(range(6), key=lambda j: q[i, j].item()) for i in range(20)]
    assert assign_clusters(q).tolist() == ref


# ----------------------------------------------------------------------------- merge + loss
def test_merge_masks_is_union_per_cluster():
    b, m, k, size = 2, 5, 4, 10
    masks = _random_masks(b, m, size, size, seed=4)
    valid = torch.tensor([[True, True, True, False, True], [True, False, True, True, True]])
    assign = torch.tensor([[0, 2, 0, 1, 3], [1, 1, 1, 0, 3]])
    targets, covered = merge_masks(masks, valid, assign, k)
    assert targets.shape == (b, k, size, size) and targets.dtype == torch.float32
    for i in range(b):
        cov = torch.zeros(size, size, dtype=torch.bool)
        for c in range(k):
            union = torch.zeros(size, size, dtype=torch.bool)
            for j in range(m):
                if valid[i, j] and assign[i, j] == c:
                    union |= masks[i, j]
            assert torch.equal(targets[i, c].bool(), union), (i, c)
            cov |= union
        assert torch.equal(covered[i], cov)
    assert set(targets.unique().tolist()) <= {0.0, 1.0}


def test_pixelclip_loss_matches_manual_bce_on_covered_pixels():
    g = torch.Generator().manual_seed(5)
    b, k, s = 2, 3, 6
    logits = torch.randn(b, k, s, s, generator=g) * 3
    targets = (torch.rand(b, k, s, s, generator=g) > 0.5).float()
    covered = torch.rand(b, s, s, generator=g) > 0.4
    loss = pixelclip_loss(logits, targets, covered)
    total, count = 0.0, 0
    for i in range(b):
        for y in range(s):
            for x in range(s):
                if not covered[i, y, x]:
                    continue
                for c in range(k):
                    z, t = logits[i, c, y, x].item(), targets[i, c, y, x].item()
                    p = 1 / (1 + math.exp(-z))
                    total += -(t * math.log(p) + (1 - t) * math.log(1 - p))
                    count += 1
    assert loss.item() == pytest.approx(total / count, rel=1e-5)
    # uncovered pixels do not matter
    logits2 = logits.clone()
    logits2.permute(0, 2, 3, 1)[~covered] = 1e3
    assert pixelclip_loss(logits2, targets, covered).item() == pytest.approx(loss.item(), rel=1e-6)
    # nothing covered: 0, and backward still works
    z = logits.clone().requires_grad_(True)
    zero = pixelclip_loss(z, targets, torch.zeros_like(covered))
    zero.backward()
    assert zero.item() == 0.0 and torch.all(z.grad == 0)


# ----------------------------------------------------------------------------- DDP
_WORKER = textwrap.dedent("""
    import json, os, sys
    import torch, torch.distributed as dist
    from labelless.train.pixelclip.clustering import sinkhorn, assign_clusters
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    data = torch.load(sys.argv[1])
    out = {}
    for name, cuts in data["splits"].items():
        lo, hi = cuts[rank], cuts[rank + 1]
        q = sinkhorn(data["logits"][lo:hi], iters=3)
        out[name] = {"q": q.tolist(), "assign": assign_clusters(q).tolist()}
    with open(sys.argv[2] + f".{rank}.json", "w") as f:
        json.dump(out, f)
    dist.barrier()
    sys.stdout.flush()
    os._exit(0)  # see tests/conftest.py GLOO_EXIT: no gloo teardown, which can abort ("terminate called")
""")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sinkhorn_two_process_ddp_equals_one_process(tmp_path):
    g = torch.Generator().manual_seed(6)
    m, k = 40, 8
    # scale 100 × cosine, as PixelCLIP's ViT logits
    logits = 100 * F.normalize(torch.randn(m, 16, generator=g), dim=-1) @ F.normalize(
        torch.randn(k, 16, generator=g), dim=-1).T
    splits = {"halves": [0, 20, 40], "uneven": [0, 13, 40], "empty_rank": [0, 40, 40]}
    torch.save({"logits": logits, "splits": splits}, tmp_path / "in.pt")
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": "2",
           "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "in.pt"), str(tmp_path / "out")],
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for r in range(2)]
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0, out.decode()[-3000:]
    results = [json.loads((tmp_path / f"out.{r}.json").read_text()) for r in range(2)]

    q_one = sinkhorn(logits, iters=3)
    a_one = assign_clusters(q_one)
    assert a_one.unique().numel() > 1
    for name in splits:
        q = torch.tensor(results[0][name]["q"] + results[1][name]["q"]).reshape(m, k)
        a = torch.tensor(results[0][name]["assign"] + results[1][name]["assign"])
        assert torch.equal(a, a_one), name
        torch.testing.assert_close(q, q_one, atol=1e-5, rtol=1e-4)
    # without the all-reduce, two halves would NOT give the global result
    q_local = torch.cat([sinkhorn(logits[:13], 3, distributed=False), sinkhorn(logits[13:], 3, distributed=False)])
    assert not torch.allclose(q_local, q_one, atol=1e-3)
