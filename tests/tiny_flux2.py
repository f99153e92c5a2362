"""Tiny, randomly initialised FLUX.2-shaped components (offline), saved with save_pretrained and loaded back.

The shapes follow FLUX.2 where UPLiFT meets it: an ``AutoencoderKLFlux2`` with 32 latent channels at 8x (four
blocks), a batch-norm over the 2x2-patchified latents with non-trivial running statistics (so a pipeline that forgets
the de-normalisation is caught), and a transformer over the 128 patchified channels. The text side is as small as
diffusers' own FLUX.2 tests make it (a Qwen3 with 16-wide layers), with a byte-level tokenizer built here because
the Hub is not reachable. The tests use 3 Qwen3 layers (``TEXT_OUT_LAYERS``); a folder for the command line gets
27, so that FLUX.2-klein's default ``text_encoder_out_layers`` (9, 18, 27) works unchanged.
"""

from __future__ import annotations

from pathlib import Path

import torch

TEXT_HIDDEN = 16
TEXT_OUT_LAYERS = (1, 2, 3)  # the tests' text_encoder_out_layers (3 layers x 16 = the transformer's 48 text features)
CLI_TEXT_LAYERS = 27  # hidden_states[27] exists: klein's default text_encoder_out_layers (9, 18, 27)
MAX_SEQUENCE_LENGTH = 32  # tests pass this; the CLI uses the pipeline's default (512, still fast at width 16)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Qwen's chat template, reduced to what the FLUX.2 pipelines use (turns whose content is a string, as klein writes
# them, or a list of text parts, as dev writes them; the generation prompt).
CHAT_TEMPLATE = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
                 "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
                 "{% for part in message['content'] %}{{ part['text'] }}{% endfor %}{% endif %}<|im_end|>\n"
                 "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def build_tokenizer():
    """A byte-level BPE tokenizer (one token per byte, no merges) with Qwen's special tokens and a chat template;
    stands in for Qwen2TokenizerFast of FLUX.2-klein."""
    from tokenizers import pre_tokenizers
    from transformers import Qwen2TokenizerFast

    vocab = {char: i for i, char in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}  # the 256 byte symbols
    tokenizer = Qwen2TokenizerFast(vocab=vocab, merges=[], unk_token=None, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", additional_special_tokens=SPECIAL_TOKENS[1:])
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_vae(seed: int = 0):
    """A 4-block (8x) ``AutoencoderKLFlux2`` with 32 latent channels and random batch-norm running statistics."""
    from diffusers import AutoencoderKLFlux2

    torch.manual_seed(seed)
    vae = AutoencoderKLFlux2(
        block_out_channels=(8, 8, 8, 8), layers_per_block=1, latent_channels=32, norm_num_groups=4, sample_size=64,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    )
    # Non-trivial de-normalisation: latents = patchified * sqrt(var + eps) + mean, per patchified channel.
    vae.bn.running_mean.copy_(torch.randn(128) * 0.5)
    vae.bn.running_var.copy_(torch.rand(128) * 2 + 0.25)
    return vae.eval()


def build_transformer(guidance_embeds: bool = False, seed: int = 0):
    """A one-double-block, one-single-block ``Flux2Transformer2DModel`` over 128 (= 4 x 32) patchified channels."""
    from diffusers import Flux2Transformer2DModel

    torch.manual_seed(seed)
    return Flux2Transformer2DModel(
        patch_size=1, in_channels=128, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=3 * TEXT_HIDDEN, timestep_guidance_channels=32,
        axes_dims_rope=(4, 4, 4, 4), guidance_embeds=guidance_embeds,
    ).eval()


def build_text_encoder(vocab_size: int, layers: int = len(TEXT_OUT_LAYERS), seed: int = 0):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    config = Qwen3Config(hidden_size=TEXT_HIDDEN, intermediate_size=16, num_hidden_layers=layers,
                         num_attention_heads=2, num_key_value_heads=2, head_dim=8, vocab_size=vocab_size,
                         max_position_embeddings=1024)
    return Qwen3ForCausalLM(config).eval()


def build_mistral3_text_encoder(vocab_size: int, layers: int = len(TEXT_OUT_LAYERS), seed: int = 0):
    """A tiny ``Mistral3ForConditionalGeneration`` (FLUX.2 [dev]'s text encoder) with ``layers`` 16-wide text layers
    and a one-layer vision tower; the byte-level tokenizer of :func:`build_tokenizer` stands in for its processor."""
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    config = Mistral3Config(
        text_config={"model_type": "mistral", "vocab_size": vocab_size, "hidden_size": TEXT_HIDDEN,
                     "intermediate_size": 16, "max_position_embeddings": 1024, "num_attention_heads": 2,
                     "num_hidden_layers": layers, "num_key_value_heads": 2, "head_dim": 8, "sliding_window": None},
        vision_config={"model_type": "pixtral", "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "intermediate_size": 16, "image_size": 30, "patch_size": 6, "num_channels": 3},
        image_seq_length=4, vision_feature_layer=-1, image_token_index=1,
    )
    torch.manual_seed(seed)
    return Mistral3ForConditionalGeneration(config).eval()


def build_klein_components(folder: Path, text_layers: int = len(TEXT_OUT_LAYERS)) -> dict:
    """Flux2KleinPipeline's components (scheduler, vae, text_encoder, tokenizer, transformer), each saved to
    ``folder/<name>`` and loaded back with ``from_pretrained``; ``text_layers`` Qwen3 layers."""
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2Transformer2DModel
    from transformers import Qwen2TokenizerFast, Qwen3ForCausalLM

    tokenizer = build_tokenizer()
    modules = dict(vae=build_vae(), transformer=build_transformer(), scheduler=FlowMatchEulerDiscreteScheduler(),
                   text_encoder=build_text_encoder(len(tokenizer), text_layers), tokenizer=tokenizer)
    for name, module in modules.items():
        module.save_pretrained(folder / name)
    return dict(
        vae=AutoencoderKLFlux2.from_pretrained(folder / "vae").eval(),
        transformer=Flux2Transformer2DModel.from_pretrained(folder / "transformer").eval(),
        text_encoder=Qwen3ForCausalLM.from_pretrained(folder / "text_encoder").eval(),
        tokenizer=Qwen2TokenizerFast.from_pretrained(folder / "tokenizer"),
        scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(folder / "scheduler"),
    )


def build_flux2_components(folder: Path) -> dict:
    """Flux2Pipeline's (FLUX.2-dev's) components without its Mistral text encoder (``text_encoder`` and
    ``tokenizer`` are None: the tests pass ``prompt_embeds``, which the pipeline then uses as they are)."""
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2Transformer2DModel

    modules = dict(vae=build_vae(), transformer=build_transformer(guidance_embeds=True),
                   scheduler=FlowMatchEulerDiscreteScheduler())
    for name, module in modules.items():
        module.save_pretrained(folder / name)
    return dict(
        vae=AutoencoderKLFlux2.from_pretrained(folder / "vae").eval(),
        transformer=Flux2Transformer2DModel.from_pretrained(folder / "transformer").eval(),
        scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(folder / "scheduler"),
        text_encoder=None, tokenizer=None,
    )


def save_klein_pipeline(folder: Path, text_layers: int = len(TEXT_OUT_LAYERS), is_distilled: bool = False) -> Path:
    """A plain diffusers ``Flux2KleinPipeline`` folder (what a FLUX.2-klein Hub repo looks like), at ``folder``;
    ``is_distilled`` as FLUX.2-klein-4B's (no guidance: one transformer pass per step)."""
    from diffusers import Flux2KleinPipeline

    components = build_klein_components(folder.with_name(folder.name + "_components"), text_layers)
    Flux2KleinPipeline(**components, is_distilled=is_distilled).save_pretrained(folder)
    return folder
