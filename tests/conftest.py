"""Shared fixtures. Keep torch single-threaded per process so several test processes share 2 cores."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault(
    "TORCH_EXTENSIONS_DIR", os.path.join(os.path.dirname(__file__), "..", ".venv", "torch_extensions")
)

# the tiny training chains, once per session for the unit and the two-rank integration tests
from tests.chains import chain, chain2d, mgenseg_phantom  # noqa: E402, F401
