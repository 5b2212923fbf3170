"""Shared fixtures. Keep torch single-threaded per process so several test processes share 2 cores."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault(
    "TORCH_EXTENSIONS_DIR", os.path.join(os.path.dirname(__file__), "..", ".venv", "torch_extensions")
)
