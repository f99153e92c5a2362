"""The Local Attender (paper §3.2): guide-predicted attention over a fixed local neighbourhood of value tokens."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import add_residual

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
        raise ValueError(
            f"unknown Local Attender neighbourhood size n={n}; supported sizes are {sorted(NEIGHBOURHOODS)}"
        )
    return NEIGHBOURHOODS[n]


def upsample_factor(guide_size: Sequence[int], value_size: Sequence[int]) -> int:
    """The integer c with guide = c x value in both dimensions, or a ValueError that says why not."""
    (gh, gw), (vh, vw) = guide_size, value_size
    if vh < 1 or vw < 1 or gh % vh or gw % vw or gh // vh != gw // vw:
        raise ValueError(
            f"the guide ({gh}x{gw}) must be the same integer multiple c of the value map ({vh}x{vw}) in height and "
            f"width (c = 1, 2, 3, ...)"
        )
    return gh // vh


def local_attend(
    attention: torch.Tensor, value: torch.Tensor, offsets: Sequence[tuple[int, int]]
) -> torch.Tensor:
    """Convex combination of value tokens: ``out[:, y, x] = sum_k A[k, y, x] * V[:, y//c + di_k, x//c + dj_k]``.

    Args:
        attention: [B, n, cH, cW] weights (softmax over n already applied).
        value: [B, C, H, W] value map; indices outside it are clamped (replicate padding).
        offsets: the n (di, dj) offsets, in the order of ``attention``'s channels.

    Returns:
        [B, C, cH, cW]. Accumulates over the offsets into the output, so the only large intermediate is the output
        itself (no [B, C, n, cH, cW] neighbourhood tensor).
    """
    b, c_v, h, w = value.shape
    c = upsample_factor(attention.shape[-2:], (h, w))
    r = max(max(abs(di), abs(dj)) for di, dj in offsets)
    padded = F.pad(value, (r, r, r, r), mode="replicate") if r else value
    out = value.new_zeros(b, c_v, h, c, w, c)
    # [B, n, cH, cW] -> [B, n, 1, H, c, W, c]: the c x c cell of every value token.
    attn = attention.reshape(b, -1, 1, h, c, w, c)
    for k, (di, dj) in enumerate(offsets):
        shifted = padded[:, :, r + di : r + di + h, r + dj : r + dj + w]  # [B, C, H, W]
        out.addcmul_(shifted[:, :, :, None, :, None], attn[:, k])
    return out.reshape(b, c_v, h * c, w * c)


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
        self.conv1 = nn.Conv2d(guide_channels, neighbourhood_size, kernel_size=1)

    @property
    def neighbourhood_size(self) -> int:
        return len(self.offsets)

    def attention(self, guide: torch.Tensor) -> torch.Tensor:
        """Softmax attention weights [B, n, cH, cW] (computed in float32, returned in the guide's dtype)."""
        logits = add_residual(self.conv1(guide), guide)
        return torch.softmax(logits.float(), dim=1).to(guide.dtype)

    def forward(self, guide: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """guide [B, Cg, cH, cW], value [B, C, H, W] -> [B, C, cH, cW]."""
        if guide.ndim != 4 or value.ndim != 4:
            raise ValueError(
                f"guide and value must be 4-D [B, C, H, W]; got guide {tuple(guide.shape)}, value {tuple(value.shape)}"
            )
        if guide.shape[0] != value.shape[0]:
            raise ValueError(f"guide batch {guide.shape[0]} != value batch {value.shape[0]}")
        upsample_factor(guide.shape[-2:], value.shape[-2:])
        return local_attend(self.attention(guide), value.to(guide.dtype), self.offsets)
