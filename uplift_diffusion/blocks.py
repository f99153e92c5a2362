"""Convolutional building blocks of UPLiFT: channel LayerNorm, conv blocks, the 2x step and the residual rule."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

NORM_TYPES = ("batch", "layer")


def add_residual(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Add ``x`` to ``out`` with UPLiFT's residual rule, which lets blocks change their width.

    Equal channels: plain sum. ``x`` wider: its first ``C_out`` channels are added. ``x`` narrower: it is
    zero-padded up to ``C_out`` channels (so only the first ``C_in`` channels of ``out`` receive it).
    """
    c_out, c_in = out.shape[1], x.shape[1]
    if c_in == c_out:
        return out + x
    if c_in > c_out:
        return out + x[:, :c_out]
    return torch.cat([out[:, :c_in] + x, out[:, c_in:]], dim=1)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of a [B, C, H, W] map, independently at every pixel.

    Biased variance, per-channel affine weight and bias. Statistics are computed in float32 so that fp16 / bf16
    activations stay numerically sane; the result is cast back to the input dtype.

    Args:
        num_channels (`int`): number of channels C.
        eps (`float`, defaults to 1e-6): added to the variance.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        mean = x32.mean(dim=1, keepdim=True)
        var = (x32 - mean).pow(2).mean(dim=1, keepdim=True)
        y = (x32 - mean) * torch.rsqrt(var + self.eps)
        y = y * self.weight.float()[:, None, None] + self.bias.float()[:, None, None]
        return y.to(x.dtype)


def make_norm(norm_type: str, num_channels: int) -> nn.Module:
    if norm_type == "batch":
        return nn.BatchNorm2d(num_channels, eps=1e-5)
    if norm_type == "layer":
        return ChannelLayerNorm(num_channels, eps=1e-6)
    raise ValueError(f"norm_type must be one of {NORM_TYPES}, got {norm_type!r}")


class ConvBlock(nn.Module):
    """``num_convs`` x (3x3 conv without bias -> norm -> ReLU), then a 1x1 conv with bias, plus the residual rule.

    ``num_convs=1`` is the reference "SingleConv", ``num_convs=2`` its "DoubleConv"; the layers live in one
    ``nn.Sequential`` called ``conv`` so that parameter names follow the published checkpoints.

    Args:
        in_channels (`int`): input channels.
        out_channels (`int`): output channels.
        num_convs (`int`): number of 3x3 conv / norm / ReLU triples.
        norm_type (`str`): ``"batch"`` or ``"layer"``.
    """

    def __init__(self, in_channels: int, out_channels: int, num_convs: int, norm_type: str):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for _ in range(num_convs):
            layers += [
                nn.Conv2d(channels, out_channels, 3, padding=1, bias=False),
                make_norm(norm_type, out_channels),
                nn.ReLU(inplace=True),
            ]
            channels = out_channels
        layers.append(nn.Conv2d(out_channels, out_channels, 1))
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return add_residual(self.conv(x), x)


class BlockGroup(nn.Module):
    """A chain of ``num_blocks`` :class:`ConvBlock`; the first maps ``in_channels`` to ``out_channels``.

    Args:
        in_channels (`int`): input channels.
        out_channels (`int`): channels of every block's output.
        num_blocks (`int`): number of blocks (>= 1).
        num_convs (`int`): 3x3 convs per block (1 or 2).
        norm_type (`str`): ``"batch"`` or ``"layer"``.
    """

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, num_convs: int, norm_type: str):
        super().__init__()
        if num_blocks < 1:
            raise ValueError(f"a block group needs at least one block, got num_blocks={num_blocks}")
        widths = [in_channels] + [out_channels] * num_blocks
        self.blocks = nn.ModuleList(
            ConvBlock(c_in, c_out, num_convs, norm_type) for c_in, c_out in zip(widths[:-1], widths[1:], strict=True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class UpStep(nn.Module):
    """2x upsampling: a stride-2 transposed conv plus the bilinearly upsampled input (align_corners=True).

    Args:
        in_channels (`int`): input channels.
        out_channels (`int`): output channels.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [B, C, h, w] -> [B, C, 2h, 2w]
        skip = F.interpolate(x, size=(2 * x.shape[-2], 2 * x.shape[-1]), mode="bilinear", align_corners=True)
        return add_residual(self.up(x), skip)


def nearest_resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Nearest-neighbour resize to an exact size (source index = floor(dst * in / out))."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="nearest")
