"""The ``uplift-diffusion`` command. Thin: each subcommand lives in ``uplift_diffusion/commands/<name>.py`` and
exposes ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``; this file only dispatches.

Error policy: a :class:`~uplift_diffusion.utils.errors.UserError` (something the user can fix: a bad argument, a
missing input, an output that would be replaced, stale results, no network) and the file-system errors that name a
path are printed as one line with exit code 2; anything else is a bug and shows its traceback. ``--debug`` shows the
traceback of every error. Warnings (e.g. an image converted to RGB) are printed as one ``note:`` / ``warning:`` line.
Command modules import torch only inside ``run``, so ``--help`` and argument errors answer at once.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import json
import os
import sys
import time
import warnings
from typing import Optional, Sequence

from uplift_diffusion.utils.errors import ImageConversionWarning, UserError
from uplift_diffusion.utils.logs import silence_empty_float32_notice

# subcommand -> module (imported lazily so that `uplift-diffusion --help` stays fast)
COMMANDS = {
    "upscale": "uplift_diffusion.commands.upscale",
    "generate": "uplift_diffusion.commands.generate",
    "train": "uplift_diffusion.commands.train",
    "eval": "uplift_diffusion.commands.eval",
    "features": "uplift_diffusion.commands.features",
    "probe": "uplift_diffusion.commands.probe",
    "demo": "uplift_diffusion.commands.demo",
    "serve": "uplift_diffusion.commands.serve",
}


# Errors from the file system that always name the path the user gave: one line too.
PATH_ERRORS = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)
_DISK_ERRNOS = (errno.ENOSPC, errno.EROFS, errno.EDQUOT)


def is_user_error(err: BaseException) -> bool:
    """Whether ``err`` is the user's to fix (printed in one line) rather than a bug (shown with its traceback)."""
    return isinstance(err, (UserError, *PATH_ERRORS)) or (isinstance(err, OSError) and err.errno in _DISK_ERRNOS)


def _add_debug(parser: argparse.ArgumentParser, default) -> None:
    parser.add_argument("--debug", action="store_true", default=default,
                        help="show the full traceback of any error (default: one line for user errors)")


def _available_commands():
    for name, module_name in COMMANDS.items():
        try:
            yield name, importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name != module_name:  # the command exists but a dependency is missing: say so when it is used
                yield name, err


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="uplift-diffusion", description="UPLiFT latent and feature upsampling.")
    _add_debug(parser, False)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module in _available_commands():
        if isinstance(module, ModuleNotFoundError):
            p = sub.add_parser(name, help=f"(unavailable: missing package {module.name!r})")
            p.set_defaults(_missing=module)
            continue
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        _add_debug(p, argparse.SUPPRESS)  # also accepted after the command name
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def _report_to_launcher(message: str) -> bool:
    """In a worker of torch's elastic launcher (``accelerate launch``, ``torchrun``, ``train --num-processes``), put a
    user error where the launcher's failure report reads it (``TORCHELASTIC_ERROR_FILE``; its report then shows this
    message instead of a link). Returns True when the worker should stay silent: the launcher is ours
    (``UPLIFT_LAUNCHED=1``: it prints the message once for all the workers), or this is not rank 0 (the launcher's
    report lists every failed rank's message; N identical lines would not say more)."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return False
    try:
        with open(path, "w") as f:
            json.dump({"message": message, "timestamp": int(time.time()), "user_error": True}, f)
    except OSError:
        return False
    return os.environ.get("UPLIFT_LAUNCHED") == "1" or os.environ.get("RANK", "0") != "0"


def main(argv: Optional[Sequence[str]] = None) -> int:
    silence_empty_float32_notice()
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_missing", None) is not None:
        print(f"uplift-diffusion {args.command}: error: missing package {args._missing.name!r}; "
              f"install it (e.g. pip install 'uplift-diffusion[all]')", file=sys.stderr)
        return 2
    prog = f"uplift-diffusion {args.command}"
    with warnings.catch_warnings():
        if not args.debug:
            warnings.showwarning = lambda message, category, *_, **__: print(
                f"{prog}: {'note' if issubclass(category, ImageConversionWarning) else 'warning'}: {message}",
                file=sys.stderr)
        try:
            return int(args._run(args) or 0)
        except KeyboardInterrupt:
            print(f"{prog}: interrupted", file=sys.stderr)
            return 130
        except Exception as err:
            if args.debug or not is_user_error(err):
                raise
            message = " ".join(str(err).split()) or type(err).__name__
            if not _report_to_launcher(message):
                print(f"{prog}: error: {message}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())
