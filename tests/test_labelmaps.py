"""Tests for labelless.labelmaps: exact, memory-bounded label maps from low-resolution scores."""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F

import labelless.labelmaps as lm
from labelless.labelmaps import candidate_classes, labels_from_similarity, upsample_labels


def full_up(scores: torch.Tensor, size) -> torch.Tensor:
    """The plain computation: every class plane upsampled at once (``K×H×W``)."""
    return F.interpolate(scores[None].float(), size=size, mode="bilinear", align_corners=False)[0]


def near_ties(k: int, h: int, w: int, gen: torch.Generator, layout: str = "contiguous") -> torch.Tensor:
    """Cosine-like scores where classes differ by a few ulps, so that any rounding difference
    of the upsampling shows in the labels; ``channels_last`` mimics einsum's output strides."""
    base = torch.rand(1, h, w, generator=gen) * 0.3 + 0.1
    ulps = torch.randint(-3, 4, (k, h, w), generator=gen).float()
    s = base + ulps * 2.0 ** -24 + torch.rand(k, 1, 1, generator=gen) * 1e-6
    return relayout(s, layout)


def relayout(s: torch.Tensor, layout: str) -> torch.Tensor:
    """Same values, other strides: ``channels_last`` (einsum's output) or ``transposed`` (neither)."""
    if layout == "channels_last":
        return s.permute(1, 2, 0).contiguous().permute(2, 0, 1)
    if layout == "transposed":
        return s.transpose(1, 2).contiguous().transpose(1, 2)
    return s


LAYOUTS = ["contiguous", "channels_last", "transposed"]


def spread(k: int, h: int, w: int, gen: torch.Generator) -> torch.Tensor:
    """Scores with real gaps (softmax confidences spread over (0, 1) at logit scale 100)."""
    return torch.rand(k, h, w, generator=gen) * 0.06 + 0.2


def random_case(rng: random.Random):
    k = rng.choice([1, 2, 3, 4, 5, 8, 9, 13, 16, 21, 40])
    h, w = rng.choice([1, 2, 3, 5, 8, 13]), rng.choice([1, 2, 4, 7, 11])
    big = rng.random() < 0.6  # H + W > 128 (generic kernel) or not (channels-last kernel)
    H = rng.randint(65, 180) if big else rng.randint(1, 60)
    W = rng.randint(65, 180) if big else rng.randint(1, 60)
    return k, h, w, (H, W)


# ------------------------------------------------------------------ chunked F.interpolate


def test_chunked_interpolate_equals_full_in_the_generic_kernel():
    """H + W > 128, NCHW input: PyTorch computes every output element with the same code
    whatever the channel count, so chunking is bit-exact (except a 3-channel chunk with one
    thread, which takes the channels-last kernel: see the one-thread test)."""
    rng, gen = random.Random(0), torch.Generator().manual_seed(0)
    for _ in range(40):
        k, h, w = rng.randint(4, 24), rng.randint(2, 16), rng.randint(2, 16)
        size = (rng.randint(65, 200), rng.randint(65, 200))
        s = torch.randn(k, h, w, generator=gen)
        full = full_up(s, size)
        step = rng.choice([1, 2, 4, 5, 7])
        bounds = list(range(0, k, step)) + [k]
        if bounds[-1] - bounds[-2] == 3:
            bounds.insert(-1, k - 1)  # no 3-channel chunk
        parts = torch.cat([full_up(s[a:b], size) for a, b in zip(bounds, bounds[1:])])
        assert torch.equal(parts, full), (k, h, w, size, step)


@pytest.mark.skipif(lm._cl_lanes() == 1, reason="this PyTorch build rounds every channel alike")
def test_naive_chunking_is_not_exact_in_the_channels_last_kernel():
    """Why ``_call_layout`` exists: with H + W <= 128, or a channels-last input (what
    einsum gives), PyTorch vectorises across channels, and a class computed by the vector code
    in the full call is rounded differently when upsampled alone."""
    gen = torch.Generator().manual_seed(1)
    s = torch.randn(12, 9, 10, generator=gen)
    small = full_up(s, (40, 50))
    assert not torch.equal(full_up(s[:1], (40, 50)), small[:1])
    cl = relayout(s, "channels_last")
    big = full_up(cl, (130, 140))
    assert not torch.equal(full_up(cl[:1], (130, 140)), big[:1])


def check_chunks_equal_full(s, size, ids, max_elements):
    full = full_up(s, size)
    seen = []
    for chunk_ids, planes in lm._upsampled_chunks(s[None].float(), ids, size, max_elements):
        assert planes.shape[0] == len(chunk_ids)
        assert torch.equal(planes, full[chunk_ids]), (tuple(s.shape), size, chunk_ids, max_elements)
        seen += chunk_ids
    assert seen == ids


def test_upsampled_chunks_equal_full_planes_bit_for_bit():
    rng, gen = random.Random(2), torch.Generator().manual_seed(2)
    for _ in range(120):
        k, h, w, size = random_case(rng)
        layout = rng.choice(LAYOUTS)
        s = near_ties(k, h, w, gen, layout)
        ids = sorted(rng.sample(range(k), rng.randint(1, k)))
        check_chunks_equal_full(s, size, ids, rng.choice([1, size[0] * size[1] * 3, 10 ** 9]))


def test_upsampled_chunks_one_thread_three_classes():
    """One thread and exactly 3 channels also selects the channels-last kernel."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        gen = torch.Generator().manual_seed(3)
        for k in (3, 4, 6):
            s = torch.randn(k, 6, 7, generator=gen)
            for ids in ([0, 1, 2], [1], [0, 2], list(range(k))):
                check_chunks_equal_full(s, (150, 97), ids, 1)
    finally:
        torch.set_num_threads(threads)


# ------------------------------------------------------------------ labels: exact equality


def assert_same_labels(s, size, max_elements, **kw):
    ref = labels_from_similarity(full_up(s, size), **kw)
    got = upsample_labels(s, size, max_elements=max_elements, **kw)
    assert got.dtype == torch.long and got.shape == size
    assert torch.equal(got, ref), (tuple(s.shape), s.stride(), size, max_elements, kw,
                                   int((got != ref).sum()))
    return ref


def test_upsample_labels_equals_plain_on_random_sizes():
    rng, gen = random.Random(4), torch.Generator().manual_seed(4)
    for _ in range(70):
        k, h, w, size = random_case(rng)
        layout = rng.choice(LAYOUTS)
        me = rng.choice([1, size[0] * size[1] * 2, 10 ** 9])
        assert_same_labels(near_ties(k, h, w, gen, layout), size, me)
        s = relayout(spread(k, h, w, gen), layout)
        assert_same_labels(s, size, me, bg_threshold=rng.choice([0.3, 0.5, 0.8]))
        probs = (s * 100).softmax(0)  # class probabilities at low resolution
        assert_same_labels(probs, size, me, bg_threshold=rng.choice([0.3, 0.5]), probabilities=True)


def test_threshold_exactly_at_confidence_values():
    """A threshold equal to the confidence of some pixels: ``conf < t`` must flip at the same bits."""
    gen = torch.Generator().manual_seed(5)
    for k, size, probabilities in [(7, (151, 90), False), (20, (33, 41), False), (9, (140, 70), True)]:
        s = spread(k, 6, 5, gen)
        s = (s * 100).softmax(0) if probabilities else s
        up = full_up(s, size)
        if probabilities:
            conf = up.max(0).values
        else:
            x = up * 100.0
            m = x.max(0).values
            total = torch.zeros_like(m)
            for plane in x:
                total = total + torch.exp(plane - m)
            conf = 1.0 / total
        n = conf.numel()
        for t in conf.flatten()[[n // 7, n // 2, 5 * n // 6]].tolist():
            ref = assert_same_labels(s, size, 1, bg_threshold=t, probabilities=probabilities)
            assert (ref == 0).any() and (ref > 0).any()


def test_upsample_labels_many_classes_and_one_class():
    gen = torch.Generator().manual_seed(6)
    s = near_ties(200, 8, 9, gen)
    assert_same_labels(s, (131, 170), 131 * 170 * 16)
    assert_same_labels(near_ties(203, 8, 9, gen, "channels_last"), (131, 170), 1)
    assert_same_labels(spread(200, 8, 9, gen), (131, 170), 131 * 170 * 16, bg_threshold=0.2)
    one = torch.rand(1, 4, 5, generator=gen)
    assert torch.equal(upsample_labels(one, (50, 90)), torch.zeros(50, 90, dtype=torch.long))
    assert torch.equal(upsample_labels(one, (50, 90), bg_threshold=0.5), torch.ones(50, 90, dtype=torch.long))
    assert_same_labels(one, (50, 90), 1, bg_threshold=0.5, probabilities=True)


def test_downsampling_and_identity_sizes():
    gen = torch.Generator().manual_seed(7)
    s = near_ties(10, 40, 37, gen)
    for size in [(40, 37), (13, 29), (1, 1), (1, 200), (300, 1), (39, 38)]:
        assert_same_labels(s, size, 1)
        assert_same_labels(s, size, 1, bg_threshold=0.5)


# ------------------------------------------------------------------ ties


def test_ties_give_the_lowest_index():
    gen = torch.Generator().manual_seed(8)
    a = torch.rand(6, 7, generator=gen)
    dup = torch.stack([a * 0.5, a, a - 1, a, a])  # classes 1, 3, 4 equal
    for size in [(100, 90), (20, 30)]:
        up = full_up(dup, size)
        got = upsample_labels(dup, size, max_elements=1)
        assert torch.equal(got, up.argmax(0))
        assert set(got.unique().tolist()) <= {1}  # never 3 or 4
        assert_same_labels(dup, size, 1, bg_threshold=0.1)
    const = torch.full((5, 3, 4), 0.25)
    assert torch.equal(upsample_labels(const, (70, 80), max_elements=1), torch.zeros(70, 80, dtype=torch.long))
    assert torch.equal(upsample_labels(const, (70, 80), bg_threshold=0.1), torch.ones(70, 80, dtype=torch.long))
    assert torch.equal(upsample_labels(const, (70, 80), bg_threshold=0.3), torch.zeros(70, 80, dtype=torch.long))


def test_ties_created_by_the_logit_scale_use_the_scaled_values():
    """With a threshold the argmax is taken on logit_scale·sim: two values 1 ulp apart that
    round to the same logit tie, and the lower class wins even though it is the smaller."""
    a = next(v for v in (torch.rand(1000, generator=torch.Generator().manual_seed(9)) * 0.3 + 0.1)
             if float(v * 100) == float(torch.nextafter(v, torch.tensor(1.0)) * 100))
    b = torch.nextafter(a, torch.tensor(1.0))
    s = torch.stack([a.expand(3, 4), b.expand(3, 4)])  # identity size: upsampling copies exactly
    assert torch.equal(upsample_labels(s, (3, 4)), torch.ones(3, 4, dtype=torch.long))
    got = upsample_labels(s, (3, 4), bg_threshold=0.1)
    assert torch.equal(got, torch.ones(3, 4, dtype=torch.long))  # class 0, +1
    assert torch.equal(got, labels_from_similarity(s, bg_threshold=0.1))


# ------------------------------------------------------------------ pruning


def test_pruning_drops_dominated_classes_and_keeps_the_result():
    gen = torch.Generator().manual_seed(10)
    s = torch.rand(150, 16, 16, generator=gen) * 0.1  # 147 weak classes
    s[[3, 70, 149], :, :] += 0.5
    s[70, :, :8] += 0.2  # class 70 wins the left half, 3 and 149 compete on the right
    cand = candidate_classes(s)
    assert set(cand.tolist()) == {3, 70, 149}
    calls = []
    real = F.interpolate

    def spy(x, *a, **kw):
        calls.append(x.shape[1])
        return real(x, *a, **kw)

    lm.F.interpolate = spy
    try:
        got = upsample_labels(s, (200, 190), max_elements=1)
    finally:
        lm.F.interpolate = real
    assert sum(calls) == 3  # only the candidates were upsampled
    assert torch.equal(got, full_up(s, (200, 190)).argmax(0))
    assert set(got.unique().tolist()) == {3, 70, 149}
    for kw in [dict(bg_threshold=0.6), dict(bg_threshold=0.5, probabilities=True)]:
        assert_same_labels(s, (200, 190), 1, **kw)


def test_pruning_never_drops_a_winning_class():
    rng, gen = random.Random(11), torch.Generator().manual_seed(11)
    for _ in range(60):
        k, h, w, size = random_case(rng)
        s = near_ties(k, h, w, gen) if rng.random() < 0.5 else torch.randn(k, h, w, generator=gen)
        cand = set(candidate_classes(s).tolist())
        up = full_up(s, size)
        winners = set(up.argmax(0).unique().tolist()) | set((up * 100).argmax(0).unique().tolist())
        assert winners <= cand, (k, h, w, size)
        # every class that reaches the maximum somewhere (not only the first) is a candidate
        reach = (up == up.max(0, keepdim=True).values).flatten(1).any(1).nonzero().flatten().tolist()
        assert set(reach) <= cand


def test_candidate_classes_handles_thin_maps():
    s = torch.tensor([[[0.0, 1.0, 0.0]], [[0.9, 0.0, 0.9]], [[-1.0, -1.0, -1.0]]])  # h == 1
    assert candidate_classes(s).tolist() == [0, 1]
    assert candidate_classes(s.transpose(1, 2)).tolist() == [0, 1]  # w == 1
    point = torch.tensor([0.1, 0.3, 0.3, -2.0]).view(4, 1, 1)
    assert candidate_classes(point).tolist() == [1, 2]


# ------------------------------------------------------------------ memory bound


def test_no_interpolate_call_exceeds_max_elements():
    gen = torch.Generator().manual_seed(12)
    size, k, max_elements = (150, 130), 200, 60_000  # K·H·W = 3.9M, 65× the bound
    s = spread(k, 10, 12, gen)
    real = F.interpolate
    for kw in [{}, dict(bg_threshold=0.2), dict(bg_threshold=0.5, probabilities=True)]:
        outputs = []

        def spy(x, *a, **kw2):
            out = real(x, *a, **kw2)
            outputs.append(out.numel())
            return out

        lm.F.interpolate = spy
        try:
            got = upsample_labels(s, size, max_elements=max_elements, **kw)
        finally:
            lm.F.interpolate = real
        assert outputs and max(outputs) <= max_elements
        planes = sum(outputs) // (size[0] * size[1])
        assert planes == len(candidate_classes(s)) + (k if "bg_threshold" in kw and not kw.get("probabilities")
                                                      else 0)
        assert torch.equal(got, labels_from_similarity(full_up(s, size), **kw))


def test_channels_last_scores_hold_at_most_two_vectors_of_planes():
    """Channels-last scores: PyTorch computes ``lanes`` classes together, so a call holds at
    most 2·lanes planes (padding included) whatever ``max_elements`` says."""
    lanes = lm._cl_lanes()
    gen = torch.Generator().manual_seed(13)
    s = relayout(spread(150, 8, 8, gen), "channels_last")
    size = (120, 100)
    real = F.interpolate
    outputs = []

    def spy(x, *a, **kw):
        out = real(x, *a, **kw)
        outputs.append(out.shape[1])
        return out

    lm.F.interpolate = spy
    try:
        got = upsample_labels(s, size, bg_threshold=0.2, max_elements=1)
    finally:
        lm.F.interpolate = real
    assert max(outputs) <= 2 * lanes
    assert torch.equal(got, labels_from_similarity(full_up(s, size), bg_threshold=0.2))


# ------------------------------------------------------------------ threshold semantics


def test_threshold_is_the_max_softmax_probability():
    """2 classes, identity size (upsampling copies exactly), known probabilities."""
    scale = 100.0
    p = torch.tensor([[0.75, 0.40], [0.10, 0.95]])  # probability of class 0 per pixel
    s1 = torch.full((2, 2), 0.2)
    s0 = s1 + torch.log(p / (1 - p)) / scale  # softmax(scale·[s0, s1])[0] == p
    s = torch.stack([s0, s1]).float()
    expected = {0.5: [[1, 2], [2, 1]], 0.7: [[1, 0], [2, 1]], 0.8: [[0, 0], [2, 1]], 0.92: [[0, 0], [0, 1]]}
    for t, labels in expected.items():
        want = torch.tensor(labels)
        assert torch.equal(upsample_labels(s, (2, 2), logit_scale=scale, bg_threshold=t), want), t
        assert torch.equal(labels_from_similarity(s, logit_scale=scale, bg_threshold=t), want), t
        probs = torch.stack([p, 1 - p]).float()
        assert torch.equal(upsample_labels(probs, (2, 2), bg_threshold=t, probabilities=True), want), t
    # confidence by float64 softmax, independent of the implementation
    conf = torch.softmax(s.double() * scale, 0).max(0).values
    assert torch.allclose(conf, torch.maximum(p, 1 - p).double(), atol=1e-5)


def test_labels_from_similarity_batched_and_old_signature():
    gen = torch.Generator().manual_seed(14)
    sims = torch.rand(3, 6, 20, 30, generator=gen) * 0.06 + 0.2
    batched = labels_from_similarity(sims, 100.0, 0.3)  # the old positional signature
    assert batched.shape == (3, 20, 30) and batched.dtype == torch.long
    for i in range(3):
        assert torch.equal(batched[i], labels_from_similarity(sims[i], 100.0, 0.3))
    assert torch.equal(labels_from_similarity(sims), sims.argmax(1))
    # the former softmax formulation agrees wherever the confidence isn't within rounding of t
    prob = (sims * 100.0).softmax(1)
    conf, idx = prob.max(1)
    old = torch.where(conf < 0.3, torch.zeros_like(idx), idx + 1)
    clear = (conf - 0.3).abs() > 1e-5
    assert torch.equal(batched[clear], old[clear]) and clear.float().mean() > 0.99


# ------------------------------------------------------------------ inputs


def test_bad_inputs():
    with pytest.raises(ValueError, match="NaN"):
        upsample_labels(torch.tensor([[[0.0, math.nan]]]), (4, 4))
    with pytest.raises(ValueError, match="K×h×w"):
        upsample_labels(torch.zeros(2, 3), (4, 4))
    with pytest.raises(ValueError, match="K×h×w"):
        upsample_labels(torch.zeros(0, 3, 3), (4, 4))
    assert upsample_labels(torch.rand(3, 4, 4), (0, 5)).shape == (0, 5)
    half = torch.rand(5, 6, 7).half()
    assert torch.equal(upsample_labels(half, (90, 80), max_elements=1), full_up(half, (90, 80)).argmax(0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_equals_plain():
    rng, gen = random.Random(15), torch.Generator().manual_seed(15)
    for _ in range(30):
        k, h, w, size = random_case(rng)
        s = near_ties(k, h, w, gen).cuda()
        assert_same_labels(s, size, 1)
        assert_same_labels(spread(k, h, w, gen).cuda(), size, 1, bg_threshold=0.4)
        assert upsample_labels(s, size).device.type == "cuda"


# ------------------------------------------------------------------ max(dim).indices


@pytest.mark.parametrize("layout", LAYOUTS)
def test_max_indices_is_the_first_maximum_like_argmax(layout):
    """Labels come from ``max(dim).indices`` (faster than ``argmax`` on the CPU): on maps full
    of exact ties (three values) both give the first class reaching the maximum."""
    gen = torch.Generator().manual_seed(21)
    ties = relayout(torch.randint(0, 3, (37, 41, 53), generator=gen).float(), layout)
    first = (ties == ties.amax(0, keepdim=True)).int().cumsum(0).eq(1).int().argmax(0)  # first True
    assert torch.equal(labels_from_similarity(ties), ties.argmax(0))
    assert torch.equal(labels_from_similarity(ties), first)
    for dtype in (torch.float16, torch.bfloat16):
        assert torch.equal(labels_from_similarity(ties.to(dtype)), first)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_one_big_chunk_and_many_small_ones_break_ties_alike(layout):
    """All classes in one chunk (the default budget) or one plane per chunk: the same labels,
    the lowest of the tied classes, as argmax of the full upsampled map."""
    gen = torch.Generator().manual_seed(22)
    s = relayout(torch.randint(0, 2, (19, 6, 9), generator=gen).float() * 0.5, layout)
    s[7] = s[3]  # an exact duplicate of an earlier class never wins
    for size in [(70, 90), (30, 40)]:
        ref = full_up(s, size).argmax(0)
        assert torch.equal(upsample_labels(s, size), ref)
        assert torch.equal(upsample_labels(s, size, max_elements=1), ref)
        assert not (upsample_labels(s, size) == 7).any()
