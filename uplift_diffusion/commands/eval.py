"""``uplift-diffusion eval {sr,coco,relaion}``: the paper's benchmarks (Tables 2-4) as resumable runs."""

from __future__ import annotations

import argparse

from uplift_diffusion.commands.loading import DEFAULT_SD_REPO, DEFAULT_UPSAMPLER, add_device_arguments, resolve_device
from uplift_diffusion.utils.dtypes import dtype_name

HELP = "reproduce the paper's benchmarks: super-resolution (Table 4), COCO (Table 2), reLAION (Table 3)"
BENCHMARKS = ("sr", "coco", "relaion")


def _common_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", required=True, help="results folder (images, results.json, table.md, samples.png); "
                                                   "rerunning with the same folder and settings resumes")
    p.add_argument("--overwrite", action="store_true",
                   help="regenerate saved images that were made with other settings (model, VAE, flags, seed, "
                        "steps ...) instead of refusing the folder")
    p.add_argument("--limit", type=int, default=None, help="only the first N selected samples (quick runs)")
    p.add_argument("--num-samples", type=int, default=5000, help="random samples drawn from the data (default 5000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling, the crops and the generators")
    p.add_argument("--batch-size", type=int, default=None, help="images per forward pass")
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
    p.add_argument("--latency-warmup", type=int, default=3)
    p.add_argument("--latency-iterations", type=int, default=10)
    add_device_arguments(p)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="benchmark", required=True)

    sr = sub.add_parser("sr", help="super-resolution 256->1024 on a folder of images (FacesHQ / LHQ, Table 4)")
    sr.add_argument("--images", required=True, help="folder of high-resolution images")
    sr.add_argument("--vae", default=DEFAULT_SD_REPO,
                    help="VAE: diffusers folder, pipeline folder, taef2 folder or Hub id (default: SD 1.5's VAE)")
    sr.add_argument("--upsampler", default=DEFAULT_UPSAMPLER,
                    help="UPLiFT checkpoint: save_pretrained folder, published .safetensors file or Hub repo id")
    sr.add_argument("--random-upsampler", default=None, metavar="PRESET",
                    help="instead of --upsampler, a randomly initialised model of this preset (in_channels set to "
                         "the VAE's latent channels), e.g. tiny-vae: shows the table before a model is trained")
    sr.add_argument("--methods", default="uplift,latent-bilinear,latent-nearest",
                    help="comma-separated: uplift, latent-bilinear, latent-nearest")
    sr.add_argument("--size", type=int, default=1024, help="high-res centre crop (default 1024)")
    sr.add_argument("--scale", type=int, default=4, help="upscaling factor (default 4: two UPLiFT steps)")
    sr.add_argument("--patch-size", type=int, default=None, help="patch-FID crop (default size / 2)")
    sr.add_argument("--no-color-correction", action="store_true")
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
            p.add_argument("--min-side", type=int, default=1024, help="keep images with both sides >= this")
            p.add_argument("--clip-model", default="openai/clip-vit-base-patch32",
                           help="CLIP score model: a transformers CLIP folder or Hub id (default: the paper's "
                                "ViT-B/32) or an open_clip model open_clip:ARCH/PRETRAINED (e.g. "
                                "open_clip:ViT-B-32/openai, open_clip:ViT-g-14/laion2b_s34b_b88k)")
        p.add_argument("--pipeline", default=DEFAULT_SD_REPO, help="Stable Diffusion 1.5 folder or Hub id")
        p.add_argument("--upsampler", default=DEFAULT_UPSAMPLER, help="UPLiFT checkpoint (sd15-vae preset)")
        p.add_argument("--steps", default="25" if name == "coco" else "25,40",
                       help="comma-separated denoising step counts")
        p.add_argument("--guidance-scale", type=float, default=7.5)
        p.add_argument("--no-baseline", action="store_true", help="skip SD 1.5 at 512 without upscaling")
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
    from uplift_diffusion.backbones.vae import latent_channels
    from uplift_diffusion.commands.loading import load_upsampler, load_vae
    from uplift_diffusion.eval.sr import run_sr_benchmark
    from uplift_diffusion.model import UPLiFTModel

    vae = load_vae(args.vae, dtype).to(device).eval()
    if args.random_upsampler:
        import torch

        torch.manual_seed(args.seed)
        upsampler = UPLiFTModel.from_preset(args.random_upsampler, in_channels=latent_channels(vae)).eval()
        upsampler = upsampler.to(dtype=dtype) if dtype != torch.float32 else upsampler
        upsampler_source = f"random init of preset {args.random_upsampler} (seed {args.seed})"
    else:
        upsampler, upsampler_source = load_upsampler(args.upsampler, dtype), args.upsampler
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    return run_sr_benchmark(
        args.images, vae, args.output, upsampler=upsampler.to(device) if "uplift" in methods else None,
        methods=methods, size=args.size, scale=args.scale, num_samples=args.num_samples, limit=args.limit,
        seed=args.seed, batch_size=args.batch_size or 1, color_correction=not args.no_color_correction,
        fid_factory=_fid_factory(args, device), patch_size=args.patch_size or args.size // 2,
        reference_stats=args.reference_stats, latency=args.latency, latency_warmup=args.latency_warmup,
        latency_iterations=args.latency_iterations, overwrite=args.overwrite,
        extra_config=dict(vae_source=args.vae, upsampler_source=upsampler_source, device=str(device),
                          dtype=dtype_name(dtype)),
    )


def _run_text2img(args, device, dtype) -> dict | None:
    from accelerate import PartialState

    from uplift_diffusion.commands.loading import load_upsampler
    from uplift_diffusion.eval import text2img

    steps = [int(s) for s in args.steps.split(",") if s.strip()]
    pipe = text2img.load_uplift_pipeline(args.pipeline, load_upsampler(args.upsampler, dtype), dtype).to(device)
    pipe.set_progress_bar_config(disable=not PartialState().is_local_main_process)  # one bar per node
    rows = text2img.default_rows(pipe, steps, baseline=not args.no_baseline, guidance_scale=args.guidance_scale)
    rows += [text2img.load_extra_pipeline(spec, dtype, device) for spec in args.extra_pipeline]
    real_size = 2 * pipe.unet.config.sample_size * pipe.vae_scale_factor  # the UPLiFT rows' 2x output (SD 1.5: 1024)
    common = dict(
        rows=rows, output_dir=args.output, num_samples=args.num_samples, limit=args.limit, seed=args.seed,
        real_size=real_size, patch_size=real_size // 2,
        fid_factory=_fid_factory(args, device), reference_stats=args.reference_stats, latency=args.latency,
        latency_warmup=args.latency_warmup, latency_iterations=args.latency_iterations, compile=args.compile,
        overwrite=args.overwrite,
        extra_config=dict(pipeline_source=args.pipeline, upsampler_source=args.upsampler, device=str(device),
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


def run(args) -> int:
    device, dtype = resolve_device(args.device, args.dtype)
    from accelerate import PartialState

    # One process, or one of `accelerate launch`'s / torchrun's: each then takes its share of the images. `cpu=True`
    # for CPU runs: without it accelerate finds no accelerator and treats every launched process as a lone one
    state = PartialState(cpu=device.type == "cpu")
    if state.num_processes > 1 and device.type == state.device.type and device.index is None:
        device = state.device  # one accelerator per process
    results = (_run_sr if args.benchmark == "sr" else _run_text2img)(args, device, dtype)
    if results is None:  # a helper process of `accelerate launch`: the main process scores and reports
        return 0
    from pathlib import Path

    print((Path(args.output) / "table.md").read_text(), end="")
    print(f"results: {Path(args.output) / 'results.json'}")
    return 0 if results else 1

