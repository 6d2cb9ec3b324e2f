"""The server extension's application: its settings (traitlets) and the handlers it registers."""

from __future__ import annotations

import importlib

from jupyter_server.extension.application import ExtensionApp
from traitlets import Bool, Int, List, Unicode

# Each module has ``handlers(app) -> list[(url_pattern, handler_class)]`` with patterns under
# ``/resumable/``; the board's page and API, and the JupyterLab extension's resume API.
HANDLER_MODULES = ("resumable_magic.server.board", "resumable_magic.server.resume_api")


class ResumableServerApp(ExtensionApp):
    """The ``resumable`` server extension: the board of runs and the resume API."""

    name = "resumable"
    # The board opens from its own URL, not as the server's default page.
    load_other_extensions = True

    folders = List(
        Unicode(),
        default_value=[],
        help="Run folders shown besides the .resumable folders found under the server's root: paths "
        "(absolute, or relative to the root) or fsspec URLs such as s3://bucket/prefix.",
    ).tag(config=True)

    walk_depth = Int(
        4,
        help="How many folder levels below the server's root the board looks for .resumable folders.",
    ).tag(config=True)

    resubmit_enabled = Bool(
        True,
        help="Whether the board may start `resumable run` on the server for a crashed or interrupted run.",
    ).tag(config=True)

    def initialize_handlers(self) -> None:
        """Register the handlers of every module in HANDLER_MODULES."""
        for module_name in HANDLER_MODULES:
            module = importlib.import_module(module_name)
            self.handlers.extend(module.handlers(self))
