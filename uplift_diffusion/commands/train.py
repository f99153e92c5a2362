"""``uplift-diffusion train --config FILE [--resume]``: train an UPLiFT model (single process or accelerate launch)."""

from __future__ import annotations

import argparse

HELP = "Train an UPLiFT model from a JSON / YAML / TOML config (resumable; works under `accelerate launch`)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="training config file (.json, .yaml, .yml or .toml)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the newest valid checkpoint in the config's output_dir")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete an earlier run in output_dir (and a feature cache made with other settings) "
                             "first; without it (or --resume) a non-empty output_dir is refused")
    parser.add_argument("--output-dir", default=None, help="override the config's output_dir")
    parser.add_argument("--max-steps", type=int, default=None, help="override the config's max_steps")
    parser.add_argument("--max-minutes", type=float, default=None, help="override the config's max_minutes")


def run(args: argparse.Namespace) -> int:
    # Everything up to the Trainer is the standard library: a bad config or output folder answers before torch loads.
    from uplift_diffusion.training.config import TrainConfig
    from uplift_diffusion.training.run import prepare_run_folder, resume_changes
    from uplift_diffusion.utils.errors import InputError

    try:  # everything in a config (and its overrides) is the user's input: its errors are one-line messages
        config = TrainConfig.from_file(args.config)
        for name in ("output_dir", "max_steps", "max_minutes"):
            if getattr(args, name) is not None:
                setattr(config, name, getattr(args, name))
        config.validate()  # the overrides too, before any weights load
    except ValueError as err:
        raise InputError(str(err)) from None
    # Refuse an earlier run, files no run wrote, or a resume that changes what cannot change, before loading anything
    # (the trainer checks again and deletes what --overwrite replaces).
    prepare_run_folder(config.output_dir, args.resume, args.overwrite, keep=[config.data.cache_dir], delete=False)
    if args.resume:
        resume_changes(config.output_dir, config.to_dict())

    from uplift_diffusion.training.trainer import Trainer

    trainer = Trainer(config, overwrite=args.overwrite)
    path = trainer.train(resume=args.resume)
    trainer.accelerator.print(f"trained model saved to {path} (load it with UPLiFTModel.from_pretrained("
                              f"{str(path)!r}))")  # once, by the main process
    return 0
