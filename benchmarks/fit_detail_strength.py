"""Fit a "detail"-colour-corrected UPLiFT model's ``detail_strength``: the factor on its decoded detail, per UPLiFT
step count (2x, 4x, 8x), that gives the highest PSNR on held-out photos.

A model trained with an L1 pixel loss draws sharper detail than the mean-squared-error optimum; PSNR is a squared
error. The pipeline's ``"detail"`` correction is ``bicubic(low-res) + strength * (decoded - blur(decoded))``, so one
decode per photo gives the result at every strength. The fit uses photos that neither training nor the shipping
tables use (Set14 + Set5 by default; the shipping tables are BSDS test50 and Kodak, `builtin_table.py`), centre
crops up to ``--max-side``, low-res inputs by ``--protocols``. The fit maximises the mean PSNR of
``--fit-protocols`` (the standard bicubic protocol and antialiased bilinear) among the strengths that lose at most
``--max-loss`` dB against strength 1 on each of them (a model tuned for blurrier inputs than bicubic's gains on
bicubic inputs from less detail and loses on antialiased-bilinear ones: the bound keeps every row of the shipping
rule); bilinear-aliased is reported beside them.

The best strength follows how the low-res input was made more than the photo, and an input's
:func:`~uplift_diffusion.color.sharpness` tells the protocols apart. So the fit also finds, per scale, a strength
curve over the sharpness that takes detail away from inputs sharper than a threshold (aliased ones: the model would
sharpen their jagged edges), chosen for the highest mean PSNR over the protocols (each weighted equally,
bilinear-aliased included) among the curves that lose nothing on any protocol against the constant fit, also with
every input read ``--robust-shift`` sharper (see :func:`fit_curve`). ``--write`` stores the curves (``--constant``:
the constant strengths) in the model folder's ``config.json`` (``detail_strength``), where every pipeline reads it.

    python benchmarks/fit_detail_strength.py --model uplift_diffusion/weights/uplift-taef2 --out outputs/fit.json
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from builtin_table import PROTOCOLS, downscale, load  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"
DEFAULT_PHOTOS = [SHARED / "data" / "sr_bench" / "Set14", SHARED / "data" / "sr_bench" / "Set5"]
FIT_PROTOCOLS = ["bicubic", "bilinear-antialiased"]


def centre_crop(hr: torch.Tensor, multiple: int, max_side: int) -> torch.Tensor | None:
    """The centre crop of uint8 [3, H, W] to sides that are multiples of ``multiple``, at most ``max_side``."""
    h, w = (min(max_side, s) // multiple * multiple for s in hr.shape[-2:])
    if h < multiple or w < multiple:
        return None
    top, left = (hr.shape[-2] - h) // 2, (hr.shape[-1] - w) // 2
    return hr[:, top:top + h, left:left + w]


def measure(pipe, files: list[Path], scales: list[int], protocols: list[str], strengths: list[float],
            max_side: int) -> dict:
    """``{scale: {protocol: {"psnr": [per strength], "grid": [...], "photos": n, "psnr_per_photo": [[per strength]
    per photo], "names": [...]}}}``: means over the photos, and each photo's PSNR."""
    from tqdm.auto import tqdm
    from uplift_diffusion.eval.metrics import grid_ratio_per_image, psnr_per_image

    from uplift_diffusion.color import bicubic_upscale, gaussian_blur, sharpness

    sigma = pipe.upsampler.config.get("detail_sigma", 0.5)
    results: dict = {}
    jobs = [(s, p, f) for s in scales for p in protocols for f in files]
    for scale, protocol, path in tqdm(jobs, desc="decoding", unit="photo"):
        hr = centre_crop(load(path), 8 * scale, max_side)
        if hr is None:
            continue
        lr = downscale(hr, scale, protocol)
        low = lr[None].float() / 255
        raw = pipe(Image.fromarray(lr.permute(1, 2, 0).numpy()), scale=scale, output_type="pt", color_correction=False,
                   generator=torch.Generator().manual_seed(0)).images.float()
        up = bicubic_upscale(low, tuple(hr.shape[-2:]))
        detail = raw - gaussian_blur(raw, sigma * scale)
        target = hr[None]
        row = results.setdefault(scale, {}).setdefault(protocol, {"psnr": [], "grid": [], "names": [],
                                                                  "sharpness": []})
        row["names"].append(path.name)
        row["sharpness"].append(round(sharpness(low).item(), 5))
        outs = [((up + s * detail).clamp(0, 1) * 255).round().to(torch.uint8) for s in strengths]
        row["psnr"].append([psnr_per_image(o, target).item() for o in outs])
        row["grid"].append([grid_ratio_per_image(o, target).item() for o in outs])
    return {scale: {protocol: {"psnr": np.mean(r["psnr"], axis=0).round(4).tolist(),
                               "grid": np.mean(r["grid"], axis=0).round(4).tolist(), "photos": len(r["psnr"]),
                               "psnr_per_photo": np.round(r["psnr"], 4).tolist(), "names": r["names"],
                               "sharpness": r["sharpness"]}
                    for protocol, r in by_protocol.items()}
            for scale, by_protocol in results.items()}


def fit(measured: dict, strengths: list[float], fit_protocols: list[str], max_loss: float) -> dict[int, float]:
    """Per scale, the strength with the highest mean PSNR over ``fit_protocols`` among those that lose at most
    ``max_loss`` dB against strength 1 on each of them (strength 1 always qualifies)."""
    best = {}
    one = strengths.index(1.0)
    for scale, by_protocol in measured.items():
        psnr = np.array([by_protocol[p]["psnr"] for p in fit_protocols])  # [protocols, strengths]
        allowed = (psnr >= psnr[:, one:one + 1] - max_loss).all(axis=0)
        mean = np.where(allowed, psnr.mean(axis=0), -np.inf)
        best[scale] = strengths[int(np.argmax(mean))]
    return best


def psnr_at(curves: np.ndarray, strengths: list[float], at: np.ndarray) -> np.ndarray:
    """Each photo's PSNR ([photos, strengths] measured at ``strengths``) at its own strength ``at`` (linear between
    the measured strengths); ``at`` may carry leading dimensions: [..., photos] -> [..., photos]."""
    grid = np.asarray(strengths)
    k = np.clip(np.searchsorted(grid, at, side="right") - 1, 0, len(grid) - 2)
    t = np.clip((at - grid[k]) / (grid[k + 1] - grid[k]), 0, 1)
    rows = np.arange(curves.shape[0])
    return curves[rows, k] * (1 - t) + curves[rows, k + 1] * t


def fit_curve(measured: dict, strengths: list[float], constant: dict[int, float], robust_shift: float = 0.2,
              grid: float = 0.05) -> dict[int, list[list[float]]]:
    """Per scale, the strength curve over the inputs' sharpness that keeps ``constant[scale]`` up to a sharpness
    ``t1`` and falls linearly to a lower strength at ``t2`` (``[[t1, constant], [t2, low]]``; ``t1``, ``t2`` on a
    ``grid`` over the fit photos' sharpness range, ``low`` among ``strengths``), with the highest mean PSNR over the
    protocols among the curves that lose nothing against the constant on any protocol, also when every input reads
    ``robust_shift`` sharper (photos from another source read a little sharper or blunter: a curve that only just
    spares the fit photos' bicubic inputs would take detail from another set's). No such curve: the constant."""
    curves = {}
    for scale, by_protocol in measured.items():
        names = list(by_protocol)
        psnr = np.concatenate([np.asarray(by_protocol[p]["psnr_per_photo"]) for p in names])  # [photos, strengths]
        sharp = np.concatenate([np.asarray(by_protocol[p]["sharpness"]) for p in names])
        group = np.concatenate([np.full(len(by_protocol[p]["names"]), i) for i, p in enumerate(names)])
        base = psnr[:, strengths.index(constant[scale])]
        gains = partial(_protocol_gains, psnr, sharp, group, base, strengths, constant[scale])
        points = np.arange(np.floor(sharp.min() / grid) * grid, sharp.max() + grid, grid).round(4)
        best, curve = 0.0, [[0.0, constant[scale]]]
        for t1 in points:
            for t2 in points[points > t1]:
                for low in (v for v in strengths if v < constant[scale]):
                    gain = gains(t1, t2, low)
                    if gain.mean() > best + 1e-9 and gain.min() >= 0 and gains(t1, t2, low, robust_shift).min() >= 0:
                        best, curve = gain.mean(), [[float(t1), constant[scale]], [float(t2), float(low)]]
        curves[scale] = curve
    return curves


def _protocol_gains(psnr, sharp, group, base, strengths, constant, t1, t2, low, shift=0.0) -> np.ndarray:
    """Each protocol's mean PSNR gain over ``base`` (the constant strength) with the curve ``[[t1, constant],
    [t2, low]]``, every input read ``shift`` sharper."""
    at = np.interp(sharp + shift, [t1, t2], [constant, low])
    delta = psnr_at(psnr, strengths, at) - base
    return np.array([delta[group == i].mean() for i in range(int(group.max()) + 1)])


def curve_psnr(row: dict, strengths: list[float], curve: list[list[float]]) -> float:
    at = np.interp(row["sharpness"], *zip(*curve, strict=True))
    return float(psnr_at(np.asarray(row["psnr_per_photo"]), strengths, np.asarray(at)).mean())


def table(measured: dict, strengths: list[float], best: dict[int, float],
          curves: dict[int, list[list[float]]]) -> str:
    lines = ["| scale | protocol | photos | sharpness | PSNR at strength 1 / grid | at the constant fit / grid | "
             "with the curve | fitted strength | curve [[sharpness, strength], ...] |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    one = strengths.index(1.0)
    for scale, by_protocol in measured.items():
        k = strengths.index(best[scale])
        for protocol, r in by_protocol.items():
            lines.append(f"| {scale}x | {protocol} | {r['photos']} | {np.mean(r['sharpness']):.2f} | "
                         f"{r['psnr'][one]:.2f} / {r['grid'][one]:.2f} | {r['psnr'][k]:.2f} / {r['grid'][k]:.2f} | "
                         f"{curve_psnr(r, strengths, curves[scale]):.2f} | {best[scale]:g} | {curves[scale]} |")
    return "\n".join(lines)


def add_sharpness(measured: dict, photos: list[Path], max_side: int) -> None:
    """Each photo's input sharpness, computed again from the photos (no decoding): an earlier ``--out`` file may
    lack it or hold an older definition's."""
    from uplift_diffusion.color import sharpness
    from uplift_diffusion.training.data import list_image_files

    files = {f.name: f for folder in photos for f in list_image_files(folder)}
    for scale, by_protocol in measured.items():
        for protocol, row in by_protocol.items():
            row["sharpness"] = [round(sharpness(downscale(centre_crop(load(files[name]), 8 * scale, max_side),
                                                          scale, protocol)[None].float() / 255).item(), 5)
                                for name in row["names"]]


def write_strength(model_dir: Path, best: dict[int, float | list]) -> list:
    """Store the fitted strengths or curves (2x, 4x, 8x, ...) in ``model_dir/config.json``, atomically."""
    from uplift_diffusion.utils.io import write_json_atomic

    path = model_dir / "config.json"
    config = json.loads(path.read_text())
    values = [best[s] for s in sorted(best)]
    if sorted(best) != [2 ** (i + 1) for i in range(len(values))]:
        raise SystemExit(f"--write needs the scales 2, 4, 8, ... from 2 on without gaps, got {sorted(best)}")
    config["detail_strength"] = values
    write_json_atomic(path, config)
    return values


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a UPLiFT model folder (save_pretrained)")
    parser.add_argument("--photos", type=Path, nargs="+", default=DEFAULT_PHOTOS, help="folders of held-out photos")
    parser.add_argument("--scales", type=int, nargs="+", default=[2, 4, 8], choices=[2, 4, 8])
    parser.add_argument("--protocols", nargs="+", choices=PROTOCOLS, default=list(PROTOCOLS))
    parser.add_argument("--fit-protocols", nargs="+", choices=PROTOCOLS, default=FIT_PROTOCOLS)
    parser.add_argument("--strengths", type=float, nargs="+",
                        default=[round(0.05 * k, 2) for k in range(0, 25)])
    parser.add_argument("--max-loss", type=float, default=0.05,
                        help="dB a fit protocol may lose against strength 1 (default 0.05)")
    parser.add_argument("--robust-shift", type=float, default=0.2,
                        help="the sharpness shift a curve must survive without a loss on any protocol (default 0.2)")
    parser.add_argument("--max-side", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, help="JSON of every measurement and the fit")
    parser.add_argument("--from-json", type=Path, help="fit again from an earlier --out file (no decoding)")
    parser.add_argument("--write", action="store_true", help="store the fit in the model folder's config.json")
    parser.add_argument("--constant", action="store_true",
                        help="with --write: store the constant strengths, not the curves over the input's sharpness")
    args = parser.parse_args(argv)
    if 1.0 not in args.strengths:
        args.strengths.append(1.0)
    args.strengths.sort()
    if not set(args.fit_protocols) <= set(args.protocols):
        parser.error("--fit-protocols must be among --protocols")

    torch.set_num_threads(args.threads)
    from uplift_diffusion import UPLiFTModel, UPLiFTSuperResolutionPipeline
    from uplift_diffusion.builtin import load_builtin_vae
    from uplift_diffusion.training.data import list_image_files
    from uplift_diffusion.utils.io import write_json_atomic

    upsampler = UPLiFTModel.from_pretrained(args.model)
    if upsampler.config.get("color_correction") != "detail":
        parser.error(f"{args.model} is not a 'detail'-corrected model (color_correction: "
                     f"{upsampler.config.get('color_correction')!r}): it has no detail strength")
    pipe = UPLiFTSuperResolutionPipeline(vae=load_builtin_vae("taef2"), upsampler=upsampler)
    pipe.set_progress_bar_config(disable=True)
    if args.from_json:
        earlier = json.loads(args.from_json.read_text())
        args.strengths = earlier["strengths"]
        measured = {int(scale): rows for scale, rows in earlier["measured"].items()}
        add_sharpness(measured, [Path(p) for p in earlier["photos"]], earlier.get("max_side", args.max_side))
    else:
        files = [f for folder in args.photos for f in list_image_files(folder)]
        measured = measure(pipe, files, args.scales, args.protocols, args.strengths, args.max_side)
    best = fit(measured, args.strengths, args.fit_protocols, args.max_loss)
    curves = fit_curve(measured, args.strengths, best, args.robust_shift)
    print(table(measured, args.strengths, best, curves))
    if args.out:
        write_json_atomic(args.out, {"model": str(args.model), "photos": [str(p) for p in args.photos],
                                     "strengths": args.strengths, "fit_protocols": args.fit_protocols,
                                     "max_loss": args.max_loss, "robust_shift": args.robust_shift,
                                     "max_side": args.max_side,
                                     "fit": best, "curves": curves, "measured": measured})
    if args.write:
        values = write_strength(args.model, best if args.constant else curves)
        print(f"wrote detail_strength {values} to {args.model / 'config.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
