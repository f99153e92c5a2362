"""``uplift-diffusion train --config FILE [--resume]``: train an UPLiFT model (single process or accelerate launch)."""

from __future__ import annotations

import argparse
import os

from uplift_diffusion.commands.checks import float_in, int_in

HELP = "Train an UPLiFT model from a JSON / YAML / TOML config (resumable; works under `accelerate launch`)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="training config file (.json, .yaml, .yml or .toml)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the newest valid checkpoint in the config's output_dir")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete an earlier run in output_dir (and a feature cache made with other settings) "
                             "first; without it (or --resume) a non-empty output_dir is refused")
    parser.add_argument("--output-dir", default=None, help="override the config's output_dir")
    parser.add_argument("--max-steps", type=int_in(1, 10**12), default=None, help="override the config's max_steps")
    parser.add_argument("--max-minutes", type=float_in(0, 525600, low_open=True), default=None,
                        help="override the config's max_minutes")
    parser.add_argument("--num-processes", type=int_in(None, 1024), default=1,
                        help="train on N processes of this machine (one per GPU; CPU processes without a GPU), as "
                             "`accelerate launch --multi_gpu --num_processes N` would, but a user error in the workers "
                             "ends in one line instead of the launcher's traceback (default 1)")


def run(args: argparse.Namespace) -> int:
    # Everything up to the Trainer is the standard library: a bad config or output folder answers before torch loads.
    from uplift_diffusion.training.config import TrainConfig
    from uplift_diffusion.utils.errors import InputError

    try:  # everything in a config (and its overrides) is the user's input: its errors are one-line messages
        config = TrainConfig.from_file(args.config)
        for name in ("output_dir", "max_steps", "max_minutes"):
            if getattr(args, name) is not None:
                setattr(config, name, getattr(args, name))
        config.validate()  # the overrides too, before any weights load
    except ValueError as err:
        raise InputError(str(err)) from None
    if config.backbone.path:  # a local path that is missing fails after the imports, deep in a loader, otherwise
        from uplift_diffusion.commands.loading import check_model_source

        check_model_source(config.backbone.path, f"backbone.path in {args.config}:")
    if args.num_processes < 1:
        raise InputError(f"--num-processes must be >= 1, got {args.num_processes}")
    from uplift_diffusion.utils.launch import is_launched_worker, is_worker, tie_to_launcher

    if is_launched_worker():  # a worker of ours: the launcher holds the folder's lock
        tie_to_launcher()
        return _train(args, config)
    if is_worker() and os.environ.get("RANK", "0") != "0":  # `accelerate launch`: rank 0 locks
        return _train(args, config)
    from uplift_diffusion.training.run import RunFolderLock

    with RunFolderLock(config.output_dir):
        return _train(args, config)


def _train(args: argparse.Namespace, config) -> int:
    from uplift_diffusion.training.run import prepare_run_folder, resume_changes
    from uplift_diffusion.utils.errors import InputError

    # Refuse an earlier run, files no run wrote, or a resume that changes what cannot change, before loading anything
    # (the trainer checks again and deletes what --overwrite replaces).
    prepare_run_folder(config.output_dir, args.resume, args.overwrite, keep=[config.data.cache_dir], delete=False)
    if args.resume:
        resume_changes(config.output_dir, config.to_dict())
    from uplift_diffusion.utils.launch import is_worker

    if args.num_processes > 1 and not is_worker():  # start the workers (they run the lines below)
        if config.batch_size % args.num_processes:
            raise InputError(f"batch_size {config.batch_size} is the global batch of a step (all processes together) "
                             f"and must be divisible by --num-processes {args.num_processes}")
        from uplift_diffusion.utils.launch import launch_workers

        launch_workers(args.num_processes, args.argv, "train")
        return 0

    from uplift_diffusion.training.trainer import Trainer

    trainer = Trainer(config, overwrite=args.overwrite)
    path = trainer.train(resume=args.resume)
    trainer.accelerator.print(f"trained model saved to {path} (load it with UPLiFTModel.from_pretrained("
                              f"{str(path)!r}))")  # once, by the main process
    return 0
