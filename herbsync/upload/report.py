"""The inbox status report: ``<state>/uploads-status.json``, for readers in other processes.

The daemon keeps the inbox's status in memory. This file is a copy that
``herbsync status`` can read, rewritten atomically after every upload
outcome. It lists at most ``MAX_REPORTED_FAILURES`` failures, and
``failed`` counts all of them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from herbsync.status import write_json_atomically


REPORT_NAME = "uploads-status.json"
MAX_REPORTED_FAILURES = 1000


def write_report(folder: Path, status: dict[str, Any]) -> Path:
    """Write ``status`` as JSON to ``<folder>/uploads-status.json`` atomically; return the path."""
    report = dict(status)
    report["failures"] = list(status.get("failures", []))[:MAX_REPORTED_FAILURES]
    target = folder / REPORT_NAME

    write_json_atomically(target, report)
    return target


def read_report(folder: Path) -> dict[str, Any] | None:
    """Return the last report written in ``folder``, or None if there is none or it is unreadable."""
    try:
        text = (folder / REPORT_NAME).read_text(encoding="utf-8")
        report = json.loads(text)
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) else None
