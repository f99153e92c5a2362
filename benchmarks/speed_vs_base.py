"""Speed and peak memory of this tree's UPLiFT against an earlier commit's, measured side by side (A/B ratios).

The earlier commit is exported with ``git archive`` into a temporary folder outside the repository (no worktree,
no checkout).
Every measurement is a fresh Python process that imports the package from one tree or the other (``PYTHONPATH``
first; the worker checks which one it got); rounds interleave base and new, and each case keeps the best time
over its rounds, so that a load change on a shared machine hits both sides alike. One thread by default
(``torch.set_num_threads`` and ``OMP_NUM_THREADS``). Random weights, seed 0, inference mode, as model_speed.py.

Cases (``--cases``):
- ``dino-T``: ``dinov2-s14`` pixel-dense, 384 x T x T tokens of a 14T x 14T image -> 4 steps and the resize to
  14T x 14T (T = 8, 16, 32, 64);
- ``sd15-T``: the ``sd15-vae`` model, latents T x T -> 2T x 2T (one step, encoder included; T = 32, 64);
- ``attender``: the Local Attender alone (C = 384, value 256² -> 512², n = 17), and in the same process one
  elementwise pass over an output-sized tensor (``x * 1.0`` into a new tensor: one read, one write).

Variants of the new tree (``--variants``, each reported against the base's default path):
- ``default``: the exact path (fp32, eager);
- ``bf16``: the model and inputs in bfloat16 (opt-in; accuracy in tests/test_fast_paths.py);
- ``compile``: ``model.compile()`` (``torch.compile`` of the whole model; compile time excluded, one warm-up).

Another CPU emulated: ``--env ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2`` limits oneDNN and ATen to AVX2 in
both trees (an AVX2 CPU without AVX-512; the new tree's JSON rows record what its backend detected).

    python benchmarks/speed_vs_base.py --base HEAD~1 [--cases dino-8 dino-16 ...] [--variants default bf16]
        [--rounds 3] [--repeats 3] [--warmup 1] [--threads 1] [--env KEY=VALUE ...] [--out DIR]

Prints one row per case and variant: best wall seconds base / new with the spread of the rounds' bests (min-max),
the speed-up, the same for process CPU seconds (``time.process_time``: it depends less on other processes' load than
wall time), and peak MiB base / new. Run it under ``nice`` and on one pinned core (``taskset -c 1``; the workers
inherit both).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch
from _common import ROOT, environment, measure, write_json

CASES = {
    "dino-8": ("dinov2-s14", 8),
    "dino-16": ("dinov2-s14", 16),
    "dino-32": ("dinov2-s14", 32),
    "dino-64": ("dinov2-s14", 64),
    "sd15-32": ("sd15-vae", 32),
    "sd15-64": ("sd15-vae", 64),
    "attender": (None, 256),
}
VARIANTS = ("default", "bf16", "compile")


def worker(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    import uplift_diffusion

    tree = Path(uplift_diffusion.__file__).resolve().parents[1]
    if tree != Path(args.tree).resolve():
        raise RuntimeError(f"imported uplift_diffusion from {tree}, expected {args.tree}")
    preset, t = CASES[args.case]
    dtype = torch.bfloat16 if args.variant == "bf16" else torch.float32
    torch.manual_seed(0)
    extra = {}
    if preset is None:
        from uplift_diffusion.attender import NEIGHBOURHOODS, local_attend

        value = torch.randn(1, 384, t, t, dtype=dtype)
        attention = torch.softmax(torch.randn(1, 17, 2 * t, 2 * t), dim=1).to(dtype)

        def fn():
            return local_attend(attention, value, NEIGHBOURHOODS[17])

        like = torch.randn(1, 384, 2 * t, 2 * t, dtype=dtype)
        with torch.inference_mode():
            extra["elementwise_s"] = min(measure(lambda: like * 1.0, torch.device("cpu"), 1, args.repeats)["times_s"])
    else:
        model = uplift_diffusion.UPLiFTModel.from_preset(preset).to(dtype).eval()
        if args.variant == "compile":
            model.compile()
        p = model.config.patch_size
        image = model.normalize_image(torch.rand(1, 3, p * t, p * t)).to(dtype)
        features = torch.randn(1, model.config.in_channels, t, t, dtype=dtype)
        steps, size = (4, 14 * t) if preset.startswith("dino") else (1, None)

        def fn():
            return model(image, features, iterations=steps, output_size=size)

    with torch.inference_mode():
        warmup = max(args.warmup, 2) if args.variant == "compile" else args.warmup
        result = measure(fn, torch.device("cpu"), warmup=warmup, repeats=args.repeats)
    try:  # what the CPU backend detected (trees before it have none)
        from uplift_diffusion import fast_paths

        extra["backend"] = fast_paths.describe()
    except ImportError:
        extra["backend"] = None
    return {**vars(args), **result, **extra, "best_s": min(result["times_s"]), "best_cpu_s": min(result["cpu_s"])}


def _summary(runs: list[dict]) -> dict:
    """Best wall seconds over the rounds, the (min, max) of the rounds' bests, best CPU seconds, least peak MiB."""
    bests = [r["best_s"] for r in runs]
    return {"s": min(bests), "spread": (min(bests), max(bests)), "cpu": min(r["best_cpu_s"] for r in runs),
            "mib": min(r["peak_mib"] for r in runs)}


def export_tree(commit: str, out: Path) -> Path:
    """The files of ``commit`` under out/uplift-base-<sha> (``git archive``; reused when present)."""
    sha = subprocess.run(["git", "rev-parse", commit], cwd=ROOT, capture_output=True, text=True, check=True)
    sha = sha.stdout.strip()
    folder = out / f"uplift-base-{sha[:12]}"
    if not (folder / "uplift_diffusion" / "__init__.py").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        archive = folder.with_suffix(".tar")
        subprocess.run(["git", "archive", "--format=tar", "-o", str(archive), sha], cwd=ROOT, check=True)
        with tarfile.open(archive) as tar:
            tar.extractall(folder, filter="data")
        archive.unlink()
    return folder


def run_worker(tree: Path, case: str, variant: str, args: argparse.Namespace) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           **dict(item.split("=", 1) for item in args.env)}
    cmd = [sys.executable, str(Path(__file__)), "--worker", "--tree", str(tree), "--case", case, "--variant", variant,
           "--repeats", str(args.repeats), "--warmup", str(args.warmup), "--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tree", help=argparse.SUPPRESS)
    parser.add_argument("--case", choices=list(CASES), help=argparse.SUPPRESS)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--base", default="HEAD", help="the commit to compare against (default: HEAD)")
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=["default"])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved base/new rounds per case")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per process (after the warm-up)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per process first (0 for the big cases)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "benchmarks")
    parser.add_argument("--tag", default="", help="suffix of the JSON file name (speed_vs_base_TAG.json)")
    parser.add_argument("--env", nargs="*", default=[], metavar="KEY=VALUE",
                        help="environment of every worker, base and new alike (e.g. glibc's "
                             "MALLOC_TRIM_THRESHOLD_=17179869184: freed memory stays in the process)")
    args = parser.parse_args()
    if args.worker:
        for key in ("worker", "base", "cases", "variants", "rounds", "out", "tag", "env"):
            delattr(args, key)
        print(json.dumps(worker(args)))
        return 0

    base_tree = export_tree(args.base, Path(tempfile.gettempdir()))
    print(f"base {args.base} in {base_tree}; new: {ROOT} (working tree); {args.threads} thread(s), "
          f"best of {args.rounds} rounds x {args.repeats} calls", flush=True)
    print(f"{'case':>9} {'variant':>8} {'base s (spread)':>22} {'new s (spread)':>22} {'speed-up':>8} "
          f"{'base CPU s':>10} {'new CPU s':>10} {'CPU speed-up':>12} {'base MiB':>9} {'new MiB':>9}  note", flush=True)
    rows = []
    for case in args.cases:
        runs: dict[str, list[dict]] = {"base": [], **{v: [] for v in args.variants}}
        for _ in range(args.rounds):
            runs["base"].append(run_worker(base_tree, case, "default", args))
            for variant in args.variants:
                runs[variant].append(run_worker(ROOT, case, variant, args))
        ok = {k: [r for r in v if "error" not in r] for k, v in runs.items()}
        if not ok["base"]:
            print(f"{case:>9} base failed: {runs['base'][0]['error']}", flush=True)
            continue
        base = _summary(ok["base"])
        for variant in args.variants:
            if not ok[variant]:
                print(f"{case:>9} {variant:>8} failed: {runs[variant][0]['error']}", flush=True)
                continue
            new = _summary(ok[variant])
            row = {"case": case, "variant": variant, "base_s": base["s"], "new_s": new["s"],
                   "speedup": base["s"] / new["s"], "base_spread_s": base["spread"], "new_spread_s": new["spread"],
                   "base_cpu_s": base["cpu"], "new_cpu_s": new["cpu"], "cpu_speedup": base["cpu"] / new["cpu"],
                   "base_peak_mib": base["mib"], "new_peak_mib": new["mib"], "rounds": args.rounds,
                   "load_average": os.getloadavg(), "runs": runs[variant], "base_runs": runs["base"]}
            note = ""
            if case == "attender":
                elementwise = min(r["elementwise_s"] for r in ok[variant])
                row["elementwise_s"] = elementwise
                row["new_over_elementwise"] = new["s"] / elementwise
                note = (f"new / one elementwise pass = {new['s'] / elementwise:.1f}x "
                        f"(base {base['s'] / elementwise:.1f}x)")
            rows.append(row)
            spread = {k: f"{v['s']:.4f} ({v['spread'][0]:.3f}-{v['spread'][1]:.3f})"
                      for k, v in (("b", base), ("n", new))}
            print(f"{case:>9} {variant:>8} {spread['b']:>22} {spread['n']:>22} {base['s'] / new['s']:7.2f}x "
                  f"{base['cpu']:10.4f} {new['cpu']:10.4f} {base['cpu'] / new['cpu']:11.2f}x {base['mib']:9.1f} "
                  f"{new['mib']:9.1f}  load {os.getloadavg()[0]:.1f} {note}", flush=True)
    path = args.out / f"speed_vs_base{'_' + args.tag if args.tag else ''}.json"
    write_json(path, {"environment": environment(), "base": args.base, "threads": args.threads, "env": args.env,
                                                  "time": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                                                  "rows": rows})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
