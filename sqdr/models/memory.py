"""Keep freed memory in the process instead of returning it to the operating system (glibc only).

PyTorch has no caching allocator on the CPU, and numba's arrays come from the same ``malloc``. glibc serves
blocks above its mmap threshold with fresh pages and hands them back on ``free``, so every training step
page-faults its intermediates in again: thousands of faults per step at batch 128, and a sizeable share of
the step spent in the kernel zeroing pages. Raising the mmap threshold to glibc's maximum and the trim threshold
above the working set lets ``free`` keep those pages for the next step. Memory in use is unchanged; the
resident size stays at its peak instead of shrinking between steps.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's ceiling on 64-bit systems (DEFAULT_MMAP_THRESHOLD_MAX)
TRIM_THRESHOLD = 1024 * 1024 * 1024


def retain_freed_memory() -> bool:
    """Tune glibc's ``malloc`` as described above; returns whether it applied (False off glibc, e.g. macOS)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # another C library (musl): nothing to tune
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
