"""Joint PCA visualisation of features (paper App. D.3, Fig. 10).

One 3-component PCA is fitted over the backbone features *and* every UPLiFT step together, so that one colour means
one feature everywhere in the strip: ``image | backbone | step 1 | ... | step n``, every panel at the image's size.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image

from ..utils.errors import InputError
from ..utils.image_ops import float_to_uint8
from ..utils.io import atomic_write


@dataclass
class JointPCA:
    """A PCA projection to 3 components with a fixed colour range.

    Attributes:
        mean: [C] feature mean over the whole collection.
        components: [k, C] principal directions (largest variance first; sign fixed so that each direction's
            largest-magnitude entry is positive).
        low / high: [k] per-component values mapped to 0 and 1 (1st / 99th percentiles over the collection).
    """

    mean: torch.Tensor
    components: torch.Tensor
    low: torch.Tensor
    high: torch.Tensor

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """[C, H, W] or [B, C, H, W] features -> the raw component values, [k, H, W] or [B, k, H, W]."""
        x = features.double().movedim(-3, -1) - self.mean  # [..., H, W, C]
        return (x @ self.components.T).movedim(-1, -3).float()

    def to_rgb(self, features: torch.Tensor) -> torch.Tensor:
        """Features -> colours in [0, 1] (the first three components as R, G, B)."""
        values = self.project(features).movedim(-3, -1)  # [..., H, W, k]
        scaled = (values - self.low.float()) / (self.high - self.low).clamp_min(1e-12).float()
        return scaled.clamp(0, 1).movedim(-1, -3)


def _as_maps(feature_maps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    maps = []
    for i, f in enumerate(feature_maps):
        if not isinstance(f, torch.Tensor) or f.ndim not in (3, 4):
            raise InputError(f"feature map {i} must be a [C, H, W] or [B, C, H, W] tensor, got "
                             f"{tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__}")
        maps.append(f.detach().float().cpu().reshape(-1, *f.shape[-3:]))
    channels = {m.shape[1] for m in maps}
    if len(channels) != 1:
        raise InputError(f"all feature maps must have the same channels for a joint PCA, got {sorted(channels)}")
    return maps


def fit_joint_pca(feature_maps: Sequence[torch.Tensor], num_components: int = 3,
                  max_samples: int = 200_000, seed: int = 0) -> JointPCA:
    """Fit one PCA over every pixel of every map (exact covariance, accumulated in float64).

    Args:
        feature_maps: [C, H, W] or [B, C, H, W] maps, any sizes, same C.
        num_components: number of components (3 for RGB).
        max_samples: pixels drawn (uniformly over the whole collection) to set the colour range.
        seed: seed of that draw.
    """
    maps = _as_maps(feature_maps)
    channels = maps[0].shape[1]
    if not 1 <= num_components <= channels:
        raise InputError(f"num_components must be in [1, {channels}], got {num_components}")
    total = torch.zeros(channels, dtype=torch.float64)
    gram = torch.zeros(channels, channels, dtype=torch.float64)
    count = 0
    for m in maps:
        x = m.movedim(1, -1).reshape(-1, channels).double()  # [N, C]
        total += x.sum(0)
        gram += x.T @ x
        count += x.shape[0]
    mean = total / count
    covariance = gram / count - torch.outer(mean, mean)
    _, vectors = torch.linalg.eigh(covariance)  # ascending eigenvalues
    components = vectors[:, -num_components:].flip(-1).T.contiguous()  # [k, C], largest first
    signs = torch.sign(components.gather(1, components.abs().argmax(1, keepdim=True)))
    components = components * signs
    # Colour range from a uniform sample of all pixels.
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.cat([m.movedim(1, -1).reshape(-1, channels) for m in maps])
    if pixels.shape[0] > max_samples:
        pixels = pixels[torch.randperm(pixels.shape[0], generator=generator)[:max_samples]]
    values = (pixels.double() - mean) @ components.T  # [n, k]
    low = torch.quantile(values, 0.01, dim=0)
    high = torch.quantile(values, 0.99, dim=0)
    return JointPCA(mean=mean, components=components, low=low, high=high)


def _image_panel(image) -> torch.Tensor:
    from .extractor import images_to_tensor

    pixels = images_to_tensor(image)
    if pixels.shape[0] != 1:
        raise InputError(f"the PCA strip shows one image, got a batch of {pixels.shape[0]}")
    return pixels[0]  # [3, H, W]


def pca_strip(image, backbone_features: torch.Tensor, steps: Sequence[torch.Tensor]) -> Image.Image:
    """The strip ``image | backbone | step 1 | ... | step n``, every panel resized (nearest) to the image size.

    Args:
        image: the input image (PIL, numpy or [3, H, W] tensor in [0, 1]).
        backbone_features: [C, h, w] or [1, C, h, w] backbone features of the image.
        steps: every UPLiFT step's output, [C, H_i, W_i] or [1, C, H_i, W_i].

    Returns:
        An RGB image of size ``(len(steps) + 2) * W`` by ``H``.
    """
    pixels = _image_panel(image)
    height, width = pixels.shape[-2:]
    maps = _as_maps([backbone_features, *steps])
    if any(m.shape[0] != 1 for m in maps):
        raise InputError("the PCA strip shows one image: pass single-image feature maps ([C, H, W] or [1, C, H, W])")
    pca = fit_joint_pca(maps)
    panels = [pixels] + [F.interpolate(pca.to_rgb(m), size=(height, width), mode="nearest")[0] for m in maps]
    strip = torch.cat(panels, dim=-1)  # [3, H, (n + 2) * W]
    return Image.fromarray(float_to_uint8(strip[None])[0])


def save_pca_strip(path: str | os.PathLike, image, backbone_features: torch.Tensor,
                   steps: Sequence[torch.Tensor]) -> Image.Image:
    """:func:`pca_strip` written to ``path`` (PNG recommended) atomically; returns the strip."""
    strip = pca_strip(image, backbone_features, steps)
    atomic_write(path, strip.save)
    return strip


def extractor_pca_strip(extractor, image, iterations: int = 4) -> Image.Image:
    """Run ``extractor`` (a :class:`~uplift_diffusion.features.UPLiFTFeatureExtractor`) on one image and build its
    PCA strip from the backbone features and every step at its native resolution."""
    steps, backbone = extractor(image, iterations=iterations, output_size=None, return_all_steps=True,
                                return_backbone=True)
    return pca_strip(image, backbone, steps)
