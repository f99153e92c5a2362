"""Time and peak memory against the number of input tokens (paper Fig. 1), with the fitted log-log exponent.

``--what model``: the ``dinov2-s14`` preset (random weights) upsamples 384 x t x t tokens of a 14t x 14t image to
pixel density (4 steps and the resize to 14t x 14t). ``--what attender``: the Local Attender of that last step
alone (value 8t x 8t -> 16t x 16t, C = 384, n = 17), default eager path. Each point runs in a fresh process; peak
memory as in _common.py. The exponent is the least-squares slope of log(y) on log(tokens) over --fit-from and up.

    python benchmarks/scaling.py [--what model|attender] [--tokens 8 16 32 64] [--repeats 5] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from _common import ROOT, environment, fit_loglog, loglog_plot, measure, run_case, write_json


def worker(args: argparse.Namespace) -> dict:
    from uplift_diffusion import NEIGHBOURHOODS, UPLiFTModel
    from uplift_diffusion.attender import local_attend

    if args.threads:
        torch.set_num_threads(args.threads)
    t, device = args.tokens, torch.device(args.device)
    torch.manual_seed(0)
    if args.what == "model":
        model = UPLiFTModel.from_preset("dinov2-s14").to(device).eval()
        image = model.normalize_image(torch.rand(1, 3, 14 * t, 14 * t, device=device))
        features = torch.randn(1, 384, t, t, device=device)

        def fn():
            return model(image, features, iterations=4, output_size=14 * t)
    else:
        value = torch.randn(1, 384, 8 * t, 8 * t, device=device)
        attention = torch.softmax(torch.randn(1, 17, 16 * t, 16 * t, device=device), dim=1)

        def fn():
            return local_attend(attention, value, NEIGHBOURHOODS[17])

    with torch.inference_mode():
        result = measure(fn, device, warmup=1, repeats=args.repeats)
    return {**vars(args), **result}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--what", choices=["model", "attender"], default="model")
    parser.add_argument("--tokens", type=int, nargs="+", default=[8, 16, 32, 64], help="token grid sides t")
    parser.add_argument("--fit-from", type=int, default=16, help="smallest t used in the fit")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads per point (0: torch's default)")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "benchmarks")
    args = parser.parse_args()
    if args.worker:
        args.tokens = args.tokens[0]
        for key in ("worker", "fit_from", "out"):
            delattr(args, key)
        print(json.dumps(worker(args)))
        return 0

    rows = []
    print(f"{'tokens':>8} {'median s':>9} {'peak MiB':>9}", flush=True)
    for t in args.tokens:
        row = run_case(Path(__file__), ["--what", args.what, "--tokens", t, "--device", args.device,
                                        "--repeats", args.repeats, "--threads", args.threads], timeout=7200)
        rows.append(row)
        if "error" in row:
            print(f"{t:>6}² failed: {row['error']}", flush=True)
        else:
            print(f"{t:>6}² {row['median_s']:9.4f} {row['peak_mib']:9.1f}", flush=True)
    fit = [r for r in rows if "error" not in r and r["tokens"] >= args.fit_from]
    exponents = {}
    if len(fit) >= 2:
        for key in ("median_s", "peak_mib"):
            exponents[key] = fit_loglog([r["tokens"] ** 2 for r in fit], [r[key] for r in fit])
        print(f"log-log exponent vs tokens (t >= {args.fit_from}): time {exponents['median_s']:.3f}, "
              f"peak memory {exponents['peak_mib']:.3f}")
    name = f"scaling_{args.what}"
    write_json(args.out / f"{name}.json", {"environment": environment(), "what": args.what, "threads": args.threads,
                                           "exponents": exponents, "rows": rows})
    ok = [r for r in rows if "error" not in r]
    loglog_plot(args.out / f"{name}.png", [
        {"title": f"UPLiFT {args.what}: {label} vs tokens", "xlabel": "input tokens", "ylabel": label,
         "series": [{"label": f"slope {exponents.get(key, float('nan')):.2f}", "x": [r["tokens"] ** 2 for r in ok],
                     "y": [r[key] for r in ok]}]}
        for key, label in (("median_s", "seconds"), ("peak_mib", "peak MiB"))
    ])
    print(f"wrote {args.out / (name + '.json')} and {args.out / (name + '.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
