"""Tell training recipes of the built-in taef2 model apart: from-scratch runs at equal compute, on held-out photos.

The protocol:

* every recipe is a JSON file in ``configs/recipes/`` that extends the protocol's baseline (``"extends"``) with a
  few ``"changes"`` (deep-merged), so a row of the table is one idea;
* every run starts from scratch and stops after the same **process CPU time** on one thread (``--cpu-minutes``),
  so that a cheaper step buys more steps, and runs that share the machine with other work still get equal compute;
  the feature cache of each data setting is filled once, before the clocks start, and shared by its runs;
* the baseline runs with two seeds: the spread of those two is the noise floor, and a variant counts only when its
  difference from the baseline's mean exceeds it;
* every trained model is scored through :class:`~uplift_diffusion.UPLiFTSuperResolutionPipeline` (what every
  entry point calls) on ``--val-count`` photos no recipe trains on, centre-cropped to multiples of 64: 2x / 4x / 8x
  from PIL-bicubic low-res, 4x from aliased bilinear low-res (the paper's B.2 protocol) and the generation case at
  4x (the pipeline gets taef2's latents of the bicubic low-res photo, as a latent pipeline's output, and guides
  with their decode; the baseline is pixel bicubic of that decode); PSNR, SSIM and the latent-grid ratio, beside
  pixel bicubic (PIL) of the same input.

A difference is bold when it exceeds the noise floor (and rounds to at least 0.01).
Two runs go at a time (``--jobs``), each on one thread. Every run writes ``<out>/<recipe>/seed<k>/result.json``
atomically; a rerun skips finished runs and resumes unfinished ones from their checkpoints.

    python benchmarks/recipe_search.py --cpu-minutes 7 --out outputs/recipes

``--table`` only prints the table of what is in ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASELINE = "baseline"
PROTOCOLS = [("2x", 2, "bicubic"), ("4x", 4, "bicubic"), ("8x", 8, "bicubic"), ("4x aliased", 4, "aliased"),
             ("4x generation", 4, "generation")]


def load_recipe(path: Path) -> dict:
    """A recipe file resolved against the file it extends (``uplift-diffusion train --config`` reads it the same)."""
    from uplift_diffusion.training.config import read_config_file

    return read_config_file(path)


def run_config(recipe: dict, out: Path, name: str, seed: int, cpu_minutes: float) -> dict:
    from uplift_diffusion.training.config import LossConfig

    config = copy.deepcopy(recipe)
    # The cache holds each view's features at every depth trained: recipes that train deeper need their own.
    deepest = max(config["loss"].get("depths", LossConfig().depths))
    key = [config["data"], config["loss"].get("guide", "photo"), config["seed"], deepest]
    data_key = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    config.update(output_dir=str(out / name / f"seed{seed}"), seed=seed, max_steps=None, max_minutes=cpu_minutes)
    config["data"]["cache_dir"] = str(out / "cache" / f"{data_key}-seed{seed}")
    return config


# ---------------------------------------------------------------------------------------------------- one run
def _threads_one() -> None:
    import torch

    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)


def warm_cache(config: dict) -> None:
    """Encode every view once (and decode its guides when the recipe needs them) into the shared cache."""
    from uplift_diffusion.training.config import TrainConfig
    from uplift_diffusion.training.trainer import Trainer

    Trainer(TrainConfig.from_dict(config)).fill_cache()


def train(config: dict) -> dict:
    """Train on a process-CPU-time budget (``max_minutes`` of ``time.process_time``); returns the run's facts."""
    from uplift_diffusion.training.config import TrainConfig
    from uplift_diffusion.training.trainer import Trainer

    resume = (Path(config["output_dir"]) / "checkpoints").is_dir()
    # A run stopped before its first checkpoint left only logs behind: start it again rather than refuse.
    trainer = Trainer(TrainConfig.from_dict(config), overwrite=not resume)
    trainer.clock = time.process_time
    model_dir = trainer.train(resume=resume)
    return {"steps": trainer.step, "cpu_seconds": round(trainer.elapsed, 1), "model": str(model_dir)}


def val_photos(folder: Path, count: int) -> list[Path]:
    from uplift_diffusion.training.data import list_image_files

    return list_image_files(folder)[:count]


def evaluate(model_dir: str, photos: list[Path]) -> dict:
    """PSNR / SSIM / grid ratio of the model and of PIL bicubic for every protocol, means over ``photos``."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image
    from uplift_diffusion.eval.metrics import grid_ratio_per_image, psnr_per_image, ssim_per_image

    from uplift_diffusion import UPLiFTModel, UPLiFTSuperResolutionPipeline
    from uplift_diffusion.builtin import load_builtin_vae
    from uplift_diffusion.utils.image_ops import float_to_uint8, to_tensor_uint8

    upsampler = UPLiFTModel.from_pretrained(model_dir)
    # Every row at the detail as decoded (strength 1): a continuation inherits its init model's fitted strengths,
    # and the rows compare what training learned; the strength is fitted afterwards (fit_detail_strength.py).
    upsampler.register_to_config(detail_strength=None)
    pipe = UPLiFTSuperResolutionPipeline(vae=load_builtin_vae("taef2"), upsampler=upsampler)
    pipe.set_progress_bar_config(disable=True)

    def scores(pred: Image.Image, hr: Image.Image) -> list[float]:
        p, t = to_tensor_uint8(pred)[None], to_tensor_uint8(hr)[None]
        return [psnr_per_image(p, t).item(), ssim_per_image(p, t).item(), grid_ratio_per_image(p, t).item()]

    rows: dict[str, dict[str, list]] = {}
    for path in photos:
        photo = Image.open(path).convert("RGB")
        w, h = (min(448, s // 64 * 64) for s in photo.size)
        left, top = (photo.width - w) // 2, (photo.height - h) // 2
        hr = photo.crop((left, top, left + w, top + h))
        for label, scale, kind in PROTOCOLS:
            size = (w // scale, h // scale)
            if kind == "aliased":
                x = to_tensor_uint8(hr)[None].float() / 255
                x = F.interpolate(x, size=size[::-1], mode="bilinear", align_corners=False, antialias=False)
                lr = Image.fromarray(float_to_uint8(x)[0])
            else:
                lr = hr.resize(size, Image.Resampling.BICUBIC)
            seed = torch.Generator().manual_seed(0)
            if kind == "generation":  # the latents are what a generator made; the guide is their decode
                latents, lr = _taef2_latents(pipe, lr)
                out = pipe(latents=latents, scale=scale, generator=seed).images[0]
            else:
                out = pipe(lr, scale=scale, generator=seed).images[0]
            bicubic = lr.resize(hr.size, Image.Resampling.BICUBIC)
            row = rows.setdefault(label, {"uplift": [], "bicubic": []})
            row["uplift"].append(scores(out, hr))
            row["bicubic"].append(scores(bicubic, hr))
    return {label: {method: dict(zip(("psnr", "ssim", "grid"), np.mean(values, axis=0).round(4).tolist(),
                                     strict=True))
                    for method, values in row.items()} for label, row in rows.items()}


def _taef2_latents(pipe, image):
    """taef2's raw latents of an image and their decode as 8-bit RGB (a latent pipeline's low-res output)."""
    import torch
    from PIL import Image

    from uplift_diffusion.backbones.vae import decode_latents, encode_latents
    from uplift_diffusion.utils.image_ops import float_to_uint8, to_tensor_uint8

    with torch.no_grad():
        latents = encode_latents(pipe.vae, to_tensor_uint8(image)[None].float() / 255)
        return latents, Image.fromarray(float_to_uint8(decode_latents(pipe.vae, latents))[0])


def one_run(args: argparse.Namespace) -> None:
    """``--one``: warm, train and score one (recipe, seed) in this process."""
    _threads_one()
    from uplift_diffusion.utils.io import write_json_atomic

    config = json.loads(Path(args.one).read_text())
    result_path = Path(config["output_dir"]) / "result.json"
    if args.warm_only:
        warm_cache(config)
        return
    facts = train(config)
    facts["scores"] = evaluate(facts["model"], val_photos(Path(args.val_dir), args.val_count))
    facts["recipe"] = config
    write_json_atomic(result_path, facts)


# ---------------------------------------------------------------------------------------------------- the table
def table(out: Path) -> str:
    import numpy as np

    results = {}
    for path in sorted(out.glob("*/seed*/result.json")):
        results.setdefault(path.parent.parent.name, []).append(json.loads(path.read_text()))
    if BASELINE not in results:
        return "no baseline results yet"
    labels = [label for label, _, _ in PROTOCOLS]

    def mean(runs, label, metric="psnr", method="uplift"):
        return float(np.mean([r["scores"][label][method][metric] for r in runs]))

    base = results[BASELINE]

    def spread(label, metric):
        values = [r["scores"][label]["uplift"][metric] for r in base]
        return max(values) - min(values) if len(values) > 1 else float("nan")

    floor = {label: spread(label, "psnr") for label in labels}
    lines = ["| recipe | runs | steps | " + " | ".join(f"{label} PSNR (Δ) / grid" for label in labels) + " |",
             "| --- " * (3 + len(labels)) + "|"]
    lines.append("| pixel bicubic (PIL) | – | – | " + " | ".join(
        f"{mean(base, label, method='bicubic'):.2f} / {mean(base, label, 'grid', 'bicubic'):.2f}" for label in labels)
        + " |")
    lines.append(f"| noise floor: spread of the baseline's {len(base)} seeds | – | – | " + " | ".join(
        f"{floor[label]:.2f} / {spread(label, 'grid'):.2f}" for label in labels) + " |")
    for name, runs in sorted(results.items(), key=lambda kv: (kv[0] != BASELINE, "steps" not in kv[1][0], kv[0])):
        cells = []
        for label in labels:
            value, delta = mean(runs, label), mean(runs, label) - mean(base, label)
            mark = "**" if name != BASELINE and abs(delta) > max(floor[label], 0.005) else ""  # beyond the floor
            cells.append(f"{value:.2f} ({mark}{delta:+.2f}{mark}) / {mean(runs, label, 'grid'):.2f}")
        steps = "/".join(str(r.get("steps", "–")) for r in runs)
        lines.append(f"| {name} | {len(runs)} | {steps} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- driver
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", type=Path,
                        default=sorted((REPO / "configs" / "recipes").glob("*.json")))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds of every variant")
    parser.add_argument("--baseline-seeds", type=int, nargs="+", default=[0, 1], help="seeds of the baseline")
    parser.add_argument("--cpu-minutes", type=float, default=8.0, help="process CPU minutes of training per run")
    parser.add_argument("--val-dir", default=str(REPO.parent / "shared" / "data" / "train_photos"))
    parser.add_argument("--val-count", type=int, default=12)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "recipes")
    parser.add_argument("--table", action="store_true", help="only print the table of --out")
    parser.add_argument("--reference", nargs="+", default=[], metavar="NAME=DIR",
                        help="also score these trained models (save_pretrained folders) as rows, e.g. the shipped one")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--warm-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        return one_run(args)
    if args.table:
        print(table(args.out))
        return None

    for reference in args.reference:  # scored in this process (no training)
        name, _, folder = reference.partition("=")
        target = args.out / name / "seed0" / "result.json"
        if not target.is_file():
            from uplift_diffusion.utils.io import write_json_atomic

            _threads_one()
            photos = val_photos(Path(args.val_dir), args.val_count)
            write_json_atomic(target, {"model": folder, "scores": evaluate(folder, photos)})
    runs = []
    for path in args.recipes:
        if path.name.startswith("_"):
            continue  # a shared base (e.g. _protocol.json), not a row
        recipe, name = load_recipe(path), path.stem
        for seed in (args.baseline_seeds if name == BASELINE else args.seeds):
            config = run_config(recipe, args.out.resolve(), name, seed, args.cpu_minutes)
            if (Path(config["output_dir"]) / "result.json").is_file():
                continue
            spec = Path(config["output_dir"]).with_suffix(".config.json")
            spec.parent.mkdir(parents=True, exist_ok=True)
            spec.write_text(json.dumps(config, indent=2))
            runs.append((name, seed, spec, config["data"]["cache_dir"]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    base_cmd = [sys.executable, __file__, "--val-dir", args.val_dir, "--val-count", str(args.val_count)]
    import threading

    locks: dict[str, threading.Lock] = {cache: threading.Lock() for _, _, _, cache in runs}
    warmed: set[str] = set()

    def launch(run):
        name, seed, spec, cache = run
        log = spec.with_suffix(".log")
        with locks[cache]:  # the first run of a data setting fills its cache, before any clock starts
            if cache not in warmed:
                print(f"filling the feature cache for {name} seed {seed}", flush=True)
                warm_log = spec.with_suffix(".warm.log")
                with open(warm_log, "w") as f:
                    code = subprocess.run(base_cmd + ["--one", str(spec), "--warm-only"], env=env, cwd=REPO,
                                          stdout=f, stderr=subprocess.STDOUT).returncode
                if code:
                    tail = warm_log.read_text().strip().splitlines()[-1:]
                    raise SystemExit(f"filling the feature cache for {name} seed {seed} failed ({code}): "
                                     f"{tail[0] if tail else ''} (log {warm_log})")
                warmed.add(cache)
        print(f"start {name} seed {seed} (log {log})", flush=True)
        with open(log, "w") as f:
            code = subprocess.run(base_cmd + ["--one", str(spec)], env=env, stdout=f, stderr=subprocess.STDOUT,
                                  cwd=REPO).returncode
        print(f"{'done' if code == 0 else f'FAILED ({code})'} {name} seed {seed}", flush=True)

    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(launch, runs))
    print(table(args.out))
    return None


if __name__ == "__main__":
    main()
