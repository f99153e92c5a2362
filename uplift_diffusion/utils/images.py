"""The one way to read an image: every reader of the project (CLI commands, training data, linear-probe datasets,
feature extractor, benchmarks) goes through :func:`load_image`, so an image means the same pixels everywhere.

Policy (:func:`to_rgb`): 8-bit RGB out; EXIF orientation applied; 16-bit / 32-bit greyscale rescaled from its full
range (not clipped, which turned 16-bit PNGs white); transparency (alpha, palette or ``tRNS``) composited over
white (the hidden colour under transparent pixels is never used); greyscale, palette, CMYK, YCbCr ... converted.
Every conversion is reported as an :class:`~uplift_diffusion.utils.errors.ImageConversionWarning` naming the image.
"""

from __future__ import annotations

import glob
import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageConversionWarning, InputError, InputNotFoundError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
_EXIF_ORIENTATION = 0x0112
_HIGH_BIT_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_READ_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


class SkippedInputWarning(UserWarning):
    """Files of an input folder were left out (not a supported image type)."""


def to_rgb(image: Image.Image) -> tuple[Image.Image, str | None]:
    """An 8-bit RGB version of ``image`` and a note describing what was converted (``None``: it already was)."""
    notes = []
    frames = getattr(image, "n_frames", 1)
    if frames > 1:  # multi-page TIFF, animated WebP / PNG: the frame Pillow opened, the first
        notes.append(f"used the first of its {frames} frames")
    if image.getexif().get(_EXIF_ORIENTATION, 1) not in (0, 1):
        image = ImageOps.exif_transpose(image)
        notes.append("applied its EXIF orientation")
    mode = image.mode
    if mode in _HIGH_BIT_DEPTH_MODES:
        array = np.asarray(image, dtype=np.float64)
        top = 1.0 if mode == "F" else (65535.0 if mode.startswith("I;16") or array.max() > 255 else 255.0)
        grey = np.clip(np.round(array / top * 255.0), 0, 255).astype(np.uint8)
        image = Image.fromarray(grey).convert("RGB")
        notes.append(f"converted {mode} (high bit depth greyscale) to 8-bit RGB")
    elif image.has_transparency_data:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba).convert("RGB")
        notes.append(f"converted {mode} to RGB (transparency composited over white)")
    elif mode != "RGB":
        image = image.convert("RGB")
        notes.append(f"converted {mode} to RGB")
    return image, "; ".join(notes) or None


def load_image(source: str | os.PathLike | bytes | Image.Image, name: str | None = None) -> Image.Image:
    """Read an image as 8-bit RGB with the project's one policy (see the module docstring).

    Args:
        source: a file path, the encoded bytes of an image file (e.g. a tar member), or an already opened PIL
            image (e.g. from a ``datasets`` column).
        name: how to call the image in warnings and errors (default: the path, or ``"<image>"``).

    Returns:
        A loaded ``PIL.Image`` in mode ``"RGB"``. A conversion issues an ``ImageConversionWarning``.

    Raises:
        InputNotFoundError (a FileNotFoundError): the file does not exist.
        InputError (a ValueError): the data is not a readable image (corrupt, truncated, unknown format).
    """
    if isinstance(source, Image.Image):
        image, note = _convert(source, name or "<image>")
    else:
        if isinstance(source, (bytes, bytearray)):
            name, opened = name or "<image bytes>", io.BytesIO(source)
        else:
            path = Path(source)
            name, opened = name or str(path), path
            if not path.is_file():
                raise InputNotFoundError(f"image not found: {path}")
        try:
            with Image.open(opened) as image:
                image.load()
                image, note = _convert(image, name)
        except InputNotFoundError:
            raise
        except _READ_ERRORS as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise InputError(f"cannot read image {name}: corrupt, truncated or not an image ({reason})") from None
    if note:
        warnings.warn(f"{name}: {note}", ImageConversionWarning, stacklevel=2)
    return image


def _convert(image: Image.Image, name: str) -> tuple[Image.Image, str | None]:
    converted, note = to_rgb(image)
    return (converted.copy() if converted is image else converted), note


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(width, height)`` from the file header (no decoding), with :func:`load_image`'s errors."""
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as image:
            return image.size
    except _READ_ERRORS as err:
        raise InputError(f"cannot read image {path}: corrupt or not an image ({err})") from None


def input_folders(items: list[str]) -> list[Path]:
    """The folders :func:`expand_inputs` lists: folders given as such, and the folders of glob patterns."""
    folders = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            folders.append(path)
        elif not path.is_file() and glob.has_magic(item):
            folders += {Path(p).parent for p in glob.glob(item)}
    return folders


def expand_inputs(items: list[str]) -> list[Path]:
    """Image files from paths, folders (their image files, sorted, not recursive) and glob patterns."""
    files: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            entries = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
            found = [p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES]
            if not found:
                raise InputNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {path}")
            other = [p.name for p in entries if p.suffix.lower() not in IMAGE_SUFFIXES]
            if other:
                warnings.warn(f"{path}: skipped {len(other)} file(s) that are not a supported image type "
                              f"({', '.join(other[:5])}{' ...' if len(other) > 5 else ''}); supported: "
                              f"{', '.join(IMAGE_SUFFIXES)} (convert e.g. GIF to PNG first)", SkippedInputWarning,
                              stacklevel=2)
            files += found
        elif path.is_file():
            files.append(path)
        elif glob.has_magic(item):
            found = sorted(Path(p) for p in glob.glob(item) if Path(p).is_file())
            if not found:
                raise InputNotFoundError(f"no files match {item!r}")
            files += found
        else:
            raise InputNotFoundError(f"input not found: {item}")
    return list(dict.fromkeys(files))  # drop duplicates, keep the order
