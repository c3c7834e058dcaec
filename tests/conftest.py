import sys
from pathlib import Path

# Lets test modules share helpers (``from test_engines import ...``).
sys.path.insert(0, str(Path(__file__).parent))
