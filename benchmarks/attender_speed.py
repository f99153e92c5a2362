"""Local Attender speed and peak memory: our paths against the direct materialising formulation.

Paths (each case runs in a fresh process, see _common.py for how peak memory is measured):
- ``direct``: stack the n shifted, nearest-upsampled value maps into [B, C, n, cH, cW], multiply by the attention,
  sum over n (uplift_diffusion/testing.py; filled slot by slot and multiplied in place, its most frugal form).
- ``default``: ``local_attend`` as the model runs it eagerly (cache-sized tiles).
- ``compiled``: ``torch.compile(local_attend, fullgraph=True, dynamic=False)``, what ``model.compile()`` or
  ``torch.compile(model.attender)`` runs: the tiled kernel as the custom op ``uplift_diffusion::local_attend``.
- ``compiled_fused``: ``torch.compile`` of ``local_attend_fused``, inductor's own fusion of the channels-last
  single-expression formulation (the path traced when gradients are needed); channels-last strided output.

    python benchmarks/attender_speed.py [--sizes 64 128 256] [--channels 384 4] [--dtype float32] [--threads N]
        [--out DIR]

Prints a table, writes DIR/attender_speed.json and DIR/attender_speed.png (DIR defaults to outputs/benchmarks).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from _common import ROOT, environment, loglog_plot, measure, run_case, write_json

from uplift_diffusion.utils.dtypes import DTYPE_NAMES, to_dtype

PATHS = ("direct", "default", "compiled", "compiled_fused")


def _ratio(value: float | None) -> str:
    return f"{value:8.1f}x" if value is not None else f"{'-':>9}"


def worker(args: argparse.Namespace) -> dict:
    from uplift_diffusion.attender import NEIGHBOURHOODS, local_attend, local_attend_fused
    from uplift_diffusion.testing import direct_local_attend

    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype, offsets = torch.device(args.device), to_dtype(args.dtype), NEIGHBOURHOODS[args.n]
    g = torch.Generator().manual_seed(0)
    value = torch.randn(1, args.channels, args.size, args.size, generator=g).to(device, dtype)
    logits = torch.randn(1, args.n, args.c * args.size, args.c * args.size, generator=g)
    attention = torch.softmax(logits, dim=1).to(device, dtype)
    del logits
    if args.path == "direct":
        fn = direct_local_attend
    elif args.path == "default":
        fn = local_attend
    else:
        target = local_attend if args.path == "compiled" else local_attend_fused
        fn = torch.compile(target, fullgraph=True, dynamic=False)
    with torch.inference_mode():
        result = measure(lambda: fn(attention, value, offsets), device, warmup=1, repeats=args.repeats)
    output_mib = attention.shape[-1] * attention.shape[-2] * args.channels * value.element_size() / 2**20
    return {**vars(args), **result, "output_mib": output_mib}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--path", choices=PATHS, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256], help="value map sizes H = W")
    parser.add_argument("--channels", type=int, nargs="+", default=[384, 4], help="value channels C")
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS))
    parser.add_argument("--c", type=int, default=2, help="upsampling factor c")
    parser.add_argument("--n", type=int, default=17, help="neighbourhood size n")
    parser.add_argument("--dtype", choices=sorted(DTYPE_NAMES), default="float32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per case (after one warm-up)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads per case (0: torch's default)")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "benchmarks")
    args = parser.parse_args()
    if args.worker:
        args.channels = args.channels[0]
        for key in ("worker", "sizes", "paths", "out"):
            delattr(args, key)
        print(json.dumps(worker(args)))
        return 0

    rows = []
    print(f"{'C':>4} {'value':>6} {'output':>7} {'path':>14} {'median s':>9} {'peak MiB':>9} {'speed-up':>9} "
          f"{'mem ratio':>9}", flush=True)
    for channels in args.channels:
        for size in args.sizes:
            base = None
            for path in args.paths:
                case = ["--path", path, "--channels", channels, "--size", size, "--c", args.c, "--n", args.n,
                        "--dtype", args.dtype, "--device", args.device, "--repeats", args.repeats,
                        "--threads", args.threads]
                row = run_case(Path(__file__), case)
                rows.append(row)
                if "error" in row:
                    print(f"{channels:>4} {size:>6} {args.c * size:>7} {path:>14} failed: {row['error']}", flush=True)
                    continue
                base = row if path == "direct" else base
                speed = base["median_s"] / row["median_s"] if base else None
                # below ~1 MiB the peak RSS delta is page-granular noise: no ratio (null in the JSON, "-" here)
                mem = base["peak_mib"] / row["peak_mib"] if base and row["peak_mib"] >= 1 else None
                row.update(speedup_vs_direct=speed, memory_ratio_vs_direct=mem)
                print(f"{channels:>4} {size:>5}² {args.c * size:>6}² {path:>14} {row['median_s']:9.4f} "
                      f"{row['peak_mib']:9.1f} {_ratio(speed)} {_ratio(mem)}", flush=True)
    payload = {"environment": environment(), "threads": args.threads, "dtype": args.dtype, "device": args.device,
               "c": args.c, "n": args.n,
               "memory_method": next((r["memory_method"] for r in rows if "memory_method" in r), None),
               "rows": rows}
    write_json(args.out / "attender_speed.json", payload)
    ok = [r for r in rows if "error" not in r]
    panels = []
    for key, label in (("median_s", "seconds"), ("peak_mib", "peak MiB")):
        series = [
            {"label": f"{path} C={ch}",
             "x": [(args.c * r["size"]) ** 2 for r in ok if r["path"] == path and r["channels"] == ch],
             "y": [r[key] for r in ok if r["path"] == path and r["channels"] == ch]}
            for ch in args.channels for path in args.paths
        ]
        panels.append({"title": f"Local Attender {label} ({args.dtype}, {args.device})", "xlabel": "output pixels",
                       "ylabel": label, "series": [s for s in series if s["x"]]})
    loglog_plot(args.out / "attender_speed.png", panels)
    print(f"wrote {args.out / 'attender_speed.json'} and {args.out / 'attender_speed.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
