"""Tiny, randomly initialised Stable Diffusion 1.5-shaped components (offline), saved with save_pretrained."""

from __future__ import annotations

import json
from pathlib import Path

import torch

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def build_tokenizer(folder: Path):
    """A CLIP BPE tokenizer over single letters plus a few merges (stands in for openai/clip-vit-large-patch14)."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    tokens = ["<|startoftext|>", "<|endoftext|>"] + list(LETTERS) + [c + "</w>" for c in LETTERS]
    tokens += ["ca", "cat</w>", "do", "dog</w>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\nc a\nca t</w>\nd o\ndo g</w>\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)


def build_components(folder: Path) -> dict:
    """SD 1.5-shaped components (8x VAE with 4 latent channels, cross-attention UNet, CLIP text encoder), each saved
    to ``folder/<name>`` and loaded back with ``from_pretrained``."""
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, attention_head_dim=4, norm_num_groups=4,
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 8, 8), in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=4,
        sample_size=64,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=16, intermediate_size=32, num_attention_heads=2,
        num_hidden_layers=2, vocab_size=64, max_position_embeddings=77, projection_dim=16,
    ))
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                              steps_offset=1, set_alpha_to_one=False)
    build_tokenizer(folder / "_tokenizer_files").save_pretrained(folder / "tokenizer")
    for name, module in dict(unet=unet, vae=vae, text_encoder=text_encoder, scheduler=scheduler).items():
        module.save_pretrained(folder / name)
    return dict(
        unet=UNet2DConditionModel.from_pretrained(folder / "unet"),
        vae=AutoencoderKL.from_pretrained(folder / "vae"),
        text_encoder=CLIPTextModel.from_pretrained(folder / "text_encoder"),
        tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer"),
        scheduler=PNDMScheduler.from_pretrained(folder / "scheduler"),
    )


def build_pipeline(folder: Path, upsampler=None):
    """A tiny UPLiFTPipeline (tiny-vae upsampler) saved to ``folder / "pipeline"`` and loaded back from there."""
    from uplift_diffusion.pipelines import UPLiFTPipeline

    from uplift_diffusion import UPLiFTModel

    components = build_components(folder / "components")
    torch.manual_seed(0)
    upsampler = upsampler if upsampler is not None else UPLiFTModel.from_preset("tiny-vae").eval()
    pipe = UPLiFTPipeline(**components, upsampler=upsampler, requires_safety_checker=False)
    pipe.save_pretrained(folder / "pipeline")
    return UPLiFTPipeline.from_pretrained(folder / "pipeline")
