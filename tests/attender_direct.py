"""The direct, materialising Local Attender: the comparison point of tests/test_attender_paths.py and
benchmarks/attender_speed.py. It builds the [B, C, n, cH, cW] neighbourhood tensor the fast paths avoid."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def direct_local_attend(
    attention: torch.Tensor, value: torch.Tensor, offsets: Sequence[tuple[int, int]]
) -> torch.Tensor:
    """Stack the n shifted, nearest-upsampled value maps, multiply by the attention, sum over n.

    Args:
        attention: [B, n, cH, cW] weights.
        value: [B, C, H, W] value map (replicate padding at the border).
        offsets: the n (di, dj) offsets in the order of ``attention``'s channels.

    Returns:
        [B, C, cH, cW]. Peak memory is about (n + 1) x the output: the stack is filled slot by slot and multiplied
        in place, the most frugal way to write this formulation.
    """
    b, channels, h, w = value.shape
    n, gh, gw = attention.shape[1:]
    c = gh // h
    r = max(max(abs(di), abs(dj)) for di, dj in offsets)
    padded = F.pad(value, (r, r, r, r), mode="replicate")
    neighbourhood = value.new_empty(b, channels, n, gh, gw)  # [B, C, n, cH, cW]
    for k, (di, dj) in enumerate(offsets):
        shifted = padded[:, :, r + di : r + di + h, r + dj : r + dj + w]  # [B, C, H, W]
        slot = neighbourhood[:, :, k].view(b, channels, h, c, w, c)
        slot.copy_(shifted[:, :, :, None, :, None].expand_as(slot))  # nearest upsampling by c
    return neighbourhood.mul_(attention[:, None]).sum(dim=2)
