"""nbval runs the notebooks here in kernels that inherit this process's environment: give them a
private checkpoint directory, so each test run starts fresh instead of replaying an earlier run."""

import os
import tempfile

os.environ["RESUMABLE_DIR"] = tempfile.mkdtemp(prefix="resumable-nbval-")
