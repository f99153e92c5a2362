"""The page's work: an uploaded file checked against the page's limits and read (:meth:`PageUpscaler.read`), the
tile size chosen (:meth:`PageUpscaler.tile_size_for`), the shared pipeline run under a lock with its multiply-adds
counted (the progress bar's unit), and the result's files written (the download, the slider's halves)."""

from __future__ import annotations

import math
import shutil
import tempfile
import threading
import time
import uuid
import warnings
import weakref
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from uplift_diffusion import fast_paths
from uplift_diffusion.app.messages import PageError, megapixels
from uplift_diffusion.app.progress import SAVING, JobCancelled, OpCosts, WorkCounter, WorkPlan
from uplift_diffusion.pipelines.common import color_correction_for, output_size
from uplift_diffusion.utils.errors import ImageConversionWarning
from uplift_diffusion.utils.images import image_size, load_image
from uplift_diffusion.utils.io import atomic_write, save_image_atomic

SCALES = (2, 4, 8)  # UPLiFT's own steps, the page's first choices
MAX_SCALE = 8  # the largest factor the page takes (any number from 1: UPLiFT to the next step, then resized)
KEEP_RESULTS_S = 3600  # result files older than this are deleted from the page's work folder
CROP_SIZE = 192  # output pixels per side of the zoomed crop (the page's detail view)
ZOOM_DISPLAY = 384  # the zoomed crops are enlarged (nearest) to at least this many pixels per side
# zlib level of the page's PNGs: level 1 writes a 2 MP photo 4-5x faster than PIL's default 6 for ~20 % more bytes
# (the same pixels), so the bar does not stand still while the result is saved
PNG_COMPRESS_LEVEL = 1
ENCODER, UPSAMPLER, DECODER = "encoding", "UPLiFT", "decoding"  # parts of the work (and the bar's labels)
FINISHING = "finishing"  # the pipeline's colour correction after the decoder (its own part: it grows with the picture)
TAILS = {DECODER: FINISHING}  # WorkCounter's tails: convolutions on no part's weights after the decoder's finish it
CALIBRATION_SIDE = 64  # pixels: the small photo whose work per pixel sizes the progress bar before a first real run
FINISHING_PIXELS = 1024 * 1024  # output pixels: the finishing and the files timed once at a realistic size, where
# their cost per pixel shows (on the calibration photos it is mostly fixed costs)


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
    crops: tuple[Path, ...] = ()  # the zoomed crops of input, bicubic and UPLiFT at ``detail_center``

    def summary(self, scale: float, markdown: bool = True) -> str:
        (w, h), (ow, oh) = self.input_size, self.output_size
        tiles = f", {self.tile_size}-px tiles" if self.tile_size else ""
        note = f" ({self.note})" if self.note else ""
        name = f"**{self.name}**" if markdown else self.name
        return f"{name}: {w}×{h} → {ow}×{oh} ({scale:g}×{tiles}) in {self.seconds:.2f} s{note}"


def page_scale(value) -> int | float:
    """The upscaling factor a visitor or an API call gave (a number, or its text), checked: any number from 1 to
    MAX_SCALE; a whole number as an int (2.0 is 2: the same result, file name and measured plan). PageError naming
    the value otherwise."""
    number = value
    if isinstance(value, str):
        try:
            number = float(value.strip().removesuffix("×").removesuffix("x"))
        except ValueError:
            number = None
    if (isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number)
            or not 1 <= number <= MAX_SCALE):
        raise PageError(f"scale must be a number from 1 to {MAX_SCALE} (e.g. 1.5, 2, 3, 4), not {value!r}")
    return int(number) if float(number).is_integer() else float(number)


def scaled_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """(width, height) of a ``size`` photo upscaled by ``scale``: the pipeline's own rounding."""
    height, width = output_size(size[1], size[0], scale, None)
    return width, height


def _photo_like(side: int, rng: np.random.Generator) -> Image.Image:
    """A synthetic ``side``² RGB picture whose PNGs take about as long to write as a photo's: random phases under an
    amplitude falling as 1 / f² (smooth regions, soft edges). Noise's files take about twice as long (deflate finds
    nothing to repeat), and the files are a third of the time after the decoder."""
    f = np.hypot(np.fft.fftfreq(side)[:, None], np.fft.rfftfreq(side)[None, :])
    amplitude = 1 / np.maximum(f, 1 / side) ** 2
    channels = []
    for _ in range(3):
        x = np.fft.irfft2(amplitude * np.exp(2j * np.pi * rng.random(amplitude.shape)), s=(side, side))
        channels.append((x - x.mean()) / max(x.std(), 1e-12))
    return Image.fromarray(np.clip(np.stack(channels, -1) * 50 + 128, 0, 255).astype(np.uint8))


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


def zoomed_side(box: tuple[int, int, int, int]) -> int:
    """Pixels per side of a zoomed crop of ``box``: enlarged (nearest) to at least ZOOM_DISPLAY, by a whole factor."""
    side = box[2] - box[0]
    return side * max(1, -(-ZOOM_DISPLAY // side))


def _stop_if(cancelled: Callable[[], bool] | None) -> Callable[[int, str | None], None] | None:
    """A WorkCounter callback that raises :class:`JobCancelled` once ``cancelled()`` is True."""
    if cancelled is None:
        return None

    def check(_done: int, _part: str | None) -> None:
        if cancelled():
            raise JobCancelled("the request was cancelled")

    return check


def _crop_pixels(output_size: tuple[int, int]) -> int:
    """Pixels of one zoomed crop of an output of ``output_size`` (the crop box's side does not depend on where it
    is)."""
    return zoomed_side(crop_box(output_size, (0, 0))) ** 2


def zoomed(image: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
    """The crop ``box`` of ``image`` enlarged (nearest) so that its pixels show."""
    side = zoomed_side(box)
    return image.crop(box).resize((side, side), Image.NEAREST)


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
        self._per_pixel: dict[tuple[int, int | None], WorkPlan] = {}  # measured per input pixel, per (scale, tile)
        # Seconds per pixel of the zoomed crops, per (scale, tile): their size is capped (CROP_SIZE, ZOOM_DISPLAY),
        # so a plan measured on a small photo must not scale their time with the photo's pixels.
        self._crop_rate: dict[tuple[int, int | None], float] = {}
        # Seconds per call of each part, whatever the photo's size (Python and kernel set-up), per scale: fitted on
        # two calibration photos, so that the time per pixel measured on a small photo does not include them.
        self._fixed: dict[float, dict[str | None, float]] = {}
        # Per (scale, tiles) whose plan is still the calibration's: each op's seconds against the photo's size.
        self._op_costs: dict[tuple[int, int | None], OpCosts] = {}
        # Per scale, where the finishing's time falls along its ops, from the realistic-size run of
        # :meth:`_time_finishing` (the calibration photos are too small: their finishing is mostly fixed costs).
        self._finishing_profile: dict[float, dict[str, tuple[tuple[float, ...], tuple[float, ...]]]] = {}

    # ------------------------------------------------------------------ checks
    def check(self, path: str | Path) -> tuple[int, int]:
        """An uploaded file's (width, height) from its header, checked against the page's limits (PageError):
        cheap enough to run on every upload, before any Upscale."""
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
            raise PageError(f"{name} is {width}×{height} ({megapixels(width * height)}), over this page's limit of "
                            f"{megapixels(limits.max_input_pixels)} per photo: downscale it first, or upscale it on "
                            f"your own machine in tiles (uplift-diffusion upscale --tile-size 512)")
        return width, height

    def read(self, path: str | Path) -> tuple[Image.Image, str | None]:
        """An uploaded file as RGB, after :meth:`check` (before decoding the pixels), and the conversion it needed
        (e.g. ``converted RGBA to RGB ...``; ``None``: it was RGB)."""
        name = Path(path).name
        self.check(path)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ImageConversionWarning)
                image = load_image(path, name=name)
        except ValueError:  # the decoder's reason may name the server path: say the same in the page's words
            raise PageError(f"{name} could not be decoded: it is corrupt or truncated") from None
        notes = [str(w.message).removeprefix(f"{name}: ") for w in caught
                 if issubclass(w.category, ImageConversionWarning)]
        return image, "; ".join(notes) or None

    def tile_size_for(self, size: tuple[int, int], scale: float, tiles: str, name: str) -> int | None:
        """The tile size to run a photo of ``size`` (width, height) with (``None``: whole image); PageError when the
        result would be too large. The page's plan for the progress bar asks it too: a plan for another tiling
        than the run's counts the wrong work."""
        limits = self.limits
        width, height = size
        out_w, out_h = scaled_size(size, scale)
        out_pixels = out_w * out_h
        if out_pixels > limits.max_output_pixels:
            pixels = width * height
            smaller = [f"{s}×" for s in SCALES if pixels * s * s <= limits.max_output_pixels]
            hint = f"choose {' or '.join(smaller)}" if smaller else "downscale the photo first"
            raise PageError(f"{scale:g}× of {name} ({width}×{height}) would be {out_w}×{out_h} "
                            f"({megapixels(out_pixels)}), over this page's limit of "
                            f"{megapixels(limits.max_output_pixels)}: {hint}, or upscale it on your own machine in "
                            f"tiles (uplift-diffusion upscale --tile-size 512)")
        if tiles == "auto":
            return limits.auto_tile_size if out_pixels > limits.max_untiled_output_pixels else None
        if tiles == "off":
            if out_pixels > limits.max_untiled_output_pixels:
                raise PageError(f"{scale:g}× of {name} would be {out_w}×{out_h} ({megapixels(out_pixels)}), too large "
                                f"to compute in one piece here (limit {megapixels(limits.max_untiled_output_pixels)}):"
                                f" pick a tile size (e.g. 512 px) or a smaller scale")
            return None
        return int(tiles)

    # ------------------------------------------------------------------ cost (for the progress bar)
    def _model_parts(self) -> dict[int, str]:
        """``{weight data pointer: part}`` for the pipeline's VAE encoder, upsampler and VAE decoder."""
        parts = {}
        for module, part in ((getattr(self.pipeline.vae, "encoder", None), ENCODER),
                             (self.pipeline.upsampler, UPSAMPLER),
                             (getattr(self.pipeline.vae, "decoder", None), DECODER)):
            if module is None:
                continue
            # The fused kernels read cached forms of the weights (made on the first run): theirs too, or the
            # encoder's fused convs would belong to no part.
            for tensor in (*module.parameters(), *fast_paths.prepared_weights(module)):
                parts[tensor.data_ptr()] = part
        return parts

    def _run(self, image: Image.Image, scale: float, tile_size: int | None, color_correction: bool,
             on_work: Callable[[int, str | None], None] | None = None) -> tuple[Image.Image, WorkCounter]:
        """The pipeline's result for ``image`` and the counter of the work it took."""
        generator = torch.Generator(self.pipeline.device).manual_seed(self.seed)
        with WorkCounter(on_work, self._model_parts(), tails=TAILS) as counter:
            result = self.pipeline(image, scale=scale, generator=generator, tile_size=tile_size,
                                   color_correction=color_correction).images[0]
        return result, counter

    def _tile_work(self, size: tuple[int, int], scale: float, tile_size: int) -> dict[str, float]:
        """Per part, its work in tiles over its work on the whole photo (1 where the pipeline cannot say): the
        upsampler's tiles compute their overlaps twice, the VAE's exact tiles their halos."""
        hw, pipe = (size[1], size[0]), self.pipeline
        work = {}
        for part, method, args in ((ENCODER, "encoder_tile_work", (hw, tile_size)),
                                   (UPSAMPLER, "upsampler_tile_work", (hw, tile_size)),
                                   (DECODER, "decoder_tile_work", (hw, scale, tile_size))):
            tile_work = getattr(pipe, method, None)
            work[part] = 1.0 if tile_work is None else tile_work(*args)
        return work

    def _work_pixels(self, size: tuple[int, int]) -> int:
        """The pixels the pipeline works on for a photo of ``size``: padded to a multiple of the VAE's factor (a
        plan per photo pixel would miss the padding's work, and the bar would reach a part's end before it ends)."""
        factor = getattr(self.pipeline, "vae_scale_factor", 1)
        return -(-size[0] // factor) * factor * (-(-size[1] // factor) * factor)

    def _measure(self, key: tuple[int, int | None], pixels: int, counter: WorkCounter, saving_s: float,
                 crop_s: float, crop_pixels: int, longest_write_s: float) -> None:
        """Keep the run's work and seconds per part, per input pixel (``saving_s``: finishing the picture and writing
        the full-size files; each part's fixed seconds per call left out), and the zoomed crops' seconds per crop
        pixel: the plan for the next photo of this key."""
        fixed = self._fixed.get(key[0], {})
        macs = {part: value / pixels for part, value in counter.macs_by_part.items()}
        spent = {part: max(0.0, value - fixed.get(part, 0.0)) / pixels
                 for part, value in {**counter.seconds_by_part, SAVING: saving_s}.items()}
        longest = max(counter.longest, longest_write_s) / pixels
        self._per_pixel[key] = WorkPlan({**macs, SAVING: 1.0}, spent, longest, WorkPlan.profiles_of(counter),
                                        body_ops=dict(counter.named_ops))
        self._op_costs.pop(key, None)  # a real photo's run replaces the calibration's (and its per-op fit)
        self._crop_rate[key] = crop_s / max(crop_pixels, 1)

    def expected_plan(self, size: tuple[int, int], scale: float, tile_size: int | None = None,
                      cancelled: Callable[[], bool] | None = None) -> WorkPlan:
        """The expected work and seconds to upscale a photo of ``size``: measured per pixel on the last photo with
        the same scale and tiles, else on a small calibration photo (run once per scale, under the model lock); each
        part's fixed seconds per call, fitted on two calibration sizes after a warm-up run that pays the one-time
        costs; the zoomed crops' time by their own size (capped, whatever the photo's). ``cancelled``: checked at
        every op of the calibration runs (:class:`JobCancelled`: the request that waits for them was cancelled)."""
        pixels = self._work_pixels(size)
        for key in ((scale, tile_size), (scale, None)):
            if key in self._per_pixel:
                plan = self._per_pixel[key].scaled(pixels)
                seconds = {part: value + self._fixed.get(scale, {}).get(part, 0.0)
                           for part, value in plan.seconds.items()}
                seconds[SAVING] = (seconds.get(SAVING, 0.0)
                                   + self._crop_rate.get(key, 0.0) * 3 * _crop_pixels(scaled_size(size, scale)))
                plan = replace(plan, seconds=seconds)
                if key in self._op_costs:  # a plan from the calibration photos: each op's time at this size
                    costs = self._op_costs[key]
                    plan = replace(plan, profiles={**plan.profiles, **costs.profiles(pixels),
                                                   **self._finishing_profile.get(scale, {})},
                                   longest=costs.longest(pixels), calibrated=True,
                                   body_ops={**plan.body_ops, **costs.body_ops})
                if key != (scale, tile_size):  # measured without tiles: tiles do more work (the upsampler 1.6x for a
                    # 640-px side, the decoder's halos a few %), and their layers interleave
                    plan = plan.tiled(self._tile_work(size, scale, tile_size))
                return plan
        with self._lock:
            rng = np.random.default_rng(0)
            runs = []
            for side in (CALIBRATION_SIDE // 2, CALIBRATION_SIDE // 2, CALIBRATION_SIDE):  # the first: warm-up
                noise = Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))
                result, counter = self._run(noise, scale, None, True, on_work=_stop_if(cancelled))
                runs.append((side * side, counter, self._time_views(noise, result, scale, counter.last_op_at)))
            (small, small_run, small_timings), (large, large_run, large_timings) = runs[1:]
            at_small = {**small_run.seconds_by_part, SAVING: small_timings[0]}
            at_large = {**large_run.seconds_by_part, SAVING: large_timings[0]}
            big, at_big, self._finishing_profile[scale] = self._time_finishing(scale)
            fixed = {}
            for part, value in at_large.items():
                # each part's seconds per pixel through the larger calibration photo and, for the finishing and the
                # files, a realistic size (at the calibration sizes theirs are mostly fixed costs); else the smaller
                other, at_other = (big, at_big) if part in at_big else (small, at_small)
                per_pixel = max(0.0, (at_other.get(part, 0.0) - value) / (other - large))
                fixed[part] = max(0.0, value - per_pixel * large)
            self._fixed[scale] = fixed
            self._measure((scale, None), large, large_run, *large_timings)
            self._op_costs[(scale, None)] = OpCosts.fit(small_run, small, large_run, large, by_kind=(DECODER,))
        return self.expected_plan(size, scale, tile_size)

    def _time_finishing(self, scale: float) -> tuple[int, dict[str, float], dict]:
        """The input pixels of a synthetic photo whose result has about :data:`FINISHING_PIXELS`, the seconds of
        what follows the decoder for it, and the finishing's profile (:meth:`WorkPlan.profiles_of`). The parts end
        where a real run's counts end them: ``FINISHING`` from the decoder's end (the output check, the colour
        correction's set-up) to its last counted op, ``SAVING`` from there (the rest of the correction, the
        picture made, the files written). No model runs: a bilinear enlargement stands in for the decoded
        picture."""
        from uplift_diffusion.pipelines.super_resolution import check_output

        power = 2 ** math.ceil(math.log2(max(scale, 2)))  # UPLiFT's steps; other factors resample after them
        factor = getattr(self.pipeline, "vae_scale_factor", 8)
        side = max(factor, round(math.sqrt(FINISHING_PIXELS) / power / factor) * factor)
        photo = _photo_like(side, np.random.default_rng(1))
        reference = torch.from_numpy(np.array(photo)).permute(2, 0, 1)[None].float() / 255
        decoded = torch.nn.functional.interpolate(reference, scale_factor=power, mode="bilinear")
        mode = getattr(self.pipeline, "config", {}).get("color_correction_mode")
        correct = color_correction_for(getattr(self.pipeline, "upsampler", None), True, mode)
        with WorkCounter(tails=TAILS, part=DECODER) as counter:
            check_output(decoded, reference)
            corrected = correct(decoded, reference)
        result = Image.fromarray((corrected[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
        result = result.resize(scaled_size(photo.size, scale), Image.BICUBIC) if power != scale else result
        timings = self._time_views(photo, result, scale, counter.last_op_at)
        profiles = WorkPlan.profiles_of(counter)
        profile = {FINISHING: profiles[FINISHING]} if FINISHING in profiles else {}
        return side * side, {FINISHING: counter.seconds_by_part[FINISHING], SAVING: timings[0]}, profile

    def _time_views(self, image: Image.Image, result: Image.Image, scale: float, since: float) -> tuple:
        """:meth:`_write_views`' timings for a calibration picture, its files written to a folder then removed."""
        folder = self.workdir / uuid.uuid4().hex
        try:
            return self._write_views(folder, "calibration.png", image, result, scale, since)[1]
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def expected_cost(self, size: tuple[int, int], scale: float, tile_size: int | None = None) -> float:
        """Expected seconds to upscale a photo of ``size`` (see :meth:`expected_plan`)."""
        return self.expected_plan(size, scale, tile_size).total_seconds

    def _write_views(self, folder: Path, name: str, image: Image.Image, result: Image.Image, scale: float,
                     since: float, progress: Callable[[float, str | None], None] | None = None
                     ) -> tuple[dict, tuple[float, float, int, float]]:
        """Write the result's files into ``folder`` (the download, the slider's halves, the zoomed crops of the most
        detailed region: everything the page then shows is ready, nothing is encoded after the bar ends), reporting
        the share of their pixels written; measure the time from ``since`` (the end of the model's last counted op:
        the pipeline's own finishing is part of it) as the plan's SAVING. Returns UpscaleResult's file fields and
        the timings :meth:`_measure` keeps: the seconds to the full-size files, the crops' seconds, their pixels, and
        the longest file."""
        x, y = most_detailed_center(image, max(1, int(CROP_SIZE // scale)))
        center = (min(round(x * scale), result.width - 1), min(round(y * scale), result.height - 1))
        box = crop_box(result.size, center)
        nearest = image.resize(result.size, Image.NEAREST)
        bicubic = image.resize(result.size, Image.BICUBIC)
        stem = Path(name).stem
        files = {
            "output_png": (result, f"{stem}_x{scale:g}.png"),
            "input_view": (nearest, f"{stem}_input_nearest.png"),
            "bicubic_view": (bicubic, f"{stem}_bicubic.png"),
            "crop_input": (lambda: zoomed(nearest, box), "crop_input.png"),
            "crop_bicubic": (lambda: zoomed(bicubic, box), "crop_bicubic.png"),
            "crop_uplift": (lambda: zoomed(result, box), "crop_uplift.png"),
        }
        crop_pixels = _crop_pixels(result.size)
        weights = [result.width * result.height] * 3 + [crop_pixels] * 3
        folder.mkdir(parents=True)
        written, last, longest, full_s = 0, since, 0.0, 0.0
        for index, (weight, (picture, filename)) in enumerate(zip(weights, files.values(), strict=True)):
            save_image_atomic(picture() if callable(picture) else picture, folder / filename,
                              compress_level=PNG_COMPRESS_LEVEL)
            written += weight
            now = time.perf_counter()
            longest, last = max(longest, now - last), now
            if index == 2:  # the three full-size files written (and the pipeline's finishing before them)
                full_s = now - since
            if progress is not None:
                progress(written / sum(weights), SAVING)
        paths = {key: folder / filename for key, (_, filename) in files.items()}
        return ({"output_png": paths["output_png"], "input_view": paths["input_view"],
                 "bicubic_view": paths["bicubic_view"], "detail_center": center,
                 "crops": (paths["crop_input"], paths["crop_bicubic"], paths["crop_uplift"])},
                (full_s, last - since - full_s, 3 * crop_pixels, longest))

    # ------------------------------------------------------------------ work
    def upscale_file(self, path: str | Path, scale: float, color_correction: bool, tiles: str,
                     progress: Callable[[float, str | None], None] | None = None) -> UpscaleResult:
        """Upscale one uploaded file; PageError (in the page's words) for anything wrong with the request.

        Args:
            path: the uploaded file.
            scale: any factor from 1 to MAX_SCALE (2, 4, 8: UPLiFT's own steps; others: UPLiFT to the next step,
                then the decoded picture resized to the exact size).
            color_correction: apply the upsampler's own colour correction (on / off; the mode is the model's).
            tiles: ``"auto"``, ``"off"`` or a tile size in pixels.
            progress: called as ``progress(multiply_adds_so_far, part)`` while the pipeline runs, then as
                ``progress(share_of_the_files_written, SAVING)``.
        """
        name = Path(path).name
        image, note = self.read(path)
        tile_size = self.tile_size_for(image.size, scale, tiles, name)
        try:
            self.pipeline.check_inputs(scale, tile_size, None, "pil")
        except ValueError as err:
            raise PageError(f"{name}: {err}") from None
        with self._lock:
            start = time.perf_counter()
            result, counter = self._run(image, scale, tile_size, color_correction, progress)
            seconds = time.perf_counter() - start
        files, timings = self._write_views(self.workdir / uuid.uuid4().hex, name, image, result, scale,
                                           counter.last_op_at, progress)
        self._measure((scale, tile_size), self._work_pixels(image.size), counter, *timings)
        return UpscaleResult(name=name, input_size=image.size, output_size=result.size, seconds=seconds,
                             tile_size=tile_size, note=note, **files)

    def zip_results(self, results: Sequence[UpscaleResult], scale: float) -> Path:
        """One zip of every result PNG (names made unique), for "Download all"."""
        path = self.workdir / uuid.uuid4().hex / f"uplift_x{scale:g}_{len(results)}_photos.zip"
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
