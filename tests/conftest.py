import sys
from pathlib import Path

# Lets test modules share helpers (``from test_engines import ...``).
sys.path.insert(0, str(Path(__file__).parent))

# The process is configured as the `sqdr` command configures it, before torch is imported: the kernels then run on
# TBB's thread pool with its thresholds, as in training (test_encoder checks it).
from sqdr.runtime import configure  # noqa: E402

configure()

# Lightning attaches its log handler to the stderr of the moment it is first imported; importing it here, before
# any test captures output, keeps that handler on the real stderr instead of a capture buffer closed later.
import lightning.pytorch  # noqa: E402, F401
