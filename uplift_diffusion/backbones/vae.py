"""One way to get raw latents in and out of any diffusers VAE (AutoencoderKL, AutoencoderTiny, TAEF2).

UPLiFT's VAE presets work on *raw* latents: the mode of the latent distribution, not multiplied by
``vae.config.scaling_factor`` (and without a shift). Images here are RGB tensors in [0, 1].
"""

from __future__ import annotations

import torch

LATENT_SCALE_FACTOR = 8


def vae_scale_factor(vae) -> int:
    """Pixels per latent (8 for SD VAEs and the tiny autoencoders)."""
    channels = getattr(getattr(vae, "config", None), "block_out_channels", None)
    return 2 ** (len(channels) - 1) if channels and hasattr(vae, "quant_conv") else LATENT_SCALE_FACTOR


def latent_channels(vae) -> int:
    return int(vae.config.latent_channels)


@torch.no_grad()
def encode_latents(vae, image01: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] in [0, 1] -> raw latents [B, C, H/8, W/8] (distribution mode for KL VAEs, deterministic)."""
    param = next(vae.parameters())
    out = vae.encode(image01.to(param.device, param.dtype) * 2 - 1)
    if hasattr(out, "latent_dist"):
        return out.latent_dist.mode()
    if hasattr(out, "latents"):
        return out.latents
    return out[0]


@torch.no_grad()
def decode_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """Raw latents -> [B, 3, 8h, 8w] RGB in [0, 1] (clamped)."""
    param = next(vae.parameters())
    sample = vae.decode(latents.to(param.device, param.dtype)).sample
    return ((sample.float() + 1) / 2).clamp(0, 1)
