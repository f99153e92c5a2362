"""Convolutional building blocks of UPLiFT: channel LayerNorm, conv blocks, the 2x step and the residual rule."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

NORM_TYPES = ("batch", "layer")

# dtypes whose convolutions oneDNN runs on the CPU (the channels-last inference path below).
_ONEDNN_DTYPES = (torch.float32, torch.bfloat16)
_ONEDNN = torch.backends.mkldnn.is_available()


def channels_last_inference(x: torch.Tensor) -> bool:
    """Whether ``x`` takes the channels-last inference path: a CPU tensor of a oneDNN dtype, autograd off.

    On that path every conv block runs on channels-last maps ([B, C, H, W] with C innermost in memory): oneDNN's
    convolutions need no layout conversion, 1x1 convs run on oneDNN too (PyTorch sends single-threaded 1x1 convs
    to a GEMM that is 2-10x slower on CPUs where MKL takes its generic code path), the channel LayerNorm is one
    ``F.layer_norm`` over the innermost axis, and residuals are added in place. The results equal the default
    layout's up to float rounding (summation order), well inside the 1e-5 parity tolerance. With autograd on
    (training) the contiguous layout and the reference's exact sequence of operations are kept, and under
    ``torch.compile`` inductor chooses layouts and kernels itself.
    """
    return (
        _ONEDNN
        and x.device.type == "cpu"
        and x.dtype in _ONEDNN_DTYPES
        and not torch.is_grad_enabled()
        and not torch.compiler.is_compiling()
    )


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


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


def concat_channels(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """``torch.cat(parts, dim=1)``, written straight into a channels-last map on the channels-last inference path
    (a plain cat of mixed layouts gives a contiguous map that the next conv block would copy again)."""
    if not channels_last_inference(parts[0]):
        return torch.cat(list(parts), dim=1)
    b, _, h, w = parts[0].shape
    out = torch.empty(b, sum(p.shape[1] for p in parts), h, w, dtype=parts[0].dtype, device=parts[0].device,
                      memory_format=torch.channels_last)
    pixels = out.permute(0, 2, 3, 1).view(b, h * w, out.shape[1])  # [B, HW, C_total]: the same memory
    c0 = 0
    for part in parts:
        c1 = c0 + part.shape[1]
        if part.is_contiguous() and part.shape[1] > 1:
            # A contiguous (channels-first) part is a [C, HW] matrix per image: PyTorch's blocked 2-D transpose
            # into a contiguous [HW, C] is several times faster than a strided copy into the interleaved slice.
            for i in range(b):
                pixels[i, :, c0:c1] = part[i].view(part.shape[1], h * w).t().contiguous()
        else:
            out[:, c0:c1].copy_(part)  # channels innermost on both sides
        c0 = c1
    return out


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` whose 1x1 convolutions of channels-last inference maps run on oneDNN, like its 3x3 ones.

    Same parameters and state-dict keys as ``nn.Conv2d``; every other case is ``nn.Conv2d`` unchanged.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            self.kernel_size == (1, 1)
            and self.stride == (1, 1)
            and self.groups == 1
            and self.padding_mode == "zeros"
            and channels_last_inference(x)
            and x.dtype == self.weight.dtype
            and x.is_contiguous(memory_format=torch.channels_last)
        ):
            weight = self.weight.contiguous(memory_format=torch.channels_last)
            return torch.mkldnn_convolution(x, weight, self.bias, [0, 0], [1, 1], [1, 1], 1)
        return super().forward(x)


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
        pixels_channels = x.permute(0, 2, 3, 1)  # [B, H, W, C]: contiguous for a channels-last map
        if pixels_channels.is_contiguous() and channels_last_inference(x):
            # One fused pass over the channel axis, already innermost in memory (same statistics, float32).
            y = F.layer_norm(pixels_channels.float(), (x.shape[1],), self.weight.float(), self.bias.float(), self.eps)
            return y.to(x.dtype).permute(0, 3, 1, 2)
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
        if channels_last_inference(x):
            return self._forward_channels_last(to_channels_last(x), stride)
        y = x
        for i, layer in enumerate(self.conv):
            y = _strided_conv(layer, y, stride) if i == 0 and stride != 1 else layer(y)
        return add_residual(y, x[..., ::stride, ::stride])

    def _forward_channels_last(self, x: torch.Tensor, stride: int = 1) -> torch.Tensor:
        """The channels-last inference path (see :func:`channels_last_inference`): same values, fewer passes.

        An eval-mode BatchNorm is folded into its conv and the ReLU runs inside oneDNN's convolution, so a
        conv / norm / ReLU triple is one kernel and one write of its output.
        """
        y = x
        for i in range(0, len(self.conv) - 1, 3):  # (3x3 conv, norm, ReLU) triples, then the 1x1 conv
            conv, norm, relu = self.conv[i : i + 3]
            s = stride if i == 0 else 1
            if _foldable(norm) and y.dtype == conv.weight.dtype:
                y = _conv_bn_relu(y, conv, norm, s)
            else:
                y = relu(norm(_strided_conv(conv, y, s) if s != 1 else conv(y)))
        return add_residual(self.conv[-1](y), x[..., ::stride, ::stride], inplace=True)  # the conv output is ours


def _strided_conv(conv: nn.Conv2d, x: torch.Tensor, stride: int) -> torch.Tensor:
    """``conv(x)[..., ::stride, ::stride]`` without computing the skipped pixels (a 3x3 conv with padding 1)."""
    return F.conv2d(x, conv.weight, conv.bias, stride, conv.padding, conv.dilation, conv.groups)


def _foldable(norm: nn.Module) -> bool:
    return isinstance(norm, nn.BatchNorm2d) and not norm.training and norm.running_var is not None


def _folded_conv_bn(conv: nn.Conv2d, norm: nn.BatchNorm2d, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The conv's weight with the eval BatchNorm folded in (channels-last) and the bias it leaves, in ``dtype``.

    Folded once and kept on the conv until a parameter or buffer changes: an in-place update (load_state_dict, an
    optimiser step) bumps the tensor's version, and ``.to()`` / assignment gives it new storage. The cache holds
    the storages it was folded from, so none of them can be freed and its address reused by a new tensor while
    the cached fold exists.
    """
    sources = tuple(t.detach() for t in (conv.weight, norm.weight, norm.bias, norm.running_mean, norm.running_var))
    key = (dtype, norm.eps, *((t.data_ptr(), t._version) for t in sources))
    cached = getattr(conv, "_folded_bn", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    scale = norm.weight.float() * torch.rsqrt(norm.running_var.float() + norm.eps)  # per output channel, float32
    weight = (conv.weight.float() * scale[:, None, None, None]).to(dtype)
    bias = (norm.bias.float() - norm.running_mean.float() * scale).to(dtype)
    folded = (weight.contiguous(memory_format=torch.channels_last), bias)
    conv._folded_bn = (key, folded, sources)  # a plain attribute: not a parameter, buffer or state-dict entry
    return folded


def _conv_bn_relu(x: torch.Tensor, conv: nn.Conv2d, norm: nn.BatchNorm2d, stride: int = 1) -> torch.Tensor:
    """``relu(norm(conv(x)))`` for a bias-free conv and an eval-mode BatchNorm, as one oneDNN conv + ReLU."""
    weight, bias = _folded_conv_bn(conv, norm, x.dtype)
    strides = [stride, stride] if stride != 1 else list(conv.stride)
    return torch.ops.mkldnn._convolution_pointwise(
        x, weight, bias, list(conv.padding), strides, list(conv.dilation), conv.groups, "relu", [], ""
    )


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
        return add_residual(self.up(x), skip, inplace=channels_last_inference(x))  # up(x) is ours to add into


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
