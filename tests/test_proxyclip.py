"""Mode proxyclip (ProxyCLIP, ECCV 2024) against a written-out computation of the official
formula (github mc-lan/ProxyCLIP ``custom_attn``), on the tiny open_clip ViT with the real
DINOv2-S (../shared/weights/dinov2-small) and tiny random DINO (v1) ViTs as the VFM."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

pytest.importorskip("transformers")

from _fab_datasets import random_folder_dataset  # noqa: E402
from _tiny_models import save_tiny_dino_vit  # noqa: E402

from labelless.cli import main  # noqa: E402
from labelless.errors import SettingError  # noqa: E402
from labelless.loader import load_scorer  # noqa: E402
from labelless.masks.dino import load_dino  # noqa: E402
from labelless.models.proxyclip import proxy_attention, resample_grid  # noqa: E402
from labelless.scorers import ProxyCLIPScorer  # noqa: E402
from labelless.segment import Protocol, Segmenter  # noqa: E402

REAL_DINOV2 = Path(__file__).resolve().parents[1].parent / "shared" / "weights" / "dinov2-small"
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
TINY = ["--model", "tiny-vit", "--pretrained", "none"]


@pytest.fixture(scope="module")
def dinov2():
    if not (REAL_DINOV2 / "config.json").is_file():
        pytest.skip(f"the real DINOv2-S weights are not at {REAL_DINOV2} (a save_pretrained folder)")
    return load_dino(REAL_DINOV2)


@pytest.fixture(scope="module")
def vfms(tmp_path_factory, dinov2):
    """name -> (DinoBackbone, patch size): the real DINOv2-S (patch 14) and random DINO v1
    ViTs with patch 8 (CLIP's own) and 16."""
    out = {"dinov2-s": dinov2}
    for patch in (8, 16):
        out[f"dino-p{patch}"] = load_dino(save_tiny_dino_vit(tmp_path_factory.mktemp(f"dino{patch}"), patch))
    return out


@pytest.fixture(scope="module")
def photos(shared_data):
    """The 3 ADE20K val photos as float [0, 1] ``3×H×W``. Real photos, because DINOv2-S tokens
    of synthetic images are nearly parallel (mean cosine 0.96-0.99: β·mean > 1 masks every
    entry, the case the official code leaves as NaN); of these photos 0.43-0.55 at 64 px."""
    from labelless.io import load_image

    paths = sorted((shared_data / "ade20k-samples" / "images").glob("*.jpg"))
    if len(paths) < 3:
        pytest.skip(f"the ADE20K sample photos are not under {shared_data / 'ade20k-samples'}")
    return [load_image(p).float() / 255 for p in paths]


def _resized(photos, size, idx=(0, 1)) -> torch.Tensor:
    return torch.cat([F.interpolate(photos[i][None], size=size, mode="bilinear", antialias=True) for i in idx])


# ----------------------------------------------------------------------------- the reference

def _bilinear_matrix(n_out: int, n_in: int) -> torch.Tensor:
    """``n_out×n_in`` 1-D linear interpolation with half-pixel centres (align_corners=False),
    source positions clamped at 0 and neighbours at the last pixel."""
    R = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        src = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = min(int(math.floor(src)), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        lam = src - i0
        R[i, i0] += 1 - lam
        R[i, i1] += lam
    return R


def _vfm_tokens(backbone, images01: torch.Tensor) -> torch.Tensor:
    """The VFM's last-layer patch tokens ``B×H'×W'×C`` straight from the Hugging Face model:
    the [0, 1] images at the nearest patch multiple, ImageNet mean/std."""
    p = backbone.patch_size
    H, W = images01.shape[-2:]
    size = (max(1, round(H / p)) * p, max(1, round(W / p)) * p)
    x = images01 if size == (H, W) else F.interpolate(images01, size=size, mode="bilinear", align_corners=False)
    kwargs = {"interpolate_pos_encoding": True} if backbone.family == "dino" else {}
    with torch.no_grad():
        seq = backbone.model(pixel_values=(x - IMAGENET_MEAN) / IMAGENET_STD, **kwargs).last_hidden_state
    return seq[:, 1:].reshape(x.shape[0], size[0] // p, size[1] // p, -1)


def _cosines(f: torch.Tensor) -> torch.Tensor:
    n = f.norm(dim=1)
    return torch.einsum("mc,nc->mn", f, f) / (n[:, None] * n[None, :])


def _reference(clip, images01, feats, beta=1.2, gamma=3.0, attention=None) -> torch.Tensor:
    """ProxyCLIP written out in float64: CLIP's last-block input from open_clip's own forward
    (a hook), then per image S = cos(f_m, f_n), A = γ(S − β·mean S), weights exp(A)/Σ over
    the A ≥ 0 entries (``attention`` replaces them when given), per head the values of
    ln_1(x) on CLIP's 8×8 grid resampled to the VFM grid by the bilinear matrices, A·v,
    heads concatenated, out_proj, ln_post, proj → ``B×D×H'×W'``."""
    visual = copy.deepcopy(clip.clip.visual).double()
    x = ((images01 - clip.mean) / clip.std).double()
    blk = visual.transformer.resblocks[-1]
    caught = {}
    hook = blk.register_forward_pre_hook(lambda m, args: caught.setdefault("x", args[0]))
    with torch.no_grad():
        visual(x)
    hook.remove()
    X = caught["x"]  # B×(1+64)×W, the last block's input
    B, width = X.shape[0], X.shape[-1]
    heads, d = blk.attn.num_heads, width // blk.attn.num_heads
    h, w = images01.shape[-2] // 8, images01.shape[-1] // 8
    Hp, Wp, C = feats.shape[1:]
    Ry, Rx = _bilinear_matrix(Hp, h), _bilinear_matrix(Wp, w)
    Wqkv, bqkv = blk.attn.in_proj_weight.detach(), blk.attn.in_proj_bias.detach()
    out = torch.zeros(B, Hp * Wp, width, dtype=torch.float64)
    with torch.no_grad():
        y = blk.ln_1(X)[:, 1:]  # patch tokens
        for b in range(B):
            if attention is None:
                S = _cosines(feats[b].reshape(-1, C).double())
                A = gamma * (S - beta * S.mean())
                assert (A.diagonal() > 0).all()  # the formula is defined (no all-masked row)
                E = torch.where(A >= 0, A.exp(), torch.zeros_like(A))
                P = E / E.sum(dim=1, keepdim=True)
            else:
                P = attention[b].double()
            per_head = []
            for hd in range(heads):
                rows = slice(2 * width + hd * d, 2 * width + (hd + 1) * d)
                v = (y[b] @ Wqkv[rows].T + bqkv[rows]).reshape(h, w, d)
                v = torch.einsum("Yy,yxc,Xx->YXc", Ry, v, Rx).reshape(Hp * Wp, d)
                per_head.append(P @ v)
            out[b] = blk.attn.out_proj(torch.cat(per_head, dim=1))
        z = visual.ln_post(out) @ visual.proj
    return z.transpose(1, 2).reshape(B, -1, Hp, Wp)


# ----------------------------------------------------------------------------- the formula

@pytest.mark.parametrize("vfm,grid", [("dinov2-s", (5, 5)), ("dino-p8", (8, 8)), ("dino-p16", (4, 4))])
def test_proxyclip_equals_the_written_out_formula(tiny_vit, vfms, photos, vfm, grid):
    """Real DINOv2-S (64 px → 70 px input, 5×5 patches), a patch-8 DINO (CLIP's own 8×8 grid)
    and a patch-16 one (4×4): the mode equals the reference, on the VFM's grid."""
    scorer = ProxyCLIPScorer(tiny_vit, vfms[vfm])
    x = _resized(photos, (64, 64))
    with torch.no_grad():
        ours = scorer._image_forward(scorer.normalize(x))
    feats = _vfm_tokens(vfms[vfm], x)
    assert feats.shape[1:3] == grid and ours.shape == (2, 64, *grid)
    torch.testing.assert_close(ours.double(), _reference(tiny_vit, x, feats), rtol=1e-4, atol=1e-4)


def test_beta_masks_and_gamma_sharpens_as_the_formula_says(dinov2, photos):
    """On real DINOv2-S features: a weight is 0 exactly where S < β·mean(S) (off the
    diagonal); on the kept entries log w_mn − γ·S_mn is the same for every n of a row; β
    never changes the kept entries' ratios, γ never changes which are kept."""
    feats = _vfm_tokens(dinov2, _resized(photos, (112, 112), (2,)))[0]  # 8×8×384
    guide = feats.permute(2, 0, 1)[None]
    S = _cosines(feats.reshape(-1, feats.shape[-1]))
    eye = torch.eye(S.shape[0], dtype=torch.bool)
    kept = {}
    for beta in (0.0, 0.8, 1.2):
        for gamma in (1.0, 3.0, 10.0):
            W = proxy_attention(guide, beta, gamma)[0]
            keep = (S >= beta * S.mean()) | eye
            assert torch.equal(W > 0, keep), (beta, gamma)
            torch.testing.assert_close(W.sum(1), torch.ones(len(W)))
            resid = torch.where(keep, W.log() - gamma * S, torch.nan)
            spread = resid.nan_to_num(-torch.inf).amax(1) - resid.nan_to_num(torch.inf).amin(1)  # per row
            assert spread.max() < 1e-4, (beta, gamma)
            kept[beta] = keep
    assert kept[0.0].sum() > kept[0.8].sum() > kept[1.2].sum() > len(S)  # larger β, fewer kept
    assert (kept[1.2] <= kept[0.8]).all() and (kept[0.8] <= kept[0.0]).all()


def test_beta_and_gamma_change_the_features(tiny_vit, dinov2, photos):
    """Other β or γ give other features; a β so large that every similarity is masked leaves
    each patch its own (resampled) value — the diagonal is never masked, no NaN."""
    x = _resized(photos, (64, 64), (1, 2))
    feats = _vfm_tokens(dinov2, x)

    def run(beta, gamma):
        with torch.no_grad():
            return ProxyCLIPScorer(tiny_vit, dinov2, beta, gamma)._image_forward(tiny_vit.normalize(x))

    base = run(1.2, 3.0)
    for other in (run(0.6, 3.0), run(1.2, 10.0)):
        assert (other - base).abs().max() > 1e-3
    alone = run(1e3, 3.0)
    eye = torch.eye(25).expand(2, 25, 25)
    assert torch.isfinite(alone).all()
    torch.testing.assert_close(alone.double(), _reference(tiny_vit, x, feats, attention=eye), rtol=1e-4, atol=1e-4)


def test_values_are_resampled_bilinearly_to_the_vfm_grid():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(2, 8 * 12, 5, generator=g, dtype=torch.float64)
    got = resample_grid(tokens, (8, 12), (5, 7))
    ref = torch.einsum("Yy,byxc,Xx->bYXc", _bilinear_matrix(5, 8), tokens.reshape(2, 8, 12, 5),
                       _bilinear_matrix(7, 12)).reshape(2, 35, 5)
    torch.testing.assert_close(got, ref)
    assert resample_grid(tokens, (8, 12), (8, 12)) is tokens


def test_non_square_input_comes_out_on_the_vfm_grid(tiny_vit, dinov2, photos):
    """64×96 → CLIP 8×12 patches; DINOv2 sees 70×98 (nearest multiples of 14): 5×7 features."""
    scorer = ProxyCLIPScorer(tiny_vit, dinov2)
    with torch.no_grad():
        f = scorer._image_forward(scorer.normalize(_resized(photos, (64, 96), (0,))))
    assert f.shape == (1, 64, 5, 7) and torch.isfinite(f).all()


# ----------------------------------------------------------------------------- in the harness

def _count_batches(module, sizes: list):
    """Record the batch size of every forward of ``module`` (pixel_values keyword or first argument)."""
    def hook(m, args, kwargs):
        sizes.append((kwargs.get("pixel_values") if "pixel_values" in kwargs else args[0]).shape[0])
    return module.register_forward_pre_hook(hook, with_kwargs=True)


@pytest.mark.parametrize("protocol,shapes,batches", [
    ("squash", [(3, 64, 64)] * 3, [2, 1]),  # features 5×5 upsampled to the 64×64 feature grid
    ("slide", [(3, 64, 96), (3, 80, 64), (3, 64, 96)], [2, 2, 2]),  # 2 windows each, 2 per batch
    ("whole", [(3, 5, 7), (3, 6, 5), (3, 5, 7)], [1, 1, 1]),  # 64×96 → DINOv2 70×98; 80×64 → 84×70
])
def test_every_protocol_runs_the_vfm_batched_beside_clip(tiny_vit, dinov2, photos, protocol, shapes, batches):
    """Images 40×60, 50×40, 40×60 at short side 64: score shapes per protocol, and the VFM
    gets exactly the batches CLIP gets."""
    scorer = ProxyCLIPScorer(tiny_vit, dinov2)
    seg = Segmenter(scorer, scorer.vocabulary(["sky", "road", "car"], "single"),
                    Protocol(protocol, short_side=64, stride=32), batch_size=2)
    sizes = [(40, 60), (50, 40), (40, 60)]
    images = [(_resized(photos, hw, (i,))[0] * 255).round().to(torch.uint8) for i, hw in enumerate(sizes)]
    clip_batches, vfm_batches = [], []
    hooks = [_count_batches(tiny_vit.clip.visual.conv1, clip_batches), _count_batches(dinov2.model, vfm_batches)]
    try:
        scores = seg.scores(images)
        labels = seg.predict(images)
    finally:
        for h in hooks:
            h.remove()
    assert [tuple(s.shape) for s in scores] == shapes
    assert [tuple(lab.shape) for lab in labels] == sizes
    assert vfm_batches == clip_batches == batches * 2  # scores, then predict


def test_precision_and_compile_cover_the_vfm(tiny_vit, dinov2, photos, monkeypatch):
    scorer = ProxyCLIPScorer(tiny_vit, dinov2)
    vocab = scorer.vocabulary(["sky", "car"], "single")
    x = scorer.normalize(_resized(photos, (64, 64), (0,)))
    seen = []  # (autocast on, dtype of the VFM's last key projection) per VFM forward
    proj = next(m for n, m in dinov2.model.named_modules() if n.endswith(("k_proj", "key")))
    hook = proj.register_forward_hook(lambda m, a, out: seen.append((torch.is_autocast_enabled("cpu"), out.dtype)))
    calls = []

    def fake_compile(fn):
        def compiled(images):
            calls.append(len(seen))
            out = fn(images)
            calls.append(len(seen))
            return out
        return compiled

    monkeypatch.setattr(torch, "compile", fake_compile)
    try:
        ref = scorer.scores(x, vocab)
        scorer.configure("bf16")
        low = scorer.scores(x, vocab)
        scorer.configure("fp32", compile=True)
        scorer.scores(x, vocab)
    finally:
        hook.remove()
    assert seen[0] == (False, torch.float32) and seen[1] == (True, torch.bfloat16)
    assert low.dtype == torch.float32 and not torch.equal(low, ref)
    assert calls == [2, 3]  # the VFM ran inside the compiled image forward


# ----------------------------------------------------------------------------- loader and CLI

def test_loader_settings_and_errors(tiny_vit, tiny_convnext, monkeypatch):
    scorer = load_scorer("tiny-vit", "none", "proxyclip", "cpu", vfm=str(REAL_DINOV2), proxy_beta=0.9)
    assert isinstance(scorer, ProxyCLIPScorer) and (scorer.beta, scorer.gamma) == (0.9, 3.0)
    with pytest.raises(SettingError, match="--vfm given, but VFM settings apply only to --mode proxyclip"):
        load_scorer("tiny-vit", "none", "sclip", "cpu", vfm=str(REAL_DINOV2))
    with pytest.raises(SettingError, match="--proxy-gamma"):
        load_scorer("tiny-vit", "none", "proxyclip", "cpu", vfm=str(REAL_DINOV2), proxy_gamma=0.0)
    with pytest.raises(SettingError, match="proxy_features"):
        tiny_vit.dense_features(torch.zeros(1, 3, 64, 64), "proxyclip")
    with pytest.raises(SettingError, match="needs a ViT"):
        ProxyCLIPScorer(tiny_convnext, scorer.vfm)
    import labelless.models.clip as clip_module

    def no_clip(*a, **k):
        raise AssertionError("CLIP built before the VFM was loaded")

    monkeypatch.setattr(clip_module, "build_clip", no_clip)
    from labelless.errors import WeightsError

    with pytest.raises(WeightsError, match="DINO model folder not found"):
        load_scorer("tiny-vit", "none", "proxyclip", "cpu", vfm="/no/such/dino")


def test_cli_segment_and_eval_with_proxyclip(tmp_path, dinov2, capsys):
    data = random_folder_dataset(tmp_path / "d", n=2, ignore_top_row=False)
    out = tmp_path / "e"
    proxy = ["--mode", "proxyclip", "--vfm", str(REAL_DINOV2)]
    assert main(["eval", "--dataset", "folder", "--data-root", str(data), "--split", "train", "--out", str(out),
                 "--protocol", "slide", "--short-side", "64", "--stride", "32", "--proxy-gamma", "5",
                 *TINY, *proxy]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["mode"] == "proxyclip" and res["vfm"] == str(REAL_DINOV2) and res["vfm_family"] == "dinov2"
    assert (res["vfm_patch_size"], res["proxy_beta"], res["proxy_gamma"]) == (14, 1.2, 5.0)
    assert res["num_images"] == 2
    seg = tmp_path / "s"
    assert main(["segment", str(data / "images"), "--labels", "sky,road", "--out", str(seg), *TINY, *proxy]) == 0
    assert np.array(Image.open(seg / "im0.png")).shape == (24, 32)
    capsys.readouterr()


def test_cli_refuses_proxyclip_without_a_loadable_vfm(tmp_path, capsys):
    data = random_folder_dataset(tmp_path / "d", n=2, ignore_top_row=False)
    base = ["eval", "--dataset", "folder", "--data-root", str(data), "--split", "train", "--out", str(tmp_path / "e")]
    assert main([*base, *TINY, "--mode", "proxyclip"]) == 2  # the paper's default, not cached here
    err = capsys.readouterr().err
    assert "facebook/dino-vitb8" in err and "--vfm DIR" in err
    assert main([*base, *TINY, "--mode", "proxyclip", "--vfm", str(tmp_path / "nothing")]) == 2
    assert "DINO model folder not found" in capsys.readouterr().err
    assert main([*base, *TINY, "--mode", "naclip", "--proxy-beta", "1"]) == 2
    assert "--proxy-beta" in capsys.readouterr().err
    assert not (tmp_path / "e" / "results.json").exists()


def test_models_lists_proxyclip(capsys):
    assert main(["models"]) == 0
    assert "proxyclip" in capsys.readouterr().out
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert "proxyclip" in rows["tiny-vit"]["modes"] and "proxyclip" not in rows["tiny-convnext"]["modes"]
