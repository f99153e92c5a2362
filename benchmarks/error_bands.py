"""Where a "detail"-corrected taef2 UPLiFT model's error is, to aim the next training at it.

Two measurements, printed as tables:

* **bands**: on centre crops of held-out photos (multiples of 64 px), the mean squared error against the photo, split
  at the ``"detail"`` correction's own Gaussian (sigma = ``detail_sigma * scale`` output pixels) into the band below
  it (which the correction takes from the bicubic upscale) and the band above it (which the model draws), for pixel
  bicubic, the model's raw decode, the model as shipped, and taef2's decode of the photo's own latents through the
  same correction (the ceiling of any latent upsampler with this decoder). The share of the removable high-band
  error that the model removes is the number to raise.
* **fit** (``--fit-crops N``): the gain over pixel bicubic on N training crops the model was trained on (view 0 of
  its recipe's ``ViewDataset``), on other crops of the same photos, and on crops of photos it never saw. Equal gains
  say the model under-fits (capacity, steps), a larger gain on its own crops says it over-fits (more views, more
  photos).

    python benchmarks/error_bands.py --model uplift_diffusion/weights/uplift-taef2 --photos 20 --fit-crops 40
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

SHARED = Path(__file__).resolve().parents[2] / "shared"
DEFAULT_PHOTOS = SHARED / "data" / "bsds500" / "test50"


def to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)[None]


def mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b) ** 2).mean())


def centre_crop(image: Image.Image, multiple: int = 64) -> Image.Image | None:
    w, h = image.size
    cw, ch = w // multiple * multiple, h // multiple * multiple
    if not cw or not ch:
        return None
    return image.crop(((w - cw) // 2, (h - ch) // 2, (w - cw) // 2 + cw, (h - ch) // 2 + ch))


def bands(pipe, files: list[Path], scale: int) -> dict[str, list[float]]:
    """Per photo: the whole / low-band / high-band squared errors of each row (see the module docstring)."""
    from tqdm.auto import tqdm

    from uplift_diffusion.color import detail_transfer, gaussian_blur

    sigma = pipe.upsampler.config.detail_sigma * scale
    rows: dict[str, list[tuple[float, float, float]]] = {}

    def add(name: str, image: torch.Tensor, hr: torch.Tensor) -> None:
        low, low_hr = gaussian_blur(image, sigma), gaussian_blur(hr, sigma)
        rows.setdefault(name, []).append((mse(image, hr), mse(low, low_hr), mse(image - low, hr - low_hr)))

    for path in tqdm(files, desc="bands", unit="photo"):
        photo = centre_crop(Image.open(path))
        if photo is None:
            continue
        low = photo.resize((photo.width // scale, photo.height // scale), Image.Resampling.BICUBIC)
        hr, bicubic = to_tensor(photo), to_tensor(low.resize(photo.size, Image.Resampling.BICUBIC))
        add("pixel bicubic", bicubic, hr)
        add("model, raw decode", to_tensor(pipe(low, scale=scale, color_correction=False).images[0]), hr)
        add("model, as shipped", to_tensor(pipe(low, scale=scale).images[0]), hr)
        with torch.no_grad():
            latents = pipe.vae.encode(hr * 2 - 1).latents
            decoded = (pipe.vae.decode(latents).sample.clamp(-1, 1) + 1) / 2
        add("ideal latents, corrected", detail_transfer(decoded, bicubic, sigma).clamp(0, 1), hr)
    return rows


def fit_gap(pipe, config_path: Path, crops: int, scale: int) -> list[tuple[str, np.ndarray]]:
    """Per crop set: (name, [N, 2] PSNR of the model and of pixel bicubic)."""
    from tqdm.auto import tqdm

    from uplift_diffusion.training.config import read_config_file
    from uplift_diffusion.training.data import FolderSource, ViewDataset, image_pyramid

    data = read_config_file(config_path)["data"]
    folders = [s["path"] for s in data["sources"] if s.get("type", "folder") == "folder"]
    repo = Path(__file__).resolve().parents[1]
    kwargs = dict(min_crop_fraction=data.get("min_crop_fraction", 1.0), hflip=data.get("hflip", False), seed=0,
                  kernels=["bicubic"])
    levels = scale.bit_length() - 1
    seen = ViewDataset([FolderSource(repo / folders[0])], data["crop_size"], levels, views_per_image=3, **kwargs)
    unseen = ViewDataset([FolderSource(DEFAULT_PHOTOS)], data["crop_size"], levels, views_per_image=1, **kwargs)
    sets = [("training crops (view 0)", seen, [3 * i for i in range(crops)]),
            ("other crops of those photos", seen, [3 * i + 1 + i % 2 for i in range(crops)]),
            ("crops of unseen photos", unseen, list(range(min(crops, len(unseen)))))]
    out = []
    for name, dataset, items in sets:
        scores = []
        for item in tqdm(items, desc=name, unit="crop"):
            source, i = dataset.index[item // dataset.views]
            crop = dataset.crop(source.load(i), source.key(i), item % dataset.views)
            low = image_pyramid(crop, levels, "bicubic")[levels]
            to_pil = lambda x: Image.fromarray((x.permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8))  # noqa: E731
            hr, low_pil = to_tensor(to_pil(crop)), to_pil(low)
            up = to_tensor(pipe(low_pil, scale=scale).images[0])
            bicubic = to_tensor(low_pil.resize(hr.shape[-1:-3:-1], Image.Resampling.BICUBIC))
            scores.append((10 * np.log10(1 / mse(up, hr)), 10 * np.log10(1 / mse(bicubic, hr))))
        out.append((name, np.array(scores)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="an UPLiFT model folder (default: the built-in one)")
    parser.add_argument("--photos", type=int, default=20, help="held-out photos for the band table")
    parser.add_argument("--photo-dir", type=Path, default=DEFAULT_PHOTOS)
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--fit-crops", type=int, default=0, help="crops per set for the fit table (0: skip it)")
    parser.add_argument("--recipe", type=Path, default=Path(__file__).resolve().parents[1] / "configs" /
                        "taef2_builtin.json", help="the model's training recipe (its first folder source is used)")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

    from uplift_diffusion import UPLiFTModel, UPLiFTSuperResolutionPipeline
    from uplift_diffusion.builtin import load_builtin_vae

    if args.model is None:
        pipe = UPLiFTSuperResolutionPipeline.from_builtin("taef2")
    else:
        pipe = UPLiFTSuperResolutionPipeline(vae=load_builtin_vae("taef2"),
                                             upsampler=UPLiFTModel.from_pretrained(args.model))
    pipe.set_progress_bar_config(disable=True)
    files = sorted(p for p in args.photo_dir.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg"})
    rows = bands(pipe, files[:args.photos], args.scale)
    print(f"\n{args.scale}x, {len(rows['pixel bicubic'])} photos of {args.photo_dir.name}, PIL-bicubic low-res; mean "
          f"squared error split at sigma = {pipe.upsampler.config.detail_sigma * args.scale:g} output px")
    print(f"{'':28s} {'whole':>9s} {'low band':>9s} {'high band':>9s} {'PSNR dB':>8s}")
    for name, values in rows.items():
        v = np.array(values)
        print(f"{name:28s} {v[:, 0].mean():9.5f} {v[:, 1].mean():9.5f} {v[:, 2].mean():9.5f} "
              f"{np.mean(10 * np.log10(1 / v[:, 0])):8.2f}")
    high = {name: np.mean([v[2] for v in values]) for name, values in rows.items()}
    removable = high["pixel bicubic"] - high["ideal latents, corrected"]
    share = (high["pixel bicubic"] - high["model, as shipped"]) / removable
    print(f"share of the removable high-band error the model removes: {share:.1%}")
    if args.fit_crops:
        print(f"\n{args.scale}x gain over pixel bicubic (dB, mean ± standard error) on {args.fit_crops} crops per set")
        for name, scores in fit_gap(pipe, args.recipe, args.fit_crops, args.scale):
            gain = scores[:, 0] - scores[:, 1]
            print(f"{name:30s} model {scores[:, 0].mean():6.2f}  bicubic {scores[:, 1].mean():6.2f}  "
                  f"gain {gain.mean():+.3f} ± {gain.std(ddof=1) / np.sqrt(len(gain)):.3f}")


if __name__ == "__main__":
    sys.exit(main())
