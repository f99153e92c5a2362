"""Real-data proof: train a small UPLiFT for the taef2 autoencoder on CPU, then measure 2x / 4x latent SR.

Training: ``configs/taef2_bsds.json`` (multi-depth loss, cached taef2 features) on ``--train-dir`` for ``--minutes``
of wall-clock (feature caching included). Evaluation on every image of ``--eval-dir``:

* HR = centre crop to a multiple of ``8 * scale``, at most ``--max-size`` pixels a side;
* LR = HR downscaled by ``scale`` (bilinear, antialiased); the LR image is encoded with taef2;
* methods: (a) UPLiFT (log2(scale) steps guided by the LR image, colour-corrected against the LR image),
  (b) bilinear and (c) nearest interpolation of the LR latents, all decoded with taef2; (d) bicubic upscaling of
  the LR image in pixel space; (e) the taef2 round trip of the HR image (the ceiling of any latent method).
* PSNR (per image on [0, 1], then the mean) and SSIM (Gaussian, sigma 1.5, no sample covariance, data range 1:
  scikit-image's settings), averaged per evaluation folder.

Writes ``results.json``, ``results.md``, ``sr_grid.png`` and the trained model (``model/``) to ``--out``.

    python benchmarks/taef2_sr.py --minutes 30 --out outputs/taef2_sr
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from uplift_diffusion import UPLiFTModel  # noqa: E402
from uplift_diffusion.backbones.taef2 import TAEF2  # noqa: E402
from uplift_diffusion.backbones.vae import decode_latents, encode_latents  # noqa: E402
from uplift_diffusion.color import ColorCorrection  # noqa: E402
from uplift_diffusion.model import bilinear_resize  # noqa: E402
from uplift_diffusion.training.config import DataSource, TrainConfig  # noqa: E402
from uplift_diffusion.training.data import list_image_files, pil_to_tensor  # noqa: E402
from uplift_diffusion.training.trainer import Trainer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
METHODS = ("uplift", "uplift_no_cc", "latent_bilinear", "latent_nearest", "pixel_bicubic", "taef2_roundtrip")
LABELS = {
    "uplift": "(a) UPLiFT + colour correction",
    "uplift_no_cc": "(a') UPLiFT, no colour correction",
    "latent_bilinear": "(b) latent bilinear",
    "latent_nearest": "(c) latent nearest",
    "pixel_bicubic": "(d) pixel bicubic",
    "taef2_roundtrip": "(e) taef2 round trip of HR (ceiling)",
}


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
    th, tw = (min(s, max_size) // multiple * multiple for s in (h, w))
    if th == 0 or tw == 0:
        raise ValueError(f"image {w}x{h} is smaller than one {multiple}-pixel block")
    top, left = (h - th) // 2, (w - tw) // 2
    return image[:, top:top + th, left:left + tw]


@torch.no_grad()
def super_resolve(model: UPLiFTModel, vae, hr: torch.Tensor, scale: int) -> dict[str, torch.Tensor]:
    """Every method's [1, 3, H, W] reconstruction of ``hr`` [1, 3, H, W] from its ``scale``x downscale."""
    h, w = hr.shape[-2:]
    lr = bilinear_resize(hr, (h // scale, w // scale)).clamp(0, 1)
    z = encode_latents(vae, lr)  # [1, C, h/8s, w/8s]
    size = (h // 8, w // 8)
    up = model(model.normalize_image(lr), z, iterations=UPLiFTModel.iterations_for_scale(scale),
               generator=torch.Generator().manual_seed(0))
    uplift = decode_latents(vae, up)
    return {
        "uplift": ColorCorrection(clamp=(0, 1))(uplift, lr),
        "uplift_no_cc": uplift,
        "latent_bilinear": decode_latents(vae, F.interpolate(z, size=size, mode="bilinear", align_corners=False)),
        "latent_nearest": decode_latents(vae, F.interpolate(z, size=size, mode="nearest")),
        "pixel_bicubic": F.interpolate(lr, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1),
        "lr": lr,
    }


def evaluate(model: UPLiFTModel, vae, eval_dirs: list[Path], scales: list[int], max_size: int,
             grid_path: Path) -> dict:
    psnr, ssim, metric_source = metric_functions()
    results: dict = {"metric_source": metric_source, "datasets": {}}
    grid_rows = []
    for folder in eval_dirs:
        files = list_image_files(folder)
        sums = {s: {m: [0.0, 0.0] for m in METHODS} for s in scales}
        roundtrips: dict[tuple, tuple[float, float]] = {}
        for i, path in enumerate(tqdm(files, desc=f"eval {folder.name}", dynamic_ncols=True)):
            with Image.open(path) as img:
                image = pil_to_tensor(img.convert("RGB"))
            for scale in scales:
                hr = centre_crop(image, 8 * scale, max_size)[None]
                outs = super_resolve(model, vae, hr, scale)
                shape = tuple(hr.shape)
                if shape not in roundtrips:  # the ceiling depends only on the HR crop
                    rt = decode_latents(vae, encode_latents(vae, hr))
                    roundtrips[shape] = (psnr(rt[0], hr[0]), ssim(rt[0], hr[0]), rt)
                for m in METHODS:
                    if m == "taef2_roundtrip":
                        p, s_ = roundtrips[shape][:2]
                    else:
                        p, s_ = psnr(outs[m][0], hr[0]), ssim(outs[m][0], hr[0])
                    sums[scale][m][0] += p
                    sums[scale][m][1] += s_
                if scale == max(scales) and i < 2:
                    rt = roundtrips[shape][2]
                    lr_up = F.interpolate(outs["lr"], size=hr.shape[-2:], mode="nearest")
                    row = [lr_up, outs["latent_nearest"], outs["latent_bilinear"], outs["pixel_bicubic"],
                           outs["uplift"], rt, hr]
                    grid_rows.append(torch.cat([_centre_patch(x, 128) for x in row], dim=-1))
            roundtrips.clear()
        results["datasets"][folder.as_posix()] = {
            "num_images": len(files),
            "scales": {str(s): {m: {"psnr": v[0] / len(files), "ssim": v[1] / len(files)} for m, v in sums[s].items()}
                       for s in scales},
        }
    if grid_rows:
        grid = torch.cat(grid_rows, dim=-2)[0].clamp(0, 1).permute(1, 2, 0).numpy()
        Image.fromarray((grid * 255 + 0.5).astype(np.uint8)).save(grid_path)
    return results


def _centre_patch(x: torch.Tensor, size: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    size = min(size, h, w)
    top, left = (h - size) // 2, (w - size) // 2
    patch = x[..., top:top + size, left:left + size]
    return F.interpolate(patch, size=(128, 128), mode="nearest") if size != 128 else patch


def markdown_table(results: dict, scales: list[int]) -> str:
    lines = []
    for folder, res in results["datasets"].items():
        lines.append(f"\n**{folder}** ({res['num_images']} images)\n")
        header = "| method | " + " | ".join(f"{s}x PSNR | {s}x SSIM" for s in scales) + " |"
        lines += [header, "|" + " --- |" * (1 + 2 * len(scales))]
        for m in METHODS:
            cells = []
            for s in scales:
                v = res["scales"][str(s)][m]
                cells += [f"{v['psnr']:.2f}", f"{v['ssim']:.4f}"]
            lines.append(f"| {LABELS[m]} | " + " | ".join(cells) + " |")
        for s in scales:
            v = res["scales"][str(s)]
            gain = v["uplift"]["psnr"] - v["latent_bilinear"]["psnr"]
            lines.append(f"\n{s}x: UPLiFT - latent bilinear = {gain:+.2f} dB PSNR; ceiling gap "
                         f"{v['taef2_roundtrip']['psnr'] - v['uplift']['psnr']:.2f} dB")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-dir", nargs="+", type=Path,
                        default=[SHARED / "data/bsds500/train", SHARED / "data/bsds500/val"])
    parser.add_argument("--eval-dir", nargs="+", type=Path,
                        default=[SHARED / "data/bsds500/test50", SHARED / "data/photos"])
    parser.add_argument("--minutes", type=float, default=30.0, help="training wall-clock budget (caching included)")
    parser.add_argument("--out", type=Path, default=REPO / "outputs/taef2_sr")
    parser.add_argument("--config", type=Path, default=REPO / "configs/taef2_bsds.json",
                        help="training config; its data sources, output_dir and time budget are replaced")
    parser.add_argument("--taef2", type=Path, default=SHARED / "weights/taef2")
    parser.add_argument("--scales", nargs="+", type=int, default=[2, 4])
    parser.add_argument("--max-size", type=int, default=256, help="largest HR side evaluated (keeps eval quick)")
    parser.add_argument("--model", type=Path, default=None, help="evaluate this trained model; skip training")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted training run in --out")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0: torch's default, every core; 1 when other jobs share the cores)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)

    train_info: dict = {}
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
    model = UPLiFTModel.from_pretrained(model_dir).eval()
    vae = TAEF2.from_pretrained(args.taef2).eval()
    train_info["parameters"] = sum(p.numel() for p in model.parameters())

    t0 = time.monotonic()
    results = evaluate(model, vae, args.eval_dir, args.scales, args.max_size, args.out / "sr_grid.png")
    results.update(train=train_info, eval_minutes=(time.monotonic() - t0) / 60, model_dir=str(model_dir),
                   command=" ".join(sys.argv), protocol={"max_size": args.max_size, "scales": args.scales})
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    table = markdown_table(results, args.scales)
    summary = (f"UPLiFT {train_info['parameters']:,} params; trained {train_info.get('steps', '?')} steps in "
               f"{train_info.get('train_minutes', float('nan')):.1f} min; metrics: {results['metric_source']}")
    (args.out / "results.md").write_text(f"# taef2 latent super-resolution\n\n{summary}\n{table}\n")
    print(summary)
    print(table)
    print(f"\nwrote {args.out / 'results.json'}, {args.out / 'results.md'}, {args.out / 'sr_grid.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
