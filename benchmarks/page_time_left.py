"""The web page's time left against the real time left, through whole jobs, in headless Chromium.

Starts ``uplift-diffusion serve`` (no flags but the port), opens the page, uploads the photos and presses Upscale
``--runs`` times (the first run includes the page's calibration; later runs use the work measured on the one before),
recording every change of the progress text with the browser's clock. The real time left at a moment is the time
from then until the result appears. Printed per run: the worst relative error of "about N s left" after the first
``--after`` seconds, whether "0 s" (or no estimate) was shown while more than 1 s remained, and the longest time the
bar stood still, with the machine's load average. Saves the samples as CSV, and a PNG chart when matplotlib is
installed. With two cores or more the server gets one of them and Chromium the others: a visitor's browser runs on
their own machine, and on a shared core its rendering slows the job being timed (``--shared-cores`` shares them).

    nice -n 10 python benchmarks/page_time_left.py --photo ../shared/data/photos/chelsea.png --scale 4 \\
        --out outputs/page_time_left
    nice -n 10 python benchmarks/page_time_left.py --photo ../shared/data/photos/{chelsea,coffee,astronaut,rocket}* \
        --scale 2 --out outputs/page_time_left_batch   # a 4-photo batch
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

from uplift_diffusion.testing import SHARED

WATCH_JS = """() => { window.samples = []; window.doneAt = null;
    new MutationObserver(() => {
        const bar = document.querySelector('#slider .progress-level-inner');
        const text = bar ? bar.textContent.trim() : null;
        const last = window.samples[window.samples.length - 1];
        if (text && (!last || last.text != text)) window.samples.push({t: performance.now(), text});
        if (!window.doneAt && document.querySelector('#info p:not([data-old])')) window.doneAt = performance.now();
    }).observe(document.body, {childList: true, subtree: true, characterData: true}); }"""


def parse_left(text: str) -> float | None:
    """Seconds of an "about N s left" / "about N min left" text (None: no estimate)."""
    match = re.search(r"about ([\d.]+) (s|min) left", text)
    if not match:
        return None
    return float(match.group(1)) * (60 if match.group(2) == "min" else 1)


def parse_percent(text: str) -> float | None:
    match = re.search(r"([\d.]+)%", text)
    return float(match.group(1)) if match else None


def score(samples: list[dict], clicked: float, done: float, after: float) -> dict:
    """Worst relative error of the estimate after ``after`` s (all; and while more than 1 s remained: below that the
    page's whole seconds, "about 1 s", cannot be within 30 %), the share of estimates within ±30 %, "0 s" / no
    estimate while > 1 s remained, and the longest time the bar stood still (between the first and the last
    sample)."""
    errors, over_1s, zero, stall = [], [], 0, 0.0
    moved_at, percent = None, None
    for sample in samples:
        real = (done - sample["t"]) / 1000
        left = parse_left(sample["text"])
        sample.update(elapsed=(sample["t"] - clicked) / 1000, real_left=real, page_left=left)
        if (sample["t"] - clicked) / 1000 >= after:
            if left is not None and real > 0:
                errors.append((left - real) / real)
                if real > 1:
                    over_1s.append(errors[-1])
            if real > 1 and (left is None or left < 0.5):
                zero += 1
        value = parse_percent(sample["text"])
        if value is not None and value != percent:
            if moved_at is not None:
                stall = max(stall, (sample["t"] - moved_at) / 1000)
            moved_at, percent = sample["t"], value
    if moved_at is not None:
        stall = max(stall, (done - moved_at) / 1000)
    worst = max(errors, key=abs) if errors else float("nan")
    worst_over_1s = max(over_1s, key=abs) if over_1s else float("nan")
    within = sum(abs(e) <= 0.3 for e in over_1s) / len(over_1s) if over_1s else float("nan")
    return {"seconds": (done - clicked) / 1000, "worst_error": worst, "worst_error_over_1s": worst_over_1s,
            "within_30_percent": within, "estimates": len(errors), "zero_or_none_while_over_1s": zero,
            "longest_stall_s": stall}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(port: int, env: dict, cwd: Path | None = None, cpus: set[int] | None = None) -> subprocess.Popen:
    """``uplift-diffusion serve --port PORT``; returns once it printed its address. ``python -m`` puts its working
    directory first on the import path, so ``cwd`` is the source tree whose page is served; ``cpus``: the cores it
    may run on."""
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    process = subprocess.Popen([sys.executable, "-m", "uplift_diffusion.cli", "serve", "--port", str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd,
                               preexec_fn=pin)
    started = threading.Event()

    def read() -> None:
        for line in process.stdout:
            if "uplift-diffusion serve: open " in line:
                started.set()
        started.set()

    threading.Thread(target=read, daemon=True).start()
    started.wait()
    if process.poll() is not None:
        raise SystemExit("the server did not start")
    return process


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photo", type=Path, nargs="+", default=[SHARED / "data" / "photos" / "chelsea.png"],
                        help="one photo, or several: one request with all of them")
    parser.add_argument("--scale", type=int, default=4, choices=(2, 4, 8))
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--after", type=float, default=2.0, help="seconds after the click before errors count")
    parser.add_argument("--width", type=int, default=1366)
    parser.add_argument("--out", type=Path, default=Path("outputs/page_time_left"))
    parser.add_argument("--chromium", default=os.environ.get("UPLIFT_CHROMIUM") or shutil.which("chromium"))
    parser.add_argument("--shared-cores", action="store_true",
                        help="let the browser run on the server's core (by default, with two cores or more, the "
                             "server gets one core and the browser the others, as a visitor's browser runs on "
                             "another machine)")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    apart = not args.shared_cores and len(cores) >= 2
    server = start_server(port, env, cpus={cores[0]} if apart else None)
    if apart:  # this process, Playwright's driver and Chromium: the other cores
        os.sched_setaffinity(0, set(cores[1:]))
    print(f"server on core {cores[0]}, browser on {cores[1:]}" if apart else "server and browser share the cores")
    rows, results = [], []
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=args.chromium, args=["--headless", "--no-sandbox"])
            page = browser.new_page(viewport={"width": args.width, "height": 900})
            page.set_default_timeout(1_800_000)  # a loaded machine: minutes to load the page and take the photos
            page.goto(f"http://127.0.0.1:{port}/")
            page.locator("#photos input[type=file]").set_input_files([str(photo) for photo in args.photo])
            page.wait_for_selector(f"#photos >> text={args.photo[-1].stem}")
            page.click(f"#scale >> text={args.scale}×")
            for run in range(1, args.runs + 1):
                page.evaluate("() => document.querySelectorAll('#info p').forEach(e => e.dataset.old = '1')")
                page.evaluate(WATCH_JS)
                clicked = page.evaluate("() => performance.now()")
                page.click("#upscale")
                page.wait_for_function("() => window.doneAt", timeout=1_800_000)
                samples, done = page.evaluate("() => [window.samples, window.doneAt]")
                result = {"run": run, **score(samples, clicked, done, args.after), "load": os.getloadavg()[0]}
                results.append(result)
                rows += [{"run": run, **{k: s[k] for k in ("elapsed", "real_left", "page_left", "text")}}
                         for s in samples]
                print(f"run {run}: {result['seconds']:.1f} s; worst error of the time left after {args.after:g} s: "
                      f"{result['worst_error']:+.0%} ({result['estimates']} estimates), while > 1 s left "
                      f"{result['worst_error_over_1s']:+.0%}, {result['within_30_percent']:.0%} within ±30 %; "
                      f"'0 s' or none while > 1 s "
                      f"left: {result['zero_or_none_while_over_1s']}; longest stall of the bar: "
                      f"{result['longest_stall_s']:.2f} s; load average {result['load']:.1f} on {os.cpu_count()} "
                      f"cores", flush=True)
            browser.close()
    finally:
        stop_server(server)
    with open(args.out / "samples.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["run", "elapsed", "real_left", "page_left", "text"])
        writer.writeheader()
        writer.writerows(rows)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"samples: {args.out / 'samples.csv'} (no matplotlib: no chart)")
        return
    figure, axis = plt.subplots(figsize=(7, 4))
    for result in results:
        run = [r for r in rows if r["run"] == result["run"]]
        axis.plot([r["elapsed"] for r in run], [r["real_left"] for r in run], "k-", lw=1,
                  label="real" if result["run"] == 1 else None)
        axis.plot([r["elapsed"] for r in run if r["page_left"] is not None],
                  [r["page_left"] for r in run if r["page_left"] is not None], ".-", label=f"page, run {result['run']}")
    names = args.photo[0].name if len(args.photo) == 1 else f"{len(args.photo)} photos"
    loads = ", ".join(f"{r['load']:.1f}" for r in results)
    axis.set(xlabel="seconds since Upscale", ylabel="seconds left",
             title=f"{names}, {args.scale}× (load average {loads} on {os.cpu_count()} cores)")
    axis.legend()
    figure.savefig(args.out / "time_left.png", dpi=100, bbox_inches="tight")
    print(f"chart: {args.out / 'time_left.png'}; samples: {args.out / 'samples.csv'}")


if __name__ == "__main__":
    main()
