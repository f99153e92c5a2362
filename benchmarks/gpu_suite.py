"""GPU suite: the paper's latency protocol (appendix B.2) on the cases of its tables, in one command.

Cases (each case x dtype runs in a fresh process, so one case's peak memory cannot hide another's):
- ``sd15-vae 512->1024`` / ``sd15-vae 512->2048``: 4 x 64 x 64 latents of a 512² image, guided by that image,
  1 / 2 UPLiFT steps (``sd15-vae`` preset), decoded by an SD 1.5-shaped ``AutoencoderKL``. Measured: UPLiFT alone,
  latent bilinear and UPLiFT end to end through ``UPLiFTSuperResolutionPipeline`` (encode, upscale, decode, colour
  correction: what users run), and UPLiFT with its Local Attender compiled (``torch.compile``).
- ``dinov2-s14 448 pixel-dense``: 384 x 32 x 32 tokens of a 448² image, 4 steps and a resize to 448²; the Local
  Attender eager and compiled, and bilinear interpolation to the same size as the baseline.
Weights are random (``UPLiFTModel.from_preset``; the VAE is ``AutoencoderKL`` with SD 1.5's config) unless
``--vae`` names a real diffusers VAE folder: latency and memory do not depend on the values of the weights.

Protocol: ``--warmup`` untimed calls (3; compilation happens here), then the mean over ``--iterations`` timed calls
(10), batch 1, via ``eval/latency.py``. Peak memory over the timed calls (``benchmarks/_common.py``): on CUDA
``torch.cuda.max_memory_allocated`` minus what was allocated before; on CPU the peak resident set (VmHWM after
clear_refs) minus the resident set before, which is an RSS-based measure, not an allocator count. The JSON and the
table say which device and which memory measure produced every number.

    python benchmarks/gpu_suite.py [--device cuda] [--dtypes float32 bfloat16 float16] [--budget-s 420] [--out DIR]
    python benchmarks/gpu_suite.py --quick --device cpu --jobs 3  # tiny sizes end to end, cases at once (the tests)

Writes DIR/gpu_suite.json and DIR/gpu_suite.md (DIR defaults to outputs/gpu_suite).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from _common import ROOT, PeakMemory, environment, run_case, write_json

from uplift_diffusion.utils.dtypes import DTYPE_NAMES, to_dtype

# name -> (preset, image side, UPLiFT steps, output size or None); --quick shrinks the image side
CASES = {
    "sd15-vae 512->1024": ("sd15-vae", 512, 1, None),
    "sd15-vae 512->2048": ("sd15-vae", 512, 2, None),
    "dinov2-s14 448 pixel-dense": ("dinov2-s14", 448, 4, 448),
}
QUICK_IMAGE = {"sd15-vae": 64, "dinov2-s14": 56}
QUICK_PRESET = {"sd15-vae": "tiny-vae"}  # --quick: the same structure, a few hundred thousand parameters
# SD 1.5's VAE (runwayml/stable-diffusion-v1-5, vae/config.json)
SD15_VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32, sample_size=512,
    block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, act_fn="silu", scaling_factor=0.18215,
)
QUICK_VAE_WIDTHS = (32, 32, 64, 64)  # --quick: the same structure with narrower blocks
TABLE_HEADERS = ("case", "input", "dtype", "measurement", "mean ms", "std ms", "peak MiB")


def build_vae(args: argparse.Namespace):
    """The decoder side of the cases: a real VAE folder (``--vae``) or SD 1.5's architecture with random weights."""
    from diffusers import AutoencoderKL

    if args.vae:
        return AutoencoderKL.from_pretrained(args.vae), f"AutoencoderKL from {args.vae}"
    config = dict(SD15_VAE_CONFIG, block_out_channels=QUICK_VAE_WIDTHS) if args.quick else SD15_VAE_CONFIG
    torch.manual_seed(0)
    label = "AutoencoderKL, SD 1.5 config" + (f", widths {QUICK_VAE_WIDTHS} (--quick)" if args.quick else "")
    return AutoencoderKL(**config), label + ", random weights"


def timed(name: str, fn, args: argparse.Namespace, device: torch.device, dtype: torch.dtype,
          compiled: bool = False) -> dict:
    """The latency protocol plus the peak memory of the timed calls (warm-up, and so compilation, excluded)."""
    from uplift_diffusion.eval.latency import measure_latency

    with torch.inference_mode():
        for _ in range(args.warmup):
            fn()
        peak = PeakMemory(device)
        peak.start()
        result = measure_latency(fn, device, dtype, batch_size=1, warmup=0, iterations=args.iterations,
                                 compiled=compiled)
        result.update(measurement=name, warmup=args.warmup, peak_mib=peak.stop() / 2**20,
                      memory_method=peak.method)
    print(f"  {name}: {result['mean_s'] * 1e3:.1f} ms", file=sys.stderr, flush=True)
    return result


def worker(args: argparse.Namespace) -> dict:
    """One case at one dtype: every measurement of it, in one process (eager first, then compiled)."""
    import torch.nn.functional as F
    from uplift_diffusion.eval.latency import compile_modules

    from uplift_diffusion import UPLiFTModel, UPLiFTSuperResolutionPipeline

    preset, side, iterations, output_size = CASES[args.case]
    side = QUICK_IMAGE[preset] if args.quick else side
    device, dtype = torch.device(args.device), to_dtype(args.dtype)
    torch.manual_seed(0)
    model_preset = QUICK_PRESET.get(preset, preset) if args.quick else preset
    model = UPLiFTModel.from_preset(model_preset).to(device, dtype).eval()
    channels, tokens = model.config.in_channels, side // model.config.patch_size
    g = torch.Generator().manual_seed(0)
    guide = model.normalize_image(torch.rand(1, 3, side, side, generator=g).to(device, dtype))
    features = torch.randn(1, channels, tokens, tokens, generator=g).to(device, dtype)
    out_side = output_size if output_size is None or not args.quick else side
    size = out_side or tokens * 2**iterations

    def uplift():
        return model(guide, features, iterations=iterations, output_size=out_side)

    def bilinear():
        return F.interpolate(features, size=(size, size), mode="bilinear", align_corners=False)

    rows, info = [], {"uplift_preset": model_preset, "uplift_params_m": model.num_parameters() / 1e6}
    rows.append(timed("UPLiFT (eager)", uplift, args, device, dtype))
    if preset == "sd15-vae":  # end to end as users run it: the super-resolution pipeline (encode, ..., correct)
        vae, info["vae"] = build_vae(args)
        pipe = UPLiFTSuperResolutionPipeline(vae=vae.to(device, dtype).eval(), upsampler=model)
        pipe.set_progress_bar_config(disable=True)
        image01 = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(1))

        def pipeline(upsampling):
            return lambda: pipe(image01, scale=2**iterations, output_type="pt", upsampling=upsampling).images

        rows.append(timed("latent bilinear (pipeline)", pipeline("latent-bilinear"), args, device, dtype))
        rows.append(timed("UPLiFT (pipeline, eager)", pipeline("uplift"), args, device, dtype))
        info["output"] = [3, 8 * size, 8 * size]
    else:
        rows.append(timed("bilinear", bilinear, args, device, dtype))
        info["output"] = [channels, size, size]
    if not args.no_compile:
        compile_modules([model.attender])
        rows.append(timed("UPLiFT (Local Attender compiled)", uplift, args, device, dtype, compiled=True))
    return {"case": args.case, "dtype": args.dtype, "image": side, **info, "rows": rows}


def markdown(payload: dict) -> str:
    """The suite's table, headed by what produced it (device, memory measure, protocol)."""
    from uplift_diffusion.eval.common import markdown_table

    env, jobs = payload["environment"], payload.get("jobs", 1)
    lines = [f"# GPU suite{' (--quick: tiny sizes)' if payload['quick'] else ''}", "",
             f"- device: **{payload['device_name']}** (`--device {payload['device']}`)",
             f"- peak memory: {payload['memory_method']}",
             f"- protocol: {payload['warmup']} warm-up calls, mean of {payload['iterations']} timed calls, batch 1",
             f"- torch {env['torch']}, {env['threads']} CPU threads, wall-clock {payload['wall_s']:.0f} s"
             + (f", {jobs} cases at once (their timings share the machine)" if jobs > 1 else ""), ""]
    table_rows = []
    for case in payload["cases"]:
        if "error" in case:
            table_rows.append((case["case"], None, case["dtype"], f"failed: {case['error']}", None, None, None))
            continue
        for r in case["rows"]:
            table_rows.append((case["case"], f"{case['image']}²", case["dtype"], r["measurement"], r["mean_s"] * 1e3,
                               r["std_s"] * 1e3, r["peak_mib"]))
    lines.append(markdown_table(TABLE_HEADERS, table_rows))
    vaes = sorted({c["vae"] for c in payload["cases"] if c.get("vae")})
    presets = sorted({c["uplift_preset"] for c in payload["cases"] if c.get("uplift_preset")})
    lines += [f"VAE: {v}" for v in vaes] + [f"UPLiFT: random weights of the presets {', '.join(presets)}", ""]
    return "\n".join(lines)


def device_name(device: str) -> str:
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda was asked for but torch sees no CUDA device; pass --device cpu")
        return torch.cuda.get_device_name(dev)
    return f"{dev.type.upper()} (not a GPU: these numbers say nothing about GPU latency)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--case", choices=list(CASES), help=argparse.SUPPRESS)
    parser.add_argument("--dtype", choices=DTYPE_NAMES, help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtypes", nargs="+", choices=DTYPE_NAMES, default=None,
                        help="default: float32 bfloat16 float16 on CUDA, float32 bfloat16 elsewhere")
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--quick", action="store_true", help="tiny sizes and 1 + 2 calls (a smoke run, any device)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls (3; 1 with --quick)")
    parser.add_argument("--iterations", type=int, default=None, help="timed calls (10; 2 with --quick)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile measurements")
    parser.add_argument("--vae", default=None, help="a diffusers AutoencoderKL folder (default: random SD 1.5 VAE)")
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="cases not started within this many seconds are recorded as skipped")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="cases run at once (shortens a smoke run; their timings then share the machine)")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "gpu_suite")
    args = parser.parse_args()
    from uplift_diffusion.utils.io import write_text_atomic

    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    args.iterations = args.iterations if args.iterations is not None else (2 if args.quick else 10)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0

    name = device_name(args.device)
    dtypes = args.dtypes or (list(DTYPE_NAMES) if torch.device(args.device).type == "cuda" else ["float32", "bfloat16"])
    print(f"gpu suite on {name}", flush=True)
    start = time.perf_counter()
    common = ["--device", args.device, "--warmup", args.warmup, "--iterations", args.iterations,
              "--threads", args.threads] + (["--quick"] if args.quick else []) + (
              ["--no-compile"] if args.no_compile else []) + (["--vae", args.vae] if args.vae else [])

    def run(case: str, dtype: str) -> dict:
        left = args.budget_s - (time.perf_counter() - start)
        if left <= 0:
            return {"case": case, "dtype": dtype, "error": f"skipped: --budget-s {args.budget_s:.0f} used"}
        print(f"{case} {dtype}", flush=True)
        try:
            result = run_case(Path(__file__), ["--case", case, "--dtype", dtype, *common], timeout=max(left, 60))
        except subprocess.TimeoutExpired:
            result = {"error": f"timed out after {max(left, 60):.0f} s (--budget-s)"}
        if "error" in result:
            result = {"case": case, "dtype": dtype, "error": result["error"]}
            print(f"  failed: {case} {dtype}: {result['error']}", flush=True)
        return result

    todo = [(case, dtype) for case in args.cases for dtype in dtypes]
    with ThreadPoolExecutor(max(args.jobs, 1)) as pool:  # one job: the cases one after another, in order
        cases = list(pool.map(lambda item: run(*item), todo))
    methods = {r["memory_method"] for c in cases for r in c.get("rows", [])}
    payload = {"device": args.device, "device_name": name, "quick": args.quick, "warmup": args.warmup,
               "iterations": args.iterations, "jobs": args.jobs, "memory_method": ", ".join(sorted(methods)) or "-",
               "wall_s": time.perf_counter() - start, "environment": environment(), "cases": cases}
    write_json(args.out / "gpu_suite.json", payload)
    table = markdown(payload)
    write_text_atomic(args.out / "gpu_suite.md", table)
    print(table)
    print(f"wrote {args.out / 'gpu_suite.json'} and {args.out / 'gpu_suite.md'}")
    return 1 if any("error" in c and not c["error"].startswith("skipped") for c in cases) else 0


if __name__ == "__main__":
    sys.exit(main())
