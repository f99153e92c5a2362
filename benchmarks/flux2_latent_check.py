"""Real-data check of the FLUX.2 upscale path without FLUX.2 weights, plus its cost in FLOPs.

FLUX.2's raw latents (32 channels, 8x) are the latent space taef2 approximates. Real photos are encoded with taef2
and the latents are treated as FLUX.2-space generations; the UPLiFT FLUX.2 pipeline's upscale path
(``UPLiFTFlux2KleinPipeline.upscale_flux2_latents``: guide = low-res decode, ``log2(scale)`` UPLiFT steps, decode,
the upsampler's colour correction) lifts them, with taef2 as the decoding VAE (no transformer, no FLUX.2 VAE).

For every image of ``--eval-dir`` and each ``--scales``:

* HR = centre crop to a multiple of ``16 * scale`` (so the low resolution is a FLUX.2 size, a multiple of 16), at
  most ``--max-size`` pixels a side; LR = HR downscaled by ``scale`` (antialiased bicubic), stored as 8 bits;
* z = taef2.encode(LR), the "generated" latents;
* ``uplift (guide = taef2 decode)``: the pipeline's path from z alone, as in generation (the guide is the low-res
  decode of z);
* ``uplift (guide = LR photo)``: the same path guided by the photo itself, which is exactly what
  ``UPLiFTSuperResolutionPipeline(LR, scale)`` computes: the script checks that the two are identical (max abs
  difference, reported) and reports how much a better low-res decode (here: the original) would give;
* baselines: bicubic of the low-res decode of z (decode, then upscale pixels), latent bilinear of z decoded,
  bicubic of the LR photo, and the taef2 round trip of HR (the ceiling of any taef2-latent method);
* PSNR / SSIM against HR, mean over the images.

``--cost`` also counts FLOPs (``torch.utils.flop_counter`` on the meta device, float32 graph; 2 per multiply-add)
of the parts of a 1024² -> 2048² / 4096² upscale: the FLUX.2 VAE decoder (diffusers' default ``AutoencoderKLFlux2``
configuration, random weights: the architecture only) at the low and high resolutions, whole and in its own tiles,
the taef2 decoder (the fast guide) and the built-in UPLiFT steps.

    python benchmarks/flux2_latent_check.py --eval-dir ../shared/data/kodak --out outputs/flux2_latent_check --cost

Writes ``results.json`` and ``results.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
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
from uplift_diffusion.eval.metrics import psnr_per_image, ssim_per_image  # noqa: E402
from uplift_diffusion.pipelines import UPLiFTFlux2KleinPipeline, UPLiFTSuperResolutionPipeline  # noqa: E402
from uplift_diffusion.pipelines.common import uplift_steps  # noqa: E402

from uplift_diffusion.backbones.vae import decode_latents, encode_latents  # noqa: E402
from uplift_diffusion.builtin import load_builtin_upsampler, load_builtin_vae  # noqa: E402
from uplift_diffusion.testing import SHARED  # noqa: E402
from uplift_diffusion.training.data import list_image_files  # noqa: E402
from uplift_diffusion.utils import tables  # noqa: E402
from uplift_diffusion.utils.image_ops import pil_to_tensor  # noqa: E402
from uplift_diffusion.utils.images import load_image  # noqa: E402
from uplift_diffusion.utils.io import write_json_atomic, write_text_atomic  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
METHODS = ("uplift (guide = taef2 decode)", "uplift (guide = LR photo)", "bicubic of taef2 decode",
           "latent bilinear", "bicubic of LR photo", "taef2 round trip of HR")


def upscale_only_pipeline(vae, upsampler) -> UPLiFTFlux2KleinPipeline:
    """The FLUX.2 pipeline without text encoder and transformer, ``vae`` decoding: only its upscale path runs."""
    pipe = UPLiFTFlux2KleinPipeline(scheduler=None, vae=None, text_encoder=None, tokenizer=None, transformer=None,
                                    upsampler=upsampler)
    pipe.register_modules(vae=vae)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def crop_pair(path: Path, scale: int, max_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(HR, LR) as [1, 3, H, W] float in [0, 1]; LR antialiased-bicubic downscaled and rounded to 8 bits."""
    image = load_image(path)
    multiple = 16 * scale
    w, h = image.size
    cw, ch = (min(w, max_size or w) // multiple) * multiple, (min(h, max_size or h) // multiple) * multiple
    left, top = (w - cw) // 2, (h - ch) // 2
    hr_pil = image.crop((left, top, left + cw, top + ch))
    lr_pil = hr_pil.resize((cw // scale, ch // scale), Image.BICUBIC)
    return pil_to_tensor(hr_pil)[None].contiguous(), pil_to_tensor(lr_pil)[None].contiguous()


@torch.inference_mode()
def evaluate(images: list[Path], scales: list[int], max_size: int) -> tuple[dict, dict]:
    taef2, upsampler = load_builtin_vae("taef2"), load_builtin_upsampler("taef2")
    pipe = upscale_only_pipeline(taef2, upsampler)
    sr = UPLiFTSuperResolutionPipeline(vae=taef2, upsampler=upsampler)
    sr.set_progress_bar_config(disable=True)
    results, identity = {}, {}
    for scale in scales:
        scores = {m: {"psnr": [], "ssim": []} for m in METHODS}
        seconds, max_diff = [], 0.0
        for path in tqdm(images, desc=f"flux2 latent check {scale}x", unit="img"):
            hr, lr = crop_pair(path, scale, max_size)
            z = encode_latents(taef2, lr)  # the "generated" FLUX.2-space latents [1, 32, h/8, w/8]
            size = tuple(hr.shape[-2:])
            start = time.perf_counter()
            generated = pipe.upscale_flux2_latents(z, scale, output_type="pt")
            seconds.append(time.perf_counter() - start)
            guided = pipe.upscale_flux2_latents(z, scale, output_type="pt", low_res_images=lr).images
            reference = sr(lr, scale=scale, output_type="pt").images
            max_diff = max(max_diff, (guided - reference).abs().max().item())
            low_decode = generated.low_res_images
            outputs = {
                METHODS[0]: generated.images,
                METHODS[1]: guided,
                METHODS[2]: F.interpolate(low_decode, size=size, mode="bicubic", align_corners=False).clamp(0, 1),
                METHODS[3]: decode_latents(taef2, F.interpolate(z, scale_factor=scale, mode="bilinear",
                                                                align_corners=False)),
                METHODS[4]: F.interpolate(lr, size=size, mode="bicubic", align_corners=False).clamp(0, 1),
                METHODS[5]: decode_latents(taef2, encode_latents(taef2, hr)),
            }
            for method, out in outputs.items():
                scores[method]["psnr"].append(psnr_per_image(out.float(), hr).item())
                scores[method]["ssim"].append(ssim_per_image(out.float(), hr).item())
        results[f"{scale}x"] = {m: {k: float(np.mean(v)) for k, v in s.items()} for m, s in scores.items()}
        results[f"{scale}x"]["seconds_per_image"] = float(np.mean(seconds))
        identity[f"{scale}x"] = max_diff
    return results, identity


def count_flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e12


def cost(low: int = 1024) -> dict:
    """TFLOPs of the parts of a ``low``² -> 2x / 4x upscale (see the module docstring)."""
    from diffusers import AutoencoderKLFlux2

    with torch.device("meta"):
        vae = AutoencoderKLFlux2()  # diffusers' defaults: FLUX.2's VAE architecture (weights do not matter)
    taef2 = load_builtin_vae("taef2").to("meta")

    def decode(model, side, tiled=False):
        z = torch.zeros(1, 32, side // 8, side // 8, device="meta")
        return lambda: (model.tiled_decode(z) if tiled else model.decode(z))

    out = {f"FLUX.2 VAE decode {low}² (the low-res decode / guide)": count_flops(decode(vae, low)),
           f"taef2 decode {low}² (the fast guide)": count_flops(decode(taef2, low))}
    for scale in (2, 4):
        side = low * scale
        out[f"FLUX.2 VAE decode {side}² whole"] = count_flops(decode(vae, side))
        out[f"FLUX.2 VAE decode {side}² in its tiles (1024 px, 25% overlap)"] = count_flops(decode(vae, side, True))
    # UPLiFT counted at 256² (its FLOPs grow with the pixel count: convolutions and the local attention), scaled
    upsampler = load_builtin_upsampler("taef2")
    z, guide = torch.randn(1, 32, 32, 32), torch.rand(1, 3, 256, 256)
    for steps in (1, 2):
        flops = count_flops(lambda steps=steps: uplift_steps(upsampler, z, guide, steps))
        out[f"UPLiFT built-in {low}² -> {low * 2 ** steps}² ({steps} step{'s' * (steps > 1)})"] = \
            flops * (low / 256) ** 2
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--eval-dir", default=str(SHARED / "data" / "kodak"))
    parser.add_argument("--scales", default="2,4", help="comma-separated upscaling factors")
    parser.add_argument("--max-size", type=int, default=0, help="largest HR side (0: the whole image)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images")
    parser.add_argument("--cost", action="store_true", help="also count the FLOPs of the FLUX.2 upscale parts")
    parser.add_argument("--out", default="outputs/flux2_latent_check")
    args = parser.parse_args(argv)

    images = list_image_files(Path(args.eval_dir))[: args.limit]
    scales = [int(s) for s in args.scales.split(",")]
    results, identity = evaluate(images, scales, args.max_size)
    report = {"eval_dir": args.eval_dir, "num_images": len(images), "scales": scales, "max_size": args.max_size,
              "threads": torch.get_num_threads(), "results": results,
              "max_abs_diff_vs_sr_pipeline": identity}
    lines = [f"FLUX.2 upscale path on taef2 latents of {len(images)} photos from {args.eval_dir} (PSNR dB / SSIM vs "
             f"the original)", ""]
    rows = [[m] + [f"{results[f'{s}x'][m]['psnr']:.2f} / {results[f'{s}x'][m]['ssim']:.3f}" for s in scales]
            for m in METHODS]
    lines.append(tables.markdown_table(["method"] + [f"{s}x" for s in scales], rows))
    lines += ["", "seconds per image (pipeline path, CPU): " + ", ".join(
        f"{s}x {results[f'{s}x']['seconds_per_image']:.2f}" for s in scales),
        "max |pipeline path guided by the LR photo - UPLiFTSuperResolutionPipeline|: " + ", ".join(
        f"{k} {v:.3g}" for k, v in identity.items())]
    if args.cost:
        report["tflops"] = cost()
        lines += ["", tables.markdown_table(["part (1 image, float32 graph)", "TFLOP"],
                                            [[k, f"{v:.3f}"] for k, v in report["tflops"].items()])]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "results.json", report)
    write_text_atomic(out / "results.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
