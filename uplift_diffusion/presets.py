"""Named UPLiFT configurations and where their published checkpoints live."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from .utils.errors import InputError


@dataclass(frozen=True)
class Preset:
    """A named configuration of :class:`~uplift_diffusion.UPLiFTModel` plus facts about its backbone.

    Attributes:
        name: preset name (``"sd15-vae"``, ...).
        config: keyword arguments of ``UPLiFTModel.__init__``.
        repo_id / filename: where the published reference checkpoint lives on the Hugging Face Hub (or None).
        backbone: the backbone the features come from (documentation and CLI defaults).
        num_parameters: exact parameter count (None when not published).
    """

    name: str
    config: dict[str, Any]
    repo_id: str | None = None
    filename: str | None = None
    backbone: str = ""
    num_parameters: int | None = None
    aliases: tuple[str, ...] = field(default_factory=tuple)


def _group(out_channels: int, num_blocks: int, num_convs: int) -> dict[str, int]:
    return {"out_channels": out_channels, "num_blocks": num_blocks, "num_convs": num_convs}


_DINO_CONFIG = dict(
    in_channels=384,
    patch_size=14,
    encoder_blocks=[_group(c, 1, 1) for c in (16, 32, 64, 128, 128)],
    decoder_blocks=[_group(64, 1, 2), _group(64, 1, 2)],
    refiner_blocks=None,
    norm_type="batch",
    noise_channels=0,
    neighbourhood_size=17,
    image_normalization="imagenet",
)

# The latent space the published sd15-vae checkpoint was trained for (UPLiFTModel's ``latent_space`` record): the
# fingerprint is ``backbones.vae.vae_fingerprint`` of the SD 1.5 VAE's config (tests/test_latent_space.py checks it).
SD15_LATENT_SPACE = {"vae": "stable-diffusion-v1-5/stable-diffusion-v1-5 (vae)",
                     "fingerprint": "AutoencoderKL-dfc98e8759dc", "latent_channels": 4, "scaling_factor": 0.18215,
                     "shift_factor": 0.0}

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            name="sd15-vae",
            config=dict(
                in_channels=4,
                patch_size=8,
                encoder_blocks=[_group(c, 2, 1) for c in (64, 128, 256, 512, 512)],
                decoder_blocks=[_group(512, 1, 1), _group(512, 2, 1)],
                refiner_blocks=_group(512, 12, 1),
                norm_type="layer",
                noise_channels=4,
                neighbourhood_size=17,
                image_normalization="unit",
                latent_space=SD15_LATENT_SPACE,
            ),
            repo_id="UPLiFT-upsampler/uplift_sd1.5vae",
            filename="uplift_sd1.5vae.safetensors",
            backbone="stable-diffusion-v1-5/stable-diffusion-v1-5 (subfolder vae)",
            num_parameters=53_487_445,
            aliases=("sd1.5vae", "sd15"),
        ),
        Preset(
            name="dinov2-s14",
            config=dict(_DINO_CONFIG, patch_size=14),
            repo_id="UPLiFT-upsampler/uplift_dinov2-s14",
            filename="uplift_dinov2-s14.safetensors",
            backbone="vit_small_patch14_dinov2.lvd142m",
            num_parameters=789_521,
            aliases=("dinov2",),
        ),
        Preset(
            name="dinov3-splus16",
            config=dict(_DINO_CONFIG, patch_size=16),
            repo_id="UPLiFT-upsampler/uplift_dinov3-splus16",
            filename="uplift_dinov3-splus16.safetensors",
            backbone="vit_small_plus_patch16_dinov3.lvd1689m",
            num_parameters=789_521,
            aliases=("dinov3",),
        ),
        # A few-hundred-kilo-parameter SR model for tests and quick experiments (same structure as sd15-vae).
        Preset(
            name="tiny-vae",
            config=dict(
                in_channels=4,
                patch_size=8,
                encoder_blocks=[_group(c, 1, 1) for c in (8, 8, 16, 16, 16)],
                decoder_blocks=[_group(16, 1, 1), _group(16, 1, 1)],
                refiner_blocks=_group(16, 1, 1),
                norm_type="layer",
                noise_channels=2,
                neighbourhood_size=17,
                image_normalization="unit",
            ),
        ),
    )
}


def resolve_preset_name(name: str) -> str:
    for preset in PRESETS.values():
        if name == preset.name or name in preset.aliases:
            return preset.name
    raise InputError(f"unknown UPLiFT preset {name!r}; available presets: {', '.join(PRESETS)}")


def get_preset(name: str) -> Preset:
    return PRESETS[resolve_preset_name(name)]


def preset_config(name: str, **overrides: Any) -> dict[str, Any]:
    """A fresh copy of a preset's model config, with ``overrides`` applied. A preset's latent-space record is dropped
    when ``in_channels`` is overridden to another channel count (the model is then for other latents)."""
    config = copy.deepcopy(get_preset(name).config)
    record = config.get("latent_space")
    if record and "latent_space" not in overrides and overrides.get("in_channels", record["latent_channels"]) != \
            record["latent_channels"]:
        config.pop("latent_space")
    config.update(overrides)
    return config


def preset_for_repo(repo_id_or_filename: str) -> str | None:
    """The preset whose published repo id or file name appears in the given string, if any."""
    text = repo_id_or_filename.lower()
    for preset in PRESETS.values():
        markers = [m for m in (preset.repo_id, preset.filename) if m]
        markers += [preset.name] + list(preset.aliases)
        if any(m.lower().split("/")[-1].removesuffix(".safetensors") in text for m in markers):
            return preset.name
    return None
