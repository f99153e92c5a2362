"""TAEF2's layers: the 3x3 conv, the residual block with taef2's GroupNorm "pool" branch, the output clamp."""

from __future__ import annotations

import torch
from torch import nn


def conv3x3(c_in: int, c_out: int, **kwargs) -> nn.Conv2d:
    """A 3x3 conv with zero padding 1 (TAESD's ``conv``)."""
    return nn.Conv2d(c_in, c_out, 3, padding=1, **kwargs)


class TAEBlock(nn.Module):
    """TAESD residual block, optionally with taef2's pre-applied GroupNorm "pool" branch."""

    def __init__(self, c_in: int, c_out: int, pooled: bool = False):
        super().__init__()
        self.conv = nn.Sequential(conv3x3(c_in, c_out), nn.ReLU(), conv3x3(c_out, c_out), nn.ReLU(),
                                  conv3x3(c_out, c_out))
        self.skip = nn.Conv2d(c_in, c_out, 1, bias=False) if c_in != c_out else nn.Identity()
        self.fuse = nn.ReLU()
        self.pool = (
            nn.Sequential(nn.Conv2d(c_in, 4 * c_in, 1, bias=False), nn.GroupNorm(4, 4 * c_in), nn.ReLU(),
                          nn.Conv2d(4 * c_in, c_in, 1, bias=False))
            if pooled else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return self.fuse(self.conv(x) + self.skip(x))


class Clamp(nn.Module):
    """TAESD's soft clamp of the latents: ``3 * tanh(x / 3)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3
