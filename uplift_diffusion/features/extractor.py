"""``UPLiFTFeatureExtractor``: a DINO backbone and its UPLiFT upsampler in one object, for pixel-dense features.

    >>> extractor = UPLiFTFeatureExtractor.from_pretrained("dinov2-s14")  # Hub, or local paths (see below)
    >>> features = extractor(pil_image)  # [1, 384, H, W]: one feature vector per pixel
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..backbones.vit import ViTBackbone
from ..model import UPLiFTModel
from ..presets import FEATURE_ALIASES, FEATURE_BACKBONES, get_preset, resolve_feature_backbone
from ..utils.errors import InputError
from ..utils.image_ops import bilinear_resize, images_to_tensors

ImageInput = Union[Image.Image, np.ndarray, torch.Tensor]


@dataclass(frozen=True)
class FeaturePreset:
    """A backbone (timm name) and the published UPLiFT upsampler trained for it."""

    backbone: str
    upsampler_preset: str


# The registry's feature backbones (presets.FEATURE_BACKBONES), each with the published upsampler of the same name.
FEATURE_PRESETS = {name: FeaturePreset(timm_name, name) for name, timm_name in FEATURE_BACKBONES.items()}
_ALIASES = FEATURE_ALIASES


def resolve_feature_preset(name: str) -> str:
    return resolve_feature_backbone(name)


def _to_float_chw(image: ImageInput) -> torch.Tensor:
    """One image or a batch -> float [B, 3, H, W] in [0, 1] (the package's one input rule, ``images_to_tensors``)."""
    parts = images_to_tensors(image, range_hint="not ImageNet-normalised: the extractor normalises")
    sizes = sorted({tuple(p.shape[-2:]) for p in parts})
    if len(sizes) > 1:
        raise InputError(f"images in one batch must share their size, got sizes {sizes}; call the extractor "
                         f"once per size or resize them first")
    return torch.cat(parts)


def images_to_tensor(images: ImageInput | Sequence[ImageInput]) -> torch.Tensor:
    """PIL / numpy (uint8 or [0, 1] float, channels last) / tensor ([0, 1], channels first) images, single or
    batched or a list -> float [B, 3, H, W] in [0, 1]. Images in one call must share their size."""
    if isinstance(images, (list, tuple)):
        if not images:
            raise InputError("images is an empty list")
        parts = [_to_float_chw(image) for image in images]
        sizes = sorted({tuple(p.shape[-2:]) for p in parts})
        if len(sizes) > 1:
            raise InputError(f"images in one batch must share their size, got sizes {sizes}; call the extractor "
                             f"once per size or resize them first")
        return torch.cat(parts)
    return _to_float_chw(images)


class UPLiFTFeatureExtractor(nn.Module):
    r"""Pixel-dense features: a ViT backbone (DINOv2 / DINOv3 / any timm ViT) followed by UPLiFT.

    Images in [0, 1] are resized to a multiple of the patch size (with a warning), ImageNet-normalised (the same
    tensor goes to the backbone and to the UPLiFT encoder), turned into backbone tokens [B, C, H/p, W/p] and
    upsampled by ``2**iterations``. For patch 14 the UPLiFT model itself pre-scales its encoder image to the 16-pixel
    grid, so four steps give 16/14 times the image size and the result is resized to ``output_size``.

    Args:
        backbone (`ViTBackbone`): the frozen feature backbone.
        upsampler (`UPLiFTModel`): a UPLiFT model for this backbone (same channels and patch size, ``"imagenet"``
            image normalisation).
    """

    def __init__(self, backbone: ViTBackbone, upsampler: UPLiFTModel):
        super().__init__()
        if not isinstance(backbone, ViTBackbone):
            raise TypeError(f"backbone must be a ViTBackbone, got {type(backbone).__name__}")
        if not isinstance(upsampler, UPLiFTModel):
            raise TypeError(f"upsampler must be a UPLiFTModel, got {type(upsampler).__name__}")
        cfg = upsampler.config
        if cfg.in_channels != backbone.embed_dim or cfg.patch_size != backbone.patch_size:
            raise InputError(
                f"the upsampler (in_channels={cfg.in_channels}, patch_size={cfg.patch_size}) does not fit the backbone "
                f"(embed_dim={backbone.embed_dim}, patch_size={backbone.patch_size})"
            )
        if cfg.image_normalization != "imagenet":
            raise InputError(f"a DINO upsampler takes ImageNet-normalised images, but this one has "
                             f"image_normalization={cfg.image_normalization!r} (a VAE preset?)")
        self.backbone = backbone.eval().requires_grad_(False)
        self.upsampler = upsampler.eval().requires_grad_(False)
        self._warned_resize = False

    @property
    def patch_size(self) -> int:
        return self.backbone.patch_size

    @property
    def feature_dim(self) -> int:
        return self.backbone.embed_dim

    @property
    def device(self) -> torch.device:
        return next(self.upsampler.parameters()).device

    @classmethod
    def from_pretrained(
        cls,
        name: str = "dinov2-s14",
        backbone: str | os.PathLike | nn.Module | None = None,
        upsampler: str | os.PathLike | UPLiFTModel | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> UPLiFTFeatureExtractor:
        """The backbone and published UPLiFT upsampler of a named preset (``"dinov2-s14"``, ``"dinov3-splus16"``).

        Args:
            name: the preset.
            backbone: ``None`` downloads timm's weights; or a local weights file / timm model folder (e.g. the
                ``model.safetensors`` of Hub repo ``timm/vit_small_patch14_dinov2.lvd142m``), a ``ViTBackbone`` or a
                timm module.
            upsampler: ``None`` downloads the published checkpoint; or a local ``.safetensors`` / ``.pth`` file, a
                folder with one, a ``UPLiFTModel.save_pretrained`` folder, or a ``UPLiFTModel``.
            device, dtype: where to put both models (dtype applies to the upsampler and the backbone).

        Raises:
            OSError: weights cannot be downloaded (offline); the message names the file to download and pass.
        """
        preset = FEATURE_PRESETS[resolve_feature_preset(name)]
        if isinstance(backbone, ViTBackbone):
            vit = backbone
        elif isinstance(backbone, nn.Module):
            vit = ViTBackbone(backbone)
        elif backbone is None:
            vit = ViTBackbone.from_pretrained(preset.backbone)
        else:
            path = Path(backbone)
            if not path.exists():
                raise FileNotFoundError(f"backbone weights not found: {path} (expected the model.safetensors of Hub "
                                        f"repo timm/{preset.backbone}, or a folder with it)")
            vit = ViTBackbone.from_pretrained(path if (path / "config.json").is_file() else preset.backbone,
                                              weights=path)
        model = upsampler if isinstance(upsampler, UPLiFTModel) else load_dino_upsampler(
            upsampler, preset.upsampler_preset)
        extractor = cls(vit, model)
        if device is not None or dtype is not None:
            extractor.to(device=device, dtype=dtype)
        return extractor

    # ------------------------------------------------------------------ preprocessing
    def prepare_images(self, images: ImageInput | Sequence[ImageInput]) -> tuple[torch.Tensor, tuple[int, int]]:
        """Images -> (ImageNet-normalised [B, 3, H', W'] with H', W' multiples of the patch, original (H, W))."""
        pixels = images_to_tensor(images)  # [B, 3, H, W] in [0, 1]
        height, width = pixels.shape[-2:]
        p = self.patch_size
        size = (height // p * p, width // p * p)
        if min(size) == 0:
            raise InputError(f"image size {height}x{width} is smaller than one {p}x{p} patch")
        if size != (height, width):
            if not self._warned_resize:
                warnings.warn(f"image size {height}x{width} is not a multiple of the backbone patch {p}: resizing to "
                              f"{size[0]}x{size[1]} (this warning is shown once)", stacklevel=2)
                self._warned_resize = True
            pixels = bilinear_resize(pixels, size)
        pixels = pixels.to(self.device)
        return self.upsampler.normalize_image(pixels), (height, width)

    # ------------------------------------------------------------------ call
    @torch.no_grad()
    def forward(
        self,
        images: ImageInput | Sequence[ImageInput],
        iterations: int = 4,
        output_size: str | int | tuple[int, int] | None = "image",
        return_all_steps: bool = False,
        return_backbone: bool = False,
    ) -> Any:
        """Pixel-dense (or 2**iterations-times upsampled) features of images.

        Args:
            images: a PIL image, a numpy array ([H, W, 3] or [B, H, W, 3], uint8 or float in [0, 1]), a tensor
                ([3, H, W] or [B, 3, H, W], float in [0, 1] or uint8), or a list of them sharing one size.
            iterations: number of UPLiFT 2x steps (4 = 16x the token grid, pixel-dense for patch 16).
            output_size: ``"image"`` resizes the last step to the size of the images as given (pixel-dense);
                ``(H, W)`` or an int to that size; ``None`` keeps the native ``token grid * 2**iterations``.
            return_all_steps: return the list of every step's output (only the last is resized to ``output_size``).
            return_backbone: also return the backbone features [B, C, H/p, W/p].

        Returns:
            [B, C, H, W] features (or the list of steps); with ``return_backbone`` a tuple ``(features, backbone)``.
        """
        if output_size == "image":
            size = None  # filled in below from the images
        elif output_size is None or isinstance(output_size, int) and not isinstance(output_size, bool):
            size = output_size
        elif isinstance(output_size, (tuple, list)) and len(output_size) == 2:
            size = tuple(output_size)
        else:
            raise InputError(f"output_size must be 'image', None, an int or (height, width), got {output_size!r}")
        normalised, image_size = self.prepare_images(images)
        if output_size == "image":
            size = image_size
        backbone_features = self.backbone(normalised.to(next(self.backbone.parameters()).dtype))  # [B, C, h, w]
        features = self.upsampler(normalised, backbone_features.to(self.upsampler.dtype), iterations=iterations,
                                  output_size=size, return_all_steps=return_all_steps)
        return (features, backbone_features) if return_backbone else features

    def upsample_baseline(self, backbone_features: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
        """Nearest or bilinear upsampling of backbone features to ``size`` (the paper's baselines)."""
        if mode not in ("nearest", "bilinear"):
            raise InputError(f"baseline mode must be 'nearest' or 'bilinear', got {mode!r}")
        kwargs = {"align_corners": False} if mode == "bilinear" else {}
        return torch.nn.functional.interpolate(backbone_features, size=tuple(size), mode=mode, **kwargs)


def load_dino_upsampler(spec: str | os.PathLike | None, preset: str) -> UPLiFTModel:
    """A DINO UPLiFT model: published checkpoint from the Hub (``spec=None``), a local checkpoint file / folder, or a
    ``UPLiFTModel.save_pretrained`` folder."""
    repo_id = get_preset(preset).repo_id
    if spec is None:
        try:
            return UPLiFTModel.from_reference_checkpoint(repo_id, preset=preset)
        except OSError as err:
            raise OSError(f"{err} Pass it as upsampler=PATH (CLI: --upsampler PATH).") from None
    path = Path(spec)
    if path.is_dir() and (path / "config.json").is_file():
        return UPLiFTModel.from_pretrained(path).eval()
    if not path.exists():
        raise FileNotFoundError(f"upsampler weights not found: {path} (expected a .safetensors checkpoint such as "
                                f"{get_preset(preset).filename} from Hub repo {repo_id}, or a save_pretrained folder)")
    return UPLiFTModel.from_reference_checkpoint(path, preset=preset)
