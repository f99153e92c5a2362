"""How TAEF2's layer chains run: whole maps (on the CPU backend's fused kernels where they apply) or in exact tiles.

Every TAEF2 layer chain is cut into *units*: a conv (with the ReLU after it, if any), a 2x nearest upsample with the
conv after it, a TAEBlock, or a parameter-free layer. A unit knows which input rows / columns an output range reads
(its receptive field and stride), which is all a tile needs to come out exactly as in the whole-map run. The fused
kernels themselves are the backend's (:mod:`uplift_diffusion.fast_paths`: conv + ReLU, conv + add + ReLU in place,
upsample + conv as a sub-pixel conv); a unit whose weights are not on the input's device (accelerate's sequential
offload) runs its modules instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from uplift_diffusion import fast_paths

from .taef2_layers import TAEBlock

_CL = torch.channels_last
# A tile's map is cropped to what the rest of the chain reads before these units: before each upsample (the halo shrinks
# by half) and each block (by 3 pixels). Work (conv MACs) of an exact tiled decode of a 2048^2 output over the untiled
# one (benchmarks/taef2_speed.py): 1.03x (1024 px tiles), 1.05x (768), 1.08x (512), 1.19x (256); cropping only before
# upsamples it was 1.06 / 1.10 / 1.14 / 1.31 (local tail alone).
_CROP_BEFORE = ("upconv", "block")
LATENT_FACTOR = 8  # pixels per latent (three stride-2 stages)


class _Unit:
    """One step of a layer chain. ``kind``: ``"conv"`` (a conv, ``relu`` if a ReLU follows), ``"upconv"`` (2x
    nearest upsample, then a 3x3 conv), ``"block"`` (a TAEBlock) or ``"other"`` (an elementwise layer)."""

    def __init__(self, kind: str, modules: tuple[nn.Module, ...], relu: bool = False):
        self.kind, self.modules, self.relu = kind, modules, relu

    @property
    def local(self) -> bool:
        """Whether the unit's outputs depend on a bounded neighbourhood (a pooled block's GroupNorm sees all)."""
        return not (self.kind == "block" and self.modules[0].pool is not None)

    def run_plain(self, x: torch.Tensor) -> torch.Tensor:
        """The layers themselves (the published sequence of operations)."""
        for module in self.modules:
            x = module(x)
        return x

    def needs(self, lo: int, hi: int, size: int) -> tuple[int, int]:
        """Input range [lo, hi) (one axis, clipped to the input ``size``) that outputs [lo, hi) read. A strided conv's
        range starts on its stride, so a crop starting there lines up with the whole map's sampling grid."""
        if self.kind == "conv":
            conv = self.modules[0]
            k, s, p = conv.kernel_size[0], conv.stride[0], conv.padding[0]
            start = max(0, lo * s - p)
            return start - start % s, min(size, (hi - 1) * s - p + k)
        if self.kind == "upconv":
            lo, hi = max(0, lo - 1), min(2 * size, hi + 1)  # the 3x3 conv at the upsampled size
            return lo // 2, (hi - 1) // 2 + 1
        if self.kind == "block":
            return max(0, lo - 3), min(size, hi + 3)  # three 3x3 convs
        return lo, hi

    def gives(self, lo: int, hi: int) -> tuple[int, int]:
        """Output range a crop [lo, hi) of the input produces (``lo`` on the stride for a strided conv)."""
        if self.kind == "conv":
            conv = self.modules[0]
            k, s, p = conv.kernel_size[0], conv.stride[0], conv.padding[0]
            return lo // s, lo // s + (hi - lo + 2 * p - k) // s + 1
        if self.kind == "upconv":
            return 2 * lo, 2 * hi
        return lo, hi


def _units(layers: Sequence[nn.Module]) -> list[_Unit]:
    layers, units, i = list(layers), [], 0
    while i < len(layers):
        layer, following = layers[i], layers[i + 1] if i + 1 < len(layers) else None
        if (isinstance(layer, nn.Upsample) and layer.mode == "nearest" and layer.scale_factor in (2, 2.0, (2.0, 2.0))
                and isinstance(following, nn.Conv2d) and _same_3x3(following)):
            units.append(_Unit("upconv", (layer, following)))
            i += 2
        elif isinstance(layer, nn.Conv2d) and layer.kernel_size[0] == layer.kernel_size[1] and layer.groups == 1:
            relu = isinstance(following, nn.ReLU)
            units.append(_Unit("conv", (layer, following) if relu else (layer,), relu))
            i += 1 + relu
        elif isinstance(layer, TAEBlock):
            units.append(_Unit("block", (layer,)))
            i += 1
        else:
            units.append(_Unit("other", (layer,)))
            i += 1
    return units


def _same_3x3(conv: nn.Conv2d) -> bool:
    return (conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.padding == (1, 1) and conv.dilation == (1, 1)
            and conv.groups == 1 and conv.padding_mode == "zeros")



def fast_path_active(x: torch.Tensor, layer: nn.Module | None = None) -> bool:
    """Whether TAEF2 runs ``x`` on the backend's fused kernels (:func:`uplift_diffusion.fast_paths.fused_convs_active`:
    inference, CPU, float32 or native bf16, ``UPLIFT_FAST_PATHS`` on, the fused oneDNN ops probed).

    Args:
        x (`torch.Tensor`): the tensor about to enter the encoder or decoder.
        layer (`nn.Module`, *optional*): the TAEF2 model running it (the switch is then read from its plan).
    """
    return fast_paths.fused_convs_active(x, layer)


def _block_fast(x: torch.Tensor, block: TAEBlock, owned: bool) -> torch.Tensor:
    """``block(x)``; the last conv adds the residual and applies the ReLU in place, into ``x`` when ``owned`` (no
    one else holds it), else into a copy."""
    if block.pool is not None:  # taef2's GroupNorm branch, at latent resolution (cheap): the plain modules
        x, owned = x + block.pool(x), True
    conv1, _, conv2, _, conv3 = block.conv
    y = fast_paths.conv_relu(fast_paths.conv_relu(x, conv1, relu=True), conv2, relu=True)
    if isinstance(block.skip, nn.Conv2d):
        residual = fast_paths.conv_relu(x, block.skip, relu=False)
    else:
        residual = x if owned else x.clone(memory_format=_CL)
    return fast_paths.conv_add_relu_(residual, y, conv3)


def _weights_read(unit: _Unit) -> tuple[nn.Module, ...]:
    """The modules whose weights the fused kernels read for ``unit`` (the pool branch is called as modules)."""
    if unit.kind == "block":
        conv1, _, conv2, _, conv3 = unit.modules[0].conv
        skip = unit.modules[0].skip
        return (conv1, conv2, conv3, *((skip,) if isinstance(skip, nn.Conv2d) else ()))
    return tuple(m for m in unit.modules if isinstance(m, nn.Conv2d))


def _run_unit(unit: _Unit, x: torch.Tensor, fast: bool, owned: bool) -> torch.Tensor:
    if not fast or not fast_paths.resident(x, *_weights_read(unit)):  # offloaded weights arrive through the calls
        return unit.run_plain(x)
    if unit.kind == "conv" and unit.modules[0].padding_mode == "zeros":
        return fast_paths.conv_relu(x, unit.modules[0], unit.relu)
    if unit.kind == "upconv":
        return fast_paths.upsample_conv(x, unit.modules[1])
    if unit.kind == "block":
        return _block_fast(x, unit.modules[0], owned)
    return unit.run_plain(x)


def _run_units(units: Sequence[_Unit], x: torch.Tensor, layer: nn.Module | None = None) -> torch.Tensor:
    """The whole map through ``units`` (fast path where active for ``layer``)."""
    fast = fast_path_active(x, layer)
    if fast:
        x = x.contiguous(memory_format=_CL)
    owned = False  # x is the caller's until a unit makes a new tensor
    for unit in units:
        x = _run_unit(unit, x, fast, owned)
        owned = True
    return x


# --- region (tile) runs -----------------------------------------------------------------------------------------------


def _exact_tile_spans(size: int, tile: int) -> list[tuple[int, int]]:
    """Non-overlapping [start, end) spans of at most ``tile`` covering ``range(size)`` (tiles here are exact, so they
    need no overlap: each reads the halo its receptive field needs)."""
    return [(start, min(start + tile, size)) for start in range(0, size, tile)]


def _sizes(units: Sequence[_Unit], size: tuple[int, int]) -> list[tuple[int, int]]:
    """(H, W) before each unit and after the last."""
    sizes = [tuple(size)]
    for unit in units:
        sizes.append(tuple(unit.gives(0, n)[1] for n in sizes[-1]))
    return sizes


def _region_crops(units: Sequence[_Unit], size: tuple[int, int], rows: tuple[int, int], cols: tuple[int, int]
                  ) -> tuple[list[tuple[tuple[int, int], tuple[int, int]]], tuple[tuple[int, int], tuple[int, int]]]:
    """Where an exact tile runs: the (rows, cols) input range each unit computes on for outputs ``rows`` x ``cols`` of
    ``units`` over a whole map of ``size``, and the range the last unit gives (which holds the tile). The first unit
    reads the input region the outputs need; the map is cropped again before each upsample and block
    (:data:`_CROP_BEFORE`), so each layer computes only the halo the layers after it need."""
    sizes = _sizes(units, size)
    need = [None] * len(units) + [(rows, cols)]
    align = 1  # the stride of the next strided conv at this resolution: its input crop must start on its grid
    for i in range(len(units) - 1, -1, -1):
        unit = units[i]
        if unit.kind == "conv" and unit.modules[0].stride[0] > 1:
            align = unit.modules[0].stride[0]
        elif unit.kind == "upconv":
            align = 1
        spans = (unit.needs(lo, hi, n) for (lo, hi), n in zip(need[i + 1], sizes[i], strict=True))
        need[i] = tuple((lo - lo % align, hi) for lo, hi in spans)
    crops, have = [], need[0]
    for i, unit in enumerate(units):
        if unit.kind in _CROP_BEFORE:
            have = need[i]
        crops.append(have)
        have = tuple(unit.gives(lo, hi) for lo, hi in have)
    return crops, have


def _run_region(units: Sequence[_Unit], x: torch.Tensor, rows: tuple[int, int], cols: tuple[int, int],
                fast: bool) -> torch.Tensor:
    """Outputs ``rows`` x ``cols`` of ``units`` applied to the whole map ``x``, computed from the input region they
    read (:func:`_region_crops`): equal to the whole-map run's (the convs zero-pad only at the crop's edges, which
    the needed region keeps out of the result)."""
    crops, out = _region_crops(units, x.shape[-2:], rows, cols)
    have = crops[0]
    t = x[..., have[0][0]:have[0][1], have[1][0]:have[1][1]]
    owned = False
    for unit, crop in zip(units, crops, strict=True):
        if crop != have:
            t = t[..., crop[0][0] - have[0][0]:crop[0][1] - have[0][0], crop[1][0] - have[1][0]:crop[1][1] - have[1][0]]
        if fast:
            t = t.contiguous(memory_format=_CL)
        t = _run_unit(unit, t, fast, owned)
        owned = True
        have = tuple(unit.gives(lo, hi) for lo, hi in crop)
    (r0, r1), (c0, c1) = rows, cols
    return t[..., r0 - out[0][0]:r1 - out[0][0], c0 - out[1][0]:c1 - out[1][0]]


# --- work (multiply-adds) of whole-map and tiled runs, for progress plans ---------------------------------------------


def _conv_work(conv: nn.Conv2d, out_size: tuple[int, int]) -> int:
    k = conv.kernel_size[0] * conv.kernel_size[1]
    return out_size[0] * out_size[1] * conv.out_channels * conv.in_channels // conv.groups * k


def _unit_work(unit: _Unit, size: tuple[int, int], fast: bool) -> int:
    """Multiply-adds (one image) of ``unit`` on an input map of ``size = (h, w)``, as the path running it computes
    them: the fast path's upsample + conv is one 2x2 conv to 4 phases on the (h + 1) x (w + 1) padded grid
    (:func:`uplift_diffusion.fast_paths.upsample_conv`), the plain one a 3x3 conv at 2h x 2w. A block's convs (and
    its pool branch's) keep the map's size."""
    h, w = size
    if unit.kind == "upconv":
        conv = unit.modules[1]
        if fast:
            return (h + 1) * (w + 1) * 4 * conv.out_channels * conv.in_channels * 4
        return _conv_work(conv, (2 * h, 2 * w))
    if unit.kind == "conv":
        return _conv_work(unit.modules[0], tuple(unit.gives(0, n)[1] for n in size))
    return sum(_conv_work(m, size) for module in unit.modules for m in module.modules() if isinstance(m, nn.Conv2d))


def whole_work(units: Sequence[_Unit], size: tuple[int, int], fast: bool) -> int:
    """Multiply-adds (one image) of ``units`` over a whole map of ``size``."""
    return sum(_unit_work(unit, s, fast) for unit, s in zip(units, _sizes(units, size), strict=False))


def tiled_work(units: Sequence[_Unit], size: tuple[int, int], tile: int, fast: bool) -> int:
    """Multiply-adds (one image) of ``units`` over a map of ``size`` in the exact tiles of :func:`_run_tiled`: the
    whole-map work plus every tile's halo."""
    height, width = _sizes(units, size)[-1]
    total = 0
    for rows in _exact_tile_spans(height, tile):
        for cols in _exact_tile_spans(width, tile):
            crops, _ = _region_crops(units, size, rows, cols)
            total += sum(_unit_work(unit, tuple(hi - lo for lo, hi in crop), fast)
                         for unit, crop in zip(units, crops, strict=True))
    return total


def _stages(units: Sequence[_Unit]) -> list[list[_Unit]]:
    """``units`` cut after each strided conv: each stage's output is kept whole, at a lower resolution."""
    stages, current = [], []
    for unit in units:
        current.append(unit)
        if unit.kind == "conv" and unit.modules[0].stride[0] > 1:
            stages.append(current)
            current = []
    return stages + ([current] if current else [])


def _stage_tile(stage: Sequence[_Unit], tile_size: int) -> int:
    """Output tile of a stage whose input tiles are about ``tile_size`` (its output is smaller by its stride)."""
    stride = 1
    for unit in stage:
        if unit.kind == "conv":
            stride *= unit.modules[0].stride[0]
    return max(1, tile_size // stride)


def _check_tile(tile_size: int) -> None:
    if not isinstance(tile_size, int) or isinstance(tile_size, bool) or tile_size < LATENT_FACTOR \
            or tile_size % LATENT_FACTOR:
        raise ValueError(f"tile_size must be a multiple of {LATENT_FACTOR} pixels (>= {LATENT_FACTOR}), "
                         f"got {tile_size!r}")


def _finish_decode(rgb01: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """The decoder's [0, 1] output -> [-1, 1], contiguous (the fast path computes channels-last); ``inplace`` for an
    output no one else holds (a tiled decode's canvas: no extra full-size copies)."""
    if inplace:
        return rgb01.clamp_(0, 1).mul_(2).sub_(1).contiguous()
    return rgb01.clamp(0, 1).mul(2).sub(1).contiguous()


def _run_tiled(units: Sequence[_Unit], x: torch.Tensor, tile: int, progress: Callable | None = None,
               layer: nn.Module | None = None) -> torch.Tensor:
    """``units`` over the whole map ``x``, computed in exact tiles of ``tile`` x ``tile`` *output* positions (fast
    path where active for ``layer``)."""
    if not all(unit.local for unit in units):
        raise ValueError("a pooled block normalises over the whole map: it cannot run in tiles")
    fast = fast_path_active(x, layer)
    height, width = _sizes(units, x.shape[-2:])[-1]
    tiles = [(r, c) for r in _exact_tile_spans(height, tile) for c in _exact_tile_spans(width, tile)]
    out = None
    for rows, cols in progress(tiles) if progress is not None else tiles:
        result = _run_region(units, x, rows, cols, fast)
        if out is None:  # channels-last for the encoder's 64-channel stage maps, contiguous for the decoder's RGB
            layout = _CL if fast and result.shape[1] > 4 else torch.contiguous_format
            out = torch.empty(*result.shape[:2], height, width, dtype=result.dtype, device=result.device,
                              memory_format=layout)
        out[..., rows[0]:rows[1], cols[0]:cols[1]] = result
    return out
