"""Package discovery for setuptools; everything else is in pyproject.toml.

The promised top-level folders pipelines/ and eval/ install inside the package (``uplift_diffusion.pipelines``,
``uplift_diffusion.eval``), never as bare top-level names. pyproject.toml alone cannot both remap folders and find
their sub-packages, and a hand-kept list drifted (``uplift_diffusion.features.probe`` was left out of the wheel), so
every package under each root is found here; tests/test_wheel.py compares a built wheel with the source tree.
"""

from setuptools import find_packages, setup

# installed package name -> source folder
ROOTS = {"uplift_diffusion": "uplift_diffusion", "uplift_diffusion.pipelines": "pipelines",
         "uplift_diffusion.eval": "eval"}


def discover() -> list[str]:
    """Every package (a folder with an __init__.py) under each root, with its installed name."""
    packages = []
    for name, folder in ROOTS.items():
        packages += [name, *(f"{name}.{sub}" for sub in find_packages(folder))]
    return packages


setup(packages=discover(), package_dir=ROOTS)
