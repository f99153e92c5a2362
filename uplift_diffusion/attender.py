"""The Local Attender (paper §3.2): guide-predicted attention over a fixed local neighbourhood of value tokens."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import fast_paths
from .blocks import Conv2d, add_residual
from .utils.errors import InputError
from .utils.image_ops import bilinear_resize
from .utils.resize_matmul import bilinear_resize_fast

# Which (di, dj) of the 5x5 square each neighbourhood keeps (paper Fig. 8). The offsets are listed row-major;
# that order is the order of the attender's logit channels, so it is part of the checkpoint format.
_PATTERNS = {
    5: lambda di, dj: abs(di) + abs(dj) <= 1,  # plus
    9: lambda di, dj: max(abs(di), abs(dj)) <= 1,  # 3x3 square
    13: lambda di, dj: abs(di) + abs(dj) <= 2,  # diamond
    17: lambda di, dj: abs(di) + abs(dj) <= 2 or abs(di) == abs(dj) == 2,  # star: diamond + far corners
    25: lambda di, dj: True,  # 5x5 square
}
NEIGHBOURHOODS: dict[int, tuple[tuple[int, int], ...]] = {
    n: tuple((di, dj) for di in range(-2, 3) for dj in range(-2, 3) if keep(di, dj)) for n, keep in _PATTERNS.items()
}


def neighbourhood_offsets(n: int) -> tuple[tuple[int, int], ...]:
    """The (di, dj) offsets of the n-neighbourhood, in checkpoint channel order."""
    if n not in NEIGHBOURHOODS:
        raise InputError(
            f"unknown Local Attender neighbourhood size n={n}; supported sizes are {sorted(NEIGHBOURHOODS)}"
        )
    return NEIGHBOURHOODS[n]


def upsample_factor(guide_size: Sequence[int], value_size: Sequence[int]) -> int:
    """The integer c with guide = c x value in both dimensions, or a ValueError that says why not."""
    (gh, gw), (vh, vw) = guide_size, value_size
    if vh < 1 or vw < 1 or gh % vh or gw % vw or gh // vh != gw // vw:
        raise InputError(
            f"the guide ({gh}x{gw}) must be the same integer multiple c of the value map ({vh}x{vw}) in height and "
            f"width (c = 1, 2, 3, ...)"
        )
    return gh // vh


# Tile sizes of the eager path: a stripe of about _TILE_ROW_ELEMENTS pixels per channel, and about
# _TILE_ELEMENTS output elements per tile (~1 MB in float32, so a tile and its upsampled values stay in L2).
_TILE_ROW_ELEMENTS = 16384
_TILE_ELEMENTS = 262144
# Value maps of up to this many tokens take the one-matmul path (_attend_gathered). Its neighbourhood gather is
# n / c^2 times the output, so it wins only while everything stays in cache: measured on one AVX-512 core (C = 384,
# c = 2; the same with ATen and oneDNN limited to AVX2): 8x8 tokens 0.55 vs 0.67 ms, 10x10 0.8 vs 1.1 ms, 12x12
# 1.8 vs 1.3 ms, 16x16 2.35 vs 1.64 ms (tiles).
_GATHER_MAX_TOKENS = 128


def _radius(offsets: Sequence[tuple[int, int]]) -> int:
    return max(max(abs(di), abs(dj)) for di, dj in offsets)


_COMPLEX = {torch.float32: torch.complex64, torch.float64: torch.complex128}


def _nearest_up(x: torch.Tensor, c: int) -> torch.Tensor:
    """Nearest-neighbour upsampling by the integer c: [B, C, h, w] -> [B, C, c*h, c*w]."""
    if c == 1:
        return x
    b, ch, h, w = x.shape
    if c == 2 and x.dtype in _COMPLEX:
        # Each value twice side by side is a complex number with equal parts: one vectorised pass, where the expand
        # below copies element by element (its innermost axis has stride 0); 3.7x faster for a [16, 68, 68] tile.
        up = x.new_empty(b, ch, h, 2, w, dtype=_COMPLEX[x.dtype])
        torch.complex(x, x, out=up[:, :, :, 0])
        up[:, :, :, 1] = up[:, :, :, 0]
        return torch.view_as_real(up).view(b, ch, 2 * h, 2 * w)
    return x[:, :, :, None, :, None].expand(b, ch, h, c, w, c).reshape(b, ch, h * c, w * c)


def local_attend(
    attention: torch.Tensor,
    value: torch.Tensor,
    offsets: Sequence[tuple[int, int]],
    output_size: Sequence[int] | None = None,
    fast: bool | None = None,
) -> torch.Tensor:
    """Convex combination of value tokens: ``out[:, y, x] = sum_k A[k, y, x] * V[:, y//c + di_k, x//c + dj_k]``.

    Eager path: the output is built tile by tile (a chunk of channels x a stripe of rows, ~1 MB), so the n
    multiply-adds of a tile run in cache instead of streaming the whole output n times. Each tile reads its value
    rows with the replicate padding applied to that tile alone and nearest-upsamples them once; a shift by (di, dj)
    value tokens is then a shift by (c*di, c*dj) pixels of that upsampled tile, so every multiply-add is a
    contiguous, vectorised ``addcmul_``. Peak extra memory is the output plus one tile: no padded copy of the value
    map and no [B, C, n, cH, cW] neighbourhood tensor is ever built. Small value maps (at most
    ``_GATHER_MAX_TOKENS`` tokens, float32 / float64) take one batched matrix product instead
    (:func:`_attend_gathered`), quicker there than any tile loop. Under ``torch.compile`` this runs as the
    custom op ``torch.ops.uplift_diffusion.local_attend`` (no graph break, no traced tile loop); when gradients are
    needed there, the single-expression :func:`local_attend_fused` is traced instead. With the fast paths switched
    off (``UPLIFT_FAST_PATHS=0``, :func:`uplift_diffusion.fast_paths.set_fast_paths`) the plain sequence runs: the
    value map padded once and n multiply-adds of whole-output broadcast views, then the resize.

    Args:
        attention: [B, n, cH, cW] weights (softmax over n already applied).
        value: [B, C, H, W] value map; indices outside it are clamped (replicate padding).
        offsets: the n (di, dj) offsets, in the order of ``attention``'s channels.
        output_size: optional (H', W'): the result resized with :func:`~uplift_diffusion.utils.image_ops.
            bilinear_resize` (antialiased, per channel). Eagerly each finished tile of whole channels is resized
            while it is in cache, so the [B, C, cH, cW] map is never stored: same values as resizing afterwards.
            The fast paths resize float32 / float64 maps as banded matrix products with the same weights
            (:func:`~uplift_diffusion.utils.resize_matmul.resize_matmul`; equal up to float rounding).
        fast: whether the fast paths (tiles, the small-map matmul) may run; ``None``: the process-wide switch
            (:func:`uplift_diffusion.fast_paths.fast_paths_enabled`). :class:`LocalAttender` passes its layer plan.

    Returns:
        [B, C, cH, cW] (or [B, C, H', W']) in the value's dtype, contiguous.
    """
    if (torch.compiler.is_compiling() or (torch.is_grad_enabled() and (attention.requires_grad or value.requires_grad))
            or not (fast_paths.fast_paths_enabled() if fast is None else fast)):
        out = _attend_traced(attention, value, offsets)
        return out if output_size is None else bilinear_resize(out, output_size)
    b, channels, h, w = value.shape
    c = upsample_factor(attention.shape[-2:], (h, w))
    r = _radius(offsets)
    if output_size is not None and tuple(output_size) == (h * c, w * c):
        output_size = None
    if h * w <= _GATHER_MAX_TOKENS and value.dtype in (torch.float32, torch.float64):
        out = _attend_gathered(attention, value, offsets, c, r)
        return out if output_size is None else bilinear_resize_fast(out, output_size)
    # Tile: `rows` value rows (c * rows output rows) x `chunk` channels, about _TILE_ELEMENTS output elements; whole
    # channels when the tiles are resized.
    rows = h if output_size is not None else max(1, min(h, _TILE_ROW_ELEMENTS // (c * c * w)))
    chunk = max(1, min(channels, _TILE_ELEMENTS // (rows * c * c * w)))
    if output_size is None:
        out = value.new_empty(b, channels, h * c, w * c)
    else:
        out = value.new_empty(b, channels, *output_size)
        scratch = value.new_empty(b, chunk, h * c, w * c)  # one tile, reused
    for y0 in range(0, h, rows):
        y1 = min(y0 + rows, h)
        attn = attention[:, :, y0 * c : y1 * c]  # [B, n, c*rows, cW]
        top, bottom = max(y0 - r, 0), min(y1 + r, h)
        pad = (r, r, r - (y0 - top), r - (bottom - y1))  # replicate padding of this stripe only
        for c0 in range(0, channels, chunk):
            c1 = min(c0 + chunk, channels)
            src = value[:, c0:c1, top:bottom]
            src = F.pad(src, pad, mode="replicate") if r else src  # [B, chunk, rows+2r, W+2r]
            up = _nearest_up(src, c)  # [B, chunk, c*(rows+2r), c*(W+2r)]
            tile = (out[:, c0:c1, y0 * c : y1 * c] if output_size is None
                    else scratch[:, : c1 - c0])  # [B, chunk, c*rows, cW]
            for k, (di, dj) in enumerate(offsets):
                y, x = c * (r + di), c * (r + dj)
                shifted = up[:, :, y : y + tile.shape[2], x : x + w * c]
                if k == 0:
                    torch.mul(shifted, attn[:, :1], out=tile)
                else:
                    tile.addcmul_(shifted, attn[:, k : k + 1])
            if output_size is not None:
                bilinear_resize_fast(tile, output_size, out=out[:, c0:c1])
    return out


def _attend_gathered(attention: torch.Tensor, value: torch.Tensor, offsets: Sequence[tuple[int, int]], c: int,
                     r: int) -> torch.Tensor:
    """:func:`local_attend` as one batched matrix product over the value tokens: every token's c x c output cell is
    ``attention[c*c, n] @ neighbours[n, C]``, with the n neighbours gathered once from the replicate-padded map."""
    b, channels, h, w = value.shape
    n = len(offsets)
    padded = F.pad(value, (r, r, r, r), mode="replicate") if r else value
    pixels = padded.permute(0, 2, 3, 1)  # [B, H+2r, W+2r, C]
    neighbours = torch.stack([pixels[:, r + di : r + di + h, r + dj : r + dj + w] for di, dj in offsets], dim=3)
    cells = attention.reshape(b, n, h, c, w, c).permute(0, 2, 4, 3, 5, 1).reshape(b * h * w, c * c, n)
    out = torch.bmm(cells, neighbours.view(b * h * w, n, channels))  # [B*H*W, c*c, C]
    return out.view(b, h, w, c, c, channels).permute(0, 5, 1, 3, 2, 4).reshape(b, channels, h * c, w * c).contiguous()


def _attend_traced(attention: torch.Tensor, value: torch.Tensor, offsets: Sequence[tuple[int, int]]) -> torch.Tensor:
    """The autograd / ``torch.compile`` forms of :func:`local_attend` (no output size)."""
    if torch.compiler.is_compiling():
        if torch.is_grad_enabled() and (attention.requires_grad or value.requires_grad):
            return local_attend_fused(attention, value, offsets)  # differentiable, fused by inductor
        # The tiled kernel as one opaque op: no graph break, and faster on CPU than inductor's fusion.
        return torch.ops.uplift_diffusion.local_attend(attention, value, [i for pair in offsets for i in pair])
    c = upsample_factor(attention.shape[-2:], value.shape[-2:])
    r = _radius(offsets)
    padded = F.pad(value, (r, r, r, r), mode="replicate") if r else value  # [B, C, H+2r, W+2r]
    return _attend_differentiable(attention, padded, offsets, c, r)


@torch.library.custom_op("uplift_diffusion::local_attend", mutates_args=())
def _local_attend_op(attention: torch.Tensor, value: torch.Tensor, offsets: list[int]) -> torch.Tensor:
    """:func:`local_attend` (inference) as an op that ``torch.compile`` keeps whole; offsets flattened (di, dj)."""
    return local_attend(attention, value, list(zip(offsets[::2], offsets[1::2], strict=True)))


@_local_attend_op.register_fake
def _(attention: torch.Tensor, value: torch.Tensor, offsets: list[int]) -> torch.Tensor:
    return value.new_empty(value.shape[0], value.shape[1], attention.shape[-2], attention.shape[-1])


def _attend_differentiable(
    attention: torch.Tensor, padded: torch.Tensor, offsets: Sequence[tuple[int, int]], c: int, r: int
) -> torch.Tensor:
    """Training path: n whole-output ``addcmul_`` of broadcast views (autograd keeps only views, no copies)."""
    b, channels, hp, wp = padded.shape
    h, w = hp - 2 * r, wp - 2 * r
    out = padded.new_zeros(b, channels, h, c, w, c)
    attn = attention.reshape(b, -1, 1, h, c, w, c)  # the c x c cell of every value token
    for k, (di, dj) in enumerate(offsets):
        shifted = padded[:, :, r + di : r + di + h, r + dj : r + dj + w]  # [B, C, H, W]
        out.addcmul_(shifted[:, :, :, None, :, None], attn[:, k])
    return out.reshape(b, channels, h * c, w * c)


def local_attend_fused(
    attention: torch.Tensor, value: torch.Tensor, offsets: Sequence[tuple[int, int]]
) -> torch.Tensor:
    """The same operator as one expression with the channels innermost, for ``torch.compile``.

    Inductor fuses the n products and the sum into one loop over output pixels whose inner loop runs over the
    channels, which are contiguous in the channels-last value map: one write of the output, the value read from
    cache, no intermediate of output size. Eagerly this allocates n temporaries; use :func:`local_attend` there.

    Args:
        attention: [B, n, cH, cW] weights (softmax over n already applied).
        value: [B, C, H, W] value map (replicate padding at the border).
        offsets: the n (di, dj) offsets, in the order of ``attention``'s channels.

    Returns:
        [B, C, cH, cW], channels-last strided.
    """
    b, channels, h, w = value.shape
    c = upsample_factor(attention.shape[-2:], (h, w))
    r = _radius(offsets)
    padded = F.pad(value, (r, r, r, r), mode="replicate") if r else value
    padded = padded.permute(0, 2, 3, 1).contiguous()  # [B, H+2r, W+2r, C]
    attn = attention.permute(0, 2, 3, 1).reshape(b, h, c, w, c, -1)  # [B, H, c, W, c, n]
    out = None
    for k, (di, dj) in enumerate(offsets):
        term = attn[..., k, None] * padded[:, r + di : r + di + h, None, r + dj : r + dj + w, None, :]
        out = term if out is None else out + term  # [B, H, c, W, c, C]
    return out.reshape(b, h * c, w * c, channels).permute(0, 3, 1, 2)


class LocalAttender(nn.Module):
    """The Local Attender operator.

    A 1x1 conv turns the guide (at c x the value's resolution) into n logits per pixel, plus the guide's first n
    channels by the residual rule; a softmax over the neighbourhood gives attention weights; each output pixel is
    the weighted sum of the n value tokens around its cell. The output is a convex combination of value features.

    Args:
        guide_channels (`int`): channels of the guide map.
        neighbourhood_size (`int`, defaults to 17): n, one of 5, 9, 13, 17, 25.
    """

    def __init__(self, guide_channels: int, neighbourhood_size: int = 17):
        super().__init__()
        self.offsets = neighbourhood_offsets(neighbourhood_size)
        self.conv1 = Conv2d(guide_channels, neighbourhood_size, kernel_size=1)

    @property
    def neighbourhood_size(self) -> int:
        return len(self.offsets)

    def attention(self, guide: torch.Tensor) -> torch.Tensor:
        """Softmax attention weights [B, n, cH, cW] (computed in float32, returned in the guide's dtype)."""
        logits = add_residual(self.conv1(guide), guide)
        # Contiguous [B, n, cH, cW] (also for a channels-last guide): the attend loop reads one weight plane at a time.
        return torch.softmax(logits.float(), dim=1).to(guide.dtype).contiguous()

    def forward(self, guide: torch.Tensor, value: torch.Tensor, output_size: Sequence[int] | None = None
                ) -> torch.Tensor:
        """guide [B, Cg, cH, cW], value [B, C, H, W] -> [B, C, cH, cW], or resized to ``output_size`` (antialiased
        bilinear, fused into the attention loop: see :func:`local_attend`)."""
        if guide.ndim != 4 or value.ndim != 4:
            raise InputError(
                f"guide and value must be 4-D [B, C, H, W]; got guide {tuple(guide.shape)}, value {tuple(value.shape)}"
            )
        if guide.shape[0] != value.shape[0]:
            raise InputError(f"guide batch {guide.shape[0]} != value batch {value.shape[0]}")
        upsample_factor(guide.shape[-2:], value.shape[-2:])
        # The switch, read once for this layer (not while compiling: the compiled forms ignore it).
        fast = None
        if not torch.compiler.is_compiling():
            fast = fast_paths.layer_plan(self, "attend", lambda caps: True) is not None
        return local_attend(self.attention(guide), value.to(guide.dtype).contiguous(), self.offsets, output_size,
                            fast)
