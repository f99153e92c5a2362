"""UPLiFTPipeline: Stable Diffusion 1.5 text-to-image, upscaled in latent space by UPLiFT (paper appendix B)."""

from __future__ import annotations

from typing import Any, Callable

import torch
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline, retrieve_timesteps
from diffusers.utils import logging
from uplift_diffusion.pipelines.common import UPLiFTPipelineOutput, upscale_latents

import uplift_diffusion.model  # noqa: F401  (diffusers >= 0.42.1 resolves saved components from sys.modules only)
from uplift_diffusion.backbones.vae import decode_latents
from uplift_diffusion.color import ColorCorrection
from uplift_diffusion.model import UPLiFTModel

logger = logging.get_logger(__name__)

UPSCALE_FACTORS = (1, 2, 4, 8)
OUTPUT_TYPES = ("pil", "np", "pt", "latent")


class UPLiFTPipeline(StableDiffusionPipeline):
    r"""Stable Diffusion 1.5 text-to-image at 2x / 4x / 8x the UNet's resolution with UPLiFT latent upsampling.

    The UNet denoises at the low resolution; the low-resolution latents are decoded once (that image guides UPLiFT),
    upscaled ``log2(upscale)`` times by UPLiFT on *raw* latents (divided by the VAE scaling factor), decoded at the
    high resolution and colour-corrected against the low-resolution image (paper B.1, B.2).

    Inherits prompt encoding (LoRA, textual inversion, ``clip_skip``), latent preparation and input checks from
    [`StableDiffusionPipeline`].

    Args:
        vae ([`AutoencoderKL`]): the SD 1.5 VAE.
        text_encoder ([`~transformers.CLIPTextModel`]): the frozen CLIP text encoder.
        tokenizer ([`~transformers.CLIPTokenizer`]): its tokenizer.
        unet ([`UNet2DConditionModel`]): the denoiser.
        scheduler ([`SchedulerMixin`]): a diffusers scheduler.
        upsampler ([`~uplift_diffusion.UPLiFTModel`]): a UPLiFT model for this VAE's raw latents (the ``sd15-vae``
            preset: ``UPLiFTModel.from_reference_checkpoint("UPLiFT-upsampler/uplift_sd1.5vae")``).
        safety_checker ([`StableDiffusionSafetyChecker`], *optional*): SD's safety checker, run on the final images.
        feature_extractor ([`~transformers.CLIPImageProcessor`], *optional*): the safety checker's preprocessor.
        image_encoder ([`~transformers.CLIPVisionModelWithProjection`], *optional*): unused (kept so that SD 1.5
            repositories load unchanged).
        requires_safety_checker (`bool`, defaults to True): warn when loaded without a safety checker.
    """

    model_cpu_offload_seq = "text_encoder->image_encoder->unet->vae->upsampler"
    _optional_components = ["safety_checker", "feature_extractor", "image_encoder"]

    def __init__(
        self,
        vae,
        text_encoder,
        tokenizer,
        unet,
        scheduler,
        upsampler: UPLiFTModel,
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker: bool = True,
    ):
        super().__init__(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                         safety_checker=safety_checker, feature_extractor=feature_extractor,
                         image_encoder=image_encoder, requires_safety_checker=requires_safety_checker)
        self.register_modules(upsampler=upsampler)

    # ------------------------------------------------------------------ helpers
    def check_upscale_inputs(self, upscale: int, output_type: str) -> None:
        """Validate ``upscale``, ``output_type`` and that the upsampler fits the VAE; ValueError naming the problem."""
        if isinstance(upscale, bool) or upscale not in UPSCALE_FACTORS:
            raise ValueError(f"upscale must be one of {UPSCALE_FACTORS}, got {upscale!r}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        cfg, channels = self.upsampler.config, self.vae.config.latent_channels
        if cfg.in_channels != channels or cfg.patch_size != self.vae_scale_factor:
            raise ValueError(
                f"the upsampler (in_channels={cfg.in_channels}, patch_size={cfg.patch_size}) does not fit the vae "
                f"({channels} latent channels, {self.vae_scale_factor}x spatial factor): use the sd15-vae UPLiFT model"
            )

    def _to_raw(self, latents: torch.Tensor) -> torch.Tensor:
        """UNet-space latents -> the VAE's raw latents (what UPLiFT was trained on)."""
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        return latents / self.vae.config.scaling_factor + shift

    def _from_raw(self, raw: torch.Tensor) -> torch.Tensor:
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        return (raw - shift) * self.vae.config.scaling_factor

    def denoise(self, latents, timesteps, num_inference_steps, prompt_embeds, extra_step_kwargs, timestep_cond=None,
                callback_on_step_end=None, callback_on_step_end_tensor_inputs=("latents",)):
        """The Stable Diffusion denoising loop (classifier-free guidance, callbacks, progress bar)."""
        num_warmup_steps = len(timesteps) - num_inference_steps * self.scheduler.order
        with self.progress_bar(total=num_inference_steps) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                model_input = torch.cat([latents] * 2) if self.do_classifier_free_guidance else latents
                model_input = self.scheduler.scale_model_input(model_input, t)
                noise_pred = self.unet(model_input, t, encoder_hidden_states=prompt_embeds,
                                       timestep_cond=timestep_cond, cross_attention_kwargs=self.cross_attention_kwargs,
                                       return_dict=False)[0]
                if self.do_classifier_free_guidance:
                    noise_uncond, noise_text = noise_pred.chunk(2)
                    noise_pred = noise_uncond + self.guidance_scale * (noise_text - noise_uncond)
                latents = self.scheduler.step(noise_pred, t, latents, **extra_step_kwargs, return_dict=False)[0]

                if callback_on_step_end is not None:
                    names = {"latents": latents, "prompt_embeds": prompt_embeds}
                    outputs = callback_on_step_end(self, i, t,
                                                   {k: names[k] for k in callback_on_step_end_tensor_inputs
                                                    if k in names})
                    latents = outputs.pop("latents", latents)
                    prompt_embeds = outputs.pop("prompt_embeds", prompt_embeds)
                if i == len(timesteps) - 1 or ((i + 1) > num_warmup_steps and (i + 1) % self.scheduler.order == 0):
                    progress_bar.update()
        return latents

    # ------------------------------------------------------------------ call
    @torch.inference_mode()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        upscale: int = 2,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        return_low_res: bool = False,
        color_correction: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        clip_skip: int | None = None,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006 (diffusers' signature)
    ):
        r"""Generate images at ``upscale`` times the denoising resolution.

        Args:
            prompt (`str` or `list[str]`): the prompt(s); or pass ``prompt_embeds``.
            negative_prompt (`str` or `list[str]`, *optional*): what not to generate (with ``guidance_scale > 1``).
            height (`int`, *optional*): low-resolution height in pixels (multiple of 8); defaults to the UNet's
                ``sample_size * 8`` (512 for SD 1.5). The output is ``upscale * height`` high.
            width (`int`, *optional*): low-resolution width, as ``height``.
            num_inference_steps (`int`, defaults to 50): denoising steps.
            guidance_scale (`float`, defaults to 7.5): classifier-free guidance scale (off when <= 1).
            upscale (`int`, defaults to 2): 1, 2, 4 or 8; ``log2(upscale)`` UPLiFT steps (1 = plain SD 1.5).
            num_images_per_prompt (`int`, defaults to 1): images per prompt.
            eta (`float`, defaults to 0.0): DDIM eta (ignored by other schedulers).
            generator (`torch.Generator` or a list, *optional*): makes the initial noise and UPLiFT's noise channels
                reproducible; a list needs one generator per image.
            latents (`torch.Tensor`, *optional*): initial noisy latents [B, 4, height/8, width/8].
            prompt_embeds / negative_prompt_embeds (`torch.Tensor`, *optional*): precomputed text embeddings.
            output_type (`str`, defaults to ``"pil"``): ``"pil"``, ``"np"``, ``"pt"`` (images in [0, 1]) or
                ``"latent"``: the upscaled latents, *scaled* like a Stable Diffusion pipeline's latent output (decode
                with ``vae.decode(latents / vae.config.scaling_factor)``).
            return_dict (`bool`, defaults to True): return an [`UPLiFTPipelineOutput`] instead of a tuple.
            return_low_res (`bool`, defaults to False): also return the low-resolution images (or latents).
            color_correction (`bool`, defaults to True): realign the high-res colour means with the low-res image.
            cross_attention_kwargs (`dict`, *optional*): passed to the UNet's attention processors (e.g. LoRA scale).
            clip_skip (`int`, *optional*): CLIP layers to skip for the prompt embeddings.
            callback_on_step_end (`Callable`, *optional*): ``callback(pipe, step, timestep, callback_kwargs)`` after
                every denoising step; may return replacements for ``latents`` / ``prompt_embeds``.
            callback_on_step_end_tensor_inputs (`list[str]`): tensors passed to the callback.

        Returns:
            [`UPLiFTPipelineOutput`] with ``images`` (and ``low_res_images`` when ``return_low_res``), or the tuple
            ``(images, nsfw_content_detected)`` (plus ``low_res_images`` when asked) when ``return_dict=False``.
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        height = height or self.unet.config.sample_size * self.vae_scale_factor
        width = width or self.unet.config.sample_size * self.vae_scale_factor

        # 1. Check inputs
        self.check_inputs(prompt, height, width, None, negative_prompt, prompt_embeds, negative_prompt_embeds,
                          callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs)
        self.check_upscale_inputs(upscale, output_type)
        self._guidance_scale, self._guidance_rescale, self._clip_skip = guidance_scale, 0.0, clip_skip
        self._cross_attention_kwargs, self._interrupt = cross_attention_kwargs, False
        device = self._execution_device
        batch_size = 1 if isinstance(prompt, str) else len(prompt) if prompt is not None else prompt_embeds.shape[0]

        # 2. Encode the prompt
        lora_scale = (cross_attention_kwargs or {}).get("scale")
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt, device, num_images_per_prompt, self.do_classifier_free_guidance, negative_prompt,
            prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds, lora_scale=lora_scale,
            clip_skip=clip_skip,
        )
        if self.do_classifier_free_guidance:
            prompt_embeds = torch.cat([negative_prompt_embeds, prompt_embeds])

        # 3. Denoise at the low resolution: latents [B, 4, height/8, width/8] (scaled, UNet space)
        timesteps, num_inference_steps = retrieve_timesteps(self.scheduler, num_inference_steps, device)
        self._num_timesteps = len(timesteps)
        latents = self.prepare_latents(batch_size * num_images_per_prompt, self.unet.config.in_channels, height,
                                       width, prompt_embeds.dtype, device, generator, latents)
        timestep_cond = None
        if self.unet.config.time_cond_proj_dim is not None:  # guidance-distilled UNets (LCM)
            w = torch.tensor(guidance_scale - 1).repeat(latents.shape[0])
            timestep_cond = self.get_guidance_scale_embedding(w, embedding_dim=self.unet.config.time_cond_proj_dim)
            timestep_cond = timestep_cond.to(device=device, dtype=latents.dtype)
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, eta)
        latents = self.denoise(latents, timesteps, num_inference_steps, prompt_embeds, extra_step_kwargs,
                               timestep_cond, callback_on_step_end, callback_on_step_end_tensor_inputs)

        # 4. Decode the low-resolution latents once: this image guides UPLiFT and is the colour reference
        raw = self._to_raw(latents)  # UPLiFT works on raw latents
        low_res = decode_latents(self.vae, raw)  # [B, 3, height, width] in [0, 1]

        # 5. UPLiFT: log2(upscale) 2x steps on the raw latents, guided by the low-res image
        if upscale > 1:
            guide = self.upsampler.normalize_image(low_res)
            raw_high = upscale_latents(self.upsampler, raw, guide, UPLiFTModel.iterations_for_scale(upscale),
                                       generator, progress=self.progress_bar)  # [B, 4, s*h, s*w]
        else:
            raw_high = raw

        if output_type == "latent":
            images, low_res_out, has_nsfw = self._from_raw(raw_high), latents, None
        else:
            # 6. Decode at the high resolution and colour-correct against the low-res image
            image = decode_latents(self.vae, raw_high) if upscale > 1 else low_res  # [B, 3, s*H, s*W] in [0, 1]
            image = ColorCorrection(enabled=color_correction and upscale > 1, clamp=(0.0, 1.0))(image, low_res)

            # 7. Safety checker (on the final images), postprocess
            image, has_nsfw = self.run_safety_checker(image * 2 - 1, device, prompt_embeds.dtype)
            do_denormalize = [True] * image.shape[0] if has_nsfw is None else [not flag for flag in has_nsfw]
            if has_nsfw is not None:
                low_res[torch.tensor(has_nsfw, dtype=torch.bool, device=low_res.device)] = 0.0
            images = self.image_processor.postprocess(image, output_type=output_type, do_denormalize=do_denormalize)
            low_res_out = (self.image_processor.postprocess(low_res * 2 - 1, output_type=output_type)
                           if return_low_res else None)

        self.maybe_free_model_hooks()
        low_res_out = low_res_out if return_low_res else None
        if not return_dict:
            return (images, has_nsfw) + ((low_res_out,) if return_low_res else ())
        return UPLiFTPipelineOutput(images=images, low_res_images=low_res_out, nsfw_content_detected=has_nsfw)
