"""Dense modes of timm-tower CLIPs (``models/timm_dense.py``) against independent computations
with timm's own modules, on tiny towers built from open_clip model configs (a timm name plus
small ``timm_model_kwargs``):

- vanilla: timm's ``forward_features`` tokens, class / register tokens dropped, each token
  through the tower's head as a one-token image (timm's own ``AttentionPoolLatent`` forward
  for MAP heads), ``fc_norm``, the trunk's ``head`` and open_clip's ``TimmModel.head``;
- the other modes: the block's own attention module called on a modified copy (attention =
  identity through an additive mask; q-q / k-k through a copy whose k (q) projection is its q
  (k) projection; NACLIP's Gaussian as the additive mask), as ``tests/test_dense.py`` does for
  open_clip's ViT;
- position resizing: a twin trunk built with timm's ``dynamic_img_size`` (timm resamples the
  positions and rebuilds the rotary embedding itself) on non-square inputs.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from labelless.cli import main
from labelless.errors import SettingError, WeightsError
from labelless.models.clip import OPENAI_MEAN, OPENAI_STD, clip_from_spec, list_models, make_tokenizer
from labelless.models.proxyclip import proxy_attention

TEXT = {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}
SMALL = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}

# name -> (timm architecture, timm_model_kwargs, timm_pool, timm_proj, embed_dim)
TOWERS = {
    # SigLIP: no class token, MAP head, no projection (the MAP head's output is the embedding)
    "siglip": ("vit_base_patch16_siglip_224", SMALL, "map", "none", 32),
    # DINOv2 with 4 registers: class token, registers without positions (no_embed_class), layer scale
    "dinov2-reg": ("vit_small_patch14_reg4_dinov2", SMALL, "token", "linear", 24),
    # no class token, one register, average pool (fc_norm), an MLP head (timm's test_vit2)
    "gap-reg": ("test_vit2", {"img_size": 32, "patch_size": 8, "depth": 2, "dynamic_img_size": False},
                "avg", "mlp", 24),
    # EVA02: separate q / k / v, rotary embeddings, SwiGLU, inner attention LayerNorm, trunk head
    "eva02": ("eva02_base_patch16_clip_224", {**SMALL, "ref_feat_shape": [4, 4]}, "token", None, 24),
    # PE-Core: AttentionRope with fused qkv, 'xy' rotary grid, pre-norm, class token and a MAP head
    "pe-core": ("vit_pe_core_base_patch16_224", {**SMALL, "ref_feat_shape": [4, 4], "attn_pool_num_heads": 2},
                "map", None, 24),
    # EVA (v1): fused qkv with separate q / v biases, no rotary embedding, average pool
    "eva-fused": ("eva_giant_patch14_224", {**SMALL, "mlp_ratio": 2.0}, "avg", None, 24),
}
CUSTOM = ("maskclip", "pixelclip", "sclip", "clearclip", "naclip")


def tower_cfg(arch, kwargs, pool, proj, embed_dim) -> dict:
    """An open_clip model config; ``custom_text`` as open_clip's SigLIP / EVA02 / PE configs have it."""
    return {"embed_dim": embed_dim, "text_cfg": TEXT, "custom_text": True,
            "vision_cfg": {"timm_model_name": arch, "timm_model_kwargs": dict(kwargs), "timm_pool": pool,
                           "timm_proj": proj, "image_size": 32}}


def build(cfg: dict, seed: int = 0):
    """A DenseCLIP of ``cfg`` whose weights are all moved off timm's init (layer scales of 1e-5,
    zero biases and tokens would hide mistakes)."""
    torch.manual_seed(seed)
    dense = clip_from_spec({"model": "tiny-test", "model_cfg": cfg, "mean": OPENAI_MEAN, "std": OPENAI_STD})
    with torch.no_grad():
        for p in dense.clip.visual.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return dense.eval()


@pytest.fixture(scope="module")
def towers():
    return {name: build(tower_cfg(*spec)) for name, spec in TOWERS.items()}


def _images(h=32, w=32, b=2, seed=1):
    return torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- reference

def _is_eva(trunk):
    from timm.models.eva import Eva

    return isinstance(trunk, Eva)


def _pre_last(trunk, images):
    """timm's own embedding (its ``_pos_embed``: positions, rotary embedding) and blocks 0..L-2."""
    x = trunk.patch_embed(images)
    if _is_eva(trunk):
        x, rope = trunk._pos_embed(x)
    else:
        x, rope = trunk._pos_embed(x), None
    x = trunk.norm_pre(x)
    for blk in trunk.blocks[:-1]:
        x = blk(x, rope=rope) if rope is not None else blk(x)
    return x, rope


def _attn(attn, y, rope, mask=None):
    return attn(y, attn_mask=mask) if rope is None else attn(y, rope=rope, attn_mask=mask)


def _ls(block, i, t):
    ls = getattr(block, f"ls{i}", None)
    if ls is not None:
        return ls(t)
    gamma = getattr(block, f"gamma_{i}")
    return t if gamma is None else gamma * t


def _with(attn, target, source):
    """A copy of ``attn`` whose ``target`` projection (q or k) is its ``source`` projection."""
    m = copy.deepcopy(attn)
    if getattr(m, "qkv", None) is not None:
        a = m.qkv.weight.shape[0] // 3
        rows = {"q": slice(0, a), "k": slice(a, 2 * a)}
        m.qkv.weight.data[rows[target]] = attn.qkv.weight.data[rows[source]]
        if m.qkv.bias is not None:
            m.qkv.bias.data[rows[target]] = attn.qkv.bias.data[rows[source]]
        if getattr(m, "q_bias", None) is not None:  # EvaAttention: q_bias, k_bias (a zero buffer), v_bias
            getattr(m, f"{target}_bias").data.copy_(getattr(attn, f"{source}_bias").data)
    else:
        setattr(m, f"{target}_proj", copy.deepcopy(getattr(attn, f"{source}_proj")))
    setattr(m, f"{target}_norm", copy.deepcopy(getattr(attn, f"{source}_norm")))
    return m


def _pre_proj(attn):
    """A copy of ``attn`` that stops before its output norm and projection (merged heads)."""
    m = copy.deepcopy(attn)
    m.norm, m.proj = torch.nn.Identity(), torch.nn.Identity()
    return m


def _identity(n):
    m = torch.full((n, n), float("-inf"))
    return m.fill_diagonal_(0.0)


def _gaussian(grid, prefix, sigma=5.0):
    h, w = grid
    pts = [(i, j) for i in range(h) for j in range(w)]
    g = torch.zeros(prefix + h * w, prefix + h * w)
    for a, (yi, xi) in enumerate(pts):
        for b, (yj, xj) in enumerate(pts):
            g[prefix + a, prefix + b] = math.exp(-((yi - yj) ** 2 + (xi - xj) ** 2) / (2 * sigma**2))
    return g


def _head_per_token(visual, tokens):
    """Tokens ``B×N×C`` (after the trunk's norm) each through the head as a one-token image."""
    trunk = visual.trunk
    b, n, c = tokens.shape
    one = tokens.reshape(b * n, 1, c)
    pooled = trunk.attn_pool(one) if trunk.attn_pool is not None else one[:, 0]  # timm's own MAP head
    return visual.head(trunk.head(trunk.fc_norm(pooled))).reshape(b, n, -1)


def _finish(visual, x, grid, normed=False):
    trunk = visual.trunk
    t = _head_per_token(visual, (x if normed else trunk.norm(x))[:, trunk.num_prefix_tokens:])
    return t.transpose(1, 2).reshape(t.shape[0], -1, *grid)


def reference(visual, images, mode):
    trunk = visual.trunk
    patch = trunk.patch_embed.patch_size[0]
    grid = (images.shape[-2] // patch, images.shape[-1] // patch)
    if mode == "vanilla":
        return _finish(visual, trunk.forward_features(images), grid, normed=True)  # timm's forward ends in norm
    x, rope = _pre_last(trunk, images)
    blk = trunk.blocks[-1]
    attn, y, n, p = blk.attn, blk.norm1(x), x.shape[1], trunk.num_prefix_tokens
    if mode == "maskclip":  # the whole timm block, attention = identity
        out = blk(x, attn_mask=_identity(n)) if rope is None else blk(x, rope=rope, attn_mask=_identity(n))
        return _finish(visual, out, grid)
    if mode == "pixelclip":
        out = x[:, :1] + _ls(blk, 1, _attn(attn, y, rope, _identity(n)))
    elif mode == "sclip":
        qq, kk = _pre_proj(_with(attn, "k", "q")), _pre_proj(_with(attn, "q", "k"))
        o = _attn(qq, y, rope) + _attn(kk, y, rope)
        out = x + _ls(blk, 1, attn.proj(attn.norm(o)))
    elif mode == "clearclip":
        return _finish(visual, _ls(blk, 1, _attn(_with(attn, "k", "q"), y, rope)), grid)
    elif mode == "naclip":
        return _finish(visual, _ls(blk, 1, _attn(_with(attn, "q", "k"), y, rope, _gaussian(grid, p))), grid)
    out = out + _ls(blk, 2, blk.mlp(blk.norm2(out)))
    return _finish(visual, out, grid)


def _close(a, b):
    assert a.shape == b.shape, (a.shape, b.shape)
    scale = b.abs().max().clamp(min=1.0)
    assert (a - b).abs().max() <= 2e-5 * scale, float((a - b).abs().max())


# ----------------------------------------------------------------------------- tests

@torch.no_grad()
@pytest.mark.parametrize("name", list(TOWERS))
def test_every_mode_equals_timm_reference(towers, name):
    dense = towers[name]
    assert dense.kind == "timm-vit" and dense.stride == 8 and dense.embed_dim == TOWERS[name][4]
    assert dense.encode_text(["a photo of a road"]).shape == (1, dense.embed_dim)
    x = _images()
    for mode in ("vanilla",) + CUSTOM:
        if mode not in dense.modes:
            assert mode == "pixelclip" and dense.clip.visual.trunk.cls_token is None
            continue
        got = dense.dense_features(x, mode)
        assert got.shape == (2, dense.embed_dim, 4, 4)
        _close(got, reference(dense.clip.visual, x, mode))


@torch.no_grad()
def test_modes_differ_and_pixelclip_needs_a_class_token(towers):
    x = _images()
    feats = {m: towers["pe-core"].dense_features(x, m) for m in ("vanilla",) + CUSTOM}
    for a in feats:
        for b in feats:
            assert a == b or not torch.allclose(feats[a], feats[b], atol=1e-4), (a, b)
    assert "pixelclip" not in towers["siglip"].modes and "pixelclip" in towers["dinov2-reg"].modes
    with pytest.raises(SettingError, match="pixelclip"):
        towers["siglip"].dense_features(x, "pixelclip")


@torch.no_grad()
@pytest.mark.parametrize("name", ["siglip", "dinov2-reg", "eva02", "pe-core"])
def test_any_input_size_resamples_positions_as_timm_does(towers, name):
    """Non-square inputs (40×24: a 5×3 grid from positions stored for 4×4) equal a twin built
    with timm's dynamic_img_size, where timm resamples positions and rotary embeddings itself."""
    dense = towers[name]
    arch, kwargs, pool, proj, dim = TOWERS[name]
    twin = build(tower_cfg(arch, {**kwargs, "dynamic_img_size": True}, pool, proj, dim), seed=5)
    twin.clip.visual.load_state_dict(dense.clip.visual.state_dict())
    x = _images(40, 24)
    for mode in ("vanilla", "maskclip", "clearclip", "naclip") + (("pixelclip",) if "pixelclip" in dense.modes else ()):
        got = dense.dense_features(x, mode)
        assert got.shape == (2, dim, 5, 3)
        _close(got, reference(twin.clip.visual, x, mode))


@torch.no_grad()
def test_class_and_register_tokens_are_dropped(towers):
    """5 prefix tokens (CLS + 4 registers) or 1 (a register): h·w locations out, each the
    patch token's own; the registers still act in the attention."""
    for name, prefix in (("dinov2-reg", 5), ("gap-reg", 1)):
        dense = towers[name]
        trunk = dense.clip.visual.trunk
        assert trunk.num_prefix_tokens == prefix
        x = _images()
        base = dense.dense_features(x, "maskclip")
        assert base.shape[-2:] == (4, 4)
        saved = trunk.reg_token.data.clone()
        trunk.reg_token.data.add_(torch.randn_like(saved))  # (a constant shift would vanish in LayerNorm)
        try:
            assert not torch.allclose(dense.dense_features(x, "maskclip"), base, atol=1e-4)
        finally:
            trunk.reg_token.data.copy_(saved)


@torch.no_grad()
def test_map_head_per_location_is_the_head_on_one_token(towers):
    """The MAP head's value path equals timm's AttentionPoolLatent on a one-token sequence,
    and differs from the head's query-key weighted pool of the whole image."""
    from labelless.models.timm_dense import map_value_path

    pool = towers["siglip"].clip.visual.trunk.attn_pool
    tokens = torch.randn(2, 6, 32, generator=torch.Generator().manual_seed(3))
    _close(map_value_path(pool, tokens), pool(tokens.reshape(12, 1, 32)).reshape(2, 6, -1))
    assert not torch.allclose(map_value_path(pool, tokens).mean(1), pool(tokens), atol=1e-4)


@torch.no_grad()
def test_grouped_query_attention_equals_its_expanded_twin():
    """PE-style AttentionRope with one k / v head for two query heads equals the same tower
    with both k / v heads holding that head's weights."""
    arch, kwargs, pool, proj, dim = TOWERS["pe-core"]
    gqa = build(tower_cfg(arch, {**kwargs, "qkv_fused": False, "num_kv_heads": 1}, pool, proj, dim))
    full = build(tower_cfg(arch, {**kwargs, "qkv_fused": False}, pool, proj, dim), seed=3)
    state = gqa.clip.visual.state_dict()
    for key, value in list(state.items()):
        if ".attn.k_proj." in key or ".attn.v_proj." in key:
            state[key] = value.repeat(2, *([1] * (value.dim() - 1)))  # one 16-wide head → two copies
    full.clip.visual.load_state_dict(state)
    x = _images()
    for mode in ("vanilla",) + CUSTOM:
        _close(gqa.dense_features(x, mode), full.dense_features(x, mode))


@torch.no_grad()
@pytest.mark.parametrize("name", ["dinov2-reg", "eva02", "pe-core", "siglip"])
def test_proxyclip_equals_written_out_formula(towers, name):
    dense = towers[name]
    visual, trunk = dense.clip.visual, dense.clip.visual.trunk
    x = _images()
    guide = torch.randn(2, 8, 5, 3, generator=torch.Generator().manual_seed(4))
    got = dense.proxy_features(x, guide, beta=1.2, gamma=3.0)
    t, rope = _pre_last(trunk, x)
    blk, p = trunk.blocks[-1], trunk.num_prefix_tokens
    v = _attn(_pre_proj(blk.attn), blk.norm1(t), rope, _identity(t.shape[1]))[:, p:]  # attention = identity: v
    v = F.interpolate(v.transpose(1, 2).reshape(2, -1, 4, 4), size=(5, 3), mode="bilinear", align_corners=False)
    out = proxy_attention(guide, 1.2, 3.0) @ v.flatten(2).transpose(1, 2)
    out = _ls(blk, 1, blk.attn.proj(blk.attn.norm(out)))
    ref = _head_per_token(visual, trunk.norm(out)).transpose(1, 2).reshape(2, -1, 5, 3)
    _close(got, ref)


def test_unsupported_timm_towers_say_why():
    relpos = tower_cfg("test_vit_relpos", {"img_size": 32, "patch_size": 8, "depth": 2}, "avg", "linear", 24)
    with pytest.raises(SettingError, match="unsupported timm vision tower VisionTransformerRelPos"):
        build(relpos)
    postnorm = tower_cfg("eva02_base_patch16_clip_224", {**SMALL, "use_post_norm": True, "use_rot_pos_emb": False},
                         "token", None, 24)
    with pytest.raises(SettingError, match="EvaBlockPostNorm"):
        build(postnorm)


def test_siglip_tokenizer_offline_says_how_to_give_a_local_folder(monkeypatch):
    import open_clip

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = open_clip.get_model_config("ViT-B-16-SigLIP")
    with pytest.raises(WeightsError, match="local-dir:DIR") as err:
        make_tokenizer("ViT-B-16-SigLIP", cfg)
    assert "timm/ViT-B-16-SigLIP" in str(err.value) and "HF_HOME" in str(err.value)


def test_list_models_has_the_timm_vit_towers():
    rows = {r["name"]: r for r in list_models()}
    for name in ("EVA02-B-16", "ViT-B-16-SigLIP", "ViT-B-16-SigLIP2", "PE-Core-B-16", "tiny-timm-vit"):
        assert rows[name]["kind"] == "timm-vit" and "sclip" in rows[name]["modes"], name
        assert "pixelclip" not in rows[name]["modes"]
    assert rows["EVA02-B-16"]["class_token_modes"] == ["pixelclip"]
    assert rows["ViT-B-16"]["kind"] == "vit" and "pixelclip" in rows["ViT-B-16"]["modes"]
    assert "EVA02-E-14" not in rows  # post-norm blocks


def test_cli_segments_with_the_tiny_timm_vit(tmp_path, capsys):
    from PIL import Image

    Image.new("RGB", (40, 30), (120, 30, 200)).save(tmp_path / "a.png")
    for mode in ("sclip", "auto"):
        out = tmp_path / mode
        assert main(["segment", str(tmp_path / "a.png"), "--labels", "sky,road", "--out", str(out),
                     "--model", "tiny-timm-vit", "--pretrained", "none", "--mode", mode]) == 0
        assert (out / "a.png").is_file()
    assert main(["segment", str(tmp_path / "a.png"), "--labels", "sky,road", "--out", str(tmp_path / "x"),
                 "--model", "tiny-timm-vit", "--pretrained", "none", "--mode", "pixelclip"]) == 2
    assert "class token" in capsys.readouterr().err


def test_local_dir_brings_a_hub_tokenizer_offline(tmp_path, monkeypatch, capsys):
    """The route the offline error gives: a local-dir: folder holding open_clip_config.json
    (a config naming a hub tokenizer), the weights and the tokenizer files segments offline."""
    import json

    from safetensors.torch import save_file

    from labelless.models.clip import clip_from_cfg

    tokenizers = pytest.importorskip("tokenizers")
    from PIL import Image
    from transformers import PreTrainedTokenizerFast

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate("a photo of sky road".split())}}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(tmp_path / "siglip")
    cfg = {"embed_dim": 64, "custom_text": True,
           "vision_cfg": {"timm_model_name": "test_vit", "timm_pool": "map", "timm_proj": "none", "image_size": 224},
           "text_cfg": {**TEXT, "width": 64, "vocab_size": len(vocab), "hf_tokenizer_name": "timm/ViT-B-16-SigLIP",
                        "tokenizer_kwargs": {"clean": "canonicalize"}, "pool_type": "last", "no_causal_mask": True}}
    (tmp_path / "siglip" / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    save_file({k: v.contiguous() for k, v in clip_from_cfg(cfg).state_dict().items()},
              tmp_path / "siglip" / "open_clip_model.safetensors")
    Image.new("RGB", (40, 30), (120, 30, 200)).save(tmp_path / "a.png")
    assert main(["segment", str(tmp_path / "a.png"), "--labels", "sky,road", "--out", str(tmp_path / "out"),
                 "--model", f"local-dir:{tmp_path / 'siglip'}", "--mode", "sclip"]) == 0, capsys.readouterr().err
    assert (tmp_path / "out" / "a.png").is_file()
