"""Screenshots of the web page of any source tree, at a laptop's width and a phone's, in headless Chromium.

Serves the page of ``--source`` (a checkout of any commit; ``python -m uplift_diffusion.cli serve`` run there, so
that its own package is imported) and, at 1366x900 and at 390x844 (a phone: touch, mobile layout), saves the first
screen before anything is uploaded (``OUT/<width>_start.png``), then uploads the photos, picks the scale, presses
Upscale and, once an image larger than the photos is shown (or after ``--wait`` seconds), saves the whole page
(``OUT/<width>_result.png``) and the screen the user is left looking at (``OUT/<width>_result_view.png``). The
selectors are the ones a user goes by (a file input, the scale's text, the button's text), so pages of other
versions work as well; a step one version does not offer is written to ``OUT/notes.json`` with the timings and
where the download links are, and whether Upscale is on the first screen.

    git worktree add --detach /tmp/page_before 3a6da7d
    nice -n 10 python benchmarks/page_screenshots.py --source /tmp/page_before --out outputs/page_before
    nice -n 10 python benchmarks/page_screenshots.py --out outputs/page_after
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from page_time_left import free_port, start_server, stop_server  # noqa: E402

from uplift_diffusion.testing import SHARED  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SIZES = {1366: (900, False), 390: (844, True)}  # width: (height, a phone)
TIMEOUT_MS = 300_000  # one step of a page on a busy 2-core machine: seconds, sometimes minutes

# Any image on the page (the slider's halves, a gallery, a 1:1 view) wider than the widest photo by half: the result.
RESULT_SHOWN_JS = """(width) => [...document.querySelectorAll('img')].some(
    i => i.complete && i.naturalWidth > 1.5 * width && i.getBoundingClientRect().width > 0)"""
ON_SCREEN_JS = """(text) => [...document.querySelectorAll('button')].some(e => e.textContent.trim() == text && (
    r => r.height > 0 && r.bottom > 0 && r.top < innerHeight)(e.getBoundingClientRect()))"""
IMAGES_LOADED_JS = "() => [...document.querySelectorAll('img')].every(i => i.complete)"
DOWNLOADS_JS = """() => [...document.querySelectorAll('a, button')]
    .filter(e => (e.hasAttribute('download') || /download/i.test(e.textContent)) && e.getBoundingClientRect().height)
    .map(e => { const r = e.getBoundingClientRect();
                return {text: (e.textContent.trim() || e.getAttribute('aria-label') || e.getAttribute('title') || '')
                          .replace(/\\s+/g, ' ').slice(0, 60), file: e.getAttribute('download'),
                        top: Math.round(r.top + scrollY), on_screen: r.bottom > 0 && r.top < innerHeight}; })"""


def package_roots(source: Path) -> dict[str, str]:
    """The tree's installed package names and their folders, from its setup.py's ``ROOTS`` where it has one (the
    top-level pipelines/ and eval/ install inside the package)."""
    setup = source / "setup.py"
    if setup.is_file():
        for node in ast.parse(setup.read_text()).body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "ROOTS" for t in node.targets):
                return ast.literal_eval(node.value)
    return {"uplift_diffusion": "uplift_diffusion"}


def link_as_installed(source: Path, into: Path) -> None:
    """``into/uplift_diffusion``: links to the tree's package files, and its other folders linked where they install,
    so that the tree imports from ``into`` as it would installed (the editable install of the running tree would
    otherwise supply ``uplift_diffusion.pipelines`` and ``.eval``)."""
    roots = package_roots(source)
    package = into / "uplift_diffusion"
    package.mkdir(parents=True)
    for child in (source / roots["uplift_diffusion"]).iterdir():
        if child.name != "__pycache__":
            (package / child.name).symlink_to(child)
    for name, folder in roots.items():
        link = into.joinpath(*name.split("."))
        if name != "uplift_diffusion" and not link.exists():
            link.symlink_to(source / folder)


def served_files(cwd: Path, env: dict) -> list[Path]:
    """Where the server's ``uplift_diffusion`` and ``uplift_diffusion.pipelines`` come from (imported as the server
    imports them: ``python`` run in ``cwd``)."""
    code = "import uplift_diffusion, uplift_diffusion.pipelines; print(uplift_diffusion.__file__); " \
           "print(uplift_diffusion.pipelines.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"the tree's package does not import: {out.stderr.strip().splitlines()[-1]}")
    return [Path(line).resolve() for line in out.stdout.split()]


def commit_of(source: Path) -> str | None:
    out = subprocess.run(["git", "-C", str(source), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or None


def step(notes: list[str], what: str, action) -> bool:
    """Run one step of the page; a step this page does not offer is noted, not fatal."""
    try:
        action()
        return True
    except Exception as error:  # Playwright's timeouts and missing elements: the page of another version
        line = f"{what}: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        notes.append(line)
        print(f"  not done: {line}", flush=True)
        return False


def pick_scale(page, scale: int) -> None:
    label = f"{scale}×"
    radio = page.get_by_role("radio", name=label, exact=True)
    if radio.count():
        radio.first.check()
    else:
        page.get_by_text(label, exact=True).first.click()


def shoot(browser, url: str, width: int, args, photo_width: int, out: Path) -> dict:
    height, phone = SIZES[width]
    record: dict = {"viewport": [width, height], "phone": phone, "notes": []}
    notes = record["notes"]
    context = browser.new_context(viewport={"width": width, "height": height}, is_mobile=phone, has_touch=phone,
                                  device_scale_factor=args.phone_pixel_ratio if phone else 1)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    try:
        start = time.monotonic()
        page.goto(url)
        file_input = page.locator("input[type=file]").first
        step(notes, "page loaded", lambda: file_input.wait_for(state="attached"))
        step(notes, "images of the first screen", lambda: page.wait_for_function(IMAGES_LOADED_JS))
        record["load_s"] = round(time.monotonic() - start, 1)
        record["upscale_on_first_screen"] = page.evaluate(ON_SCREEN_JS, "Upscale")
        page.screenshot(path=str(out / f"{width}_start.png"))
        print(f"  {width}_start.png ({record['load_s']} s to load)", flush=True)

        uploaded = step(notes, "upload", lambda: file_input.set_input_files([str(p) for p in args.photo]))
        if uploaded:
            step(notes, "the upload listed", lambda: page.get_by_text(args.photo[-1].stem).first.wait_for())
        step(notes, f"scale {args.scale}×", lambda: pick_scale(page, args.scale))
        clicked = time.monotonic()
        pressed = step(notes, "press Upscale",
                       lambda: page.get_by_role("button", name="Upscale", exact=True).first.click())
        if pressed:
            shown = step(notes, f"result within {args.wait:g} s",
                         lambda: page.wait_for_function(RESULT_SHOWN_JS, arg=photo_width, timeout=args.wait * 1000,
                                                        polling=500))
            if shown:
                record["result_s"] = round(time.monotonic() - clicked, 1)
                print(f"  result after {record['result_s']} s", flush=True)
                step(notes, "images of the result", lambda: page.wait_for_function(IMAGES_LOADED_JS))
                page.wait_for_timeout(2000)  # the page's own scroll to the result and the layout settling
        record["scroll_y"] = page.evaluate("() => scrollY")
        record["downloads"] = page.evaluate(DOWNLOADS_JS)
        page.screenshot(path=str(out / f"{width}_result_view.png"))
        page.screenshot(path=str(out / f"{width}_result.png"), full_page=True)
        print(f"  {width}_result.png, {width}_result_view.png (scrolled to {record['scroll_y']} px; downloads: "
              f"{record['downloads']})", flush=True)
    finally:
        context.close()
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=ROOT, help="the source tree whose page is served")
    parser.add_argument("--out", type=Path, default=Path("outputs/page_screenshots"))
    parser.add_argument("--photo", type=Path, nargs="+", default=[SHARED / "data" / "photos" / "chelsea.png"])
    parser.add_argument("--scale", type=int, default=2)
    parser.add_argument("--width", type=int, nargs="+", default=sorted(SIZES, reverse=True), choices=sorted(SIZES))
    parser.add_argument("--wait", type=float, default=180.0, help="seconds to wait for the result")
    parser.add_argument("--phone-pixel-ratio", type=float, default=1.0)
    parser.add_argument("--chromium", default=os.environ.get("UPLIFT_CHROMIUM") or "/usr/bin/chromium")
    args = parser.parse_args()
    from PIL import Image
    from playwright.sync_api import sync_playwright

    source = args.source.resolve()
    args.photo = [photo.resolve() for photo in args.photo]
    for photo in args.photo:
        if not photo.is_file():
            raise SystemExit(f"no such photo: {photo}")
    photo_width = max(Image.open(photo).width for photo in args.photo)
    args.out.mkdir(parents=True, exist_ok=True)
    notes = {"source": str(source), "commit": commit_of(source), "photos": [p.name for p in args.photo],
             "scale": args.scale, "pages": {}}
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_TEMP_DIR": str(Path(tmp) / "gradio"),
               "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
        tree = Path(tmp) / "tree"
        link_as_installed(source, tree)
        env = {**env, "PYTHONPATH": str(tree)}
        files = served_files(tree, env)
        if not all(file.is_relative_to(source) for file in files):
            raise SystemExit(f"{source} does not hold the package: it imports from {', '.join(map(str, files))}")
        port = free_port()
        print(f"serving {files[0].parent} (commit {notes['commit']}) on port {port}", flush=True)
        server = start_server(port, env, cwd=tree)
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=args.chromium,
                                                     args=["--headless", "--no-sandbox"])
                try:
                    for width in args.width:
                        print(f"{width} px:", flush=True)
                        notes["pages"][width] = shoot(browser, f"http://127.0.0.1:{port}/", width, args,
                                                      photo_width, args.out)
                finally:
                    browser.close()
        finally:
            stop_server(server)
            (args.out / "notes.json").write_text(json.dumps(notes, indent=2, ensure_ascii=False) + "\n")
    print(f"screenshots and notes.json in {args.out}")


if __name__ == "__main__":
    main()
