"""Momentum (EMA) teacher of PixelCLIP's image encoder.

``teacher = γ·teacher + (1 − γ)·student`` for every parameter (γ = 0.999), floating-point
buffers likewise, other buffers copied. The official code (cvlab-kaist/PixelCLIP @ 42f5c9c,
``PixelCLIP.momentum_update``) updates parameters only, every training forward before
the teacher forward; open_clip ViT and timm ConvNeXt towers hold no buffers that
matter, so including buffers changes nothing for them and keeps BatchNorm-like towers
consistent.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def make_teacher(visual: nn.Module) -> nn.Module:
    """A deep copy of ``visual`` with every parameter frozen (``requires_grad=False``)."""
    teacher = copy.deepcopy(visual)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, gamma: float = 0.999) -> None:
    """In place: ``teacher ← γ·teacher + (1 − γ)·student`` (parameters and float buffers).

    The two modules must have the same structure (parameter and buffer names).
    """
    t_params = dict(teacher.named_parameters())
    s_params = dict(student.named_parameters())
    if t_params.keys() != s_params.keys():
        raise ValueError("teacher and student have different parameters")
    names = list(t_params)
    t = [t_params[n] for n in names]
    s = [s_params[n].detach().to(t_params[n].dtype) for n in names]
    if t:
        torch._foreach_mul_(t, gamma)
        torch._foreach_add_(t, s, alpha=1.0 - gamma)
    t_bufs = dict(teacher.named_buffers())
    s_bufs = dict(student.named_buffers())
    if t_bufs.keys() != s_bufs.keys():
        raise ValueError("teacher and student have different buffers")
    for name, tb in t_bufs.items():
        sb = s_bufs[name]
        if tb.is_floating_point():
            tb.mul_(gamma).add_(sb.to(tb.dtype), alpha=1.0 - gamma)
        else:
            tb.copy_(sb)
