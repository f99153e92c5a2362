"""Shared by the UPLiFT pipelines: the output dataclass and running UPLiFT steps on latents."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers.utils import BaseOutput

from uplift_diffusion.model import UPLiFTModel


@dataclass
class UPLiFTPipelineOutput(BaseOutput):
    """Output of the UPLiFT pipelines.

    Args:
        images (`list[PIL.Image.Image]`, `np.ndarray` or `torch.Tensor`):
            The upscaled images (``output_type`` "pil", "np" [B, H, W, 3] in [0, 1], "pt" [B, 3, H, W] in [0, 1]), or
            the upscaled latents for ``output_type="latent"``. A list when a batch mixes image sizes.
        low_res_images (*optional*):
            The low-resolution images (or latents) the upscaling started from, in the same output type; ``None`` unless
            requested.
        nsfw_content_detected (`list[bool]`, *optional*):
            Safety checker flags per image (text-to-image only; ``None`` when no safety checker ran).
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor | list[Any]
    low_res_images: list[PIL.Image.Image] | np.ndarray | torch.Tensor | None = None
    nsfw_content_detected: list[bool] | None = None


def upscale_latents(
    upsampler: UPLiFTModel,
    latents: torch.Tensor,
    guide: torch.Tensor,
    iterations: int,
    generator: torch.Generator | list[torch.Generator] | None = None,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> torch.Tensor:
    """``iterations`` UPLiFT 2x steps on raw latents [B, C, h, w], guided by ``guide`` (the image in the upsampler's
    convention, [B, 3, p*h, p*w]); the dense encoder runs once and is reused by every step.

    ``progress`` wraps the step iterable (a progress bar). The inputs are validated like ``upsampler.forward`` does
    (channel count, guide/latent geometry, NaN/inf), so a VAE that does not fit the upsampler gets a clear error.
    """
    upsampler.check_inputs(guide, latents, iterations, None)
    dtype = upsampler.dtype
    encoded = upsampler.encode_image(guide.to(dtype))
    x = latents.to(dtype)
    steps = range(iterations)
    for _ in progress(steps) if progress is not None else steps:
        x = upsampler.upscale_step(x, encoded, generator)  # [B, C, 2h, 2w]
    return x
