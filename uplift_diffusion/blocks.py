"""Convolutional building blocks of UPLiFT: channel LayerNorm, conv blocks, the 2x step and the residual rule."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import fast_paths

NORM_TYPES = ("batch", "layer")


def channels_last_inference(x: torch.Tensor, layer: nn.Module | None = None) -> bool:
    """Whether ``x`` takes the CPU backend's channels-last inference path (see :mod:`uplift_diffusion.fast_paths`):
    fast paths on (for ``layer``: as its plan says), a CPU tensor of a dtype oneDNN runs natively here, autograd
    off, not under ``torch.compile``."""
    return fast_paths.active(x, layer)


def add_residual(out: torch.Tensor, x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """Add ``x`` to ``out`` with UPLiFT's residual rule, which lets blocks change their width.

    Equal channels: plain sum. ``x`` wider: its first ``C_out`` channels are added. ``x`` narrower: it is
    zero-padded up to ``C_out`` channels (so only the first ``C_in`` channels of ``out`` receive it).
    ``inplace=True`` adds into ``out`` (same values, no new tensor); only for an ``out`` nothing else holds.
    """
    c_out, c_in = out.shape[1], x.shape[1]
    if inplace:
        if c_in >= c_out:
            return out.add_(x[:, :c_out])
        out[:, :c_in].add_(x)
        return out
    if c_in == c_out:
        return out + x
    if c_in > c_out:
        return out + x[:, :c_out]
    return torch.cat([out[:, :c_in] + x, out[:, c_in:]], dim=1)


def concat_channels(parts: Sequence[torch.Tensor], layer: nn.Module | None = None) -> torch.Tensor:
    """``torch.cat(parts, dim=1)`` (written channels-last by the backend on the inference path of ``layer``)."""
    return fast_paths.concat_channels(parts, layer)


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters and state-dict keys) whose 1x1 convolutions of channels-last inference maps
    run on oneDNN like its 3x3 ones, where the backend found that possible (:func:`fast_paths.conv2d`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_paths.conv2d(self, x)


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
        fused = fast_paths.channel_layer_norm(x, self.weight, self.bias, self.eps, self)  # channels-last maps: one pass
        if fused is not None:
            return fused
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
                Conv2d(channels, out_channels, 3, padding=1, bias=False),
                make_norm(norm_type, out_channels),
                nn.ReLU(inplace=True),
            ]
            channels = out_channels
        layers.append(Conv2d(out_channels, out_channels, 1))
        self.conv = nn.Sequential(*layers)
        # Only the first residual_channels input channels pass through the residual rule (None: all of them).
        self.residual_channels: int | None = None

    @property
    def num_convs(self) -> int:
        return len(self.conv) // 3

    def forward(self, x: torch.Tensor, stride: int = 1) -> torch.Tensor:
        """[B, C_in, H, W] -> [B, C_out, H, W]; with ``stride`` s > 1 only the output pixels ``[::s, ::s]``.

        A strided block equals the full block subsampled (``block(x)[..., ::s, ::s]``, up to float rounding): its
        3x3 conv runs with stride s and everything after it is per pixel. Only single-conv blocks can do this (a
        second 3x3 conv would read the skipped pixels), and only outside training (a training-mode BatchNorm
        takes statistics over every pixel).
        """
        if stride != 1 and (self.num_convs != 1 or self.training):
            raise ValueError(f"a strided ConvBlock needs num_convs=1 and eval mode (got num_convs={self.num_convs}, "
                             f"training={self.training})")
        x = fast_paths.inference_layout(x, self)  # channels-last on the CPU inference path, else unchanged
        y = x
        for i in range(0, len(self.conv) - 1, 3):  # (3x3 conv, norm, ReLU) triples, then the 1x1 conv
            conv, norm, relu = self.conv[i : i + 3]
            y = fast_paths.conv_norm_relu(y, conv, norm, relu, stride if i == 0 else 1)
        return self._finish(y, x[..., ::stride, ::stride])

    def _finish(self, y: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        if self.residual_channels is not None:
            residual = residual[:, :self.residual_channels]
        # The 1x1 conv's output is this block's own tensor: the backend may add the residual into it in place.
        return add_residual(self.conv[-1](y), residual, inplace=fast_paths.active(y, self))

    def can_pack(self, x: torch.Tensor, stride: int) -> bool:
        """Whether :meth:`forward_packed` can serve a strided next block here: a single-conv block in eval mode
        with its weights on ``x``'s device, and a map of at least two whole cells of ``stride`` >= 4 pixels (at 2
        or 3 the next block reads every pixel)."""
        h, w = x.shape[-2:]
        return (stride >= 4 and self.num_convs == 1 and not self.training and h % stride == 0 and w % stride == 0
                and h >= 2 * stride and w >= 2 * stride and fast_paths.resident(x, self.conv[0]))

    def forward_packed(self, x: torch.Tensor, stride: int) -> torch.Tensor:
        """This block's output only at the pixels that a next block strided by s reads: rows and columns
        ``s*i - 1, s*i, s*i + 1``, packed three per cell ([B, C_out, 3H/s, 3W/s]; packed row ``3*i + j`` is row
        ``s*i - 1 + j``, and the packed row and column of index -1 are zeros, the next conv's padding).

        Same values as ``forward(x)`` at those pixels, up to float rounding, at 9/s^2 of its cost: the 3x3 conv
        runs as nine convs strided by s, one for each pixel of the cell (see :meth:`can_pack`), and everything
        after it is per pixel. :meth:`forward_from_packed` of the next block reads the result.
        """
        x = fast_paths.inference_layout(x, self)
        conv, norm, relu = self.conv[:3]
        b, _, h, w = x.shape
        cells = (h // stride, w // stride)
        y = x.new_zeros(b, conv.out_channels, 3 * cells[0], 3 * cells[1]).contiguous(memory_format=_layout(x))
        grid = y.view(b, conv.out_channels, cells[0], 3, cells[1], 3)
        # Per axis and offset d of -1, 0, 1: where the strided conv's input starts, its padding, and which cells
        # its output fills (offset -1 of the first cell lies outside the image).
        axis = ((stride - 2, 0, slice(1, None)), (0, 1, slice(None)), (0, 0, slice(None)))
        for j, (top, pad_rows, rows) in enumerate(axis):
            for k, (left, pad_cols, cols) in enumerate(axis):
                grid[:, :, rows, j, cols, k] = fast_paths.conv2d(conv, x[:, :, top:, left:], stride,
                                                                 (pad_rows, pad_cols))
        y = self._finish(relu(norm(y)), _pack_around(x, stride))
        y[:, :, 0].zero_()
        y[:, :, :, 0].zero_()
        return y

    def forward_from_packed(self, packed: torch.Tensor) -> torch.Tensor:
        """``forward(x, stride=s)`` from the previous block's :meth:`forward_packed` map (the same s): the 3x3 conv
        of every output pixel reads exactly one packed 3 x 3 cell, so it runs strided by 3 without padding."""
        if self.num_convs != 1 or self.training:
            raise ValueError("a block reading a packed map needs num_convs=1 and eval mode")
        packed = fast_paths.inference_layout(packed, self)
        conv, norm, relu = self.conv[:3]
        y = fast_paths.conv_norm_relu(packed, conv, norm, relu, 3, padding=(0, 0))
        return self._finish(y, packed[..., 1::3, 1::3])


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

    def forward(self, x: torch.Tensor, last_stride: int = 1) -> torch.Tensor:
        """``last_stride`` s > 1: the last block computes only the output pixels ``[::s, ::s]`` (see
        :meth:`ConvBlock.forward`); the group's output is then [B, C_out, H/s, W/s]."""
        if len(self.blocks) >= 2 and self.blocks[-2].can_pack(x, last_stride):
            # The block before the strided one computes only the pixels that one reads (9 / s^2 of them).
            for block in self.blocks[:-2]:
                x = block(x)
            return self.blocks[-1].forward_from_packed(self.blocks[-2].forward_packed(x, last_stride))
        for i, block in enumerate(self.blocks):
            x = block(x, last_stride) if i == len(self.blocks) - 1 and last_stride != 1 else block(x)
        return x

    @property
    def can_stride_last(self) -> bool:
        return self.blocks[-1].num_convs == 1


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
        return add_residual(self.up(x), skip, inplace=channels_last_inference(x, self))  # up(x) is ours to add into


def _layout(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() \
        else torch.contiguous_format


def _pack_around(x: torch.Tensor, stride: int) -> torch.Tensor:
    """The pixels of x at rows and columns ``s*i - 1, s*i, s*i + 1``, packed three per cell as
    :meth:`ConvBlock.forward_packed` packs them (zeros for index -1)."""
    b, c, h, w = x.shape
    n, m = h // stride, w // stride
    out = x.new_zeros(b, c, 3 * n, 3 * m).contiguous(memory_format=_layout(x))
    grid = out.view(b, c, n, 3, m, 3)
    inner_rows = x[:, :, stride - 1 :].unfold(2, 3, stride)  # [B, C, n-1, W, 3]: rows s*i-1.. for i >= 1
    grid[:, :, 1:, :, 1:, :] = inner_rows[:, :, :, stride - 1 :].unfold(3, 3, stride).permute(0, 1, 2, 4, 3, 5)
    grid[:, :, 0, 1:, 1:, :] = x[:, :, :2, stride - 1 :].unfold(3, 3, stride)  # rows 0, 1 of the first cell row
    grid[:, :, 1:, :, 0, 1:] = inner_rows[:, :, :, :2].permute(0, 1, 2, 4, 3)  # columns 0, 1 of the first cells
    grid[:, :, 0, 1:, 0, 1:] = x[:, :, :2, :2]
    return out


def nearest_resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Nearest-neighbour resize to an exact size (source index = floor(dst * in / out)).

    An integer downscale s is the strided view ``x[..., ::s, ::s]`` (the same pixels, no copy; ``F.interpolate``
    copies its whole input first).
    """
    (h, w), (oh, ow) = x.shape[-2:], tuple(size)
    if (h, w) == (oh, ow):
        return x
    if h % oh == 0 and w % ow == 0:
        return x[..., :: h // oh, :: w // ow]
    return F.interpolate(x, size=(oh, ow), mode="nearest")
