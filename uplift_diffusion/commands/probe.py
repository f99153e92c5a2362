"""``uplift-diffusion probe --dataset voc --root VOCdevkit -o results/probe``: linear-probe evaluation of pixel-dense
DINO features with UPLiFT against bilinear / nearest upsampling (the paper's Table 1, JAFAR protocol); resumable."""

from __future__ import annotations

import argparse

from uplift_diffusion.commands.checks import SEED_RANGE, float_in, int_in
from uplift_diffusion.commands.loading import add_feature_backbone_arguments
from uplift_diffusion.utils.device import add_device_arguments

HELP = "Linear-probe evaluation of pixel-dense DINOv2 / DINOv3 features (segmentation mIoU / depth δ1), resumable."
DATASETS = ("voc", "ade20k", "cityscapes", "coco-stuff", "folder")  # uplift_diffusion.features.probe.datasets
METHODS = ("nearest", "bilinear", "uplift")
TASKS = ("seg", "depth")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--root", required=True, help="dataset root in its standard layout")
    parser.add_argument("--task", default="seg", choices=TASKS, help="seg (default) or depth (--dataset folder)")
    parser.add_argument("--train-split", default="train")
    parser.add_argument("--val-split", default="val")
    parser.add_argument("--num-classes", type=int_in(None, 255), default=None,
                        help="classes of a 'folder' segmentation dataset")
    parser.add_argument("--depth-scale", type=float_in(0, 1e9, low_open=True), default=1000.0,
                        help="PNG depth units per metre (default 1000)")
    parser.add_argument("-o", "--output", required=True, help="output folder (results.json, results.md, probes/); "
                                                              "rerunning with the same folder resumes")
    add_feature_backbone_arguments(parser)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--size", type=int_in(None, 8192), default=448, help="image and feature side (default 448)")
    # None: the protocol's value from ProbeConfig (one home for the defaults)
    for flag, kind, what in (("--epochs", int_in(None, 10**6), "training epochs"),
                             ("--batch-size", int_in(None, 4096), "batch size"),
                             ("--lr", float_in(0, 10, low_open=True), "AdamW learning rate"),
                             ("--seed", int_in(*SEED_RANGE), "seed"),
                             ("--min-depth", float_in(0, 1e6), "smallest valid depth (m)"),
                             ("--max-depth", float_in(0, 1e6, low_open=True), "largest valid depth (m)")):
        parser.add_argument(flag, type=kind, default=None, help=f"{what} (default: the JAFAR protocol's)")
    parser.add_argument("--num-workers", type=int_in(None, 256), default=2)
    parser.add_argument("--max-train", type=int_in(None, 10**9), default=None,
                        help="use only the first N training images")
    parser.add_argument("--max-val", type=int_in(None, 10**9), default=None,
                        help="use only the first N validation images")
    add_device_arguments(parser, dtype=False)


def check_arguments(args: argparse.Namespace) -> None:
    """Numbers, choices and input paths, before torch loads (see uplift_diffusion.commands.checks)."""
    from uplift_diffusion.commands import checks
    from uplift_diffusion.commands.loading import check_model_source
    from uplift_diffusion.utils.errors import InputError

    checks.existing("--root", args.root, "folder")
    if args.dataset == "folder" and args.task == "seg" and not args.num_classes:
        raise InputError("--dataset folder with --task seg needs --num-classes")
    if args.task == "depth" and args.dataset != "folder":
        raise InputError(f"{args.dataset} is a segmentation dataset; depth probes use --dataset folder")
    for flag in ("num_classes", "size", "epochs", "batch_size", "max_train", "max_val"):
        checks.at_least(f"--{flag.replace('_', '-')}", getattr(args, flag), 1)
    checks.at_least("--num-workers", args.num_workers, 0)
    for flag in ("lr", "depth_scale", "max_depth"):
        checks.positive(f"--{flag.replace('_', '-')}", getattr(args, flag))
    checks.at_least("--min-depth", args.min_depth, 0)
    checks.feature_backbone("--backbone", args.backbone, "--backbone-weights", args.backbone_weights)
    if args.upsampler:
        check_model_source(args.upsampler, "--upsampler")


def run(args: argparse.Namespace) -> int:
    check_arguments(args)
    from uplift_diffusion.commands.loading import load_feature_extractor
    from uplift_diffusion.features.probe import ProbeConfig, build_dataset, run_probe_evaluation
    from uplift_diffusion.utils.device import resolve_device_dtype

    kwargs = dict(task=args.task, size=args.size, num_classes=args.num_classes, depth_scale=args.depth_scale)
    train_set = build_dataset(args.dataset, args.root, args.train_split, **kwargs).subset(args.max_train)
    val_set = build_dataset(args.dataset, args.root, args.val_split, **kwargs).subset(args.max_val)
    chosen = dict(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                  min_depth=args.min_depth, max_depth=args.max_depth)
    config = ProbeConfig(task=args.task, num_workers=args.num_workers,
                         **{k: v for k, v in chosen.items() if v is not None})
    device, _ = resolve_device_dtype(args.device)
    extractor = load_feature_extractor(args, device)
    result = run_probe_evaluation(extractor, train_set, val_set, args.output, args.methods, config, device,
                                  backbone_name=args.backbone)
    print(result.table_path.read_text(), end="")
    print(f"results: {result.results_path}")
    return 0
