"""The built-in model's table, measured through the command line users run (`uplift-diffusion upscale`).

For every photo folder, scale and low-res protocol:

* HR = the whole photo, centre-cropped only to a multiple of ``8 * scale`` (taef2's 8-pixel latents, whole steps);
* LR = HR downscaled ``scale`` times and saved as an 8-bit PNG, by one of three protocols:
  ``bicubic`` (PIL's antialiased BICUBIC: the standard super-resolution protocol), ``bilinear-antialiased``
  (antialiased bilinear, the training pyramid's kernel) and ``bilinear-aliased`` (``F.interpolate`` bilinear
  without antialiasing on [-1, 1]: the paper's B.2 / ``eval sr --downsample bilinear-aliased`` protocol);
* each model runs as ``uplift-diffusion upscale LR_DIR -o OUT --scale K [--upsampler DIR]`` in a fresh process
  (no flag: the built-in default, exactly what a user gets); ``--jobs`` of them at once, one thread each;
* rows: every model, pixel bicubic (PIL, what a user would pick instead), and the taef2 round trip of HR (the
  ceiling of any taef2-latent method);
* scores per image, then the mean: PSNR, SSIM (scikit-image's Gaussian settings), saturation and contrast over the
  original's (1 = faithful), and the **grid ratio**: how much the luma spectrum peaks at the harmonics of an 8-pixel
  period (taef2's latent grid) against the frequencies beside them, over the same for the original; 1 = no more grid
  than the photo has.

Writes ``results.json`` (every number, per image too), ``results.md`` and ``grid_x<scale>.png`` (crops of the first
photos: LR nearest | pixel bicubic | each model | HR) under ``--out``. Rerunning resumes: finished CLI runs are kept.

    python benchmarks/builtin_table.py --out outputs/builtin_table
    python benchmarks/builtin_table.py --model previous=/path/to/old/uplift-taef2 --out outputs/builtin_table
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from uplift_diffusion.testing import SHARED
from uplift_diffusion.training.data import list_image_files
from uplift_diffusion.utils.image_ops import float_to_uint8, to_tensor_uint8

REPO = Path(__file__).resolve().parents[1]
DATASETS = {"test50": SHARED / "data/bsds500/test50", "kodak": SHARED / "data/kodak"}
PROTOCOLS = ("bicubic", "bilinear-antialiased", "bilinear-aliased")


def load(path: Path) -> torch.Tensor:
    return to_tensor_uint8(Image.open(path).convert("RGB"))  # uint8 [3, H, W]


def save(image: torch.Tensor, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)


def downscale(hr: torch.Tensor, scale: int, protocol: str) -> torch.Tensor:
    """uint8 [3, H, W] -> uint8 [3, H/scale, W/scale] by ``protocol`` (see the module docstring)."""
    from uplift_diffusion.eval.sr import downscale_uint8

    from uplift_diffusion.training.data import downscale as train_downscale

    if protocol == "bicubic":
        return downscale_uint8(hr, scale, "bicubic")
    if protocol == "bilinear-aliased":
        return downscale_uint8(hr, scale, "bilinear-aliased")
    if protocol == "bilinear-antialiased":
        h, w = hr.shape[-2] // scale, hr.shape[-1] // scale
        return to_tensor_uint8(float_to_uint8(train_downscale(hr[None].float() / 255, (h, w), "bilinear"))[0])
    raise ValueError(f"unknown protocol {protocol!r}; choose from {PROTOCOLS}")


class Job(NamedTuple):
    """One `upscale` run: a model on one folder of low-res files."""

    model: str
    dataset: str
    scale: int
    protocol: str
    lr_dir: Path
    out_dir: Path
    upsampler: str | None


def prepare(dataset: str, files: list[Path], scale: int, protocols: list[str], root: Path) -> list[str]:
    """``root/<dataset>/x<scale>/hr/*.png`` and ``.../<protocol>/lr/*.png``; returns the image names."""
    base = root / dataset / f"x{scale}"
    m = 8 * scale
    for path in files:
        wanted = [base / "hr" / f"{path.stem}.png"] + [base / p / "lr" / f"{path.stem}.png" for p in protocols]
        if all(p.exists() for p in wanted):
            continue
        image = load(path)
        h, w = image.shape[-2] // m * m, image.shape[-1] // m * m
        top, left = (image.shape[-2] - h) // 2, (image.shape[-1] - w) // 2
        hr = image[:, top:top + h, left:left + w].contiguous()
        save(hr, base / "hr" / f"{path.stem}.png")
        for protocol in protocols:
            save(downscale(hr, scale, protocol), base / protocol / "lr" / f"{path.stem}.png")
    return [p.stem for p in files]


def run_cli(lr_dir: Path, out_dir: Path, scale: int, upsampler: str | None) -> None:
    """``uplift-diffusion upscale`` in a fresh process, one thread, resuming with ``--skip-existing``."""
    args = [sys.executable, "-m", "uplift_diffusion", "upscale", str(lr_dir), "-o", str(out_dir), "--scale",
            str(scale), "--skip-existing"]
    if upsampler:
        args += ["--upsampler", upsampler]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run(args, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{done.stderr[-3000:]}")


@torch.no_grad()
def roundtrips(dataset: str, names: list[str], scale: int, root: Path) -> dict[str, torch.Tensor]:
    """taef2 round trip of every HR image (the ceiling), cached as PNGs."""
    from uplift_diffusion.backbones.vae import decode_latents, encode_latents
    from uplift_diffusion.builtin import load_builtin_vae

    base = root / dataset / f"x{scale}"
    out, vae = {}, None
    for name in names:
        path = base / "taef2-roundtrip" / f"{name}.png"
        if not path.exists():
            vae = vae or load_builtin_vae("taef2")
            hr = load(base / "hr" / f"{name}.png")[None].float() / 255
            save(to_tensor_uint8(float_to_uint8(decode_latents(vae, encode_latents(vae, hr)))[0]), path)
        out[name] = load(path)
    return out


def score(images: dict[str, torch.Tensor], hr: dict[str, torch.Tensor]) -> dict:
    from uplift_diffusion.eval.metrics import (
        colour_ratios_per_image,
        grid_ratio_per_image,
        psnr_per_image,
        ssim_per_image,
    )

    per_image = {}
    for name, image in images.items():
        x, y = image[None], hr[name][None]
        saturation, contrast = colour_ratios_per_image(x, y)
        per_image[name] = {"psnr": float(psnr_per_image(x, y)[0]), "ssim": float(ssim_per_image(x, y)[0]),
                           "saturation_ratio": float(saturation[0]), "contrast_ratio": float(contrast[0]),
                           "grid_ratio": float(grid_ratio_per_image(x, y)[0])}
    keys = next(iter(per_image.values())).keys()
    mean = {k: float(np.mean([v[k] for v in per_image.values()])) for k in keys}
    return {"mean": mean, "per_image": per_image}


def load_bicubic(lr: torch.Tensor, size) -> torch.Tensor:
    """PIL bicubic upscale of a uint8 [3, h, w] image to ``size`` (H, W)."""
    return to_tensor_uint8(Image.fromarray(lr.permute(1, 2, 0).numpy()).resize((size[1], size[0]), Image.BICUBIC))


def crop(image: torch.Tensor, side: int = 160) -> torch.Tensor:
    h, w = image.shape[-2:]
    top, left = max((h - side) // 2, 0), max((w - side) // 2, 0)
    return image[:, top:top + side, left:left + side]


def figure(rows: list[list[torch.Tensor]], labels: list[str], path: Path) -> None:
    from PIL import ImageDraw

    grid = torch.cat([torch.cat(r, dim=-1) for r in rows], dim=-2)
    image = Image.fromarray(grid.permute(1, 2, 0).numpy())
    draw = ImageDraw.Draw(image)
    side = rows[0][0].shape[-1]
    for i, label in enumerate(labels):
        draw.rectangle((i * side, 0, i * side + 7 * len(label) + 6, 14), fill=(0, 0, 0))
        draw.text((i * side + 3, 2), label, fill=(255, 255, 255))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def markdown(results: dict, models: list[str]) -> str:
    lines = []
    for dataset, per_scale in results["tables"].items():
        for scale, per_protocol in per_scale.items():
            protocols = list(per_protocol)
            lines += [f"\n{dataset}, {scale}x ({results['num_images'][dataset]} photos): PSNR dB / SSIM / saturation / "
                      f"contrast / grid ratio", "",
                      "| method | " + " | ".join(protocols) + " |", "| --- |" + " --- |" * len(protocols)]
            for method in [*models, "pixel bicubic (PIL)", "taef2 round trip (ceiling)"]:
                cells = []
                for p in protocols:
                    m = per_protocol[p][method]["mean"]
                    cells.append(f"{m['psnr']:.2f} / {m['ssim']:.3f} / {m['saturation_ratio']:.3f} / "
                                 f"{m['contrast_ratio']:.3f} / {m['grid_ratio']:.2f}")
                lines.append(f"| {method} | " + " | ".join(cells) + " |")
            base = "pixel bicubic (PIL)"
            for model in models:
                gains = [f"{per_protocol[p][model]['mean']['psnr'] - per_protocol[p][base]['mean']['psnr']:+.2f} dB / "
                         f"{per_protocol[p][model]['mean']['ssim'] - per_protocol[p][base]['mean']['ssim']:+.3f}"
                         for p in protocols]
                lines.append(f"| {model} − bicubic | " + " | ".join(gains) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), help=f"names from {list(DATASETS)} or folders")
    parser.add_argument("--scales", nargs="+", type=int, default=[2, 4, 8])
    parser.add_argument("--protocols", nargs="+", choices=PROTOCOLS, default=list(PROTOCOLS))
    parser.add_argument("--model", action="append", default=[], metavar="NAME=DIR",
                        help="extra UPLiFT model run with --upsampler DIR (the built-in default always runs)")
    parser.add_argument("--no-builtin", action="store_true", help="only the --model rows")
    parser.add_argument("--limit", type=int, default=0, help="first N photos of each folder (0 = all)")
    parser.add_argument("--jobs", type=int, default=2, help="CLI processes at once (one thread each)")
    parser.add_argument("--out", type=Path, default=REPO / "outputs/builtin_table")
    parser.add_argument("--write-quality", type=Path, metavar="QUALITY_JSON",
                        help="update this quality.json (measured quality, stored beside the weights) with the first "
                             "model's rows: one measurement per dataset, replacing that dataset's earlier one")
    args = parser.parse_args(argv)

    models = {} if args.no_builtin else {"UPLiFT built-in (no flags)": None}
    for item in args.model:
        name, _, directory = item.partition("=")
        if not directory or not Path(directory).exists():
            parser.error(f"--model wants NAME=DIR with an existing DIR, got {item!r}")
        models[name] = str(Path(directory).resolve())
    data = args.out / "data"
    jobs, plan = [], {}
    for dataset in args.datasets:
        folder = Path(DATASETS.get(dataset, dataset))
        dataset = dataset if dataset in DATASETS else folder.name
        files = list_image_files(folder)
        files = files[:args.limit] if args.limit else files
        for scale in args.scales:
            names = prepare(dataset, files, scale, args.protocols, data)
            plan[(dataset, scale)] = names
            for protocol in args.protocols:
                for name, upsampler in models.items():
                    lr_dir = data / dataset / f"x{scale}" / protocol / "lr"
                    tag = "builtin" if upsampler is None else "".join(c if c.isalnum() else "-" for c in name)
                    out_dir = args.out / "runs" / tag / dataset / f"x{scale}" / protocol
                    jobs.append(Job(name, dataset, scale, protocol, lr_dir, out_dir, upsampler))
    with ThreadPoolExecutor(args.jobs) as pool, tqdm(total=len(jobs), desc="upscale (CLI)") as bar:
        for future in [pool.submit(run_cli, j.lr_dir, j.out_dir, j.scale, j.upsampler) for j in jobs]:
            future.result()
            bar.update()

    results = {"protocols": list(args.protocols), "models": models, "num_images": {}, "tables": {}}
    for (dataset, scale), names in tqdm(plan.items(), desc="score"):
        base = data / dataset / f"x{scale}"
        hr = {n: load(base / "hr" / f"{n}.png") for n in names}
        ceiling = score(roundtrips(dataset, names, scale, data), hr)
        results["num_images"][dataset] = len(names)
        table = results["tables"].setdefault(dataset, {}).setdefault(str(scale), {})
        figure_rows = []
        for protocol in args.protocols:
            lr = {n: load(base / protocol / "lr" / f"{n}.png") for n in names}
            bicubic = {n: load_bicubic(lr[n], hr[n].shape[-2:]) for n in names}
            rows = {j.model: {n: load(j.out_dir / f"{n}_x{scale}.png") for n in names} for j in jobs
                    if (j.dataset, j.scale, j.protocol) == (dataset, scale, protocol)}
            table[protocol] = {name: score(images, hr) for name, images in rows.items()}
            table[protocol]["pixel bicubic (PIL)"] = score(bicubic, hr)
            table[protocol]["taef2 round trip (ceiling)"] = ceiling
            if protocol == args.protocols[0]:
                for n in names[:3]:
                    nearest = F.interpolate(lr[n][None], size=hr[n].shape[-2:], mode="nearest")[0]
                    figure_rows.append([crop(x) for x in (nearest, bicubic[n], *[r[n] for r in rows.values()], hr[n])])
        figure(figure_rows, ["LR", "bicubic", *models, "original"], args.out / f"grid_{dataset}_x{scale}.png")
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = args.out / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(args.out / "results.json")
    text = markdown(results, list(models))
    (args.out / "results.md").write_text(text)
    print(text)
    if args.write_quality:
        write_quality(args.write_quality, results, next(iter(models)))
        print(f"updated {args.write_quality}")
    return 0


DATASET_LABELS = {"test50": "BSDS500 test50 ({n} whole photos)", "kodak": "Kodak ({n} whole photos)"}


def write_quality(path: Path, results: dict, model: str) -> None:
    """Record ``model``'s rows in a quality.json (read by ``uplift_diffusion.builtin.read_model_quality``): one
    measurement per dataset of ``results``, replacing an earlier one of the same dataset and keeping the others (e.g.
    the demo's). The file is validated by reading it back before it replaces the old one."""

    def rounded(mean: dict) -> dict:
        return {"psnr": round(mean["psnr"], 2), "ssim": round(mean["ssim"], 3),
                "grid_ratio": round(mean["grid_ratio"], 2)}

    data = json.loads(path.read_text()) if path.is_file() else {
        "model": path.parent.name, "metrics": "PSNR in dB and SSIM (scikit-image, Gaussian weights) against the "
        "original photo, mean over the photos; grid_ratio: the 8-pixel latent-grid peak of the luma spectrum over the "
        "original's (1 = no more grid than the photo)", "measurements": []}
    for dataset, per_scale in results["tables"].items():
        label = DATASET_LABELS.get(dataset, "{name} ({n} photos)").format(n=results["num_images"][dataset],
                                                                          name=dataset)
        rows = [{"scale": int(scale), "low_res": protocol, "model": rounded(per_protocol[protocol][model]["mean"]),
                 "pixel_bicubic": rounded(per_protocol[protocol]["pixel bicubic (PIL)"]["mean"])}
                for scale, per_protocol in per_scale.items() for protocol in per_protocol]
        command = f"python benchmarks/builtin_table.py --datasets {dataset}"
        if results["protocols"] != list(PROTOCOLS):
            command += " --protocols " + " ".join(results["protocols"])
        measurement = {"dataset": label, "command": command,
                       "how": "low-res 8-bit PNGs made by each protocol, upscaled by `uplift-diffusion upscale` with "
                              "this model (no flags: the built-in one; `--upsampler DIR`: a trained folder)",
                       "results": rows}
        same = [i for i, m in enumerate(data["measurements"]) if m["dataset"].split(" (")[0] == label.split(" (")[0]]
        if same:
            data["measurements"][same[0]] = measurement
        else:
            data["measurements"].append(measurement)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    _check_quality(tmp)
    tmp.replace(path)


def _check_quality(file: Path) -> None:
    """CheckpointError unless ``file`` reads as a quality.json."""
    import shutil
    import tempfile

    from uplift_diffusion.builtin import QUALITY_FILE, read_model_quality

    with tempfile.TemporaryDirectory() as folder:
        shutil.copy(file, Path(folder) / QUALITY_FILE)
        read_model_quality(folder)


if __name__ == "__main__":
    sys.exit(main())
