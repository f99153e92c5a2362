"""One way to get raw latents in and out of any diffusers VAE (AutoencoderKL, AutoencoderTiny, TAEF2).

UPLiFT's VAE presets work on *raw* latents: the mode of the latent distribution, not multiplied by
``vae.config.scaling_factor`` (and without a shift). Images here are RGB tensors in [0, 1].
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import torch

LATENT_SCALE_FACTOR = 8


def vae_scale_factor(vae) -> int:
    """Pixels per latent (8 for SD VAEs and the tiny autoencoders)."""
    channels = getattr(getattr(vae, "config", None), "block_out_channels", None)
    return 2 ** (len(channels) - 1) if channels and hasattr(vae, "quant_conv") else LATENT_SCALE_FACTOR


def latent_channels(vae) -> int:
    return int(vae.config.latent_channels)


# --- the latent space a VAE encodes to --------------------------------------------------------------------------------
# Autoencoders of one known latent space, by class: taef2 approximates FLUX.2's AutoencoderKLFlux2 (the same raw
# latents), so an upsampler trained on either fits both.
LATENT_SPACE_FAMILIES = {"TAEF2": "flux2", "AutoencoderKLFlux2": "flux2"}
# The config entries that decide a VAE's latent space (others, e.g. sample_size or tiling flags, do not); a fixed list,
# so that a diffusers release that adds config entries does not change the fingerprints.
_FINGERPRINT_KEYS = ("latent_channels", "block_out_channels", "down_block_types", "up_block_types",
                     "layers_per_block", "norm_num_groups", "act_fn", "scaling_factor", "shift_factor")


def vae_fingerprint(vae_or_config, class_name: str | None = None) -> str:
    """A short name of the latent space a VAE encodes to: its family for known autoencoders (``"flux2"`` for FLUX.2's
    VAE and taef2), else ``<class>-<12 hex digits>``, a sha256 of the config entries that decide the latent space.

    Accepts a VAE or its config (a mapping; then ``class_name`` names the class)."""
    config = getattr(vae_or_config, "config", vae_or_config)
    class_name = class_name or (type(vae_or_config).__name__ if hasattr(vae_or_config, "config")
                                else config.get("_class_name", "VAE"))
    if class_name in LATENT_SPACE_FAMILIES:
        return LATENT_SPACE_FAMILIES[class_name]
    entries = {key: config.get(key) for key in _FINGERPRINT_KEYS}
    digest = hashlib.sha256(json.dumps(entries, sort_keys=True, default=list).encode()).hexdigest()
    return f"{class_name}-{digest[:12]}"


def vae_name(vae) -> str:
    """How messages name a VAE: where it was loaded from when known, else its class."""
    source = getattr(getattr(vae, "config", None), "_name_or_path", None)
    return f"{type(vae).__name__} ({source})" if source else type(vae).__name__


def latent_space_record(vae, name: str | None = None) -> dict[str, Any]:
    """The record of ``vae``'s latent space that an upsampler trained on it keeps in its config (``latent_space``):
    the VAE's name, its :func:`vae_fingerprint`, the latent channels and the scaling / shift factors that turn a
    pipeline's latents into the raw latents the upsampler works on."""
    config = vae.config
    return {"vae": name or vae_name(vae), "fingerprint": vae_fingerprint(vae),
            "latent_channels": latent_channels(vae),
            "scaling_factor": float(getattr(config, "scaling_factor", None) or 1.0),
            "shift_factor": float(getattr(config, "shift_factor", None) or 0.0)}


def _input_device(param: torch.Tensor, x: torch.Tensor) -> torch.device:
    """The VAE's device for its inputs; under accelerate's sequential CPU offload the weights wait on the meta device
    and the hooks move the inputs themselves, so ``x`` stays where it is."""
    return x.device if param.device.type == "meta" else param.device


@torch.no_grad()
def encode_latents(vae, image01: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] in [0, 1] -> raw latents [B, C, H/8, W/8] (distribution mode for KL VAEs, deterministic)."""
    param = next(vae.parameters())
    out = vae.encode(image01.to(_input_device(param, image01), param.dtype) * 2 - 1)
    if hasattr(out, "latent_dist"):
        return out.latent_dist.mode()
    if hasattr(out, "latents"):
        return out.latents
    return out[0]


@torch.no_grad()
def decode_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """Raw latents -> [B, 3, 8h, 8w] RGB in [0, 1] (clamped)."""
    param = next(vae.parameters())
    sample = vae.decode(latents.to(_input_device(param, latents), param.dtype)).sample
    return ((sample.float() + 1) / 2).clamp(0, 1)


# --- memory a super-resolution request needs --------------------------------------------------------------------------
# The upsampler's part is measured on the built-in UPLiFT (uplift-taef2) on this project's CPU path (peak-RSS rise,
# float32): per output latent pixel of the last step and per input latent pixel (its image encoder reads the guide at
# input resolution). Larger upsamplers need proportionally more.
_UPSCALE_BYTES_PER_OUTPUT_LATENT = 4700
_UPSCALE_BYTES_PER_INPUT_LATENT = 21000
# What the pipeline itself keeps per output pixel: the blended float canvas and its weights, the cropped / colour
# corrected copies, the uint8 array and the PIL image.
_OUTPUT_BYTES_PER_PIXEL = 64
# A VAE without its own memory model (AutoencoderKL, AutoencoderTiny): ~6 full-resolution maps of its widest stage.
_GENERIC_VAE_BYTES_PER_PIXEL = 3000


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a super-resolution request needs, by phase (activations only; model weights are not counted).

    Args:
        encode (`int`): the VAE encoder's working memory.
        upscale (`int`): the upsampler's working memory plus the upscaled latents.
        decode (`int`): the VAE decoder's working memory.
        output (`int`): what stays alive across phases: the input image, its latents and the output image copies.
    """

    encode: int
    upscale: int
    decode: int
    output: int

    @property
    def peak(self) -> int:
        """The largest phase plus what every phase keeps (the phases run one after another)."""
        return max(self.encode, self.upscale, self.decode) + self.output


def decode_tile_for(tile_size: int | None, scale: int) -> int | None:
    """The decoder's output tile (pixels) for a request tiled at ``tile_size`` input pixels: the same input region
    (``tile_size * scale``), at most 1024 px (a 1024^2 decoder tile needs ~1.9 GB) and at least 512 px (exact tiles
    of 512 px do 1.08x the untiled work, 256 px tiles 1.19x: :meth:`~uplift_diffusion.TAEF2.decode_tiled`).

    Args:
        tile_size (`int`, *optional*): the request's tile in input pixels; ``None``: untiled.
        scale (`int`): the upscaling factor.
    """
    if tile_size is None:
        return None
    return max(512, min(1024, tile_size * scale))


def estimate_sr_memory(vae, height: int, width: int, scale: int, tile_size: int | None = None,
                       batch: int = 1) -> MemoryEstimate:
    """Memory an ``height`` x ``width`` -> ``scale`` x request needs: VAE encode, UPLiFT, VAE decode.

    With ``tile_size`` the encoder runs :meth:`~uplift_diffusion.TAEF2.encode_tiled` at ``tile_size``, the
    upsampler on ``tile_size`` tiles and the decoder :meth:`~uplift_diffusion.TAEF2.decode_tiled` at
    :func:`decode_tile_for` (a VAE without those methods is counted untiled for encode / decode).

    Args:
        vae: the pipeline's VAE (TAEF2 has its own measured model; others get a generic one).
        height (`int`): input height in pixels.
        width (`int`): input width in pixels.
        scale (`int`): upscaling factor (2, 4, 8).
        tile_size (`int`, *optional*): the request's tile in input pixels; ``None``: untiled.
        batch (`int`, defaults to 1): images processed together.
    """
    if tile_size is not None and tile_size >= max(height, width):
        # One tile covers the image: the tiled paths then work on the whole image once, as the untiled ones do
        # (measured: the same peak), never on a tile of tile_size (a 256-px photo with --tile-size 4096 is not 47 GiB)
        tile_size = None
    factor = vae_scale_factor(vae)
    lat_h, lat_w = -(-height // factor), -(-width // factor)
    out_lat_h, out_lat_w = lat_h * scale, lat_w * scale
    tiled = tile_size is not None
    if hasattr(vae, "encode_memory"):
        encode = vae.encode_memory(lat_h * factor, lat_w * factor, tile_size if tiled else None, batch)
        decode = vae.decode_memory(out_lat_h, out_lat_w, decode_tile_for(tile_size, scale), batch)
    else:
        encode = _GENERIC_VAE_BYTES_PER_PIXEL * lat_h * lat_w * factor**2 * batch
        decode = _GENERIC_VAE_BYTES_PER_PIXEL * out_lat_h * out_lat_w * factor**2 * batch
    if tiled:  # one tile of the upsampler, plus the blended latent canvas (latents + weights, float32)
        tile_h, tile_w = min(-(-tile_size // factor), lat_h), min(-(-tile_size // factor), lat_w)
        step = (_UPSCALE_BYTES_PER_OUTPUT_LATENT * tile_h * tile_w * scale**2
                + _UPSCALE_BYTES_PER_INPUT_LATENT * tile_h * tile_w)
        upscale = batch * (step + (latent_channels(vae) + 1) * 4 * out_lat_h * out_lat_w)
    else:
        upscale = batch * (_UPSCALE_BYTES_PER_OUTPUT_LATENT * out_lat_h * out_lat_w
                           + _UPSCALE_BYTES_PER_INPUT_LATENT * lat_h * lat_w)
    output = batch * (_OUTPUT_BYTES_PER_PIXEL * out_lat_h * out_lat_w * factor**2 + 40 * height * width)
    return MemoryEstimate(encode=int(encode), upscale=int(upscale), decode=int(decode), output=int(output))


def available_memory() -> int | None:
    """Bytes the system can still give this process (``MemAvailable`` of /proc/meminfo); ``None`` where unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def memory_advice(vae, height: int, width: int, scale: int, tile_size: int | None = None, batch: int = 1,
                  available: int | None = None) -> str | None:
    """``None`` when the request fits in ``available`` bytes (default: :func:`available_memory`), else one line
    saying what it needs and how to fit it: the largest tile size that fits, or a smaller scale.

    Args:
        vae: the pipeline's VAE.
        height (`int`): input height in pixels.
        width (`int`): input width in pixels.
        scale (`int`): upscaling factor.
        tile_size (`int`, *optional*): the request's tile in input pixels; ``None``: untiled.
        batch (`int`, defaults to 1): images processed together.
        available (`int`, *optional*): bytes available; default :func:`available_memory` (unknown: ``None``).
    """
    available = available_memory() if available is None else available
    if available is None:
        return None
    need = estimate_sr_memory(vae, height, width, scale, tile_size, batch).peak
    if need <= available:
        return None
    gib = 2**30
    text = (f"a {width}x{height} image at {scale}x needs about {need / gib:.1f} GiB of memory"
            f"{f' with {tile_size}-pixel tiles' if tile_size else ''}; {available / gib:.1f} GiB is available")
    for tile in (512, 256, 128):
        if (tile_size is None or tile < tile_size) and \
                estimate_sr_memory(vae, height, width, scale, tile, batch).peak <= available:
            return f"{text}: use tiles (--tile-size {tile}, about " \
                   f"{estimate_sr_memory(vae, height, width, scale, tile, batch).peak / gib:.1f} GiB)"
    for smaller in (s for s in (4, 2) if s < scale):
        need_small = estimate_sr_memory(vae, height, width, smaller, 128, batch).peak
        if need_small <= available:
            return (f"{text}: even with tiles it does not fit; use a smaller scale (--scale {smaller} "
                    f"--tile-size 128, about {need_small / gib:.1f} GiB) or a smaller image")
    return f"{text}: even with tiles it does not fit; use a smaller image (or a machine with more memory)"
