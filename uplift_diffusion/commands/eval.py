"""``uplift-diffusion eval {sr,coco,relaion}``: the paper's benchmarks (Tables 2-4) as resumable runs."""

from __future__ import annotations

import argparse

from uplift_diffusion.commands.checks import SEED_RANGE, float_in, int_in
from uplift_diffusion.commands.loading import (
    DEFAULT_FLUX2_REPO,
    DEFAULT_SD_REPO,
    DEFAULT_UPSAMPLER,
    add_color_correction_arguments,
    add_device_arguments,
    add_pair_arguments,
    add_refine_arguments,
    color_correction_argument,
    resolve_device_dtype,
)
from uplift_diffusion.utils.deprecation import renamed_values
from uplift_diffusion.utils.dtypes import dtype_name
from uplift_diffusion.utils.errors import InputError

HELP = "reproduce the paper's benchmarks: super-resolution (Table 4), COCO (Table 2), reLAION (Table 3)"
BENCHMARKS = ("sr", "coco", "relaion")


def _common_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", required=True, help="results folder (images, results.json, table.md, samples.png); "
                                                   "rerunning with the same folder and settings resumes")
    p.add_argument("--overwrite", action="store_true",
                   help="regenerate saved images that were made with other settings (model, VAE, flags, seed, "
                        "steps ...) instead of refusing the folder")
    p.add_argument("--limit", type=int_in(None, 10**9), default=None,
                   help="only the first N selected samples (quick runs)")
    p.add_argument("--num-samples", type=int_in(None, 10**9), default=5000,
                   help="random samples drawn from the data (default 5000)")
    p.add_argument("--seed", type=int_in(*SEED_RANGE), default=0,
                   help="seed of the sampling, the crops and the generators")
    p.add_argument("--batch-size", type=int_in(None, 4096), default=None, help="images per forward pass")
    p.add_argument("--fid-backend", default="torchmetrics", choices=("torchmetrics", "clean-fid", "none"),
                   help="FID implementation ('none' skips FID and patch-FID)")
    p.add_argument("--fid-mode", default="clean", choices=("clean", "legacy_pytorch"), help="clean-fid mode")
    p.add_argument("--inception-weights", default=None,
                   help="local Inception weight file: weights-inception-2015-12-05-6726825d.pth (torchmetrics), "
                        "inception-2015-12-05.pt (clean-fid clean) or pt_inception-2015-12-05-6726825d.pth "
                        "(clean-fid legacy_pytorch)")
    p.add_argument("--reference-stats", default=None,
                   help="folder for the real images' FID statistics (.npz, reused across runs; default: --output)")
    p.add_argument("--latency", action="store_true", help="also measure latency (3 warm-up + 10 timed batches)")
    p.add_argument("--latency-warmup", type=int_in(None, 10**6), default=3)
    p.add_argument("--latency-iterations", type=int_in(None, 10**6), default=10)
    p.add_argument("--num-processes", type=int_in(None, 1024), default=1,
                   help="split the samples across N processes of this machine (one per GPU; CPU processes without a "
                        "GPU), as `accelerate launch --multi_gpu --num_processes N` would, but an error in the "
                        "workers ends in one line instead of the launcher's traceback (default 1)")
    add_device_arguments(p)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="benchmark", required=True)

    sr = sub.add_parser("sr", help="super-resolution 256->1024 on a folder of images (FacesHQ / LHQ, Table 4)")
    sr.add_argument("--images", required=True, help="folder of high-resolution images")
    add_pair_arguments(sr, default="sd15", why=": the paper's Table 4")
    sr.add_argument("--random-upsampler", default=None, metavar="PRESET",
                    help="instead of --upsampler, a randomly initialised model of this preset (in_channels set to "
                         "the VAE's latent channels), e.g. tiny-vae: shows the table before a model is trained")
    sr.add_argument("--methods", default="uplift,latent-bilinear,latent-nearest,pixel-bicubic",
                    help="comma-separated: uplift, latent-bilinear, latent-nearest, pixel-bicubic")
    sr.add_argument("--downsample", default="bilinear-aliased", choices=("bilinear-aliased", "bicubic"),
                    type=renamed_values("--downsample", {"bilinear": "bilinear-aliased"}),
                    help="how the low-res inputs are made: bilinear-aliased (paper B.2: no antialiasing) or bicubic "
                         "(PIL, antialiased: the standard super-resolution protocol)")
    sr.add_argument("--size", type=int_in(None, 16384), default=1024, help="high-res centre crop (default 1024)")
    sr.add_argument("--scale", type=float_in(1, 64), default=4,
                    help="upscaling factor, any number >= 1 (default 4: two UPLiFT steps; 1.5: UPLiFT to 2x, then the "
                         "pipeline's resampling to the crop's size)")
    sr.add_argument("--patch-size", type=int_in(None, 16384), default=None, help="patch-FID crop (default size / 2)")
    add_color_correction_arguments(sr)
    _common_arguments(sr)

    for name, help_text in (("coco", "COCO 2014 text-to-image 512->1024 (Table 2)"),
                            ("relaion", "reLAION text-to-image 512->1024 with CLIP score (Table 3)")):
        p = sub.add_parser(name, help=help_text)
        if name == "coco":
            p.add_argument("--annotations", required=True, help="COCO captions JSON (e.g. captions_val2014.json)")
            p.add_argument("--images", required=True, help="folder with the COCO images of that JSON")
        else:
            p.add_argument("--data", required=True,
                           help="parquet / CSV with image path + caption columns, or a folder of images with "
                                "same-name .txt captions")
            p.add_argument("--images-root", default=None, help="folder that relative image paths start from")
            p.add_argument("--min-side", type=int_in(None, 16384), default=1024,
                           help="keep images with both sides >= this")
            p.add_argument("--clip-model", default="openai/clip-vit-base-patch32",
                           help="CLIP score model: a transformers CLIP folder or Hub id (default: the paper's "
                                "ViT-B/32) or an open_clip model open_clip:ARCH/PRETRAINED (e.g. "
                                "open_clip:ViT-B-32/openai, open_clip:ViT-g-14/laion2b_s34b_b88k)")
        p.add_argument("--family", default="sd15", choices=("sd15", "flux2"),
                       help="sd15: Stable Diffusion 1.5 512 -> 1024 (the paper's table, default); flux2: FLUX.2 "
                            "(klein or dev) 1024 -> 2048 with the built-in taef2 UPLiFT model")
        p.add_argument("--pipeline", default=None,
                       help=f"pipeline folder or Hub id (default {DEFAULT_SD_REPO}; flux2: {DEFAULT_FLUX2_REPO})")
        p.add_argument("--upsampler", default=None,
                       help=f"UPLiFT checkpoint (default {DEFAULT_UPSAMPLER}; flux2: the built-in taef2 model)")
        p.add_argument("--steps", default=None,
                       help="comma-separated denoising step counts (default: sd15 " +
                            ("25" if name == "coco" else "25,40") + "; flux2: the checkpoint's, 4 when distilled)")
        p.add_argument("--guidance-scale", type=float_in(0, 100), default=None,
                       help="guidance (default: sd15 7.5; flux2: the checkpoint's, none when distilled)")
        p.add_argument("--no-baseline", action="store_true", help="skip the model without upscaling")
        add_refine_arguments(p, "also a row of UPLiFT + a refine pass at this strength in (0, 1] beside UPLiFT "
                                "alone (the pipelines' refine_strength; 0, the default: no refine row; try 0.3)")
        p.add_argument("--extra-pipeline", action="append", default=[], metavar="ID[:STEPS]",
                       help="also evaluate any diffusers text-to-image pipeline at its native size (e.g. "
                            "stabilityai/stable-diffusion-xl-base-1.0:50); repeatable")
        p.add_argument("--compile", action="store_true", help="torch.compile the modules for the latency runs")
        _common_arguments(p)


def _fid_factory(args, device):
    if args.fid_backend == "none":
        return None
    from uplift_diffusion.eval.metrics import FID

    FID(args.fid_backend, args.fid_mode, args.inception_weights, device=device)  # fail early, before generating
    return lambda: FID(args.fid_backend, args.fid_mode, args.inception_weights, device=device)


def _run_sr(args, device, dtype) -> dict | None:
    from uplift_diffusion import builtin
    from uplift_diffusion.backbones.vae import latent_channels
    from uplift_diffusion.commands.loading import load_pair, load_vae, pair_sources
    from uplift_diffusion.eval.sr import run_sr_benchmark
    from uplift_diffusion.model import UPLiFTModel

    vae_spec, upsampler_spec = pair_sources(args.pair, args.vae, args.upsampler)
    vae_source = vae_spec or f"built-in {args.pair}"
    if args.random_upsampler:
        vae = load_vae(vae_spec, dtype) if vae_spec else builtin.load_builtin_vae(args.pair, dtype)
        vae = vae.to(device).eval()
        import torch

        torch.manual_seed(args.seed)
        upsampler = UPLiFTModel.from_preset(args.random_upsampler, in_channels=latent_channels(vae)).eval()
        upsampler = upsampler.to(dtype=dtype) if dtype != torch.float32 else upsampler
        upsampler_source = f"random init of preset {args.random_upsampler} (seed {args.seed})"
    else:  # the pair `upscale` would load for the same flags
        vae, upsampler = load_pair(args.pair, args.vae, args.upsampler, dtype)
        vae = vae.to(device).eval()
        upsampler_source = upsampler_spec or f"built-in {args.pair}"
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    return run_sr_benchmark(
        args.images, vae, args.output, upsampler=upsampler.to(device) if "uplift" in methods else None,
        methods=methods, size=args.size, scale=int(args.scale) if float(args.scale).is_integer() else args.scale,
        num_samples=args.num_samples, limit=args.limit,
        downsample=args.downsample,
        seed=args.seed, batch_size=args.batch_size or 1, color_correction=color_correction_argument(args),
        fid_factory=_fid_factory(args, device), patch_size=args.patch_size or args.size // 2,
        reference_stats=args.reference_stats, latency=args.latency, latency_warmup=args.latency_warmup,
        latency_iterations=args.latency_iterations, overwrite=args.overwrite,
        extra_config=dict(vae_source=vae_source, upsampler_source=upsampler_source, device=str(device),
                          dtype=dtype_name(dtype)),
    )


def _run_text2img(args, device, dtype) -> dict | None:
    from accelerate import PartialState

    from uplift_diffusion.commands.loading import load_upsampler
    from uplift_diffusion.eval import text2img

    flux2 = args.family == "flux2"
    if args.steps:
        steps = [int(s) for s in args.steps.split(",") if s.strip()]
    else:  # FLUX.2: None = the checkpoint's recommended steps (pipelines.flux2.flux2_defaults)
        steps = [None] if flux2 else [25] if args.benchmark == "coco" else [25, 40]
    if flux2 and args.dtype is None and device.type == "cuda":
        import torch

        dtype = torch.bfloat16  # FLUX.2 ships and runs in bfloat16; float16 overflows its activations (as FLUX.1's)
    if flux2:  # the built-in taef2 upsampler unless one is named
        pipeline_source, upsampler_source = args.pipeline or DEFAULT_FLUX2_REPO, args.upsampler or "built-in taef2"
        pipe = text2img.load_flux2_uplift_pipeline(
            pipeline_source, load_upsampler(args.upsampler, dtype) if args.upsampler else None, dtype).to(device)
    else:
        pipeline_source, upsampler_source = args.pipeline or DEFAULT_SD_REPO, args.upsampler or DEFAULT_UPSAMPLER
        pipe = text2img.load_uplift_pipeline(pipeline_source, load_upsampler(upsampler_source, dtype), dtype).to(device)
    pipe.set_progress_bar_config(disable=not PartialState().is_local_main_process)  # one bar per node
    rows = text2img.default_rows(pipe, steps, baseline=not args.no_baseline, guidance_scale=args.guidance_scale,
                                 refine_strength=args.refine, refine_steps=args.refine_steps)
    rows += [text2img.load_extra_pipeline(spec, dtype, device) for spec in args.extra_pipeline]
    real_size = 2 * text2img.low_resolution(pipe)  # the UPLiFT rows' 2x output (SD 1.5: 1024, FLUX.2: 2048)
    common = dict(
        rows=rows, output_dir=args.output, num_samples=args.num_samples, limit=args.limit, seed=args.seed,
        real_size=real_size, patch_size=real_size // 2,
        fid_factory=_fid_factory(args, device), reference_stats=args.reference_stats, latency=args.latency,
        latency_warmup=args.latency_warmup, latency_iterations=args.latency_iterations, compile=args.compile,
        overwrite=args.overwrite,
        extra_config=dict(pipeline_source=pipeline_source, upsampler_source=upsampler_source, device=str(device),
                          dtype=dtype_name(dtype)),
    )
    if args.benchmark == "coco":
        from uplift_diffusion.eval.coco import run_coco_benchmark

        return run_coco_benchmark(args.annotations, args.images, batch_size=args.batch_size or 4, **common)
    from uplift_diffusion.eval.metrics import CLIPScorer
    from uplift_diffusion.eval.relaion import run_relaion_benchmark

    return run_relaion_benchmark(args.data, images_root=args.images_root, min_side=args.min_side,
                                 clip_factory=lambda: CLIPScorer(args.clip_model, device=device),
                                 batch_size=args.batch_size or 1, **common)


def _require_images(folder: str) -> None:
    """A folder without an image is refused from its listing, before torch and the models load; its other notes
    (files left out) are the run's to print, once."""
    import warnings

    from uplift_diffusion.utils.images import expand_inputs

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expand_inputs([folder])


def check_arguments(args) -> None:
    """Numbers, choices and input paths, before torch loads (see uplift_diffusion.commands.checks)."""
    from uplift_diffusion.commands import checks
    from uplift_diffusion.commands.loading import check_model_source
    from uplift_diffusion.utils.io import refuse_output_folder_in_inputs

    checks.at_least("--num-processes", args.num_processes, 1)
    checks.at_least("--limit", args.limit, 1)
    checks.at_least("--num-samples", args.num_samples, 1)
    checks.at_least("--batch-size", args.batch_size, 1)
    checks.at_least("--latency-warmup", args.latency_warmup, 0)
    checks.at_least("--latency-iterations", args.latency_iterations, 1)
    checks.existing("--inception-weights", args.inception_weights, "file")
    if args.benchmark == "sr":
        checks.existing("--images", args.images, "folder")
        refuse_output_folder_in_inputs(args.output, [args.images], recursive=True, flag="--output")
        checks.at_least("--size", args.size, 1)
        checks.at_least("--patch-size", args.patch_size, 1)
        unknown = [m for m in (m.strip() for m in args.methods.split(",")) if m and m not in checks.SR_METHODS]
        if unknown:
            raise InputError(f"unknown method {unknown[0]!r} in --methods; choose from {', '.join(checks.SR_METHODS)}")
        if args.random_upsampler:
            from uplift_diffusion.presets import resolve_preset_name

            resolve_preset_name(args.random_upsampler)
        for flag, spec in (("--vae", args.vae), ("--upsampler", args.upsampler)):
            if spec:
                check_model_source(spec, flag)
        _require_images(args.images)
        return
    if args.benchmark == "coco":
        checks.existing("--annotations", args.annotations, "file")
        checks.existing("--images", args.images, "folder")
    else:
        checks.existing("--data", args.data)
        checks.existing("--images-root", args.images_root, "folder")
        checks.at_least("--min-side", args.min_side, 1)
    checks.int_list("--steps", args.steps)
    checks.refine(args)
    for flag, spec in (("--pipeline", args.pipeline), ("--upsampler", args.upsampler)):
        if spec:
            check_model_source(spec, flag)


def run(args) -> int:
    check_arguments(args)
    from uplift_diffusion.utils.launch import is_launched_worker, is_worker, launch_workers, tie_to_launcher

    if args.num_processes > 1 and not is_worker():  # start the workers: each runs this command on its share
        launch_workers(args.num_processes, args.argv, "eval")
        return 0
    if is_launched_worker():
        tie_to_launcher()
    device, dtype = resolve_device_dtype(args.device, args.dtype)
    from accelerate import PartialState

    # One process, or one of `accelerate launch`'s / torchrun's: each then takes its share of the images. `cpu=True`
    # for CPU runs: without it accelerate finds no accelerator and treats every launched process as a lone one
    state = PartialState(cpu=device.type == "cpu")
    if state.num_processes > 1 and device.type == state.device.type and device.index is None:
        device = state.device  # one accelerator per process
    results = (_run_sr if args.benchmark == "sr" else _run_text2img)(args, device, dtype)
    if state.num_processes > 1:  # leave together and close the group: a process exiting with gloo's threads still
        state.wait_for_everyone()  # running may abort ("terminate called without an active exception")
        state.destroy_process_group()
    if results is None:  # a helper process of `accelerate launch`: the main process scores and reports
        return 0
    from pathlib import Path

    print((Path(args.output) / "table.md").read_text(), end="")
    print(f"results: {Path(args.output) / 'results.json'}")
    return 0 if results else 1

