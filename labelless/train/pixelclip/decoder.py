"""The small convolutional upsampling decoder of PixelCLIP (training only).

Input: one cosine map per (image, cluster), ``[B·k, 1, h, w]`` (20×20 at 320 px).
``conv3×3(1→64)`` → ``ConvTranspose(64→64, 2, stride 2)`` + double conv → ``ConvTranspose(64→32,
2, stride 2)`` + double conv → ``conv3×3(32→1)`` (4h × 4w, 80×80) → bilinear to ``out_size``
(256×256). Double conv = (conv3×3 without bias → GroupNorm → ReLU) × 2.

What follows the official code (cvlab-kaist/PixelCLIP @ 42f5c9c, ``pixelclip/pixelclip.py``,
``ConvHead`` and ``DoubleConv``): channels (64, 64, 32); GroupNorm with ``channels // 16``
groups; the first and last 3×3 convs have a bias, the double-conv convs do not;
PyTorch default initialisation; final ``F.interpolate(mode="bilinear",
align_corners=False)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DoubleConv(nn.Sequential):
    """(conv3×3, no bias → GroupNorm(c/16) → ReLU) × 2."""

    def __init__(self, in_channels: int, out_channels: int):
        groups = max(1, out_channels // 16)
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.GroupNorm(groups, out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.GroupNorm(groups, out_channels),
            nn.ReLU(inplace=True),
        )


class UpsampleDecoder(nn.Module):
    """``[N, 1, h, w]`` similarity maps → ``[N, 1, out_size, out_size]`` mask logits.

    Args:
        out_size: output side (or (height, width)); None keeps the 4× upsampled maps.
        channels: widths after the first conv, the first and the second upsampling.
    """

    def __init__(self, out_size: int | tuple[int, int] | None = 256, channels: tuple[int, int, int] = (64, 64, 32)):
        super().__init__()
        c0, c1, c2 = channels
        self.out_size = (out_size, out_size) if isinstance(out_size, int) else out_size
        self.conv0 = nn.Conv2d(1, c0, 3, padding=1)
        self.up1 = nn.ConvTranspose2d(c0, c1, 2, stride=2)
        self.conv1 = DoubleConv(c1, c1)
        self.up2 = nn.ConvTranspose2d(c1, c2, 2, stride=2)
        self.conv2 = DoubleConv(c2, c2)
        self.proj = nn.Conv2d(c2, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv0(x)  # N×64×h×w
        x = self.conv1(self.up1(x))  # N×64×2h×2w
        x = self.conv2(self.up2(x))  # N×32×4h×4w
        x = self.proj(x)  # N×1×4h×4w
        if self.out_size is not None and tuple(x.shape[-2:]) != tuple(self.out_size):
            x = F.interpolate(x, size=self.out_size, mode="bilinear", align_corners=False)
        return x
