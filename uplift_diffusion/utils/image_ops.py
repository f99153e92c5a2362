"""Image tensor helpers used across the package: ImageNet normalisation, the antialiased bilinear resize of the
reference implementation, and the conversions between images and tensors (the one float -> uint8 rule:
:func:`float_to_uint8`)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .errors import ImageConversionWarning, InputError
from .images import to_rgb

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


def _warn_conversion(note: str) -> None:
    warnings.warn(note, ImageConversionWarning, stacklevel=3)


def _array_to_unit(array: np.ndarray) -> torch.Tensor:
    """[H, W], [H, W, C] or [B, H, W, C] uint8 / uint16 / float in [0, 1] -> [B, 3, H, W] float32 in [0, 1]."""
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] not in (1, 3, 4):
        raise InputError(f"numpy images must be [H, W], [H, W, C] or [B, H, W, C] (channels last) with C in "
                         f"(1, 3, 4); got shape {array.shape}")
    if array.dtype == np.uint8:
        array = array.astype(np.float32) / 255.0
    elif array.dtype == np.uint16:
        array = array.astype(np.float32) / 65535.0
    elif not np.issubdtype(array.dtype, np.floating):
        raise InputError(f"numpy images must be uint8, uint16 or float in [0, 1]; got dtype {array.dtype}")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).permute(0, 3, 1, 2)


def _tensor_to_unit(tensor: torch.Tensor) -> torch.Tensor:
    """[C, H, W] or [B, C, H, W] (uint8, or float in [0, 1]) -> [B, 3, H, W] float32 in [0, 1]."""
    if tensor.ndim == 3:
        tensor = tensor[None]
    if tensor.ndim != 4 or tensor.shape[1] not in (1, 3, 4):
        raise InputError(f"tensor images must be [C, H, W] or [B, C, H, W] (channels first) with C in (1, 3, 4); "
                         f"got shape {tuple(tensor.shape)}")
    if tensor.dtype != torch.uint8 and not tensor.dtype.is_floating_point:
        raise InputError(f"tensor images must be uint8 (0..255) or float in [0, 1]; got dtype {tensor.dtype} "
                         f"(convert it, e.g. tensor.to(torch.uint8) for 0..255 integers)")
    return tensor.float() / 255.0 if tensor.dtype == torch.uint8 else tensor.float()


def _to_rgb_channels(batch: torch.Tensor, range_hint: str) -> torch.Tensor:
    """Grey -> RGB (repeat), RGBA -> RGB (alpha over white); checks the size and the [0, 1] range."""
    if batch.numel() == 0:
        raise InputError(f"empty image: shape {tuple(batch.shape)} has no pixels")
    if not torch.isfinite(batch).all():
        raise InputError("image contains NaN or inf values")
    lo, hi = batch.min().item(), batch.max().item()
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise InputError(f"float images must be RGB in [0, 1]; got values in [{lo:.3f}, {hi:.3f}] ({range_hint})")
    if batch.shape[1] == 1:
        batch = batch.expand(-1, 3, -1, -1)
    elif batch.shape[1] == 4:
        rgb, alpha = batch[:, :3], batch[:, 3:]
        batch = rgb * alpha + (1 - alpha)
    return batch.clamp(0, 1)


def images_to_tensors(image, on_note: Callable[[str], None] | None = None,
                      range_hint: str = "a [-1, 1] image? map it with (x + 1) / 2") -> list[torch.Tensor]:
    """User images -> a list of [1, 3, H, W] float32 in [0, 1]: the one rule every door uses for image input.

    ``image``: a PIL image (any mode: converted to RGB, ``on_note`` told how), a numpy array ([H, W], [H, W, C] or
    [B, H, W, C]; uint8, uint16 or float in [0, 1]), a tensor ([C, H, W] or [B, C, H, W]; uint8 or float in [0, 1]),
    C in (1, 3, 4) (grey repeated, alpha composited over white), or a list of these. Anything else is an
    :class:`InputError` (a ``TypeError`` for a value that is not an image at all) naming what was given;
    ``range_hint`` is added to the out-of-range message. ``on_note``: default a :class:`ImageConversionWarning`."""
    items = list(image) if isinstance(image, (list, tuple)) else [image]
    if not items:
        raise InputError("no images given")
    out = []
    for item in items:
        if isinstance(item, Image.Image):
            rgb, note = to_rgb(item)
            if note:
                (on_note or _warn_conversion)(note)
            batch = _array_to_unit(np.asarray(rgb))
        elif isinstance(item, np.ndarray):
            batch = _array_to_unit(item)
        elif isinstance(item, torch.Tensor):
            batch = _tensor_to_unit(item)
        else:
            raise TypeError(f"images must be PIL images, numpy arrays or torch tensors; got {type(item).__name__}")
        out += list(_to_rgb_channels(batch, range_hint).split(1))
    return out
