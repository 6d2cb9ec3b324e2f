"""The server extension's application: its settings (traitlets) and the handlers it registers."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from jupyter_server.extension.application import ExtensionApp
from traitlets import Bool, Float, Int, List, Unicode, default, validate

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

    poll_seconds = Float(
        2.0, help="How often the board's page asks for news, in seconds (at most 2: it is a live view)."
    ).tag(config=True)

    @validate("poll_seconds")
    def _poll_at_most_two(self, proposal: dict[str, float]) -> float:
        return min(2.0, max(0.2, float(proposal["value"])))

    @default("static_paths")
    def _board_static(self) -> list[str]:
        return [str(Path(__file__).resolve().parent / "static")]  # the page's script and style

    def initialize_settings(self) -> None:
        """The board's folders and the launcher of resubmitted runs, shared by all its handlers."""
        from resumable_magic.server.folders import Folders
        from resumable_magic.server.resubmit import Launcher

        assert self.serverapp is not None
        self.root = Path(os.path.realpath(os.path.expanduser(self.serverapp.root_dir)))
        self.board_folders = Folders(self.root, list(self.folders), self.walk_depth, self.poll_seconds)
        self.launcher = Launcher(self.root, Path(self.serverapp.runtime_dir) / "resumable")

    def initialize_handlers(self) -> None:
        """Register the handlers of every module in HANDLER_MODULES."""
        for module_name in HANDLER_MODULES:
            module = importlib.import_module(module_name)
            self.handlers.extend(module.handlers(self))
