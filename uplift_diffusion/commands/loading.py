"""Shared by the commands: the flags that name models (``--pair``, ``--vae``, ``--upsampler``, ``--backbone``) and
loading them from the registry (``uplift_diffusion.presets``), the Hub or local folders, with one-line errors in the
commands' words (the VAE loader itself is the library's, ``uplift_diffusion.backbones.loading``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from uplift_diffusion.backbones.loading import is_repo_id, load_vae
from uplift_diffusion.commands.checks import int_in
from uplift_diffusion.presets import DEFAULT_PAIR, PAIRS, SD15_REPO
from uplift_diffusion.utils.deprecation import RenamedFlag
from uplift_diffusion.utils.device import add_device_arguments, resolve_device_dtype
from uplift_diffusion.utils.errors import (
    CheckpointError,
    InputError,
    InputNotFoundError,
    UnavailableError,
    load_reporting_damage,
)
from uplift_diffusion.utils.hub import ensure_hub_reachable, hub_is_offline

DEFAULT_SD_REPO = SD15_REPO
DEFAULT_FLUX2_REPO = "black-forest-labs/FLUX.2-klein-4B"  # --family flux2 of generate / eval coco / eval relaion
DEFAULT_UPSAMPLER = PAIRS["sd15"].upsampler
COLOR_CORRECTIONS = ("auto", "none", "mean", "detail")  # auto: the upsampler's own; then uplift_diffusion.color's
if TYPE_CHECKING:
    import torch

__all__ = ["add_device_arguments", "resolve_device_dtype", "is_repo_id", "load_vae"]  # (utils.device, backbones)


def check_model_source(spec: str, flag: str) -> None:
    """A cheap check before any weights load: ``spec`` is an existing file / folder or a Hub repo id."""
    if not Path(spec).exists() and not is_repo_id(spec):
        raise InputNotFoundError(f"{flag} {spec}: no such file or folder (and not a Hub repo id like "
                                 f"{DEFAULT_SD_REPO!r})")


def load_upsampler(spec: str, dtype: torch.dtype):
    """An UPLiFTModel from a ``save_pretrained`` folder, a published checkpoint file / folder, or a Hub repo id."""
    from uplift_diffusion.model import UPLiFTModel

    path = Path(spec)
    if path.is_dir() and (path / "config.json").is_file():
        return UPLiFTModel.from_pretrained(path, dtype=dtype).eval()
    if path.is_dir() and (path / "upsampler" / "config.json").is_file():
        return UPLiFTModel.from_pretrained(path, subfolder="upsampler", dtype=dtype).eval()
    if path.is_file() and path.suffix == ".safetensors" and (path.parent / "config.json").is_file():
        raise InputError(f"--upsampler {spec} is the weights file of a folder saved with UPLiFTModel.save_pretrained: "
                         f"pass the folder (--upsampler {path.parent})")
    if not path.exists() and is_repo_id(spec):
        ensure_hub_reachable()
    try:
        return UPLiFTModel.from_reference_checkpoint(spec, dtype=dtype)
    except CheckpointError as err:
        if err.api_hint is None:
            raise
        # the library's advice is a Python argument (preset=...); the command's is what to pass instead
        raise CheckpointError(f"--upsampler {spec}: {err.message}; pass a published UPLiFT checkpoint (.safetensors "
                              f"or .pth) or a folder saved with UPLiFTModel.save_pretrained") from None
    except OSError:
        if path.exists():
            raise
        why = "is not downloaded and this machine is offline" if hub_is_offline() else "could not be fetched"
        raise UnavailableError(f"The UPLiFT upsampler {spec} {why}. Download its .safetensors file elsewhere (hf "
                               f"download {spec}) and pass the local file with --upsampler FILE.") from None


def add_pair_arguments(parser: argparse.ArgumentParser, default: str = DEFAULT_PAIR, why: str = "") -> None:
    """``--pair NAME`` (a VAE + upsampler pair of the registry, ``presets.PAIRS``) and ``--vae`` / ``--upsampler``,
    which replace either part; ``--preset`` is its old spelling."""
    pairs = "; ".join(f"{p.name}: " + ("the pair shipped inside the package, offline" if p.builtin else
                                        f"the VAE of {p.vae} + {p.upsampler}, from the Hub") for p in PAIRS.values())
    parser.add_argument("--pair", default=default, choices=sorted(PAIRS),
                        help=f"the VAE + upsampler pair (default {default}{why}; {pairs}); --vae / --upsampler "
                             f"replace either part")
    parser.add_argument("--preset", dest="pair", action=RenamedFlag, new="--pair", choices=sorted(PAIRS),
                        default=argparse.SUPPRESS)
    parser.add_argument("--vae", default=None,
                        help="Hub repo id or local folder of the VAE: a diffusers VAE folder, a pipeline folder with "
                             "vae/, or a folder with taef2.safetensors or taef2_encoder.pth / taef2_decoder.pth "
                             "(default: the pair's)")
    parser.add_argument("--upsampler", default=None,
                        help="UPLiFT weights: Hub repo id, .safetensors / .pth file, or folder (published checkpoint "
                             "or UPLiFTModel.save_pretrained); default: the pair's")


def add_color_correction_arguments(parser: argparse.ArgumentParser) -> None:
    """``--color-correction auto|none|mean|detail`` (``--no-color-correction`` is its old spelling of ``none``)."""
    parser.add_argument("--color-correction", default="auto", choices=COLOR_CORRECTIONS,
                        help="the colour correction: auto (default: the one the upsampler records: the built-in "
                             "model's 'detail', the published checkpoints' 'mean'), none (off), mean or detail")
    parser.add_argument("--no-color-correction", dest="color_correction", action=RenamedFlag, nargs=0, const="none",
                        new="--color-correction", default=argparse.SUPPRESS)


def add_refine_arguments(parser: argparse.ArgumentParser, refine_help: str, steps_default: str = "--steps") -> None:
    """``--refine STRENGTH`` and ``--refine-steps N``: a refine pass after UPLiFT (the pipelines' ``refine_strength``
    / ``refine_steps``), checked by :func:`uplift_diffusion.commands.checks.refine`."""
    parser.add_argument("--refine", type=float, default=0.0, metavar="STRENGTH", help=refine_help)
    parser.add_argument("--refine-steps", type=int_in(None, 10000), default=None, metavar="N",
                        help=f"the refine pass's number of steps (it runs about N x STRENGTH; default: "
                             f"{steps_default})")


def color_correction_argument(args: argparse.Namespace) -> bool | str:
    """``--color-correction`` as a pipeline's ``color_correction``: True (the upsampler's own), False (off) or a
    mode."""
    return {"auto": True, "none": False}.get(args.color_correction, args.color_correction)


def pair_sources(pair: str, vae: str | None, upsampler: str | None) -> tuple[str | None, str | None]:
    """``(vae, upsampler)`` sources of ``--pair`` with ``--vae`` / ``--upsampler``: Hub ids or paths; ``None`` for a
    part that comes from the built-in pair."""
    if pair not in PAIRS:
        raise InputError(f"unknown pair {pair!r}; available: {', '.join(PAIRS)}")
    return vae or PAIRS[pair].vae, upsampler or PAIRS[pair].upsampler


def load_pair(pair: str, vae: str | None, upsampler: str | None, dtype: torch.dtype):
    """``(vae, upsampler)`` models: ``--pair``'s, either part replaced by ``--vae`` / ``--upsampler``."""
    from uplift_diffusion import builtin

    vae, upsampler = pair_sources(pair, vae, upsampler)
    if vae is None and upsampler is None:
        return builtin.load_builtin_pair(pair, dtype)
    vae_model = load_vae(vae, dtype) if vae else builtin.load_builtin_vae(pair, dtype)
    upsampler_model = load_upsampler(upsampler, dtype) if upsampler else builtin.load_builtin_upsampler(pair, dtype)
    return vae_model, upsampler_model


def add_feature_backbone_arguments(parser, default: str | None = "dinov2-s14", upsampler_flag: str = "--upsampler",
                                   without: str = "") -> None:
    """``--backbone NAME`` (a feature backbone of the registry, ``presets.FEATURE_BACKBONES``), ``--backbone-weights``
    and the flag of its UPLiFT checkpoint, for every command that computes DINO features; ``without``: what no
    ``--backbone`` means when ``default`` is None."""
    from uplift_diffusion.presets import FEATURE_BACKBONES

    names = " or ".join(f"{name} (timm {timm_name})" for name, timm_name in FEATURE_BACKBONES.items())
    parser.add_argument("--backbone", default=default, metavar="NAME",
                        help=f"feature backbone: {names}; default: {default or without}")
    parser.add_argument("--backbone-weights", default=None, metavar="PATH",
                        help="local backbone weights (the model.safetensors of Hub repo timm/<backbone>, or its "
                             "folder); default: download")
    parser.add_argument(upsampler_flag, default=None, metavar="PATH",
                        help="local UPLiFT checkpoint for the backbone (.safetensors / .pth / folder); default: "
                             "download the published one (UPLiFT-upsampler/uplift_<backbone>)")


def load_feature_extractor(args, device):
    """``UPLiFTFeatureExtractor.from_pretrained`` for the ``features`` / ``probe`` flags; offline, the advice names
    ``--backbone-weights``, not a Python call."""
    from uplift_diffusion.features import UPLiFTFeatureExtractor
    from uplift_diffusion.utils.errors import WeightsUnavailableError

    try:
        return UPLiFTFeatureExtractor.from_pretrained(args.backbone, backbone=args.backbone_weights,
                                                      upsampler=args.upsampler, device=device)
    except WeightsUnavailableError as err:
        raise UnavailableError(f"{err.message} and pass --backbone-weights path/to/model.safetensors (or its "
                               f"folder)") from None


def load_local_pipeline(load, folder: str | Path, flag: str = "--model"):
    """``load()`` of a local diffusers pipeline folder, after checking that every component its
    ``model_index.json`` names has its sub-folder; a missing, truncated or damaged component (a partial download) is
    one line naming the folder, not a traceback from deep in diffusers / transformers."""
    folder = Path(folder)
    how = "download it again (`hf download <repo> --local-dir DIR`)"
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError):
        index = {}
    missing = [name for name, value in index.items() if not name.startswith("_") and isinstance(value, list)
               and len(value) == 2 and None not in value and not (folder / name).is_dir()]
    if missing:
        raise InputNotFoundError(f"{flag} {folder}: component folder(s) {', '.join(missing)} missing (an interrupted "
                                 f"download?); {how}")
    return load_reporting_damage(load, lambda err, reason: (
        f"{flag} {folder}: the pipeline could not be loaded ({type(err).__name__}: {reason}); a component is damaged "
        f"or incomplete: {how}"), limit=240)
