import os
import resource
import subprocess
import sys

import numpy as np
import pytest

from sqdr.models.memory import retain_freed_memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="tunes glibc's malloc")
def test_a_freed_training_sized_block_is_reused_without_page_faults():
    assert retain_freed_memory()
    np.ones(2**21, np.float32).sum()  # 8 MB, the size of a stage's currents at batch 128: touched, then freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    np.ones(2**21, np.float32).sum()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert faults < 100  # fresh pages would be 2,048 faults of 4 KiB


def _wait_policy_after_import(environment: dict) -> str:
    code = "import sqdr, os; print(os.environ['OMP_WAIT_POLICY'])"
    done = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def test_importing_sqdr_makes_openmp_threads_wait_passively_unless_the_user_chose():
    environment = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    assert _wait_policy_after_import(environment) == "PASSIVE"
    assert _wait_policy_after_import({**environment, "OMP_WAIT_POLICY": "ACTIVE"}) == "ACTIVE"
