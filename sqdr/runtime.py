"""Process settings that make training fast, applied by :func:`configure` and never at import.

Importing sqdr changes nothing in the process: a library's import should not retune the allocator, the thread
pools or the warnings of the program that imports it. The ``sqdr`` command calls :func:`configure` before a
sub-command runs, and so do its bench children and worker processes. A script that imports sqdr and wants the
same speed calls ``sqdr.runtime.configure()`` itself, before it imports torch or :mod:`sqdr.models` (whose kernels
read the threading layer when imported).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.metadata
import os
import sys
import warnings

#: ``SQDR_CONFIGURE=0`` in the environment turns :func:`configure` off.
SWITCH = "SQDR_CONFIGURE"

# mallopt parameters, from glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's ceiling on 64-bit systems (DEFAULT_MMAP_THRESHOLD_MAX)
TRIM_THRESHOLD = 1024 * 1024 * 1024

# The oldest TBB interface numba's layer accepts (TBB 2021.6).
TBB_MIN_INTERFACE = 12060

# Optuna's two templates of an ExperimentalWarning, matched by message so that no command pays optuna's import.
OPTUNA_EXPERIMENTAL = (
    r"(.* is experimental \(supported from v[\d.]+\)|Argument ``.+`` is an experimental feature)\. "
    r"The interface can change in the future"
)

_configured = False


def configure() -> None:
    """Apply every setting of this module, once per process: later calls do nothing. Call it before torch is
    first imported, which is when OpenMP reads its wait policy, and before numba's first threaded kernel, which
    fixes its threading layer. ``SQDR_CONFIGURE=0`` makes it do nothing at all (to compare, or to debug a
    setting)."""
    global _configured
    if _configured or os.environ.get(SWITCH, "").strip() == "0":
        return
    _configured = True
    wait_passively()
    retain_freed_memory()
    use_tbb()
    quiet_sweeps()


def wait_passively() -> None:
    """OpenMP threads sleep between parallel regions (a value set by the user wins).

    PyTorch's OpenMP threads spin after each parallel region by default, and the encoder's numba kernels run on
    their own threads between PyTorch's operations, so spinning threads hold the cores the kernels need: on 2 cores
    a training step then used well over twice the CPU time it needs, and 2 threads trained no faster than 1.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def retain_freed_memory() -> bool:
    """Keep freed memory in the process instead of returning it to the operating system; returns whether it
    applied (False off glibc: macOS, musl).

    PyTorch has no caching allocator on the CPU, and numba's arrays come from the same ``malloc``. glibc serves
    blocks above its mmap threshold with fresh pages and hands them back on ``free``, so every training step
    page-faults its intermediates in again: thousands of faults per step at batch 128. Raising the mmap threshold
    to glibc's maximum and the trim threshold above the working set lets ``free`` keep those pages for the next
    step. Memory in use is unchanged; the resident size stays at its peak instead of shrinking between steps.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def load_tbb() -> bool:
    """Load the TBB library of the ``tbb`` package, if installed, so that numba's ``tbb`` threading layer finds it.

    The package puts ``libtbb.so.12`` in the environment's ``lib`` directory, where the dynamic loader does not
    look; once loaded by its path (and globally), numba's layer links to it by name.
    """
    try:
        files = importlib.metadata.files("tbb") or []
    except importlib.metadata.PackageNotFoundError:
        return False
    for file in files:
        if file.name == "libtbb.so.12":
            try:
                library = ctypes.CDLL(str(file.locate()), mode=ctypes.RTLD_GLOBAL)
            except OSError:
                return False
            return library.TBB_runtime_interface_version() >= TBB_MIN_INTERFACE
    return False


def use_tbb() -> bool:
    """Run numba's threaded kernels on TBB's thread pool when TBB loads, else on numba's workqueue; returns
    whether TBB loaded. A layer the user chose (``NUMBA_THREADING_LAYER``) wins.

    A launch on TBB's pool costs a small fraction of one on the workqueue (whose idle threads sleep and must be
    woken), and neither adds a second OpenMP runtime to PyTorch's, as numba's ``omp`` layer would.
    """
    import numba  # here, not at the top: `import sqdr.runtime` stays free

    loaded = load_tbb()
    if "NUMBA_THREADING_LAYER" not in os.environ:
        numba.config.THREADING_LAYER = "tbb" if loaded else "workqueue"
    return loaded


def quiet_sweeps() -> None:
    """Warnings of ``sqdr sweep`` that are intended and that a user cannot act on."""
    # Trials call LightningCLI with explicit args from inside `sqdr sweep`.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    # Heartbeats, stale-trial failing and their retry callback are marked experimental; they are what we want.
    warnings.filterwarnings("ignore", message=OPTUNA_EXPERIMENTAL)
