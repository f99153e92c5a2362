"""The web page of ``uplift-diffusion serve``: a Gradio app for people who do not write Python.

Two tabs share one process and one instance of each model:

* **Upscale**: one or more photos, 2x / 4x / 8x (8x only while the output stays under the page's pixel limit),
  colour correction on / off, optional tiles; a before / after slider (the input, or pixel-bicubic, against UPLiFT),
  the same crop zoomed, PNG downloads, time taken and output sizes.
* **Features**: the joint-PCA strip (``image | backbone | step 1 | ... | step n``) of the predictive sibling, when a
  DINO backbone could be loaded; otherwise the tab says why and how to pass one.

Everything a request can get wrong (not an image, too small, too large, ...) becomes a message in the page in plain
words; server file paths never appear in them (uploads live in temporary folders), and the server keeps serving.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
import uuid
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import torch
from PIL import Image

from uplift_diffusion.utils.errors import ImageConversionWarning
from uplift_diffusion.utils.images import image_size, load_image
from uplift_diffusion.utils.io import save_image_atomic

logger = logging.getLogger(__name__)

SCALE_CHOICES = [("2×", 2), ("4×", 4), ("8×", 8)]
TILE_CHOICES = [("auto", "auto"), ("off (whole image)", "off"), ("256 px", "256"), ("512 px", "512"),
                ("1024 px", "1024")]
COMPARE_CHOICES = [("input (enlarged, nearest)", "input"), ("pixel bicubic", "bicubic")]
CROP_SIZE = 192  # output pixels per side of the zoomed crop
ZOOM_DISPLAY = 384  # the zoomed crops are enlarged (nearest) to at least this many pixels per side
KEEP_RESULTS_S = 3600  # result files older than this are deleted from the page's work folder
TRACK_PROGRESS = gr.Progress(track_tqdm=True)  # Gradio fills the bar from the pipeline's tqdm bars


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
    note: str | None = None  # how the upload was converted to RGB, if it was

    def summary(self, scale: int) -> str:
        (w, h), (ow, oh) = self.input_size, self.output_size
        tiles = f", {self.tile_size}-px tiles" if self.tile_size else ""
        note = f" ({self.note})" if self.note else ""
        return f"**{self.name}**: {w}×{h} → {ow}×{oh} ({scale}×{tiles}) in {self.seconds:.2f} s{note}"


class PageUpscaler:
    """Upscales uploaded photos with one shared :class:`UPLiFTSuperResolutionPipeline`.

    Args:
        pipeline: the super-resolution pipeline every request uses.
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

    # ------------------------------------------------------------------ checks
    def read(self, path: str | Path) -> tuple[Image.Image, str | None]:
        """An uploaded file as RGB, after checking its size from the header (before decoding the pixels), and the
        conversion it needed (e.g. ``converted RGBA to RGB ...``; ``None``: it was RGB)."""
        name, limits = Path(path).name, self.limits
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

    # ------------------------------------------------------------------ work
    def upscale_file(self, path: str | Path, scale: int, color_correction: bool, tiles: str) -> UpscaleResult:
        """Upscale one uploaded file; PageError (in the page's words) for anything wrong with the request."""
        name = Path(path).name
        image, note = self.read(path)
        tile_size = self.tile_size_for(image, scale, tiles, name)
        try:
            self.pipeline.check_inputs(scale, tile_size, None, "pil")
        except ValueError as err:
            raise PageError(f"{name}: {err}") from None
        with self._lock:
            start = time.perf_counter()
            generator = torch.Generator(self.pipeline.device).manual_seed(self.seed)
            result = self.pipeline(image, scale=scale, generator=generator, tile_size=tile_size,
                                   color_correction=color_correction).images[0]
            seconds = time.perf_counter() - start
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
        return UpscaleResult(name=name, input_size=image.size, output_size=result.size, seconds=seconds,
                             tile_size=tile_size, note=note, **files)

    def prune(self, max_age_s: float = KEEP_RESULTS_S) -> None:
        """Delete result folders older than ``max_age_s`` (the page's files do not pile up)."""
        cutoff = time.time() - max_age_s
        for folder in self.workdir.iterdir():
            if folder.is_dir() and folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder, ignore_errors=True)


def zoomed_crops(result: UpscaleResult) -> list[tuple[Image.Image, str]]:
    """The same centre crop of the input, pixel-bicubic and UPLiFT, enlarged (nearest) so that pixels show."""
    width, height = result.output_size
    side = min(CROP_SIZE, width, height)
    left, top = (width - side) // 2, (height - side) // 2
    box = (left, top, left + side, top + side)
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


class FeatureStrips:
    """The Features tab's model: an :class:`UPLiFTFeatureExtractor`, or the reason there is none.

    Args:
        extractor: a loaded extractor, or ``None``.
        unavailable: why there is no extractor, shown in the tab (with how to pass one).
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
        """Try to load a DINO extractor; on failure keep the reason (paths stripped) for the tab."""
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
            return cls(unavailable=f"The DINO backbone {backbone!r} could not be loaded ({reason}; details in the "
                                   f"server log). {how}", **kwargs)
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


def _user_message(err: Exception) -> str:
    """PageError as is; anything else as a generic sentence (the traceback goes to the server log only)."""
    if isinstance(err, PageError):
        return str(err)
    logger.error("request failed", exc_info=err)
    return f"Something went wrong on the server ({type(err).__name__}); the details are in the server log."


def build_demo(upscaler: PageUpscaler, features: FeatureStrips, title: str = "UPLiFT upscaler") -> gr.Blocks:
    """The page: Upscale and Features tabs wired to the shared models (queue settings are applied by ``launch``)."""
    limits = upscaler.limits

    def run_upscale(files, scale, color_correction, tiles, compare, progress=TRACK_PROGRESS):
        if not files:
            raise gr.Error("Add one or more photos first.")
        if len(files) > limits.max_files:
            raise gr.Error(f"{len(files)} photos at once is more than this page takes ({limits.max_files}); "
                           f"send them in smaller groups.")
        upscaler.prune()
        results, problems = [], []
        for index, path in enumerate(files):
            progress(index / len(files), desc=f"{Path(path).name} ({index + 1}/{len(files)})")
            try:
                results.append(upscaler.upscale_file(path, int(scale), bool(color_correction), tiles))
            except Exception as err:  # one bad photo does not cost the others their results
                problems.append(_user_message(err))
        if not results:
            raise gr.Error(" ".join(problems), title="Nothing was upscaled")
        for problem in problems:
            gr.Warning(problem)
        lines = [r.summary(int(scale)) for r in results] + [f"⚠ {p}" for p in problems]
        first = results[0]
        return (
            results,
            slider_pair(first, compare),
            zoomed_crops(first),
            [str(r.output_png) for r in results],
            gr.Gallery([(str(r.output_png), f"{r.name} → {r.output_size[0]}×{r.output_size[1]}") for r in results],
                       visible=len(results) > 1),  # a choice to make only with several photos
            "\n\n".join(lines),
        )

    def show(results, index, compare):
        if not results:
            return None, None
        result = results[min(index, len(results) - 1)]
        if not result.output_png.is_file():  # pruned after KEEP_RESULTS_S
            raise gr.Error("This result has expired from the server; upscale the photo again.")
        return slider_pair(result, compare), zoomed_crops(result)

    def select(results, compare, event: gr.SelectData):
        return (event.index, *show(results, event.index, compare))

    def run_features(path):
        if not path:
            raise gr.Error("Add a photo first.")
        try:
            return features.strip(path)
        except Exception as err:
            raise gr.Error(_user_message(err)) from None

    with gr.Blocks(title=title, delete_cache=(600, KEEP_RESULTS_S)) as demo:
        gr.Markdown(f"# {title}\nLatent super-resolution with UPLiFT: the photo goes through the VAE's latent space, "
                    f"UPLiFT doubles the latents' resolution once per 2×, the VAE decodes the result.")
        results_state = gr.State([])
        shown_index = gr.State(0)
        with gr.Tab("Upscale"):
            with gr.Row():
                with gr.Column(scale=1):
                    files = gr.File(label="Photos", file_count="multiple", file_types=["image"], type="filepath",
                                    elem_id="photos")
                    scale = gr.Radio(SCALE_CHOICES, value=2, label="Scale", elem_id="scale",
                                     info=f"results above {_megapixels(limits.max_output_pixels)} are refused "
                                          f"(8× suits small images)")
                    color = gr.Checkbox(value=True, label="Colour correction", elem_id="color",
                                        info="match the input's colour means")
                    tiles = gr.Dropdown(TILE_CHOICES, value="auto", label="Tile size", elem_id="tiles",
                                        info=f"auto: whole image up to {_megapixels(limits.max_untiled_output_pixels)}"
                                             f" of output, {limits.auto_tile_size}-px tiles above")
                    go = gr.Button("Upscale", variant="primary", elem_id="upscale")
                    gr.Markdown(f"Up to {limits.max_files} photos of at most "
                                f"{_megapixels(limits.max_input_pixels)} each.")
                with gr.Column(scale=2):
                    slider = gr.ImageSlider(label="before / after (drag)", type="pil", format="png",
                                            elem_id="slider", interactive=False, max_height=600)
                    compare = gr.Radio(COMPARE_CHOICES, value="input", label="Left of the slider", elem_id="compare")
                    info = gr.Markdown(elem_id="info")
                    crops = gr.Gallery(label="The same centre crop, zoomed", columns=3, rows=1, height=300,
                                       elem_id="crops",
                                       format="png", object_fit="contain", interactive=False)
                    gallery = gr.Gallery(label="Results (click one to view it)", columns=6, rows=1, height=160,
                                         elem_id="results", format="png", object_fit="cover", interactive=False,
                                         visible=False)
                    download = gr.File(label="Download PNG", file_count="multiple", elem_id="download",
                                       interactive=False)
        go.click(run_upscale, [files, scale, color, tiles, compare],
                 [results_state, slider, crops, download, gallery, info], concurrency_id="model",
                 show_progress_on=[slider]).then(
            lambda: 0, None, shown_index)
        compare.change(show, [results_state, shown_index, compare], [slider, crops])
        gallery.select(select, [results_state, compare], [shown_index, slider, crops])

        with gr.Tab("Features"):
            if features.extractor is None:
                gr.Markdown(f"**Features are not available on this server.** {features.unavailable}",
                            elem_id="features-unavailable")
            else:
                gr.Markdown(f"Pixel-dense DINO features with UPLiFT: one joint PCA over the backbone's tokens and "
                            f"every UPLiFT step (same colour = same feature), images resized to at most "
                            f"{features.max_side} px.")
                with gr.Row():
                    feature_input = gr.Image(label="Photo", type="filepath", elem_id="feature-photo")
                    strip = gr.Image(label="image | backbone | UPLiFT steps", type="pil", format="png",
                                     elem_id="strip", interactive=False)
                feature_go = gr.Button("Show features", variant="primary", elem_id="features-go")
                feature_go.click(run_features, feature_input, strip, concurrency_id="model")
    return demo


def launch(demo: gr.Blocks, limits: PageLimits, host: str = "127.0.0.1", port: int = 7860, block: bool = True,
           **kwargs) -> str:
    """Queue (bounded, one request on the models at a time) and serve ``demo``; prints and returns the page's
    address once it answers, then serves until Ctrl+C (``block=True``) or returns (``demo.close()`` stops it)."""
    demo.queue(max_size=limits.queue_size, default_concurrency_limit=1)
    demo.launch(server_name=host, server_port=port, prevent_thread_lock=True, show_error=False, ssr_mode=False,
                quiet=True, max_file_size="50mb", footer_links=[], **kwargs)
    url = f"http://{host}:{demo.server_port}/"
    print(f"uplift-diffusion serve: open {url} (Ctrl+C stops the server)", flush=True)
    if block:
        demo.block_thread()
    return url
