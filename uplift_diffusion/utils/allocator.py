"""Memory allocator settings for CPU inference.

A forward pass frees and allocates maps of several MiB at every layer. With glibc's defaults, blocks above its
(adaptive) mmap threshold are returned to the kernel when freed and the heap top is trimmed, so the next map of that
size is page-faulted in again, 4 KiB at a time: on our 2-core development machine ~15-20 % of a ``dinov2-s14`` 8x8
pixel-dense call (docs/speed.md). :func:`retain_freed_memory` keeps freed memory in the process instead: the peak
memory is unchanged, the resident size simply does not shrink after a call.

It is process-wide, so the package never calls it on import; the ``upscale``, ``features`` and ``demo`` commands
(short-lived processes of our own) do. In your own process call it once, or set the same settings through the
environment before Python starts: ``MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=2147483647``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed mmap threshold on 64-bit systems
TRIM_THRESHOLD = (1 << 31) - 1  # mallopt takes an int


def retain_freed_memory() -> bool:
    """Tell glibc's malloc to serve blocks up to 32 MiB from the heap and never trim it; True when applied.

    A no-op returning False where the C library is not glibc (macOS, Windows, musl).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
