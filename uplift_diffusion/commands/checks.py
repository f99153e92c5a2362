"""Cheap checks of command-line arguments (numbers, choices, files that must exist), run before a command imports
torch / diffusers: a wrong flag answers in well under a second instead of after 10-30 s of imports and model loading.
Standard library only. Each raises the user error the CLI prints as one line."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from uplift_diffusion.presets import FEATURE_ALIASES, FEATURE_BACKBONES, resolve_feature_backbone  # noqa: F401
from uplift_diffusion.utils.errors import InputError, InputNotFoundError
from uplift_diffusion.utils.io import require_path

SR_METHODS = ("uplift", "latent-bilinear", "latent-nearest", "pixel-bicubic")  # uplift_diffusion.eval.sr.METHODS


SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed accepts


def _argparse_type(name: str, convert, expected: str, must_be: str, in_range, shown):
    """An argparse ``type`` that converts the text (else "``expected``, got ...") and checks ``in_range(value)`` (else
    "``must_be``, got ``shown(text, value)``"); argparse names the flag in the one error line."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{expected}, got {text!r}") from None
        if not in_range(value):
            raise argparse.ArgumentTypeError(f"{must_be}, got {shown(text, value)}")
        return value

    parse.__name__ = name
    return parse


def int_in(low: int | None, high: int):
    """An argparse ``type``: an integer in ``[low, high]`` (``low=None``: no lower bound here, the command checks it
    with its own words). argparse then names the flag in one error line, before any work, instead of an overflow deep
    in torch or a run that allocates without end."""
    span = f"in [{low}, {high}]" if low is not None else f"<= {high}"
    return _argparse_type("integer", int, f"expected an integer {span}", f"must be an integer {span}",
                          lambda value: (low is None or value >= low) and value <= high, lambda text, value: value)


def float_in(low: float | None, high: float, low_open: bool = False):
    """An argparse ``type``: a finite number in ``[low, high]`` (``(low, high]`` with ``low_open``; ``low=None``: no
    lower bound here). NaN and infinity are refused."""
    span = f"in {'(' if low_open else '['}{low:g}, {high:g}]" if low is not None else f"<= {high:g}"

    def in_range(value: float) -> bool:
        below = low is not None and (value < low or (low_open and value == low))
        return math.isfinite(value) and not below and value <= high

    return _argparse_type("number", float, "expected a number", f"must be a finite number {span}", in_range,
                          lambda text, value: text)


def at_least(flag: str, value: int | float | None, minimum: int | float) -> None:
    """``value`` (when given) is >= ``minimum``."""
    if value is not None and value < minimum:
        raise InputError(f"{flag} must be >= {minimum}, got {value}")


def refine(args: argparse.Namespace) -> None:
    """``--refine`` a strength in [0, 1] (0 = off), ``--refine-steps`` >= 1 and only with ``--refine``."""
    if not 0 <= args.refine <= 1:
        raise InputError(f"--refine must be a strength in [0, 1] (0 = off), got {args.refine}")
    if args.refine_steps is not None and args.refine_steps < 1:
        raise InputError(f"--refine-steps must be >= 1, got {args.refine_steps}")
    if args.refine_steps is not None and not args.refine:
        raise InputError("--refine-steps needs --refine STRENGTH")


def positive(flag: str, value: int | float | None) -> None:
    """``value`` (when given) is > 0."""
    if value is not None and not value > 0:
        raise InputError(f"{flag} must be > 0, got {value}")


def output_size_arg(text: str) -> tuple[int, int]:
    """An argparse ``type``: an exact output size ``WIDTHxHEIGHT`` (as image tools write it, e.g. ``1920x1080``) ->
    ``(width, height)``, both positive integers."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT in pixels (e.g. 1920x1080), got {text!r}")
    width, height = (int(p) for p in parts)
    if width < 1 or height < 1 or max(width, height) > 65536:
        raise argparse.ArgumentTypeError(f"width and height must be in [1, 65536] pixels, got {text!r}")
    return width, height


def power_of_two(flag: str, value: int) -> None:
    """An upscaling factor: 2, 4, 8, ... (UPLiFTModel.iterations_for_scale)."""
    if value < 2 or value & (value - 1):
        raise InputError(f"{flag} must be a power of two >= 2 (2, 4, 8, ...), got {value}")


def existing(flag: str, path: str | None, kind: str = "file or folder") -> None:
    """``path`` (when given) exists, as a ``"file"``, a ``"folder"`` or either."""
    if path is not None:
        require_path(path, kind, flag)


def feature_backbone(flag: str, name: str, weights_flag: str, weights: str | None) -> None:
    """A known feature backbone, and its local weights (when given) exist."""
    name = resolve_feature_backbone(name, flag)
    if weights is not None and not Path(weights).exists():
        raise InputNotFoundError(f"{weights_flag} {weights}: no such file or folder (expected the model.safetensors "
                                 f"of Hub repo timm/{FEATURE_BACKBONES[name]}, or a folder with it)")


def int_list(flag: str, text: str | None, minimum: int = 1) -> None:
    """A comma-separated list of integers >= ``minimum`` (e.g. ``--steps 25,40``)."""
    if text is None:
        return
    items = [s.strip() for s in text.split(",") if s.strip()]
    if not items or not all(s.isdigit() and int(s) >= minimum for s in items):
        raise InputError(f"{flag} must be comma-separated integers >= {minimum}, got {text!r}")
