"""``uplift-diffusion serve``: the upscaler (and the DINO feature viewer) as a web page, with Gradio."""

from __future__ import annotations

import argparse

from uplift_diffusion.commands.checks import int_in
from uplift_diffusion.commands.loading import (
    add_device_arguments,
    add_feature_backbone_arguments,
    add_pair_arguments,
)

HELP = "Serve a web page (Gradio) to upscale photos and view UPLiFT features; binds 127.0.0.1 unless told."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 for everyone)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    add_pair_arguments(parser, why=", as in `upscale`")
    add_feature_backbone_arguments(parser, default=None, upsampler_flag="--features-upsampler",
                                   without="no Features tab content")
    parser.add_argument("--max-pixels", type=int_in(None, 2**40), default=2048 * 2048,
                        help="largest photo accepted, in pixels (default 2048*2048)")
    parser.add_argument("--max-output-pixels", type=int_in(None, 2**40), default=4096 * 4096,
                        help="largest result, in pixels (default 4096*4096)")
    parser.add_argument("--queue-size", type=int_in(None, 10000), default=16,
                        help="requests that may wait in the queue before new ones are turned away (default 16)")
    add_device_arguments(parser)


def _model_quality(args: argparse.Namespace):
    """(the upsampler's measured quality if it is a local folder with a ``quality.json``, a name for it): the page's
    line about the model."""
    from pathlib import Path

    from uplift_diffusion import builtin
    from uplift_diffusion.commands.loading import pair_sources

    source = pair_sources(args.pair, args.vae, args.upsampler)[1]  # a local path or a Hub repo id
    if source is None:
        folder = builtin.builtin_upsampler_path(args.pair)
        return builtin.read_model_quality(folder), f"built-in UPLiFT for {args.pair}"
    folder = Path(source) if Path(source).is_dir() else Path(source).parent
    return (builtin.read_model_quality(folder) if Path(source).exists() else None), f"UPLiFT ({Path(source).name})"


def _log_to_console() -> None:
    """The page's log lines (one per refused request, a traceback per failure) on the server's console."""
    import logging

    log = logging.getLogger("uplift_diffusion.app")
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def _port_error(host: str, port: int):
    from uplift_diffusion.utils.errors import UnavailableError

    return UnavailableError(f"cannot serve on {host}:{port}: the port is taken or the address is not this "
                            f"machine's; pick another --port / --host")


def _check_port(host: str, port: int) -> None:
    """Bind ``host:port`` once and let go (as the server will, with ``SO_REUSEADDR``): refused now, not after loading
    the models."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        raise _port_error(host, port) from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError:
            raise _port_error(host, port) from None


def run(args: argparse.Namespace) -> int:
    import os

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # a local page phones nobody
    _log_to_console()

    from uplift_diffusion.commands.loading import load_pair
    from uplift_diffusion.utils.device import resolve_device_dtype
    from uplift_diffusion.utils.errors import InputError, UnavailableError

    if not 0 < args.port < 65536:
        raise InputError(f"--port must be in 1..65535, got {args.port}")
    for flag, value in (("--max-pixels", args.max_pixels), ("--max-output-pixels", args.max_output_pixels),
                        ("--queue-size", args.queue_size)):
        if value < 1:
            raise InputError(f"{flag} must be positive, got {value}")
    quality, name = _model_quality(args)  # a malformed quality.json is refused first (a small file)
    _check_port(args.host, args.port)  # before the models load (seconds): a taken port answers at once
    try:
        from uplift_diffusion import app
    except ModuleNotFoundError as err:
        raise UnavailableError(f"the web page needs the 'app' extra (missing package {err.name!r}): "
                               f"pip install 'uplift-diffusion[app]'") from None

    from uplift_diffusion.pipelines import UPLiFTSuperResolutionPipeline

    device, dtype = resolve_device_dtype(args.device, args.dtype)
    vae, upsampler = load_pair(args.pair, args.vae, args.upsampler, dtype)  # as `upscale` loads them
    pipeline = UPLiFTSuperResolutionPipeline(vae=vae, upsampler=upsampler).to(device)
    try:  # a VAE / upsampler mismatch fails now, not on the first request
        pipeline.check_inputs(2, None, None, "pil")
    except ValueError as err:
        raise InputError(str(err)) from None
    pipeline.set_progress_bar_config(disable=True)  # the page has its own bar; the log gets no bar per job
    untiled = min(args.max_output_pixels, app.PageLimits.max_untiled_output_pixels)
    limits = app.PageLimits(max_input_pixels=args.max_pixels, max_output_pixels=args.max_output_pixels,
                            max_untiled_output_pixels=untiled, queue_size=args.queue_size)
    features = app.FeatureStrips.load(args.backbone, args.backbone_weights, args.features_upsampler, device=device)
    if features.extractor is None:  # the page shows no Features tab: the person who started the server learns why
        print(f"uplift-diffusion serve: no Features tab. {features.unavailable}", flush=True)
    demo = app.build_demo(app.PageUpscaler(pipeline, limits), features, quality=quality, model_name=name)
    try:
        app.launch(demo, limits, host=args.host, port=args.port)
    except OSError:  # taken since the check; Gradio's message speaks of launch() arguments: say it in our words
        raise _port_error(args.host, args.port) from None
    return 0
