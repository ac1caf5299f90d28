"""The uploads journal: one JSON line per uploaded file in ``<state>/uploads.jsonl``.

Each line has the fields a JSONL manifest reads: ``sha256``, ``path`` (the
object key), ``bytes`` and ``content_type``. The journal can therefore be
copied into the manifest folder as it is. Each line also has
``original_name`` (relative to the inbox), ``original_mtime_ns``,
``new_object`` (false when the object already existed) and ``uploaded_at``
(ISO 8601, UTC).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import structlog

from herbsync.sources.base import UploadResult


log = structlog.get_logger("herbsync.upload")

JOURNAL_NAME = "uploads.jsonl"


def journal_record(result: UploadResult, original_name: str, original_mtime_ns: int, uploaded_at: float) -> dict[str, Any]:
    """Return the journal line of one upload as a dict."""
    moment = datetime.fromtimestamp(uploaded_at, tz=timezone.utc)
    return {
        "sha256": result.digest,
        "path": result.key,
        "bytes": result.size,
        "content_type": result.content_type,
        "original_name": original_name,
        "original_mtime_ns": original_mtime_ns,
        "new_object": result.created,
        "uploaded_at": moment.isoformat(timespec="seconds"),
    }


class UploadJournal:
    """Appends upload records to a JSONL file, one fsynced line each."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / JOURNAL_NAME
        self._lock = threading.Lock()

    def append(self, record: dict[str, Any]) -> None:
        """Append one record as a line and make it durable before returning."""
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as stream:
                stream.write(line)
                stream.flush()
                os.fsync(stream.fileno())

    def records(self) -> Iterator[dict[str, Any]]:
        """Yield the records written so far; skip and log lines that are not JSON objects."""
        try:
            stream = open(self.path, encoding="utf-8")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            return
        with stream:
            for number, line in enumerate(stream, start=1):
                if not line.strip():
                    continue
                record = _parse_line(line)
                if record is None:
                    log.warning("journal.invalid_line", path=str(self.path), line=number)
                    continue
                yield record


def _parse_line(line: str) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None
