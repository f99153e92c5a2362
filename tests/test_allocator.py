"""retain_freed_memory: glibc keeps freed maps in the process, so a repeated forward pass does not page-fault its
maps in again."""

import sys

import pytest
from launch_helpers import run_at_once

_SCRIPT = r"""
import resource, sys, torch
from uplift_diffusion import UPLiFTModel
from uplift_diffusion.utils.allocator import retain_freed_memory
if sys.argv[1] == "retain":
    assert retain_freed_memory()
torch.manual_seed(0)
model = UPLiFTModel.from_preset("dinov2-s14").eval()
image, tokens = torch.rand(1, 3, 112, 112), torch.randn(1, 384, 8, 8)
faults = []
with torch.inference_mode():
    for _ in range(4):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        model(image, tokens, iterations=4, output_size=112)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(min(faults[2:]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_repeated_forward_passes_stop_page_faulting():
    # Both processes at once: page faults are counted per process, and each uses one thread (of a 2-core machine).
    # glibc raises its mmap threshold to the size of each mmapped block freed, so how often the default arm
    # faults depends on the order of frees in torch (it can read 0). Both arms start from glibc's initial
    # thresholds, fixed (the environment turns the adaptation off): the default arm then maps every block above
    # 128 KiB afresh, and the retain arm shows that retain_freed_memory() overrides whatever the environment set.
    env = {"OMP_NUM_THREADS": "1", "PATH": "", "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
    finished = run_at_once({mode: [sys.executable, "-c", _SCRIPT, mode] for mode in ("default", "retain")}, env=env)
    counts = {}
    for mode, proc in finished.items():
        assert proc.returncode == 0, proc.stderr[-2000:]
        counts[mode] = int(proc.stdout.strip().splitlines()[-1])
    # Default glibc: tens of MiB faulted in again per call (4 KiB pages); retained: a small fraction of that (a
    # fresh machine's first calls still fault in some one-time caches).
    assert counts["default"] > 2000 and counts["retain"] * 5 < counts["default"], counts
