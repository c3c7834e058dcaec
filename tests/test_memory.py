import resource
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
