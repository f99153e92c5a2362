"""Installed as users install it: the wheel ``pip wheel .`` builds holds every module of the source tree under its
installed name (pipelines/ -> uplift_diffusion.pipelines, eval/ -> uplift_diffusion.eval) and the built-in weights,
and nothing else of ours. (.ci/run also installs that wheel into a fresh environment and runs every subcommand.)
The wheel is conftest.py's ``wheel`` fixture."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# source folder -> the package it installs as (setup.py's ROOTS)
SOURCES = {"uplift_diffusion": "uplift_diffusion", "pipelines": "uplift_diffusion/pipelines",
           "eval": "uplift_diffusion/eval"}


def source_files() -> set[str]:
    """The wheel paths the source tree promises: every .py file, and the built-in weights folder's files."""
    files = set()
    for folder, installed in SOURCES.items():
        for path in (REPO / folder).rglob("*"):
            rel = path.relative_to(REPO / folder)
            if "__pycache__" in rel.parts or not path.is_file():
                continue
            if path.suffix == ".py" or (folder == "uplift_diffusion" and rel.parts[0] == "weights"):
                files.add(f"{installed}/{rel.as_posix()}")
    return files


@pytest.mark.slow
def test_wheel_holds_exactly_the_source_modules(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = {n for n in archive.namelist() if not n.startswith("uplift_diffusion-")}  # minus .dist-info
    ours = {n for n in names if n.endswith(".py") or n.startswith("uplift_diffusion/weights/")}
    expected = source_files()
    assert "uplift_diffusion/features/probe/__init__.py" in expected  # the package the hand-kept list left out
    assert not expected - ours, f"missing from the wheel: {sorted(expected - ours)}"
    assert not ours - expected, f"in the wheel but not in the source tree: {sorted(ours - expected)}"
    assert not {n.split("/")[0] for n in names} - {"uplift_diffusion"}  # no bare top-level pipelines / eval


@pytest.mark.slow
def test_wheel_declares_the_command(wheel):
    with zipfile.ZipFile(wheel) as archive:
        (entry_points,) = [n for n in archive.namelist() if n.endswith(".dist-info/entry_points.txt")]
        assert "uplift-diffusion = uplift_diffusion.cli:main" in archive.read(entry_points).decode()


@pytest.mark.slow
def test_installed_package_finds_the_shared_folder_from_the_environment_or_the_working_checkout(wheel, tmp_path):
    """Installed, the package folder says nothing about where the data is: $UPLIFT_SHARED decides, else the checkout
    the command runs in (its sibling ``shared``)."""
    import os

    site = tmp_path / "site-packages"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    code = "from uplift_diffusion import testing; print(testing.__file__); print(testing.SHARED)"
    env = {k: v for k, v in os.environ.items() if k != "UPLIFT_SHARED"} | {"PYTHONPATH": str(site)}

    def shared(cwd, **extra):
        out = subprocess.run([sys.executable, "-c", code], env=env | extra, cwd=cwd, capture_output=True, text=True,
                             check=True).stdout.split("\n")
        assert out[0].startswith(str(site)), out  # the installed copy, not the source tree
        return Path(out[1])

    assert shared(tmp_path, UPLIFT_SHARED=str(tmp_path / "data")) == tmp_path / "data"
    assert shared(REPO / "tests") == REPO.parent / "shared"
