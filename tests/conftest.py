import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the Hub
sys.path.insert(0, str(Path(__file__).resolve().parent))

import pytest
import torch

from uplift_diffusion.testing import SHARED

# diffusers' own pipeline test mixins (third-party, see its SOURCE.md): importable as `diffusers_tests`.
DIFFUSERS_TESTS = SHARED / "third_party" / "diffusers-tests"
if DIFFUSERS_TESTS.is_dir():
    sys.path.insert(0, str(DIFFUSERS_TESTS))
# The markers the mixins use (registered by diffusers' own tests/conftest.py, which is not ours to load).
DIFFUSERS_TEST_MARKERS = ("big_accelerator", "lora", "ip_adapter", "training", "attention", "memory", "cpu_offload",
                          "group_offload", "compile", "single_file", "quantization", "bitsandbytes", "quanto",
                          "torchao", "gguf", "modelopt", "sdnq", "autoround", "cache", "context_parallel",
                          "tensor_parallel", "nightly")


def pytest_configure(config):
    for marker in DIFFUSERS_TEST_MARKERS:
        config.addinivalue_line("markers", f"{marker}: a diffusers pipeline-test marker")

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
# torch.compile's on-disk kernel cache does not key on the CPU features a run may use (ATEN_CPU_CAPABILITY,
# ONEDNN_MAX_CPU_ISA): kernels cached by a native run and reused under an AVX2 limit, or the reverse, crash or give
# NaN. Each limit gets a cache of its own.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(
    os.environ.get("TMPDIR", "/tmp"), "uplift-inductor-" + "-".join(
        os.environ.get(k, "native").lower() for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA"))))


def require_shared() -> Path:
    """The shared data folder (real photos, weights, reference fixtures; see uplift_diffusion.testing.find_shared).
    Missing: skip, unless UPLIFT_REQUIRE_SHARED=1 (CI)."""
    if not SHARED.is_dir():
        message = f"shared data folder {SHARED} not present (set UPLIFT_SHARED, or put it beside the checkout)"
        if os.environ.get("UPLIFT_REQUIRE_SHARED") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return SHARED


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return require_shared()


@pytest.fixture
def tiny_model():
    from uplift_diffusion import UPLiFTModel

    torch.manual_seed(0)
    return UPLiFTModel.from_preset("tiny-vae").eval()


@pytest.fixture
def image_folder(tmp_path):
    """Five 80x72 images (smooth gradients + texture) and one 40x40 image that is too small for the crop."""
    import numpy as np
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:72, 0:80]
    for i in range(5):
        base = np.stack([xx * (2 + i), yy * 3, (xx + yy) * (1 + i)], -1) % 256
        noise = rng.integers(0, 40, base.shape)
        Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(folder / f"img{i}.png")
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(folder / "small.png")
    return folder


@pytest.fixture(scope="module")
def taef2(shared_dir):
    """The taef2 autoencoder from the shared folder's weights."""
    from uplift_diffusion import TAEF2

    return TAEF2.from_pretrained(shared_dir / "weights" / "taef2")


@pytest.fixture(scope="module")
def photo(shared_dir):
    """A 100 x 75 crop of Kodak's kodim01: neither side a multiple of 8 (exercises pad and crop back)."""
    from PIL import Image

    return Image.open(shared_dir / "data" / "kodak" / "kodim01.png").convert("RGB").crop((200, 200, 300, 275))


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the files a user's ``pip install .`` reads (the shared tree stays untouched);
    built once for the tests of what it holds and of what it runs installed."""
    import importlib.util
    import shutil
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):  # setup.py discovers the packages
        shutil.copy2(repo / name, src / name)
    for name in ("uplift_diffusion", "pipelines", "eval"):
        shutil.copytree(repo / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", *isolation, "-w", str(tmp / "dist"),
                    str(src)], check=True, capture_output=True, cwd=tmp)
    shutil.rmtree(src)  # only the wheel is left: nothing installed can read the source tree
    (path,) = (tmp / "dist").glob("uplift_diffusion-*.whl")
    return path
