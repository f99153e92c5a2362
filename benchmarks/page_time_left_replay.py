"""The page's time left on a first request (a plan from the calibration photos), without a browser: one real run of
the page's upscaler recorded, then replayed count by count through the page's progress bar with each way of
planning the ops, so both ways are scored on the very same op timings (the Chromium benchmark,
``page_time_left.py``, can only compare runs, which differ by the machine's load).

Printed per way of planning: the plan's and the real seconds, the worst relative error of the time left after the
first 2 s while more than 1 s remained (where and in which part), the share of those estimates within ±30 %.

    python benchmarks/page_time_left_replay.py --photo ../shared/data/photos/chelsea.png --scale 4
"""

from __future__ import annotations

import argparse
import time
from unittest import mock

import numpy as np


def main() -> None:
    from uplift_diffusion.testing import SHARED

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photo", default=str(SHARED / "data" / "photos" / "chelsea.png"))
    parser.add_argument("--scale", type=int, choices=(2, 4, 8), default=4)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the page's server uses one)")
    args = parser.parse_args()

    import torch
    from PIL import Image

    from uplift_diffusion import UPLiFTSuperResolutionPipeline
    from uplift_diffusion.app.progress import OpCosts, RequestProgress
    from uplift_diffusion.app.upscaler import PageUpscaler

    torch.set_num_threads(args.threads)
    pipeline = UPLiFTSuperResolutionPipeline.from_builtin("taef2")
    pipeline.set_progress_bar_config(disable=True)
    upscaler = PageUpscaler(pipeline)
    image = Image.open(args.photo)
    tile_size = upscaler.tile_size_for(image.size, args.scale, "auto", args.photo)  # as the page picks them
    with mock.patch.object(OpCosts, "fit", wraps=OpCosts.fit) as fit:
        plans = {"decoder by kind (the page's)": upscaler.expected_plan(image.size, args.scale, tile_size)}
    runs, _ = fit.call_args
    upscaler._op_costs[(args.scale, None)] = OpCosts.fit(*runs)  # no part by kind
    plans["one line per part"] = upscaler.expected_plan(image.size, args.scale, tile_size)

    counts = []
    start = time.perf_counter()
    upscaler.upscale_file(args.photo, args.scale, True, "auto",
                          lambda done, part=None: counts.append((time.perf_counter() - start, done, part)))
    total = time.perf_counter() - start

    tiles = f", tiles of {tile_size} px" if tile_size else ""
    print(f"{args.photo}, {args.scale}×{tiles}: {len(counts)} counts in {total:.1f} s")
    for name, plan in plans.items():
        now = [0.0]
        bar = RequestProgress(lambda *a, **k: None, [args.photo], [plan], clock=lambda now=now: now[0])
        bar.start_photo(0)
        scored = []
        for at, done, part in counts:
            now[0] = at
            bar.work(done, part)
            left, real = bar.seconds_left(), total - at
            if at > 2 and real > 1 and left is not None:
                scored.append((left / real - 1, at, left, real, bar.part))
        errors = np.array([s[0] for s in scored])
        error, at, left, real, part = scored[int(np.argmax(np.abs(errors)))]
        print(f"  {name:30s} plan {plan.total_seconds:5.1f} s; worst {error:+.0%} at {at:.1f} s ({left:.1f} s said, "
              f"{real:.1f} real, {part}); within ±30 %: {np.mean(np.abs(errors) <= 0.3):.0%}")


if __name__ == "__main__":
    main()
