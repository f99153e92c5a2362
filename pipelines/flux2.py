"""FLUX.2 text-to-image at 2x / 4x the denoising resolution: UPLiFT as the high-resolution step.

``UPLiFTFlux2KleinPipeline`` (FLUX.2 [klein]) and ``UPLiFTFlux2Pipeline`` (FLUX.2 [dev]) are diffusers' own FLUX.2
pipelines, whose ``__call__`` denoises at the low resolution (so every argument of theirs works), followed by UPLiFT's
part: the shared :func:`~uplift_diffusion.pipelines.upscale_latents` on the VAE's raw latents [B, 32, H/8, W/8].

FLUX.2's transformer works on 2x2-patchified latents normalised by the VAE's batch-norm statistics; the VAE decodes
the *raw* latents (unpatchified, de-normalised), which is also the latent space of taef2 and of the built-in UPLiFT
model trained on it. The klein pipeline's ``output_type="latent"`` already returns raw latents; the dev pipeline's
returns the packed, normalised tokens, which :meth:`UPLiFTFlux2Pipeline._raw_latents` turns into raw latents with
the parent's own unpacking code.
"""

import contextlib
import inspect
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers.models import AutoencoderKLFlux2, Flux2Transformer2DModel
from diffusers.pipelines.flux2.pipeline_flux2 import Flux2Pipeline
from diffusers.pipelines.flux2.pipeline_flux2_klein import (
    Flux2KleinPipeline,
    compute_empirical_mu,
    retrieve_timesteps,
)
from diffusers.schedulers import FlowMatchEulerDiscreteScheduler
from diffusers.utils import logging
from diffusers.utils.torch_utils import randn_tensor
from transformers import AutoProcessor, Mistral3ForConditionalGeneration, Qwen2TokenizerFast, Qwen3ForCausalLM
from uplift_diffusion.pipelines.common import (
    UPLiFTPipelineOutput,
    check_latent_space,
    check_refine_arguments,
    check_upsampler_fits,
    check_upscale_arguments,
    color_correction_for,
    images_from_unit,
    pipeline_output,
    timed_stage,
    upscale_latents,
)

import uplift_diffusion.backbones.taef2  # noqa: F401  (a saved pipeline may name this module for its guide_vae)
import uplift_diffusion.model  # noqa: F401  (diffusers >= 0.42.1 resolves saved components from sys.modules only)
from uplift_diffusion.backbones.taef2 import TAEF2
from uplift_diffusion.backbones.vae import decode_latents, latent_channels
from uplift_diffusion.model import UPLiFTModel
from uplift_diffusion.utils.errors import InputError, InputNotFoundError, UnavailableError

logger = logging.get_logger(__name__)

BUILTIN_UPSAMPLER = "taef2"  # uplift_diffusion.builtin: trained on taef2 latents = FLUX.2's raw latent space
# Output pixels per image above which the high-resolution decode runs in the VAE's own tiles by default
# (vae_tiling=None): 2048² decodes whole (as FLUX.2 decodes its native 2048² images), 4096² in tiles.
TILED_DECODE_ABOVE = 2048 * 2048
HINT = "use an UPLiFT model for FLUX.2's 32-channel latents (the default: the built-in taef2 model)"


def flux2_defaults(pipe) -> tuple[int, float]:
    """``(num_inference_steps, guidance_scale)`` for a FLUX.2 pipeline as BFL recommends them: step-distilled
    checkpoints (``is_distilled``: FLUX.2 [klein] 4B / 9B) 4 steps without guidance, the others (klein base, dev)
    50 steps at guidance 4."""
    distilled = bool(getattr(pipe.config, "is_distilled", False))
    return (4, 1.0) if distilled else (50, 4.0)


class _UPLiFTFlux2Mixin:
    """UPLiFT's part of both FLUX.2 pipelines: checks, the upscale path and the ``__call__`` around the parent's.
    Placed before the diffusers pipeline in the bases, so ``super().__call__`` is FLUX.2's own."""

    _optional_components = ["upsampler", "guide_vae"]
    model_cpu_offload_seq = "text_encoder->transformer->guide_vae->upsampler->vae"
    _builtin_upsampler: UPLiFTModel | None = None

    def upsampler_in_use(self) -> UPLiFTModel:
        """The pipeline's ``upsampler``, or when it has none (``None``: a plain FLUX.2 folder, or saved without one)
        the built-in taef2 UPLiFT model, loaded from the installed package files on first use (offline), on the
        pipeline's device in the VAE's dtype. It is not a component: ``save_pretrained`` keeps ``upsampler=None``."""
        if self.upsampler is not None:
            return self.upsampler
        if self._builtin_upsampler is None:
            from uplift_diffusion.builtin import load_builtin_upsampler

            self._builtin_upsampler = load_builtin_upsampler(BUILTIN_UPSAMPLER)
        dtype = self.vae.dtype if self.vae is not None else torch.float32
        self._builtin_upsampler = self._builtin_upsampler.to(self._execution_device, dtype)
        return self._builtin_upsampler

    def check_latent_spaces(self) -> None:
        """The upsampler's recorded latent space against the VAE and the guide VAE (see ``check_latent_space``)."""
        if self.upsampler is not None:
            check_latent_space(self.upsampler, self.vae, hint=HINT)
            check_latent_space(self.upsampler, self.guide_vae, hint="guide_vae must decode the same latents")

    def check_upscale_inputs(self, upscale: int, output_type: str) -> None:
        """Validate ``upscale`` and ``output_type``, and that the upsampler fits the VAE (and the guide VAE)."""
        upsampler = self.upsampler_in_use()
        check_upscale_arguments(upsampler, self.vae, upscale, output_type, hint=HINT)
        if self.guide_vae is not None:
            check_upsampler_fits(upsampler, self.guide_vae, hint="guide_vae must decode the same 32-channel "
                                                                 "latents (e.g. the built-in taef2)")

    def _raw_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """The parent's ``output_type="latent"`` output -> raw latents [B, 32, H/8, W/8] (what ``vae.decode`` takes)."""
        return latents

    @contextlib.contextmanager
    def _decode_tiling(self, enabled: bool):
        """Run the block with the VAE's own tiled decoding on (diffusers ``enable_tiling``) and restore the setting.
        Only decodes larger than the VAE's tile (``vae.tile_latent_min_size``; 1024 pixels for FLUX.2) are tiled."""
        before = getattr(self.vae, "use_tiling", None)
        if enabled and before is None:
            raise InputError(f"vae_tiling=True: the VAE ({type(self.vae).__name__}) has no tiled decoding")
        if before is not None:
            self.vae.use_tiling = bool(enabled)
        try:
            yield
        finally:
            if before is not None:
                self.vae.use_tiling = before

    def upscale_flux2_latents(
        self,
        latents: torch.Tensor,
        upscale: int = 2,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        color_correction: bool | str = True,
        low_res_images: torch.Tensor | None = None,
        vae_tiling: bool | None = None,
    ) -> UPLiFTPipelineOutput:
        r"""The upscale path alone, for raw FLUX.2 latents that already exist (no text encoder, no transformer).

        The low-resolution image is decoded once (by ``guide_vae`` when the pipeline has one, else by ``vae``): it
        guides UPLiFT and is the colour reference. ``log2(upscale)`` UPLiFT steps lift the raw latents, ``vae``
        decodes them (in its own tiles above ``TILED_DECODE_ABOVE`` pixels unless ``vae_tiling`` says otherwise), and
        the upsampler's own colour correction (its config's ``color_correction``) aligns the result with the
        low-resolution image.

        Args:
            latents (`torch.Tensor`): raw latents [B, 32, h, w] (unpatchified, de-normalised: what
                ``Flux2KleinPipeline(output_type="latent")`` returns and ``vae.decode`` takes).
            upscale (`int`, defaults to 2): 1, 2, 4 or 8 (1 decodes with the pipeline's VAE, no UPLiFT).
            generator (`torch.Generator` or a list, *optional*): for UPLiFT's noise channels (one per image in a list).
            output_type (`str`, defaults to ``"pil"``): ``"pil"``, ``"np"``, ``"pt"`` (images in [0, 1]) or
                ``"latent"`` (the upscaled raw latents).
            color_correction (`bool` or `str`, defaults to True): the upsampler's own correction, a mode name
                (``"mean"`` / ``"detail"``), or ``False`` for none.
            low_res_images (`torch.Tensor`, *optional*): [B, 3, 8h, 8w] in [0, 1]: use this low-resolution image as
                the guide and colour reference instead of decoding ``latents``.
            vae_tiling (`bool`, *optional*): decode in the VAE's tiles (True), whole (False), or by size (None).

        Returns:
            [`UPLiFTPipelineOutput`] with ``images`` and ``low_res_images`` (the guide image; the input latents for
            ``output_type="latent"``).
        """
        self.check_upscale_inputs(upscale, output_type)
        self.check_raw_latents(latents)
        if low_res_images is None and upscale > 1 and self.guide_vae is not None:
            with timed_stage("uplift", latents.device):
                low_res_images = decode_latents(self.guide_vae, latents)  # [B, 3, 8h, 8w] in [0, 1], the fast guide
        if vae_tiling is None:
            vae_tiling = (latents.shape[-2] * latents.shape[-1] * (8 * upscale) ** 2 > TILED_DECODE_ABOVE
                          and hasattr(self.vae, "use_tiling"))
        with self._decode_tiling(vae_tiling):
            return upscale_latents(self, latents, self.upsampler_in_use(), upscale, generator,
                                   output_type=output_type, color_correction=color_correction, low_res=low_res_images)

    def check_raw_latents(self, latents) -> None:
        """ValueError unless ``latents`` are raw FLUX.2 latents [B, C, h, w] of the VAE's channel count, at least
        one latent in each direction."""
        channels = latent_channels(self.vae)
        if not isinstance(latents, torch.Tensor):
            raise TypeError(f"latents must be a torch.Tensor [B, {channels}, h, w], got {type(latents).__name__}")
        if latents.ndim != 4 or latents.shape[1] != channels or min(latents.shape[-2:]) < 1 or latents.shape[0] < 1:
            raise ValueError(f"latents must be raw FLUX.2 latents [B, {channels}, h, w] (unpatchified: what "
                             f"Flux2KleinPipeline(output_type='latent') returns), got shape {tuple(latents.shape)}")

    @torch.no_grad()
    def __call__(
        self,
        image: PIL.Image.Image | list[PIL.Image.Image] | None = None,
        prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        sigmas: list[float] | None = None,
        guidance_scale: float | None = 4.0,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        attention_kwargs: dict[str, Any] | None = None,
        callback_on_step_end: Callable[[Any, int, int, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006  (the parent's default)
        max_sequence_length: int = 512,
        text_encoder_out_layers: tuple[int, ...] | None = None,
        caption_upsample_temperature: float | None = None,
        upscale: int = 2,
        return_low_res: bool = False,
        color_correction: bool | str = True,
        vae_tiling: bool | None = None,
        refine_strength: float = 0.0,
        refine_steps: int | None = None,
    ):
        r"""Generate images at ``upscale`` times the denoising resolution.

        FLUX.2 denoises with its own ``__call__`` (the arguments up to ``caption_upsample_temperature`` are its own and
        mean what they mean there); then :meth:`upscale_flux2_latents` does UPLiFT's part.

        Args:
            image (`PIL.Image.Image` or a list, *optional*): FLUX.2's reference image(s).
            prompt (`str` or `list[str]`, *optional*): the prompt(s); or pass ``prompt_embeds``.
            height (`int`, *optional*): the *low* (denoising) height in pixels, a multiple of 16 (by default the
                transformer's default size); the output is ``upscale`` times larger.
            width (`int`, *optional*): the low width in pixels, as ``height``.
            num_inference_steps (`int`, defaults to 50): denoising steps (step-distilled klein checkpoints: 4).
            sigmas (`list[float]`, *optional*): custom sigmas for the flow-matching scheduler.
            guidance_scale (`float`, defaults to 4.0): guidance scale (klein: classifier-free guidance, on when > 1
                and the checkpoint is not distilled; dev: the transformer's embedded guidance).
            num_images_per_prompt (`int`, defaults to 1): images per prompt.
            generator (`torch.Generator` or a list, *optional*): makes the initial noise and UPLiFT's noise channels
                reproducible; a list needs one generator per image (prompts x ``num_images_per_prompt``).
            latents (`torch.Tensor`, *optional*): the initial noisy latents, as the FLUX.2 pipeline takes them.
            prompt_embeds (`torch.Tensor`, *optional*): text embeddings instead of ``prompt``.
            negative_prompt_embeds (`torch.Tensor`, *optional*): klein only: negative text embeddings for guidance.
            output_type (`str`, defaults to ``"pil"``): ``"pil"``, ``"np"``, ``"pt"`` (images in [0, 1]) or
                ``"latent"``: the upscaled *raw* latents [B, 32, upscale*H/8, upscale*W/8] (``vae.decode`` takes them).
            return_dict (`bool`, defaults to True): return an [`UPLiFTPipelineOutput`] instead of a tuple.
            attention_kwargs (`dict`, *optional*): passed to the attention processors.
            callback_on_step_end (`Callable`, *optional*): called at the end of each denoising step as
                ``callback(pipe, step, timestep, callback_kwargs)``; a returned ``{"latents": ...}`` replaces them.
            callback_on_step_end_tensor_inputs (`list[str]`, defaults to ``["latents"]``): the tensors handed to the
                callback.
            max_sequence_length (`int`, defaults to 512): the text encoder's token limit.
            text_encoder_out_layers (`tuple[int]`, *optional*): the text encoder layers whose hidden states form the
                prompt embeddings; ``None``: the FLUX.2 pipeline's own default (klein (9, 18, 27), dev (10, 20, 30)).
            caption_upsample_temperature (`float`, *optional*): dev only: the temperature of its prompt upsampling.
            upscale (`int`, defaults to 2): 1, 2, 4 or 8; ``log2(upscale)`` UPLiFT steps (1 = plain FLUX.2).
            return_low_res (`bool`, defaults to False): also return the low-resolution images (the guide) or latents.
            color_correction (`bool` or `str`, defaults to True): correct the high-res image against the low-res one
                with the upsampler's own correction (its config's ``color_correction``: ``"detail"`` for the built-in
                model), or a mode name (``"mean"`` / ``"detail"``); ``False`` for none.
            vae_tiling (`bool`, *optional*): decode the high-resolution latents in the VAE's own tiles (True), whole
                (False), or when the output has more than 2048² pixels (None, the default: 4x of 1024² is tiled).
            refine_strength (`float`, defaults to 0.0): a refine pass at the output size ("hires fix"): the upscaled
                latents are noised to the sigma of this strength (diffusers' img2img logic: the last
                ``int(refine_steps * refine_strength)`` steps of the schedule, ``scheduler.scale_noise``) and
                denoised again by FLUX.2's own ``__call__`` with the same prompt, then decoded and colour-corrected.
                0 (the default) is off and changes nothing. Callbacks fire in both passes; ``generator`` also draws
                the refine noise.
            refine_steps (`int`, *optional*): the length of the refine pass's schedule (it runs about
                ``refine_steps * refine_strength`` steps); by default ``num_inference_steps``.

        Returns:
            [`UPLiFTPipelineOutput`] with ``images`` (and ``low_res_images`` when ``return_low_res``); with
            ``return_dict=False`` the tuple ``(images, low_res_images, nsfw_content_detected)``, ``None`` where absent
            (FLUX.2 has no safety checker: the third is always ``None``).
        """
        # 1. Check UPLiFT's inputs before denoising (FLUX.2 checks its own)
        self.check_upscale_inputs(upscale, output_type)
        check_refine_arguments(refine_strength, refine_steps)

        # 2. Denoise at the low resolution (the parent's __call__): raw latents [B, 32, height/8, width/8]
        parent_kwargs = self._parent_call_arguments(
            negative_prompt_embeds=negative_prompt_embeds, text_encoder_out_layers=text_encoder_out_layers,
            caption_upsample_temperature=caption_upsample_temperature)
        parent_kwargs.update(
            image=image, prompt=prompt, guidance_scale=guidance_scale, num_images_per_prompt=num_images_per_prompt,
            generator=generator, prompt_embeds=prompt_embeds, output_type="latent", return_dict=True,
            attention_kwargs=attention_kwargs, callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
            max_sequence_length=max_sequence_length)
        with timed_stage("base", self._execution_device):
            latents = super().__call__(height=height, width=width, num_inference_steps=num_inference_steps,
                                       sigmas=sigmas, latents=latents, **parent_kwargs).images
            latents = self._raw_latents(latents)

        # 3. UPLiFT: the low-res decode guides it, log2(upscale) steps, decode with the VAE, colour-correct; or, with
        #    a refine pass, the upscaled latents denoised again at the output size before decoding
        if not refine_strength:
            out = self.upscale_flux2_latents(latents, upscale, generator, output_type=output_type,
                                             color_correction=color_correction, vae_tiling=vae_tiling)
            images, low_res = out.images, out.low_res_images
        else:
            high = self.upscale_flux2_latents(latents, upscale, generator, output_type="latent").images
            with timed_stage("refine", self._execution_device):
                high = self._refine(high, refine_strength, refine_steps or num_inference_steps, generator,
                                    parent_kwargs)
            with timed_stage("decode", self._execution_device):
                images, low_res = self._decode_refined(high, latents, output_type, color_correction, vae_tiling)
        self.maybe_free_model_hooks()
        return pipeline_output(return_dict, images, low_res if return_low_res else None)

    def _model_latents(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw latents [B, 32, H, W] -> the transformer's latents [B, 128, H/2, W/2] (2x2-patchified, normalised by
        the VAE's batch-norm statistics): what the FLUX.2 ``__call__`` takes as ``latents``."""
        mean, std = self._batch_norm_statistics(raw)
        return (self._patchify_latents(raw) - mean) / std

    def _batch_norm_statistics(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The VAE's batch-norm mean and standard deviation over the patchified channels, [1, 128, 1, 1]."""
        bn = self.vae.bn
        mean = bn.running_mean.view(1, -1, 1, 1).to(like.device, like.dtype)
        std = torch.sqrt(bn.running_var.view(1, -1, 1, 1) + self.vae.config.batch_norm_eps).to(like.device,
                                                                                              like.dtype)
        return mean, std

    def _refine(self, raw_high: torch.Tensor, strength: float, steps: int, generator,
                parent_kwargs: dict[str, Any]) -> torch.Tensor:
        """The refine pass: the last ``int(steps * strength)`` sigmas of a ``steps``-step schedule, the upscaled latents
        noised to the first of them (``scheduler.scale_noise``), FLUX.2's ``__call__`` denoising from there."""
        t_start = steps - min(int(steps * strength), steps)
        sigmas = np.linspace(1.0, 1 / steps, steps)[t_start:]  # the parent's own default schedule, its tail
        if len(sigmas) == 0:
            return raw_high
        clean = self._model_latents(raw_high)
        device = self._execution_device
        mu = compute_empirical_mu(image_seq_len=clean.shape[-2] * clean.shape[-1], num_steps=len(sigmas))
        timesteps, _ = retrieve_timesteps(self.scheduler, len(sigmas), device, sigmas=sigmas, mu=mu)
        noise = randn_tensor(clean.shape, generator=generator, device=device, dtype=clean.dtype)
        noised = self.scheduler.scale_noise(clean.to(device), timesteps[:1].repeat(clean.shape[0]), noise)
        height, width = raw_high.shape[-2] * 8, raw_high.shape[-1] * 8
        refined = super().__call__(height=height, width=width, num_inference_steps=len(sigmas), sigmas=list(sigmas),
                                   latents=noised, **parent_kwargs).images
        return self._raw_latents(refined)

    def _decode_refined(self, raw_high: torch.Tensor, raw_low: torch.Tensor, output_type: str,
                        color_correction: bool | str, vae_tiling: bool | None):
        """Refined raw latents -> (images, low-resolution images) in ``output_type``, colour-corrected against the
        low-resolution decode (the guide VAE's when the pipeline has one), as the upscale path does."""
        if output_type == "latent":
            return raw_high, raw_low
        low = decode_latents(self.guide_vae if self.guide_vae is not None else self.vae, raw_low)
        if vae_tiling is None:
            vae_tiling = raw_high.shape[-2] * raw_high.shape[-1] * 64 > TILED_DECODE_ABOVE and hasattr(self.vae,
                                                                                                       "use_tiling")
        with self._decode_tiling(vae_tiling):
            image = decode_latents(self.vae, raw_high)
        image = color_correction_for(self.upsampler_in_use(), color_correction)(image, low)
        return images_from_unit(image, output_type), images_from_unit(low, output_type)

    def _parent_call_arguments(self, **optional: Any) -> dict[str, Any]:
        """The arguments that only one FLUX.2 pipeline has (or whose default differs between them): passed on when
        set; set for the pipeline that does not take them, an InputError naming it."""
        accepted = inspect.signature(super().__call__).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
        passed = {name: value for name, value in optional.items() if value is not None}
        for name in passed:
            if name not in accepted and not takes_any:
                raise InputError(f"{name} is not an argument of {type(self).__name__} (only of the other FLUX.2 "
                                 f"pipeline)")
        return passed


class UPLiFTFlux2KleinPipeline(_UPLiFTFlux2Mixin, Flux2KleinPipeline):
    r"""FLUX.2 [klein] text-to-image at 2x / 4x the transformer's resolution with UPLiFT latent upsampling
    (e.g. 1024² generations -> 2048² or 4096² images).

    Args:
        scheduler ([`FlowMatchEulerDiscreteScheduler`]): FLUX.2's scheduler.
        vae ([`AutoencoderKLFlux2`]): FLUX.2's VAE (32 latent channels, 8x); decodes the high-resolution latents.
        text_encoder ([`~transformers.Qwen3ForCausalLM`]): the text encoder.
        tokenizer ([`~transformers.Qwen2TokenizerFast`]): its tokenizer.
        transformer ([`Flux2Transformer2DModel`]): the denoiser.
        is_distilled (`bool`, defaults to False): a step-distilled checkpoint (guidance ignored), as in FLUX.2.
        upsampler ([`~uplift_diffusion.UPLiFTModel`], *optional*): an UPLiFT model for FLUX.2's raw latents.
            ``None`` (a plain FLUX.2 folder): the built-in one (``uplift_diffusion.builtin``, trained on taef2
            latents, offline) is used at call time, without becoming a component (see :meth:`upsampler_in_use`).
        guide_vae ([`~uplift_diffusion.TAEF2`] or any VAE of the same latents, *optional*): decodes the
            low-resolution latents into the image that guides UPLiFT and is the colour reference (the fast option:
            ``load_builtin_vae("taef2")``); ``None`` decodes them with ``vae``.
    """

    # Annotated with the component classes: diffusers' from_pipe / from_pretrained check components against them.
    def __init__(self, scheduler: FlowMatchEulerDiscreteScheduler, vae: AutoencoderKLFlux2,
                 text_encoder: Qwen3ForCausalLM, tokenizer: Qwen2TokenizerFast, transformer: Flux2Transformer2DModel,
                 is_distilled: bool = False, upsampler: UPLiFTModel | None = None,
                 guide_vae: TAEF2 | AutoencoderKLFlux2 | None = None):
        super().__init__(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                         transformer=transformer, is_distilled=is_distilled)
        self.register_modules(upsampler=upsampler, guide_vae=guide_vae)
        self.check_latent_spaces()


class UPLiFTFlux2Pipeline(_UPLiFTFlux2Mixin, Flux2Pipeline):
    r"""FLUX.2 [dev] text-to-image at 2x / 4x the transformer's resolution with UPLiFT latent upsampling.

    Args:
        scheduler ([`FlowMatchEulerDiscreteScheduler`]): FLUX.2's scheduler.
        vae ([`AutoencoderKLFlux2`]): FLUX.2's VAE (32 latent channels, 8x); decodes the high-resolution latents.
        text_encoder ([`~transformers.Mistral3ForConditionalGeneration`]): the text encoder.
        tokenizer ([`~transformers.AutoProcessor`]): its processor.
        transformer ([`Flux2Transformer2DModel`]): the denoiser.
        upsampler ([`~uplift_diffusion.UPLiFTModel`], *optional*): an UPLiFT model for FLUX.2's raw latents;
            ``None``: the built-in one at call time (see :meth:`upsampler_in_use`).
        guide_vae ([`~uplift_diffusion.TAEF2`] or any VAE of the same latents, *optional*): decodes the
            low-resolution latents into the image that guides UPLiFT and is the colour reference; ``None``: ``vae``.
    """

    def __init__(self, scheduler: FlowMatchEulerDiscreteScheduler, vae: AutoencoderKLFlux2,
                 text_encoder: Mistral3ForConditionalGeneration, tokenizer: AutoProcessor,
                 transformer: Flux2Transformer2DModel, upsampler: UPLiFTModel | None = None,
                 guide_vae: TAEF2 | AutoencoderKLFlux2 | None = None):
        super().__init__(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                         transformer=transformer)
        self.register_modules(upsampler=upsampler, guide_vae=guide_vae)
        self.check_latent_spaces()
        self._latent_ids = None

    def prepare_latents(self, *args, **kwargs):
        """The parent's, keeping the latent position ids: its ``output_type="latent"`` returns packed tokens, which
        only these ids place back on the grid."""
        latents, latent_ids = super().prepare_latents(*args, **kwargs)
        self._latent_ids = latent_ids
        return latents, latent_ids

    def _raw_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Packed, normalised tokens [B, h*w, 128] -> raw latents [B, 32, 2h, 2w], as the parent does before decoding
        (unpack by position ids, undo the VAE's batch-norm, unpatchify 2x2)."""
        latents = self._unpack_latents_with_ids(latents, self._latent_ids)
        mean, std = self._batch_norm_statistics(latents)
        return self._unpatchify_latents(latents * std + mean)


# model_index.json class name -> the UPLiFT pipeline that wraps it (a saved UPLiFT folder names its own class).
FLUX2_PIPELINES = {
    "Flux2KleinPipeline": UPLiFTFlux2KleinPipeline,
    "Flux2Pipeline": UPLiFTFlux2Pipeline,
    "UPLiFTFlux2KleinPipeline": UPLiFTFlux2KleinPipeline,
    "UPLiFTFlux2Pipeline": UPLiFTFlux2Pipeline,
}


def _offline_error(source: str, err: BaseException) -> UnavailableError:
    from uplift_diffusion.utils.hub import offline_hint

    reason = f"{type(err).__name__}: {str(err).splitlines()[0][:160]}" if str(err) else type(err).__name__
    return UnavailableError(f"could not load the FLUX.2 pipeline {source!r} from the Hugging Face Hub ({reason}); "
                            f"{offline_hint()}: download it on a machine with a network (`hf download {source}`) "
                            f"and pass the local folder instead of the repo id (--model DIR on the command line)")


def flux2_pipeline_class(source: str | os.PathLike) -> type:
    """The UPLiFT pipeline class for a FLUX.2 pipeline folder or Hub repo id, from its ``model_index.json``
    (``Flux2KleinPipeline`` -> :class:`UPLiFTFlux2KleinPipeline`, ``Flux2Pipeline`` -> :class:`UPLiFTFlux2Pipeline`).

    Raises ``InputNotFoundError`` for a folder without ``model_index.json``, ``InputError`` for another pipeline
    class, and ``UnavailableError`` (naming the repo and how to pass a local folder) when the Hub cannot serve it.
    """
    from diffusers import DiffusionPipeline

    path = Path(source)
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise InputNotFoundError(f"{source}: no model_index.json, not a diffusers pipeline folder (a FLUX.2 "
                                     f"folder as `hf download black-forest-labs/FLUX.2-klein-4B` writes it)")
        name = json.loads((path / "model_index.json").read_text()).get("_class_name")
    else:
        from uplift_diffusion.utils.hub import ensure_hub_reachable

        ensure_hub_reachable()
        try:
            with warnings.catch_warnings():  # diffusers 0.42 passes huggingface_hub a deprecated argument: noise
                warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")
                name = DiffusionPipeline.load_config(str(source)).get("_class_name")
        except OSError as err:  # offline, no such repo, gated repo: huggingface_hub's errors are OSErrors
            raise _offline_error(str(source), err) from None
    if name not in FLUX2_PIPELINES:
        raise InputError(f"{source} holds a {name} pipeline, not FLUX.2 (Flux2KleinPipeline or Flux2Pipeline)")
    return FLUX2_PIPELINES[name]


def load_flux2_pipeline(source: str | os.PathLike, upsampler: UPLiFTModel | None = None, guide_vae=None,
                        dtype: torch.dtype | None = None, **kwargs):
    r"""An UPLiFT FLUX.2 pipeline from a FLUX.2 folder or Hub repo (klein or dev, told by its ``model_index.json``).

    Args:
        source (`str` or `os.PathLike`): a FLUX.2 pipeline folder or Hub repo id (e.g.
            ``"black-forest-labs/FLUX.2-klein-4B"``), or a folder saved from an UPLiFT FLUX.2 pipeline.
        upsampler ([`~uplift_diffusion.UPLiFTModel`], *optional*): the UPLiFT model; by default the folder's own
            (a saved UPLiFT pipeline), else the built-in taef2 model.
        guide_vae (*optional*): a VAE of the same latents for the low-resolution guide (e.g. the built-in taef2).
        dtype (`torch.dtype`, *optional*): weights dtype of the loaded components.
        **kwargs: more keyword arguments of ``from_pretrained`` (``revision``, ``variant``, ...).

    Offline (or when the Hub cannot serve the repo) the ``UnavailableError`` names the repo and says to pass a
    local folder.
    """
    cls = flux2_pipeline_class(source)
    extra = {name: value for name, value in (("upsampler", upsampler), ("guide_vae", guide_vae)) if value is not None}
    try:
        pipe = cls.from_pretrained(source, dtype=dtype, **extra, **kwargs)
    except OSError as err:
        if Path(source).exists():
            raise
        raise _offline_error(str(source), err) from None
    if pipe.upsampler is None:  # a plain FLUX.2 folder: the built-in model becomes the component (saved with it)
        pipe.register_modules(upsampler=pipe.upsampler_in_use())
    return pipe
