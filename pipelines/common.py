"""Shared by the UPLiFT pipelines: the output dataclass, input checks, raw-latent conversion, the UPLiFT steps, and
:func:`upscale_latents`, UPLiFT's part of text-to-image for any diffusers pipeline that produces latents."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils import BaseOutput, logging

from uplift_diffusion.backbones.vae import (
    decode_latents,
    latent_channels,
    vae_fingerprint,
    vae_name,
    vae_scale_factor,
)
from uplift_diffusion.color import OFF, ColorCorrection
from uplift_diffusion.model import UPLiFTModel
from uplift_diffusion.utils.device import synchronize
from uplift_diffusion.utils.errors import InputError

logger = logging.get_logger(__name__)


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

    With ``return_dict=False`` every UPLiFT pipeline returns these three fields as a tuple, in this order and always
    all three: ``(images, low_res_images, nsfw_content_detected)``, ``None`` where a pipeline has none.
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor | list[Any]
    low_res_images: list[PIL.Image.Image] | np.ndarray | torch.Tensor | None = None
    nsfw_content_detected: list[bool] | None = None


def pipeline_output(return_dict: bool, images, low_res_images=None, nsfw_content_detected=None):
    """What a UPLiFT pipeline's ``__call__`` returns: the [`UPLiFTPipelineOutput`], or with ``return_dict=False`` the
    tuple ``(images, low_res_images, nsfw_content_detected)`` (fixed positions, ``None`` where absent)."""
    output = UPLiFTPipelineOutput(images=images, low_res_images=low_res_images,
                                  nsfw_content_detected=nsfw_content_detected)
    return output if return_dict else (images, low_res_images, nsfw_content_detected)


STAGES = ("base", "uplift", "refine", "decode")
_STAGE_SECONDS: ContextVar[dict[str, float] | None] = ContextVar("uplift_stage_seconds", default=None)


@contextmanager
def record_stage_times() -> Iterator[dict[str, float]]:
    """Seconds spent in each stage of the UPLiFT text-to-image calls made inside the block, summed per stage:
    ``"base"`` (denoising at the low resolution, prompt encoding included), ``"uplift"`` (the low-resolution decode
    that guides UPLiFT, and the UPLiFT steps), ``"refine"`` (the refine pass), ``"decode"`` (decoding the output and
    its colour correction). A stage that did not run has no entry. Each stage waits for its device's queued work
    before and after (only while recording: calls outside the block are not slowed down).

    >>> with record_stage_times() as seconds:
    ...     pipe(prompt, upscale=2, refine_strength=0.3)
    >>> seconds  # {"base": ..., "uplift": ..., "refine": ..., "decode": ...}
    """
    seconds: dict[str, float] = {}
    token = _STAGE_SECONDS.set(seconds)
    try:
        yield seconds
    finally:
        _STAGE_SECONDS.reset(token)


@contextmanager
def timed_stage(name: str, device: torch.device | str) -> Iterator[None]:
    """Count the block's wall-clock seconds as stage ``name`` of :func:`record_stage_times` (when it records)."""
    seconds = _STAGE_SECONDS.get()
    if seconds is None:
        yield
        return
    synchronize(device)
    start = time.perf_counter()
    try:
        yield
    finally:
        synchronize(device)
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start


UPSCALE_FACTORS = (1, 2, 4, 8)
OUTPUT_TYPES = ("pil", "np", "pt", "latent")


RESAMPLE_METHODS = ("pixel", "latent")


def check_scale_or_size(scale: float | None, size: tuple[int, int] | None) -> None:
    """``scale`` a finite number >= 1, or ``size`` a (height, width) pair of positive integers; not both. ValueError
    naming the problem."""
    if scale is not None and size is not None:
        raise InputError(f"pass either scale or size, not both (got scale={scale!r}, size={size!r})")
    if size is not None:
        if (not isinstance(size, (tuple, list)) or len(size) != 2
                or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in size)):
            raise InputError(f"size must be (height, width), two positive integers, got {size!r}")
    elif scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float, np.integer, np.floating))
                                or not math.isfinite(scale) or scale < 1):
        raise InputError(f"scale must be a finite number >= 1 (e.g. 1.5, 2, 3, 4), got {scale!r}")


def output_size(height: int, width: int, scale: float | None, size: tuple[int, int] | None) -> tuple[int, int]:
    """The output (height, width) of a ``height`` x ``width`` input: ``size`` itself (each side at least the input's),
    or each side times ``scale`` rounded half up (``floor(side * scale + 0.5)``)."""
    if size is not None:
        target = (int(size[0]), int(size[1]))
        if target[0] < height or target[1] < width:
            raise InputError(f"size {target[0]}x{target[1]} (height x width) is smaller than the input "
                             f"{height}x{width}: an upscaler only enlarges (downscale the result instead)")
        return target
    return math.floor(height * scale + 0.5), math.floor(width * scale + 0.5)


def power_of_two_for(height: int, width: int, target: tuple[int, int]) -> int:
    """The smallest power of two ``s >= 2`` (UPLiFT steps) with ``s * height >= target[0]`` and
    ``s * width >= target[1]``: UPLiFT runs to ``s``, one resampling step then reaches ``target``."""
    s = 2
    while s * height < target[0] or s * width < target[1]:
        s *= 2
    return s


_WARNED_LATENT_SPACES: set[tuple[str, str]] = set()


def check_latent_space(upsampler: UPLiFTModel, vae, hint: str = "use an UPLiFT model trained on this VAE's latents"
                       ) -> None:
    """The upsampler's recorded latent space (``config.latent_space``) against ``vae``: another channel count is an
    InputError naming both; the same channels but another VAE fingerprint a warning naming both, once per pair.
    Nothing to check for an upsampler without the record."""
    record = upsampler.config.get("latent_space")
    if record is None or vae is None:
        return
    channels, fingerprint = latent_channels(vae), vae_fingerprint(vae)
    if record["latent_channels"] != channels:
        raise InputError(f"the upsampler was trained for {record['vae']} ({record['latent_channels']} latent "
                         f"channels) but the VAE is {vae_name(vae)} ({channels} latent channels): {hint}")
    if record["fingerprint"] != fingerprint and (record["fingerprint"], fingerprint) not in _WARNED_LATENT_SPACES:
        _WARNED_LATENT_SPACES.add((record["fingerprint"], fingerprint))
        logger.warning(f"the upsampler was trained for {record['vae']} (latent space {record['fingerprint']}) but "
                       f"the VAE is {vae_name(vae)} (latent space {fingerprint}): same channel count, but its "
                       f"latents may differ; expect blur or colour shifts unless the two VAEs share a latent space")


def check_upsampler_fits(upsampler: UPLiFTModel, vae, hint: str = "use an UPLiFT model trained on this VAE") -> None:
    """ValueError naming both sides when ``upsampler`` was not made for ``vae``'s latents (the recorded latent space,
    channels, spatial factor)."""
    check_latent_space(upsampler, vae, hint)
    cfg, channels, factor = upsampler.config, latent_channels(vae), vae_scale_factor(vae)
    if cfg.in_channels != channels or cfg.patch_size != factor:
        raise ValueError(
            f"the upsampler (in_channels={cfg.in_channels}, patch_size={cfg.patch_size}) does not fit the vae "
            f"({channels} latent channels, {factor}x spatial factor): {hint}"
        )


def check_upscale_arguments(upsampler: UPLiFTModel, vae, upscale: int, output_type: str,
                            hint: str = "use an UPLiFT model trained on this VAE") -> None:
    """Validate ``upscale``, ``output_type`` and that the upsampler fits the VAE; ValueError naming the problem."""
    if isinstance(upscale, bool) or upscale not in UPSCALE_FACTORS:
        raise ValueError(f"upscale must be one of {UPSCALE_FACTORS}, got {upscale!r} (text-to-image upscales the "
                         f"latent grid by powers of two; for another size, give the image to "
                         f"UPLiFTSuperResolutionPipeline with scale= or size=)")
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
    check_upsampler_fits(upsampler, vae, hint)


def check_refine_arguments(refine_strength: float, refine_steps: int | None) -> None:
    """ValueError unless ``refine_strength`` is in [0, 1] and ``refine_steps`` is None or a positive int."""
    if isinstance(refine_strength, bool) or not isinstance(refine_strength, (int, float)) \
            or not 0 <= refine_strength <= 1:
        raise ValueError(f"refine_strength must be a number in [0, 1] (0 = no refine pass), got {refine_strength!r}")
    if refine_steps is not None and (isinstance(refine_steps, bool) or not isinstance(refine_steps, int)
                                     or refine_steps < 1):
        raise ValueError(f"refine_steps must be a positive integer, got {refine_steps!r}")


def color_correction_for(upsampler: UPLiFTModel | None, color_correction: bool | str = True,
                         mode: str | None = None) -> ColorCorrection:
    """The colour correction to apply to images decoded from ``upsampler``'s output.

    ``color_correction``: ``"none"`` (off; ``False`` says the same), a mode name (that mode), or ``True``: ``mode``
    when given (a pipeline's explicit override), else the correction recorded in the upsampler's config
    (``color_correction``, what it was trained with; ``"mean"`` for checkpoints that predate the record). Its
    ``detail_sigma`` and ``detail_strength`` come from the config too.
    """
    usage = upsampler.config if upsampler is not None else {}
    if color_correction == OFF:
        color_correction = False
    if not isinstance(color_correction, str):
        mode = mode or usage.get("color_correction", "mean")
    else:
        mode = color_correction
    return ColorCorrection(enabled=bool(color_correction), clamp=(0.0, 1.0), mode=mode,
                           detail_sigma=usage.get("detail_sigma", 0.5), detail_strength=usage.get("detail_strength"))


def _latent_scale_shift(vae) -> tuple[float, float]:
    """``(scaling_factor, shift_factor)`` of a VAE's config; a VAE without them (FLUX.2's ``AutoencoderKLFlux2``, whose
    pipelines hand out raw latents) counts as (1, 0)."""
    return getattr(vae.config, "scaling_factor", None) or 1.0, getattr(vae.config, "shift_factor", None) or 0.0


def to_raw_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """A pipeline's (scaled, shifted) latents -> the VAE's raw latents, what UPLiFT's VAE presets were trained on."""
    scale, shift = _latent_scale_shift(vae)
    return latents / scale + shift


def from_raw_latents(vae, raw: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`to_raw_latents`."""
    scale, shift = _latent_scale_shift(vae)
    return (raw - shift) * scale


def uplift_steps(
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
    encoded = upsampler.encode_image(guide.to(dtype), iterations)  # only what `iterations` steps read
    x = latents.to(dtype)
    steps = range(iterations)
    for _ in progress(steps) if progress is not None else steps:
        x = upsampler.upscale_step(x, encoded, generator)  # [B, C, 2h, 2w]
    return x


@torch.no_grad()
def upscale_latents(
    pipe,
    latents: torch.Tensor,
    upsampler: UPLiFTModel,
    upscale: int = 2,
    generator: torch.Generator | list[torch.Generator] | None = None,
    output_type: str = "pil",
    color_correction: bool | str = True,
    low_res: torch.Tensor | None = None,
) -> UPLiFTPipelineOutput:
    r"""UPLiFT's part of text-to-image, for any diffusers pipeline that returns latents (``output_type="latent"``).

    Decodes the low-resolution latents once (that image guides UPLiFT and is the colour reference), runs
    ``log2(upscale)`` UPLiFT steps on the *raw* latents, decodes at the high resolution and colour-corrects.

    Args:
        pipe ([`DiffusionPipeline`]): the pipeline that made ``latents``; its ``vae`` decodes and its
            ``progress_bar`` (when it has one) shows the UPLiFT steps.
        latents (`torch.Tensor`): [B, C, h, w] latents as the pipeline returns them (scaled by
            ``vae.config.scaling_factor``, shifted by ``shift_factor`` when the VAE has one).
        upsampler ([`~uplift_diffusion.UPLiFTModel`]): a VAE-preset UPLiFT model for ``pipe.vae``'s raw latents.
        upscale (`int`, defaults to 2): 1, 2, 4 or 8 (1 decodes without upscaling).
        generator (`torch.Generator` or a list, *optional*): for UPLiFT's noise channels (reproducible outputs).
        output_type (`str`, defaults to ``"pil"``): ``"pil"``, ``"np"`` ([B, H, W, 3] in [0, 1]), ``"pt"``
            ([B, 3, H, W] in [0, 1]) or ``"latent"`` (the upscaled latents, scaled like the input).
        color_correction (`bool` or `str`, defaults to True): correct the high-res image against the low-res one
            with the upsampler's own correction (its config's ``color_correction``), or a mode name
            (``"mean"`` / ``"detail"``); ``"none"`` (or ``False``) for none.
        low_res (`torch.Tensor`, *optional*): [B, 3, p*h, p*w] in [0, 1], the low-resolution image that guides UPLiFT
            and is the colour reference, when it is already at hand (e.g. decoded by a faster VAE of the same latent
            space); by default ``pipe.vae`` decodes ``latents``. Either way it is a decode of the latents, and an
            upsampler with the ``"decoded"`` guide condition is told so.

    Returns:
        [`UPLiFTPipelineOutput`] with ``images`` (upscaled) and ``low_res_images`` (the decoded input, or the input
        latents for ``output_type="latent"``), both in ``output_type``.
    """
    check_upscale_arguments(upsampler, pipe.vae, upscale, output_type)
    raw = to_raw_latents(pipe.vae, latents)
    with timed_stage("uplift" if upscale > 1 else "decode", raw.device):  # without UPLiFT this decode is the output
        if low_res is None:
            low_res = decode_latents(pipe.vae, raw)  # [B, 3, p*h, p*w] in [0, 1]
        else:
            p = vae_scale_factor(pipe.vae)
            expected = (raw.shape[0], 3, p * raw.shape[-2], p * raw.shape[-1])
            if tuple(low_res.shape) != expected:
                raise ValueError(f"low_res must have shape {expected} for latents of shape {tuple(raw.shape)}, got "
                                 f"{tuple(low_res.shape)}")
            low_res = low_res.to(raw.device, torch.float32)
        raw_high = raw
        if upscale > 1:
            guide = upsampler.normalize_image(low_res, decoded=True)
            raw_high = uplift_steps(upsampler, raw, guide, UPLiFTModel.iterations_for_scale(upscale), generator,
                                    progress=getattr(pipe, "progress_bar", None))  # [B, C, s*h, s*w]
    if output_type == "latent":
        return UPLiFTPipelineOutput(images=from_raw_latents(pipe.vae, raw_high), low_res_images=latents)

    with timed_stage("decode", raw.device):
        image = decode_latents(pipe.vae, raw_high) if upscale > 1 else low_res  # [B, 3, s*p*h, s*p*w] in [0, 1]
        if upscale > 1:
            image = color_correction_for(upsampler, color_correction)(image, low_res)
        return UPLiFTPipelineOutput(images=images_from_unit(image, output_type),
                                    low_res_images=images_from_unit(low_res, output_type))


def images_from_unit(image01: torch.Tensor, output_type: str):
    """[B, 3, H, W] in [0, 1] -> ``"pt"`` (as is), ``"np"`` ([B, H, W, 3]) or ``"pil"`` (a list)."""
    if output_type == "pt":
        return image01
    array = VaeImageProcessor.pt_to_numpy(image01.float())
    return array if output_type == "np" else VaeImageProcessor.numpy_to_pil(array)
