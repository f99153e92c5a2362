"""The web page of ``uplift-diffusion serve``: a Gradio app for people who do not write Python.

* **Upscale**: one or more photos (or a click on an example photo), 2x / 4x / 8x (8x only while the output stays under
  the page's pixel limit), colour correction on / off, optional tiles; one progress bar over the whole request with
  the time left; a before / after slider with labelled halves (the input, or pixel-bicubic, against UPLiFT); the
  same crop zoomed (the most detailed region, or wherever the visitor clicks on the full-size view); the result at
  1:1; PNG downloads and, for several photos, one zip.
* **Features** (only when a DINO backbone was loaded): the joint-PCA strip (``image | backbone | step 1 | ... |
  step n``) of the predictive sibling.
* **API**: ``/upscale`` (photos, scale, colour correction, tiles -> PNG files and a summary), documented under "Use
  via API" in the footer; the page's own events are private.

Everything a request can get wrong (not an image, empty, too small, too large, ...) becomes a message in the page,
next to the result, in plain words, kept until the next run; server file paths never appear in them (uploads live in
temporary folders). The server log gets one line per refused request and a traceback only for real bugs.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import threading
import time
import uuid
import warnings
import weakref
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import numpy as np
import torch
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode

from uplift_diffusion.utils.errors import ImageConversionWarning
from uplift_diffusion.utils.images import image_size, load_image
from uplift_diffusion.utils.io import atomic_write, save_image_atomic

logger = logging.getLogger(__name__)

SCALE_CHOICES = [("2×", 2), ("4×", 4), ("8×", 8)]
TILE_CHOICES = [("auto", "auto"), ("off (whole image)", "off"), ("256 px", "256"), ("512 px", "512"),
                ("1024 px", "1024")]
COMPARE_CHOICES = [("input (enlarged, nearest)", "input"), ("pixel bicubic", "bicubic")]
COMPARE_LABELS = {"input": "input (nearest)", "bicubic": "pixel bicubic"}
CROP_SIZE = 192  # output pixels per side of the zoomed crop
ZOOM_DISPLAY = 384  # the zoomed crops are enlarged (nearest) to at least this many pixels per side
KEEP_RESULTS_S = 3600  # result files older than this are deleted from the page's work folder
PROGRESS = gr.Progress()  # Gradio fills in the request's bar (RequestProgress reports to it)
CALIBRATION_SIDE = 32  # pixels: the tiny photo whose cost per pixel sizes the progress bar before a first real run
EXAMPLE_PHOTOS = ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg")  # files shipped in skimage/data
PAGE_CSS = """
#slider-labels .prose { display: flex; justify-content: space-between; font-weight: 600; }
#crops .grid-wrap, #crops .gallery-container { height: auto !important; min-height: 0 !important;
                                              max-height: none !important; }
#crops .grid-container { grid-template-columns: repeat(3, minmax(0, 1fr)) !important; grid-auto-rows: auto !important; }
#crops .thumbnail-item { aspect-ratio: 1 / 1; height: auto !important; }
#full .image-container { overflow: auto !important; max-height: 640px; }
#full .image-frame, #full button { overflow: visible !important; max-width: none !important; }
#full img { max-width: none !important; max-height: none !important; width: auto !important;
            height: auto !important; object-fit: none !important; cursor: crosshair; }
#message { border-left: 4px solid #dc2626; padding-left: 12px; }
"""


class PageError(ValueError):
    """A problem with a request, worded for the person using the page (never contains a server path)."""


@dataclass(frozen=True)
class PageLimits:
    """The limits a public page needs.

    Args:
        max_input_pixels: largest accepted upload (width x height).
        max_output_pixels: largest result at any scale (larger: choose a smaller scale).
        max_untiled_output_pixels: largest result computed in one piece; above it ``auto`` tiles and ``off`` is
            refused with a message suggesting a tile size.
        min_side: smallest accepted width / height.
        max_files: photos per request.
        auto_tile_size: the tile size ``auto`` picks above ``max_untiled_output_pixels``.
        queue_size: requests waiting in Gradio's queue before new ones are turned away.
    """

    max_input_pixels: int = 2048 * 2048
    max_output_pixels: int = 4096 * 4096
    max_untiled_output_pixels: int = 2048 * 2048
    min_side: int = 16
    max_files: int = 8
    auto_tile_size: int = 512
    queue_size: int = 16


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:.1f} MP"


def _seconds(value: float) -> str:
    return f"{value:.0f} s" if value < 90 else f"{value / 60:.1f} min"


# ---------------------------------------------------------------------------------------------------- progress
_CONV_OPS = {"conv2d", "convolution", "_convolution", "mkldnn_convolution", "_convolution_pointwise",
             "cudnn_convolution", "conv1d", "conv3d"}
_TRANSPOSED_OPS = {"conv_transpose2d", "conv_transpose1d", "conv_transpose3d", "convolution_transpose"}
_MATMUL_OPS = {"mm", "bmm", "matmul"}
_MATMUL_ADD_OPS = {"addmm", "baddbmm"}


def _multiply_adds(name: str, args: tuple, out) -> tuple[int, torch.Tensor | None]:
    """Multiply-adds of one ATen op (convolutions and matrix products; 0 for the rest) and the weight it read."""
    if not isinstance(out, torch.Tensor):
        return 0, None
    if name in _CONV_OPS or name in _TRANSPOSED_OPS:
        data, weight = args[0], args[1]
        if not (isinstance(weight, torch.Tensor) and weight.dim() >= 3):
            return 0, None
        per_position = weight.shape[1] * weight[0, 0].numel()  # input channels per group x kernel (or, transposed,
        produced = data.numel() if name in _TRANSPOSED_OPS else out.numel()  # output channels per group x kernel)
        return produced * per_position, weight
    if name in _MATMUL_OPS or name in _MATMUL_ADD_OPS:
        left = args[1] if name in _MATMUL_ADD_OPS else args[0]
        return (out.numel() * left.shape[-1] if isinstance(left, torch.Tensor) else 0), None
    return 0, None


class WorkCounter(TorchDispatchMode):
    """Counts, while active in this thread, the multiply-adds of every convolution and matrix product that runs (the
    arithmetic of the request: the VAE decoder's convolutions are ~80 % of it at 2×) and names the model part a
    convolution belongs to, by the weight it reads.

    The pipeline's own progress bar sees an untiled decode as one step; counting operations from outside sees every
    layer of it, needs nothing from the pipeline, and changes no result: each op runs the same kernel on the same
    tensors (the page's output is tested bit-exact against the pipeline's).

    Args:
        on_work: called as ``on_work(multiply_adds_so_far, part)`` after each counted op (``part`` may be ``None``).
        parts: ``{weight data pointer: part name}`` for the weights of the model parts.
    """

    def __init__(self, on_work: Callable[[int, str | None], None] | None = None, parts: dict[int, str] | None = None):
        super().__init__()
        self.on_work = on_work
        self.parts = parts or {}
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        macs, weight = _multiply_adds(func.overloadpacket.__name__, args, out)
        if macs:
            self.total += macs
            part = None
            if weight is not None and weight.layout == torch.strided:  # opaque (mkldnn) tensors have no data_ptr
                part = self.parts.get(weight.data_ptr())
            if self.on_work is not None:
                self.on_work(self.total, part)
        return out


class RequestProgress:
    """One progress bar over a whole request (every photo of a batch), with the time left.

    Each photo's share of the bar is its expected arithmetic (multiply-adds, from its size and scale); within a photo
    the bar follows the multiply-adds counted so far (:class:`WorkCounter`), so the decode advances it layer by layer
    like every other part. The time left is the elapsed time scaled by the work left.

    Args:
        report: ``report(fraction, desc)``, e.g. a ``gr.Progress``.
        names: the photos' names.
        costs: expected multiply-adds of each photo (0 for photos that will be refused).
        min_interval: seconds between two reports (the page gets a few updates a second, not one per op).
        clock: monotonic clock in seconds.
    """

    def __init__(self, report: Callable[..., None], names: Sequence[str], costs: Sequence[float],
                 min_interval: float = 0.25, clock: Callable[[], float] = time.monotonic):
        self.report, self.names, self.costs = report, list(names), [max(0.0, float(c)) for c in costs]
        self.total = sum(self.costs) or 1.0
        self.min_interval, self.clock = min_interval, clock
        self.start_time = clock()
        self.last_report = -float("inf")
        self.index, self.part, self.fraction = 0, None, 0.0

    def start_photo(self, index: int) -> None:
        self.index, self.part = index, None
        self._report(sum(self.costs[:index]) / self.total, force=True)

    def finish_photo(self, index: int) -> None:
        """Photo ``index`` is done (or refused): the bar shows its whole share, whatever the estimate said."""
        self.part = "saving" if index + 1 == len(self.names) else None
        self._report(sum(self.costs[:index + 1]) / self.total, force=True)

    def work(self, done: float, part: str | None = None) -> None:
        """``done`` multiply-adds of the current photo so far (its share is capped: estimates can be short)."""
        if part is not None:
            self.part = part
        cost = self.costs[self.index]
        self._report((sum(self.costs[:self.index]) + min(done, 0.99 * cost)) / self.total)

    def seconds_left(self, fraction: float) -> float | None:
        elapsed = self.clock() - self.start_time
        if fraction < 0.02 or elapsed < 1.0:
            return None  # too early for an honest estimate
        return elapsed * (1 - fraction) / fraction

    def _report(self, fraction: float, force: bool = False) -> None:
        self.fraction = fraction = max(self.fraction, min(fraction, 1.0))  # never moves back
        now = self.clock()
        if not force and now - self.last_report < self.min_interval:
            return
        self.last_report = now
        self.report(fraction, desc=self.describe(fraction))

    def describe(self, fraction: float) -> str:
        count = len(self.names)
        photo = f"{self.names[self.index]} ({self.index + 1} of {count})" if count > 1 else self.names[self.index]
        left = self.seconds_left(fraction)
        when = f"about {_seconds(left)} left" if left is not None else "estimating the time left"
        return " · ".join(p for p in (photo, self.part, when) if p)


# ---------------------------------------------------------------------------------------------------- the work
@dataclass
class UpscaleResult:
    """One finished photo: the files the page shows and offers, and what it says about them."""

    name: str
    input_size: tuple[int, int]
    output_size: tuple[int, int]
    seconds: float
    output_png: Path  # the download
    input_view: Path  # the input enlarged (nearest) to the output size: the slider's "before"
    bicubic_view: Path  # pixel-bicubic at the output size
    tile_size: int | None
    detail_center: tuple[int, int] = (0, 0)  # output pixel at the centre of the most detailed crop
    note: str | None = None  # how the upload was converted to RGB, if it was

    def summary(self, scale: int, markdown: bool = True) -> str:
        (w, h), (ow, oh) = self.input_size, self.output_size
        tiles = f", {self.tile_size}-px tiles" if self.tile_size else ""
        note = f" ({self.note})" if self.note else ""
        name = f"**{self.name}**" if markdown else self.name
        return f"{name}: {w}×{h} → {ow}×{oh} ({scale}×{tiles}) in {self.seconds:.2f} s{note}"


def most_detailed_center(image: Image.Image, window: int) -> tuple[int, int]:
    """Centre (x, y) of the ``window``-pixel square of ``image`` with the most gradient energy (sum of squared
    luminance differences to the right and below neighbours): where a zoomed crop has the most to show."""
    grey = np.asarray(image.convert("L"), dtype=np.float64)
    height, width = grey.shape
    window = max(1, min(window, width, height))
    energy = np.zeros_like(grey)
    energy[:, :-1] += np.diff(grey, axis=1) ** 2
    energy[:-1, :] += np.diff(grey, axis=0) ** 2
    table = np.pad(energy.cumsum(0).cumsum(1), ((1, 0), (1, 0)))  # integral image: window sums in O(1) each
    sums = (table[window:, window:] - table[:-window, window:] - table[window:, :-window]
            + table[:-window, :-window])  # [height - window + 1, width - window + 1]
    top, left = np.unravel_index(int(np.argmax(sums)), sums.shape)
    return int(left) + window // 2, int(top) + window // 2


def crop_box(size: tuple[int, int], center: tuple[int, int], side: int = CROP_SIZE) -> tuple[int, int, int, int]:
    """The ``side``-pixel square box around ``center``, moved inside an image of ``size``."""
    width, height = size
    side = min(side, width, height)
    left = min(max(0, center[0] - side // 2), width - side)
    top = min(max(0, center[1] - side // 2), height - side)
    return left, top, left + side, top + side


class PageUpscaler:
    """Upscales uploaded photos with one shared :class:`UPLiFTSuperResolutionPipeline`.

    Args:
        pipeline: the super-resolution pipeline every request uses (built from ``(vae, upsampler)`` only: how the
            upsampler's output is colour-corrected comes from its own config).
        limits: the page's limits.
        workdir: folder for result files (default: a new temporary folder, removed with this object).
        seed: seed of the upsampler's noise channels, the same for every request (same photo, same result).
    """

    def __init__(self, pipeline, limits: PageLimits = PageLimits(), workdir: str | Path | None = None, seed: int = 0):
        self.pipeline = pipeline
        self.limits = limits
        self.seed = seed
        if workdir is None:
            workdir = tempfile.mkdtemp(prefix="uplift-serve-")
            self._cleanup = weakref.finalize(self, shutil.rmtree, workdir, True)
        self.workdir = Path(workdir)
        self._lock = threading.Lock()  # one request at a time on the shared model, whatever the queue settings
        self._macs_per_pixel: dict[tuple[int, int | None], float] = {}  # measured, per (scale, tile size)

    # ------------------------------------------------------------------ checks
    def read(self, path: str | Path) -> tuple[Image.Image, str | None]:
        """An uploaded file as RGB, after checking its size from the header (before decoding the pixels), and the
        conversion it needed (e.g. ``converted RGBA to RGB ...``; ``None``: it was RGB)."""
        name, limits = Path(path).name, self.limits
        if Path(path).is_file() and Path(path).stat().st_size == 0:
            raise PageError(f"{name} is an empty file (0 bytes): the upload may have failed, or the file was "
                            f"saved empty; choose the photo again")
        try:
            width, height = image_size(path)
        except ValueError:  # the header cannot be read (the message names the server path: reword it)
            raise PageError(f"{name} is not an image this page can read (PNG, JPEG, WebP, ...): it may be corrupt, "
                            f"truncated or another kind of file") from None
        if min(width, height) < limits.min_side:
            raise PageError(f"{name} is {width}×{height} pixels; the smallest image this page upscales is "
                            f"{limits.min_side}×{limits.min_side}")
        if width * height > limits.max_input_pixels:
            raise PageError(f"{name} is {width}×{height} ({_megapixels(width * height)}), over this page's limit of "
                            f"{_megapixels(limits.max_input_pixels)} per photo: downscale it first, or upscale it on "
                            f"your own machine in tiles (uplift-diffusion upscale --tile-size 512)")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ImageConversionWarning)
                image = load_image(path, name=name)
        except ValueError:  # the decoder's reason may name the server path: say the same in the page's words
            raise PageError(f"{name} could not be decoded: it is corrupt or truncated") from None
        notes = [str(w.message).removeprefix(f"{name}: ") for w in caught
                 if issubclass(w.category, ImageConversionWarning)]
        return image, "; ".join(notes) or None

    def tile_size_for(self, image: Image.Image, scale: int, tiles: str, name: str) -> int | None:
        """The tile size to run with (``None``: whole image); PageError when the result would be too large."""
        limits = self.limits
        out_w, out_h = image.width * scale, image.height * scale
        out_pixels = out_w * out_h
        if out_pixels > limits.max_output_pixels:
            pixels = image.width * image.height
            smaller = [f"{s}×" for _, s in SCALE_CHOICES if pixels * s * s <= limits.max_output_pixels]
            hint = f"choose {' or '.join(smaller)}" if smaller else "downscale the photo first"
            raise PageError(f"{scale}× of {name} ({image.width}×{image.height}) would be {out_w}×{out_h} "
                            f"({_megapixels(out_pixels)}), over this page's limit of "
                            f"{_megapixels(limits.max_output_pixels)}: {hint}, or upscale it on your own machine in "
                            f"tiles (uplift-diffusion upscale --tile-size 512)")
        if tiles == "auto":
            return limits.auto_tile_size if out_pixels > limits.max_untiled_output_pixels else None
        if tiles == "off":
            if out_pixels > limits.max_untiled_output_pixels:
                raise PageError(f"{scale}× of {name} would be {out_w}×{out_h} ({_megapixels(out_pixels)}), too large "
                                f"to compute in one piece here (limit {_megapixels(limits.max_untiled_output_pixels)}):"
                                f" pick a tile size (e.g. 512 px) or a smaller scale")
            return None
        return int(tiles)

    # ------------------------------------------------------------------ cost (for the progress bar)
    def _model_parts(self) -> dict[int, str]:
        """``{weight data pointer: part}`` for the pipeline's VAE encoder, upsampler and VAE decoder."""
        parts = {}
        for module, part in ((getattr(self.pipeline.vae, "encoder", None), "encoding"),
                             (self.pipeline.upsampler, "UPLiFT"),
                             (getattr(self.pipeline.vae, "decoder", None), "decoding")):
            for param in module.parameters() if module is not None else ():
                parts[param.data_ptr()] = part
        return parts

    def _run(self, image: Image.Image, scale: int, tile_size: int | None, color_correction: bool,
             on_work: Callable[[int, str | None], None] | None = None) -> tuple[Image.Image, int]:
        """The pipeline's result for ``image`` and the multiply-adds it took."""
        generator = torch.Generator(self.pipeline.device).manual_seed(self.seed)
        with WorkCounter(on_work, self._model_parts()) as counter:
            result = self.pipeline(image, scale=scale, generator=generator, tile_size=tile_size,
                                   color_correction=color_correction).images[0]
        return result, counter.total

    def expected_cost(self, size: tuple[int, int], scale: int, tile_size: int | None = None) -> float:
        """Expected multiply-adds to upscale a photo of ``size``: measured per pixel on the last photo with the same
        scale and tiles, else on a tiny calibration photo (run once per scale, under the model lock)."""
        pixels = size[0] * size[1]
        for key in ((scale, tile_size), (scale, None)):
            if key in self._macs_per_pixel:
                return self._macs_per_pixel[key] * pixels
        with self._lock:
            side = CALIBRATION_SIDE
            noise = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
            _, macs = self._run(Image.fromarray(noise), scale, None, True)
        self._macs_per_pixel[(scale, None)] = macs / side**2
        return macs / side**2 * pixels

    # ------------------------------------------------------------------ work
    def upscale_file(self, path: str | Path, scale: int, color_correction: bool, tiles: str,
                     progress: Callable[[int, str | None], None] | None = None) -> UpscaleResult:
        """Upscale one uploaded file; PageError (in the page's words) for anything wrong with the request.

        Args:
            path: the uploaded file.
            scale: 2, 4 or 8.
            color_correction: apply the upsampler's own colour correction (on / off; the mode is the model's).
            tiles: ``"auto"``, ``"off"`` or a tile size in pixels.
            progress: called as ``progress(multiply_adds_so_far, part)`` while the pipeline runs.
        """
        name = Path(path).name
        image, note = self.read(path)
        tile_size = self.tile_size_for(image, scale, tiles, name)
        try:
            self.pipeline.check_inputs(scale, tile_size, None, "pil")
        except ValueError as err:
            raise PageError(f"{name}: {err}") from None
        with self._lock:
            start = time.perf_counter()
            result, macs = self._run(image, scale, tile_size, color_correction, progress)
            seconds = time.perf_counter() - start
        self._macs_per_pixel[(scale, tile_size)] = macs / (image.width * image.height)
        folder = self.workdir / uuid.uuid4().hex
        folder.mkdir(parents=True)
        views = {
            "output_png": (result, f"{Path(name).stem}_x{scale}.png"),
            "input_view": (image.resize(result.size, Image.NEAREST), "input_nearest.png"),
            "bicubic_view": (image.resize(result.size, Image.BICUBIC), "bicubic.png"),
        }
        for picture, filename in views.values():
            save_image_atomic(picture, folder / filename)
        files = {key: folder / filename for key, (_, filename) in views.items()}
        x, y = most_detailed_center(image, max(1, CROP_SIZE // scale))
        return UpscaleResult(name=name, input_size=image.size, output_size=result.size, seconds=seconds,
                             tile_size=tile_size, note=note, detail_center=(x * scale, y * scale), **files)

    def zip_results(self, results: Sequence[UpscaleResult], scale: int) -> Path:
        """One zip of every result PNG (names made unique), for "Download all"."""
        path = self.workdir / uuid.uuid4().hex / f"uplift_x{scale}_{len(results)}_photos.zip"
        used: set[str] = set()

        def write(tmp: str) -> None:
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as archive:  # PNGs are compressed already
                for result in results:
                    stem, name, n = result.output_png.stem, result.output_png.name, 1
                    while name in used:
                        n += 1
                        name = f"{stem}_{n}.png"
                    used.add(name)
                    archive.write(result.output_png, name)

        return atomic_write(path, write)

    def prune(self, max_age_s: float = KEEP_RESULTS_S) -> None:
        """Delete result folders older than ``max_age_s`` (the page's files do not pile up)."""
        cutoff = time.time() - max_age_s
        for folder in self.workdir.iterdir():
            if folder.is_dir() and folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder, ignore_errors=True)


def zoomed_crops(result: UpscaleResult, center: tuple[int, int] | None = None) -> list[tuple[Image.Image, str]]:
    """The same crop of the input, pixel-bicubic and UPLiFT around ``center`` (output pixels; default: the most
    detailed region), enlarged (nearest) so that pixels show."""
    box = crop_box(result.output_size, center or result.detail_center)
    side = box[2] - box[0]
    zoom = max(1, -(-ZOOM_DISPLAY // side))
    crops = []
    for path, caption in ((result.input_view, "input"), (result.bicubic_view, "pixel bicubic"),
                          (result.output_png, "UPLiFT")):
        with Image.open(path) as image:
            crop = image.crop(box)
        crops.append((crop.resize((side * zoom, side * zoom), Image.NEAREST), caption))
    return crops


def slider_pair(result: UpscaleResult, compare: str) -> tuple[Image.Image, Image.Image]:
    """The slider's (before, after): the input enlarged or pixel-bicubic, against UPLiFT."""
    before = result.bicubic_view if compare == "bicubic" else result.input_view
    with Image.open(before) as left, Image.open(result.output_png) as right:
        return left.copy(), right.copy()


def slider_labels(compare: str) -> str:
    """The names of the slider's two halves, shown above them."""
    return f"<span>◀ {COMPARE_LABELS.get(compare, compare)}</span><span>UPLiFT ▶</span>"


# ---------------------------------------------------------------------------------------------------- the model card
def model_card_line(card: str | Path | None, name: str) -> str:
    """One line for the page: the model (the card's title, else ``name``) and its measured quality against pixel
    bicubic, read from the card's first table with a "pixel bicubic" column and a "mean" row (PSNR / SSIM cells),
    with the protocol from the sentence above the table. Nothing is made up: without a card or table, only the name.
    """
    text = Path(card).read_text(encoding="utf-8") if card is not None and Path(card).is_file() else ""
    lines = text.splitlines()
    title = next((line[2:].strip() for line in lines if line.startswith("# ")), name)
    for i, line in enumerate(lines):
        cells = [c.strip().lower() for c in line.strip().strip("|").split("|")]
        if not line.lstrip().startswith("|") or "pixel bicubic" not in cells:
            continue
        bicubic_col = cells.index("pixel bicubic")
        model_col = next((j for j, c in enumerate(cells) if j != bicubic_col and j > 0), None)
        for row in lines[i + 2:]:
            if not row.lstrip().startswith("|"):
                break
            values = [c.strip() for c in row.strip().strip("|").split("|")]
            if values[0].lower() != "mean" or model_col is None or len(values) <= max(bicubic_col, model_col):
                continue
            numbers = [[float(x) for x in re.findall(r"\d+(?:\.\d+)?", values[col])] for col in (bicubic_col,
                                                                                                 model_col)]
            if not all(numbers):
                break
            (bicubic, *bicubic_ssim), (model, *model_ssim) = numbers
            ssim = (f"; SSIM {model_ssim[0]:.3f} vs {bicubic_ssim[0]:.3f}" if bicubic_ssim and model_ssim else "")
            above = next((x for x in reversed(lines[:i]) if x.strip()), "")
            protocol = re.search(r"\(([^)]*)\)", above)
            on = f" ({protocol.group(1)})" if protocol else ""
            return (f"**Model: {title}.** Measured{on}: mean PSNR {model:.2f} dB vs {bicubic:.2f} dB for pixel "
                    f"bicubic ({model - bicubic:+.2f} dB{ssim}), from its model card.")
        break
    return f"**Model: {title}.**"


def example_photos() -> list[Path]:
    """scikit-image's shipped sample photos (its ``data`` folder), if scikit-image is installed (the ``eval``
    extra); none otherwise: the page works without them."""
    try:
        import skimage.data
    except ImportError:
        return []
    folder = Path(skimage.data.__file__).parent
    return [folder / name for name in EXAMPLE_PHOTOS if (folder / name).is_file()]


# ---------------------------------------------------------------------------------------------------- features tab
class FeatureStrips:
    """The Features tab's model: an :class:`UPLiFTFeatureExtractor`, or the reason there is none.

    Args:
        extractor: a loaded extractor, or ``None``.
        unavailable: why there is no extractor (logged by the server; the tab is then not shown).
        max_side: images are resized so that their longer side is at most this many pixels first.
        iterations: UPLiFT 2x steps in the strip.
    """

    def __init__(self, extractor=None, unavailable: str | None = None, max_side: int = 448, iterations: int = 4):
        self.extractor = extractor
        self.unavailable = unavailable
        self.max_side = max_side
        self.iterations = iterations
        self._lock = threading.Lock()

    @classmethod
    def load(cls, backbone: str | None, backbone_weights: str | None = None, upsampler: str | None = None,
             device=None, **kwargs) -> FeatureStrips:
        """Try to load a DINO extractor; on failure keep the reason (paths stripped) for the server log."""
        how = ("Start the page with a backbone, e.g. `uplift-diffusion serve --backbone dinov2-s14` (downloads "
               "timm's DINOv2 ViT-S/14 and its published UPLiFT upsampler from the Hugging Face Hub), or offline with "
               "local files: `--backbone dinov2-s14 --backbone-weights model.safetensors --features-upsampler "
               "uplift_dinov2-s14.safetensors`.")
        if backbone is None:
            return cls(unavailable=f"No DINO backbone was requested. {how}", **kwargs)
        try:
            from uplift_diffusion.features import UPLiFTFeatureExtractor

            extractor = UPLiFTFeatureExtractor.from_pretrained(backbone, backbone=backbone_weights,
                                                               upsampler=upsampler, device=device)
        except Exception as err:  # offline, missing timm, wrong files: the page still serves the Upscale tab
            logger.warning("features tab disabled: %s", err)
            reason = type(err).__name__ if isinstance(err, (OSError, ImportError)) else "the files do not fit"
            return cls(unavailable=f"The DINO backbone {backbone!r} could not be loaded ({reason}). {how}", **kwargs)
        return cls(extractor=extractor, **kwargs)

    def strip(self, path: str | Path) -> Image.Image:
        if self.extractor is None:
            raise PageError(self.unavailable)
        name = Path(path).name
        try:
            image = load_image(path, name=name)
        except ValueError:
            raise PageError(f"{name} is not an image this page can read") from None
        scale = self.max_side / max(image.size)
        if scale < 1:
            image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
        if min(image.size) < self.extractor.patch_size:
            raise PageError(f"{name} is {image.width}×{image.height} pixels, smaller than one "
                            f"{self.extractor.patch_size}×{self.extractor.patch_size} patch of the backbone")
        from uplift_diffusion.features.pca import extractor_pca_strip

        with self._lock:
            return extractor_pca_strip(self.extractor, image, iterations=self.iterations)


# ---------------------------------------------------------------------------------------------------- the page
def _user_message(err: Exception) -> str:
    """PageError as is (logged as one line: the visitor's mistake, not the server's); anything else as a generic
    sentence, its traceback in the server log (a real bug)."""
    if isinstance(err, PageError):
        logger.warning("request refused: %s", err)
        return str(err)
    logger.error("request failed", exc_info=err)
    return f"Something went wrong on the server ({type(err).__name__}); the details are in the server log."


def _message(title: str, lines: Sequence[str]) -> str:
    return f"### {title}\n\n" + "\n\n".join(f"⚠ {line}" for line in lines)


def scale_radio(choices, **kwargs) -> gr.Radio:
    """The scale radio, documented in the API as what it accepts: an integer, 2, 4 or 8 (Gradio's Radio documents
    every choice as a string, which its own check then refuses); a numeric string is accepted too. (No JSON-schema
    ``enum``: gradio_client renders any enum as a Literal of strings.) The two methods are set on the instance: a
    ``gr.Radio`` subclass would make Gradio write a ``.pyi`` stub beside this module at every import."""
    radio = gr.Radio(choices, **kwargs)
    allowed = ", ".join(str(value) for _, value in radio.choices)
    radio_preprocess = radio.preprocess

    def api_info() -> dict:
        return {"type": "integer", "title": "Scale", "description": f"upscaling factor: {allowed}"}

    def preprocess(payload):
        if isinstance(payload, str) and payload.strip().isdigit():
            payload = int(payload)
        return radio_preprocess(payload)

    radio.api_info, radio.preprocess = api_info, preprocess
    return radio


def build_demo(upscaler: PageUpscaler, features: FeatureStrips, title: str = "UPLiFT upscaler",
               model_card: str | Path | None = None, model_name: str = "UPLiFT") -> gr.Blocks:
    """The page: the Upscale part (and a Features tab when an extractor is loaded) wired to the shared models, and
    the ``/upscale`` API endpoint (queue settings are applied by ``launch``).

    Args:
        upscaler: the shared upscaler.
        features: the Features tab's model; without an extractor the tab is not shown (the reason is logged).
        title: the page's title.
        model_card: the upsampler's model card (README.md), for the line naming the model and its measured quality.
        model_name: the model's name when there is no card.
    """
    limits = upscaler.limits

    def check_request(files) -> None:
        if not files:
            raise PageError("Add one or more photos first (or click an example).")
        if len(files) > limits.max_files:
            raise PageError(f"{len(files)} photos at once is more than this page takes ({limits.max_files}); "
                            f"send them in smaller groups.")

    def expected_costs(files, scale: int, tiles: str) -> list[float]:
        costs = []
        for path in files:
            try:
                width, height = image_size(path)
                tile = None if tiles in ("auto", "off") else int(tiles)
                costs.append(upscaler.expected_cost((width, height), scale, tile))
            except Exception:  # unreadable: upscale_file will say why; it takes no time on the bar
                costs.append(0.0)
        return costs

    def upscale_all(files, scale, color_correction, tiles, report) -> tuple[list[UpscaleResult], list[str]]:
        """Every photo of the request (one bar over all of them); the results and the problems, in order."""
        check_request(files)
        upscaler.prune()
        scale = int(scale)
        names = [Path(path).name for path in files]
        bar = RequestProgress(report, names, expected_costs(files, scale, tiles))
        results, problems = [], []
        for index, path in enumerate(files):
            bar.start_photo(index)
            try:
                results.append(upscaler.upscale_file(path, scale, bool(color_correction), tiles, progress=bar.work))
            except Exception as err:  # one bad photo does not cost the others their results
                problems.append(_user_message(err))
            bar.finish_photo(index)
        return results, problems

    def shown(result: UpscaleResult, compare: str, center=None):
        """What the page shows for one result: the slider's labels, the slider, zoomed crops, the 1:1 view."""
        return (gr.update(value=slider_labels(compare), visible=True), slider_pair(result, compare),
                gr.update(value=zoomed_crops(result, center), visible=True),
                gr.update(value=str(result.output_png), visible=True))

    # [message, slider labels, slider, crops, 1:1 view, results gallery, downloads, download all, summary] emptied
    hidden = gr.update(visible=False, value=None)
    cleared = (gr.update(visible=False, value=""), gr.update(visible=False), None, hidden, hidden, hidden, hidden,
               hidden, "")

    def run_page(files, scale, color_correction, tiles, compare, progress=PROGRESS):
        # First the old results go (a new run must not look finished), then the bar, then the new results.
        yield [], 0, None, *cleared
        try:
            results, problems = upscale_all(files, scale, color_correction, tiles, progress)
        except Exception as err:
            yield [], 0, None, gr.update(value=_message("Nothing was upscaled", [_user_message(err)]),
                                         visible=True), *cleared[1:]
            return
        if not results:
            yield [], 0, None, gr.update(value=_message("Nothing was upscaled", problems), visible=True), \
                *cleared[1:]
            return
        scale = int(scale)
        lines = [r.summary(scale) for r in results]
        title = f"{len(problems)} of {len(files)} photos could not be upscaled"
        message = gr.update(value=_message(title, problems), visible=True) if problems else gr.update(visible=False)
        several = len(results) > 1
        yield (
            results, 0, None, message, *shown(results[0], compare),
            gr.Gallery([(str(r.output_png), f"{r.name} → {r.output_size[0]}×{r.output_size[1]}") for r in results],
                       visible=several),  # a choice to make only with several photos
            gr.update(value=[str(r.output_png) for r in results], visible=True),
            gr.update(value=str(upscaler.zip_results(results, scale)) if several else None, visible=several),
            "\n\n".join(lines),
        )

    def show(results, index, compare, center):
        if not results:
            return gr.update(value=slider_labels(compare)), None, None, None
        result = results[min(index, len(results) - 1)]
        if not result.output_png.is_file():  # pruned after KEEP_RESULTS_S
            raise gr.Error("This result has expired from the server; upscale the photo again.",
                           title="Result expired", print_exception=False)
        return shown(result, compare, center)

    def select(results, compare, event: gr.SelectData):
        return (event.index, None, *show(results, event.index, compare, None))

    def place_crop(results, index, event: gr.SelectData):
        """A click on the full-size view: the zoomed crops move there (``event.index`` is the pixel clicked)."""
        if not results:
            return None, None
        center = (int(event.index[0]), int(event.index[1]))
        return center, zoomed_crops(results[min(index, len(results) - 1)], center)

    def api_upscale(files, scale, color_correction, tiles, progress=PROGRESS):
        try:
            results, problems = upscale_all(files, scale, color_correction, tiles, progress)
        except Exception as err:
            raise gr.Error(_user_message(err), title="Nothing was upscaled", print_exception=False) from None
        if not results:
            raise gr.Error(" ".join(problems), title="Nothing was upscaled", print_exception=False)
        lines = [r.summary(int(scale), markdown=False) for r in results] + [f"not upscaled: {p}" for p in problems]
        return [str(r.output_png) for r in results], "\n".join(lines)

    def run_features(path):
        if not path:
            raise gr.Error("Add a photo first.", title="No photo", print_exception=False)
        try:
            return features.strip(path)
        except Exception as err:
            raise gr.Error(_user_message(err), title="No features", print_exception=False) from None

    examples = example_photos()
    with gr.Blocks(title=title, delete_cache=(600, KEEP_RESULTS_S)) as demo:
        gr.Markdown(f"# {title}\nLatent super-resolution with UPLiFT: the photo goes through the VAE's latent space, "
                    f"UPLiFT doubles the latents' resolution once per 2×, the VAE decodes the result.\n\n"
                    f"{model_card_line(model_card, model_name)}", elem_id="intro")
        results_state = gr.State([])
        shown_index = gr.State(0)
        crop_center = gr.State(None)
        # The Upscale part is the page; it becomes a tab only when there is a second tab to show.
        with gr.Tabs() if features.extractor is not None else gr.Column():
            with gr.Tab("Upscale") if features.extractor is not None else gr.Column():
                with gr.Row(equal_height=False):
                    with gr.Column(scale=1, min_width=280):
                        files = gr.File(label="Photos", file_count="multiple", file_types=["image"],
                                        type="filepath", elem_id="photos")
                        if examples:
                            gr.Examples([[[str(path)]] for path in examples], inputs=[files],
                                        example_labels=[path.stem for path in examples], elem_id="examples",
                                        label="Or try a sample photo (scikit-image)")
                        scale = scale_radio(SCALE_CHOICES, value=2, label="Scale", elem_id="scale",
                                           info=f"results above {_megapixels(limits.max_output_pixels)} are refused "
                                                f"(8× suits small images)")
                        color = gr.Checkbox(value=True, label="Colour correction", elem_id="color",
                                            info="the model's own correction: colours and large shapes from the "
                                                 "input, detail from UPLiFT")
                        tiles = gr.Dropdown(TILE_CHOICES, value="auto", label="Tile size", elem_id="tiles",
                                            info=f"auto: whole image up to "
                                                 f"{_megapixels(limits.max_untiled_output_pixels)} of output, "
                                                 f"{limits.auto_tile_size}-px tiles above")
                        go = gr.Button("Upscale", variant="primary", elem_id="upscale")
                        gr.Markdown(f"Up to {limits.max_files} photos of at most "
                                    f"{_megapixels(limits.max_input_pixels)} each.")
                    with gr.Column(scale=2, min_width=300):
                        message = gr.Markdown(visible=False, elem_id="message")
                        gallery = gr.Gallery(label="Results (click one to view it below)", columns=6, rows=1,
                                             height=160, elem_id="results", format="png", object_fit="cover",
                                             interactive=False, visible=False)
                        labels = gr.HTML(slider_labels("input"), elem_id="slider-labels", visible=False)
                        slider = gr.ImageSlider(label="before / after (drag)", type="pil", format="png",
                                                elem_id="slider", interactive=False, max_height=600)
                        compare = gr.Radio(COMPARE_CHOICES, value="input", label="Left of the slider",
                                           elem_id="compare")
                        info = gr.Markdown(elem_id="info")
                        crops = gr.Gallery(label="Zoomed: the most detailed region (click the full-size view "
                                                 "below to zoom elsewhere)", columns=3, rows=1, height="auto",
                                           elem_id="crops", visible=False, format="png", object_fit="contain",
                                           interactive=False)
                        full = gr.Image(label="UPLiFT result at 1:1 (scroll; click to zoom there)", type="filepath",
                                        elem_id="full", interactive=False, format="png", buttons=[], visible=False)
                        download = gr.File(label="Download PNG", file_count="multiple", elem_id="download",
                                           interactive=False, visible=False)
                        download_all = gr.DownloadButton("Download all (zip)", elem_id="download-all",
                                                         visible=False)
                        summary = gr.Markdown(visible=False, label="Summary")  # the API's second output
            if features.extractor is not None:
                with gr.Tab("Features"):
                    gr.Markdown(f"Pixel-dense DINO features with UPLiFT: one joint PCA over the backbone's tokens and "
                                f"every UPLiFT step (same colour = same feature), images resized to at most "
                                f"{features.max_side} px.")
                    with gr.Row():
                        feature_input = gr.Image(label="Photo", type="filepath", elem_id="feature-photo")
                        strip = gr.Image(label="image | backbone | UPLiFT steps", type="pil", format="png",
                                         elem_id="strip", interactive=False)
                    feature_go = gr.Button("Show features", variant="primary", elem_id="features-go")
                    feature_go.click(run_features, feature_input, strip, concurrency_id="model", api_name="features")
        go.click(run_page, [files, scale, color, tiles, compare],
                 [results_state, shown_index, crop_center, message, labels, slider, crops, full, gallery, download,
                  download_all, info],
                 concurrency_id="model", show_progress_on=[slider], api_visibility="private")
        compare.change(show, [results_state, shown_index, compare, crop_center], [labels, slider, crops, full],
                       api_visibility="private")
        gallery.select(select, [results_state, compare], [shown_index, crop_center, labels, slider, crops, full],
                       api_visibility="private")
        full.select(place_crop, [results_state, shown_index], [crop_center, crops], api_visibility="private")
        # The API: the page's inputs, typed as accepted, and two named outputs (the PNGs, a summary).
        gr.on(triggers=[], fn=api_upscale, inputs=[files, scale, color, tiles], outputs=[download, summary],
              api_name="upscale", concurrency_id="model", show_progress="hidden",
              api_description="Upscale photos with UPLiFT: returns one PNG per photo (in order) and a summary line "
                              "per photo. scale: 2, 4 or 8; tiles: 'auto', 'off' or a tile size in pixels.")
    return demo


def launch(demo: gr.Blocks, limits: PageLimits, host: str = "127.0.0.1", port: int = 7860, block: bool = True,
           **kwargs) -> str:
    """Queue (bounded, one request on the models at a time) and serve ``demo``; prints and returns the page's
    address once it answers, then serves until Ctrl+C (``block=True``) or returns (``demo.close()`` stops it)."""
    demo.queue(max_size=limits.queue_size, default_concurrency_limit=1)
    demo.launch(server_name=host, server_port=port, prevent_thread_lock=True, show_error=False, ssr_mode=False,
                quiet=True, max_file_size="50mb", footer_links=["api"], css=PAGE_CSS, **kwargs)
    url = f"http://{host}:{demo.server_port}/"
    print(f"uplift-diffusion serve: open {url} (Ctrl+C stops the server)", flush=True)
    if block:
        demo.block_thread()
    return url
