"""Frozen feature backbones for training: a diffusers VAE (raw latents), taef2, and timm DINO ViTs.

A backbone maps an RGB batch in [0, 1] to the features UPLiFT learns to upsample; VAE-style backbones can also
decode features back to pixels (used for the before/after preview grids).
"""

from __future__ import annotations

import torch
from torch import nn

from ..backbones.vae import decode_latents, encode_latents, latent_channels, vae_scale_factor
from ..utils.dtypes import DTYPE_NAMES, to_dtype
from ..utils.fingerprint import weights_hash
from ..utils.image_ops import imagenet_normalize
from .config import BackboneConfig


class FeatureBackbone(nn.Module):
    """Interface of a training backbone.

    Attributes:
        patch_size: pixels per feature token.
        channels: feature channels.
        image_normalization: the UPLiFT ``image_normalization`` that matches this backbone.
        fingerprint: a short string identifying the backbone and its weights (part of the feature-cache key).
        can_decode: whether :meth:`decode` maps features back to an RGB image.
    """

    patch_size: int
    channels: int
    image_normalization: str = "unit"
    fingerprint: str = ""
    can_decode: bool = False

    def encode(self, image01: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] RGB in [0, 1] -> [B, C, H / patch, W / patch] features."""
        raise NotImplementedError

    def decode(self, features: torch.Tensor) -> torch.Tensor:
        """[B, C, h, w] features -> [B, 3, h * patch, w * patch] RGB in [0, 1] (VAE backbones only)."""
        raise TypeError(f"{type(self).__name__} cannot decode features to images")

    def decode_differentiable(self, features: torch.Tensor) -> torch.Tensor:
        """:meth:`decode` with gradients flowing to ``features`` (the weights stay frozen): the decoder-aware loss."""
        raise TypeError(f"{type(self).__name__} cannot decode features to images (the pixel loss needs a VAE)")


def _weights_fingerprint(module: nn.Module, extra: str = "") -> str:
    """The name plus a sha256 over every weight (a sample of values missed small changes, e.g. a fine-tune)."""
    return f"{extra}:{weights_hash(module)}" if extra else weights_hash(module)


class VAEBackbone(FeatureBackbone):
    """Raw latents of a diffusers-style VAE (``AutoencoderKL`` mode, ``AutoencoderTiny``, :class:`TAEF2`).

    Args:
        vae: the autoencoder (frozen here).
        name: a label for the cache fingerprint.
    """

    image_normalization = "unit"
    can_decode = True

    def __init__(self, vae: nn.Module, name: str = "vae"):
        super().__init__()
        self.vae = vae.eval().requires_grad_(False)
        self.patch_size = vae_scale_factor(vae)
        self.channels = latent_channels(vae)
        self.fingerprint = f"{name}-{_weights_fingerprint(vae, name)}"

    @torch.no_grad()
    def encode(self, image01: torch.Tensor) -> torch.Tensor:
        return encode_latents(self.vae, image01).float()

    @torch.no_grad()
    def decode(self, features: torch.Tensor) -> torch.Tensor:
        return decode_latents(self.vae, features)

    def decode_differentiable(self, features: torch.Tensor) -> torch.Tensor:
        param = next(self.vae.parameters())
        sample = self.vae.decode(features.to(param.dtype)).sample  # [-1, 1]
        return (sample.float() + 1) / 2


class ViTFeatureBackbone(FeatureBackbone):
    """Patch-token features of a timm ViT (DINOv2, DINOv3) through :class:`uplift_diffusion.backbones.vit.ViTBackbone`.

    Takes [0, 1] images like every training backbone and applies the ImageNet normalisation itself (the UPLiFT
    DINO presets normalise their own image input the same way, see ``UPLiFTModel.normalize_image``).

    Args:
        vit: a ``ViTBackbone`` (frozen here).
        name: a label for the cache fingerprint.
    """

    image_normalization = "imagenet"

    def __init__(self, vit: nn.Module, name: str = "vit"):
        super().__init__()
        self.vit = vit.eval().requires_grad_(False)
        self.patch_size = int(vit.patch_size)
        self.channels = int(vit.embed_dim)
        self.fingerprint = f"{name}-{_weights_fingerprint(vit, name)}"

    @torch.no_grad()
    def encode(self, image01: torch.Tensor) -> torch.Tensor:
        param = next(self.vit.parameters())
        return self.vit(imagenet_normalize(image01).to(param.dtype)).float()


def load_backbone(config: BackboneConfig) -> FeatureBackbone:
    """Build the frozen backbone a :class:`BackboneConfig` describes."""
    if config.dtype not in DTYPE_NAMES:
        raise ValueError(f"backbone.dtype must be one of {sorted(DTYPE_NAMES)}, got {config.dtype!r}")
    dtype = to_dtype(config.dtype)
    if not config.path:
        raise ValueError(f"backbone.path is empty: give the {config.type} weights (folder or Hub id)")
    if config.type == "taef2":
        from ..backbones.taef2 import TAEF2

        taef2 = TAEF2.from_pretrained(config.path)
        return VAEBackbone(taef2 if dtype == torch.float32 else taef2.to(dtype), name="taef2")
    if config.type == "vae":
        from ..backbones.loading import load_vae

        vae = load_vae(config.path, dtype, subfolder=config.subfolder or None,
                       label=f"backbone.path {config.path!r} (subfolder {config.subfolder!r})")
        return VAEBackbone(vae, name=f"vae:{config.path}/{config.subfolder or ''}")
    if config.type == "vit":
        from ..backbones.vit import ViTBackbone

        vit = ViTBackbone.from_pretrained(config.path, weights=config.weights)
        return ViTFeatureBackbone(vit if dtype == torch.float32 else vit.to(dtype), name=f"vit:{config.path}")
    raise ValueError(f"unknown backbone type {config.type!r}")
