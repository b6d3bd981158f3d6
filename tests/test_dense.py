"""Dense modes against independent computations built from open_clip's / PyTorch's own modules.

The trick: every last-block variant is a standard ``nn.MultiheadAttention`` call with a
modified copy of the block's weights or an additive attention mask:
- identity attention (MaskCLIP, PixelCLIP): a mask of -inf off the diagonal;
- q-q attention (ClearCLIP): a copy whose key projection is the query projection;
- k-k attention (NACLIP): a copy whose query projection is the key projection, with the
  Gaussian prior as the additive float mask.
"""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from labelless.models.dense import (
    VIT_MODES,
    gaussian_window,
    resize_pos_embed,
    vit_dense_features,
)


def _images(b=2, h=64, w=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, h, w, generator=g)


def _pre_last(visual, x):
    """open_clip's own embedding + all blocks but the last (native input size only)."""
    t = visual._embeds(x)
    for blk in visual.transformer.resblocks[:-1]:
        t = blk(t)
    return t


def _finish(visual, t):
    t = visual.ln_post(t) @ visual.proj
    t = t[:, 1:]
    side = int(math.sqrt(t.shape[1]))
    return t.transpose(1, 2).reshape(t.shape[0], -1, side, side)


def _mha_with(attn, q_from=None, k_from=None):
    """A copy of ``attn`` whose q (or k) projection is replaced by another one."""
    m = copy.deepcopy(attn)
    w, b = m.in_proj_weight.data, m.in_proj_bias.data
    d = w.shape[1]
    sl = {"q": slice(0, d), "k": slice(d, 2 * d), "v": slice(2 * d, 3 * d)}
    if q_from:
        w[sl["q"]] = attn.in_proj_weight.data[sl[q_from]]
        b[sl["q"]] = attn.in_proj_bias.data[sl[q_from]]
    if k_from:
        w[sl["k"]] = attn.in_proj_weight.data[sl[k_from]]
        b[sl["k"]] = attn.in_proj_bias.data[sl[k_from]]
    return m


def _identity_mask(n):
    m = torch.full((n, n), float("-inf"))
    m.fill_diagonal_(0.0)
    return m


def _reference(visual, x, mode):
    t = _pre_last(visual, x)
    blk = visual.transformer.resblocks[-1]
    n = t.shape[1]
    y = blk.ln_1(t)
    if mode == "vanilla":
        out = blk(t)
        return _finish(visual, out)
    if mode == "maskclip":
        out = blk(t, attn_mask=_identity_mask(n))  # the whole open_clip block, attention = identity
        return _finish(visual, out)
    if mode == "pixelclip":
        a = blk.attn(y, y, y, need_weights=False, attn_mask=_identity_mask(n))[0]
        out = t[:, :1] + a
        out = out + blk.mlp(blk.ln_2(out))
        return _finish(visual, out)
    qq = _mha_with(blk.attn, k_from="q")
    kk = _mha_with(blk.attn, q_from="k")
    if mode == "clearclip":
        return _finish(visual, qq(y, y, y, need_weights=False)[0])
    if mode == "sclip":
        # out_proj(A1 v + A2 v) = out_proj(A1 v) + out_proj(A2 v) - bias
        a = qq(y, y, y, need_weights=False)[0] + kk(y, y, y, need_weights=False)[0] - blk.attn.out_proj.bias
        out = t + a
        out = out + blk.mlp(blk.ln_2(out))
        return _finish(visual, out)
    if mode == "naclip":
        side = int(math.sqrt(n - 1))
        prior = torch.zeros(n, n)
        for i in range(n - 1):  # patch i at (i // side, i % side)
            for j in range(n - 1):
                dy, dx = i // side - j // side, i % side - j % side
                prior[i + 1, j + 1] = math.exp(-(dy * dy + dx * dx) / (2 * 5.0**2))
        return _finish(visual, kk(y, y, y, need_weights=False, attn_mask=prior)[0])
    raise AssertionError(mode)


@pytest.mark.parametrize("mode", VIT_MODES)
def test_vit_modes_match_reference(tiny_vit, mode):
    visual = tiny_vit.clip.visual
    x = _images()
    with torch.no_grad():
        ours = vit_dense_features(visual, x, mode)
        ref = _reference(visual, x, mode)
    assert ours.shape == (2, 64, 8, 8)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


def test_modes_differ(tiny_vit):
    """Each mode is a different computation (a wrongly wired mode would collapse onto another)."""
    x = _images()
    with torch.no_grad():
        outs = {m: vit_dense_features(tiny_vit.clip.visual, x, m) for m in VIT_MODES}
    for a in VIT_MODES:
        for b in VIT_MODES:
            if a < b:
                assert not torch.allclose(outs[a], outs[b], atol=1e-4), (a, b)


def test_vanilla_matches_open_clip_tokens(tiny_vit):
    """Vanilla dense features = open_clip's own output tokens (ln_post) @ proj."""
    visual = copy.deepcopy(tiny_vit.clip.visual)
    visual.output_tokens = True
    x = _images()
    with torch.no_grad():
        pooled, tokens = visual(x)
        ours = vit_dense_features(visual, x, "vanilla")
    ref = (tokens @ visual.proj).transpose(1, 2).reshape(2, -1, 8, 8)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


def test_any_input_size_uses_resized_positions(tiny_vit):
    """At 96×128 the result equals open_clip's forward of a model whose positional
    embedding was replaced by the bicubically resized one."""
    visual = copy.deepcopy(tiny_vit.clip.visual)
    x = _images(1, 96, 128)
    with torch.no_grad():
        ours = vit_dense_features(visual, x, "vanilla")
        pos = visual.positional_embedding.data
        grid = (12, 16)
        cls, patches = pos[:1], pos[1:].reshape(1, 8, 8, -1).permute(0, 3, 1, 2)
        patches = F.interpolate(patches, size=grid, mode="bicubic", align_corners=False)
        visual.positional_embedding = torch.nn.Parameter(
            torch.cat([cls, patches.permute(0, 2, 3, 1).reshape(-1, pos.shape[1])]))
        visual.output_tokens = True
        _, tokens = visual(x)
    assert ours.shape == (1, 64, 12, 16)
    ref = (tokens @ visual.proj).transpose(1, 2).reshape(1, -1, 12, 16)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


def test_resize_pos_embed_identity_and_shape():
    pos = torch.randn(1 + 16, 8)
    assert resize_pos_embed(pos, (4, 4)) is pos
    out = resize_pos_embed(pos, (6, 3))
    assert out.shape == (1 + 18, 8)
    torch.testing.assert_close(out[0], pos[0])
    with pytest.raises(ValueError):
        resize_pos_embed(torch.randn(1 + 15, 8), (4, 4))


def test_gaussian_window_values():
    win = gaussian_window((2, 3), sigma=5.0)
    assert win.shape == (7, 7)
    assert torch.all(win[0] == 0) and torch.all(win[:, 0] == 0)
    assert torch.allclose(torch.diagonal(win)[1:], torch.ones(6))
    # patches 0 (0,0) and 5 (1,2): distance² = 1 + 4
    assert math.isclose(win[1, 6].item(), math.exp(-5 / 50), rel_tol=1e-6)


def test_convnext_dense_equals_global_on_one_location(tiny_convnext):
    """With a 1×1 feature map, per-location head = open_clip's pooled image embedding."""
    x = _images(2, 32, 32)
    with torch.no_grad():
        dense = tiny_convnext.dense_features(x)
        pooled = tiny_convnext.clip.visual(x)
    assert dense.shape == (2, 64, 1, 1)
    torch.testing.assert_close(dense[:, :, 0, 0], pooled, rtol=1e-4, atol=1e-5)


def test_convnext_dense_shape_and_locality(tiny_convnext):
    x = _images(1, 96, 160)
    with torch.no_grad():
        dense = tiny_convnext.dense_features(x)
    assert dense.shape == (1, 64, 3, 5)
    with pytest.raises(ValueError, match="not available"):
        tiny_convnext.dense_features(x, "maskclip")


def test_unknown_mode(tiny_vit):
    with pytest.raises(ValueError, match="not available"):
        tiny_vit.dense_features(_images(), "bogus")


def _written_out(block, x, mode, grid):
    """The last block's attention as the formulas of the module table, matrices materialised."""
    y = block.ln_1(x)
    b, n, w = y.shape
    h = block.attn.num_heads
    q, k, v = F.linear(y, block.attn.in_proj_weight, block.attn.in_proj_bias).reshape(
        b, n, 3, h, w // h).permute(2, 0, 3, 1, 4)
    scale = q.shape[-1] ** -0.5
    if mode == "sclip":
        o = ((q @ q.transpose(-2, -1) * scale).softmax(-1) + (k @ k.transpose(-2, -1) * scale).softmax(-1)) @ v
    elif mode == "clearclip":
        o = (q @ q.transpose(-2, -1) * scale).softmax(-1) @ v
    else:  # naclip
        o = (k @ k.transpose(-2, -1) * scale + gaussian_window(grid, 5.0)).softmax(-1) @ v
    out = F.linear(o.transpose(1, 2).reshape(b, n, w), block.attn.out_proj.weight, block.attn.out_proj.bias)
    if mode != "sclip":
        return out
    out = x + out
    return out + block.mlp(block.ln_2(out))


@pytest.mark.parametrize("mode", ["sclip", "clearclip", "naclip"])
@pytest.mark.parametrize("size", [(64, 64), (48, 80)])
def test_fused_attention_equals_the_written_out_softmax(tiny_vit, mode, size):
    """``F.scaled_dot_product_attention`` in the last block = softmax(a bᵀ/√d [+ G]) v written out."""
    from labelless.models.dense import last_block, vit_tokens

    visual = tiny_vit.clip.visual
    with torch.no_grad():
        x, grid = vit_tokens(visual, _images(h=size[0], w=size[1], seed=3))
        for blk in visual.transformer.resblocks[:-1]:
            x = blk(x)
        ours = last_block(visual.transformer.resblocks[-1], x, mode, grid)
        ref = _written_out(visual.transformer.resblocks[-1], x, mode, grid)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
