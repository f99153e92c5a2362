"""`uplift-diffusion serve` in a real browser: headless Chromium (Debian's package) driven by Playwright opens the page
served on localhost, uploads real photos, and reads what a user would see.

Skipped only where no Chromium executable is installed (``.ci/run`` installs it with apt-get).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

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
    """``uplift-diffusion serve`` in a subprocess; returns once it printed its address (it answers then)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_TEMP_DIR": str(tmp / "gradio"),
           "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "uplift_diffusion.cli", "serve", "--port", str(free_port()),
                                *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines = []
    for line in process.stdout:  # ends when the server exits
        lines.append(line)
        if "uplift-diffusion serve: open " in line:
            return process, line.split("open ", 1)[1].split()[0]
    process.wait()
    raise AssertionError("the server did not start:\n" + "".join(lines))


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
    Image.new("RGB", (1, 1), (200, 30, 30)).save(root / "dot.png")
    Image.new("RGB", (700, 700), (30, 90, 160)).save(root / "poster.png")  # 490,000 pixels > MAX_PIXELS
    return {"chelsea": source / "chelsea.png", "crop": root / "coffee_crop.png",
            "small": root / "astronaut_crop.png", "notes": root / "notes.png",
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
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    page.goto(server[1])
    page.wait_for_selector("#photos input[type=file]", state="attached")
    yield page
    context.close()


def upload(page, *files: Path) -> None:
    page.locator("#photos input[type=file]").set_input_files([str(f) for f in files])
    page.wait_for_selector(f"#photos >> text={files[-1].stem}")  # the upload finished and is listed


def wait_for_result(page) -> str:
    page.wait_for_selector("#info p", timeout=RUN_TIMEOUT_MS)
    return page.inner_text("#info")


def error_toast(page) -> str:
    toast = page.locator(".toast-body").last
    toast.wait_for(timeout=RUN_TIMEOUT_MS)
    text = toast.inner_text()
    page.locator(".toast-close").last.click()
    toast.wait_for(state="detached")
    return text


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


def test_upscale_2x_shows_and_downloads_twice_the_size(page, photos, tmp_path):
    photo = photos["chelsea"]
    with Image.open(photo) as image:
        width, height = image.size
    upload(page, photo)
    page.click("#scale >> text=2×")
    page.click("#upscale")
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

    # Downloaded: the PNG offered by the page.
    with page.expect_download() as download_info:
        page.click("#download a[download]")
    download = download_info.value
    assert download.suggested_filename == f"{photo.stem}_x2.png"
    target = tmp_path / download.suggested_filename
    download.save_as(target)
    with Image.open(target) as result:
        assert result.format == "PNG" and result.size == (2 * width, 2 * height) and result.mode == "RGB"
    assert save_screenshot(page, tmp_path, "upscale_2x.png").stat().st_size > 0


@pytest.mark.parametrize("case,expected", [
    ("notes", "notes.png is not an image this page can read"),
    ("dot", "dot.png is 1×1 pixels; the smallest image"),
    ("poster", "poster.png is 700×700 (0.5 MP), over this page's limit of 0.4 MP per photo"),
])
def test_bad_input_gets_a_readable_message_and_the_server_keeps_serving(page, photos, tmp_path, case, expected):
    upload(page, photos[case])
    page.click("#upscale")
    message = error_toast(page)
    assert expected in message
    assert "/tmp" not in message and "Traceback" not in message  # no server paths, no tracebacks
    if case == "poster":
        assert "tiles" in message
        save_screenshot(page, tmp_path, "bad_input_too_large.png")

    # The same page, the same server: a good photo still works.
    page.locator("#photos button[aria-label='Clear']").click()
    upload(page, photos["crop"])
    page.click("#upscale")
    assert "160×120 → 320×240" in wait_for_result(page)


def test_several_photos_in_one_request_keep_their_order(page, photos):
    upload(page, photos["crop"], photos["small"])
    page.click("#upscale")
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
    warm_up.click("#upscale")
    wait_for_result(warm_up)
    warm_up.context.close()
    rss_before = rss_bytes(process.pid)

    for page in pages:  # one after the other, each request in the queue before the next is sent
        page.click("#upscale")
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


def test_features_tab_without_a_backbone_says_how_to_pass_one(browser, tmp_path):
    from uplift_diffusion import app

    features = app.FeatureStrips.load(None)
    demo = app.build_demo(app.PageUpscaler(pipeline=None), features)
    url = app.launch(demo, app.PageLimits(), port=free_port(), block=False)
    try:
        page = browser.new_page()
        page.goto(url)
        page.get_by_role("tab", name="Features").click()
        text = page.inner_text("#features-unavailable")
        assert "not available" in text and "--backbone dinov2-s14" in text and "--backbone-weights" in text
        page.close()
    finally:
        demo.close()
