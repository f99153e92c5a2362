"""ColorCorrection (paper B.1): realign the per-channel colour means of an upscaled image with its low-res source."""

from __future__ import annotations

import torch
from torch import nn


class ColorCorrection(nn.Module):
    """Subtract the difference of per-colour-channel means (high-res output minus low-res reference) from the output.

    Works on batched [B, C, H, W] tensors in any value range ([0, 1] or [-1, 1]; both images in the same range);
    the two images may have different sizes. Means are taken per image and per channel, in float32.

    Args:
        enabled (`bool`, defaults to True): when False the module returns the image unchanged.
        clamp (`tuple[float, float]`, *optional*): clamp the result to this range (e.g. ``(0, 1)``).
    """

    def __init__(self, enabled: bool = True, clamp: tuple[float, float] | None = None):
        super().__init__()
        self.enabled = enabled
        self.clamp = clamp

    def forward(self, image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return image
        if image.ndim != 4 or reference.ndim != 4 or image.shape[:2] != reference.shape[:2]:
            raise ValueError(
                f"ColorCorrection needs [B, C, H, W] images with the same batch and channels; got "
                f"{tuple(image.shape)} and reference {tuple(reference.shape)}"
            )
        shift = image.float().mean(dim=(2, 3), keepdim=True) - reference.float().mean(dim=(2, 3), keepdim=True)
        out = image.float() - shift
        if self.clamp is not None:
            out = out.clamp(*self.clamp)
        return out.to(image.dtype)
