"""Tiny stand-ins for the evaluation tests: an AutoencoderKL, a feature extractor in place of Inception, a CLIP."""

import torch
from torch import nn


def tiny_vae():
    """A 4-level AutoencoderKL 8 channels wide (random weights, seed 0): 4 latent channels, 8x."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(block_out_channels=(8, 8, 8, 8), latent_channels=4, layers_per_block=1,
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                         norm_num_groups=4, sample_size=64).eval()


class SmallFeatures(nn.Module):
    """A small real feature extractor standing in for Inception (uint8 or [0, 255] float images -> [B, 6])."""

    def __init__(self, dim: int = 6):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, dim, 5, stride=4)

    def forward(self, x):
        return torch.tanh(self.conv(x.float() / 255)).mean((2, 3))


def tiny_clip(tmp_path):
    """A 1-layer CLIP (random weights) and its processor, with the tiny tokenizer written under ``tmp_path``."""
    from tiny_sd import build_tokenizer
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_attention_heads=2,
                         num_hidden_layers=1, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1,
                           image_size=32, patch_size=8),
        projection_dim=8,
    )
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                 crop_size={"height": 32, "width": 32}),
                              tokenizer=build_tokenizer(tmp_path / "tok"))
    return CLIPModel(config).eval(), processor
