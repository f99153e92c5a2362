"""Lazy exports of a package: ``from package import Name`` imports the module that defines ``Name`` on first use,
so that importing the package (as ``uplift-diffusion --help`` does) imports no torch."""

from __future__ import annotations

import sys
from importlib import import_module


def lazy_exports(package: str, exports: dict[str, str]):
    """``(__getattr__, __dir__)`` for ``package``'s namespace: each name of ``exports`` comes from its module."""

    def __getattr__(name: str):
        if name in exports:
            return getattr(import_module(exports[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted([*vars(sys.modules[package]), *exports])

    return __getattr__, __dir__
