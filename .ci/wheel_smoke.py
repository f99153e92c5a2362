"""CI: the installed (non-editable) package, run from outside the source tree.

Checks that ``uplift_diffusion`` is imported from ``PREFIX`` (the fresh environment the wheel went into, not the
repository), imports every module of the installed package, and runs ``--help`` of every subcommand (nested ones,
like ``eval sr``, included) through the installed console script.

    python .ci/wheel_smoke.py PREFIX
"""

import argparse
import importlib
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path


def subcommands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path of an argparse parser (``("eval", "sr")``, ...), depth first."""
    found = []
    for action in parser._actions:  # argparse keeps subparsers only here
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.append((*prefix, name))
                found += subcommands(sub, (*prefix, name))
    return found


def main() -> int:
    prefix = Path(sys.argv[1]).resolve()
    import uplift_diffusion

    where = Path(uplift_diffusion.__file__).resolve()
    if not where.is_relative_to(prefix):
        raise SystemExit(f"uplift_diffusion imported from {where}, not from the installed wheel under {prefix}")
    # __main__ runs the CLI when imported: `python -m uplift_diffusion --help` checks it below instead
    modules = [m.name for m in pkgutil.walk_packages(uplift_diffusion.__path__, "uplift_diffusion.")
               if not m.name.endswith("__main__")]
    for name in modules:
        importlib.import_module(name)
    print(f"imported {len(modules) + 1} modules from {where.parent}")

    from uplift_diffusion.cli import build_parser

    script = shutil.which("uplift-diffusion")
    if script is None or not Path(script).resolve().is_relative_to(prefix):
        raise SystemExit(f"the uplift-diffusion command is {script}, not the installed wheel's under {prefix}")
    commands = subcommands(build_parser())
    for command in commands:
        run = subprocess.run([script, *command, "--help"], capture_output=True, text=True)
        if run.returncode != 0 or "usage:" not in run.stdout:
            raise SystemExit(f"uplift-diffusion {' '.join(command)} --help failed:\n{run.stderr[-2000:]}")
    run = subprocess.run([sys.executable, "-m", "uplift_diffusion", "--help"], capture_output=True, text=True)
    if run.returncode != 0 or "usage:" not in run.stdout:
        raise SystemExit(f"python -m uplift_diffusion --help failed:\n{run.stderr[-2000:]}")
    print(f"--help of {len(commands)} subcommands: {', '.join(' '.join(c) for c in commands)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
