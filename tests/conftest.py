"""Shared test setup: make tests/ importable and provide the real-kernel fixtures."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kernels import kernel, kernel_factory  # noqa: F401  (pytest fixtures)
from s3server import s3_bucket, s3_client, s3_server  # noqa: F401  (pytest fixtures: moto on loopback)

pytest_plugins = ["torture_report"]  # prints the torture test's figures at the end of the run
