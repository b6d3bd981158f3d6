"""PixelCLIP training parts: class prompts, decoder, EMA teacher, augmentation."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from labelless.models.clip import build_clip
from labelless.train.ema import ema_update, make_teacher
from labelless.train.pixelclip.augment import AugmentConfig, augment, collate, resized_shape, ssd_jitter, strong_colour
from labelless.train.pixelclip.decoder import UpsampleDecoder
from labelless.train.pixelclip.prompts import ClassPrompts


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return build_clip("tiny-vit", None)  # own copy: prompts freeze its text tower


# ----------------------------------------------------------------------------- prompts
def test_prompts_shape_norm_and_only_prompts_get_gradients(vit):
    prompts = ClassPrompts(vit.clip, vit.tokenizer, num_prompts=8, length=4, seed=0)
    assert [n for n, _ in prompts.named_parameters()] == ["prompts"]
    assert prompts.prompts.shape == (8, 4, 64)
    emb = prompts()
    assert emb.shape == (8, vit.embed_dim)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(8))
    (emb * torch.randn_like(emb)).sum().backward()
    assert prompts.prompts.grad is not None and prompts.prompts.grad.abs().sum() > 0
    for name, p in vit.clip.named_parameters():
        if not name.startswith("visual."):
            assert not p.requires_grad and p.grad is None, name
    # the tower is held by reference, not duplicated in the state dict
    assert list(prompts.state_dict()) == ["prompts"]


def test_prompts_init_is_deterministic_and_matches_official_draw(vit):
    a = ClassPrompts(vit.clip, vit.tokenizer, num_prompts=6, length=4, seed=0)
    b = ClassPrompts(vit.clip, vit.tokenizer, num_prompts=6, length=4, seed=0)
    c = ClassPrompts(vit.clip, vit.tokenizer, num_prompts=6, length=4, seed=1)
    assert torch.equal(a.prompts, b.prompts) and not torch.equal(a.prompts, c.prompts)
    # official: torch.manual_seed(0); randint(vocab_size - 10, (k, length)) → token embeddings
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    ids = torch.randint(vit.clip.vocab_size - 10, (6, 4), dtype=torch.long)
    torch.random.set_rng_state(state)
    torch.testing.assert_close(a.prompts.detach(), vit.clip.token_embedding(ids).detach())


def test_prompts_with_real_word_vectors_equal_encode_text(vit):
    """Putting the token embeddings of real words in the slots gives CLIP's own text embedding."""
    words = [["red", "car", "on", "road"], ["small", "green", "tree", "here"]]
    prompts = ClassPrompts(vit.clip, vit.tokenizer, num_prompts=2, length=4, seed=0)
    ids = torch.tensor([[vit.tokenizer.encode(w)[0] for w in ws] for ws in words])
    assert all(len(vit.tokenizer.encode(w)) == 1 for ws in words for w in ws)
    with torch.no_grad():
        prompts.prompts.copy_(vit.clip.token_embedding(ids))
        ref = vit.encode_text([f"A photo of a {' '.join(ws)} in the scene" for ws in words])
        torch.testing.assert_close(prompts(), ref, atol=1e-5, rtol=1e-5)


def test_prompts_init_from_words_uses_only_their_tokens(vit):
    words = ["road", "sign symbol", "bicyclist"]
    pool = sorted({i for w in words for i in vit.tokenizer.encode(w)})
    prompts = ClassPrompts(vit.clip, vit.tokenizer, num_prompts=12, length=4, seed=3, words=words)
    table = vit.clip.token_embedding.weight.detach()[pool]  # P×W
    init = prompts.prompts.detach().reshape(-1, table.shape[1])  # every slot is one of the pool rows
    same = (init[:, None] == table[None]).all(dim=-1)  # slots × pool
    assert torch.all(same.any(dim=1))
    assert len(set(same.float().argmax(dim=1).tolist())) > 1  # drawn, not one word repeated
    again = ClassPrompts(vit.clip, vit.tokenizer, num_prompts=12, length=4, seed=3, words=words)
    assert torch.equal(prompts.prompts, again.prompts)
    with pytest.raises(ValueError, match="give no tokens"):
        ClassPrompts(vit.clip, vit.tokenizer, num_prompts=2, length=4, seed=0, words=[""])


# ----------------------------------------------------------------------------- decoder
def test_decoder_shapes_and_layers():
    dec = UpsampleDecoder(out_size=32)
    x = torch.randn(6, 1, 5, 5, requires_grad=True)
    y = dec(x)
    assert y.shape == (6, 1, 32, 32)
    y.sum().backward()
    assert x.grad is not None
    assert UpsampleDecoder(out_size=None)(torch.randn(2, 1, 5, 5)).shape == (2, 1, 20, 20)  # 4×
    assert (dec.conv0.in_channels, dec.conv0.out_channels) == (1, 64)
    assert (dec.up1.in_channels, dec.up1.out_channels, dec.up1.stride) == (64, 64, (2, 2))
    assert (dec.up2.in_channels, dec.up2.out_channels, dec.up2.stride) == (64, 32, (2, 2))
    assert (dec.proj.in_channels, dec.proj.out_channels) == (32, 1)
    gns = [m for m in dec.modules() if isinstance(m, nn.GroupNorm)]
    assert [(g.num_groups, g.num_channels) for g in gns] == [(4, 64)] * 2 + [(2, 32)] * 2
    # maps are decoded independently (no mixing across the batch·cluster axis)
    x2 = torch.randn(3, 1, 5, 5)
    torch.testing.assert_close(dec(x2)[1:2], dec(x2[1:2]), atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- EMA
def test_ema_update_formula_params_and_buffers():
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    student(torch.randn(8, 3))  # fills running stats
    teacher = make_teacher(student)
    assert all(not p.requires_grad for p in teacher.parameters())
    assert teacher[0].weight.data_ptr() != student[0].weight.data_ptr()
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
        student[1].running_mean.add_(1.0)
        student[1].num_batches_tracked += 5
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    gamma = 0.9
    ema_update(teacher, student, gamma)
    for k, v in teacher.state_dict().items():
        s = student.state_dict()[k]
        if v.is_floating_point():
            torch.testing.assert_close(v, gamma * before[k] + (1 - gamma) * s)
        else:
            assert torch.equal(v, s)  # integer buffers copied
    # γ = 1 keeps the teacher, γ = 0 copies the student
    ema_update(teacher, student, 0.0)
    for k, v in teacher.state_dict().items():
        torch.testing.assert_close(v, student.state_dict()[k].to(v.dtype))


# ----------------------------------------------------------------------------- augmentation
def test_resized_shape_follows_detectron2():
    assert resized_shape(750, 1000, 1024, 1333) == (1000, 1333)  # SA-1B 750 short side: long side capped
    assert resized_shape(1000, 750, 1024, 1333) == (1333, 1000)
    assert resized_shape(500, 500, 1024, 1333) == (1024, 1024)
    assert resized_shape(480, 640, 1024, None) == (1024, 1365)


def _coordinate_sample(h, w):
    """Image whose R/G values are the x/y pixel index; masks = bit planes of x and of y."""
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    image = torch.stack([xs, ys, torch.zeros_like(xs)]).to(torch.uint8)
    masks = torch.stack([(xs >> b) & 1 for b in range(8)] + [(ys >> b) & 1 for b in range(8)]).bool()
    return image, masks


def _decode(masks):
    bits = masks.long()
    x = sum(bits[b] << b for b in range(8))
    y = sum(bits[8 + b] << b for b in range(8))
    return x, y


GEOM = AugmentConfig(short_side=72, max_size=200, crop_size=64, clip_size=32, mask_size=32,
                     ssd_jitter=False, strong=False, cutout=False)


def test_augment_masks_follow_resize_crop_flip_exactly():
    h0, w0 = 60, 80
    image, masks = _coordinate_sample(h0, w0)
    flips = set()
    for seed in range(6):
        out = augment(image, masks, torch.Generator().manual_seed(seed), GEOM)
        p = out["params"]
        h1, w1 = p["resized"]
        y1, x1, ch, cw = p["crop"]
        flips.add(p["flip"])
        assert (h1, w1) == (72, 96) and (ch, cw) == (64, 64)
        assert 0 <= y1 <= h1 - ch and 0 <= x1 <= w1 - cw
        mx, my = _decode(out["masks"])
        # reference: the original pixel containing the centre of output pixel (i, j)
        n = GEOM.mask_size
        for i in range(n):
            yc = (i + 0.5) * ch / n
            assert (my[i] == min(int(math.floor((y1 + yc) * h0 / h1)), h0 - 1)).all(), (seed, i)
        for j in range(n):
            xc = (j + 0.5) * cw / n
            if p["flip"]:
                xc = cw - xc
            assert (mx[:, j] == min(int(math.floor((x1 + xc) * w0 / w1)), w0 - 1)).all(), (seed, j)
        # the image went through the same geometry: its colour-coded coordinates (bilinear,
        # value = centre − 0.5) agree with the masks' nearest pixels within one pixel
        ix = out["image_weak"][0] * 255
        iy = out["image_weak"][1] * 255
        inner = slice(2, n - 2)
        assert (ix[inner, inner] - mx[inner, inner].float()).abs().max() <= 1.0
        assert (iy[inner, inner] - my[inner, inner].float()).abs().max() <= 1.0
        step = (mx[:, -1] - mx[:, 0]).float().mean()
        assert (step < 0) == p["flip"]
    assert flips == {True, False}


def test_augment_cutout_is_removed_from_masks():
    h0, w0 = 60, 80
    image, masks = _coordinate_sample(h0, w0)
    full = torch.ones(1, h0, w0, dtype=torch.bool)
    masks = torch.cat([masks, full])
    cfg = AugmentConfig(**{**GEOM.__dict__, "cutout": True, "strong": True, "ssd_jitter": True})
    plain_cfg = AugmentConfig(**{**GEOM.__dict__, "ssd_jitter": True})
    for seed in range(4):
        out = augment(image, masks, torch.Generator().manual_seed(seed), cfg)
        plain = augment(image, masks, torch.Generator().manual_seed(seed), plain_cfg)
        assert out["params"] == plain["params"]  # same draws whatever the switches
        top, left, bh, bw = out["params"]["cutout"]
        ch, cw = out["params"]["crop"][2:]
        assert 0.1 * ch - 1 <= bh <= 0.5 * ch and 0.1 * cw - 1 <= bw <= 0.5 * cw
        n = cfg.mask_size
        rows = torch.tensor([top <= math.floor((i + 0.5) * ch / n) < top + bh for i in range(n)])
        cols = torch.tensor([left <= math.floor((j + 0.5) * cw / n) < left + bw for j in range(n)])
        box = rows[:, None] & cols[None, :]
        assert box.any()
        assert not out["masks"][:, box].any()  # removed inside the box
        assert torch.equal(out["masks"][:, ~box], plain["masks"][:, ~box])  # untouched outside
        assert torch.equal(out["masks"][-1], ~box)  # the full-image mask shows the hole exactly
        # the student's image is black in the box (away from its bilinear border)
        s = cfg.clip_size / ch
        inner_r = slice(math.ceil(top * s) + 1, math.floor((top + bh) * s) - 1)
        inner_c = slice(math.ceil(left * s) + 1, math.floor((left + bw) * s) - 1)
        assert (out["image_strong"][:, inner_r, inner_c] == 0).all()
        # the teacher's (weak) image has no hole
        assert torch.equal(out["image_weak"], plain["image_weak"])


def test_augment_is_deterministic_for_a_seeded_generator():
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, 50, 70), dtype=torch.uint8, generator=g)
    masks = torch.rand(5, 50, 70, generator=g) > 0.5
    cfg = AugmentConfig(short_side=64, crop_size=48, clip_size=32, mask_size=16)
    a = augment(image, masks, torch.Generator().manual_seed(7), cfg)
    b = augment(image, masks, torch.Generator().manual_seed(7), cfg)
    c = augment(image, masks, torch.Generator().manual_seed(8), cfg)
    for key in ("image_weak", "image_strong", "masks", "valid"):
        assert torch.equal(a[key], b[key]), key
    assert a["params"] == b["params"] and a["params"] != c["params"]
    assert a["image_weak"].shape == (3, 32, 32) and a["image_weak"].dtype == torch.float32
    assert 0 <= a["image_weak"].min() and a["image_weak"].max() <= 1
    assert a["masks"].shape == (5, 16, 16) and a["masks"].dtype == torch.bool
    assert not torch.equal(a["image_weak"], a["image_strong"])


def test_colour_ops_keep_uint8_images():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    on = {"brightness": (True, 20.0), "contrast_first": True, "contrast": (True, 1.2),
          "saturation": (True, 1.4), "hue": (True, 9)}
    out = ssd_jitter(img, on)
    assert out.shape == img.shape and out.dtype == np.uint8 and not np.array_equal(out, img)
    off = {k: (False, v[1]) if isinstance(v, tuple) else v for k, v in on.items()}
    assert np.array_equal(ssd_jitter(img, off), img)
    # brightness: + β on the 0..255 scale, clipped (ColorAugSSDTransform.convert)
    bright = ssd_jitter(img, {**off, "brightness": (True, 20.0)})
    assert np.array_equal(bright, np.clip(img.astype(np.float32) + 20, 0, 255).astype(np.uint8))
    # hue: 90 OpenCV units = half a turn → pure red becomes cyan
    red = np.zeros((2, 2, 3), np.uint8)
    red[..., 0] = 255
    cyan = ssd_jitter(red, {**off, "hue": (True, 90)})
    assert cyan[0, 0, 0] <= 2 and cyan[0, 0, 1] >= 250 and cyan[0, 0, 2] >= 250
    # saturation 0 → gray (all channels equal), as HSV S = 0
    grey = ssd_jitter(img, {**off, "saturation": (True, 0.0)})
    assert np.abs(grey.astype(int) - grey[..., :1].astype(int)).max() <= 1
    p = {"jitter": (False, [0, 1, 2, 3], 1, 1, 1, 0), "gray": True, "blur": (False, 1.0)}
    g = strong_colour(img, p)
    assert g.shape == img.shape and (g[..., 0] == g[..., 1]).all()


def test_collate_pads_masks_with_valid_flags():
    cfg = AugmentConfig(short_side=40, crop_size=32, clip_size=32, mask_size=16)
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, 40, 40), dtype=torch.uint8, generator=g)
    s1 = augment(image, torch.ones(3, 40, 40, dtype=torch.bool), g, cfg)
    s2 = augment(image, torch.ones(1, 40, 40, dtype=torch.bool), g, cfg)
    s3 = augment(image, torch.zeros(0, 40, 40, dtype=torch.bool), g, cfg)
    batch = collate([s1, s2, s3])
    assert batch["image_weak"].shape == (3, 3, 32, 32) and batch["masks"].shape == (3, 3, 16, 16)
    assert batch["valid"].tolist() == [[True] * 3, [True, False, False], [False] * 3]
    assert not batch["masks"][1, 1:].any() and not batch["masks"][2].any()
    assert len(batch["params"]) == 3
