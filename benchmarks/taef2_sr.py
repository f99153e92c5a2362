"""Real-data proof: train a small UPLiFT for the taef2 autoencoder on CPU, then measure 2x / 4x latent SR.

Training: ``--config`` (default ``configs/taef2_builtin.json``, the recipe of the shipped model: latent + decoder-aware
pixel loss, bilinear and bicubic low-res inputs) on ``--train-dir`` for ``--minutes`` of wall-clock (feature caching
included). ``--model DIR`` skips training and evaluates a trained model (e.g. the shipped
``uplift_diffusion/weights/uplift-taef2``); ``--compare NAME=DIR`` adds more UPLiFT models as rows.

Evaluation on every image of ``--eval-dir``:

* HR = centre crop to a multiple of ``8 * scale``, at most ``--max-size`` pixels a side (0 = the whole image);
* LR = HR downscaled by ``scale`` with each ``--degradations`` kernel (antialiased ``bilinear``: the previous
  protocol; antialiased ``bicubic``: the standard SR one, PIL's ``BICUBIC``);
* LR is stored as 8 bits (what a user's file holds);
* methods: UPLiFT through :class:`UPLiFTSuperResolutionPipeline` exactly as users run it (taef2 encode, log2(scale)
  steps guided by the LR image, decode, the colour correction the model's config records), latent bilinear /
  nearest interpolation through the same pipeline (``upsampling="latent-*"``, no correction), pixel bicubic, and the
  taef2 round trip of the HR image (the ceiling of any latent method);
* the output's saturation and contrast relative to the original's (1 = faithful), next to PSNR / SSIM;
* PSNR (per image on [0, 1], then the mean), SSIM (Gaussian, sigma 1.5, no sample covariance, data range 1:
  scikit-image's settings) and seconds per image, per evaluation folder, degradation and scale.

Writes ``results.json``, ``results.md`` and ``sr_grid.png`` (labelled columns) to ``--out``, plus the trained model
(``model/``) when it trains.

    python benchmarks/taef2_sr.py --minutes 30 --out outputs/taef2_sr
    python benchmarks/taef2_sr.py --model uplift_diffusion/weights/uplift-taef2 --eval-dir ../shared/data/kodak \
        --max-size 0 --out outputs/builtin_kodak
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402
from uplift_diffusion.eval.metrics import colour_ratios_per_image  # noqa: E402
from uplift_diffusion.pipelines.common import color_correction_for  # noqa: E402

from uplift_diffusion import UPLiFTModel, UPLiFTSuperResolutionPipeline  # noqa: E402
from uplift_diffusion.backbones.taef2 import TAEF2  # noqa: E402
from uplift_diffusion.backbones.vae import decode_latents, encode_latents  # noqa: E402
from uplift_diffusion.color import MODES as COLOR_MODES  # noqa: E402
from uplift_diffusion.testing import SHARED  # noqa: E402
from uplift_diffusion.training.config import DataSource, TrainConfig  # noqa: E402
from uplift_diffusion.training.data import RESIZE_KERNELS, downscale, list_image_files  # noqa: E402
from uplift_diffusion.training.trainer import Trainer  # noqa: E402
from uplift_diffusion.utils import tables  # noqa: E402
from uplift_diffusion.utils.image_ops import float_to_uint8, pil_to_tensor  # noqa: E402
from uplift_diffusion.utils.images import load_image  # noqa: E402
from uplift_diffusion.utils.io import write_json_atomic  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BASELINES = {
    "latent_bilinear": "latent bilinear",
    "latent_nearest": "latent nearest",
    "pixel_bicubic": "pixel bicubic",
    "taef2_roundtrip": "taef2 round trip of HR (ceiling)",
}
GRID_COLUMNS = ("low-res", "latent bilinear", "pixel bicubic", "UPLiFT", "original")


def metric_functions():
    """``(psnr, ssim, source)`` on [3, H, W] tensors in [0, 1]: the project's ``eval.metrics`` when present (SSIM =
    scikit-image's Gaussian settings, verified there), else scikit-image directly."""
    try:
        from uplift_diffusion.eval.metrics import psnr_per_image, ssim_per_image

        def _psnr(a, b):
            return float(psnr_per_image(a[None].clamp(0, 1), b[None].clamp(0, 1))[0])

        def _ssim(a, b):
            return float(ssim_per_image(a[None].clamp(0, 1), b[None].clamp(0, 1))[0])

        return _psnr, _ssim, "uplift_diffusion.eval.metrics (psnr_per_image, ssim_per_image)"
    except ImportError:
        from skimage.metrics import peak_signal_noise_ratio, structural_similarity

        def _np(x):
            return x.clamp(0, 1).permute(1, 2, 0).double().cpu().numpy()

        def _psnr(a, b):
            return float(peak_signal_noise_ratio(_np(b), _np(a), data_range=1.0))

        def _ssim(a, b):
            return float(structural_similarity(_np(a), _np(b), data_range=1.0, channel_axis=-1,
                                               gaussian_weights=True, sigma=1.5, use_sample_covariance=False))

        return _psnr, _ssim, "scikit-image"


def centre_crop(image: torch.Tensor, multiple: int, max_size: int) -> torch.Tensor:
    """Centre crop [3, H, W] to sides that are multiples of ``multiple`` and at most ``max_size``."""
    h, w = image.shape[-2:]
    th, tw = (min(s, max_size or s) // multiple * multiple for s in (h, w))  # max_size 0: whole image
    if th == 0 or tw == 0:
        raise ValueError(f"image {w}x{h} is smaller than one {multiple}-pixel block")
    top, left = (h - th) // 2, (w - tw) // 2
    return image[:, top:top + th, left:left + tw]


def _timed(fn, *args, **kwargs):
    """``(fn(*args, **kwargs), seconds)``."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def _quantised(image01: torch.Tensor) -> torch.Tensor:
    """What an 8-bit file holds: the images every entry point reads (a user's photo, the CLI's input)."""
    return (image01.clamp(0, 1) * 255).round() / 255


@torch.no_grad()
def super_resolve(pipes: dict[str, UPLiFTSuperResolutionPipeline], vae, hr: torch.Tensor, scale: int,
                  kernel: str) -> tuple[dict[str, torch.Tensor], dict[str, float], torch.Tensor]:
    """Every method's [1, 3, H, W] reconstruction of ``hr`` from its ``scale``x ``kernel`` downscale (8 bits), the
    seconds each took, and the low-res image. UPLiFT and the latent baselines all run through the pipeline (the
    baselines interpolate the latents instead, no colour correction)."""
    h, w = hr.shape[-2:]
    lr = _quantised(downscale(hr, (h // scale, w // scale), kernel))
    outs, secs = {}, {}
    for name, pipe in pipes.items():
        out, secs[name] = _timed(pipe, lr, scale=scale, output_type="pt", generator=torch.Generator().manual_seed(0))
        outs[name] = out.images
    baseline_pipe = next(iter(pipes.values()))
    for mode in ("bilinear", "nearest"):
        out, secs[f"latent_{mode}"] = _timed(baseline_pipe, lr, scale=scale, output_type="pt",
                                             upsampling=f"latent-{mode}", color_correction=False)
        outs[f"latent_{mode}"] = out.images
    bicubic, secs["pixel_bicubic"] = _timed(F.interpolate, lr, size=(h, w), mode="bicubic", align_corners=False)
    outs["pixel_bicubic"] = bicubic.clamp(0, 1)
    return outs, secs, lr


def evaluate(pipes: dict[str, UPLiFTSuperResolutionPipeline], vae, eval_dirs: list[Path], scales: list[int],
             kernels: list[str], max_size: int, grid_path: Path) -> dict:
    psnr, ssim, metric_source = metric_functions()
    methods = list(pipes) + list(BASELINES)
    results: dict = {"metric_source": metric_source, "datasets": {}}
    grid_rows = []
    for folder in eval_dirs:
        files = list_image_files(folder)
        # sums[kernel][scale][method] = [psnr, ssim, seconds, saturation ratio, contrast ratio]
        sums = {k: {s: {m: [0.0] * 5 for m in methods} for s in scales} for k in kernels}
        for i, path in enumerate(tqdm(files, desc=f"eval {folder.name}", dynamic_ncols=True)):
            image = pil_to_tensor(load_image(path))
            for scale in scales:
                hr = centre_crop(image, 8 * scale, max_size)[None]
                roundtrip, t_rt = _timed(lambda x: decode_latents(vae, encode_latents(vae, x)), hr)
                for kernel in kernels:
                    outs, secs, lr = super_resolve(pipes, vae, hr, scale, kernel)
                    outs["taef2_roundtrip"], secs["taef2_roundtrip"] = roundtrip, t_rt
                    for m in methods:
                        sat, contrast = colour_ratios_per_image(outs[m].clamp(0, 1), hr)
                        scores = (*_pair(psnr, ssim, outs[m], hr), secs[m], float(sat[0]), float(contrast[0]))
                        acc = sums[kernel][scale][m]
                        acc[:] = [a + b for a, b in zip(acc, scores, strict=True)]
                    if scale == max(scales) and kernel == kernels[-1] and i < 2:
                        lr_up = F.interpolate(lr, size=hr.shape[-2:], mode="nearest")
                        row = [lr_up, outs["latent_bilinear"], outs["pixel_bicubic"], outs[next(iter(pipes))], hr]
                        grid_rows.append(torch.cat([_centre_patch(x, 128) for x in row], dim=-1))
        n = len(files)
        results["datasets"][folder.as_posix()] = {
            "num_images": n,
            "degradations": {k: {str(s): {m: dict(zip(("psnr", "ssim", "seconds", "saturation_ratio",
                                                         "contrast_ratio"), (x / n for x in v), strict=True))
                                          for m, v in sums[k][s].items()} for s in scales} for k in kernels},
        }
    if grid_rows:
        save_labelled_grid(torch.cat(grid_rows, dim=-2)[0], GRID_COLUMNS, grid_path,
                           title=f"{max(scales)}x, {kernels[-1]} low-res input (centre 128-px patches)")
    return results


def _pair(psnr, ssim, out: torch.Tensor, hr: torch.Tensor) -> tuple[float, float]:
    return psnr(out[0], hr[0]), ssim(out[0], hr[0])


def save_labelled_grid(grid: torch.Tensor, labels: tuple[str, ...], path: Path, title: str = "") -> None:
    """[3, H, W] grid of equal-width columns in [0, 1] -> PNG with a header naming each column."""
    array = float_to_uint8(grid[None])[0]
    header = 34 if title else 20
    canvas = Image.new("RGB", (array.shape[1], array.shape[0] + header), "white")
    canvas.paste(Image.fromarray(array), (0, header))
    draw = ImageDraw.Draw(canvas)
    width = array.shape[1] // len(labels)
    if title:
        draw.text((4, 2), title, fill="black")
    for j, label in enumerate(labels):
        draw.text((j * width + 4, header - 16), label, fill="black")
    canvas.save(path)


def _centre_patch(x: torch.Tensor, size: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    size = min(size, h, w)
    top, left = (h - size) // 2, (w - size) // 2
    patch = x[..., top:top + size, left:left + size]
    return F.interpolate(patch, size=(128, 128), mode="nearest") if size != 128 else patch


def markdown_table(results: dict, labels: dict[str, str]) -> str:
    lines = []
    for folder, res in results["datasets"].items():
        for kernel, by_scale in res["degradations"].items():
            scales = list(by_scale)
            lines.append(f"\n**{folder}** ({res['num_images']} images), low-res input: antialiased {kernel}\n")
            columns = (("PSNR", "psnr", ".2f"), ("SSIM", "ssim", ".4f"), ("sat.", "saturation_ratio", ".3f"),
                       ("contrast", "contrast_ratio", ".3f"), ("s/img", "seconds", ".3f"))
            header = ["method"] + [f"{s}x {title}" for s in scales for title, _, _ in columns]
            rows = [[label] + [f"{by_scale[s][m][key]:{spec}}" for s in scales for _, key, spec in columns]
                    for m, label in labels.items()]
            lines.append(tables.markdown_table(header, rows).rstrip("\n"))
            first = next(iter(labels))
            for s in scales:
                v = by_scale[s]
                lines.append(f"\n{s}x: {labels[first]} - latent bilinear = "
                             f"{v[first]['psnr'] - v['latent_bilinear']['psnr']:+.2f} dB PSNR; - pixel bicubic = "
                             f"{v[first]['psnr'] - v['pixel_bicubic']['psnr']:+.2f} dB PSNR, "
                             f"{v[first]['ssim'] - v['pixel_bicubic']['ssim']:+.4f} SSIM")
    return "\n".join(lines)


def _named_dir(text: str) -> tuple[str, Path, str | None]:
    """``NAME=DIR`` or ``NAME=DIR@MODE`` (MODE: the pipeline's colour correction, ``mean`` or ``detail``)."""
    name, sep, rest = text.partition("=")
    folder, _, mode = rest.partition("@")
    if not sep or not name or not folder or mode not in ("", *COLOR_MODES):
        raise argparse.ArgumentTypeError(f"expected NAME=DIR or NAME=DIR@MODE with MODE in {COLOR_MODES}, got {text!r}")
    return name, Path(folder), mode or None


def _correction(pipe: UPLiFTSuperResolutionPipeline) -> str:
    return color_correction_for(pipe.upsampler, True, pipe.config.color_correction_mode).mode


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-dir", nargs="+", type=Path,
                        default=[SHARED / "data/bsds500/train", SHARED / "data/bsds500/val"])
    parser.add_argument("--eval-dir", nargs="+", type=Path,
                        default=[SHARED / "data/bsds500/test50", SHARED / "data/photos"])
    parser.add_argument("--minutes", type=float, default=30.0, help="training wall-clock budget (caching included)")
    parser.add_argument("--out", type=Path, default=REPO / "outputs/taef2_sr")
    parser.add_argument("--config", type=Path, default=REPO / "configs/taef2_builtin.json",
                        help="training config; its data sources, output_dir and time budget are replaced")
    parser.add_argument("--taef2", type=Path, default=SHARED / "weights/taef2")
    parser.add_argument("--scales", nargs="+", type=int, default=[2, 4])
    parser.add_argument("--degradations", nargs="+", choices=RESIZE_KERNELS, default=list(RESIZE_KERNELS),
                        help="antialiased kernels that make the low-res inputs (each is a separate table)")
    parser.add_argument("--max-size", type=int, default=256,
                        help="largest HR side evaluated (centre crop; 0 = whole images)")
    parser.add_argument("--model", type=Path, default=None, help="evaluate this trained model; skip training")
    parser.add_argument("--name", default="UPLiFT", help="row label of --model / the trained model")
    parser.add_argument("--color-correction", choices=COLOR_MODES, default=None,
                        help="override the colour correction of --model / the trained model (default: the one its "
                             "config records, i.e. what it was trained with)")
    parser.add_argument("--compare", nargs="*", type=_named_dir, default=[], metavar="NAME=DIR[@MODE]",
                        help="more trained UPLiFT models to evaluate as rows (e.g. previous=outputs/old/model@mean)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted training run in --out")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0: torch's default, every core; 1 when other jobs share the cores)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)

    train_info: dict = {}
    mode = args.color_correction
    if args.model is None:
        config = TrainConfig.from_file(args.config)
        config.output_dir = str(args.out)
        config.max_minutes, config.max_steps = args.minutes, None
        config.backbone.path = str(args.taef2)
        config.data.sources = [DataSource(type="folder", path=str(p)) for p in args.train_dir]
        config.data.cache_dir = str(args.out / "feature_cache")
        trainer = Trainer(config)
        t0 = time.monotonic()
        model_dir = trainer.train(resume=args.resume)
        train_info = {"steps": trainer.step, "epochs": trainer.epoch, "train_minutes": trainer.elapsed / 60,
                      "wall_minutes_incl_setup": (time.monotonic() - t0) / 60, "num_views": len(trainer.dataset),
                      "config": config.to_dict()}
    else:
        model_dir = args.model
    vae = TAEF2.from_pretrained(args.taef2).eval()
    pipes, models = {}, [(args.name, model_dir, mode), *args.compare]
    for name, folder, color_mode in models:  # color_mode None: the correction the model's config records
        pipe = UPLiFTSuperResolutionPipeline(vae=vae, upsampler=UPLiFTModel.from_pretrained(folder).eval(),
                                             color_correction_mode=color_mode)
        pipe.set_progress_bar_config(disable=True)
        pipes[name] = pipe
    train_info["parameters"] = {name: sum(p.numel() for p in pipe.upsampler.parameters())
                                for name, pipe in pipes.items()}

    t0 = time.monotonic()
    results = evaluate(pipes, vae, args.eval_dir, args.scales, args.degradations, args.max_size,
                       args.out / "sr_grid.png")
    results.update(train=train_info, eval_minutes=(time.monotonic() - t0) / 60,
                   models={name: {"path": str(folder), "color_correction": _correction(pipes[name])}
                           for name, folder, _ in models},
                   command=" ".join(sys.argv), protocol={"max_size": args.max_size, "scales": args.scales,
                                                        "degradations": args.degradations,
                                                        "threads": torch.get_num_threads()})
    write_json_atomic(args.out / "results.json", results)
    labels = {**{name: f"UPLiFT ({name}, {_correction(pipe)} colour correction)"
                 for name, pipe in pipes.items()}, **BASELINES}
    table = markdown_table(results, labels)
    params = ", ".join(f"{name} {n:,}" for name, n in train_info["parameters"].items())
    summary = (f"UPLiFT parameters: {params}; trained {train_info.get('steps', '-')} steps in "
               f"{train_info.get('train_minutes', float('nan')):.1f} min; metrics: {results['metric_source']}; "
               f"{torch.get_num_threads()} threads")
    (args.out / "results.md").write_text(f"# taef2 latent super-resolution\n\n{summary}\n{table}\n")
    print(summary)
    print(table)
    print(f"\nwrote {args.out / 'results.json'}, {args.out / 'results.md'}, {args.out / 'sr_grid.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
