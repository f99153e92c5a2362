"""taef2 encoder / decoder speed against this CPU's own conv rate, exactness, tiles, and the pipeline end to end.

Prints, all measured in this one run:

* the CPU (model, the SIMD flags that matter, ATen's kernel level, any ``ONEDNN_MAX_CPU_ISA`` limit), torch's
  threads and the load average before and after (the CPU may be shared: read the rates relative to the reference);
* the reference: a plain 64->64 3x3 conv on a channels-last 1x64x256x256 map (``F.conv2d``, the issue's
  definition) and the same conv through oneDNN's fused-op entry point (the kernel the fast path uses), in GMAC/s;
* the taef2 encoder and decoder (the decoder's local tail, 96 % of its work) in GMAC/s and in % of each reference,
  on the fast path and on the plain layers. MACs are the plain layers' count (271k per output pixel for the
  decoder; the fast path's sub-pixel upsample convs execute fewer, so its rate is "plain-equivalent");
* tiled / untiled time of ``encode_tiled`` and ``decode_tiled``;
* exactness on real photos (../shared/data): fast vs plain and tiled vs untiled, max abs difference;
* with ``--e2e``: ``UPLiFTSuperResolutionPipeline.from_builtin("taef2")`` on the issue's sizes (a 481x321 BSDS500
  photo at 2x and 4x, the 512x512 astronaut at 4x untiled and with ``--tile-size 256``), seconds per call.

Timings are the best of ``--repeats`` interleaved rounds (reference and model alternate, so a burst of load from
other processes hits both). ``--isa avx2`` emulates an AVX2-only CPU on an AVX-512 one (sets
``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2`` before torch loads).

    python benchmarks/taef2_speed.py --threads 2 --e2e --json outputs/taef2_speed_t2.json
    python benchmarks/taef2_speed.py --threads 1 --isa avx2
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--isa", choices=["native", "avx2"], default="native",
                        help="avx2: limit oneDNN and ATen to AVX2 kernels (what users' CPUs without AVX-512 run)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timing rounds (best is reported)")
    parser.add_argument("--size", type=int, default=256, help="output side of the decoder / input side of the "
                        "encoder rate measurement (pixels, multiple of 8)")
    parser.add_argument("--tile-map", type=int, default=1024, help="side of the map the tile timing uses")
    parser.add_argument("--tile", type=int, default=512, help="decoder tile of the tile timing (encoder: half)")
    parser.add_argument("--e2e", action="store_true", help="also time the pipeline on the issue's sizes")
    parser.add_argument("--e2e-only", action="store_true", help="only the pipeline times (implies --e2e)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    return parser.parse_args(argv)


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None and ARGS.isa == "avx2":  # must precede torch's import: oneDNN / ATen read these once
    os.environ["ONEDNN_MAX_CPU_ISA"] = "AVX2"
    os.environ["ATEN_CPU_CAPABILITY"] = "avx2"
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402

from uplift_diffusion import fast_paths  # noqa: E402
from uplift_diffusion.backbones.taef2 import TAEF2, fast_path_active  # noqa: E402
from uplift_diffusion.builtin import load_builtin_vae  # noqa: E402
from uplift_diffusion.testing import SHARED  # noqa: E402

CL = torch.channels_last
INTERESTING_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")


def cpu_summary() -> dict:
    info = {"model": "unknown", "flags": [], "logical_cpus": os.cpu_count()}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        if line.startswith("model name") and info["model"] == "unknown":
            info["model"] = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            info["flags"] = [f for f in INTERESTING_FLAGS if f in flags]
            break
    info["aten_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    info["onednn_max_cpu_isa"] = os.environ.get("ONEDNN_MAX_CPU_ISA", "(not set)")
    info["torch"] = torch.__version__
    info["fast_paths"] = fast_paths.describe()
    return info


def conv_macs(layers: torch.nn.Module, x: torch.Tensor) -> int:
    """Multiply-adds of every conv in ``layers`` on ``x`` as the plain layers compute them."""
    total = 0

    def hook(module, _inputs, output):
        nonlocal total
        total += output.shape[0] * output.shape[-2] * output.shape[-1] * module.weight.numel()

    handles = [m.register_forward_hook(hook) for m in layers.modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        with fast_paths.fast_paths(False), torch.inference_mode():
            layers(x)
    finally:
        for handle in handles:
            handle.remove()
    return total


def best_times(cases: dict, repeats: int) -> dict:
    """{name: best seconds} over ``repeats`` rounds, the cases interleaved within each round (one warm-up call)."""
    for fn in cases.values():
        fn()
    times = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: min(values) for name, values in times.items()}


def real_photos(size: int) -> list[tuple[str, torch.Tensor]]:
    """Centre crops (``size`` a side) of real photos in [-1, 1]."""
    out = []
    for name in ("photos/astronaut.png", "kodak/kodim05.png", "bsds500/test50/100007.jpg"):
        path = SHARED / "data" / name
        if not path.is_file():
            continue
        image = Image.open(path).convert("RGB")
        side = min(size, *image.size) // 8 * 8
        left, top = (image.width - side) // 2, (image.height - side) // 2
        crop = image.crop((left, top, left + side, top + side))
        out.append((name, torch.from_numpy(np.array(crop)).permute(2, 0, 1)[None].float() / 255 * 2 - 1))
    return out


def rates(vae: TAEF2, size: int, repeats: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    x_ref = torch.randn(1, 64, 256, 256, generator=gen).contiguous(memory_format=CL)
    w_ref = (torch.randn(64, 64, 3, 3, generator=gen) * 0.05).contiguous(memory_format=CL)
    b_ref = torch.randn(64, generator=gen)
    ref_macs = 256 * 256 * 64 * 64 * 9
    pointwise = torch.ops.mkldnn._convolution_pointwise

    image = torch.rand(1, 3, size, size, generator=gen) * 2 - 1
    with torch.inference_mode():
        features = vae.decode_global(vae.encode(image).latents)
    tail = vae.decoder[vae.decoder_local_from:]
    dec_macs = conv_macs(tail, features)
    enc_macs = conv_macs(vae.encoder, image.add(1).div(2))

    def plain(fn):
        def run():
            with fast_paths.fast_paths(False):
                fn()
        return run

    with torch.inference_mode():
        cases = {
            "ref_conv2d": lambda: F.conv2d(x_ref, w_ref, b_ref, padding=1),
            "ref_onednn": lambda: pointwise(x_ref, w_ref, b_ref, [1, 1], [1, 1], [1, 1], 1, "none", [], ""),
            "decoder_fast": lambda: vae.decode_local(features),
            "encoder_fast": lambda: vae.encode(image),
            "decoder_plain": plain(lambda: vae.decode_local(features)),
            "encoder_plain": plain(lambda: vae.encode(image)),
        }
        times = best_times(cases, repeats)
    gmacs = {
        "ref_conv2d": ref_macs / times["ref_conv2d"] / 1e9,
        "ref_onednn": ref_macs / times["ref_onednn"] / 1e9,
        **{name: (dec_macs if name.startswith("decoder") else enc_macs) / times[name] / 1e9
           for name in times if not name.startswith("ref")},
    }
    return {"times_s": times, "gmac_s": gmacs, "decoder_macs_per_output_pixel": dec_macs / size**2,
            "encoder_macs_per_input_pixel": enc_macs / size**2}


def tiles(vae: TAEF2, size: int, tile: int, repeats: int) -> dict:
    """Measured time of exact tiles / untiled (decode: a ``size``^2 output in ``tile`` px tiles; encode: a
    ``size``^2 image in ``tile // 2`` px tiles), and the work ratio (MACs the tiles execute / untiled) computed on a
    4-channel copy of the layout (the geometry alone; load-independent) for 2048^2."""
    gen = torch.Generator().manual_seed(1)
    image = torch.rand(1, 3, size, size, generator=gen) * 2 - 1
    enc_tile = tile // 2
    with torch.inference_mode():
        latents = vae.encode(image).latents
        cases = {
            "decode": lambda: vae.decode(latents),
            f"decode_tiled_{tile}": lambda: vae.decode_tiled(latents, tile_size=tile),
            "encode": lambda: vae.encode(image),
            f"encode_tiled_{enc_tile}": lambda: vae.encode_tiled(image, tile_size=enc_tile),
        }
        times = best_times(cases, repeats)
    return {"times_s": times, "decode_ratio": times[f"decode_tiled_{tile}"] / times["decode"],
            "encode_ratio": times[f"encode_tiled_{enc_tile}"] / times["encode"], "tile": tile, "size": size,
            "work_ratio_2048": work_ratios(2048)}


def work_ratios(size: int) -> dict:
    """{"decode <tile>": executed / untiled conv MACs, "encode <tile>": ...} for a ``size``^2 output / image."""
    from uplift_diffusion.backbones import taef2_tiling as taef2_module

    model = TAEF2(channels=4, latent_channels=4).eval()
    executed = []
    run_unit = taef2_module._run_unit

    def counting(unit, x, fast, owned):
        y = run_unit(unit, x, fast, owned)
        convs = [m for layer in unit.modules for m in layer.modules() if isinstance(m, torch.nn.Conv2d)]
        executed.append(sum(c.weight.numel() for c in convs) * y.shape[-2] * y.shape[-1])
        return y

    def work(fn) -> int:
        executed.clear()
        fn()
        return sum(executed)

    out = {}
    taef2_module._run_unit = counting
    try:
        with torch.inference_mode(), fast_paths.fast_paths(False):
            z = torch.zeros(1, 4, size // 8, size // 8)
            x = torch.zeros(1, 3, size, size)
            whole_dec, whole_enc = work(lambda: model.decode(z)), work(lambda: model.encode(x))
            for tile in (256, 512, 768, 1024):
                out[f"decode {tile}"] = work(lambda t=tile: model.decode_tiled(z, tile_size=t)) / whole_dec
            for tile in (128, 256, 512):
                out[f"encode {tile}"] = work(lambda t=tile: model.encode_tiled(x, tile_size=t)) / whole_enc
    finally:
        taef2_module._run_unit = run_unit
    return out


def exactness(vae: TAEF2) -> dict:
    worst = {"encode_fast_vs_plain": 0.0, "decode_fast_vs_plain": 0.0, "encode_tiled_vs_untiled": 0.0,
             "decode_tiled_vs_untiled": 0.0}
    photos = real_photos(256)
    with torch.inference_mode():
        for _name, x in photos:
            with fast_paths.fast_paths(False):
                plain_latents = vae.encode(x).latents
                plain_rgb = vae.decode(plain_latents).sample
            latents = vae.encode(x).latents
            rgb = vae.decode(plain_latents).sample
            worst["encode_fast_vs_plain"] = max(worst["encode_fast_vs_plain"], (latents - plain_latents).abs().max())
            worst["decode_fast_vs_plain"] = max(worst["decode_fast_vs_plain"], (rgb - plain_rgb).abs().max())
            tiled = vae.encode_tiled(x, tile_size=96)
            worst["encode_tiled_vs_untiled"] = max(worst["encode_tiled_vs_untiled"], (tiled - latents).abs().max())
            tiled_rgb = vae.decode_tiled(plain_latents, tile_size=96)
            worst["decode_tiled_vs_untiled"] = max(worst["decode_tiled_vs_untiled"], (tiled_rgb - rgb).abs().max())
    return {"photos": [name for name, _ in photos], **{k: float(v) for k, v in worst.items()}}


def end_to_end() -> dict:
    from uplift_diffusion import UPLiFTSuperResolutionPipeline

    pipe = UPLiFTSuperResolutionPipeline.from_builtin("taef2")
    pipe.set_progress_bar_config(disable=True)
    bsds = Image.open(SHARED / "data" / "bsds500" / "test50" / "100007.jpg").convert("RGB")  # 481 x 321
    astronaut = Image.open(SHARED / "data" / "photos" / "astronaut.png").convert("RGB")  # 512 x 512
    pipe(bsds.crop((0, 0, 64, 64)), scale=2)  # warm-up: first-call costs (weight caches, oneDNN primitives)
    cases = [("481x321 2x", bsds, 2, None), ("481x321 4x", bsds, 4, None), ("512x512 4x", astronaut, 4, None),
             ("512x512 4x tile 256", astronaut, 4, 256)]
    out = {}
    for name, image, scale, tile in cases:
        start, cpu_start = time.perf_counter(), time.process_time()
        pipe(image, scale=scale, tile_size=tile, generator=torch.Generator().manual_seed(0))
        out[name] = {"wall_s": time.perf_counter() - start, "cpu_s": time.process_time() - cpu_start}
        # CPU seconds do not count the time other processes held the cores: on a shared machine, cpu / threads is
        # closer to what a quiet one would take (it still counts the threads' spin-waits).
        print(f"  {name:<22} {out[name]['wall_s']:7.2f} s wall, {out[name]['cpu_s']:7.2f} s CPU", flush=True)
    return out


def main() -> int:
    args = ARGS or parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.size % 16:
        raise SystemExit("--size must be a multiple of 16")
    load_before = os.getloadavg()
    info = cpu_summary()
    info["threads"] = torch.get_num_threads()
    print(f"CPU: {info['model']} ({info['logical_cpus']} logical CPUs); flags: {' '.join(info['flags'])}")
    print(f"ATen kernels: {info['aten_cpu_capability']}; ONEDNN_MAX_CPU_ISA: {info['onednn_max_cpu_isa']}; "
          f"torch {info['torch']}; threads: {info['threads']}")
    print(f"{info['fast_paths']}")
    print(f"load average before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}")
    vae = load_builtin_vae("taef2")
    with torch.inference_mode():
        print(f"taef2 fast path active: {fast_path_active(torch.zeros(1, 3, 8, 8))}")

    result = {"cpu": info, "load_before": load_before}
    if args.e2e_only:
        print("\npipeline (from_builtin('taef2'), colour correction on, seconds per call):")
        result["end_to_end_s"] = end_to_end()
        return finish(args, result)
    result["rates"] = r = rates(vae, args.size, args.repeats)
    g = r["gmac_s"]
    print(f"\nreference 64->64 3x3 conv, channels-last 1x64x256x256: F.conv2d {g['ref_conv2d']:.1f} GMAC/s; "
          f"oneDNN fused-op kernel {g['ref_onednn']:.1f} GMAC/s")
    print(f"{'part':<10} {'path':<6} {'GMAC/s':>7} {'% conv2d':>9} {'% oneDNN':>9}  (MACs: plain layers' count)")
    for part in ("decoder", "encoder"):
        for path in ("fast", "plain"):
            rate = g[f"{part}_{path}"]
            print(f"{part:<10} {path:<6} {rate:7.1f} {100 * rate / g['ref_conv2d']:8.0f}% "
                  f"{100 * rate / g['ref_onednn']:8.0f}%")
    print(f"decoder local tail: {r['decoder_macs_per_output_pixel'] / 1e3:.0f}k MAC per output pixel; encoder: "
          f"{r['encoder_macs_per_input_pixel'] / 1e3:.0f}k per input pixel")

    result["tiles"] = t = tiles(vae, args.tile_map, args.tile, args.repeats)
    print(f"\nexact tiles / untiled, measured time on a {t['size']}^2 map: decode ({t['tile']} px tiles) "
          f"{t['decode_ratio']:.3f}, encode ({t['tile'] // 2} px tiles) {t['encode_ratio']:.3f}")
    print("work (executed MACs) of tiles / untiled at 2048^2: "
          + ", ".join(f"{k} px {v:.3f}" for k, v in t["work_ratio_2048"].items()))

    result["exactness"] = e = exactness(vae)
    print(f"\nexactness (max abs, real photos {', '.join(e['photos'])}):")
    for key in ("encode_fast_vs_plain", "decode_fast_vs_plain", "encode_tiled_vs_untiled", "decode_tiled_vs_untiled"):
        print(f"  {key:<26} {e[key]:.2e}")

    if args.e2e:
        print("\npipeline (from_builtin('taef2'), colour correction on, seconds per call):")
        result["end_to_end_s"] = end_to_end()
    return finish(args, result)


def finish(args: argparse.Namespace, result: dict) -> int:
    result["load_after"] = os.getloadavg()
    print(f"\nload average after: {' '.join(f'{v:.2f}' for v in result['load_after'])}")
    if args.json:
        from uplift_diffusion.utils.io import write_json_atomic

        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(args.json, result)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
