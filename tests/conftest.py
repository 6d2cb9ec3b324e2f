"""Shared test setup: make tests/ importable and provide the real-kernel fixtures."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kernels import kernel, kernel_factory  # noqa: F401  (pytest fixtures)
