"""Image tensor helpers used across the package: ImageNet normalisation, the antialiased bilinear resize of the
reference implementation, and the conversions between images and tensors (the one float -> uint8 rule:
:func:`float_to_uint8`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_normalize(image: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] RGB in [0, 1] -> ImageNet mean/std normalised (the DINO backbones' and presets' convention)."""
    mean = image.new_tensor(IMAGENET_MEAN)[:, None, None]
    std = image.new_tensor(IMAGENET_STD)[:, None, None]
    return (image - mean) / std


def bilinear_resize(x: torch.Tensor, size: Sequence[int], out: torch.Tensor | None = None) -> torch.Tensor:
    """Antialiased bilinear resize (align_corners=False), as the reference uses for images and outputs.

    The antialiased kernel has no fp16 / bf16 CPU implementation, so those run in float32 and are cast back.
    ``out``: a tensor of the result's shape to write into (a contiguous float32 one takes the result directly).
    """
    if out is not None:
        if out.is_contiguous() and out.dtype == x.dtype == torch.float32 and tuple(x.shape[-2:]) != tuple(size):
            # The kernel F.interpolate(..., antialias=True) calls, writing into `out` (no result copy).
            return torch.ops.aten._upsample_bilinear2d_aa.out(x, list(size), False, None, None, out=out)
        return out.copy_(bilinear_resize(x, size))
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if x.dtype in (torch.float16, torch.bfloat16) and x.device.type == "cpu":
        return bilinear_resize(x.float(), size).to(x.dtype)
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> [3, H, W] float32 in [0, 1]."""
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def to_tensor_uint8(image: Image.Image | np.ndarray) -> torch.Tensor:
    """PIL / [H, W, 3] uint8 -> uint8 tensor [3, H, W]."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def float_to_uint8(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """[B, 3, H, W] tensor or [B, H, W, 3] array in [0, 1] -> [B, H, W, 3] uint8: clamped to [0, 1] and rounded, as
    diffusers' PIL output (uint8 input is already quantised: returned as it is, channels last). The metrics'
    FID / KID inputs keep their protocol's truncation instead (``eval.metrics.to_uint8``)."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().permute(0, 2, 3, 1)
        images = images.numpy() if images.dtype == torch.uint8 else images.float().numpy()
    if images.dtype == np.uint8:
        return images
    return (np.clip(images, 0, 1) * 255).round().astype(np.uint8)
