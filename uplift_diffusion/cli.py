"""The ``uplift-diffusion`` command. Thin: each subcommand lives in ``uplift_diffusion/commands/<name>.py`` and
exposes ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``; this file only dispatches.

Error policy: a :class:`~uplift_diffusion.utils.errors.UserError` (something the user can fix: a bad argument, a
missing input, an output that would be replaced, stale results, no network) and the file-system errors that name a
path are printed as one line with exit code 2; anything else is a bug and shows its traceback. ``--debug`` shows the
traceback of every error. An argument error is one line too (the option, the problem, the command's ``--help``).
Warnings (e.g. an image converted to RGB) are printed as one ``note:`` / ``warning:`` line. A closed standard output
(``uplift-diffusion upscale folder | head -1``) stops the printing, not the work. Ctrl+C and SIGTERM end
in one ``interrupted`` line (exit code 128 + the signal's number), in a launched run too.
Command modules import torch only inside ``run``, so ``--help`` and argument errors answer at once.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import signal
import sys
import threading
import warnings
from typing import Optional, Sequence

from uplift_diffusion.utils.errors import ImageConversionWarning, Interrupted, UserError, WorkersFailedError
from uplift_diffusion.utils.launch import is_launched_worker, report_to_launcher
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


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line naming the option and where the options are listed, not a usage block that
    buries the cause; sub-commands' parsers are of this class too (argparse makes them of the parent's)."""

    def error(self, message: str):
        if message.endswith("expected one argument"):  # a value that starts with '-' (-1, -inf) reads as a flag
            flag = message.split(":")[0].removeprefix("argument ").split("/")[-1]
            message += f" (a value that starts with '-' is written {flag}=-1)"
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="uplift-diffusion", description="UPLiFT latent and feature upsampling.")
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
        p.set_defaults(_run=module.run, _parser=p)
    return parser


class _PipeSafeStdout:
    """``sys.stdout`` that outlives its reader: once the pipe is closed, output goes to ``os.devnull`` and the
    command goes on (its results are files; the lines it prints are a log of them)."""

    def __init__(self, stream):
        self._stream = stream

    def _drop(self) -> None:
        devnull = open(os.devnull, "w")
        try:  # also the interpreter's last flush of the real stream at exit
            os.dup2(devnull.fileno(), self._stream.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        self._stream = devnull

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._drop()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._drop()

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _signal_name(err: BaseException) -> tuple[str, int]:
    signum = getattr(err, "signum", signal.SIGINT)
    return signal.Signals(signum).name, 128 + int(signum)


def main(argv: Optional[Sequence[str]] = None) -> int:
    stdout = sys.stdout
    sys.stdout = _PipeSafeStdout(stdout)
    try:
        return _main(argv)
    finally:
        if isinstance(sys.stdout, _PipeSafeStdout):
            sys.stdout.flush()
            sys.stdout = stdout


def _close_progress_bars() -> None:
    """Close the bars an interrupt left open, so that the line said next starts a line of its own instead of
    following a half-drawn bar."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        try:
            bar.close()
        except Exception:  # a bar that cannot be drawn any more: the message still goes out
            pass


def _terminate_as_interrupt(signum, _frame) -> None:
    raise Interrupted(signum)


def _main(argv: Optional[Sequence[str]] = None) -> int:
    silence_empty_float32_notice()
    parser = build_parser()
    with warnings.catch_warnings(record=True) as parse_warnings:  # (an old flag's spelling) shown below, as the run's
        warnings.simplefilter("always")
        args, unknown = parser.parse_known_args(argv)
        if unknown:  # said by the command's parser, which names the command and its --help
            getattr(args, "_parser", parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    if getattr(args, "_missing", None) is not None:
        print(f"uplift-diffusion {args.command}: error: missing package {args._missing.name!r}; "
              f"install it (e.g. pip install 'uplift-diffusion[all]')", file=sys.stderr)
        return 2
    prog = f"uplift-diffusion {args.command}"
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what the workers of --num-processes get
    with warnings.catch_warnings():
        if not args.debug:
            warnings.showwarning = lambda message, category, *_, **__: print(
                f"{prog}: {'note' if issubclass(category, ImageConversionWarning) else 'warning'}: {message}",
                file=sys.stderr)
        for warning in parse_warnings:
            warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, _terminate_as_interrupt)
        try:
            return int(args._run(args) or 0)
        except KeyboardInterrupt as err:
            name, code = _signal_name(err)
            _close_progress_bars()
            if not is_launched_worker():  # (a worker of --num-processes: its launcher says it once)
                print(f"{prog}: interrupted ({name})", file=sys.stderr)
                return code
            # A worker stopped by its launcher leaves without the interpreter's teardown: torch's collective threads,
            # still running then, make the C++ runtime print "terminate called without an active exception".
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        except WorkersFailedError as err:
            if args.debug:
                raise
            print(f"{prog}: error: {err}", file=sys.stderr)
            return 1
        except Exception as err:
            if args.debug:
                raise
            if previous is not None and is_launched_worker():
                # the launcher's SIGTERM (it stops the other workers when one fails) must not interrupt the report
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            if not is_user_error(err):  # a bug: its traceback, here or (a worker of --num-processes) in the log
                import traceback

                if report_to_launcher(f"{type(err).__name__}: {err}", traceback.format_exc()):
                    return 1
                raise
            message = " ".join(str(err).split()) or type(err).__name__
            if not report_to_launcher(message):
                print(f"{prog}: error: {message}", file=sys.stderr)
            return 2
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
