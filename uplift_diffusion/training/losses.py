"""The UPLiFT training objective: multi-depth, multi-step feature reconstruction (paper §3.3, eq. 1-5).

For a depth d the input is the backbone feature of the image at ``1/2**d`` (plus optional Gaussian augmentation on
a *copy*), the model runs d shared-weight 2x steps guided by the image at ``1/2**d``, and step k is compared (mean
squared error) with the backbone feature of the image at ``1/2**(d-k)``:

``L_d = sum_{k=1..d} MSE(step_k, F_{1/2**(d-k)})`` (eq. 4) and ``L = sum_{d in D} L_d`` (eq. 5).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def augment_features(features: torch.Tensor, sigma: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """``features + sigma * N(0, 1)`` as a NEW tensor (the input at one depth is the target at another, so the
    original must never change). ``sigma == 0`` returns a copy."""
    if sigma == 0:
        return features.clone()
    device = generator.device if generator is not None else features.device
    noise = torch.randn(features.shape, generator=generator, device=device, dtype=torch.float32)
    return features + sigma * noise.to(features.device, features.dtype)


def multi_depth_loss(
    model: nn.Module,
    images: Sequence[torch.Tensor],
    features: Sequence[torch.Tensor],
    depths: Sequence[int],
    noise_sigma: float = 0.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Paper eq. 4-5 for one batch.

    Args:
        model: an :class:`~uplift_diffusion.UPLiFTModel`.
        images: the image pyramid ``[I, I/2, ..., I/2**max(depths)]``, each [B, 3, H/2**j, W/2**j], RGB in [0, 1]
            (normalised here with ``model.normalize_image``).
        features: backbone features of those images, ``[F_1, F_1/2, ...]``, each [B, C, h/2**j, w/2**j].
        depths: training depths D.
        noise_sigma: standard deviation of the input augmentation (added to a copy of ``features[d]``).
        generator: RNG of the augmentation and of the model's noise channels (``None``: global RNG).

    Returns:
        ``(loss, terms)``: the total loss and every term, keyed ``"d{d}_k{k}"`` (detached).
    """
    if max(depths) >= len(images) or max(depths) >= len(features):
        raise ValueError(f"depths {list(depths)} need {max(depths) + 1} pyramid levels, got {len(images)} images "
                         f"and {len(features)} feature maps")
    total = 0.0
    terms: dict[str, torch.Tensor] = {}
    for d in depths:
        x = augment_features(features[d], noise_sigma, generator)  # [B, C, h/2**d, w/2**d]
        image = model.normalize_image(images[d])  # [B, 3, H/2**d, W/2**d]
        steps = model(image, x, iterations=d, return_all_steps=True, generator=generator)
        for k, out in enumerate(steps, start=1):
            term = F.mse_loss(out.float(), features[d - k].float())  # step k vs F at 1/2**(d-k)
            terms[f"d{d}_k{k}"] = term.detach()
            total = total + term
    return total, terms


class UPLiFTTrainingObjective(nn.Module):
    """The model plus its loss as one module, so that ``accelerate`` / DDP see a single forward per step.

    Args:
        model: the UPLiFT model being trained.
        depths: training depths D.
        noise_sigma: input augmentation strength.
    """

    def __init__(self, model: nn.Module, depths: Sequence[int], noise_sigma: float = 0.0):
        super().__init__()
        self.model = model
        self.depths = list(depths)
        self.noise_sigma = noise_sigma

    def forward(self, images: Sequence[torch.Tensor], features: Sequence[torch.Tensor],
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return multi_depth_loss(self.model, images, features, self.depths, self.noise_sigma, generator)
