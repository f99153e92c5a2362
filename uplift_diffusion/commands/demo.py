"""``uplift-diffusion demo -o OUT``: the built-in UPLiFT against pixel bicubic on scikit-image's sample photos."""

from __future__ import annotations

import argparse

from uplift_diffusion.commands.checks import SEED_RANGE, int_in

HELP = ("Offline demo: scikit-image's sample photos downscaled 4x, upscaled back with pixel bicubic and the built-in "
        "UPLiFT; writes a side-by-side figure and prints PSNR / SSIM.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", default="outputs/demo", metavar="OUT",
                        help="output folder: demo.png (the figure) and results.json (default outputs/demo)")
    parser.add_argument("--scale", type=int_in(None, 64), default=4,
                        help="down- / upscaling factor, a power of two (default 4)")
    parser.add_argument("--photos", nargs="+", default=None, metavar="NAME",
                        help="scikit-image sample photos (default: astronaut chelsea coffee rocket)")
    parser.add_argument("--builtin", default="taef2", help="the built-in VAE + UPLiFT pair (default taef2)")
    parser.add_argument("--seed", type=int_in(*SEED_RANGE), default=0,
                        help="seed of the upsampler's noise channels (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier demo's files in OUT")


def run(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from uplift_diffusion.commands.checks import power_of_two
    from uplift_diffusion.utils.errors import InputError, OutputExistsError

    # Cheap checks first (no torch yet): a wrong flag or an earlier demo is reported at once.
    start = time.perf_counter()
    power_of_two("--scale", args.scale)
    earlier = [str(path) for path in (Path(args.output) / "demo.png", Path(args.output) / "results.json")
               if path.exists()]
    if earlier and not args.overwrite:
        raise OutputExistsError(f"{args.output} holds an earlier demo ({', '.join(earlier)}); pass --overwrite to "
                                f"replace it, or another -o folder")

    from tqdm.auto import tqdm

    from uplift_diffusion import demo
    from uplift_diffusion.builtin import builtin_names
    from uplift_diffusion.pipelines import UPLiFTSuperResolutionPipeline
    from uplift_diffusion.utils.allocator import retain_freed_memory
    from uplift_diffusion.utils.io import ensure_writable_dir, save_image_atomic, write_json_atomic

    names = args.photos or list(demo.SAMPLE_PHOTOS)
    unknown = [n for n in names if n not in demo.SAMPLE_PHOTOS]
    if unknown:
        raise InputError(f"unknown demo photo(s) {', '.join(unknown)}; available: {', '.join(demo.SAMPLE_PHOTOS)}")
    if args.builtin not in builtin_names():
        raise InputError(f"unknown built-in pair {args.builtin!r}; available: {', '.join(builtin_names())}")
    out = ensure_writable_dir(Path(args.output))

    retain_freed_memory()  # our own short-lived process: no page faults for maps freed and allocated again
    pipe = UPLiFTSuperResolutionPipeline.from_builtin(args.builtin)
    pipe.set_progress_bar_config(leave=False)
    results = demo.run_demo(pipe, names, scale=args.scale, seed=args.seed,
                            progress=lambda photos: tqdm(photos, desc="demo photos"))
    figure = save_image_atomic(demo.side_by_side(results), out / "demo.png")
    seconds = time.perf_counter() - start
    write_json_atomic(out / "results.json", {
        "scale": args.scale, "builtin": args.builtin, "seconds": round(seconds, 2),
        "downscale": "PIL bicubic, antialiased", "columns": list(demo.COLUMNS),
        "photos": {r.name: {"size": list(r.images["original"].size), **r.metrics} for r in results},
    })
    print(demo.results_table(results, args.scale))
    print(f"figure: {figure} ({seconds:.1f} s)")
    return 0
