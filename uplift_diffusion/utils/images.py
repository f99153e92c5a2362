"""The one way to read an image: every reader of the project (CLI commands, training data, linear-probe datasets,
feature extractor, benchmarks) goes through :func:`load_image`, so an image means the same pixels everywhere.

Policy (:func:`to_rgb`): 8-bit sRGB out; EXIF orientation applied; an embedded ICC profile other than sRGB (a
phone's Display P3, Adobe RGB) converted to sRGB with littlecms (``PIL.ImageCms``), as a viewer displays it; 16-bit /
32-bit / float greyscale rescaled from its range (0-1, 0-255 or 0-65535; not clipped, which turned 16-bit PNGs white;
values outside them are refused); CIELAB converted through littlecms; transparency (alpha, palette or ``tRNS``)
composited over white (the hidden colour under transparent pixels is never used); greyscale, palette, CMYK, YCbCr ...
converted. Every conversion is reported as an :class:`~uplift_diffusion.utils.errors.ImageConversionWarning` naming
the image. An image of more than ``PIL.Image.MAX_IMAGE_PIXELS`` pixels (Pillow's own decompression-bomb limit) is
refused from its header, before it is decoded.
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
from .io import require_path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
_EXIF_ORIENTATION = 0x0112
_HIGH_BIT_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_READ_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


class SkippedInputWarning(UserWarning):
    """Files of an input folder were left out (not a supported image type)."""


def _profile_to_srgb(image: Image.Image) -> tuple[Image.Image, str | None]:
    """``image`` in sRGB when it embeds another ICC profile (``None`` note: no profile, or sRGB already)."""
    icc = image.info.get("icc_profile")
    if not icc or image.mode not in ("RGB", "RGBA", "CMYK", "L", "LA"):
        return image, None
    from PIL import ImageCms

    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        name = (ImageCms.getProfileDescription(profile) or "").strip() or "unnamed"
    except (OSError, ImageCms.PyCMSError, TypeError, ValueError):
        return image, "ignored its unreadable ICC profile (read as sRGB)"
    if "srgb" in name.lower().replace(" ", "").replace("-", ""):
        return image, None
    alpha = image.getchannel("A") if image.mode in ("RGBA", "LA") else None
    source = image.convert("RGB" if image.mode in ("RGBA",) else "L" if image.mode == "LA" else image.mode)
    try:
        converted = ImageCms.profileToProfile(source, profile, ImageCms.createProfile("sRGB"), outputMode="RGB")
    except ImageCms.PyCMSError as err:
        return image, f"could not apply its ICC profile {name!r} ({err}; read as sRGB)"
    if alpha is not None:
        converted.putalpha(alpha)
    converted.info = {k: v for k, v in image.info.items() if k != "icc_profile"}
    return converted, f"converted from its ICC profile {name!r} to sRGB"


def _high_bit_depth_to_grey(image: Image.Image, name: str) -> Image.Image:
    """8-bit grey from 16-bit, 32-bit or float greyscale, scaled from the range its values use (0-1 for float,
    0-255 or 0-65535): a white of 1.0, 255 or 65535 stays white. Values outside [0, 65535] are refused."""
    array = np.asarray(image, dtype=np.float64)
    low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
    if not np.isfinite(array).all() or low < 0 or high > 65535:
        raise InputError(f"cannot read image {name} as 8-bit RGB: its {image.mode} values span [{low:g}, {high:g}], "
                         f"outside [0, 65535]; convert it to an 8- or 16-bit image first")
    if image.mode.startswith("I;16"):
        top = 65535.0
    elif image.mode == "F" and high <= 1.0:
        top = 1.0
    else:
        top = 255.0 if high <= 255 else 65535.0
    return Image.fromarray(np.clip(np.round(array / top * 255.0), 0, 255).astype(np.uint8))


def to_rgb(image: Image.Image, name: str = "<image>") -> tuple[Image.Image, str | None]:
    """An 8-bit sRGB version of ``image`` and a note describing what was converted (``None``: it already was).

    Raises:
        InputError: values no 8-bit image can show (negative, above 65535, NaN).
    """
    notes = []
    frames = getattr(image, "n_frames", 1)
    if frames > 1:  # multi-page TIFF, animated WebP / PNG: the frame Pillow opened, the first
        notes.append(f"used the first of its {frames} frames")
    if image.getexif().get(_EXIF_ORIENTATION, 1) not in (0, 1):
        image = ImageOps.exif_transpose(image)
        notes.append("applied its EXIF orientation")
    image, note = _profile_to_srgb(image)
    if note:
        notes.append(note)
    mode = image.mode
    if mode in _HIGH_BIT_DEPTH_MODES:
        image = _high_bit_depth_to_grey(image, name).convert("RGB")
        notes.append(f"converted {mode} (high bit depth greyscale) to 8-bit RGB")
    elif mode == "LAB":  # Pillow's convert would copy L, a, b into R, G, B
        from PIL import ImageCms

        image = ImageCms.profileToProfile(image, ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"),
                                          outputMode="RGB")
        notes.append("converted CIELAB to sRGB")
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
            require_path(path, "file", "image", f"image not found: {path}")
        try:
            with warnings.catch_warnings():  # Pillow's bomb warning: refused below, in one line of our own
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = Image.open(opened)
            with image:
                _refuse_too_many_pixels(image, name)
                image.load()
                image, note = _convert(image, name)
        except (InputNotFoundError, InputError):
            raise
        except Image.DecompressionBombError as err:  # over twice the limit: Pillow refuses in Image.open
            raise InputError(f"image {name} is too big to read ({err}); downscale or crop it first") from None
        except _READ_ERRORS as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise InputError(f"cannot read image {name}: corrupt, truncated or not an image ({reason})") from None
    if note:
        warnings.warn(f"{name}: {note}", ImageConversionWarning, stacklevel=2)
    return image


def _refuse_too_many_pixels(image: Image.Image, name: str) -> None:
    """From the header alone: decoding a 12000 x 12000 PNG takes seconds and gigabytes before anything could refuse
    it. The limit is Pillow's decompression-bomb threshold (``Image.MAX_IMAGE_PIXELS``; ``None`` turns it off)."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit and image.width * image.height > limit:
        raise InputError(f"image {name} is {image.width}x{image.height} ({image.width * image.height / 1e6:.0f} "
                         f"megapixels), more than the {limit / 1e6:.0f} megapixels this program reads "
                         f"(PIL.Image.MAX_IMAGE_PIXELS); downscale or crop it first")


def _convert(image: Image.Image, name: str) -> tuple[Image.Image, str | None]:
    converted, note = to_rgb(image, name)
    return (converted.copy() if converted is image else converted), note


def image_decodes(path: str | os.PathLike) -> bool:
    """Whether ``path`` decodes whole (an empty or truncated file does not): a present output is not a done one."""
    try:
        with Image.open(path) as image:
            image.load()
        return True
    except _READ_ERRORS:
        return False


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(width, height)`` from the file header (no decoding), with :func:`load_image`'s errors."""
    path = require_path(path, "file", "image", f"image not found: {path}")
    try:
        with Image.open(path) as image:
            return image.size
    except _READ_ERRORS as err:
        raise InputError(f"cannot read image {path}: corrupt or not an image ({err})") from None


def _skipped_name(path: Path) -> str:
    if path.is_dir():
        return f"{path.name}/"
    return path.name if path.is_file() else f"{path.name} (not a regular file)"


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
            entries = sorted(path.iterdir())
            found = [p for p in entries if p.is_file() and not p.name.startswith(".")
                     and p.suffix.lower() in IMAGE_SUFFIXES]
            if not found:
                raise InputNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {path}")
            other = [_skipped_name(p) for p in entries if p not in found]
            if other:
                warnings.warn(f"{path}: skipped {len(other)} file(s) ({', '.join(other[:5])}"
                              f"{' ...' if len(other) > 5 else ''}): folders are not searched, hidden files are left "
                              f"out; supported image types: {', '.join(IMAGE_SUFFIXES)} (convert e.g. GIF to PNG "
                              f"first)", SkippedInputWarning, stacklevel=2)
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
