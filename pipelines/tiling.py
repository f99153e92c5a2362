"""Overlapping tiles with linear cross-fade blending, for running a size-changing op on images too large for memory.

:func:`tiled_map` cuts an input grid into overlapping tiles, calls ``fn`` on each tile's coordinates, and blends the
outputs (``out_scale`` times the tile size) into one canvas. Where two tiles overlap their weights ramp linearly in
opposite directions and sum to one, so a seam becomes a smooth cross-fade.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def tile_spans(size: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """[start, end) spans of length ``tile`` covering ``range(size)``, consecutive spans overlapping by at least
    ``overlap`` (the last span is aligned to the end, so it may overlap more)."""
    if tile <= overlap or overlap < 0:
        raise ValueError(f"tile size must be larger than the overlap (>= 0); got tile {tile}, overlap {overlap}")
    if size <= tile:
        return [(0, size)]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride)) + [size - tile]
    return [(s, s + tile) for s in starts]


def count_tiles(size: tuple[int, int], tile: int, overlap: int) -> int:
    """How many tiles :func:`tiled_map` cuts a ``size = (H, W)`` grid into (e.g. for a progress bar's total)."""
    return len(tile_spans(size[0], tile, overlap)) * len(tile_spans(size[1], tile, overlap))


def tile_work(size: tuple[int, int], tile: int, overlap: int) -> float:
    """The area :func:`tiled_map`'s tiles cover on a ``size = (H, W)`` grid over the grid's own (each overlap is
    computed once per tile that holds it): how much more work a per-pixel op does in these tiles."""
    work = 1.0
    for side in size:
        work *= sum(end - start for start, end in tile_spans(side, tile, overlap)) / side
    return work


def _ramp_weights(spans: list[tuple[int, int]], index: int, scale: int) -> torch.Tensor:
    """1-D blending weight of span ``index`` (in output pixels): a linear ramp over each overlap with a neighbour."""
    start, end = spans[index]
    w = torch.ones((end - start) * scale)
    if index > 0:  # ramp up over the overlap with the previous span (none when the spans only touch)
        n = (spans[index - 1][1] - start) * scale
        w[:n] = torch.arange(1, n + 1) / (n + 1)
    if index < len(spans) - 1 and (n := (end - spans[index + 1][0]) * scale) > 0:  # ramp down over the next overlap
        w[-n:] = torch.minimum(w[-n:], torch.arange(n, 0, -1) / (n + 1))
    return w


def tiled_map(
    fn: Callable[[int, int, int, int], torch.Tensor],
    size: tuple[int, int],
    tile: int,
    overlap: int,
    out_scale: int,
    progress: Callable | None = None,
) -> torch.Tensor:
    """Apply ``fn`` tile by tile over a ``size = (H, W)`` grid and blend the results.

    Args:
        fn: ``fn(y0, y1, x0, x1)`` returns the output for input rows ``y0:y1`` and columns ``x0:x1`` as a
            ``[B, C, (y1 - y0) * out_scale, (x1 - x0) * out_scale]`` tensor.
        size: (H, W) of the input grid.
        tile: tile side in input units.
        overlap: minimum overlap of neighbouring tiles in input units (< ``tile``).
        out_scale: output pixels per input unit.
        progress: optional callable wrapping the iterable of tiles (e.g. a tqdm progress bar factory).

    Returns:
        The blended ``[B, C, H * out_scale, W * out_scale]`` output (float32).
    """
    rows, cols = tile_spans(size[0], tile, overlap), tile_spans(size[1], tile, overlap)
    tiles = [(i, j) for i in range(len(rows)) for j in range(len(cols))]
    out = weight_sum = None
    for i, j in progress(tiles) if progress is not None else tiles:
        (y0, y1), (x0, x1) = rows[i], cols[j]
        result = fn(y0, y1, x0, x1).float()  # [B, C, (y1-y0)*s, (x1-x0)*s]
        expected = ((y1 - y0) * out_scale, (x1 - x0) * out_scale)
        if tuple(result.shape[-2:]) != expected:
            raise ValueError(f"tile function returned size {tuple(result.shape[-2:])}, expected {expected}")
        if out is None:
            b, c = result.shape[:2]
            out = result.new_zeros(b, c, size[0] * out_scale, size[1] * out_scale)
            weight_sum = result.new_zeros(1, 1, size[0] * out_scale, size[1] * out_scale)
        w = _ramp_weights(rows, i, out_scale)[:, None] * _ramp_weights(cols, j, out_scale)[None, :]
        w = w.to(result.device)[None, None]  # [1, 1, th, tw]
        ys, xs = slice(y0 * out_scale, y1 * out_scale), slice(x0 * out_scale, x1 * out_scale)
        out[..., ys, xs] += result * w
        weight_sum[..., ys, xs] += w
    return out / weight_sum
