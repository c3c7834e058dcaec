import sys
from pathlib import Path

# Lets test modules share helpers (``from test_engines import ...``).
sys.path.insert(0, str(Path(__file__).parent))

# Lightning attaches its log handler to the stderr of the moment it is first imported; importing it here, before
# any test captures output, keeps that handler on the real stderr instead of a capture buffer closed later.
import lightning.pytorch  # noqa: E402, F401
