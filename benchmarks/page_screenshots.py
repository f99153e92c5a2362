"""Screenshots of the web page for the docs: the first screen a visitor sees once a photo is upscaled, in headless
Chromium at a laptop's and a phone's width (1366×900, 390×844).

Starts ``uplift-diffusion serve`` (no flags but the port) with this interpreter, uploads the photo, picks the
scale, presses Upscale and waits for the result (on the phone: without scrolling, where the page leaves the window).
Saves ``<prefix>_1366.png`` and ``<prefix>_390.png``, reduced to 64 colours and the laptop's halved, so that the
docs stay small. Point ``PYTHONPATH`` at another checkout to photograph that version of the page.

    nice -n 10 python benchmarks/page_screenshots.py --photo ../shared/data/photos/chelsea.png --prefix docs/page_after
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import socket
import sys
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from page_time_left import start_server  # noqa: E402  (the benchmark beside this script starts the server)

from uplift_diffusion.testing import SHARED  # noqa: E402

WIDTHS = {1366: (900, 2), 390: (844, 1)}  # width: (height, shrink factor for the docs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photo", type=Path, default=SHARED / "data" / "photos" / "chelsea.png")
    parser.add_argument("--scale", default="2")
    parser.add_argument("--prefix", type=Path, default=Path("outputs/page"))
    parser.add_argument("--chromium", default=os.environ.get("UPLIFT_CHROMIUM") or shutil.which("chromium"))
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = start_server(port, {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"})
    args.prefix.parent.mkdir(parents=True, exist_ok=True)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=args.chromium, args=["--headless", "--no-sandbox"])
            for width, (height, shrink) in WIDTHS.items():
                phone = width < 500
                page = browser.new_page(viewport={"width": width, "height": height}, is_mobile=phone,
                                        has_touch=phone)
                page.set_default_timeout(900_000)
                page.goto(f"http://127.0.0.1:{port}/")
                page.locator("#photos input[type=file]").set_input_files([str(args.photo)])
                page.wait_for_selector(f"#photos >> text={args.photo.stem}")
                page.locator("#scale label").filter(has_text=f"{args.scale}×").first.dispatch_event("click")
                page.locator("#upscale").dispatch_event("click")  # where the button is: no scrolling to it first
                page.wait_for_selector("#info p")
                page.wait_for_function("() => [...document.querySelectorAll('#slider img')].every("
                                       "i => i.complete && i.naturalWidth)")
                shot = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
                shot = shot.resize((shot.width // shrink, shot.height // shrink), Image.LANCZOS)
                path = args.prefix.with_name(f"{args.prefix.name}_{width}.png")
                shot.quantize(64, method=Image.MEDIANCUT).save(path, optimize=True)
                print(f"{path}: {path.stat().st_size / 1024:.0f} KB", flush=True)
                page.close()
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
