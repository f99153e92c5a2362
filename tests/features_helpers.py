"""Tiny stand-ins for DINO in the features tests: a 1-block timm ViT (random weights) and a small UPLiFT."""

from __future__ import annotations

import timm
import torch

from uplift_diffusion import UPLiFTModel
from uplift_diffusion.backbones.vit import ViTBackbone
from uplift_diffusion.features import UPLiFTFeatureExtractor

TIMM_NAMES = {14: "vit_small_patch14_dinov2", 16: "vit_small_plus_patch16_dinov3"}
WIDTH = 24


def tiny_vit_module(patch: int, **kwargs) -> torch.nn.Module:
    torch.manual_seed(patch)
    options = dict(pretrained=False, img_size=4 * patch, depth=1, embed_dim=WIDTH, num_heads=2, num_classes=0,
                   dynamic_img_size=True)
    options.update(kwargs)
    return timm.create_model(TIMM_NAMES[patch], **options).eval()


def tiny_upsampler(patch: int, channels: int = WIDTH) -> UPLiFTModel:
    torch.manual_seed(100 + patch)
    model = UPLiFTModel.from_preset(
        "dinov2-s14", in_channels=channels, patch_size=patch,
        encoder_blocks=[dict(out_channels=c, num_blocks=1, num_convs=1) for c in (4, 8, 8)],
        decoder_blocks=[dict(out_channels=8, num_blocks=1, num_convs=1)] * 2,
    )
    # Non-trivial BatchNorm statistics, so that eval-mode batching is actually exercised.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def tiny_extractor(patch: int) -> UPLiFTFeatureExtractor:
    return UPLiFTFeatureExtractor(ViTBackbone(tiny_vit_module(patch)), tiny_upsampler(patch))
