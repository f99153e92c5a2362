"""Old names that still work until a named version: one warning that says what to use instead (standard library
only, so the CLI's argument checks can use it before torch loads)."""

from __future__ import annotations

import argparse
import warnings

REMOVED_IN = "0.2.0"  # the version that drops every spelling deprecated here


def warn_renamed(old: str, new: str, removed_in: str = REMOVED_IN, stacklevel: int = 3) -> None:
    """A ``FutureWarning`` (shown to users, one line from the CLI): ``old`` works until ``removed_in``; use ``new``."""
    warnings.warn(f"{old} is deprecated and will be removed in uplift-diffusion {removed_in}; use {new}",
                  FutureWarning, stacklevel=stacklevel)


class RenamedFlag(argparse.Action):
    """An old spelling of a command-line flag (hidden from ``--help``): stores into the new flag's ``dest`` and warns.
    With ``nargs=0`` (an old switch) it stores ``const``: ``--no-x`` for ``--x none``."""

    def __init__(self, option_strings, dest, new: str, **kwargs):
        self.new = new
        kwargs.setdefault("help", argparse.SUPPRESS)
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        value = self.const if self.nargs == 0 else values
        warn_renamed(option_string if self.nargs == 0 else f"{option_string} {values}", f"{self.new} {value}")
        setattr(namespace, self.dest, value)


def renamed_values(flag: str, renamed: dict[str, str]):
    """An argparse ``type`` for a flag some of whose values were renamed: an old value becomes its new name, with a
    warning (argparse then checks ``choices`` against the new names)."""

    def parse(text: str) -> str:
        if text in renamed:
            warn_renamed(f"{flag} {text}", f"{flag} {renamed[text]}")
            return renamed[text]
        return text

    parse.__name__ = "value"
    return parse
