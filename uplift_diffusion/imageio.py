"""Reading and writing images for the pipelines and the CLI: RGB conversion with a note, safe atomic writes."""

from __future__ import annotations

import glob
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def to_rgb(image: Image.Image) -> tuple[Image.Image, str | None]:
    """An 8-bit RGB version of ``image`` and a note describing the conversion (``None`` when it already was RGB).

    Alpha is composited over white; 16-bit / 32-bit greyscale is rescaled from its full range, not clipped.
    """
    mode = image.mode
    if mode == "RGB":
        return image, None
    if mode in _SIXTEEN_BIT_MODES:
        array = np.asarray(image, dtype=np.float64)
        top = 1.0 if mode == "F" else (65535.0 if mode.startswith("I;16") or array.max() > 255 else 255.0)
        grey = np.clip(np.round(array / top * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB"), f"converted {mode} (high bit depth greyscale) to 8-bit RGB"
    if "A" in mode or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB"), f"converted {mode} to RGB (alpha over white)"
    return image.convert("RGB"), f"converted {mode} to RGB"


def load_image(path: str | os.PathLike) -> tuple[Image.Image, str | None]:
    """Open an image file as 8-bit RGB; returns the image and a conversion note (or ``None``).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a readable image (corrupt, truncated, unknown format).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"input image not found: {path}")
    try:
        with Image.open(path) as image:
            image.load()
            return to_rgb(image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(f"cannot read image {path}: corrupt, truncated or not an image ({reason})") from None


def expand_inputs(items: list[str]) -> list[Path]:
    """Image files from paths, folders (their image files, sorted, not recursive) and glob patterns."""
    files: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {path}")
            files += found
        elif path.is_file():
            files.append(path)
        elif glob.has_magic(item):
            found = sorted(Path(p) for p in glob.glob(item) if Path(p).is_file())
            if not found:
                raise FileNotFoundError(f"no files match {item!r}")
            files += found
        else:
            raise FileNotFoundError(f"input not found: {item}")
    return list(dict.fromkeys(files))  # drop duplicates, keep the order


def save_image_atomic(image: Image.Image, path: str | os.PathLike) -> None:
    """Write ``image`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        image.save(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def ensure_writable_dir(folder: str | os.PathLike) -> Path:
    """Create ``folder`` if needed and check that files can be written there; OSError with the reason otherwise."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise OSError(f"output folder {folder} is not writable ({err.strerror or type(err).__name__})") from None
    return folder
