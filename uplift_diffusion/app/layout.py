"""The page itself: its Gradio layout (the Upscale part, the Features tab, the ``/upscale`` API endpoint), the event
handlers that connect it to the shared :class:`PageUpscaler` / :class:`FeatureStrips`, and ``launch``."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from uplift_diffusion.app.features import FeatureStrips
from uplift_diffusion.app.messages import PageError, logger, megapixels, problems_markdown, user_message
from uplift_diffusion.app.progress import JobCancelled, RequestProgress, WorkPlan
from uplift_diffusion.app.upscaler import (
    KEEP_RESULTS_S,
    MAX_SCALE,
    SCALES,
    PageLimits,
    PageUpscaler,
    UpscaleResult,
    page_scale,
    scaled_size,
)
from uplift_diffusion.app.views import slider_labels, slider_pair, zoomed_crops
from uplift_diffusion.builtin import ModelQuality
from uplift_diffusion.utils.images import image_size

OTHER = "other"  # the scale radio's last choice: the factor typed in the number field below it
OTHER_NOTE = (f"Any factor from 1 to {MAX_SCALE} (e.g. 1.5 or 3): UPLiFT enlarges to the next of "
              f"{', '.join(f'{s}×' for s in SCALES)}, then the picture is resized to the exact size.")
SCALE_CHOICES = [(f"{scale}×", scale) for scale in SCALES] + [("other", OTHER)]
TILE_CHOICES = [("auto", "auto"), ("off (whole image)", "off"), ("256 px", "256"), ("512 px", "512"),
                ("1024 px", "1024")]
COMPARE_CHOICES = [("input (enlarged, nearest)", "input"), ("pixel bicubic", "bicubic")]
# A photo on the web for the API panel's example call (Gradio's own test photo, the one its image examples use).
API_EXAMPLE_PHOTO = "https://raw.githubusercontent.com/gradio-app/gradio/main/test/test_files/bus.png"
HEARTBEAT_S = 2  # seconds between the page's heartbeats: how soon a closed page stops its job
MAX_LEFT_SESSIONS = 1024  # sessions remembered as left (their late-starting jobs stop at once)
UPLOAD_CAP = "50 MB"  # Gradio's cap on one uploaded file (launch's max_file_size)
PROGRESS = gr.Progress()  # Gradio fills in the request's bar (RequestProgress reports to it)
EXAMPLE_PHOTOS = ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg")  # files shipped in skimage/data
# Before the job is sent: the result area (where the progress bar runs and the result appears) comes into view, on a
# phone too, where it is below the controls. The inputs pass through unchanged.
SHOW_RESULT_AREA_JS = """(...args) => {
    const area = document.querySelector('#result-area');
    if (area) area.scrollIntoView({block: 'start', behavior: 'instant'});
    return args;
}"""
# What the page adds to Gradio's components, kept as they change: alt text on the pictures (Gradio leaves ``alt``
# empty); one name per radio group (Gradio names each input apart, which stops the arrow keys moving between the
# choices); a before / after slider whose divider is a keyboard-operable ``role=slider`` and moves where the slider is
# clicked or tapped (Gradio's moves only when dragged: both go through its own drag handler, as a press and release
# at the new place); focus on the scale choice once chosen photos replace the upload button it was on.
PAGE_JS = r"""() => {
    const put = (el, name, value) => { if (el.getAttribute(name) !== value) el.setAttribute(name, value); };
    const caption = img => (img.closest('button')?.querySelector('.caption-label')?.textContent || '').trim();
    const altText = () => {
        const before = (document.querySelector('#slider-labels span')?.textContent || 'input').replace('◀', '');
        document.querySelectorAll('#slider img').forEach((img, i) =>
            put(img, 'alt', i === 0 ? `Before: ${before.trim()}` : 'After: the UPLiFT result'));
        document.querySelectorAll('#full img').forEach(img => put(img, 'alt', 'The UPLiFT result at full size (1:1)'));
        const crops = ['input', 'pixel bicubic', 'UPLiFT'];
        document.querySelectorAll('#crops img').forEach((img, i) => put(img, 'alt', `Zoomed crop: ${crops[i] || ''}`));
        document.querySelectorAll('#results img, #preview img, #examples img').forEach(
            img => put(img, 'alt', caption(img) || 'photo'));
    };
    const radioGroups = () => document.querySelectorAll('input[type=radio]').forEach(input => {
        const block = input.closest('.block');
        if (block) put(input, 'name', `choice-${block.id}`);
    });
    // The divider: its x in the slider (Gradio's translateX) and the shown image's box.
    const divider = wrap => wrap.querySelector('[data-testid=slider]');
    const dividerX = wrap => parseFloat((divider(wrap).style.transform.match(/translateX\(([-\d.]+)px/) || [])[1] || 0);
    const imageBox = wrap => (wrap.querySelector('img') || wrap).getBoundingClientRect();
    const moveTo = (wrap, clientX) => {
        const box = imageBox(wrap), x = Math.min(Math.max(clientX, box.left), box.right);
        const at = {bubbles: true, cancelable: true, view: window, clientX: x, clientY: box.top + 1, button: 0};
        divider(wrap).dispatchEvent(new MouseEvent('mousedown', at));
        window.dispatchEvent(new MouseEvent('mouseup', at));
        requestAnimationFrame(() => sliderState(wrap));
    };
    const sliderState = wrap => {
        const handle = divider(wrap), box = imageBox(wrap), left = box.left - wrap.getBoundingClientRect().left;
        const percent = box.width ? Math.round(100 * (dividerX(wrap) - left) / box.width) : 50;
        put(handle, 'aria-valuenow', String(Math.min(100, Math.max(0, percent))));
    };
    const slider = () => document.querySelectorAll('#slider .wrap').forEach(wrap => {
        const handle = divider(wrap);
        if (!handle || !wrap.querySelector('img')) return;
        put(handle, 'role', 'slider');
        put(handle, 'tabindex', '0');
        put(handle, 'aria-label', 'Divider between before (left) and after (right)');
        put(handle, 'aria-valuemin', '0');
        put(handle, 'aria-valuemax', '100');
        sliderState(wrap);
        if (wrap.dataset.operable) return;
        wrap.dataset.operable = '1';
        // The value follows the divider wherever it goes (drag, keys, click, the image laid out).
        new MutationObserver(() => sliderState(wrap)).observe(handle, {attributes: true, attributeFilter: ['style']});
        // A press and release in place (a click, a tap: Gradio's image takes the touches, so no click comes).
        let pressed = null;
        wrap.addEventListener('pointerdown', event => {
            pressed = event.target.closest('[data-testid=slider]') ? null : [event.clientX, event.clientY];
        });
        wrap.addEventListener('pointerup', event => {
            if (pressed && Math.hypot(event.clientX - pressed[0], event.clientY - pressed[1]) < 10)
                moveTo(wrap, event.clientX);
            pressed = null;
        });
        handle.addEventListener('keydown', event => {
            const box = imageBox(wrap), here = wrap.getBoundingClientRect().left + dividerX(wrap);
            const step = box.width / (event.key.startsWith('Page') ? 4 : 20);
            const target = {ArrowLeft: here - step, ArrowDown: here - step, PageDown: here - step,
                            ArrowRight: here + step, ArrowUp: here + step, PageUp: here + step,
                            Home: box.left, End: box.right}[event.key];
            if (target === undefined) return;
            event.preventDefault();
            moveTo(wrap, target);
        });
    });
    let chosen = false;
    document.addEventListener('change', event => {
        if (event.target.matches && event.target.matches('#photos input[type=file]')) chosen = true;
    }, true);
    const keepFocus = () => {
        if (!chosen || !document.querySelector('#photos .file-preview, #photos table')) return;
        chosen = false;
        if (!document.activeElement || document.activeElement === document.body)
            document.querySelector('#scale input:checked, #scale input')?.focus();
    };
    const update = () => { altText(); radioGroups(); slider(); keepFocus(); };
    update();
    new MutationObserver(update).observe(document.body, {childList: true, subtree: true, attributes: true,
                                                         attributeFilter: ['src']});
}"""
# Gradio's English texts lack some of its own keys (the upload button would be announced as "common.upload").
PAGE_TEXTS = {"common.upload": "Upload"}


def page_theme() -> gr.themes.Base:
    """Gradio's default look with every text at 4.5:1 contrast or more (WCAG AA): darker helper texts and labels,
    and a darker orange under the primary buttons' white text."""
    return gr.themes.Default(primary_hue="orange").set(
        body_text_color_subdued="*neutral_600", block_info_text_color="*neutral_600",
        block_label_text_color="*neutral_700", block_title_text_color="*neutral_800",
        button_primary_background_fill="*primary_700", button_primary_background_fill_hover="*primary_800",
        button_primary_text_color="white", button_primary_border_color="*primary_700",
        checkbox_label_text_color="*neutral_800", input_placeholder_color="*neutral_600",
        link_text_color="*secondary_700", link_text_color_visited="*secondary_800",
        color_accent="*primary_700",  # the selected tab's text, among others
    )


PAGE_CSS = """
#slider-labels .prose { display: flex; justify-content: space-between; font-weight: 600; }
#crops .grid-wrap, #crops .gallery-container { height: auto !important; min-height: 0 !important;
                                              max-height: none !important; }
#crops .grid-container { grid-template-columns: repeat(3, minmax(0, 1fr)) !important; grid-auto-rows: auto !important; }
#crops .thumbnail-item { aspect-ratio: 1 / 1; height: auto !important; }
#full .image-container { overflow: auto !important; max-height: 640px; }
#full .image-frame, #full button { overflow: visible !important; max-width: none !important;
                                   justify-content: flex-start !important; align-items: flex-start !important; }
#full img { max-width: none !important; max-height: none !important; width: auto !important;
            height: auto !important; object-fit: none !important; cursor: crosshair; }
footer .show-api.show-api, footer .show-api-divider.show-api-divider { display: flex !important; }  /* phones too */
#message { border-left: 4px solid #dc2626; padding-left: 12px; }
"""


def model_quality_line(quality: ModelQuality | None, name: str) -> str:
    """One line for the page: the model (its name in ``quality``, else ``name``) and its headline measurement against
    pixel bicubic, per scale, for the standard (bicubic) low-res protocol, with the dataset and the command that
    measured it. Nothing is made up: without measurements, only the name."""
    if quality is None or not quality.measurements:
        return f"**Model: {name}.**"
    headline = quality.measurements[0]
    rows = [row for row in headline.results if row.low_res == "bicubic"] or list(headline.results)
    if not rows:
        return f"**Model: {quality.model}.**"
    protocol = rows[0].low_res
    scores = "; ".join(f"{row.scale}× {row.model.psnr:.2f} dB / {row.model.ssim:.3f} vs "
                       f"{row.pixel_bicubic.psnr:.2f} dB / {row.pixel_bicubic.ssim:.3f}" for row in rows)
    return (f"**Model: {quality.model}.** Measured on {headline.dataset}, {protocol} low-res, PSNR / SSIM against "
            f"pixel bicubic: {scores} (`{headline.command}`).")


def _headline_rows(quality: ModelQuality | None):
    """The headline measurement (the first) and its rows for the standard (bicubic) low-res protocol."""
    if quality is None or not quality.measurements:
        return None, []
    headline = quality.measurements[0]
    return headline, [row for row in headline.results if row.low_res == "bicubic"] or list(headline.results)


def scale_notes(quality: ModelQuality | None) -> dict[int, str]:
    """Per measured scale, one plain sentence from the model's own measurements: whether it beats plain enlarging
    (pixel bicubic) in both PSNR and SSIM, with the numbers; a scale that does not says so."""
    headline, rows = _headline_rows(quality)
    notes = {}
    for row in rows:
        model, bicubic = row.model, row.pixel_bicubic
        numbers = (f"{model.psnr:.2f} dB / SSIM {model.ssim:.3f} against {bicubic.psnr:.2f} dB / "
                   f"{bicubic.ssim:.3f} for plain bicubic enlarging, on {headline.dataset}")
        if beats_bicubic(row):
            notes[row.scale] = f"{row.scale}×: measured closer to the real photo than plain enlarging ({numbers})."
        else:
            notes[row.scale] = (f"{row.scale}×: measured **no better than plain enlarging** ({numbers}); expect "
                                f"a visible 8-pixel grid. 2× and 4× do better.")
    return notes


def chosen_scale(scale, other) -> int | float:
    """The factor the page's controls say: the scale chosen, or the number typed when it is "other" (PageError for
    a number outside 1 to MAX_SCALE)."""
    return page_scale(other if scale == OTHER else scale)


def beats_bicubic(row) -> bool:
    return row.model.psnr > row.pixel_bicubic.psnr and row.model.ssim > row.pixel_bicubic.ssim


def scale_choices(quality: ModelQuality | None) -> list[tuple[str, int]]:
    """The scale radio's choices; a scale measured no better than pixel bicubic says so in its label."""
    _, rows = _headline_rows(quality)
    worse = {row.scale for row in rows if not beats_bicubic(row)}
    return [(f"{scale}× (no better than bicubic)" if scale in worse else f"{scale}×", scale) for scale in SCALES] + [
        ("other", OTHER)]


def example_photos() -> list[Path]:
    """scikit-image's shipped sample photos (its ``data`` folder), if scikit-image is installed (the ``eval``
    extra); none otherwise: the page works without them."""
    try:
        import skimage.data
    except ImportError:
        return []
    folder = Path(skimage.data.__file__).parent
    return [folder / name for name in EXAMPLE_PHOTOS if (folder / name).is_file()]


def scale_radio(choices, **kwargs) -> gr.Radio:
    """The scale radio, documented in the API as what it accepts: a number from 1 to MAX_SCALE (Gradio's Radio
    documents every choice as a string and refuses any other value); a numeric string is accepted too, and the page's
    own ``"other"`` (the factor is then in the number field). (No JSON-schema ``enum``: gradio_client renders any
    enum as a Literal of strings.) The two methods are set on the instance: a ``gr.Radio`` subclass would make Gradio
    write a ``.pyi`` stub beside this module at every import."""
    radio = gr.Radio(choices, **kwargs)

    def api_info() -> dict:
        return {"type": "number", "title": "Scale",
                "description": f"upscaling factor, any number from 1 to {MAX_SCALE}: "
                               f"{', '.join(map(str, SCALES))} are UPLiFT's own steps; others run UPLiFT to the "
                               f"next step, then resize to the exact size"}

    def preprocess(payload):
        if payload == OTHER:
            return payload
        try:
            return page_scale(payload)
        except PageError as err:  # a one-line error, no traceback in the log
            raise gr.Error(str(err), title="Wrong scale", print_exception=False) from None

    radio.api_info, radio.preprocess = api_info, preprocess
    return radio


def tiles_dropdown(choices, **kwargs) -> gr.Dropdown:
    """The tile-size dropdown; a value that is not one of its choices (through the API) is a one-line error."""
    dropdown = gr.Dropdown(choices, **kwargs)
    allowed = [value for _, value in dropdown.choices]
    dropdown_preprocess = dropdown.preprocess

    def preprocess(payload):
        if payload not in allowed:
            raise gr.Error(f"tiles must be one of {', '.join(map(repr, allowed))}, not {payload!r}",
                           title="Wrong tiles", print_exception=False)
        return dropdown_preprocess(payload)

    dropdown.preprocess = preprocess
    return dropdown


# ---------------------------------------------------------------------------------------------------- events
def _shown(result: UpscaleResult, compare: str, center=None):
    """What the page shows for one result: the slider's labels, the slider, zoomed crops, the 1:1 view, and the
    full-resolution download right at it."""
    width, height = result.output_size
    return (gr.update(value=slider_labels(compare), visible=True), slider_pair(result, compare),
            gr.update(value=zoomed_crops(result, center), visible=True),
            gr.update(value=str(result.output_png), visible=True),
            gr.update(value=str(result.output_png), visible=True,
                      label=f"⬇ Download {result.output_png.name} ({width}×{height}, full resolution)"))


def _busy() -> tuple:
    """The Upscale button while a job runs (a second click does nothing), and the Cancel button shown."""
    return gr.update(value="Upscaling…", interactive=False), gr.update(visible=True)


def _idle() -> tuple:
    return gr.update(value="Upscale", interactive=True), gr.update(visible=False)


def _cleared() -> tuple:
    """[message, slider labels, slider, crops, 1:1 view, download, results gallery, downloads, download all,
    summary] emptied."""
    hidden = gr.update(visible=False, value=None)
    return (gr.update(visible=False, value=""), gr.update(visible=False), None, hidden, hidden, hidden, hidden,
            hidden, hidden, "")


@dataclass
class PageEvents:
    """The page's event handlers, on the shared models (one instance per page)."""

    upscaler: PageUpscaler
    features: FeatureStrips
    jobs: dict[str, threading.Event] = field(default_factory=dict)  # session -> its running job's stop flag
    # Sessions whose page was closed or reloaded (most recent last, bounded): a job of theirs that had not started
    # when they left (queued, or between the click and its handler) stops as soon as it starts.
    left: OrderedDict[str, None] = field(default_factory=OrderedDict)

    def check_request(self, files) -> None:
        limits = self.upscaler.limits
        if not files:
            raise PageError("Add one or more photos first (or click an example).")
        if len(files) > limits.max_files:
            raise PageError(f"{len(files)} photos at once is more than this page takes ({limits.max_files}); "
                            f"send them in smaller groups.")

    def expected_plans(self, files, scale: float, tiles: str, cancelled=None) -> list[WorkPlan | float]:
        plans = []
        for path in files:
            try:
                width, height = image_size(path)
                tile = self.upscaler.tile_size_for((width, height), scale, tiles, Path(path).name)  # as the run's
                plans.append(self.upscaler.expected_plan((width, height), scale, tile, cancelled))
            except JobCancelled:
                raise
            except Exception:  # unreadable: upscale_file will say why; it takes no time on the bar
                plans.append(0.0)
        return plans

    def upscale_all(self, files, scale, color_correction, tiles, report, cancelled=None
                    ) -> tuple[list[UpscaleResult], list[str]]:
        """Every photo of the request (one bar over all of them); the results and the problems, in order.
        JobCancelled when ``cancelled()`` turns True."""
        self.check_request(files)
        if cancelled is not None and cancelled():
            raise JobCancelled("the request was cancelled")
        scale = page_scale(scale)
        self.upscaler.prune()
        names = [Path(path).name for path in files]
        bar = RequestProgress(report, names, self.expected_plans(files, scale, tiles, cancelled), cancelled=cancelled)
        results, problems = [], []
        with bar.ticking():
            for index, path in enumerate(files):
                bar.start_photo(index)
                try:
                    results.append(self.upscaler.upscale_file(path, scale, bool(color_correction), tiles,
                                                              progress=bar.work))
                except JobCancelled:
                    raise
                except Exception as err:  # one bad photo does not cost the others their results
                    problems.append(user_message(err))
                bar.finish_photo(index)
        return results, problems

    # A job per visitor: the Cancel button and leaving the page (Gradio's unload, on its session) stop it.
    def _job_started(self, request: gr.Request | None) -> threading.Event:
        stop = threading.Event()
        if request is not None and request.session_hash:
            self.jobs[request.session_hash] = stop
            if request.session_hash in self.left:
                stop.set()
        return stop

    def _job_ended(self, request: gr.Request | None, stop: threading.Event) -> None:
        if request is not None and self.jobs.get(request.session_hash) is stop:
            del self.jobs[request.session_hash]

    def stop_job(self, request: gr.Request) -> None:
        """Stop the visitor's running job, if any (it stops at its next counted op and frees the model)."""
        stop = self.jobs.get(request.session_hash) if request is not None else None
        if stop is not None:
            stop.set()
            logger.info("request cancelled")

    def visitor_left(self, request: gr.Request) -> None:
        """The visitor closed or reloaded the page: stop their job, also one that starts after this."""
        if request is not None and request.session_hash:
            self.left[request.session_hash] = None
            while len(self.left) > MAX_LEFT_SESSIONS:
                self.left.popitem(last=False)
        self.stop_job(request)

    def cancel(self, request: gr.Request):
        self.stop_job(request)
        return *_idle(), gr.update(value=problems_markdown("Cancelled", ["The upscale was cancelled."]),
                                  visible=True)

    def run_page(self, files, scale, other, color_correction, tiles, compare, request: gr.Request = None,
                 progress=PROGRESS):
        # First the old results go (a new run must not look finished), then the bar, then the new results.
        cleared = _cleared()
        stop = self._job_started(request)  # before the first update: a Cancel or leaving from then on stops it
        try:
            yield *_busy(), [], 0, None, *cleared
            scale = chosen_scale(scale, other)
            results, problems = self.upscale_all(files, scale, color_correction, tiles, progress,
                                                 cancelled=stop.is_set)
        except JobCancelled:
            logger.info("request stopped: cancelled or left")  # the model is free for the next request
            yield *_idle(), [], 0, None, gr.update(value=problems_markdown("Cancelled", ["The upscale was cancelled."]),
                                                  visible=True), *cleared[1:]
            return
        except Exception as err:
            yield *_idle(), [], 0, None, gr.update(value=problems_markdown("Nothing was upscaled",
                                                                          [user_message(err)]), visible=True), \
                *cleared[1:]
            return
        finally:
            self._job_ended(request, stop)
        if not results:
            yield *_idle(), [], 0, None, gr.update(value=problems_markdown("Nothing was upscaled", problems),
                                                  visible=True), *cleared[1:]
            return
        lines = [r.summary(scale) for r in results]
        title = f"{len(problems)} of {len(files)} photos could not be upscaled"
        message = (gr.update(value=problems_markdown(title, problems), visible=True) if problems
                   else gr.update(visible=False))
        several = len(results) > 1
        yield (
            *_idle(), results, 0, None, message, *_shown(results[0], compare),
            gr.Gallery([(str(r.output_png), f"{r.name} → {r.output_size[0]}×{r.output_size[1]}") for r in results],
                       visible=several),  # a choice to make only with several photos
            gr.update(value=[str(r.output_png) for r in results], visible=True),
            gr.update(value=str(self.upscaler.zip_results(results, scale)) if several else None, visible=several),
            "\n\n".join(lines),
        )

    def preview(self, files, scale, other):
        """The uploaded photos as thumbnails with their size and the size after upscaling, and the problems found in
        their headers (or in the factor typed) now, before any Upscale (the same checks run again then)."""
        shown, problems = [], []
        try:
            scale = chosen_scale(scale, other)
        except PageError as err:
            message = problems_markdown("Check the factor", [str(err)])
            return gr.update(), gr.update(value=message, visible=True)
        for path in files or []:
            try:
                width, height = self.upscaler.check(path)
            except PageError as err:
                problems.append(str(err))
                continue
            out_w, out_h = scaled_size((width, height), scale)
            over = f" (over {megapixels(self.upscaler.limits.max_output_pixels)}: choose a smaller scale)" if (
                out_w * out_h > self.upscaler.limits.max_output_pixels) else ""
            shown.append((str(path), f"{Path(path).name}: {width}×{height} → {out_w}×{out_h}{over}"))
        message = (gr.update(value=problems_markdown("Not added: these files will be skipped", problems), visible=True)
                   if problems else gr.update(visible=False))
        return gr.update(value=shown or None, visible=bool(shown)), message

    def show(self, results, index, compare, center):
        if not results:
            return gr.update(value=slider_labels(compare)), None, None, None, gr.update(visible=False)
        result = results[min(index, len(results) - 1)]
        if not result.output_png.is_file():  # pruned after KEEP_RESULTS_S
            raise gr.Error("This result has expired from the server; upscale the photo again.",
                           title="Result expired", print_exception=False)
        return _shown(result, compare, center)

    def select(self, results, compare, event: gr.SelectData):
        return (event.index, None, *self.show(results, event.index, compare, None))

    def place_crop(self, results, index, event: gr.SelectData):
        """A click on the full-size view: the zoomed crops move there (``event.index`` is the pixel clicked)."""
        if not results:
            return None, None
        center = (int(event.index[0]), int(event.index[1]))
        return center, zoomed_crops(results[min(index, len(results) - 1)], center)

    def api_upscale(self, files, scale, color_correction, tiles, progress=PROGRESS):
        try:
            results, problems = self.upscale_all(files, scale, color_correction, tiles, progress)
        except Exception as err:
            raise gr.Error(user_message(err), title="Nothing was upscaled", print_exception=False) from None
        if not results:
            raise gr.Error(" ".join(problems), title="Nothing was upscaled", print_exception=False)
        lines = ([r.summary(page_scale(scale), markdown=False) for r in results]
                 + [f"not upscaled: {p}" for p in problems])
        return [str(r.output_png) for r in results], "\n".join(lines)

    def run_features(self, path):
        if not path:
            raise gr.Error("Add a photo first.", title="No photo", print_exception=False)
        try:
            return self.features.strip(path)
        except Exception as err:
            raise gr.Error(user_message(err), title="No features", print_exception=False) from None


# ---------------------------------------------------------------------------------------------------- layout
@dataclass
class Controls:
    """The Upscale part's inputs."""

    files: gr.File
    scale: gr.Radio
    other: gr.Number  # the factor when the scale is "other"
    color: gr.Checkbox
    tiles: gr.Dropdown
    go: gr.Button
    cancel: gr.Button
    preview: gr.Gallery  # the uploaded photos, their size and the size after upscaling
    example: gr.Image  # a sample photo chosen (hidden: it becomes the upload)
    scale_note: gr.Markdown  # what the chosen scale measured against plain enlarging
    notes: dict[int, str]


@dataclass
class ResultView:
    """The Upscale part's outputs."""

    message: gr.Markdown
    gallery: gr.Gallery
    download_result: gr.DownloadButton  # the shown result at full resolution
    labels: gr.HTML
    slider: gr.ImageSlider
    compare: gr.Radio
    info: gr.Markdown
    crops: gr.Gallery
    full: gr.Image
    download: gr.File
    download_all: gr.DownloadButton
    summary: gr.Markdown  # the API's second output


def photos_input(**kwargs) -> gr.File:
    """The photos' upload, whose example in the API panel is a photo (Gradio's is a PDF, which the endpoint would
    refuse); set on the instance, as :func:`scale_radio` does."""
    files = gr.File(**kwargs)
    example = {"path": API_EXAMPLE_PHOTO, "url": API_EXAMPLE_PHOTO, "orig_name": Path(API_EXAMPLE_PHOTO).name,
               "meta": {"_type": "gradio.FileData"}}  # what gradio_client's handle_file gives
    files.example_payload = lambda: [example]
    files.example_value = lambda: [API_EXAMPLE_PHOTO]
    return files


def _controls(limits: PageLimits, examples: Sequence[Path], quality: ModelQuality | None) -> Controls:
    files = photos_input(label="Photos", file_count="multiple", file_types=["image"], type="filepath",
                         elem_id="photos", height=130)  # a low drop zone: Upscale stays in a laptop's first screen
    gr.Markdown(f"Up to {limits.max_files} photos at once, each at most {megapixels(limits.max_input_pixels)} and "
                f"{UPLOAD_CAP} (PNG, JPEG, WebP, ...).", elem_id="limits")
    preview = gr.Gallery(label="Your photos (size now → size after upscaling)", columns=4, height="auto",
                         elem_id="preview", allow_preview=False, interactive=False, visible=False,
                         object_fit="contain")
    example = gr.Image(type="filepath", visible=False, elem_id="example-photo")
    if examples:
        gr.Examples([[str(path)] for path in examples], inputs=[example], elem_id="examples",
                    label="Or try a sample photo (scikit-image)")
    notes = scale_notes(quality)
    scale = scale_radio(scale_choices(quality), value=2, label="How much larger", elem_id="scale",
                        info=f"results above {megapixels(limits.max_output_pixels)} are refused")
    other = gr.Number(value=3, label=f"Factor (any number from 1 to {MAX_SCALE})", elem_id="other-scale", step=0.1,
                      visible=False)
    notes[OTHER] = OTHER_NOTE
    scale_note = gr.Markdown(notes.get(2, ""), elem_id="scale-note")
    with gr.Accordion("Advanced", open=False, elem_id="advanced"):
        color = gr.Checkbox(value=True, label="Colour correction", elem_id="color",
                            info="the model's own correction: colours and large shapes from the input, detail from "
                                 "UPLiFT")
        tiles = tiles_dropdown(TILE_CHOICES, value="auto", label="Tile size", elem_id="tiles",
                            info=f"auto: whole image up to {megapixels(limits.max_untiled_output_pixels)} of output, "
                                 f"{limits.auto_tile_size}-px tiles above")
    go = gr.Button("Upscale", variant="primary", elem_id="upscale")
    cancel = gr.Button("Cancel", variant="secondary", elem_id="cancel", visible=False)
    return Controls(files=files, scale=scale, other=other, color=color, tiles=tiles, go=go, cancel=cancel,
                    preview=preview, example=example, scale_note=scale_note, notes=notes)


def _result_view() -> ResultView:
    return ResultView(
        message=gr.Markdown(visible=False, elem_id="message"),
        gallery=gr.Gallery(label="Results (click one to show it below)", columns=6, rows=1, height=160,
                           elem_id="results", format="png", object_fit="cover", interactive=False, visible=False,
                           allow_preview=False),  # a click switches the slider, nothing else
        download_result=gr.DownloadButton("Download", elem_id="download-result", visible=False, variant="primary",
                                          size="md"),
        labels=gr.HTML(slider_labels("input"), elem_id="slider-labels", visible=False),
        slider=gr.ImageSlider(label="before / after (drag)", type="pil", format="png", elem_id="slider",
                              interactive=False, max_height=600),
        compare=gr.Radio(COMPARE_CHOICES, value="input", label="Left of the slider", elem_id="compare"),
        info=gr.Markdown(elem_id="info"),
        crops=gr.Gallery(label="Zoomed: the most detailed region (click the full-size view below to zoom elsewhere)",
                         columns=3, rows=1, height="auto", elem_id="crops", visible=False, format="png",
                         object_fit="contain", interactive=False),
        full=gr.Image(label="UPLiFT result at 1:1 (scroll; click to zoom there)", type="filepath", elem_id="full",
                      interactive=False, format="png", buttons=[], visible=False),
        download=gr.File(label="Download PNG", file_count="multiple", elem_id="download", interactive=False,
                         visible=False),
        download_all=gr.DownloadButton("Download all (zip)", elem_id="download-all", visible=False),
        summary=gr.Markdown(visible=False, label="Summary"),
    )


def _features_tab(events: PageEvents) -> None:
    with gr.Tab("Features"):
        gr.Markdown(f"Pixel-dense DINO features with UPLiFT: one joint PCA over the backbone's tokens and every UPLiFT "
                    f"step (same colour = same feature), images resized to at most {events.features.max_side} px.")
        with gr.Row():
            photo = gr.Image(label="Photo", type="filepath", elem_id="feature-photo")
            strip = gr.Image(label="image | backbone | UPLiFT steps", type="pil", format="png", elem_id="strip",
                             interactive=False)
        go = gr.Button("Show features", variant="primary", elem_id="features-go")
        go.click(events.run_features, photo, strip, concurrency_id="model", api_name="features")


def _connect(events: PageEvents, controls: Controls, view: ResultView) -> None:
    """The Upscale part's events (private) and the ``/upscale`` API endpoint."""
    results, shown_index, crop_center = gr.State([]), gr.State(0), gr.State(None)
    run = controls.go.click(
        events.run_page, [controls.files, controls.scale, controls.other, controls.color, controls.tiles,
                          view.compare],
        [controls.go, controls.cancel, results, shown_index, crop_center, view.message, view.labels, view.slider,
         view.crops, view.full, view.download_result, view.gallery, view.download, view.download_all, view.info],
        concurrency_id="model", show_progress_on=[view.slider], api_visibility="private", trigger_mode="once",
        js=SHOW_RESULT_AREA_JS)
    sizes = [controls.files, controls.scale, controls.other]
    for changed in sizes:
        changed.change(events.preview, sizes, [controls.preview, view.message], queue=False, api_visibility="private")
    controls.scale.change(lambda scale: (controls.notes.get(scale if scale == OTHER else int(scale), ""),
                                         gr.update(visible=scale == OTHER)),
                          controls.scale, [controls.scale_note, controls.other], queue=False,
                          api_visibility="private")
    controls.example.change(lambda path: [path] if path else gr.update(), controls.example, controls.files,
                            queue=False, api_visibility="private")
    controls.cancel.click(events.cancel, None, [controls.go, controls.cancel, view.message], cancels=[run],
                          queue=False, api_visibility="private")
    view.compare.change(events.show, [results, shown_index, view.compare, crop_center],
                        [view.labels, view.slider, view.crops, view.full, view.download_result],
                        api_visibility="private")
    view.gallery.select(events.select, [results, view.compare],
                        [shown_index, crop_center, view.labels, view.slider, view.crops, view.full,
                         view.download_result],
                        api_visibility="private")
    view.full.select(events.place_crop, [results, shown_index], [crop_center, view.crops], api_visibility="private")
    # The API: the page's inputs, typed as accepted, and two named outputs (the PNGs, a summary).
    gr.on(triggers=[], fn=events.api_upscale, inputs=[controls.files, controls.scale, controls.color, controls.tiles],
          outputs=[view.download, view.summary], api_name="upscale", concurrency_id="model", show_progress="hidden",
          api_description="Upscale photos with UPLiFT: returns one PNG per photo (in order) and a summary line per "
                          "photo. scale: any number from 1 to 8 (2, 4, 8: UPLiFT's own steps); tiles: 'auto', 'off' "
                          "or a tile size in pixels.")


def build_demo(upscaler: PageUpscaler, features: FeatureStrips, title: str = "UPLiFT upscaler",
               quality: ModelQuality | None = None, model_name: str = "UPLiFT") -> gr.Blocks:
    """The page: the Upscale part (and a Features tab when an extractor is loaded) wired to the shared models, and
    the ``/upscale`` API endpoint (queue settings are applied by ``launch``).

    Args:
        upscaler: the shared upscaler.
        features: the Features tab's model; without an extractor the tab is not shown (the reason is logged).
        title: the page's title.
        quality: the upsampler's measured quality (its ``quality.json``), for the line naming the model.
        model_name: the model's name when there is no ``quality``.
    """
    events = PageEvents(upscaler, features)
    with_features = features.extractor is not None
    with gr.Blocks(title=title, delete_cache=(600, KEEP_RESULTS_S)) as demo:
        gr.Markdown(f"# {title}\nMake photos 2, 4 or 8 times larger (or by any factor up to {MAX_SCALE}), with more "
                    f"detail than plain enlarging. Add photos, choose how much larger, press Upscale; compare before "
                    f"and after, then download.",
                    elem_id="intro")
        with gr.Accordion("How it works, and how well", open=False, elem_id="about"):
            gr.Markdown(f"Latent super-resolution with UPLiFT: the photo goes through the VAE's latent space, UPLiFT "
                        f"doubles the latents' resolution once per 2×, the VAE decodes the result.\n\n"
                        f"{model_quality_line(quality, model_name)}", elem_id="model-line")
        # The Upscale part is the page; it becomes a tab only when there is a second tab to show.
        with gr.Tabs() if with_features else gr.Column():
            with gr.Tab("Upscale") if with_features else gr.Column():
                with gr.Row(equal_height=False):
                    with gr.Column(scale=1, min_width=280):
                        controls = _controls(upscaler.limits, example_photos(), quality)
                    with gr.Column(scale=2, min_width=300, elem_id="result-area"):
                        view = _result_view()
            if with_features:
                _features_tab(events)
        _connect(events, controls, view)
        demo.unload(events.visitor_left)  # a visitor who leaves (reload, close) does not keep the model busy
    return demo


def launch(demo: gr.Blocks, limits: PageLimits, host: str = "127.0.0.1", port: int = 7860, block: bool = True,
           **kwargs) -> str:
    """Queue (bounded, one request on the models at a time) and serve ``demo``; prints and returns the page's
    address once it answers, then serves until Ctrl+C (``block=True``) or returns (``demo.close()`` stops it)."""
    # Gradio notices a closed page when its session's heartbeat fails, every 15 s by default: a job shorter than that
    # ran to its end for a visitor who had left, and the next visitor waited behind it.
    os.environ.setdefault("GRADIO_HEARTBEAT_INTERVAL", str(HEARTBEAT_S))
    demo.queue(max_size=limits.queue_size, default_concurrency_limit=1)
    demo.launch(server_name=host, server_port=port, prevent_thread_lock=True, show_error=False, ssr_mode=False,
                quiet=True, max_file_size=UPLOAD_CAP.replace(" ", "").lower(), footer_links=["api"], css=PAGE_CSS,
                theme=page_theme(), js=PAGE_JS, i18n=gr.I18n(en=PAGE_TEXTS), **kwargs)
    url = f"http://{host}:{demo.server_port}/"
    print(f"uplift-diffusion serve: open {url} (Ctrl+C stops the server)", flush=True)
    if block:
        demo.block_thread()
    return url
