"""Any output size: which resampling step after UPLiFT's power of two, measured through the CLI on real photos.

For every photo of ``--images`` (default the 24 Kodak photos; ``--limit`` takes the first N): the high-res image is the
top-left ``--crop`` square (default the whole photo), cut to a multiple of every scale's numerator (whole low-res
pixels: 3 for 1.5 and 3), the low-res input its PIL bicubic (antialiased) downscale by the scale, stored as PNG.
Then, per scale, one run of

    uplift-diffusion upscale LOWRES/ -o OUT/ --scale S --resample pixel|latent

with the built-in taef2 model (UPLiFT to the next power of two, then ``pixel``: antialiased bicubic resize of the
decoded, colour-corrected image; ``latent``: antialiased bilinear resize of the upscaled latents, decoded and
colour-corrected at the target size), beside PIL bicubic of the same low-res input. PSNR (on [0, 1]) and SSIM
(Gaussian 11 / 1.5, eval.metrics) against the high-res photo, per image then the mean; seconds per CLI run.

Prints a markdown table and writes ``results.json`` (atomically) to ``--out``:

    nice -n 10 python benchmarks/any_scale.py --crop 384 --limit 12 --out outputs/any_scale
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402
from uplift_diffusion.eval.common import to_tensor_uint8  # noqa: E402
from uplift_diffusion.eval.metrics import psnr_per_image, ssim_per_image  # noqa: E402

from uplift_diffusion.utils.io import write_json_atomic  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = ROOT.parent / "shared" / "data" / "kodak"
RESAMPLES = ("pixel", "latent")


def crop_multiple(image: Image.Image, multiple: int, side: int | None = None) -> Image.Image:
    """Top-left crop of ``image`` (a ``side`` square when given) to sides that are multiples of ``multiple``."""
    w, h = (min(side, image.width), min(side, image.height)) if side else image.size
    return image.crop((0, 0, w // multiple * multiple, h // multiple * multiple))


def lcm_multiple(scales: list[float]) -> int:
    """The smallest side multiple that every scale divides into whole low-res pixels (2 * 3 for 1.5 and 3)."""
    from fractions import Fraction
    from math import lcm

    return lcm(*(Fraction(s).limit_denominator(16).numerator for s in scales))


def tag(scale: float) -> str:
    """A folder name for a scale without a dot (``-o x1.5`` would read as an image file of type ``.5``)."""
    return f"x{scale:g}".replace(".", "_")


def scores(out: Image.Image, hr: Image.Image) -> tuple[float, float]:
    a, b = to_tensor_uint8(out)[None], to_tensor_uint8(hr)[None]
    return float(psnr_per_image(a, b)[0]), float(ssim_per_image(a, b)[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", default=str(DEFAULT_IMAGES), help="folder of photos (default the Kodak set)")
    parser.add_argument("--scales", default="1.5,3", help="comma-separated factors (default 1.5,3)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N photos (sorted by name)")
    parser.add_argument("--crop", type=int, default=None, help="top-left square crop of this side (default: none)")
    parser.add_argument("--out", required=True, help="working and results folder")
    args = parser.parse_args(argv)
    scales = [float(s) for s in args.scales.split(",")]
    out = Path(args.out)
    photos = sorted(p for p in Path(args.images).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    photos = photos[: args.limit] if args.limit else photos
    multiple = lcm_multiple(scales)

    # 1. High-res crops and their low-res versions
    hr = {}
    for path in photos:
        image = crop_multiple(Image.open(path).convert("RGB"), multiple, args.crop)
        hr[path.stem] = image
        for scale in scales:
            folder = out / f"lowres_{tag(scale)}"
            folder.mkdir(parents=True, exist_ok=True)
            size = (round(image.width / scale), round(image.height / scale))
            image.resize(size, Image.Resampling.BICUBIC).save(folder / f"{path.stem}.png")

    # 2. The CLI, once per scale and resampling; outputs already there are kept (--skip-existing: a rerun resumes)
    seconds = {}
    for scale in scales:
        for resample in RESAMPLES:
            target = out / f"uplift_{resample}_{tag(scale)}"
            missing = [p for p in photos if not (target / f"{p.stem}_x{scale:g}.png").is_file()]
            if not missing:
                continue
            command = [sys.executable, "-m", "uplift_diffusion", "upscale",
                       *(str(out / f"lowres_{tag(scale)}" / f"{p.stem}.png") for p in missing), "-o", str(target),
                       "--scale", f"{scale:g}", "--resample", resample]
            print(" ".join(command[1:]), flush=True)
            start = time.perf_counter()
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
            seconds[(scale, resample)] = (time.perf_counter() - start) / len(missing)

    # 3. Scores against the photo, pixel bicubic of the same low-res input beside them
    per_image = {}
    for stem, image in tqdm(hr.items(), desc="scoring"):
        for scale in scales:
            low = Image.open(out / f"lowres_{tag(scale)}" / f"{stem}.png")
            per_image[(stem, scale, "pixel bicubic")] = scores(low.resize(image.size, Image.Resampling.BICUBIC),
                                                                image)
            for resample in RESAMPLES:
                result = Image.open(out / f"uplift_{resample}_{tag(scale)}" / f"{stem}_x{scale:g}.png")
                if result.size != image.size:
                    raise AssertionError(f"{stem} x{scale:g} {resample}: {result.size} != {image.size}")
                per_image[(stem, scale, f"UPLiFT + {resample} resize")] = scores(result, image)

    methods = ["pixel bicubic"] + [f"UPLiFT + {r} resize" for r in RESAMPLES]
    rows, results = [], {"images": args.images, "num_images": len(photos), "crop": args.crop,
                         "crop_multiple": multiple, "command": " ".join(sys.argv),
                         "low_res": "PIL bicubic (antialiased) downscale, PNG", "rows": []}
    for scale in scales:
        for method in methods:
            values = [per_image[(stem, scale, method)] for stem in hr]
            psnr = sum(v[0] for v in values) / len(values)
            ssim = sum(v[1] for v in values) / len(values)
            resample = method.split()[2] if method != "pixel bicubic" else None
            secs = seconds.get((scale, resample))
            rows.append(f"| {scale:g}x | {method} | {psnr:.2f} | {ssim:.4f} | "
                        f"{f'{secs:.1f}' if secs is not None else '-'} |")
            results["rows"].append(dict(scale=scale, method=method, psnr=psnr, ssim=ssim, seconds_per_image=secs,
                                        per_image={stem: dict(psnr=per_image[(stem, scale, method)][0],
                                                              ssim=per_image[(stem, scale, method)][1])
                                                   for stem in hr}))
    crop = f"top-left {args.crop}² crops" if args.crop else "whole photos"
    table = "\n".join([f"{len(photos)} photos of {Path(args.images).name} ({crop}), low-res = PIL bicubic downscale",
                       "", "| scale | method | PSNR ↑ | SSIM ↑ | s / image (CLI) |", "|---|---|---|---|---|", *rows])
    print(table)
    results["table"] = table
    results["torch_threads"] = torch.get_num_threads()
    write_json_atomic(out / "results.json", results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
