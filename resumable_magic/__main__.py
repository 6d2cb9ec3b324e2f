"""``python -m resumable_magic``: the ``resumable`` command."""

import sys

from resumable_magic.frontends.cli import main

sys.exit(main())
