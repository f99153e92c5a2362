"""`uplift-diffusion serve` in a real browser: headless Chromium (Debian's package) driven by Playwright opens the page
served on localhost, uploads real photos, and reads what a user would see.

Skipped only where no Chromium executable is installed (``.ci/run`` installs it with apt-get).
"""

from __future__ import annotations

import io
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = os.environ.get("UPLIFT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium executable found (apt-get install chromium; "
                                                         "or set UPLIFT_CHROMIUM=/path/to/chromium)")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
MAX_PIXELS = 400_000  # the page's limit in these tests: small enough that the "too large" photo stays cheap
SCREENSHOTS = Path(__file__).resolve().parents[1] / "outputs" / "serve_browser"
RUN_TIMEOUT_MS = 180_000  # one upscale on a busy 2-core CPU, with room to spare


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def start_server(args: list[str], tmp: Path) -> tuple[subprocess.Popen, str]:
    """``uplift-diffusion serve`` in a subprocess; returns once it printed its address (it answers then). Its output
    keeps being read into ``process.log`` (a list of lines: the server log the tests check; an unread pipe would
    also fill up and stall the server)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_TEMP_DIR": str(tmp / "gradio"),
           "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "uplift_diffusion.cli", "serve", "--port", str(free_port()),
                                *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    process.log = []
    started = threading.Event()

    def read() -> None:
        for line in process.stdout:  # ends when the server exits
            process.log.append(line)
            if "uplift-diffusion serve: open " in line:
                started.set()
        started.set()

    threading.Thread(target=read, daemon=True).start()
    started.wait()
    for line in process.log:
        if "uplift-diffusion serve: open " in line:
            return process, line.split("open ", 1)[1].split()[0]
    process.wait()
    raise AssertionError("the server did not start:\n" + "".join(process.log))


@pytest.fixture(scope="module")
def photos(shared_dir, tmp_path_factory) -> dict[str, Path]:
    """A real photo, a smaller crop of one, and the three bad inputs."""
    root = tmp_path_factory.mktemp("photos")
    source = shared_dir / "data" / "photos"
    with Image.open(source / "coffee.png") as coffee:
        coffee.convert("RGB").crop((200, 100, 360, 220)).save(root / "coffee_crop.png")  # 160x120
    with Image.open(source / "astronaut.png") as astronaut:
        astronaut.convert("RGB").crop((200, 100, 296, 164)).save(root / "astronaut_crop.png")  # 96x64
    (root / "notes.png").write_text("shopping list: milk, eggs\n")  # a text file renamed .png
    (root / "empty.png").write_bytes(b"")  # a 0-byte upload
    Image.new("RGB", (1, 1), (200, 30, 30)).save(root / "dot.png")
    Image.new("RGB", (700, 700), (30, 90, 160)).save(root / "poster.png")  # 490,000 pixels > MAX_PIXELS
    return {"chelsea": source / "chelsea.png", "crop": root / "coffee_crop.png",
            "small": root / "astronaut_crop.png", "notes": root / "notes.png", "empty": root / "empty.png",
            "dot": root / "dot.png", "poster": root / "poster.png"}


@pytest.fixture(scope="module")
def tiny_dino(tmp_path_factory) -> list[str]:
    """Local files for the Features tab: a 1-block timm DINOv2-layout ViT folder and a small UPLiFT for it."""
    from features_helpers import WIDTH, tiny_upsampler, tiny_vit_module
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("dino")
    backbone = root / "backbone"
    backbone.mkdir()
    module = tiny_vit_module(14)
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, backbone / "model.safetensors")
    (backbone / "config.json").write_text(
        '{"architecture": "vit_small_patch14_dinov2", "model_args": {"img_size": 56, "depth": 1, "embed_dim": %d, '
        '"num_heads": 2}}' % WIDTH)
    tiny_upsampler(14).save_pretrained(root / "upsampler")
    return ["--backbone", "dinov2-s14", "--backbone-weights", str(backbone), "--features-upsampler",
            str(root / "upsampler")]


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_dino):
    """The page with the default (built-in) upscaler, a tiny local DINO and a small pixel limit."""
    tmp = tmp_path_factory.mktemp("serve")
    process, url = start_server(["--max-pixels", str(MAX_PIXELS), *tiny_dino], tmp)
    yield process, url
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1366, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.goto(server[1])
    page.wait_for_selector("#photos input[type=file]", state="attached")
    yield page
    context.close()


def upload(page, *files: Path) -> None:
    page.locator("#photos input[type=file]").set_input_files([str(f) for f in files])
    page.wait_for_selector(f"#photos >> text={files[-1].stem}")  # the upload finished and is listed


def click_upscale(page) -> None:
    """Press Upscale, marking what is shown now as old (so that waiting for the result cannot see the last one)."""
    page.evaluate("() => document.querySelectorAll('#info p, #message h3').forEach(e => e.dataset.old = '1')")
    page.click("#upscale")


def wait_for_result(page) -> str:
    page.wait_for_selector("#info p:not([data-old])", timeout=RUN_TIMEOUT_MS)
    return page.inner_text("#info")


def wait_for_upload_refusal(page) -> None:
    """The files refused when chosen are named at once (so that a message read after Upscale is the run's own)."""
    page.wait_for_selector("#message h3:has-text('Not added')", timeout=RUN_TIMEOUT_MS)


def page_message(page) -> str:
    """The message shown next to the result (errors stay there until the next run)."""
    page.wait_for_selector("#message h3:not([data-old])", timeout=RUN_TIMEOUT_MS)
    return page.inner_text("#message")


def save_screenshot(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, SCREENSHOTS / name)  # outputs/ is gitignored: a copy to look at
    return path


def slider_sizes(page) -> list[tuple[int, int]]:
    page.wait_for_function("() => [...document.querySelectorAll('#slider img')].length == 2 && "
                           "[...document.querySelectorAll('#slider img')].every(i => i.complete && i.naturalWidth)")
    return [tuple(s) for s in page.eval_on_selector_all("#slider img", "els => els.map(e => [e.naturalWidth, "
                                                                        "e.naturalHeight])")]


def fetch_image(page, url: str) -> Image.Image:
    """An image the page shows, fetched with the page's own session."""
    return Image.open(io.BytesIO(page.request.get(url).body())).convert("RGB")


def watch(page) -> None:
    """Record, on every change of the page, the progress text, whether a result is shown and the slider's images
    (read back with :func:`seen`)."""
    page.evaluate("""() => { window.seen = [];
        new MutationObserver(() => {
            const bar = document.querySelector('#slider .progress-level-inner');
            window.seen.push({progress: bar ? bar.textContent.trim() : null,
                              info: !!document.querySelector('#info p'),
                              slider: document.querySelectorAll('#slider img').length});
        }).observe(document.body, {childList: true, subtree: true, characterData: true}); }""")


def seen(page) -> list[dict]:
    return page.evaluate("() => window.seen")


@pytest.fixture(scope="module")
def reference():
    """The pipeline as a Python user gets it, with the page's seed: what the page must return, bit for bit."""
    import torch

    from uplift_diffusion import UPLiFTSuperResolutionPipeline

    pipeline = UPLiFTSuperResolutionPipeline.from_builtin("taef2")
    pipeline.set_progress_bar_config(disable=True)

    def upscale(path: Path, scale: int = 2) -> np.ndarray:
        with Image.open(path) as image:
            result = pipeline(image.convert("RGB"), scale=scale, generator=torch.Generator().manual_seed(0))
        return np.asarray(result.images[0])

    return upscale


def test_upscale_2x_shows_and_downloads_the_pipelines_image(page, photos, tmp_path, reference):
    photo = photos["crop"]
    with Image.open(photo) as image:
        width, height = image.size
    upload(page, photo)
    page.click("#scale >> text=2×")
    click_upscale(page)
    page.wait_for_selector("#slider .progress-text")  # the progress bar while it runs
    info = wait_for_result(page)
    assert f"{width}×{height} → {2 * width}×{2 * height}" in info and " s" in info

    # Shown: both sides of the before / after slider are exactly twice the input.
    assert slider_sizes(page) == [(2 * width, 2 * height)] * 2
    # Pixel bicubic is one click away: the slider's "before" becomes another image of the same size.
    before = page.get_attribute("#slider img >> nth=0", "src")
    page.click("#compare >> text=pixel bicubic")
    page.wait_for_function(f"() => document.querySelector('#slider img').src != {before!r}")
    assert slider_sizes(page) == [(2 * width, 2 * height)] * 2
    assert page.locator("#crops img").count() == 3  # the same crop, zoomed: input, bicubic, UPLiFT

    # Downloaded: the PNG offered by the page, the same pixels as the pipeline's (and the CLI's) result.
    with page.expect_download() as download_info:
        page.click("#download a[download]")
    download = download_info.value
    assert download.suggested_filename == f"{photo.stem}_x2.png"
    target = tmp_path / download.suggested_filename
    download.save_as(target)
    with Image.open(target) as result:
        assert result.format == "PNG" and result.size == (2 * width, 2 * height) and result.mode == "RGB"
        assert np.array_equal(np.asarray(result), reference(photo))
    assert page.get_by_text("Use via API").is_visible()  # Gradio's footer link to the API docs
    assert save_screenshot(page, tmp_path, "upscale_2x_1366.png").stat().st_size > 0


def test_progress_covers_the_whole_request_in_one_bar_and_old_results_go(page, photos, tmp_path):
    upload(page, photos["crop"])
    click_upscale(page)
    wait_for_result(page)
    page.locator("#photos button[aria-label='Clear']").click()
    # a request long enough (seconds, also on a quiet machine) for the page to estimate the time left
    upload(page, photos["chelsea"], photos["small"])
    watch(page)
    click_upscale(page)
    page.wait_for_function("() => window.seen.some(s => s.progress) && document.querySelector('#info p')",
                           timeout=RUN_TIMEOUT_MS)
    states = seen(page)

    # The old result went before the new one came: a moment with no summary and an empty slider.
    cleared = [i for i, s in enumerate(states) if not s["info"] and s["slider"] == 0]
    assert cleared and states[-1]["info"], states
    assert any(s["progress"] for s in states[cleared[0]:]), states  # ... and the bar ran on the emptied page
    # One bar over both photos: it never moves back (no restart at the second photo) and says the time left.
    texts = [s["progress"] for s in states if s["progress"] and re.search(r"[\d.]+%$", s["progress"])]
    percents = [float(re.search(r"([\d.]+)%$", t).group(1)) for t in texts]
    assert percents == sorted(percents), texts
    assert any("(1 of 2)" in t for t in texts) and any("(2 of 2)" in t for t in texts), texts
    assert any(re.search(r"about \d+(\.\d)? (s|min) left", t) for t in texts), texts
    # The decode (the longest part) moves the bar: several positions while decoding.
    decoding = {p for t, p in zip(texts, percents, strict=True) if "decoding" in t}
    assert len(decoding) >= 2, texts
    assert max(percents) > 90


def test_errors_stay_next_to_the_result_until_the_next_run(page, server, photos, tmp_path):
    process, _ = server
    upload(page, photos["empty"])
    wait_for_upload_refusal(page)  # refused as soon as it is chosen; the run then says so again
    click_upscale(page)
    message = page_message(page)
    assert message.startswith("Nothing was upscaled") and "empty.png is an empty file (0 bytes)" in message
    time.sleep(11)  # a toast would have gone by now
    assert page.locator("#message").is_visible() and "empty.png is an empty file" in page.inner_text("#message")
    save_screenshot(page, tmp_path, "error_empty_file_1366.png")

    # One photo good, one bad: the result and, above it, which photo failed and why.
    page.locator("#photos button[aria-label='Clear']").click()
    upload(page, photos["crop"], photos["notes"])
    wait_for_upload_refusal(page)
    click_upscale(page)
    page.wait_for_selector("#message", state="hidden")  # the old message goes when the new run starts
    assert "160×120 → 320×240" in wait_for_result(page)
    message = page_message(page)
    assert message.startswith("1 of 2 photos could not be upscaled") and "notes.png is not an image" in message

    # A good run clears the message.
    page.locator("#photos button[aria-label='Clear']").click()
    upload(page, photos["crop"])
    click_upscale(page)
    wait_for_result(page)
    assert not page.locator("#message").is_visible()
    # The server log: each refusal is one line, no traceback (those are for real bugs).
    log = "".join(process.log)
    assert sum("request refused: empty.png is an empty file" in line for line in process.log) == 1
    assert "request refused: notes.png is not an image" in log and "Traceback" not in log


@pytest.mark.parametrize("case,expected", [
    ("notes", "notes.png is not an image this page can read"),
    ("dot", "dot.png is 1×1 pixels; the smallest image"),
    ("poster", "poster.png is 700×700 (0.5 MP), over this page's limit of 0.4 MP per photo"),
])
def test_bad_input_gets_a_readable_message_and_the_server_keeps_serving(page, photos, tmp_path, case, expected):
    upload(page, photos[case])
    click_upscale(page)
    message = page_message(page)
    assert expected in message
    assert "/tmp" not in message and "Traceback" not in message  # no server paths, no tracebacks
    if case == "poster":
        assert "tiles" in message
        save_screenshot(page, tmp_path, "bad_input_too_large.png")

    # The same page, the same server: a good photo still works.
    page.locator("#photos button[aria-label='Clear']").click()
    upload(page, photos["crop"])
    click_upscale(page)
    assert "160×120 → 320×240" in wait_for_result(page)


def gradient_energy(image: Image.Image) -> float:
    grey = np.asarray(image.convert("L"), dtype=np.float64)
    return float((np.diff(grey, axis=1) ** 2).sum() + (np.diff(grey, axis=0) ** 2).sum())


def test_zoom_crop_where_the_user_clicks_labelled_halves_and_a_1to1_view(page, photos, tmp_path):
    upload(page, photos["crop"])
    click_upscale(page)
    wait_for_result(page)
    slider_sizes(page)
    labels = page.inner_text("#slider-labels")
    assert "input (nearest)" in labels and "UPLiFT" in labels
    page.click("#compare >> text=pixel bicubic")
    page.wait_for_function("() => document.querySelector('#slider-labels').innerText.includes('pixel bicubic')")

    # The full result at 1:1: drawn with as many screen pixels as it has.
    page.wait_for_function("() => { const i = document.querySelector('#full img'); return i && i.naturalWidth; }")
    drawn, natural = page.eval_on_selector("#full img", "i => [i.getBoundingClientRect().width, i.naturalWidth]")
    assert natural == 320 and abs(drawn - natural) < 1

    # First the most detailed region: more gradient energy than the centre crop of the same result.
    crops_src = page.eval_on_selector_all("#crops img", "els => els.map(e => e.src)")
    uplift = fetch_image(page, crops_src[2])
    full = fetch_image(page, page.get_attribute("#full img", "src"))
    centre = full.crop((64, 24, 256, 216)).resize(uplift.size, Image.NEAREST)
    assert gradient_energy(uplift) > gradient_energy(centre)

    # A click on the 1:1 view moves the crop there: near the top-left corner, the crop is the top-left square.
    page.click("#full img", position={"x": 5, "y": 5})
    page.wait_for_function(f"() => document.querySelectorAll('#crops img')[2] && "
                           f"document.querySelectorAll('#crops img')[2].src != {crops_src[2]!r}")
    moved = fetch_image(page, page.eval_on_selector_all("#crops img", "els => els.map(e => e.src)")[2])
    assert np.array_equal(np.asarray(moved), np.asarray(full.crop((0, 0, 192, 192)).resize((384, 384),
                                                                                             Image.NEAREST)))


def test_a_laptops_first_screen_holds_everything_up_to_upscale(page):
    """At 1366×900, before any photo: the drop zone, the sample photos, the scale and the Upscale button are all on
    the first screen (no scrolling to find where to press)."""
    page.wait_for_selector("#examples img")
    box = page.locator("#upscale").bounding_box()
    assert box is not None and box["y"] + box["height"] <= 900, box


def test_the_page_fits_a_390_px_phone(browser, server, photos, tmp_path):
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page = context.new_page()
    page.goto(server[1])
    page.wait_for_selector("#photos input[type=file]", state="attached")
    page.wait_for_selector("#examples button")
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
    save_screenshot(page, tmp_path, "first_visit_390.png")
    upload(page, photos["crop"])
    click_upscale(page)
    wait_for_result(page)
    slider_sizes(page)
    page.wait_for_function("() => [...document.querySelectorAll('#crops img')].length == 3 && "
                           "[...document.querySelectorAll('#crops img')].every(i => i.complete && i.naturalWidth)")
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390  # no sideways scrolling
    rights = page.eval_on_selector_all("#crops img", "els => els.map(e => e.getBoundingClientRect().right)")
    assert len(rights) == 3 and max(rights) <= 390, rights  # all three crops on screen
    save_screenshot(page, tmp_path, "upscale_2x_390.png")
    context.close()


def test_examples_and_the_model_line_from_its_measured_numbers(page, photos, tmp_path):
    from uplift_diffusion.builtin import builtin_upsampler_path, read_model_quality

    save_screenshot(page, tmp_path, "first_visit_1366.png")  # what a first-time visitor sees
    headline = read_model_quality(builtin_upsampler_path("taef2")).measurements[0]
    row = next(row for row in headline.results if row.scale == 2 and row.low_res == "bicubic")
    page.click("#about")  # the technical words and numbers, one click away
    page.wait_for_selector("#model-line", state="visible")
    intro = page.inner_text("#model-line")
    assert "uplift-taef2" in intro and headline.dataset in intro
    assert f"2× {row.model.psnr:.2f} dB / {row.model.ssim:.3f} vs {row.pixel_bicubic.psnr:.2f} dB" in intro

    assert page.locator("#examples button").count() >= 3
    page.locator("#examples button").first.click()  # chelsea, shown as a picture
    page.wait_for_selector("#photos >> text=chelsea")  # the example photo is now the upload
    # This server has a backbone: a Features tab, its content shown only once the tab is chosen.
    assert page.get_by_role("tab", name="Features").is_visible() and not page.locator("#features-go").is_visible()
    assert page.locator("#crops").count() == 0 or not page.locator("#crops").is_visible()  # no empty result boxes


def test_several_photos_in_one_request_keep_their_order_and_download_as_one_zip(page, photos, tmp_path):
    upload(page, photos["crop"], photos["small"])
    click_upscale(page)
    info = wait_for_result(page)
    assert info.index("coffee_crop.png: 160×120 → 320×240") < info.index("astronaut_crop.png: 96×64 → 192×128")
    assert slider_sizes(page) == [(320, 240)] * 2  # the first photo is shown first
    captions = page.locator("#results .caption-label").all_inner_texts()
    assert [c.split(" →")[0] for c in captions] == ["coffee_crop.png", "astronaut_crop.png"]
    page.locator("#results button.thumbnail-item").nth(1).click()  # show the second one
    page.wait_for_function("() => document.querySelector('#slider img').naturalWidth == 192")
    assert slider_sizes(page) == [(192, 128)] * 2
    downloads = page.eval_on_selector_all("#download td.filename", "tds => tds.map(td => td.ariaLabel)")
    assert downloads == ["coffee_crop_x2.png", "astronaut_crop_x2.png"]

    # Download all: one zip holding the same PNGs, in order.
    with page.expect_download() as download_info:
        page.click("#download-all")
    target = tmp_path / download_info.value.suggested_filename
    download_info.value.save_as(target)
    singles = [page.request.get(href).body()
               for href in page.eval_on_selector_all("#download a[download]", "els => els.map(e => e.href)")]
    with zipfile.ZipFile(target) as archive:
        assert archive.namelist() == downloads
        assert [archive.read(name) for name in downloads] == singles
    save_screenshot(page, tmp_path, "batch_1366.png")


def test_four_uploads_at_once_finish_in_order_and_memory_returns(browser, server, photos, tmp_path, record_property):
    process, url = server
    pages = []
    for _ in range(5):
        page = browser.new_context(viewport={"width": 1200, "height": 900}).new_page()
        page.goto(url)
        page.wait_for_selector("#photos input[type=file]", state="attached")
        upload(page, photos["crop"])
        # The time (one clock for all pages of one browser) at which the result appears in the page.
        page.evaluate("""() => new MutationObserver((_, observer) => {
            if (document.querySelector('#info p')) { window.doneAt = performance.timeOrigin + performance.now();
                                                     observer.disconnect(); }
        }).observe(document.querySelector('#info'), {childList: true, subtree: true})""")
        pages.append(page)
    warm_up, *pages = pages  # one run before measuring memory: first-call allocations are not a leak
    click_upscale(warm_up)
    wait_for_result(warm_up)
    warm_up.context.close()
    rss_before = rss_bytes(process.pid)

    for page in pages:  # one after the other, each request in the queue before the next is sent
        click_upscale(page)
        page.wait_for_selector("#slider [data-testid='status-tracker']:not(.hide)", state="attached")
    infos = [wait_for_result(page) for page in pages]
    assert all("160×120 → 320×240" in info for info in infos)
    assert all(page.locator(".toast-body").count() == 0 for page in pages)  # no error anywhere
    finished = [page.evaluate("() => window.doneAt") for page in pages]
    assert finished == sorted(finished), f"results arrived out of order: {finished}"
    rss_after = rss_bytes(process.pid)
    record_property("rss_growth_mib", round((rss_after - rss_before) / 2**20, 1))
    assert rss_after - rss_before < 300 * 2**20, f"RSS grew by {(rss_after - rss_before) / 2**20:.0f} MiB"
    save_screenshot(pages[-1], tmp_path, "fourth_of_four.png")
    for page in pages:
        page.context.close()


def test_features_tab_shows_the_joint_pca_strip(page, photos):
    page.get_by_role("tab", name="Features").click()
    page.locator("#feature-photo input[type=file]").set_input_files(str(photos["crop"]))
    page.click("#features-go")
    page.wait_for_function("() => { const i = document.querySelector('#strip img'); "
                           "return i && i.complete && i.naturalWidth > 0; }", timeout=RUN_TIMEOUT_MS)
    width, height = page.eval_on_selector("#strip img", "i => [i.naturalWidth, i.naturalHeight]")
    # image | backbone | 4 UPLiFT steps, each panel the photo's size
    assert (width, height) == (6 * 160, 120)


def test_without_a_backbone_there_is_no_features_tab(browser, tmp_path):
    from uplift_diffusion import app

    features = app.FeatureStrips.load(None)
    demo = app.build_demo(app.PageUpscaler(pipeline=None), features)
    url = app.launch(demo, app.PageLimits(), port=free_port(), block=False)
    try:
        page = browser.new_page()
        page.goto(url)
        page.wait_for_selector("#photos input[type=file]", state="attached")
        page.locator("#upscale").wait_for(state="visible", timeout=30_000)  # the page has rendered (a busy CPU: s)
        assert page.get_by_role("tab", name="Features").count() == 0  # nothing a visitor could act on
        page.close()
    finally:
        demo.close()


# ---------------------------------------------------------------------------------------------------- the page v3
SIZES = {"1366": (1366, 900), "390": (390, 844)}  # a laptop and a phone


def open_page(browser, url: str, width: int, height: int):
    phone = width < 500
    context = browser.new_context(viewport={"width": width, "height": height}, is_mobile=phone, has_touch=phone,
                                  accept_downloads=True)
    context.set_default_timeout(120_000)  # a page on a busy 2-core machine: seconds per step, not milliseconds
    page = context.new_page()
    page.goto(url)
    page.wait_for_selector("#photos input[type=file]", state="attached")
    return page


@pytest.fixture(params=sorted(SIZES))
def sized_page(request, browser, server):
    page = open_page(browser, server[1], *SIZES[request.param])
    yield page
    page.context.close()


def on_screen(page, selector: str) -> bool:
    """Whether the element's top edge is within the window (what the eye sees without scrolling)."""
    return page.eval_on_selector(selector, "e => { const r = e.getBoundingClientRect(); "
                                           "return r.height > 0 && r.top >= 0 && r.top < window.innerHeight; }")


def stopped_jobs(process) -> int:
    return sum("request stopped" in line for line in process.log)


def wait_for_log(process, count: int, timeout_s: float = 120) -> None:
    """Until the server log has ``count`` lines saying a job stopped (polled: the log is written by another
    process)."""
    deadline = time.monotonic() + timeout_s
    while stopped_jobs(process) < count:
        assert time.monotonic() < deadline, "".join(process.log[-20:])
        time.sleep(0.1)


# Recorded from the DOM's own mutation records (their old values), installed before the click: a state that lasts a
# fraction of a second on a quiet machine (the busy button, the bar of a small job) is seen however late the test's
# next step runs; waiting for it afterwards would wait for a state that may already be gone.
WATCH_RUN_JS = """() => { const run = window.run = {progress: false, progressOnScreen: false, disabled: false,
                                                   busyText: false, cancel: false};
    const button = () => document.querySelector('#upscale');
    const look = () => {
        const text = document.querySelector('#slider .progress-text');
        if (text) {
            run.progress = true;
            const r = text.getBoundingClientRect();
            if (r.height > 0 && r.top >= 0 && r.bottom <= window.innerHeight) run.progressOnScreen = true;
        }
        if (button()?.disabled) run.disabled = true;
        if ((button()?.textContent || '').includes('Upscaling')) run.busyText = true;
        if (document.querySelector('#cancel')?.checkVisibility()) run.cancel = true;
    };
    new MutationObserver(records => {
        for (const r of records) {
            const inButton = button()?.contains(r.target);
            if (inButton && r.attributeName === 'disabled' && r.oldValue === null) run.disabled = true;  // set
            if (inButton && r.type === 'characterData' && (r.oldValue || '').includes('Upscaling')) run.busyText = true;
        }
        look();
    }).observe(document.body, {childList: true, subtree: true, characterData: true, characterDataOldValue: true,
                               attributes: true, attributeOldValue: true});
    look(); }"""


def test_upscale_shows_the_progress_and_the_result_where_the_eye_is_and_runs_once(sized_page, photos, tmp_path):
    page = sized_page
    upload(page, photos["crop"], photos["small"])
    joins = []
    page.on("request", lambda r: joins.append(r.url) if "queue/join" in r.url else None)
    # The Upscale button at the bottom of the window, as after choosing the settings, then a double click.
    page.evaluate("() => document.querySelector('#upscale').scrollIntoView({block: 'end'})")
    assert page.locator("#upscale").is_enabled() and not page.locator("#cancel").is_visible()
    page.evaluate(WATCH_RUN_JS)
    click_upscale(page)
    # The second click of a double click, where the button is: not page.click, which first scrolls the button into
    # view (on the desktop layout the Upscale button is below the result's top, and that scroll took the result
    # off the window).
    page.dispatch_event("#upscale", "click")
    wait_for_result(page)
    run = page.evaluate("() => window.run")
    assert run == {"progress": True, "progressOnScreen": True, "disabled": True, "busyText": True, "cancel": True}, run
    slider_sizes(page)
    assert on_screen(page, "#slider"), page.evaluate(  # the result is where the bar was
        "() => [window.scrollY, document.documentElement.scrollHeight, window.innerHeight, "
        "document.querySelector('#slider').getBoundingClientRect().top, "
        "document.querySelector('#result-area').getBoundingClientRect().top]")
    assert len(joins) == 1, joins  # one job for two clicks
    page.wait_for_function("() => !document.querySelector('#upscale').disabled")  # idle again, in the same update
    assert page.inner_text("#upscale") == "Upscale" and not page.locator("#cancel").is_visible()
    save_screenshot(page, tmp_path, f"result_in_view_{page.viewport_size['width']}.png")


def test_cancel_stops_the_job_and_frees_the_model_for_the_next(page, server, photos):
    process, _ = server
    stopped = stopped_jobs(process)
    upload(page, photos["chelsea"])
    page.click("#scale >> text=4×")  # seconds of work: time to cancel it on the way
    click_upscale(page)
    page.wait_for_selector("#slider .progress-text")
    page.click("#cancel")
    assert "cancelled" in page_message(page)
    wait_for_log(process, stopped + 1)  # the work stopped (a finished job logs nothing of the kind)
    assert page.locator("#upscale").is_enabled() and not page.locator("#cancel").is_visible()
    page.locator("#photos button[aria-label='Clear']").click()
    upload(page, photos["crop"])
    page.click("#scale >> text=2×")
    click_upscale(page)
    assert "160×120 → 320×240" in wait_for_result(page)
    assert "Traceback" not in "".join(process.log)


def test_leaving_the_page_stops_its_job(browser, server, photos):
    process, url = server
    stopped = stopped_jobs(process)
    page = open_page(browser, url, 1366, 900)
    upload(page, photos["chelsea"])
    page.click("#scale >> text=4×")
    click_upscale(page)
    page.wait_for_selector("#slider .progress-text")
    page.context.close()  # the visitor closes the tab mid-job
    wait_for_log(process, stopped + 1)


def test_the_result_view_download_at_hand_batch_thumbnails_switch_the_slider(page, photos, tmp_path):
    upload(page, photos["crop"], photos["small"])
    click_upscale(page)
    wait_for_result(page)
    slider_sizes(page)
    page.evaluate("() => window.scrollTo(0, 0)")
    bottom = page.eval_on_selector("#download-result", "e => e.getBoundingClientRect().bottom")
    assert 0 < bottom <= 900, bottom  # in the first screen, next to the result
    with page.expect_download() as download_info:
        page.click("#download-result")
    assert download_info.value.suggested_filename == "coffee_crop_x2.png"
    page.locator("#results button.thumbnail-item").nth(1).click()  # the second photo: only the slider changes
    page.wait_for_function("() => document.querySelector('#slider img').naturalWidth == 192")
    assert page.locator("#results .preview").count() == 0  # no preview opened over the page
    assert "astronaut_crop_x2.png" in page.inner_text("#download-result")


def test_the_1to1_view_reaches_every_edge_on_a_phone(browser, server, photos):
    page = open_page(browser, server[1], 390, 844)
    upload(page, photos["crop"])
    page.click("#scale >> text=4×")  # 640×480: wider than the phone
    click_upscale(page)
    wait_for_result(page)
    page.wait_for_function("() => { const i = document.querySelector('#full img'); return i && i.naturalWidth; }")
    box = "#full .image-container"
    edges = """b => { const c = b.getBoundingClientRect(), i = b.querySelector('img').getBoundingClientRect();
                      return [i.left - c.left, c.right - i.right, i.top - c.top, c.bottom - i.bottom]; }"""
    page.eval_on_selector(box, "b => { b.scrollLeft = 0; b.scrollTop = 0; }")
    left, _, top, _ = page.eval_on_selector(box, edges)
    assert left >= -1 and top >= -1, (left, top)  # the top-left corner can be seen ...
    page.eval_on_selector(box, "b => { b.scrollLeft = b.scrollWidth; b.scrollTop = b.scrollHeight; }")
    _, right, _, bottom = page.eval_on_selector(box, edges)
    assert right >= -1 and bottom >= -1, (right, bottom)  # ... and so can the bottom-right one
    page.context.close()


def test_each_scale_says_what_it_measured_against_bicubic(page):
    from uplift_diffusion.builtin import builtin_upsampler_path, read_model_quality

    headline = read_model_quality(builtin_upsampler_path("taef2")).measurements[0]
    rows = {row.scale: row for row in headline.results if row.low_res == "bicubic"}
    assert not (rows[8].model.psnr > rows[8].pixel_bicubic.psnr  # what the page must not hide: 8x does not beat
                and rows[8].model.ssim > rows[8].pixel_bicubic.ssim)  # bicubic in both PSNR and SSIM
    assert "no better than bicubic" in page.inner_text("#scale label:has-text('8×')")
    assert "no better" not in page.inner_text("#scale label:has-text('2×')")
    note = page.inner_text("#scale-note")
    assert note.startswith("2×") and f"{rows[2].model.psnr:.2f} dB" in note and "no better" not in note
    page.click("#scale >> text=8×")
    page.wait_for_function("() => document.querySelector('#scale-note').innerText.startsWith('8×')")
    note = page.inner_text("#scale-note")
    assert "no better than plain enlarging" in note and f"{rows[8].pixel_bicubic.psnr:.2f} dB" in note


def test_preview_with_sizes_before_running_examples_as_pictures_and_plain_words_first(sized_page, photos):
    page = sized_page
    assert not page.get_by_text("latent", exact=False).first.is_visible()  # experts' words folded away
    assert not page.locator("#tiles").is_visible() and page.locator("#advanced").is_visible()
    page.wait_for_selector("#examples img")
    assert page.locator("#examples img").count() >= 3  # sample photos shown as pictures
    upload(page, photos["crop"], photos["small"])
    page.wait_for_selector("#preview img")
    captions = page.locator("#preview .caption-label").all_inner_texts()
    assert captions == ["coffee_crop.png: 160×120 → 320×240", "astronaut_crop.png: 96×64 → 192×128"], captions
    page.click("#scale >> text=4×")
    page.wait_for_function("() => document.querySelector('#preview .caption-label').innerText.includes('640×480')")
    page.click("#advanced")
    page.wait_for_selector("#tiles", state="visible")
    assert page.evaluate("() => document.documentElement.scrollWidth") <= page.viewport_size["width"]


def test_any_factor_from_1_to_8_with_the_output_size_shown_before_running(sized_page, server, photos):
    page, (process, _) = sized_page, server
    assert not page.locator("#other-scale").is_visible()  # the three usual choices first
    upload(page, photos["crop"])
    page.wait_for_selector("#preview img")
    page.click("#scale label:has-text('other')")
    page.wait_for_selector("#other-scale input", state="visible")
    page.wait_for_function("() => document.querySelector('#scale-note').innerText.startsWith('Any factor')")
    field = page.locator("#other-scale input")
    field.fill("9")  # too large: said at once, in one line
    field.press("Tab")
    page.wait_for_selector("#message h3:has-text('Check the factor')")
    assert "scale must be a number from 1 to 8 (e.g. 1.5, 2, 3, 4), not 9" in page.inner_text("#message")
    field.fill("1.5")
    field.press("Tab")
    page.wait_for_function(  # the output size before running, and the message gone
        "() => document.querySelector('#preview .caption-label').innerText.includes('→ 240×180') && "
        "!document.querySelector('#message')?.checkVisibility()")
    assert page.locator("#preview .caption-label").inner_text() == "coffee_crop.png: 160×120 → 240×180"
    assert page.evaluate("() => document.documentElement.scrollWidth") <= page.viewport_size["width"]
    click_upscale(page)
    assert "160×120 → 240×180 (1.5×)" in wait_for_result(page)
    assert slider_sizes(page) == [(240, 180)] * 2
    assert "coffee_crop_x1.5.png" in page.inner_text("#download-result")
    assert "Traceback" not in "".join(process.log)


CONTRAST_JS = """() => {
    const rgb = c => (c.match(/[\\d.]+/g) || []).map(Number);
    const lum = ([r, g, b]) => [r, g, b].map(v => { v /= 255; return v <= 0.03928 ? v / 12.92
                                                                   : ((v + 0.055) / 1.055) ** 2.4; })
                                         .reduce((s, v, i) => s + v * [0.2126, 0.7152, 0.0722][i], 0);
    const background = e => { for (; e; e = e.parentElement) { const c = rgb(getComputedStyle(e).backgroundColor);
                                                               if (c.length < 4 || c[3] > 0.5) return c; }
                              return [255, 255, 255]; };
    const low = [];
    const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
    for (let node; (node = walker.nextNode());) {
        const e = node.parentElement, text = node.textContent.trim();
        if (!/[\\p{L}\\p{N}]/u.test(text) || !e.checkVisibility() || e.closest('[disabled], .hide, svg')) continue;
        const r = e.getBoundingClientRect();
        if (!r.width || !r.height) continue;
        const style = getComputedStyle(e), fg = rgb(style.color);
        if (fg.length > 3 && fg[3] < 0.5) continue;
        const [a, b] = [lum(fg), lum(background(e))].sort((x, y) => y - x);
        const ratio = (a + 0.05) / (b + 0.05);
        if (ratio < 4.5) low.push(`${text.slice(0, 40)} ${ratio.toFixed(2)}`);
    }
    return low; }"""


def test_accessibility_contrast_alt_text_and_no_untranslated_keys(page, photos):
    upload(page, photos["crop"])
    click_upscale(page)
    wait_for_result(page)
    slider_sizes(page)
    page.wait_for_selector("#crops img")
    low = page.evaluate(CONTRAST_JS)
    assert not low, low  # every text at 4.5:1 or more (WCAG AA)
    alts = page.eval_on_selector_all("#slider img, #full img, #crops img", "els => els.map(e => e.alt)")
    assert len(alts) >= 6 and all(alts), alts
    labels = page.eval_on_selector_all("[aria-label]", "els => els.map(e => e.getAttribute('aria-label'))")
    keys = [label for label in labels if re.fullmatch(r"[a-z_]+\.[a-z_]+", label)
            and Path(label).suffix not in (".png", ".jpg", ".jpeg", ".webp")]  # "common.upload", not a file name
    assert not keys, labels


def test_bad_files_are_refused_at_upload_and_the_cap_is_written(page, photos):
    assert "50 MB" in page.inner_text("#limits")
    upload(page, photos["notes"])
    page.wait_for_selector("#message h3")  # before any Upscale
    assert "notes.png is not an image this page can read" in page.inner_text("#message")


def divider(page) -> dict:
    """The slider's divider as assistive technology and the eye get it: its role and value, and the share of the
    image the "after" half covers (from the clip of the after image)."""
    return page.evaluate("""() => {
        const handle = document.querySelector('#slider [data-testid=slider]');
        const after = document.querySelectorAll('#slider img')[1];
        const clip = (after.style.clipPath.match(/inset\\(.*? ([\\d.]+)%\\)/) || [0, 'NaN'])[1];
        return {role: handle.getAttribute('role'), value: Number(handle.getAttribute('aria-valuenow')),
                tabindex: handle.getAttribute('tabindex'), left: Number(clip)}; }""")


def test_the_slider_moves_with_arrow_keys_and_where_it_is_clicked(sized_page, photos):
    page = sized_page
    upload(page, photos["crop"])
    click_upscale(page)
    wait_for_result(page)
    slider_sizes(page)
    page.wait_for_function("() => document.querySelector('#slider [role=slider]')?.ariaValueNow == '50'")
    start = divider(page)
    assert start["tabindex"] == "0" and start["value"] == 50 and start["left"] == pytest.approx(50, abs=1), start
    page.focus("#slider [role=slider]")
    page.keyboard.press("ArrowRight")
    page.wait_for_function("() => document.querySelector('#slider [role=slider]').ariaValueNow == '55'")
    assert divider(page)["left"] == pytest.approx(55, abs=1)  # the picture follows, not only the number
    page.keyboard.press("Home")
    page.wait_for_function("() => document.querySelector('#slider [role=slider]').ariaValueNow == '0'")
    assert divider(page)["left"] == pytest.approx(0, abs=1)

    # A click (a tap on the phone) a quarter of the way across the picture puts the divider there.
    image = page.locator("#slider img").first.bounding_box()
    spot = {"x": image["width"] * 0.25, "y": image["height"] / 2}
    if page.viewport_size["width"] < 500:
        page.locator("#slider img").first.tap(position=spot, force=True)
    else:
        page.locator("#slider img").first.click(position=spot, force=True)
    page.wait_for_function("() => Math.abs(document.querySelector('#slider [role=slider]').ariaValueNow - 25) <= 2")
    assert divider(page)["left"] == pytest.approx(25, abs=2)


UNTRANSLATED_JS = """() => {
    const key = /^[a-z_]+\\.[a-z_]+$/;
    const found = [];
    for (const e of document.querySelectorAll('[aria-label], [title], [placeholder]'))
        for (const name of ['aria-label', 'title', 'placeholder']) {
            const value = e.getAttribute(name);
            if (value && key.test(value) && !/\\.(png|jpe?g|webp)$/i.test(value)) found.push(value);
        }
    const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
    for (let node; (node = walker.nextNode());)
        if (key.test(node.textContent.trim()) && node.parentElement.checkVisibility()) found.push(node.textContent);
    return found; }"""


def test_arrow_keys_move_between_the_scales_focus_stays_after_choosing_photos(sized_page, photos):
    page = sized_page
    assert not page.evaluate(UNTRANSLATED_JS)  # no "common.upload" anywhere, shown or announced
    page.wait_for_function("() => new Set([...document.querySelectorAll('#scale input[type=radio]')]"
                           ".map(i => i.name)).size === 1")  # the page's script has run (slow on a busy machine)
    page.focus("#scale input:checked")
    page.keyboard.press("ArrowRight")  # 2× → 4×, as in any radio group
    page.wait_for_function("() => document.querySelector('#scale-note').innerText.startsWith('4×')")
    assert page.eval_on_selector("#scale input:checked", "i => i.parentElement.innerText").startswith("4×")
    page.keyboard.press("ArrowLeft")
    page.wait_for_function("() => document.querySelector('#scale-note').innerText.startsWith('2×')")

    # Choosing photos from the upload button (the file dialog's answer): the button goes, focus does not.
    page.focus("#photos button")
    upload(page, photos["crop"])
    page.wait_for_selector("#preview img")
    focused = page.evaluate("() => document.activeElement.closest('#scale') ? 'scale' : "
                            "document.activeElement.tagName")
    assert focused == "scale", focused
    assert not page.evaluate(UNTRANSLATED_JS)


def test_api_link_on_every_width_its_example_a_photo_the_sliders_download_named_no_bar_in_the_log(
        sized_page, server, photos):
    page, (process, _) = sized_page, server
    link = page.get_by_text("Use via API")
    assert link.is_visible()  # on the phone too
    link.click()
    page.wait_for_selector("text=handle_file(")
    code = page.locator("body").inner_text()
    assert "bus.png" in code and "sample_file.pdf" not in code  # the example call sends a photo
    page.keyboard.press("Escape")
    page.goto(page.url)  # the panel closed: a fresh page
    page.wait_for_selector("#photos input[type=file]", state="attached")

    log_lines = len(process.log)
    upload(page, photos["crop"])
    click_upscale(page)
    wait_for_result(page)
    slider_sizes(page)
    assert page.get_attribute("#slider a[download]", "download") == "coffee_crop_x2.png"  # not image.png
    log = "".join(process.log[log_lines:])
    assert "it/s" not in log and "%|" not in log, log  # no tqdm bar per job
