"""ColorCorrection: keep an upscaled image's colours (and, optionally, all its low frequencies) those of its source.

Two modes:

- ``"mean"`` (paper B.1): subtract the difference of per-channel means (output minus low-res reference).
- ``"detail"`` (beyond the paper): low frequencies from the input, high frequencies from the upscaler:
  ``bicubic(reference) + image - blur_sigma(image)`` with a Gaussian of ``sigma = detail_sigma * scale`` output
  pixels. The low-res input already knows every frequency below its Nyquist limit; a latent upscaler's decoder adds
  its errors there too (washed-out colour, contrast drift), so only the detail above it is taken from the upscaler.
  A model trained with this correction in its loss (``loss.pixel_color_correction: "detail"``) learns exactly the
  missing detail; with no detail at all the result is the bicubic upscale. ``detail_strength`` scales the detail
  (``bicubic(reference) + strength * (image - blur_sigma(image))``): a model trained with an L1 pixel loss draws
  sharper detail than the mean-squared-error optimum, and a strength below 1 measured on held-out photos (stored in
  the model's config, per UPLiFT step count) brings it back.

How much detail is right depends on how the low-res input was made more than on the photo: a blurred input
(antialiased bilinear) wants more of the model's detail than a PIL-bicubic one, an aliased one (bilinear without
antialiasing: jagged edges the model would sharpen) almost none. A step's strength may therefore be a curve over the
input's :func:`sharpness` (knots ``[[sharpness, strength], ...]``, linear between them, constant beyond), so every
image gets the strength measured for inputs as sharp as it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .utils.errors import InputError

MODES = ("mean", "detail")
OFF = "none"  # the one name of "no colour correction" (a pipeline's color_correction, a config, the CLI)


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of [B, C, H, W] (reflect padding, radius ``ceil(3 sigma)`` < the image size)."""
    radius = min(int(3 * sigma + 0.999), image.shape[-1] - 1, image.shape[-2] - 1)
    if sigma <= 0 or radius < 1:
        return image
    t = torch.arange(-radius, radius + 1, dtype=torch.float32, device=image.device)
    kernel = torch.exp(-(t**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).to(image.dtype)
    c = image.shape[1]
    x = F.pad(image, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)  # [B, C, H + 2r, W]
    return F.conv2d(x, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)  # [B, C, H, W]


def detail_transfer(image: torch.Tensor, reference_up: torch.Tensor, sigma: float,
                    strength: float | torch.Tensor = 1.0) -> torch.Tensor:
    """``reference_up + strength * (image - blur_sigma(image))``: the ``"detail"`` mode on an already upscaled
    reference (``strength``: a number, or one per image as a [B, 1, 1, 1] tensor)."""
    if isinstance(strength, float) and strength == 1.0:
        return reference_up + image - gaussian_blur(image, sigma)
    return reference_up + strength * (image - gaussian_blur(image, sigma))


def luma(rgb: torch.Tensor) -> torch.Tensor:
    """Rec. 601 luma ``0.299 R + 0.587 G + 0.114 B`` of [B, 3, H, W] (float, same value range) -> [B, H, W]."""
    return 0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]


def _fine_detail(luma: torch.Tensor) -> torch.Tensor:
    """``log(E[laplacian^2] / (2 E[|gradient|^2]))`` per image of [B, H, W] luma (0 where there is no gradient or
    the image is under 3 pixels): how much of the image's detail sits at its finest scale."""
    if min(luma.shape[-2:]) < 3:
        return torch.zeros(luma.shape[0])
    gx, gy = luma[:, :, 1:] - luma[:, :, :-1], luma[:, 1:] - luma[:, :-1]
    lap = 4 * luma[:, 1:-1, 1:-1] - luma[:, :-2, 1:-1] - luma[:, 2:, 1:-1] - luma[:, 1:-1, :-2] - luma[:, 1:-1, 2:]
    gradient = gx.pow(2).mean(dim=(1, 2)) + gy.pow(2).mean(dim=(1, 2))
    ratio = lap.pow(2).mean(dim=(1, 2)) / (2 * gradient).clamp_min(1e-20)
    return torch.where(gradient > 1e-12, ratio.clamp_min(1e-6).log(), torch.zeros_like(ratio)).cpu()


def sharpness(image: torch.Tensor) -> torch.Tensor:
    """How much sharper an image is at its finest scale than a clean half-size copy of it: the log
    Laplacian-to-gradient energy ratio of its luma minus that of its antialiased bicubic half, per image of
    [B, C, H, W] (any value range: the ratios ignore brightness and contrast) -> [B].

    The ratio alone moves with the photo (noise, JPEG blocks, texture); against the photo's own half-size copy it
    moves mostly with how the image was made: about -0.15 for an antialiased-bilinear downscale, 0 for PIL bicubic,
    +0.2 to +0.3 for an aliased bilinear one (Set14 and BSDS photos at 2x to 8x). Images under 6 pixels a side read 0.
    """
    x = image.float()
    y = luma(x) if x.shape[1] == 3 else x.mean(dim=1)
    height, width = y.shape[-2:]
    if min(height, width) < 6:
        return torch.zeros(y.shape[0])
    half = F.interpolate(y[:, None], size=(height // 2, width // 2), mode="bicubic", align_corners=False,
                         antialias=True)[:, 0]
    return _fine_detail(y) - _fine_detail(half)


def _check_knots(value) -> tuple[tuple[float, float], ...] | None:
    """A strength curve ``[[sharpness, strength], ...]`` (at least one knot, sharpness increasing, strengths in
    [0, 4]) as a tuple of pairs; None when ``value`` is not one."""
    if not isinstance(value, Sequence) or isinstance(value, str) or not value:
        return None
    knots = []
    for knot in value:
        if (not isinstance(knot, Sequence) or isinstance(knot, str) or len(knot) != 2
                or not all(_is_number(v) and math.isfinite(v) for v in knot) or not 0 <= knot[1] <= 4):
            return None
        knots.append((float(knot[0]), float(knot[1])))
    if any(b[0] <= a[0] for a, b in zip(knots, knots[1:], strict=False)):
        return None
    return tuple(knots)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_detail_strength(strength) -> tuple:
    """``detail_strength`` as a tuple with one entry per UPLiFT step count: a float in [0, 4], or a strength curve
    over the input's :func:`sharpness` (a tuple of ``(sharpness, strength)`` knots). A number is the same for every
    step; ``None`` is 1, the detail as decoded; InputError for anything else."""
    if strength is None:
        return (1.0,)
    values = (strength,) if _is_number(strength) else strength
    entries = []
    if isinstance(values, Sequence) and not isinstance(values, str):
        for value in values:
            if _is_number(value) and math.isfinite(value) and 0 <= value <= 4:
                entries.append(float(value))
            else:
                entries.append(_check_knots(value))
    if not entries or None in entries:
        raise InputError(f"detail_strength must be a number in [0, 4] or a non-empty list with one entry per UPLiFT "
                         f"step count (2x, 4x, 8x), each a number in [0, 4] or a curve [[sharpness, strength], ...] "
                         f"with increasing sharpness; got {strength!r}")
    return tuple(entries)


def strength_for_images(entry: float | Sequence[tuple[float, float]], reference: torch.Tensor) -> float | torch.Tensor:
    """A step's strength for the images whose low-res inputs are ``reference`` [B, C, h, w]: the number itself, or
    the curve read at each input's :func:`sharpness` ([B, 1, 1, 1])."""
    if isinstance(entry, float):
        return entry
    at, values = zip(*entry, strict=True)
    sharp = sharpness(reference).double().numpy()
    return torch.from_numpy(np.interp(sharp, at, values)).float().view(-1, 1, 1, 1).to(reference.device)


def strength_for_scale(strengths: Sequence, scale: float):
    """The strength entry of ``scale``'s UPLiFT step count (2x: the first, 4x: the second, ...; a factor between two
    steps takes the next step's, as the pipelines run UPLiFT to the next step; beyond the list: its last value)."""
    steps = max(1, math.ceil(math.log2(max(scale, 1.0)) - 1e-6))
    return strengths[min(steps, len(strengths)) - 1]


def bicubic_upscale(reference: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(reference, size=size, mode="bicubic", align_corners=False)


class ColorCorrection(nn.Module):
    """Align an upscaled image with its low-res source: per-channel means (``"mean"``, the paper) or all low
    frequencies (``"detail"``), see the module docstring.

    Works on batched [B, C, H, W] tensors in any value range ([0, 1] or [-1, 1]; both images in the same range);
    the two images may have different sizes. Computed in float32, differentiable (the ``"detail"`` mode is used
    inside the training loss too).

    Args:
        enabled (`bool`, defaults to True): when False the module returns the image unchanged (as ``mode="none"``).
        clamp (`tuple[float, float]`, *optional*): clamp the result to this range (e.g. ``(0, 1)``).
        mode (`str`, defaults to ``"mean"``): ``"mean"``, ``"detail"`` or ``"none"`` (off).
        detail_sigma (`float`, defaults to 0.5): ``"detail"`` mode: the Gaussian's sigma in units of the upscaling
            factor (output width / reference width).
        detail_strength (`float` or `list`, defaults to 1.0): ``"detail"`` mode: the factor on the upscaler's
            detail, one number or one entry per UPLiFT step count (2x, 4x, 8x; chosen by output width / reference
            width), each a number or a curve ``[[sharpness, strength], ...]`` read at the reference's
            :func:`sharpness`; ``None`` is 1 (a model config without the record).
    """

    def __init__(self, enabled: bool = True, clamp: tuple[float, float] | None = None, mode: str = "mean",
                 detail_sigma: float = 0.5, detail_strength: float | Sequence[float] | None = 1.0):
        super().__init__()
        if mode not in (*MODES, OFF):
            raise InputError(f"colour correction mode must be one of {(*MODES, OFF)}, got {mode!r}")
        if detail_sigma <= 0:
            raise InputError(f"detail_sigma must be > 0, got {detail_sigma}")
        self.enabled = enabled and mode != OFF
        self.clamp = clamp
        self.mode = mode
        self.detail_sigma = detail_sigma
        self.detail_strength = check_detail_strength(detail_strength)

    def forward(self, image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return image
        if image.ndim != 4 or reference.ndim != 4 or image.shape[:2] != reference.shape[:2]:
            raise InputError(
                f"ColorCorrection needs [B, C, H, W] images with the same batch and channels; got "
                f"{tuple(image.shape)} and reference {tuple(reference.shape)}"
            )
        x, ref = image.float(), reference.float()
        if self.mode == "mean":
            out = x - (x.mean(dim=(2, 3), keepdim=True) - ref.mean(dim=(2, 3), keepdim=True))
        else:
            scale = image.shape[-1] / reference.shape[-1]
            strength = strength_for_images(strength_for_scale(self.detail_strength, scale), ref)
            out = detail_transfer(x, bicubic_upscale(ref, tuple(image.shape[-2:])), self.detail_sigma * scale, strength)
        if self.clamp is not None:
            out = out.clamp(*self.clamp)
        return out.to(image.dtype)
