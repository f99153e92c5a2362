"""Training throughput of recipes: process CPU seconds per sample, and where a step's time goes.

For each recipe (a training config or a recipe file, see ``configs/recipes/``) it builds the trainer on the first
``--views`` views of the recipe's data, fills the feature cache (not timed: it is paid once per view, and the
experiment protocol shares it between runs), then times ``--steps`` optimizer steps of the real training loop on one
thread with ``time.process_time`` (load-independent on a shared machine, unlike wall seconds), and, on one fixed
batch, the parts of a step: reading the views, the cached features, the model's forward + backward on the latent
terms, and the decoder-aware pixel term.

    python benchmarks/train_throughput.py configs/recipes/baseline.json configs/recipes/cheap_step.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from uplift_diffusion.training.config import TrainConfig, read_config_file  # noqa: E402
from uplift_diffusion.training.data import collate_views  # noqa: E402
from uplift_diffusion.training.losses import PixelObjective, multi_depth_loss  # noqa: E402
from uplift_diffusion.training.trainer import Trainer, item_generator  # noqa: E402


def cpu_time(fn, repeats: int = 3) -> float:
    """The least process CPU seconds of ``repeats`` calls."""
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


def measure(path: Path, views: int, steps: int, work: Path) -> dict:
    recipe = read_config_file(path)
    config = copy.deepcopy(recipe)
    config.update(output_dir=str(work / path.stem), max_steps=steps, max_minutes=None, checkpoint_every=10**6,
                  preview_images=0, log_every=10**6)
    config["data"]["cache_dir"] = str(work / f"cache-{path.stem}")
    trainer = Trainer(TrainConfig.from_dict(config), overwrite=True)
    trainer.dataset.index = trainer.dataset.index[:views]
    batch_size = config["batch_size"]
    trainer.fill_cache()  # paid once per view, not timed

    start = time.process_time()
    trainer.train()
    per_step = (time.process_time() - start) / steps

    # the parts of one step, on a fixed batch
    loss = trainer.config.loss
    read = cpu_time(lambda: collate_views([trainer.dataset[i] for i in range(batch_size)]), 2)
    batch = collate_views([trainer.dataset[i] for i in range(batch_size)])
    images = batch["images"]
    cached = cpu_time(lambda: trainer.features(batch["keys"], images), 2)
    features = trainer.features(batch["keys"], images)
    guides = trainer.guides(batch["keys"], images, features)
    model = trainer.unwrapped
    generators = [item_generator(0, 1, i) for i in range(batch_size)]

    def latent():
        model.zero_grad()
        value, _ = multi_depth_loss(model, images, features, loss.depths, loss.noise_sigma, generators,
                                    loss.latent_weight, None, item_generator(0, 1, "batch"), guides)
        value.backward()

    def full(step: int = 0):
        model.zero_grad()
        pixel = PixelObjective.from_config(trainer.backbone.decode_differentiable, trainer.backbone.patch_size, loss)
        value, _ = multi_depth_loss(model, images, features, loss.depths, loss.noise_sigma, generators,
                                    loss.latent_weight, pixel if loss.pixel_weight > 0 else None,
                                    item_generator(0, 1, "batch"), guides, step)
        value.backward()

    latent_s = cpu_time(latent)
    full_s = (cpu_time(lambda: full(0)) + cpu_time(lambda: full(1))) / 2  # a "cycle" schedule alternates
    return {"recipe": path.stem, "batch": batch_size, "cpu_s_per_step": per_step,
            "samples_per_cpu_s": batch_size / per_step, "read_views_s": read, "cached_features_s": cached,
            "latent_fwd_bwd_s": latent_s, "pixel_term_s": full_s - latent_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipes", nargs="+", type=Path)
    parser.add_argument("--views", type=int, default=32, help="views of the recipe's data to train on")
    parser.add_argument("--steps", type=int, default=8, help="timed optimizer steps per recipe")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for path in args.recipes:
            rows.append(measure(path, args.views, args.steps, Path(work)))
    base = rows[0]["samples_per_cpu_s"]
    print(f"process CPU seconds, one thread ({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f})")
    print("| recipe | batch | CPU s / step | samples / CPU s | speed-up | read views | cached features | "
          "latent fwd+bwd | pixel term |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['recipe']} | {r['batch']} | {r['cpu_s_per_step']:.2f} | {r['samples_per_cpu_s']:.2f} | "
              f"{r['samples_per_cpu_s'] / base:.2f}x | {r['read_views_s']:.2f} | {r['cached_features_s']:.3f} | "
              f"{r['latent_fwd_bwd_s']:.2f} | {r['pixel_term_s']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
