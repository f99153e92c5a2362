"""Whole-model speed and peak memory: UPLiFT (random weights of a preset) against latent bilinear interpolation.

Cases (each in a fresh process, peak memory as in _common.py):
- ``sd15-vae``: 4 x 64 x 64 latents of a 512 x 512 image, 1 step (128²) and 2 steps (256²);
- ``dinov2-s14``: 384 x 32 x 32 tokens of a 448 x 448 image, 4 steps and a resize to 448² (pixel-dense).
The baseline is ``F.interpolate(features, size, mode="bilinear")`` to the same output size.
Timing includes the encoder (it runs once per call), not the backbone.

    python benchmarks/model_speed.py [--dtypes float32 bfloat16] [--repeats 5] [--threads N] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import ROOT, environment, measure, run_case, write_json

from uplift_diffusion.utils.dtypes import to_dtype

# name -> (preset, feature channels, token grid, iterations, output size or None)
CASES = {
    "sd15-vae 64->128": ("sd15-vae", 4, 64, 1, None),
    "sd15-vae 64->256": ("sd15-vae", 4, 64, 2, None),
    "dinov2-s14 32->448 (pixel-dense)": ("dinov2-s14", 384, 32, 4, 448),
}
DTYPE_CHOICES = ("bfloat16", "float32")  # float16 has no fast CPU kernels


def worker(args: argparse.Namespace) -> dict:
    from uplift_diffusion import UPLiFTModel

    if args.threads:
        torch.set_num_threads(args.threads)
    preset, channels, tokens, iterations, output_size = CASES[args.case]
    device, dtype = torch.device(args.device), to_dtype(args.dtype)
    torch.manual_seed(0)
    model = UPLiFTModel.from_preset(preset).to(device, dtype).eval()
    patch = model.config.patch_size
    image = torch.rand(1, 3, tokens * patch, tokens * patch, device=device, dtype=dtype)
    features = torch.randn(1, channels, tokens, tokens, device=device, dtype=dtype)
    size = output_size or tokens * 2**iterations
    if args.method == "uplift":
        image = model.normalize_image(image)

        def fn():
            return model(image, features, iterations=iterations, output_size=output_size)
    else:

        def fn():
            return F.interpolate(features, size=(size, size), mode="bilinear", align_corners=False)

    with torch.inference_mode():
        result = measure(fn, device, warmup=1, repeats=args.repeats)
    return {**vars(args), **result, "output": [channels, size, size]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--case", choices=list(CASES), help=argparse.SUPPRESS)
    parser.add_argument("--method", choices=["uplift", "bilinear"], help=argparse.SUPPRESS)
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, help=argparse.SUPPRESS)
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--dtypes", nargs="+", choices=DTYPE_CHOICES, default=["float32", "bfloat16"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per case (after one warm-up)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads per case (0: torch's default)")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "benchmarks")
    args = parser.parse_args()
    if args.worker:
        for key in ("worker", "cases", "dtypes", "out"):
            delattr(args, key)
        print(json.dumps(worker(args)))
        return 0

    rows = []
    print(f"{'case':34s} {'dtype':>9} {'method':>9} {'median s':>9} {'peak MiB':>9}", flush=True)
    for case in args.cases:
        for dtype in args.dtypes:
            for method in ("uplift", "bilinear"):
                row = run_case(Path(__file__), ["--case", case, "--method", method, "--dtype", dtype, "--device",
                                                args.device, "--repeats", args.repeats, "--threads", args.threads])
                rows.append(row)
                if "error" in row:
                    print(f"{case:34s} {dtype:>9} {method:>9} failed: {row['error']}", flush=True)
                else:
                    print(f"{case:34s} {dtype:>9} {method:>9} {row['median_s']:9.4f} {row['peak_mib']:9.1f}",
                          flush=True)
    write_json(args.out / "model_speed.json", {"environment": environment(), "threads": args.threads, "rows": rows})
    print(f"wrote {args.out / 'model_speed.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
