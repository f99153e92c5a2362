"""Big images with the built-in pair: 512x512 -> 2048x2048 (4x) through taef2 + UPLiFT, with and without tiling.

Each case runs in a fresh Python process (``_common.run_case``) and reports:

* seconds: wall-clock of one pipeline call (encode, two UPLiFT steps, decode, colour correction), after the models
  are loaded; no warm-up (a big image is processed once in real use); and its CPU seconds (all threads), which
  other jobs sharing the cores do not inflate as much as the wall-clock;
* peak memory: the process's peak resident set during that call minus the resident set before it (``VmHWM`` after
  ``clear_refs``; see ``benchmarks/_common.py``), and the process's whole peak RSS (``ru_maxrss``: Python, torch, the
  models and the call together).

The input is scikit-image's ``astronaut`` (512x512, shipped with scikit-image). The output of every case is compared
with the untiled one (PSNR) so that tiling is shown to change the picture only slightly. Writes
``results.json`` and each case's output (``<case>.png``) to ``--out`` and prints a table.

    python benchmarks/big_image.py --out outputs/big_image
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import _MIB, PeakMemory, environment, run_case, write_json  # noqa: E402

from uplift_diffusion.utils.image_ops import float_to_uint8  # noqa: E402

# name -> tile_size in input pixels (None: whole image)
CASES = {"untiled": None, "tiles 256": 256, "tiles 128": 128}


def worker(args: argparse.Namespace) -> None:
    from skimage import data

    from uplift_diffusion import UPLiFTSuperResolutionPipeline

    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = UPLiFTSuperResolutionPipeline.from_builtin("taef2")
    pipe.set_progress_bar_config(disable=True)
    image = data.astronaut()[: args.size, : args.size]
    tile_size = CASES[args.case]
    peak = PeakMemory(torch.device("cpu"))
    peak.start()
    start, cpu_start = time.perf_counter(), time.process_time()
    out = pipe(image, scale=4, tile_size=tile_size, output_type="np", generator=torch.Generator().manual_seed(0))
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    peak_bytes = peak.stop()
    result = out.images[0]
    np.save(args.save, result.astype(np.float32))
    print(json.dumps({
        "case": args.case, "tile_size": tile_size, "input": [args.size, args.size], "output": list(result.shape[:2]),
        "seconds": seconds, "cpu_seconds": cpu_seconds, "peak_delta_mib": peak_bytes / _MIB,
        "memory_method": peak.method,
        "process_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": torch.get_num_threads(),
    }))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1 / mse)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--case", default="untiled", choices=list(CASES), help=argparse.SUPPRESS)
    parser.add_argument("--save", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES), help="cases to run")
    parser.add_argument("--size", type=int, default=512, help="input side in pixels (default 512 -> 2048 output)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", type=Path, default=Path("outputs/big_image"))
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return 0

    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for case in args.cases:
        save = args.out / f"{case.replace(' ', '_')}.npy"
        row = run_case(Path(__file__), ["--case", case, "--size", args.size, "--threads", args.threads,
                                        "--save", save])
        if "error" not in row:
            row["image"] = np.load(save)
            save.unlink()
            png = save.with_suffix(".png")  # to look at the seams
            Image.fromarray(float_to_uint8(row["image"][None])[0]).save(png)
            row["output_png"] = str(png)
        rows.append(row)
        print(f"{case}: {row.get('seconds', float('nan')):.1f} s", file=sys.stderr)
    reference = next((r["image"] for r in rows if r.get("case") == "untiled" and "image" in r), None)
    for row in rows:
        image = row.pop("image", None)
        if reference is not None and image is not None:
            row["psnr_vs_untiled_db"] = psnr(image, reference)

    lines = ["| case | output | seconds | CPU seconds | peak RSS delta (MiB) | process peak RSS (MiB) | "
             "PSNR vs untiled (dB) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {' '.join(r['args'][1:2])} | error: {r['error']} | | | | | |")
            continue
        lines.append(f"| {r['case']} | {r['output'][1]}x{r['output'][0]} | {r['seconds']:.1f} | "
                     f"{r.get('cpu_seconds', float('nan')):.1f} | "
                     f"{r['peak_delta_mib']:.0f} | {r['process_peak_rss_mib']:.0f} | "
                     f"{r.get('psnr_vs_untiled_db', float('nan')):.2f} |")
    table = "\n".join(lines)
    print(table)
    write_json(args.out / "results.json", {"environment": environment(), "rows": rows, "table": table,
                                           "memory_method": rows[0].get("memory_method", "") if rows else ""})
    print(f"wrote {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
