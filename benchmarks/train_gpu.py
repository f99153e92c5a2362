"""Train the built-in taef2 model's best recipe from scratch on one CUDA device, within minutes, into ``$OUT``.

One command for a lent GPU machine (see docs/training.md, "On a GPU"):

    python benchmarks/train_gpu.py --out "$OUT"            # ~8 minutes on one H100, recipe from configs/recipes/

It reads a recipe (``--recipe``; default the best one of the experiment table), trains it with the repository's own
trainer on whatever device accelerate picks (CUDA when there is one), stopping at ``--minutes`` of wall time (feature
caching included), exports ``$OUT/model`` (a ``save_pretrained`` folder: score it here with
``python benchmarks/builtin_table.py --model "gpu=$OUT/model"``), and, when ``--val-dir`` exists, scores it on the
experiment protocol's held-out photos (``$OUT/result.json``, the columns of ``benchmarks/recipe_search.py``).

The training photos and the taef2 weights are read from ``--data-root`` / ``--backbone`` (defaults: ``../shared``
beside the repository, and the package's own taef2). A device machine gets only the repository: copy the photos
into an ignored folder of it first (``--data-root outputs/gpu_data``), as docs/training.md shows. On the CPU the same
command runs with ``--max-steps N`` (tests/test_train_gpu_script.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RECIPE = REPO / "configs" / "recipes" / "grid_loss.json"  # the best row of the experiment table
SHARED_DATA = "../shared/data"


def build_config(args: argparse.Namespace) -> dict:
    from uplift_diffusion.builtin import builtin_vae_path
    from uplift_diffusion.training.config import read_config_file

    config = read_config_file(args.recipe)
    config["output_dir"] = str(Path(args.out))
    config["max_minutes"] = args.minutes
    config["max_steps"] = args.max_steps
    config["batch_size"] = args.batch_size or config.get("batch_size", 8)
    config["checkpoint_every"] = max(1, args.checkpoint_every)
    config["data"]["cache_dir"] = str(Path(args.out) / "feature_cache")
    config["data"]["num_workers"] = args.num_workers
    for source in config["data"]["sources"]:  # the photos may live elsewhere on another machine
        if source["type"] == "folder" and source["path"].startswith(SHARED_DATA):
            source["path"] = str(Path(args.data_root) / source["path"][len(SHARED_DATA):].lstrip("/"))
    config["backbone"]["path"] = args.backbone or str(builtin_vae_path("taef2"))
    if args.init_from:
        config["model"] = {"init_from": args.init_from}
    return config


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", type=Path, default=DEFAULT_RECIPE)
    parser.add_argument("--out", default=os.environ.get("OUT", str(REPO / "outputs" / "gpu_train")))
    parser.add_argument("--minutes", type=float, default=7.0, help="wall-clock budget of the training run")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (CPU checks)")
    parser.add_argument("--batch-size", type=int, default=None, help="global batch (default: the recipe's)")
    parser.add_argument("--checkpoint-every", type=int, default=500)
    parser.add_argument("--num-workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--backbone", default=None, help="taef2 folder (default: the package's built-in taef2)")
    parser.add_argument("--init-from", default=None, help="continue from this save_pretrained folder")
    parser.add_argument("--val-dir", default=str(REPO.parent / "shared" / "data" / "train_photos"))
    parser.add_argument("--val-count", type=int, default=12)
    args = parser.parse_args()

    import torch

    from uplift_diffusion.training.config import TrainConfig
    from uplift_diffusion.training.trainer import Trainer
    from uplift_diffusion.utils.io import write_json_atomic

    config = build_config(args)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"training {args.recipe.name} on {device} ({torch.cuda.get_device_name() if device == 'cuda' else 'CPU'}) "
          f"for {args.minutes} min" + (f" or {args.max_steps} steps" if args.max_steps else ""), flush=True)
    start = time.monotonic()
    trainer = Trainer(TrainConfig.from_dict(config), overwrite=False)
    resume = (Path(config["output_dir"]) / "checkpoints").is_dir()
    model_dir = trainer.train(resume=resume)
    facts = {"recipe": str(args.recipe.relative_to(REPO) if args.recipe.is_relative_to(REPO) else args.recipe),
             "device": device, "steps": trainer.step, "train_seconds": round(trainer.elapsed, 1),
             "wall_seconds": round(time.monotonic() - start, 1), "model": str(model_dir), "config": config}
    if Path(args.val_dir).is_dir():
        sys.path.insert(0, str(REPO / "benchmarks"))
        from recipe_search import evaluate, val_photos

        facts["scores"] = evaluate(str(model_dir), val_photos(Path(args.val_dir), args.val_count))
    write_json_atomic(Path(args.out) / "result.json", facts)
    print(json.dumps({k: v for k, v in facts.items() if k != "config"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
