"""Errors the user can fix: a bad argument, a missing input, an output that would be replaced, stale results.

The CLI prints an :class:`UserError` as one line (exit code 2); every other exception is a bug and keeps its
traceback. Each concrete type also derives from the matching built-in exception, so ``except ValueError`` /
``except FileNotFoundError`` in library code keep working.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input or environment, described in the message (printed without a traceback)."""


class InputError(UserError, ValueError):
    """An argument, file content or configuration value that cannot be used."""


class CheckpointError(InputError):
    """A weights file or checkpoint that cannot be used: corrupt, truncated, of another layout, or holding NaN / inf.

    Args:
        message: what is wrong, naming the file (and the tensor or key where one is to blame).
        api_hint: advice in Python words (e.g. ``pass preset=...``), appended to the message; a command replaces it
            with its own flags (:attr:`message` is the text without it).
    """

    def __init__(self, message: str, api_hint: str | None = None):
        self.message, self.api_hint = message, api_hint
        super().__init__(f"{message}; {api_hint}" if api_hint else message)


class InputNotFoundError(UserError, FileNotFoundError):
    """A file, folder or model that the user named does not exist."""


class OutputExistsError(UserError, FileExistsError):
    """An output would replace existing files; the message says which flag allows it."""


class StaleResultsError(UserError, ValueError):
    """An output folder holds results made by other settings (see :mod:`uplift_diffusion.utils.fingerprint`)."""


class UnavailableError(UserError, OSError):
    """Something outside the program is unavailable: the network, a Hub repo, a device, a writable folder."""


class WeightsUnavailableError(UnavailableError):
    """Pretrained weights that could not be downloaded (offline, no network).

    Args:
        message: what could not be fetched, and from where.
        api_hint: how to pass local weights in Python words; a command replaces it with its own flag.
    """

    def __init__(self, message: str, api_hint: str):
        self.message, self.api_hint = message, api_hint
        super().__init__(f"{message}; {api_hint}")


class WorkersFailedError(Exception):
    """Processes of a launched run (``--num-processes``) failed on a bug or a signal; the message names the cause and
    the log file that holds every process's traceback. The CLI prints it as one line (exit code 1)."""


# What reading damaged or incomplete model files raises, from torch, safetensors, diffusers or the json reader.
READ_ERRORS = (OSError, ValueError, RuntimeError, EOFError, KeyError)


def load_reporting_damage(load, describe, limit: int = 300):
    """``load()``; a failure to read its files (truncated, damaged, a partial download) becomes one
    :class:`CheckpointError` line, ``describe(err, reason)`` (``reason``: the error's text, at most ``limit``
    characters); user errors pass unchanged."""
    try:
        return load()
    except UserError:
        raise
    except READ_ERRORS as err:
        reason = " ".join(str(err).split())[:limit] or type(err).__name__
        raise CheckpointError(describe(err, reason)) from None


class ImageConversionWarning(UserWarning):
    """An image was converted to 8-bit RGB (high bit depth, alpha, palette, greyscale, CMYK, EXIF rotation)."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM (or another ending signal), handled as Ctrl+C is: the CLI prints one line and exits with 128 + the
    signal's number."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
