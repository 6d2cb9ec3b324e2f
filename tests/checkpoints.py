"""Reading a run's checkpoint directory the way a test observes it: the JSON files themselves."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any


def manifests(run_dir: Path) -> list[dict[str, Any]]:
    """Every manifest that parses right now (one being renamed into place may be skipped)."""
    found = []
    for path in sorted(run_dir.glob("manifest.*.json")):
        with contextlib.suppress(OSError, ValueError):
            found.append(json.loads(path.read_text()))
    return found


def newest_position(run_dir: Path) -> int | None:
    """The position of the newest checkpoint, or None when there is none."""
    records = manifests(run_dir)
    return max(r["position"] for r in records) if records else None
