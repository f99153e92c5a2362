"""Every door users use, on the same photos: the Python pipeline, `uplift-diffusion upscale`, the web page's upscaler
and `eval sr`, against pixel bicubic (PIL), with PSNR / SSIM and the colour ratios (saturation and contrast over the
original's), and whether each door gives the Python pipeline's picture bit for bit.

Protocol: ``--side``² centre crops of real photos (high-res), downscaled ``--scale`` times with PIL's antialiased
bicubic (the standard super-resolution protocol) and saved as PNG (the low-res files every door reads).

    python benchmarks/entry_points.py --images ../shared/data/bsds500/test50 --num 24 --out outputs/entry_points
    # the command line of another checkout (e.g. the code before a fix), on the same photos:
    python benchmarks/entry_points.py --doors cli --cli-pythonpath /tmp/old-checkout --out outputs/entry_points_old

``tests/test_entry_points.py`` runs the same function on 8 photos.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from uplift_diffusion.testing import SHARED

DOORS = ("python", "cli", "page", "eval sr")


def tensor(image: Image.Image) -> torch.Tensor:
    """uint8 [1, 3, H, W] of a PIL image."""
    return torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)[None]


def make_photos(files: list[Path], root: Path, side: int, scale: int) -> list[str]:
    """``root/hr/<name>.png`` (centre ``side``² crops) and ``root/lr/<name>.png`` (their PIL-bicubic downscales)."""
    (root / "hr").mkdir(parents=True, exist_ok=True)
    (root / "lr").mkdir(exist_ok=True)
    for path in files:
        image = Image.open(path).convert("RGB")
        left, top = (image.width - side) // 2, (image.height - side) // 2
        hr = image.crop((left, top, left + side, top + side))
        hr.save(root / "hr" / f"{path.stem}.png")
        hr.resize((side // scale, side // scale), Image.BICUBIC).save(root / "lr" / f"{path.stem}.png")
    return [p.stem for p in files]


def cli(*args: str, pythonpath: str | None = None) -> subprocess.CompletedProcess:
    """The command line as a user runs it: a fresh process, offline (``pythonpath``: another checkout's code)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return subprocess.run([sys.executable, "-m", "uplift_diffusion", *args], env=env, capture_output=True, text=True,
                          timeout=1800, cwd=root_dir() if pythonpath else None)


def root_dir() -> str:
    return str(Path(__file__).resolve().parents[1].parent)


def run_doors(root: Path, names: list[str], side: int, scale: int, doors=DOORS,
              cli_pythonpath: str | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """``{door: {name: uint8 [1, 3, side, side]}}`` for the built-in model with no flags through each door."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    if "python" in doors:
        from uplift_diffusion import UPLiFTSuperResolutionPipeline

        pipe = UPLiFTSuperResolutionPipeline.from_builtin("taef2")
        pipe.set_progress_bar_config(disable=True)
        out["python"] = {n: tensor(pipe(Image.open(root / "lr" / f"{n}.png"), scale=scale,
                                        generator=torch.Generator().manual_seed(0)).images[0]) for n in names}
    if "cli" in doors:
        done = cli("upscale", str(root / "lr"), "-o", str(root / "cli"), "--scale", str(scale),
                   pythonpath=cli_pythonpath)
        if done.returncode != 0:
            raise RuntimeError(f"upscale failed: {done.stderr[-2000:]}")
        out["cli"] = {n: tensor(Image.open(root / "cli" / f"{n}_x{scale}.png")) for n in names}
    if "page" in doors:  # the web page's upscaler with the pipeline `serve` builds (same loader, no colour argument)
        from uplift_diffusion import UPLiFTSuperResolutionPipeline, app
        from uplift_diffusion.builtin import load_builtin_pair

        vae, upsampler = load_builtin_pair("taef2", torch.float32)
        page = app.PageUpscaler(UPLiFTSuperResolutionPipeline(vae=vae, upsampler=upsampler))
        out["page"] = {n: tensor(Image.open(page.upscale_file(root / "lr" / f"{n}.png", scale, True, "off")
                                            .output_png)) for n in names}
    if "eval sr" in doors:  # the benchmark makes the same low-res inputs from hr/ and saves what it scores
        done = cli("eval", "sr", "--images", str(root / "hr"), "--pair", "taef2", "--output", str(root / "eval"),
                   "--size", str(side), "--scale", str(scale), "--downsample", "bicubic", "--fid-backend", "none",
                   "--methods", "uplift,pixel-bicubic", "--device", "cpu", "--overwrite")
        if done.returncode != 0:
            raise RuntimeError(f"eval sr failed: {done.stderr[-2000:]}")
        saved = {p.stem.split("_", 1)[1]: p for p in (root / "eval" / "images" / "uplift").glob("*.png")}
        out["eval sr"] = {n: tensor(Image.open(saved[n])) for n in names}
    return out


def scores(root: Path, names: list[str], side: int, outputs: dict[str, dict[str, torch.Tensor]]) -> dict:
    """Mean PSNR / SSIM / saturation and contrast ratios per door and for PIL bicubic; ``identical`` per door."""
    from uplift_diffusion.eval.metrics import colour_ratios_per_image, psnr_per_image, ssim_per_image

    hr = torch.cat([tensor(Image.open(root / "hr" / f"{n}.png")) for n in names])
    rows = {"pixel bicubic (PIL)": torch.cat([tensor(Image.open(root / "lr" / f"{n}.png").resize(
        (side, side), Image.BICUBIC)) for n in names])}
    rows.update({door: torch.cat([images[n] for n in names]) for door, images in outputs.items()})
    result = {}
    for door, images in rows.items():
        saturation, contrast = colour_ratios_per_image(images, hr)
        result[door] = {"psnr": float(psnr_per_image(images, hr).mean()),
                        "ssim": float(ssim_per_image(images, hr).mean()),
                        "saturation_ratio": float(saturation.mean()), "contrast_ratio": float(contrast.mean())}
        if "python" in outputs and door in outputs:
            result[door]["identical_to_python"] = all(torch.equal(outputs[door][n], outputs["python"][n])
                                                      for n in names)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, default=SHARED / "data/bsds500/test50")
    parser.add_argument("--num", type=int, default=24, help="photos (the first N, sorted by name)")
    parser.add_argument("--side", type=int, default=320, help="high-res centre crop side")
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--doors", default=",".join(DOORS), help=f"comma-separated subset of {DOORS}")
    parser.add_argument("--cli-pythonpath", default=None, help="run `upscale` with this checkout's code")
    parser.add_argument("--out", type=Path, default=Path("outputs/entry_points"))
    args = parser.parse_args(argv)
    files = sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".jpg", ".png"))[:args.num]
    names = make_photos(files, args.out, args.side, args.scale)
    doors = [d.strip() for d in args.doors.split(",") if d.strip()]
    result = scores(args.out, names, args.side, run_doors(args.out, names, args.side, args.scale, doors,
                                                          args.cli_pythonpath))
    (args.out / "results.json").write_text(json.dumps(result, indent=2))
    print(f"{len(names)} photos of {args.images}, {args.side}² crops, {args.scale}x, PIL bicubic downscale")
    print("| door | PSNR | SSIM | saturation ratio | contrast ratio | = Python |")
    print("| --- | --- | --- | --- | --- | --- |")
    for door, r in result.items():
        print(f"| {door} | {r['psnr']:.2f} dB | {r['ssim']:.4f} | {r['saturation_ratio']:.3f} | "
              f"{r['contrast_ratio']:.3f} | {r.get('identical_to_python', '-')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
