"""The ``uplift-diffusion`` command. Thin: each subcommand lives in ``uplift_diffusion/commands/<name>.py`` and
exposes ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``; this file only dispatches and turns user
errors into one line and a non-zero exit code."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

# subcommand -> module (imported lazily so that `uplift-diffusion --help` stays fast)
COMMANDS = {
    "upscale": "uplift_diffusion.commands.upscale",
    "generate": "uplift_diffusion.commands.generate",
    "train": "uplift_diffusion.commands.train",
    "eval": "uplift_diffusion.commands.eval",
    "features": "uplift_diffusion.commands.features",
}


class UserError(Exception):
    """An error caused by the user's input; printed as one line without a traceback."""


def _available_commands():
    for name, module_name in COMMANDS.items():
        try:
            yield name, importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name != module_name:  # the command exists but a dependency is missing: say so when it is used
                yield name, err


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="uplift-diffusion", description="UPLiFT latent and feature upsampling.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module in _available_commands():
        if isinstance(module, ModuleNotFoundError):
            p = sub.add_parser(name, help=f"(unavailable: missing package {module.name!r})")
            p.set_defaults(_missing=module)
            continue
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_missing", None) is not None:
        print(f"uplift-diffusion {args.command}: error: missing package {args._missing.name!r}; "
              f"install it (e.g. pip install 'uplift-diffusion[all]')", file=sys.stderr)
        return 2
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print(f"uplift-diffusion {args.command}: interrupted", file=sys.stderr)
        return 130
    except (UserError, ValueError, TypeError, OSError) as err:
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"uplift-diffusion {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
