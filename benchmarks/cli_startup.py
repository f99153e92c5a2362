"""Fixed start-up cost of the command line for small inputs: `uplift-diffusion upscale` of a 64x48 image, and the
import alone of the super-resolution pipeline, each in a fresh process, as median wall and CPU seconds over rounds.

    python benchmarks/cli_startup.py --rounds 5

CPU seconds (user + system of the child process) are the number to compare on a loaded machine: wall time also
counts the time other processes take the cores. The floor line imports diffusers' ``DiffusionPipeline`` alone, which
every pipeline subclasses (diffusers' share of the import, which this project cannot shorten).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from uplift_diffusion.testing import SHARED

PHOTO = SHARED / "data/photos/chelsea.png"
SIZE = (64, 48)
IMPORTS = {
    "import UPLiFTSuperResolutionPipeline": "from uplift_diffusion.pipelines import UPLiFTSuperResolutionPipeline",
    "floor: import diffusers' DiffusionPipeline": "from diffusers.pipelines.pipeline_utils import DiffusionPipeline",
}


def timed(command: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of ``command`` run to completion in a child process; fails if it fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        sys.exit(f"{' '.join(command)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="runs of each case (the medians are printed)")
    parser.add_argument("--scale", type=int, default=4)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        small = Path(tmp) / "small.png"
        Image.open(PHOTO).convert("RGB").resize(SIZE, Image.BICUBIC).save(small)
        cases = {f"upscale {SIZE[0]}x{SIZE[1]} --scale {args.scale}":
                 [sys.executable, "-m", "uplift_diffusion", "upscale", str(small), "-o", str(Path(tmp) / "out"),
                  "--scale", str(args.scale), "--overwrite"]}
        cases.update({name: [sys.executable, "-c", code] for name, code in IMPORTS.items()})
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
        # Rounds interleave the cases so that a change in the machine's load touches each case alike.
        for _ in range(args.rounds):
            for name, command in cases.items():
                times[name].append(timed(command))

    print(f"{args.rounds} rounds, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} (median seconds)")
    for name, runs in times.items():
        wall = statistics.median(w for w, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        print(f"  {name:45s} wall {wall:6.2f}  CPU {cpu:6.2f}")


if __name__ == "__main__":
    main()
