"""UPLiFTPipeline: Stable Diffusion 1.5 text-to-image, upscaled in latent space by UPLiFT (paper appendix B)."""

from collections.abc import Callable
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.models import AutoencoderKL, UNet2DConditionModel
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img import StableDiffusionImg2ImgPipeline
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils import logging
from transformers import CLIPImageProcessor, CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection
from uplift_diffusion.pipelines.common import (
    check_latent_space,
    check_refine_arguments,
    check_upscale_arguments,
    color_correction_for,
    pipeline_output,
    timed_stage,
    to_raw_latents,
    upscale_latents,
)

import uplift_diffusion.model  # noqa: F401  (diffusers >= 0.42.1 resolves saved components from sys.modules only)
from uplift_diffusion.backbones.vae import decode_latents
from uplift_diffusion.model import UPLiFTModel

logger = logging.get_logger(__name__)


class UPLiFTPipeline(StableDiffusionPipeline):
    r"""Stable Diffusion 1.5 text-to-image at 2x / 4x / 8x the UNet's resolution with UPLiFT latent upsampling.

    The UNet denoises at the low resolution; the low-resolution latents are decoded once (that image guides UPLiFT),
    upscaled ``log2(upscale)`` times by UPLiFT on *raw* latents (divided by the VAE scaling factor), decoded at the
    high resolution and colour-corrected against the low-resolution image (paper B.1, B.2).

    Denoising is [`StableDiffusionPipeline`]'s own ``__call__`` (so LoRA, textual inversion, IP-Adapter, custom
    ``timesteps`` / ``sigmas``, ``guidance_rescale``, callbacks, ... all work); UPLiFT's part is
    :func:`~uplift_diffusion.pipelines.upscale_latents`, which any other latent-producing pipeline can use too.
    ``UPLiFTPipeline.from_pipe(stable_diffusion_pipe, upsampler=...)`` wraps an existing pipeline without reloading
    its weights, and ``StableDiffusionPipeline.from_pipe(uplift_pipe)`` goes back.

    Args:
        vae ([`AutoencoderKL`]): the SD 1.5 VAE.
        text_encoder ([`~transformers.CLIPTextModel`]): the frozen CLIP text encoder.
        tokenizer ([`~transformers.CLIPTokenizer`]): its tokenizer.
        unet ([`UNet2DConditionModel`]): the denoiser.
        scheduler ([`SchedulerMixin`]): a diffusers scheduler.
        upsampler ([`~uplift_diffusion.UPLiFTModel`]): a UPLiFT model for this VAE's raw latents (the ``sd15-vae``
            preset: ``UPLiFTModel.from_reference_checkpoint("UPLiFT-upsampler/uplift_sd1.5vae")``). Required: there is
            no built-in model for SD 1.5's latent space.
        safety_checker ([`StableDiffusionSafetyChecker`], *optional*): SD's safety checker, run on the final images.
        feature_extractor ([`~transformers.CLIPImageProcessor`], *optional*): the safety checker's preprocessor.
        image_encoder ([`~transformers.CLIPVisionModelWithProjection`], *optional*): IP-Adapter's image encoder.
        requires_safety_checker (`bool`, defaults to True): warn when loaded without a safety checker.
    """

    model_cpu_offload_seq = "text_encoder->image_encoder->unet->vae->upsampler"
    _optional_components = ["safety_checker", "feature_extractor", "image_encoder"]

    # Annotated with the component classes: diffusers' from_pipe / from_pretrained match components by them.
    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler: KarrasDiffusionSchedulers,
        upsampler: UPLiFTModel,
        safety_checker: StableDiffusionSafetyChecker | None = None,
        feature_extractor: CLIPImageProcessor | None = None,
        image_encoder: CLIPVisionModelWithProjection | None = None,
        requires_safety_checker: bool = True,
    ):
        super().__init__(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                         safety_checker=safety_checker, feature_extractor=feature_extractor,
                         image_encoder=image_encoder, requires_safety_checker=requires_safety_checker)
        self.register_modules(upsampler=upsampler)
        if upsampler is not None and vae is not None:
            check_latent_space(upsampler, vae)

    def check_upscale_inputs(self, upscale: int, output_type: str) -> None:
        """Validate ``upscale``, ``output_type`` and that the upsampler fits the VAE; ValueError naming the problem."""
        if self.upsampler is None:
            raise ValueError("this UPLiFTPipeline has no upsampler: pass one (the sd15-vae UPLiFT model)")
        check_upscale_arguments(self.upsampler, self.vae, upscale, output_type, hint="use the sd15-vae UPLiFT model")

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        timesteps: list[int] | None = None,
        sigmas: list[float] | None = None,
        guidance_scale: float = 7.5,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int | None = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        ip_adapter_image: PIL.Image.Image | np.ndarray | torch.Tensor | list | None = None,
        ip_adapter_image_embeds: list[torch.Tensor] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        guidance_rescale: float = 0.0,
        clip_skip: int | None = None,
        callback_on_step_end: Callable[[Any, int, int, dict], dict] | PipelineCallback | MultiPipelineCallbacks
        | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006  (the parent's default)
        upscale: int = 2,
        return_low_res: bool = False,
        color_correction: bool | str = True,
        refine_strength: float = 0.0,
        refine_steps: int | None = None,
    ):
        r"""Generate images at ``upscale`` times the denoising resolution.

        Stable Diffusion denoises with its own ``__call__`` (the arguments up to ``callback_on_step_end_tensor_inputs``
        are its own and mean what they mean there); then :func:`~uplift_diffusion.pipelines.upscale_latents` does
        UPLiFT's part and the safety checker runs on the final images.

        Args:
            prompt (`str` or `list[str]`, *optional*): the prompt(s); or pass ``prompt_embeds``.
            height (`int`, *optional*): the *low* (denoising) height in pixels, by default the UNet's
                ``sample_size * vae_scale_factor``; the output is ``upscale`` times larger.
            width (`int`, *optional*): the low width in pixels, as ``height``.
            num_inference_steps (`int`, defaults to 50): denoising steps.
            timesteps (`list[int]`, *optional*): custom timesteps, for schedulers whose ``set_timesteps`` takes them.
            sigmas (`list[float]`, *optional*): custom sigmas, for schedulers whose ``set_timesteps`` takes them.
            guidance_scale (`float`, defaults to 7.5): classifier-free guidance scale (on when > 1).
            negative_prompt (`str` or `list[str]`, *optional*): what not to include (with guidance).
            num_images_per_prompt (`int`, defaults to 1): images per prompt; the batch is prompts x this, prompt 0's
                images first.
            eta (`float`, defaults to 0.0): DDIM's eta (ignored by other schedulers).
            generator (`torch.Generator` or a list, *optional*): makes the initial noise and UPLiFT's noise channels
                reproducible; a list needs one generator per image.
            latents (`torch.Tensor`, *optional*): the initial noisy latents [B, 4, height/8, width/8].
            prompt_embeds (`torch.Tensor`, *optional*): text embeddings instead of ``prompt``.
            negative_prompt_embeds (`torch.Tensor`, *optional*): negative text embeddings.
            ip_adapter_image (*optional*): IP-Adapter's image input.
            ip_adapter_image_embeds (`list[torch.Tensor]`, *optional*): IP-Adapter's image embeddings.
            output_type (`str`, defaults to ``"pil"``): ``"pil"``, ``"np"``, ``"pt"`` (images in [0, 1]) or
                ``"latent"``: the upscaled latents, *scaled* like a Stable Diffusion pipeline's latent output (decode
                with ``vae.decode(latents / vae.config.scaling_factor)``).
            return_dict (`bool`, defaults to True): return an [`UPLiFTPipelineOutput`] instead of a tuple.
            cross_attention_kwargs (`dict`, *optional*): passed to the attention processors (e.g. LoRA ``scale``).
            guidance_rescale (`float`, defaults to 0.0): guidance rescale factor (zero-terminal-SNR fix).
            clip_skip (`int`, *optional*): CLIP layers to skip for the prompt embeddings.
            callback_on_step_end (`Callable`, `PipelineCallback` or `MultiPipelineCallbacks`, *optional*): called at
                the end of each denoising step as ``callback(pipe, step, timestep, callback_kwargs)``; a returned
                ``{"latents": ...}`` replaces the latents (UPLiFT upscales what the last callback returned).
            callback_on_step_end_tensor_inputs (`list[str]`, defaults to ``["latents"]``): the tensors handed to the
                callback (any of the pipeline's ``_callback_tensor_inputs``).
            upscale (`int`, defaults to 2): 1, 2, 4 or 8; ``log2(upscale)`` UPLiFT steps (1 = plain SD 1.5).
            return_low_res (`bool`, defaults to False): also return the low-resolution images (or latents).
            color_correction (`bool` or `str`, defaults to True): correct the high-res colours against the low-res
                image with the upsampler's own correction (its config's ``color_correction``: ``"mean"``, paper B.1,
                for the published checkpoints), or a mode name; ``False`` for none.
            refine_strength (`float`, defaults to 0.0): a refine pass at the output size ("hires fix"): the upscaled
                latents are noised to this strength and denoised again by the UNet with the same prompt, through
                diffusers' own img2img pipeline ([`StableDiffusionImg2ImgPipeline`], sharing this pipeline's modules:
                its ``strength`` logic and ``scheduler.add_noise``). 0 (the default) is off and changes nothing;
                0.2-0.4 adds detail while keeping the composition. ``callback_on_step_end`` fires in both passes
                (the refine pass hands it the img2img pipeline), ``generator`` also draws the refine noise.
            refine_steps (`int`, *optional*): the refine pass's ``num_inference_steps`` (it runs about
                ``refine_steps * refine_strength`` of them); by default ``num_inference_steps``.

        Returns:
            [`UPLiFTPipelineOutput`] with ``images``, ``nsfw_content_detected`` and (when ``return_low_res``)
            ``low_res_images``; with ``return_dict=False`` the tuple ``(images, low_res_images,
            nsfw_content_detected)``, ``None`` where absent (the convention of every UPLiFT pipeline).
        """
        # 1. Check UPLiFT's inputs before denoising (Stable Diffusion checks its own)
        self.check_upscale_inputs(upscale, output_type)
        check_refine_arguments(refine_strength, refine_steps)

        # 2. Denoise at the low resolution: latents [B, 4, height/8, width/8] (scaled, UNet space)
        with timed_stage("base", self._execution_device):
            latents = super().__call__(
                prompt=prompt, height=height, width=width, num_inference_steps=num_inference_steps,
                timesteps=timesteps, sigmas=sigmas, guidance_scale=guidance_scale, negative_prompt=negative_prompt,
                num_images_per_prompt=num_images_per_prompt, eta=eta, generator=generator, latents=latents,
                prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
                ip_adapter_image=ip_adapter_image, ip_adapter_image_embeds=ip_adapter_image_embeds,
                output_type="latent", return_dict=True, cross_attention_kwargs=cross_attention_kwargs,
                guidance_rescale=guidance_rescale, clip_skip=clip_skip, callback_on_step_end=callback_on_step_end,
                callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
            ).images

        # 3. UPLiFT: decode the low-res latents once, log2(upscale) steps on the raw latents, decode, colour-correct;
        #    or, with a refine pass, the upscaled latents denoised again at the output size before decoding
        has_nsfw = None
        if not refine_strength:
            out = upscale_latents(self, latents, self.upsampler, upscale, generator,
                                  output_type="latent" if output_type == "latent" else "pt",
                                  color_correction=color_correction)
            image, low_res = out.images, out.low_res_images
        else:
            high = upscale_latents(self, latents, self.upsampler, upscale, generator, output_type="latent").images
            refiner = StableDiffusionImg2ImgPipeline.from_pipe(self)
            refiner.set_progress_bar_config(**getattr(self, "_progress_bar_config", {}))
            with timed_stage("refine", self._execution_device):
                high = refiner(
                    prompt=prompt, image=high, strength=refine_strength,
                    num_inference_steps=refine_steps or num_inference_steps, guidance_scale=guidance_scale,
                    negative_prompt=negative_prompt, num_images_per_prompt=num_images_per_prompt, eta=eta,
                    generator=generator, prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
                    ip_adapter_image=ip_adapter_image, ip_adapter_image_embeds=ip_adapter_image_embeds,
                    output_type="latent", cross_attention_kwargs=cross_attention_kwargs, clip_skip=clip_skip,
                    callback_on_step_end=callback_on_step_end,
                    callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
                ).images
            image, low_res = high, latents
            if output_type != "latent":
                with timed_stage("decode", self._execution_device):
                    low_res = decode_latents(self.vae, to_raw_latents(self.vae, latents))  # [B, 3, 8h, 8w] in [0, 1]
                    image = decode_latents(self.vae, to_raw_latents(self.vae, high))
                    image = color_correction_for(self.upsampler, color_correction)(image, low_res)

        # 4. Safety checker (on the final images), postprocess
        if output_type != "latent":
            image, has_nsfw = self.run_safety_checker(image * 2 - 1, self._execution_device, latents.dtype)
            do_denormalize = [True] * image.shape[0] if has_nsfw is None else [not flag for flag in has_nsfw]
            if has_nsfw is not None:
                low_res[torch.tensor(has_nsfw, dtype=torch.bool, device=low_res.device)] = 0.0
            image = self.image_processor.postprocess(image, output_type=output_type, do_denormalize=do_denormalize)
            low_res = self.image_processor.postprocess(low_res * 2 - 1, output_type=output_type)

        self.maybe_free_model_hooks()
        return pipeline_output(return_dict, image, low_res if return_low_res else None, has_nsfw)
