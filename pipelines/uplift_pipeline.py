"""UPLiFTPipeline: Stable Diffusion 1.5 text-to-image, upscaled in latent space by UPLiFT (paper appendix B)."""

from __future__ import annotations

from typing import Any

import torch
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
from diffusers.utils import logging
from uplift_diffusion.pipelines.common import UPLiFTPipelineOutput, check_upscale_arguments, upscale_latents

import uplift_diffusion.model  # noqa: F401  (diffusers >= 0.42.1 resolves saved components from sys.modules only)
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
        image_encoder ([`~transformers.CLIPVisionModelWithProjection`], *optional*): IP-Adapter's image encoder.
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

    def check_upscale_inputs(self, upscale: int, output_type: str) -> None:
        """Validate ``upscale``, ``output_type`` and that the upsampler fits the VAE; ValueError naming the problem."""
        check_upscale_arguments(self.upsampler, self.vae, upscale, output_type, hint="use the sd15-vae UPLiFT model")

    @torch.inference_mode()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        *,
        upscale: int = 2,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        return_low_res: bool = False,
        color_correction: bool | str = True,
        **kwargs: Any,
    ):
        r"""Generate images at ``upscale`` times the denoising resolution.

        Stable Diffusion denoises (its own ``__call__``, so every one of its arguments works: ``negative_prompt``,
        ``height`` / ``width`` (the *low* resolution; the output is ``upscale`` times larger), ``num_inference_steps``,
        ``timesteps``, ``sigmas``, ``guidance_scale``, ``guidance_rescale``, ``num_images_per_prompt``, ``eta``,
        ``latents``, ``prompt_embeds``, ``negative_prompt_embeds``, ``ip_adapter_image``, ``ip_adapter_image_embeds``,
        ``cross_attention_kwargs``, ``clip_skip``, ``callback_on_step_end``, ...); then
        :func:`~uplift_diffusion.pipelines.upscale_latents` does UPLiFT's part and the safety checker runs on the
        final images.

        Args:
            prompt (`str` or `list[str]`, *optional*): the prompt(s); or pass ``prompt_embeds``.
            upscale (`int`, defaults to 2): 1, 2, 4 or 8; ``log2(upscale)`` UPLiFT steps (1 = plain SD 1.5).
            generator (`torch.Generator` or a list, *optional*): makes the initial noise and UPLiFT's noise channels
                reproducible; a list needs one generator per image.
            output_type (`str`, defaults to ``"pil"``): ``"pil"``, ``"np"``, ``"pt"`` (images in [0, 1]) or
                ``"latent"``: the upscaled latents, *scaled* like a Stable Diffusion pipeline's latent output (decode
                with ``vae.decode(latents / vae.config.scaling_factor)``).
            return_dict (`bool`, defaults to True): return an [`UPLiFTPipelineOutput`] instead of a tuple.
            return_low_res (`bool`, defaults to False): also return the low-resolution images (or latents).
            color_correction (`bool` or `str`, defaults to True): correct the high-res colours against the low-res
                image with the upsampler's own correction (its config's ``color_correction``: ``"mean"``, paper B.1,
                for the published checkpoints), or a mode name; ``False`` for none.
            **kwargs: any other keyword argument of [`StableDiffusionPipeline.__call__`] (see above).

        Returns:
            [`UPLiFTPipelineOutput`] with ``images`` (and ``low_res_images`` when ``return_low_res``), or the tuple
            ``(images, nsfw_content_detected)`` (plus ``low_res_images`` when asked) when ``return_dict=False``.
        """
        # 1. Check UPLiFT's inputs before denoising (Stable Diffusion checks its own)
        self.check_upscale_inputs(upscale, output_type)

        # 2. Denoise at the low resolution: latents [B, 4, height/8, width/8] (scaled, UNet space)
        latents = super().__call__(prompt, generator=generator, output_type="latent", return_dict=True,
                                   **kwargs).images

        # 3. UPLiFT: decode the low-res latents once, log2(upscale) steps on the raw latents, decode, colour-correct
        out = upscale_latents(self, latents, self.upsampler, upscale, generator,
                              output_type="latent" if output_type == "latent" else "pt",
                              color_correction=color_correction)
        image, low_res, has_nsfw = out.images, out.low_res_images, None

        # 4. Safety checker (on the final images), postprocess
        if output_type != "latent":
            image, has_nsfw = self.run_safety_checker(image * 2 - 1, self._execution_device, latents.dtype)
            do_denormalize = [True] * image.shape[0] if has_nsfw is None else [not flag for flag in has_nsfw]
            if has_nsfw is not None:
                low_res[torch.tensor(has_nsfw, dtype=torch.bool, device=low_res.device)] = 0.0
            image = self.image_processor.postprocess(image, output_type=output_type, do_denormalize=do_denormalize)
            low_res = self.image_processor.postprocess(low_res * 2 - 1, output_type=output_type)

        self.maybe_free_model_hooks()
        low_res = low_res if return_low_res else None
        if not return_dict:
            return (image, has_nsfw) + ((low_res,) if return_low_res else ())
        return UPLiFTPipelineOutput(images=image, low_res_images=low_res, nsfw_content_detected=has_nsfw)
