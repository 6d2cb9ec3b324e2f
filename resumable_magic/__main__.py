"""``python -m resumable_magic``: the ``resumable`` command."""

import sys

from .cli import main

sys.exit(main())
