"""Process settings (sqdr.runtime): none at import, all of them from configure(), and kernels that leave numba's
thread count as they found it."""

from __future__ import annotations

import importlib.metadata
import json
import os
import resource
import subprocess
import sys

import numba
import numpy as np
import pytest
import torch
from numba import prange

from sqdr.models import stage_kernels, threads
from sqdr.runtime import retain_freed_memory

# What the process looks like, as the fresh interpreters below print it.
SNAPSHOT = """
import json, os, warnings
import numba

def snapshot():
    return {
        "environ": dict(os.environ),
        "threading_layer": numba.config.THREADING_LAYER,
        "warning_filters": [repr(f) for f in warnings.filters],
        "numba_threads": numba.get_num_threads(),
        "tbb_loaded": "libtbb" in open("/proc/self/maps").read(),
    }

def changes(before, after):
    return {key: [before[key], after[key]] for key in before if before[key] != after[key]}
"""

# The libraries sqdr imports change the environment and the warning filters themselves (torch and scikit-learn
# set variables, Lightning and SciPy add filters): imported first, what they do is not counted as sqdr's.
THIRD_PARTY = (
    "import numpy, torch, torchvision, torchmetrics, lightning.pytorch, jsonargparse, snntorch, pennylane, optuna, "
    "sklearn"
)

SQDR_MODULES = "import sqdr, sqdr.models, sqdr.models.stage, sqdr.sweep.trial, sqdr.sweep.workers, sqdr.cli"


def tbb_installed() -> bool:
    """Whether the ``tbb`` package is installed (it ships for x86-64 Linux); without it, numba's workqueue."""
    try:
        importlib.metadata.version("tbb")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


TBB = tbb_installed()
LAYER = "tbb" if TBB else "workqueue"

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps, tunes glibc")


def fresh_interpreter(code: str, **environment: str) -> dict:
    """The JSON that ``code``, after :data:`SNAPSHOT`, prints last in a new Python whose environment has none of the
    settings' variables but those of ``environment``."""
    unset = ("OMP_WAIT_POLICY", "SQDR_CONFIGURE", "NUMBA_THREADING_LAYER")
    env = {**{k: v for k, v in os.environ.items() if k not in unset}, **environment}
    done = subprocess.run([sys.executable, "-c", SNAPSHOT + code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@linux_only
def test_importing_sqdr_leaves_environment_threading_layer_warning_filters_and_numba_threads_as_they_were():
    verdict = fresh_interpreter(f"""
{THIRD_PARTY}
before = snapshot()
{SQDR_MODULES}
print(json.dumps(changes(before, snapshot())))
""")
    assert verdict == {}


@linux_only
def test_configure_makes_openmp_wait_passively_runs_kernels_on_tbb_silences_intended_warnings_and_is_idempotent():
    verdict = fresh_interpreter("""
from sqdr import runtime
runtime.configure()
first = snapshot()
os.environ.pop("OMP_WAIT_POLICY")  # a second call re-applies nothing, not even a setting undone in between
undone = snapshot()
runtime.configure()
second = snapshot()
import numpy as np
import optuna
from optuna._experimental import warn_experimental_argument
from sqdr.models import stage_kernels
stage_kernels.channel_moments.threaded(np.ones((4, 2, 3, 3), np.float32))
with warnings.catch_warnings(record=True) as seen:
    optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)
    warn_experimental_argument("heartbeat_interval")
print(json.dumps({
    "wait_policy": first["environ"].get("OMP_WAIT_POLICY"), "configured_layer": first["threading_layer"],
    "tbb_loaded": first["tbb_loaded"], "running_layer": numba.threading_layer(), "kernels_tbb": stage_kernels.TBB,
    "second_call_changed": changes(undone, second), "warnings_seen": [str(w.message) for w in seen],
}))
""")
    assert verdict == {
        "wait_policy": "PASSIVE", "configured_layer": LAYER, "tbb_loaded": TBB, "running_layer": LAYER,
        "kernels_tbb": TBB, "second_call_changed": {}, "warnings_seen": [],
    }


def test_configure_keeps_the_wait_policy_and_threading_layer_the_user_set():
    verdict = fresh_interpreter("""
from sqdr import runtime
runtime.configure()
print(json.dumps([os.environ["OMP_WAIT_POLICY"], numba.config.THREADING_LAYER]))
""", OMP_WAIT_POLICY="ACTIVE", NUMBA_THREADING_LAYER="omp")
    assert verdict == ["ACTIVE", "omp"]


@linux_only
def test_sqdr_configure_0_makes_configure_change_nothing():
    verdict = fresh_interpreter("""
before = snapshot()
from sqdr import runtime
runtime.configure()
import optuna
with warnings.catch_warnings(record=True) as seen:
    optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)
print(json.dumps({"changes": changes(before, snapshot()), "warnings_seen": len(seen)}))
""", SQDR_CONFIGURE="0")
    assert verdict == {"changes": {}, "warnings_seen": 1}  # the warning configure() would have silenced


def test_the_sqdr_command_configures_the_process_before_a_sub_command_imports_torch():
    verdict = fresh_interpreter("""
import sys
import sqdr.__main__ as dispatcher
seen = {}

def report(argv):
    seen.update(wait_policy=os.environ.get("OMP_WAIT_POLICY"), torch_imported="torch" in sys.modules,
                layer=numba.config.THREADING_LAYER)

dispatcher.COMMANDS["report"] = report
dispatcher.main(["report"])
print(json.dumps(seen))
""")
    assert verdict == {"wait_policy": "PASSIVE", "torch_imported": False, "layer": LAYER}


def test_a_pool_worker_configures_itself_in_its_initializer():
    verdict = fresh_interpreter("""
from sqdr.lifetime import exit_with_parent
exit_with_parent(os.getppid())
print(json.dumps(os.environ.get("OMP_WAIT_POLICY")))
""")
    assert verdict == "PASSIVE"


@linux_only
def test_retain_freed_memory_reuses_a_freed_training_sized_block_without_page_faults():
    assert retain_freed_memory()
    np.ones(2**21, np.float32).sum()  # 8 MB, the size of a stage's currents at batch 128: touched, then freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    np.ones(2**21, np.float32).sum()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert faults < 100  # fresh pages would be 2,048 faults of 4 KiB


def _threads_seen(out):
    for i in prange(out.size):
        out[i] = numba.get_num_threads()
    return out


threads_seen = stage_kernels.Kernel(_threads_seen)


@pytest.fixture
def numba_on_one_thread_pytorch_on_two(monkeypatch):
    """Kernels threaded whatever their size, numba's count at 1, PyTorch's (the kernels' budget) at 2."""
    monkeypatch.setattr(stage_kernels, "PARALLEL_MIN_ELEMENTS", 0)
    numba_before, torch_before = numba.get_num_threads(), torch.get_num_threads()
    numba.set_num_threads(1)
    torch.set_num_threads(2)
    yield
    numba.set_num_threads(numba_before)
    torch.set_num_threads(torch_before)


@pytest.mark.filterwarnings("ignore:Cannot cache compiled function")  # numba's thread count is a runtime global
def test_a_kernel_runs_on_the_budget_and_leaves_numbas_thread_count_as_it_was(numba_on_one_thread_pytorch_on_two):
    with threads.small_operations_serial():
        inside = threads_seen(np.zeros(64, np.int64))
        stage_kernels.channel_moments(np.ones((4, 2, 3, 3), np.float32))
    assert set(inside) == {min(2, numba.config.NUMBA_NUM_THREADS)}
    assert numba.get_num_threads() == 1
