"""Per-manifest status reports that scripts read without parsing logs.

Each manifest gets ``<state>/status/<name>.json``: counts of entries,
present, pending and failed, each failure with its hash and reason, the
invalid lines, and whether the manifest is complete.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from herbsync.state import State
from herbsync.store import FILE_MODE


STATUS_FOLDER = "status"


def manifest_status(state: State, name: str) -> dict[str, Any] | None:
    """Return the status report of one manifest, or None if it is unknown."""
    record = state.manifest(name)
    if record is None:
        return None

    counts = state.manifest_counts(name)
    failures = state.manifest_failures(name)
    return {
        "manifest": name,
        "entries": counts["entries"],
        "present": counts["present"],
        "pending": counts["pending"],
        "failed": counts["failed"],
        "complete": counts["entries"] > 0 and counts["present"] == counts["entries"],
        "settled": counts["pending"] == 0,
        "failures": failures,
        "invalid_lines": record.problems,
        "invalid_count": record.problem_count,
        "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def status_path(state_folder: Path, name: str) -> Path:
    """Return where the status report of manifest ``name`` is written."""
    return state_folder / STATUS_FOLDER / f"{name}.json"


def write_status(state: State, name: str) -> Path | None:
    """Write a manifest's status report atomically; remove it if the manifest is gone."""
    target = status_path(state.folder, name)
    report = manifest_status(state, name)
    if report is None:
        target.unlink(missing_ok=True)
        return None

    write_json_atomically(target, report)
    return target


def write_json_atomically(target: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``target`` so readers see the old file or the new one, whole."""
    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}-")
    try:
        os.fchmod(descriptor, FILE_MODE)
        with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
            json.dump(data, stream, indent=2)
            stream.write("\n")
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def remove_stale_reports(state: State) -> None:
    """Delete status reports of manifests the state no longer records."""
    folder = state.folder / STATUS_FOLDER
    if not folder.is_dir():
        return
    known = set(state.manifest_names())
    for path in folder.glob("*.json"):
        if path.name[: -len(".json")] not in known:
            path.unlink(missing_ok=True)


STORE_REPORT = "store-status.json"


def write_store_report(state_folder: Path, report: dict[str, Any]) -> None:
    """Write the store's size report (cap, sizes, over-capacity flag) for ``herbsync status``."""
    stamped = {**report, "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_json_atomically(state_folder / STORE_REPORT, stamped)


def read_store_report(state_folder: Path) -> dict[str, Any] | None:
    """Return the last store size report, or None if there is none."""
    try:
        report = json.loads((state_folder / STORE_REPORT).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) else None
