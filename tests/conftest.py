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
    """../shared (real photos, weights, reference fixtures). Missing: skip, unless UPLIFT_REQUIRE_SHARED=1 (CI)."""
    if not SHARED.is_dir():
        message = f"shared data folder {SHARED} not present (it must sit beside the project)"
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
