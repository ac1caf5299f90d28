"""Failed uploads: their kind, and when each is tried again.

Transient failures are retried with exponential backoff. Failures that
another try soon will not fix (access denied, an object that contradicts
its name, a file that cannot be removed) wait the maximum delay between
tries, so they never loop.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from herbsync.errors import AccessDenied, FileChanged, SourceUnavailable, StoreError, StoreFull
from herbsync.upload.hashing import FileVersion

# Failure kinds that wait the maximum delay before the next try.
SLOW_RETRY_KINDS = frozenset({"access_denied", "error", "remove_failed"})


def failure_kind(error: BaseException) -> str:
    """Return the short, stable name of an upload failure's kind, used in status and logs."""
    if isinstance(error, AccessDenied):
        return "access_denied"
    if isinstance(error, FileChanged):
        return "changed"
    if isinstance(error, SourceUnavailable):
        return "unavailable"
    if isinstance(error, StoreFull):
        return "store_full"
    if isinstance(error, StoreError):
        return "store"
    if isinstance(error, OSError):
        return "unreadable"
    return "error"


@dataclass(frozen=True)
class RetrySchedule:
    """How long a failed upload waits before its next try."""

    #: Seconds before the first retry of a transient failure.
    first_retry: float = 30.0
    #: Maximum wait, in seconds, between tries, and the wait after access denied.
    max_retry: float = 3600.0
    #: Random spread applied to delays, as a fraction.
    jitter: float = 0.1

    def delay(self, attempts: int, kind: str) -> float:
        """Return seconds until the next try of an upload that failed ``attempts`` times."""
        if kind in SLOW_RETRY_KINDS:
            return self.max_retry
        base = self.first_retry * (2 ** min(attempts - 1, 40))
        spread = 1 + random.uniform(-self.jitter, self.jitter)
        return float(min(self.max_retry, base * spread))


@dataclass
class UploadFailure:
    """The last failure of one inbox file and when it is tried again."""

    path: Path
    kind: str
    reason: str
    attempts: int
    first_failed_at: float
    next_attempt_at: float
    #: The file's version when it failed; a file that changes since is tried again once complete.
    version: FileVersion | None = None

    def as_dict(self, inbox: Path, now: float) -> dict[str, Any]:
        """Return the failure for status output, with its path relative to the inbox."""
        return {
            "path": _relative_text(self.path, inbox),
            "kind": self.kind,
            "reason": self.reason,
            "attempts": self.attempts,
            "first_failed_at": self.first_failed_at,
            "next_attempt_at": self.next_attempt_at,
            "next_attempt_in": round(max(0.0, self.next_attempt_at - now), 3),
        }


def _relative_text(path: Path, inbox: Path) -> str:
    try:
        return path.relative_to(inbox).as_posix()
    except ValueError:
        return str(path)
