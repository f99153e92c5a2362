"""``uplift-diffusion train --config FILE [--resume]``: train an UPLiFT model (single process or accelerate launch)."""

from __future__ import annotations

import argparse

HELP = "Train an UPLiFT model from a JSON / YAML / TOML config (resumable; works under `accelerate launch`)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="training config file (.json, .yaml, .yml or .toml)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the newest valid checkpoint in the config's output_dir")
    parser.add_argument("--output-dir", default=None, help="override the config's output_dir")
    parser.add_argument("--max-steps", type=int, default=None, help="override the config's max_steps")
    parser.add_argument("--max-minutes", type=float, default=None, help="override the config's max_minutes")


def run(args: argparse.Namespace) -> int:
    from uplift_diffusion.training.config import TrainConfig
    from uplift_diffusion.training.trainer import Trainer

    config = TrainConfig.from_file(args.config)
    for name in ("output_dir", "max_steps", "max_minutes"):
        if getattr(args, name) is not None:
            setattr(config, name, getattr(args, name))
    path = Trainer(config).train(resume=args.resume)
    print(f"trained model saved to {path} (load it with UPLiFTModel.from_pretrained({str(path)!r}))")
    return 0
