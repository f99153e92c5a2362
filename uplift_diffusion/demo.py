"""The first thing a user runs: scikit-image's sample photos downscaled, upscaled back with pixel bicubic and with the
built-in UPLiFT, and a labelled side-by-side figure (low-res | bicubic | UPLiFT | original) with PSNR / SSIM.

Only photos shipped inside the scikit-image wheel are used (no ``pooch`` download), so the demo runs offline.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from uplift_diffusion.utils.errors import InputError
from uplift_diffusion.utils.image_ops import to_tensor_uint8

# skimage.data loaders whose files ship in the scikit-image wheel (others, e.g. `kodim`, need a download)
SAMPLE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
COLUMNS = ("low-res", "bicubic", "UPLiFT", "original")
LABEL_HEIGHT = 26
GAP = 6


@dataclass
class DemoResult:
    """One photo of the demo.

    Attributes:
        name: the photo's scikit-image name.
        images: the four columns (``COLUMNS``), PIL RGB; the low-res one at its own (small) size.
        metrics: ``{"bicubic": {"psnr": dB, "ssim": x}, "uplift": {...}}`` against the original.
    """

    name: str
    images: dict[str, Image.Image]
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)


def sample_photo(name: str, multiple: int) -> Image.Image:
    """A scikit-image sample photo as PIL RGB, centre-cropped to a multiple of ``multiple`` pixels a side."""
    try:
        from skimage import data
    except ModuleNotFoundError:
        raise ModuleNotFoundError("the demo needs scikit-image's sample photos: pip install scikit-image "
                                  "(or 'uplift-diffusion[all]')", name="skimage") from None
    if name not in SAMPLE_PHOTOS:
        raise InputError(f"unknown demo photo {name!r}; available: {', '.join(SAMPLE_PHOTOS)}")
    array = getattr(data, name)()
    h, w = (s // multiple * multiple for s in array.shape[:2])
    top, left = (array.shape[0] - h) // 2, (array.shape[1] - w) // 2
    return Image.fromarray(np.ascontiguousarray(array[top:top + h, left:left + w, :3]))


def metric_functions() -> tuple[Callable, Callable]:
    """``(psnr, ssim)`` on PIL pairs: the project's ``eval.metrics`` (torchmetrics; scikit-image's Gaussian SSIM
    settings), else scikit-image directly with the same settings."""
    try:
        import torchmetrics  # noqa: F401

        from uplift_diffusion.eval.metrics import psnr_per_image, ssim_per_image

        def batch(image: Image.Image) -> torch.Tensor:
            return to_tensor_uint8(image)[None]  # uint8 [1, 3, H, W]

        return (lambda a, b: float(psnr_per_image(batch(a), batch(b))[0]),
                lambda a, b: float(ssim_per_image(batch(a), batch(b))[0]))
    except ModuleNotFoundError:
        from skimage.metrics import peak_signal_noise_ratio, structural_similarity

        def ssim(a, b):
            return float(structural_similarity(np.asarray(a), np.asarray(b), channel_axis=2, data_range=255,
                                               gaussian_weights=True, sigma=1.5, use_sample_covariance=False))

        return lambda a, b: float(peak_signal_noise_ratio(np.asarray(b), np.asarray(a), data_range=255)), ssim


def colour_ratios(image: Image.Image, original: Image.Image) -> dict[str, float]:
    """The image's saturation and contrast relative to the original's (1 = faithful; a washed-out result < 1)."""
    from uplift_diffusion.eval.metrics import colour_ratios_per_image

    saturation, contrast = colour_ratios_per_image(to_tensor_uint8(image)[None], to_tensor_uint8(original)[None])
    return {"saturation_ratio": float(saturation[0]), "contrast_ratio": float(contrast[0])}


def run_demo(pipe, names: Iterable[str] = SAMPLE_PHOTOS, scale: int = 4, seed: int = 0,
             progress: Callable[[Iterable], Iterable] | None = None) -> list[DemoResult]:
    """Downscale each photo ``scale`` times (antialiased bicubic), upscale it back with pixel bicubic and with
    ``pipe`` (an :class:`~uplift_diffusion.UPLiFTSuperResolutionPipeline`), and measure both against the original.

    Args:
        pipe: the super-resolution pipeline (e.g. ``UPLiFTSuperResolutionPipeline.from_builtin("taef2")``).
        names: scikit-image sample photos (``SAMPLE_PHOTOS``).
        scale: upscaling factor, a power of two.
        seed: seed of the upsampler's noise channels.
        progress: optional wrapper of the photo iterable (a progress bar).
    """
    psnr, ssim = metric_functions()
    names = list(names)
    results = []
    for name in progress(names) if progress is not None else names:
        original = sample_photo(name, multiple=8 * scale)
        size = original.size
        low = original.resize((size[0] // scale, size[1] // scale), Image.Resampling.BICUBIC)  # antialiased
        bicubic = low.resize(size, Image.Resampling.BICUBIC)
        generator = torch.Generator(pipe.device).manual_seed(seed)
        uplift = pipe(low, scale=scale, generator=generator).images[0]
        metrics = {method: {"psnr": psnr(image, original), "ssim": ssim(image, original),
                            **colour_ratios(image, original)}
                   for method, image in (("bicubic", bicubic), ("uplift", uplift))}
        results.append(DemoResult(name, dict(zip(COLUMNS, (low, bicubic, uplift, original), strict=True)), metrics))
    return results


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def _caption(result: DemoResult, column: str) -> str:
    low = result.images["low-res"]
    method = {"bicubic": "bicubic", "UPLiFT": "uplift"}.get(column)
    if method is None:
        size = result.images[column].size if column == "original" else low.size
        return f"{column} {size[0]}x{size[1]}" + (" (shown nearest)" if column == "low-res" else "")
    m = result.metrics[method]
    return f"{column}  {m['psnr']:.2f} dB  SSIM {m['ssim']:.3f}"


def side_by_side(results: list[DemoResult]) -> Image.Image:
    """One row per photo, the four ``COLUMNS`` at the original's size (the low-res input enlarged with nearest so
    its pixels show), each cell captioned with its name and PSNR / SSIM against the original."""
    font = _font(16)
    rows = []
    for result in results:
        size = result.images["original"].size
        cells = [result.images[c].resize(size, Image.Resampling.NEAREST) if c == "low-res" else result.images[c]
                 for c in COLUMNS]
        row = Image.new("RGB", (len(cells) * (size[0] + GAP) - GAP, size[1] + LABEL_HEIGHT), "white")
        draw = ImageDraw.Draw(row)
        for i, (column, cell) in enumerate(zip(COLUMNS, cells, strict=True)):
            x = i * (size[0] + GAP)
            row.paste(cell, (x, LABEL_HEIGHT))
            draw.text((x + 4, 4), _caption(result, column), fill="black", font=font)
        rows.append(row)
    figure = Image.new("RGB", (max(r.width for r in rows), sum(r.height + GAP for r in rows) - GAP), "white")
    y = 0
    for row in rows:
        figure.paste(row, (0, y))
        y += row.height + GAP
    return figure


def results_table(results: list[DemoResult], scale: int) -> str:
    """A plain-text table of the per-photo metrics and their mean: PSNR / SSIM and the saturation / contrast ratios
    (output over original; 1 = faithful colours)."""
    keys = ("psnr", "ssim", "saturation_ratio", "contrast_ratio")

    def cells(m: dict) -> str:
        return f"{m['psnr']:>6.2f} dB / {m['ssim']:.3f} / {m['saturation_ratio']:.3f} / {m['contrast_ratio']:.3f}"

    title = "PSNR / SSIM / sat. / contr."
    lines = [f"{scale}x  {'photo':<10} {'size':>9}  {'bicubic ' + title:>37}  {'UPLiFT ' + title:>37}"]
    for r in results:
        size = r.images["original"].size
        lines.append(f"    {r.name:<10} {size[0]:>4}x{size[1]:<4}  {cells(r.metrics['bicubic']):>37}  "
                     f"{cells(r.metrics['uplift']):>37}")
    mean = {m: {k: float(np.mean([r.metrics[m][k] for r in results])) for k in keys} for m in ("bicubic", "uplift")}
    lines.append(f"    {'mean':<10} {'':>9}  {cells(mean['bicubic']):>37}  {cells(mean['uplift']):>37}")
    return "\n".join(lines)
