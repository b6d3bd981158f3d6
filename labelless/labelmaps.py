"""Label maps from low-resolution class scores without a ``K×H×W`` tensor.

The plain way to label an ``H×W`` image from ``K×h×w`` scores upsamples every class plane
(``F.interpolate(scores[None].float(), (H, W), mode="bilinear", align_corners=False)``) and
takes the argmax; for 150 classes at 8000×6000 that is 28.8 GB of float32. ``upsample_labels``
gives the same label map, bit for bit, holding about ``max_elements`` upsampled values at a
time plus a few ``H×W`` planes: classes are upsampled in chunks, a running max keeps
the first maximum (as ``torch.argmax``; each chunk reduced by ``max(dim=0)``), and classes
that cannot win anywhere are skipped.

Chunking is exact only because each chunk is upsampled by the same code, channel for channel,
as the one call on all ``K`` classes would be. On the CPU that is not automatic: PyTorch
(``UpSampleKernel.cpp``, ``upsample_bilinear2d_kernel_impl_float``) uses a channels-last
kernel when the input is channels-last contiguous with more than 3 channels (what
``torch.einsum("bdhw,kd->bkhw")`` returns, i.e. the similarity maps of ``segment.py``), when
``H + W <= 128``, or with one thread and exactly 3 channels; that kernel computes blocks of
``_cl_lanes()`` (8 here) channels with vector code and the remaining ``K % lanes`` with
scalar code, which round differently (ulp level), and both differ from the generic
per-element kernel used otherwise. ``_call_layout`` therefore groups (and pads) classes so
that each one lands in a call and position computed by the same code as in the full call.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

__all__ = ["candidate_classes", "labels_from_similarity", "upsample_labels", "upsampled_classes"]

PRUNE_MIN_UPSCALE = 8  # candidate_classes is computed when the output has ≥ 8× the input's pixels


def labels_from_similarity(sim: torch.Tensor, logit_scale: float = 100.0, bg_threshold: float | None = None,
                           probabilities: bool = False) -> torch.Tensor:
    """Plain reference: upsampled scores ``K×H×W`` (or ``B×K×H×W``, classes at dim -3) → int64 labels.

    No threshold: the first index of the maximum over classes. With ``bg_threshold``: label 0
    where the confidence is below it, else argmax + 1; the confidence is the highest class
    probability: the max over classes of ``sim`` itself when ``probabilities``, else
    ``1 / S`` with ``S = Σ_k exp(x_k - max x)``, ``x = logit_scale · sim`` (the max of
    softmax(x)), summed plane by plane in ascending k so that a chunked computation can
    reproduce it exactly (``torch.softmax`` sums in an unspecified order).
    """
    if bg_threshold is None:
        return sim.max(dim=-3).indices  # first maximum, as argmax (2-6x faster on big CPU maps)
    sim = sim.float()
    if probabilities:
        conf, idx = sim.max(dim=-3)
    else:
        x = sim * logit_scale
        m, idx = x.max(dim=-3)  # first maximum, like argmax
        total = torch.zeros_like(m)
        for k in range(x.shape[-3]):
            total = total + torch.exp(x.select(-3, k) - m)
        conf = 1.0 / total  # exp(m - m) / S
    return torch.where(conf < bg_threshold, torch.zeros_like(idx), idx + 1)


def candidate_classes(scores: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Sorted int64 ids of the classes of ``scores`` (``K×h×w``) that can be a maximum after
    bilinear resizing (align_corners=False) to any size.

    Each output value is a convex combination of the corners of one low-resolution cell
    (2×2 block; border pixels use a subset, and h or w == 1 gives 1-wide cells), so a class
    whose largest corner is below the largest smallest-corner of the cell can't win there.
    ``eps`` (relative to the cell's largest magnitude) absorbs the interpolation's float
    rounding (a few ulps), so a class that could tie or win by rounding is kept.
    """
    s = scores.float()
    hi = lo = s
    # the corners of every cell by shifted slices (elementwise, 4-5x faster on the CPU than
    # max_pool2d with a 2×2 kernel at stride 1, which gives the same values)
    if s.shape[-2] > 1:
        hi, lo = torch.maximum(hi[:, :-1], hi[:, 1:]), torch.minimum(lo[:, :-1], lo[:, 1:])
    if s.shape[-1] > 1:
        hi, lo = torch.maximum(hi[..., :-1], hi[..., 1:]), torch.minimum(lo[..., :-1], lo[..., 1:])
    floor = lo.amax(0)  # some class is at least this everywhere in the cell
    mag = torch.maximum(hi.amax(0).abs(), lo.amin(0).abs())
    keep = hi >= floor - (eps * mag + 1e-20)
    return keep.flatten(1).any(1).nonzero().flatten()


@functools.lru_cache(maxsize=None)
def _cl_lanes() -> int:
    """Channels per vector in PyTorch's channels-last CPU bilinear kernel (1: position-independent).

    Probed rather than assumed (it depends on the build and CPU): the smallest channel count
    whose channel 0 is rounded differently from a one-channel call, which the scalar code does.
    """
    x = torch.rand(1, 64, 7, 7, generator=torch.Generator().manual_seed(0))
    size = (57, 61)  # H + W <= 128: the channels-last kernel whatever the channel count
    alone = F.interpolate(x[:, :1], size=size, mode="bilinear", align_corners=False)
    for c in range(2, 65):
        if not torch.equal(F.interpolate(x[:, :c], size=size, mode="bilinear", align_corners=False)[:, :1], alone):
            return c
    return 1


def _call_layout(ids: list[int], num_classes: int, size: tuple[int, int], per_chunk: int, ref_cl: bool,
                 cpu: bool) -> list[tuple[list[int], int, int]]:
    """Group ascending class ids into F.interpolate calls that compute each class with the same
    code (so the same bits) as one call on all ``num_classes`` would.

    Returns ``(channels, offset, n)`` per call: the input channels (padded with copies where the
    kernel needs it) and the slice ``[offset, offset + n)`` of the output holding the ids.
    ``ref_cl``: the full call's input is channels-last contiguous.
    """
    def groups(items, step):
        return [items[i:i + step] for i in range(0, len(items), step)]

    if not cpu:  # assumed: CUDA computes each element alike for any channel count (test_cuda_equals_plain)
        return [(g, 0, len(g)) for g in groups(ids, per_chunk)]
    one_thread = torch.get_num_threads() == 1

    def vectorised(c):  # does a c-channel call take the channels-last kernel? (PyTorch's dispatch)
        return (ref_cl and c > 3) or sum(size) <= 128 or (one_thread and c == 3)

    if not vectorised(num_classes):  # generic kernel: any chunk that also takes it
        out = []
        for g in groups(ids, min(per_chunk, 3) if ref_cl else per_chunk):
            out += [([i], 0, 1) for i in g] if vectorised(len(g)) else [(g, 0, len(g))]
        return out
    lanes = _cl_lanes()
    nvec = num_classes - num_classes % lanes  # classes the full call computes with vector code
    vec, tail = [i for i in ids if i < nvec], [i for i in ids if i >= nvec]
    jobs = [(g, False) for g in groups(vec, max(lanes, per_chunk - per_chunk % lanes))]
    jobs += [(tail, True)] if tail else []
    out = []
    for g, in_tail in jobs:  # find the smallest padded call putting g in the same code
        for c in range(len(g), len(g) + 3 * lanes):
            offset = c - c % lanes if in_tail else 0  # tail ids go after the vector lanes
            room = c % lanes if in_tail else c - c % lanes
            if vectorised(c) and room >= len(g):
                out.append(([g[0]] * offset + g + [g[0]] * (c - offset - len(g)), offset, len(g)))
                break
        else:
            raise RuntimeError(f"no exact chunk layout for classes {g} (lanes={lanes})")
    return out


def _upsampled_chunks(s4: torch.Tensor, ids: list[int], size: tuple[int, int], max_elements: int):
    """Yield ``(class ids, c×H×W planes)`` for ascending ``ids`` of ``s4`` (``1×K×h×w`` float),
    each plane bit-equal to that class's plane in the upsampled full tensor."""
    ref_cl = s4.is_contiguous(memory_format=torch.channels_last)
    fmt = torch.channels_last if ref_cl else torch.contiguous_format  # chunks follow the full call
    per_chunk = max(1, max_elements // (size[0] * size[1]))
    for channels, offset, n in _call_layout(ids, s4.shape[1], size, per_chunk, ref_cl, s4.device.type == "cpu"):
        consecutive = channels == list(range(channels[0], channels[0] + len(channels)))
        inp = (s4[:, channels[0]:channels[0] + len(channels)] if consecutive else s4[:, channels])
        inp = inp.contiguous(memory_format=fmt)  # a no-op for a slice of contiguous scores
        up = F.interpolate(inp, size=size, mode="bilinear", align_corners=False)[0]
        yield channels[offset:offset + n], up[offset:offset + n]
        del inp, up  # free this chunk before the next one is allocated (the caller drops its views too)


def upsampled_classes(scores: torch.Tensor, size, max_elements: int = 2 ** 25):
    """Yield ``(class ids, c×H×W planes)`` for every class of ``scores`` (``K×h×w``) in ascending
    order, about ``max_elements`` values at a time; each plane bit-equal to that class's plane of
    ``F.interpolate(scores[None].float(), size, mode="bilinear", align_corners=False)[0]``
    (for refinements that transform the full-size scores chunk by chunk, ``labelless.refine``)."""
    size = (int(size[0]), int(size[1]))
    yield from _upsampled_chunks(scores[None].float(), list(range(scores.shape[0])), size, max_elements)


def _running_argmax(s4, ids, size, scale, max_elements):
    """Max over classes ``ids`` of the upsampled (times ``scale`` when given) scores and the
    first class reaching it: ``(H×W float32, H×W int64)``.

    Each chunk ``c×H×W`` is reduced with ``max(dim=0)`` (its first maximum, like argmax) and
    merged into the running result with a strict ``>``, so a tie keeps the lower class id.
    """
    best = torch.full(size, -math.inf, device=s4.device)
    idx = torch.zeros(size, dtype=torch.long, device=s4.device)
    for chunk_ids, up in _upsampled_chunks(s4, ids, size, max_elements):
        if scale is not None:
            up.mul_(scale)  # same elementwise product as the reference's sim * logit_scale
        m, i = up.max(dim=0)  # H×W: the chunk's max and its first position
        gt = m > best  # strictly greater: a tie keeps the earlier, lower class
        ids_t = torch.tensor(chunk_ids, dtype=torch.long, device=s4.device)
        idx = torch.where(gt, ids_t[i], idx)
        best = torch.maximum(best, m, out=best)
        del up, m, i, gt  # so that two chunks never coexist
    return best, idx


def _exp_sum(s4, m, size, logit_scale, max_elements):
    """``S = Σ_k exp(logit_scale·up_k - m)`` over all classes, one plane at a time in ascending k."""
    total = torch.zeros(size, device=s4.device)
    for _, up in _upsampled_chunks(s4, list(range(s4.shape[1])), size, max_elements):
        up.mul_(logit_scale)
        for plane in up:
            # exp of a fresh contiguous plane, as the reference's torch.exp(x_k - m)
            e = plane.sub_(m) if plane.is_contiguous() else plane - m
            total.add_(e.exp_())
        del up, plane, e  # so that two chunks never coexist
    return total


def upsample_labels(scores: torch.Tensor, size, logit_scale: float = 100.0, bg_threshold: float | None = None,
                    probabilities: bool = False, max_elements: int = 2 ** 25, among=None) -> torch.Tensor:
    """Low-resolution scores ``K×h×w`` → int64 label map ``H×W`` (``size``) on the scores' device.

    Exactly ``labels_from_similarity(F.interpolate(scores[None].float(), size, mode="bilinear",
    align_corners=False)[0], logit_scale, bg_threshold, probabilities)``, without the
    ``K×H×W`` tensor: classes are upsampled ``max(1, max_elements // (H*W))`` planes at a time
    (at least ``_cl_lanes()`` where PyTorch's CPU kernel vectorises across channels, e.g. for
    channels-last ``scores``). When upsampling to ≥ ``PRUNE_MIN_UPSCALE``× the pixels, only
    classes that can win somewhere (``candidate_classes``) are upsampled for the max; the threshold's exp-sum needs every
    class. Scores must be finite.

    ``among`` (ascending class ids): only these classes compete for the maximum, as if the
    others' probabilities were 0 (SCLIP's area threshold, ``Segmenter``); the threshold's
    exp-sum still spans every class, so the confidence is the chosen class's probability
    under the softmax over all of them.
    """
    if scores.dim() != 3 or scores.shape[0] == 0:
        raise ValueError(f"expected K×h×w scores with K >= 1, got shape {tuple(scores.shape)}")
    size = (int(size[0]), int(size[1]))
    if size[0] * size[1] == 0:
        return torch.zeros(size, dtype=torch.long, device=scores.device)
    s4 = scores[None].float()  # the plain computation's input, same memory format
    lo, hi = (float(v) for v in torch.aminmax(s4))  # NaN propagates: one pass instead of isfinite's four
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError("scores contain NaN or infinity")
    logits = bg_threshold is not None and not probabilities
    # pruning compares upsampled values; multiplying by a positive scale keeps a gap of
    # eps-relative size a gap unless the product overflows or underflows
    prune = not logits or (1e-20 <= logit_scale and max(-lo, hi) * logit_scale < 1e38)
    # pruning pays only when upsampling by a good factor (squash: 64×64 → the image): per input
    # value it costs about 2.5× what upsampling + max cost per output value (one 2-core CPU,
    # 150 classes), so slide's working resolution (448×597 → 720×960) skips it
    prune = prune and PRUNE_MIN_UPSCALE * scores.shape[-2] * scores.shape[-1] <= size[0] * size[1]
    pool = list(range(scores.shape[0])) if among is None else [int(i) for i in among]
    if not pool:
        raise ValueError("among: no class left to choose from")
    if prune:  # the candidates among the pool (indices into it)
        ids = [pool[i] for i in candidate_classes(scores if among is None else scores[pool]).tolist()]
    else:
        ids = pool
    best, idx = _running_argmax(s4, ids, size, logit_scale if logits else None, max_elements)
    if bg_threshold is None:
        return idx
    conf = best if probabilities else _exp_sum(s4, best, size, logit_scale, max_elements).reciprocal_()
    return idx.add_(1).masked_fill_(conf < bg_threshold, 0)
