"""The antialiased bilinear resize of :func:`~uplift_diffusion.utils.image_ops.bilinear_resize` as two banded
linear maps, one per axis, with the weights of torch's own kernel.

For fixed sizes the resize is ``R_h @ X @ R_w^T`` per channel. The weights are read off torch's kernel once (the
resize of an identity matrix) and cached per (input size, output size, dtype), so the result is the plain op's up to
float summation order. Each output reads only a few neighbouring inputs, so the matrices are banded and are applied
as such: the width pass as matrix products of a band of ``_BAND`` output columns each, the height pass as one
weighted sum of a few gathered rows. Torch's antialiased kernel computes its weights per call and runs a scalar
loop per output element; on one CPU core this takes 0.4-0.7x its time for maps from about 16 x 16 to 512 x 512
(16 x 128^2 -> 112^2, a tile of dinov2-s14's last step: 0.43 vs 0.84 ms). Inputs must be finite: a zero weight of a
band times an infinite input is NaN.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .image_ops import bilinear_resize

# Output columns per matrix product of the width pass. One AVX-512 core, 16 x 128^2 -> 112^2: 0.37 ms at 16 against
# 0.47 at 12, 0.55 at 14, 0.46 at 20, 0.42 at 24 (torch's kernel: 0.85 ms); with MKL, ATen and oneDNN limited to
# AVX2 (MKL_ENABLE_INSTRUCTIONS, ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA) 0.46 ms at 16.
_BAND = 16
# Most inputs per output (each is a pass of the height pass over the output): 4 covers downscales up to 2x
# (16 x 128^2 -> 64^2: 0.33 vs 0.47 ms); at 5 taps the gain is gone (64 x 64^2 -> 30^2: 0.48 vs 0.47 ms).
_MAX_TAPS = 4
# Longest axis handled (building the weights resizes an n x n identity once): 3 x 1024^2 -> 896^2 ran as fast as
# torch's kernel, 3 x 224^2 -> 256^2 2x faster.
_MAX_SIZE = 512
# Fewest pixels per map, in and out: below it the per-call cost of the matrix products and gathers dominates
# (384 x 8^2 -> 7^2: 1.09x the plain op's time; 384 x 16^2 -> 14^2: 0.87x).
_MIN_PIXELS = 144


@functools.lru_cache(maxsize=32)
def axis_weights(n_in: int, n_out: int, dtype: torch.dtype) -> torch.Tensor:
    """[n_out, n_in]: the weights with which the antialiased bilinear resize of one axis from ``n_in`` to ``n_out``
    (``align_corners=False``) mixes the inputs, read off torch's kernel in ``dtype``."""
    # Column j of the identity is the unit impulse at input j; the other axis keeps its size (exactly the identity).
    # Not as n_in channels of width 1: torch's kernel resizes a map of width 1 wrongly (every row = the first).
    impulses = torch.eye(n_in, dtype=dtype)[None, None]
    return F.interpolate(impulses, size=(n_out, n_in), mode="bilinear", align_corners=False, antialias=True)[0, 0]


@functools.lru_cache(maxsize=32)
def _width_bands(n_in: int, n_out: int, dtype: torch.dtype) -> tuple[tuple[int, int, int, int, torch.Tensor], ...]:
    """(first input, end input, first output, end output, [inputs, outputs] weights) per band of outputs."""
    weights = axis_weights(n_in, n_out, dtype)
    bands = []
    for o0 in range(0, n_out, _BAND):
        o1 = min(o0 + _BAND, n_out)
        read = weights[o0:o1].ne(0).any(dim=0).nonzero().flatten()
        i0, i1 = int(read[0]), int(read[-1]) + 1
        bands.append((i0, i1, o0, o1, weights[o0:o1, i0:i1].t().contiguous()))
    return tuple(bands)


@functools.lru_cache(maxsize=32)
def _axis_taps(n_in: int, n_out: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """([n_out, K] input rows, [n_out, K] weights): output row i is ``sum_k weights[i, k] * input[rows[i, k]]``; rows
    with fewer than K inputs repeat their last one with weight 0."""
    weights = axis_weights(n_in, n_out, dtype)
    nonzero = weights.ne(0)
    first = nonzero.int().argmax(dim=1)
    last = n_in - 1 - nonzero.flip(1).int().argmax(dim=1)
    wanted = first[:, None] + torch.arange(int((last - first).max()) + 1)
    rows = torch.minimum(wanted, last[:, None])
    return rows, torch.where(rows == wanted, weights.gather(1, rows), 0)


def applies(x: torch.Tensor, size: Sequence[int]) -> bool:
    """Whether :func:`resize_matmul` takes ``x`` to ``size`` (else the plain op): a CPU float32 / float64 map with no
    gradient to track, outside ``torch.compile``, both axes from 2 to ``_MAX_SIZE`` long (torch's own kernel is wrong
    for a width of 1), at least ``_MIN_PIXELS`` pixels in and out, at most ``_MAX_TAPS`` inputs per output."""
    if torch.compiler.is_compiling() or x.ndim < 2 or x.device.type != "cpu":
        return False
    (h, w), (h_out, w_out) = x.shape[-2:], size
    if min(h, w, h_out, w_out) < 2:
        return False
    if min(h * w, h_out * w_out) < _MIN_PIXELS:
        return False
    if x.dtype not in (torch.float32, torch.float64) or (torch.is_grad_enabled() and x.requires_grad):
        return False
    sizes = list(zip(x.shape[-2:], size, strict=True))
    if any(max(n_in, n_out) > _MAX_SIZE for n_in, n_out in sizes):
        return False
    return all(_axis_taps(n_in, n_out, x.dtype)[0].shape[1] <= _MAX_TAPS for n_in, n_out in sizes if n_in != n_out)


def resize_matmul(x: torch.Tensor, size: Sequence[int], out: torch.Tensor | None = None) -> torch.Tensor:
    """``F.interpolate(x, size, mode="bilinear", align_corners=False, antialias=True)`` as banded matrix products
    (call :func:`applies` first).

    Args:
        x (`torch.Tensor`): [..., H, W] finite map.
        size (`(int, int)`): (H', W').
        out (`torch.Tensor`, *optional*): a [..., H', W'] tensor to write the result into.
    """
    (h, w), (h_out, w_out) = x.shape[-2:], size
    lead = x.shape[:-2]
    if w != w_out:
        lines = x.reshape(-1, w)
        wide = lines.new_empty(lines.shape[0], w_out)
        for i0, i1, o0, o1, band in _width_bands(w, w_out, x.dtype):
            torch.mm(lines[:, i0:i1], band, out=wide[:, o0:o1])
        x = wide.view(*lead, h, w_out)
    if h == h_out:
        return x if out is None else out.copy_(x)
    rows, weights = _axis_taps(h, h_out, x.dtype)
    if out is None:
        out = x.new_empty(*lead, h_out, w_out)
    torch.mul(x.index_select(-2, rows[:, 0]), weights[:, 0, None], out=out)
    for k in range(1, rows.shape[1]):
        out.addcmul_(x.index_select(-2, rows[:, k]), weights[:, k, None])
    return out


def bilinear_resize_fast(x: torch.Tensor, size: Sequence[int], out: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`~uplift_diffusion.utils.image_ops.bilinear_resize`, through :func:`resize_matmul` where it
    :func:`applies`; for callers on the fast paths (:mod:`uplift_diffusion.fast_paths`) only."""
    if tuple(x.shape[-2:]) != tuple(size) and applies(x, size):
        return resize_matmul(x, size, out)
    return bilinear_resize(x, size, out)
