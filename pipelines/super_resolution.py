"""UPLiFTSuperResolutionPipeline: upscale images through a VAE's latent space with UPLiFT."""

import math
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers.image_processor import VaeImageProcessor
from diffusers.models import AutoencoderKL, AutoencoderTiny
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.utils import logging
from uplift_diffusion.pipelines.common import (
    OUTPUT_TYPES,
    RESAMPLE_METHODS,
    check_latent_space,
    check_scale_or_size,
    check_upsampler_fits,
    color_correction_for,
    output_size,
    pipeline_output,
    power_of_two_for,
    uplift_steps,
)
from uplift_diffusion.pipelines.tiling import count_tiles, tile_work, tiled_map

import uplift_diffusion.model  # noqa: F401  (diffusers >= 0.42.1 resolves saved components from sys.modules only)
from uplift_diffusion.backbones.taef2 import TAEF2  # saved pipelines name this module for a TAEF2 vae
from uplift_diffusion.backbones.vae import (
    decode_latents,
    decode_tile_for,
    encode_latents,
    latent_channels,
    memory_advice,
    vae_scale_factor,
)
from uplift_diffusion.color import ColorCorrection
from uplift_diffusion.model import UPLiFTModel
from uplift_diffusion.utils.device import warn_float16_on_cpu
from uplift_diffusion.utils.errors import InputError, UserError
from uplift_diffusion.utils.image_ops import images_to_tensors as _images_to_tensors

logger = logging.get_logger(__name__)

ImageInput = PIL.Image.Image | np.ndarray | torch.Tensor | Sequence[PIL.Image.Image | np.ndarray | torch.Tensor]
DECODE_TILE_MIN = 128  # latents (1024 pixels): the smallest tile the VAE decoder sees when tiling
ENCODE_TILE_MIN = 256  # pixels: smaller exact TAEF2 encoder tiles recompute too much halo (> 1.1x the whole encode)
LOCAL_DECODE_OVERLAP = 8  # latents: covers the receptive field of a decoder's local part (TAEF2.decode_local: ~8)


def images_to_tensors(image: ImageInput) -> list[torch.Tensor]:
    """:func:`uplift_diffusion.utils.image_ops.images_to_tensors`, its conversion notes on the diffusers logger."""
    return _images_to_tensors(image, on_note=logger.warning)


def _advancing(bar) -> Callable[[Iterable], Iterator]:
    """A ``progress`` wrapper that advances ``bar`` by one as each item of the wrapped iterable is finished."""
    def advance(iterable: Iterable) -> Iterator:
        for item in iterable:
            yield item
            bar.update()

    return advance


def pad_to_multiple(image: torch.Tensor, multiple: int) -> torch.Tensor:
    """Replicate-pad [B, C, H, W] at the bottom / right so that H and W are multiples of ``multiple``."""
    h, w = image.shape[-2:]
    pad_h, pad_w = -h % multiple, -w % multiple
    return F.pad(image, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else image


UPSAMPLING_METHODS = ("uplift", "latent-bilinear", "latent-nearest")


def resize_latents(latents: torch.Tensor, factors: tuple[float, float], size: tuple[int, int]) -> torch.Tensor:
    """Resize [B, C, h, w] latents by ``factors`` (< 1: antialiased bilinear) to ``size`` latents. The sample grid is
    the factors' own (``align_corners=False``), not one stretched to ``size``: output latent ``i`` lies at input
    ``(i + 0.5) / factor - 0.5``, so the decoded image lines up with the input pixel for pixel. Two replicated
    latents at the bottom / right give the rows and columns that ``size`` (rounded up to whole latents) reaches past
    the factor's floor."""
    padded = F.pad(latents.float(), (0, 2, 0, 2), mode="replicate")
    out = F.interpolate(padded, scale_factor=factors, mode="bilinear", align_corners=False, antialias=True,
                        recompute_scale_factor=False)
    if out.shape[-2] < size[0] or out.shape[-1] < size[1]:
        raise AssertionError(f"resized latents {tuple(out.shape[-2:])} do not cover {size}")
    return out[..., : size[0], : size[1]].to(latents.dtype)


class DamagedOutputError(UserError, FloatingPointError):
    """The pipeline computed a result that cannot be a picture (NaN / inf, or flat): damaged weights, an overflow."""


def check_output(output: torch.Tensor, image01: torch.Tensor) -> None:
    """Refuse a result that cannot be a picture of the input: NaN / inf, or one flat colour from an input that was not
    (what damaged weights or a broken numeric path give); silently writing it would lose the user's work."""
    if not torch.isfinite(output).all():
        raise DamagedOutputError("the upscaled image contains NaN or inf values: the model's weights are damaged or "
                                 "this dtype / device path overflowed (try float32; reinstall or re-download the "
                                 "weights)")
    flat_out = output.flatten(1).std(dim=1) < 1e-6  # per image
    flat_in = image01.flatten(1).std(dim=1) < 1e-6
    if bool((flat_out & ~flat_in).any()):
        raise DamagedOutputError("the upscaled image is one flat colour although the input is not: the model's "
                                 "weights are damaged (reinstall or re-download them)")


class UPLiFTSuperResolutionPipeline(DiffusionPipeline):
    r"""Image super-resolution in a VAE's latent space: encode, UPLiFT ``log2(scale)`` times, decode, colour-correct.

    Args:
        vae ([`AutoencoderKL`], [`AutoencoderTiny`] or [`~uplift_diffusion.TAEF2`]):
            The autoencoder whose raw latents (``latent_dist.mode()``, not scaled) the upsampler was trained on.
        upsampler ([`~uplift_diffusion.UPLiFTModel`], *optional*):
            A VAE-preset UPLiFT model with ``in_channels`` equal to the VAE's latent channels and ``patch_size`` equal
            to its spatial factor (8). Without one (``None``) the pipeline falls back to the paper's latent-bilinear
            baseline (``upsampling`` left at its default); asking for ``upsampling="uplift"`` then raises an
            InputError saying so. :meth:`from_builtin` gives the built-in pair.
        color_correction_mode (`str`, *optional*):
            Overrides what ``color_correction=True`` does: ``"mean"`` (paper B.1: per-channel colour means) or
            ``"detail"`` (low frequencies from the input, detail from UPLiFT). ``None`` (the default) uses the
            correction the upsampler was trained with, recorded in its config (``upsampler.config.color_correction``:
            ``"mean"`` for the published checkpoints, ``"detail"`` for the built-in taef2 model). See
            [`~uplift_diffusion.ColorCorrection`].
    """

    model_cpu_offload_seq = "vae->upsampler"
    _optional_components = ["upsampler"]

    def to(self, *args, **kwargs):
        """``DiffusionPipeline.to``; float16 on the CPU is said once (it runs ~100x slower than float32)."""
        pipe = super().to(*args, **kwargs)
        warn_float16_on_cpu(pipe.device, pipe.dtype)
        return pipe

    # Annotated with the component classes: diffusers' from_pipe / from_pretrained match components by them.
    def __init__(self, vae: AutoencoderKL | AutoencoderTiny | TAEF2, upsampler: UPLiFTModel | None = None,
                 color_correction_mode: str | None = None):
        super().__init__()
        if color_correction_mode is not None:
            ColorCorrection(mode=color_correction_mode)  # validates the mode
        self.register_modules(vae=vae, upsampler=upsampler)
        if upsampler is not None and vae is not None:
            check_latent_space(upsampler, vae)
        self.register_to_config(color_correction_mode=color_correction_mode)
        self.vae_scale_factor = vae_scale_factor(vae)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor, do_normalize=False)

    @classmethod
    def from_builtin(cls, name: str = "taef2", dtype: torch.dtype | None = None,
                     device: str | torch.device | None = None) -> "UPLiFTSuperResolutionPipeline":
        r"""The built-in pair shipped inside the package (offline: no network, no download).

        Args:
            name (`str`, defaults to ``"taef2"``):
                A built-in pair (``uplift_diffusion.builtin.builtin_names()``): ``"taef2"`` is the taef2 autoencoder
                (FLUX.2's latent API) with an UPLiFT model trained on its latents.
            dtype (`torch.dtype`, *optional*):
                Weights dtype (default float32).
            device (`str` or `torch.device`, *optional*):
                Where to put the pipeline (default cpu).
        """
        from uplift_diffusion.builtin import load_builtin_upsampler, load_builtin_vae

        return cls(vae=load_builtin_vae(name, dtype, device), upsampler=load_builtin_upsampler(name, dtype, device))

    def enable_sequential_cpu_offload(self, gpu_id: int | None = None, device: torch.device | str | None = None):
        """diffusers' sequential offload; onto the CPU itself (``device="cpu"``) the hooks load weights to ``"cpu"``,
        not ``"cpu:0"``: ``Parameter.to("cpu:0")`` returns a plain tensor, which accelerate's re-offload after the
        call then cannot turn back into a parameter (a ``TypeError``)."""
        super().enable_sequential_cpu_offload(gpu_id=gpu_id, device=device)
        if self._offload_device.type == "cpu":
            for component in (self.vae, self.upsampler):
                for module in component.modules():
                    hook = getattr(module, "_hf_hook", None)
                    for part in getattr(hook, "hooks", (hook,)):
                        if getattr(part, "execution_device", None) is not None:
                            part.execution_device = torch.device("cpu")

    def check_inputs(self, scale: float | None, tile_size: int | None, tile_overlap: int | None, output_type: str,
                     upsampling: str = "uplift", size: tuple[int, int] | None = None, resample: str = "pixel"
                     ) -> None:
        """Validate the call arguments and the components; ValueError naming the problem."""
        check_scale_or_size(scale, size)
        if resample not in RESAMPLE_METHODS:
            raise InputError(f"resample must be one of {RESAMPLE_METHODS}, got {resample!r}")
        if output_type not in OUTPUT_TYPES:
            raise InputError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if upsampling not in UPSAMPLING_METHODS:
            raise InputError(f"upsampling must be one of {UPSAMPLING_METHODS}, got {upsampling!r}")
        if upsampling == "uplift":
            if self.upsampler is None:
                raise InputError("this pipeline has no upsampler: pass one, or use a latent baseline "
                                 "(upsampling='latent-bilinear')")
            check_upsampler_fits(self.upsampler, self.vae)
        factor = self.vae_scale_factor
        if tile_overlap is not None and tile_size is None:
            raise InputError("tile_overlap needs tile_size (without tiles there is nothing to overlap)")
        if tile_size is not None:
            if tile_size < 4 * factor or tile_size % factor:
                raise InputError(f"tile_size must be a multiple of {factor} and >= {4 * factor} pixels, "
                                 f"got {tile_size}")
            if tile_overlap is not None and (tile_overlap < 0 or tile_overlap % factor or tile_overlap >= tile_size):
                raise InputError(f"tile_overlap must be a multiple of {factor} in [0, tile_size), got {tile_overlap}")

    @torch.no_grad()
    def __call__(
        self,
        image: ImageInput | None = None,
        scale: float | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        tile_size: int | None = None,
        tile_overlap: int | None = None,
        color_correction: bool | str = True,
        return_dict: bool = True,
        upsampling: str | None = None,
        latents: torch.Tensor | None = None,
        size: tuple[int, int] | None = None,
        resample: str = "pixel",
    ):
        r"""Upscale images (or the VAE's latents of images) by ``scale``, or to an exact ``size``.

        Args:
            image (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor` or a list of them):
                RGB images: PIL (any mode; converted to RGB), numpy [H, W, C] / [B, H, W, C] (uint8, uint16 or float
                in [0, 1]), tensors [C, H, W] / [B, C, H, W] (uint8 or float in [0, 1]). Any size: sizes that are not
                multiples of 8 are padded and the output is cropped back to exactly ``scale`` times the input. Or pass
                ``latents`` instead.
            scale (`float`, *optional*, defaults to 4 when ``size`` is not given):
                Upscaling factor, any finite number >= 1 (1.5, 2, 3, 6, ...). Each output side is the input side times
                ``scale``, rounded half up (``floor(side * scale + 0.5)``). A power of two runs ``log2(scale)``
                UPLiFT steps and nothing else; any other factor runs UPLiFT to the next power of two (at least 2)
                and then one ``resample`` step down to the exact size.
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*):
                Generator for the upsampler's noise channels (reproducible outputs); a list holds one per image, and
                image ``i`` with ``generator[i]`` gives the same output as image ``i`` alone with that generator.
            output_type (`str`, defaults to ``"pil"``):
                ``"pil"``, ``"np"`` ([B, H, W, 3] in [0, 1]), ``"pt"`` ([B, 3, H, W] in [0, 1]) or ``"latent"`` (the
                upscaled *raw* latents of the padded input, before decoding).
            tile_size (`int`, *optional*):
                Run the upsampler on overlapping tiles of this many *input* pixels (a multiple of 8, at least 32) and
                blend them; the decoder then works on tiles of ``max(tile_size, 1024)`` output pixels (VAE decoders
                normalise over whole feature maps, so smaller decoder tiles would show). Bounds the memory for large
                outputs (e.g. 4096x4096). ``None`` processes whole images.
            tile_overlap (`int`, *optional*):
                Overlap of neighbouring tiles in input pixels (multiple of 8); defaults to a quarter of the tile.
            color_correction (`bool` or `str`, defaults to True):
                ``True``: the upsampler's own correction (its config's ``color_correction``, unless the pipeline's
                ``color_correction_mode`` overrides it: ``"mean"`` realigns the per-channel colour means with the
                input, paper B.1; ``"detail"`` takes the low frequencies from the input); a mode name picks one;
                ``False`` returns the decoded image as it is.
            return_dict (`bool`, defaults to True):
                Return an [`UPLiFTPipelineOutput`] instead of a tuple.
            upsampling (`str`, *optional*):
                How the latents are enlarged: ``"uplift"`` (the default when the pipeline has an upsampler; without
                one, ``"latent-bilinear"``), or the latent baselines of the paper's tables,
                ``"latent-bilinear"`` / ``"latent-nearest"`` (interpolation of the same latents, decoded the same way;
                they ignore ``generator`` and the upsampler's tiles).
            latents (`torch.Tensor`, *optional*):
                Instead of ``image``: the VAE's raw latents [B, C, h, w] (``latent_dist.mode()``, not scaled; e.g.
                a text-to-image pipeline's latent output divided by ``vae.config.scaling_factor``). The VAE decodes
                them once into the low-resolution image that guides UPLiFT and is the colour reference; the output
                is ``scale`` times that image (``8 * scale * h`` pixels high).
            size (`tuple[int, int]`, *optional*):
                Instead of ``scale``: the exact output ``(height, width)`` in pixels, for every image. Each side must
                be at least the input's; the aspect ratio may change (each axis is resampled on its own).
            resample (`str`, defaults to ``"pixel"``):
                How a factor that is not a power of two reaches its size after UPLiFT: ``"pixel"`` resizes the
                decoded, colour-corrected power-of-two image (antialiased bicubic); ``"latent"`` resizes the
                upscaled latents (antialiased bilinear) and decodes and colour-corrects at the target size. Pixel
                resizing measured better on photos (docs/pipelines.md). Unused for power-of-two factors. With
                ``output_type="latent"`` the latents returned are the ones that are decoded: the power-of-two ones
                for ``"pixel"``, the resized ones for ``"latent"``.

        Returns:
            [`UPLiFTPipelineOutput`] with ``images``; with ``return_dict=False`` the tuple ``(images, None, None)``
            (``(images, low_res_images, nsfw_content_detected)``, the convention of every UPLiFT pipeline). Images of
            different sizes are processed one by one and returned as a list for every output type.
        """
        # 1. Check inputs
        if upsampling is None:
            upsampling = "uplift" if self.upsampler is not None else "latent-bilinear"
        self.check_inputs(scale, tile_size, tile_overlap, output_type, upsampling, size, resample)
        if scale is None and size is None:
            scale = 4
        if tile_size is not None and tile_overlap is None:
            tile_overlap = self.default_tile_overlap(tile_size)
        color_correct = color_correction_for(self.upsampler, color_correction, self.config.color_correction_mode)

        # 2. Preprocess: a list of [1, 3, H, W] in [0, 1]; images of one size form one batch. A list of generators
        #    has one per image (diffusers' convention): image i draws its noise from generator[i] only, so it comes
        #    out as it would alone with that generator, whatever the images before it. Latents are decoded once.
        if (image is None) == (latents is None):
            raise InputError("pass either image or latents (one of them)")
        if latents is not None:
            self.check_latents(latents)
            latents = latents.to(self._execution_device)
            images = list(decode_latents(self.vae, latents).split(1))
        else:
            images = images_to_tensors(image)
        latent_batches = [latents] if latents is not None else None
        if isinstance(generator, (list, tuple)):
            if len(generator) != len(images):
                raise InputError(f"got {len(generator)} generators for {len(images)} images: pass one generator per "
                                 f"image, or a single generator")
            generator = list(generator)
        same_size = len({tuple(t.shape[-2:]) for t in images}) == 1
        if same_size:
            batches = [(torch.cat(images), generator)]
        else:
            batches = [(t, generator[i] if isinstance(generator, list) else generator) for i, t in enumerate(images)]

        # 3. The output size of each batch, and the power of two UPLiFT runs to before resampling to it
        targets = [output_size(*batch.shape[-2:], scale, size) for batch, _ in batches]
        powers = [power_of_two_for(*batch.shape[-2:], target)
                  for (batch, _), target in zip(batches, targets, strict=True)]

        # 4. Will it fit? Refuse now, with the tile size or scale that fits, rather than die in the allocator later.
        #    The power-of-two stage is the peak: the resampled output is smaller than it.
        if self._execution_device.type == "cpu":
            for (batch, _), s in zip(batches, powers, strict=True):
                advice = memory_advice(self.vae, *batch.shape[-2:], s, tile_size, batch.shape[0])
                if advice is not None:
                    raise InputError(advice)

        # 5. Upscale each batch
        outputs = [self._upscale(batch, int(math.log2(s)), gen, tile_size, tile_overlap, output_type, color_correct,
                                 upsampling, latent_batches[i] if latent_batches else None, target, resample)
                   for i, ((batch, gen), s, target) in enumerate(zip(batches, powers, targets, strict=True))]

        # 6. Postprocess
        if output_type == "latent":
            result = outputs[0] if same_size else outputs
        elif output_type == "pil":
            result = [pil for out in outputs for pil in self.image_processor.postprocess(out, output_type="pil")]
        else:
            converted = [self.image_processor.postprocess(out, output_type=output_type) for out in outputs]
            result = converted[0] if same_size else [c[0] for c in converted]
        self.maybe_free_model_hooks()
        return pipeline_output(return_dict, result)

    def default_tile_overlap(self, tile_size: int) -> int:
        """The overlap of the upsampler's tiles when none is given: a quarter of the tile, in whole latents."""
        return tile_size // 4 // self.vae_scale_factor * self.vae_scale_factor

    def upsampler_tile_work(self, size: tuple[int, int], tile_size: int, tile_overlap: int | None = None) -> float:
        """The upsampler's work on an image of ``size = (height, width)`` pixels in tiles of ``tile_size`` (the
        overlaps are computed once per tile that holds them), over its work on the whole image: e.g. 1.6 for a
        640-pixel side in 512-pixel tiles. Sizes a plan of the work measured without tiles."""
        p = self.vae_scale_factor
        overlap = self.default_tile_overlap(tile_size) if tile_overlap is None else tile_overlap
        return tile_work(tuple(-(-side // p) for side in size), tile_size // p, overlap // p)

    def encoder_tile_work(self, size: tuple[int, int], tile_size: int) -> float:
        """The VAE encoder's work on an image of ``size = (height, width)`` pixels in a request tiled at
        ``tile_size``, over its work on the whole image: each exact tile computes its halo again (1 for a VAE that
        encodes whole images). Sizes a plan of the work measured without tiles."""
        if not hasattr(self.vae, "encode_tile_work"):
            return 1.0
        p = self.vae_scale_factor
        padded = [-(-side // p) * p for side in size]
        return self.vae.encode_tile_work(*padded, max(tile_size, ENCODE_TILE_MIN))

    def decoder_tile_work(self, size: tuple[int, int], scale: float, tile_size: int,
                          tile_overlap: int | None = None) -> float:
        """The VAE decoder's work for an image of ``size = (height, width)`` pixels upscaled ``scale`` times
        (resampled in pixels after the power of two) in a request tiled at ``tile_size``, over its work untiled:
        exact tiles' halos (TAEF2: 1.036 for a 1708 x 2560 photo at 4x) or blended tiles' overlaps. Sizes a plan
        of the work measured without tiles."""
        p = self.vae_scale_factor
        latents = [-(-side // p) for side in size]
        s = power_of_two_for(*size, output_size(*size, scale, None))
        decode_size = [side * s for side in latents]
        exact_tile = decode_tile_for(tile_size, s) if hasattr(self.vae, "decode_tile_work") else None
        if exact_tile is not None:
            return self.vae.decode_tile_work(*decode_size, exact_tile)
        tile, overlap = self._decode_tiling(tile_size, self.default_tile_overlap(tile_size) if tile_overlap is None
                                            else tile_overlap)
        return tile_work(tuple(decode_size), tile, overlap)

    def check_latents(self, latents) -> None:
        """ValueError unless ``latents`` are raw latents [B, C, h, w] of the VAE's channel count."""
        channels = latent_channels(self.vae)
        if not isinstance(latents, torch.Tensor):
            raise TypeError(f"latents must be a torch.Tensor [B, {channels}, h, w], got {type(latents).__name__}")
        if latents.ndim != 4 or latents.shape[1] != channels or latents.shape[0] < 1 or min(latents.shape[-2:]) < 1:
            raise InputError(f"latents must be the VAE's raw latents [B, {channels}, h, w], got shape "
                             f"{tuple(latents.shape)}")
        if not torch.isfinite(latents).all():
            raise InputError("latents contain NaN or inf values")

    def _decode_tiling(self, tile_size: int | None, tile_overlap: int | None) -> tuple[int | None, int | None]:
        """(tile, overlap) of the decode in latents. A VAE whose decoder splits into a whole-map head and a local
        tail (``decode_global`` / ``decode_local``, e.g. TAEF2) decodes in tiles as small as the upsampler's; other
        decoders normalise over whole feature maps (GroupNorm), so they get large tiles to keep tone shifts small."""
        if tile_size is None:
            return None, None
        tile, overlap = tile_size // self.vae_scale_factor, tile_overlap // self.vae_scale_factor
        if hasattr(self.vae, "decode_local"):
            return max(tile, 4 * LOCAL_DECODE_OVERLAP), max(overlap, LOCAL_DECODE_OVERLAP)
        tile = max(tile, DECODE_TILE_MIN)
        return tile, tile // 4

    def _upscale(self, image01: torch.Tensor, iterations: int, generator, tile_size, tile_overlap, output_type,
                 color_correct: ColorCorrection, upsampling: str = "uplift", latents: torch.Tensor | None = None,
                 target: tuple[int, int] | None = None, resample: str = "pixel"):
        """[B, 3, H, W] in [0, 1] -> [B, 3, *target] in [0, 1] (default target: [H * s, W * s]; or the upscaled raw
        latents). ``latents``: the raw latents ``image01`` was decoded from, used instead of encoding it (the guide is
        then a decode, which models with the ``"decoded"`` guide condition are told)."""
        device, p, s = self._execution_device, self.vae_scale_factor, 2**iterations
        decoded_guide = latents is not None
        height, width = image01.shape[-2:]
        target = target or (height * s, width * s)
        resampled = target != (height * s, width * s)
        latent_resize = resampled and resample == "latent"
        image01 = image01.to(device)
        padded = pad_to_multiple(image01, p)  # [B, 3, Hp, Wp]
        latent_size = (padded.shape[-2] // p, padded.shape[-1] // p)
        upscaled_size = (latent_size[0] * s, latent_size[1] * s)
        # the latents the decoder sees: the upscaled ones, or with latent resampling the target's (whole latents)
        decode_size = (-(-target[0] // p), -(-target[1] // p)) if latent_resize else upscaled_size
        decode_tile, decode_overlap = self._decode_tiling(tile_size, tile_overlap)

        # A VAE with exact tiled encode / decode (TAEF2) works in tiles whenever the request is tiled, so that the
        # encoder and the decoder are bounded in memory as well as the upsampler.
        tiled = tile_size is not None
        encode_tile = max(tile_size, ENCODE_TILE_MIN) if tiled and hasattr(self.vae, "encode_tiled") else None
        exact_decode_tile = decode_tile_for(tile_size, s) if tiled and hasattr(self.vae, "decode_tiled") else None

        # One progress bar over every unit of work: the encode (or its tiles), each UPLiFT step (or tile), the
        # decode (or its tiles).
        if latents is not None:
            encode_units = 0
        else:
            encode_units = 1 if encode_tile is None else self.vae.encode_tile_count(*padded.shape[-2:], encode_tile)
        if upsampling != "uplift":  # a latent baseline: one interpolation
            upsample_units = 1
        elif not tiled:
            upsample_units = iterations
        else:
            upsample_units = count_tiles(latent_size, tile_size // p, tile_overlap // p)
        if exact_decode_tile is not None:
            decode_units = self.vae.decode_tile_count(*decode_size, exact_decode_tile)
        else:
            decode_units = 1 if not tiled else count_tiles(decode_size, decode_tile, decode_overlap)
        decode_units *= output_type != "latent"
        bar = self.progress_bar(total=encode_units + upsample_units + decode_units)
        advance = _advancing(bar)

        bar.set_postfix_str("encode")
        if latents is not None:
            pass
        elif encode_tile is not None:  # TAEF2: exact tiles, the same latents as the whole-image encode (<= 1e-5)
            param = next(self.vae.parameters())
            latents = self.vae.encode_tiled((padded * 2 - 1).to(param.device, param.dtype), tile_size=encode_tile,
                                            progress=advance)  # [B, C, Hp/p, Wp/p] raw
        else:
            latents = encode_latents(self.vae, padded)  # [B, C, Hp/p, Wp/p]
            bar.update()

        bar.set_postfix_str("upscale")
        if upsampling != "uplift":
            mode = upsampling.split("-")[1]
            upscaled = F.interpolate(latents.float(), size=upscaled_size, mode=mode,
                                     **({"align_corners": False} if mode == "bilinear" else {})).to(latents.dtype)
            bar.update()
        elif tile_size is None:
            guide = self.upsampler.normalize_image(padded, decoded=decoded_guide)
            upscaled = uplift_steps(self.upsampler, latents, guide, iterations, generator,
                                    progress=advance)  # [B, C, s*Hp/p, s*Wp/p]
        else:
            guide = self.upsampler.normalize_image(padded, decoded=decoded_guide)  # conditions read the whole guide

            def upsample_tile(y0, y1, x0, x1):
                return uplift_steps(self.upsampler, latents[..., y0:y1, x0:x1],
                                    guide[..., y0 * p:y1 * p, x0 * p:x1 * p], iterations, generator)

            upscaled = tiled_map(upsample_tile, latent_size, tile_size // p, tile_overlap // p, s, progress=advance)
        if not torch.isfinite(upscaled).all():  # decoders turn NaN into plausible grey (ReLU): catch it here
            raise DamagedOutputError("the upscaled latents contain NaN or inf values: the upsampler's weights are "
                                     "damaged or this dtype / device path overflowed (try float32; reinstall or "
                                     "re-download the weights)")
        if latent_resize:
            upscaled = resize_latents(upscaled, (target[0] / (s * height), target[1] / (s * width)), decode_size)
        if output_type == "latent":
            bar.close()
            return upscaled

        bar.set_postfix_str("decode")
        if tile_size is None:
            decoded = decode_latents(self.vae, upscaled)  # [B, 3, s*Hp, s*Wp]
            bar.update()
        elif exact_decode_tile is not None:  # TAEF2: exact tiles (the same pixels as the whole decode, <= 2e-6)
            param = next(self.vae.parameters())
            decoded = self.vae.decode_tiled(upscaled.to(param.device, param.dtype), tile_size=exact_decode_tile,
                                            progress=advance).float().add_(1).div_(2).clamp_(0, 1)
        elif hasattr(self.vae, "decode_local"):  # a local tail: only the latent-resolution head needs whole latents
            param = next(self.vae.parameters())
            features = self.vae.decode_global(upscaled.to(param.device, param.dtype))

            def decode_feature_tile(y0, y1, x0, x1):
                return self.vae.decode_local(features[..., y0:y1, x0:x1]).float().add(1).div(2).clamp(0, 1)

            decoded = tiled_map(decode_feature_tile, decode_size, decode_tile, decode_overlap, p, progress=advance)
        else:
            def decode_latent_tile(y0, y1, x0, x1):
                return decode_latents(self.vae, upscaled[..., y0:y1, x0:x1])

            decoded = tiled_map(decode_latent_tile, decode_size, decode_tile, decode_overlap, p, progress=advance)
        bar.close()
        if latent_resize:  # decoded at the target size: crop, correct against the input there
            decoded = decoded[..., : target[0], : target[1]].float()
            check_output(decoded, image01)
            return color_correct(decoded, image01.float())
        decoded = decoded[..., : height * s, : width * s].float()  # crop the padding back
        check_output(decoded, image01)
        corrected = color_correct(decoded, image01.float())
        if resampled:
            corrected = F.interpolate(corrected, size=target, mode="bicubic", align_corners=False,
                                      antialias=True).clamp_(0, 1)
        return corrected
