"""The registry of what can be loaded by name, read by the library, the CLI, training and eval (torch-free, so the
CLI checks names before heavy imports):

- ``PRESETS``: architectures, named UPLiFT configurations, and where their published checkpoints live
  (``UPLiFTModel.from_preset``, ``model.preset`` in a training config, ``eval sr --random-upsampler``);
- ``FEATURE_BACKBONES``: the DINO backbones of the feature extractor (``--backbone``), read from ``PRESETS``;
- ``PAIRS``: VAE + upsampler pairs (``--pair``), built-in (``uplift_diffusion.builtin``) or from the Hub.

How a VAE is loaded from a folder or Hub id is ``uplift_diffusion.backbones.loading``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from .utils.deprecation import warn_renamed
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
        aliases: other names accepted for it.
        feature_backbone: its backbone is a timm ViT that ``UPLiFTFeatureExtractor`` runs (``--backbone NAME``).
    """

    name: str
    config: dict[str, Any]
    repo_id: str | None = None
    filename: str | None = None
    backbone: str = ""
    num_parameters: int | None = None
    aliases: tuple[str, ...] = field(default_factory=tuple)
    feature_backbone: bool = False


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


def _latent_config(widths: tuple[int, ...], encoder_depth: int, decoder_width: int, decoder_depths: tuple[int, int],
                   refiner_depth: int, noise_channels: int, **extra: Any) -> dict[str, Any]:
    """The structure of UPLiFT for 4-channel VAE latents (8x patches, layer norm), at a given width and depth."""
    return dict(
        in_channels=4,
        patch_size=8,
        encoder_blocks=[_group(c, encoder_depth, 1) for c in widths],
        decoder_blocks=[_group(decoder_width, n, 1) for n in decoder_depths],
        refiner_blocks=_group(decoder_width, refiner_depth, 1),
        norm_type="layer",
        noise_channels=noise_channels,
        neighbourhood_size=17,
        image_normalization="unit",
        **extra,
    )


def _published(name: str, stem: str, config: dict[str, Any], backbone: str, num_parameters: int,
               aliases: tuple[str, ...], feature_backbone: bool = False) -> Preset:
    """A preset whose checkpoint the paper's authors published as ``UPLiFT-upsampler/uplift_<stem>``."""
    return Preset(name=name, config=config, repo_id=f"UPLiFT-upsampler/uplift_{stem}",
                  filename=f"uplift_{stem}.safetensors", backbone=backbone, num_parameters=num_parameters,
                  aliases=aliases, feature_backbone=feature_backbone)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        _published("sd15-vae", "sd1.5vae",
                   _latent_config((64, 128, 256, 512, 512), encoder_depth=2, decoder_width=512, decoder_depths=(1, 2),
                                  refiner_depth=12, noise_channels=4, latent_space=SD15_LATENT_SPACE),
                   "stable-diffusion-v1-5/stable-diffusion-v1-5 (subfolder vae)", 53_487_445, ("sd1.5vae",)),
        _published("dinov2-s14", "dinov2-s14", dict(_DINO_CONFIG, patch_size=14), "vit_small_patch14_dinov2.lvd142m",
                   789_521, ("dinov2",), feature_backbone=True),
        _published("dinov3-splus16", "dinov3-splus16", dict(_DINO_CONFIG, patch_size=16),
                   "vit_small_plus_patch16_dinov3.lvd1689m", 789_521, ("dinov3",), feature_backbone=True),
        # A few-hundred-kilo-parameter SR model for tests and quick experiments (same structure as sd15-vae).
        Preset(name="tiny-vae", config=_latent_config((8, 8, 16, 16, 16), encoder_depth=1, decoder_width=16,
                                                      decoder_depths=(1, 1), refiner_depth=1, noise_channels=2)),
    )
}
# Old names of an architecture, still accepted with a deprecation warning: "sd15" is the name of a VAE + upsampler
# pair (PAIRS below); the architecture is "sd15-vae".
DEPRECATED_PRESET_ALIASES = {"sd15": "sd15-vae"}

# The feature backbones ``UPLiFTFeatureExtractor`` / ``--backbone NAME`` accept: name -> timm model, and aliases.
FEATURE_BACKBONES: dict[str, str] = {p.name: p.backbone for p in PRESETS.values() if p.feature_backbone}
FEATURE_ALIASES: dict[str, str] = {alias: p.name for p in PRESETS.values() if p.feature_backbone
                                   for alias in p.aliases}


def resolve_feature_backbone(name: str, flag: str = "") -> str:
    """A feature backbone's name (an alias resolved); InputError naming the known ones (and ``flag``, if given)."""
    name = FEATURE_ALIASES.get(name, name)
    if name not in FEATURE_BACKBONES:
        where = f" ({flag})" if flag else ""
        raise InputError(f"unknown feature backbone {name!r}{where}; available: {', '.join(FEATURE_BACKBONES)}")
    return name


SD15_REPO = "stable-diffusion-v1-5/stable-diffusion-v1-5"


@dataclass(frozen=True)
class Pair:
    """A named VAE + upsampler pair (``--pair NAME``, ``from_builtin``): a VAE and the UPLiFT model trained on its
    latents.

    Attributes:
        vae / upsampler: Hub repo ids; ``None`` for a built-in pair (its files ship inside the package,
            ``uplift_diffusion.builtin``, and load offline).
    """

    name: str
    vae: str | None = None
    upsampler: str | None = None

    @property
    def builtin(self) -> bool:
        return self.vae is None


PAIRS: dict[str, Pair] = {p.name: p for p in (
    Pair("taef2"),
    Pair("sd15", vae=SD15_REPO, upsampler=PRESETS["sd15-vae"].repo_id),
)}
DEFAULT_PAIR = "taef2"


def resolve_preset_name(name: str) -> str:
    if name in DEPRECATED_PRESET_ALIASES:
        warn_renamed(f"the preset name {name!r}", repr(DEPRECATED_PRESET_ALIASES[name]))
        return DEPRECATED_PRESET_ALIASES[name]
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
        markers += [preset.name, *preset.aliases]
        markers += [old for old, new in DEPRECATED_PRESET_ALIASES.items() if new == preset.name]
        if any(m.lower().split("/")[-1].removesuffix(".safetensors") in text for m in markers):
            return preset.name
    return None
