"""Log set-up: repeated identical errors are rate-limited."""

from __future__ import annotations

import pytest
import structlog

from herbsync._logging import RepeatLimiter


class FakeClock:
    """A clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_repeats_dropped_then_counted():
    """Identical errors within the window are dropped; the next one says how many."""
    clock = FakeClock()
    limiter = RepeatLimiter(window=60, clock=clock)
    event = {"event": "manifest.unreadable", "error": "Permission denied"}

    first = limiter(None, "error", dict(event))
    with pytest.raises(structlog.DropEvent):
        limiter(None, "error", dict(event))
    with pytest.raises(structlog.DropEvent):
        limiter(None, "error", dict(event))
    clock.now = 61
    later = limiter(None, "error", dict(event))

    assert "repeated" not in first
    assert later["repeated"] == 2


def test_different_errors_and_info_pass():
    """Other error texts, and info events, are never dropped."""
    limiter = RepeatLimiter(window=60, clock=FakeClock())

    limiter(None, "warning", {"event": "image.failed", "reason": "a"})
    passed = limiter(None, "warning", {"event": "image.failed", "reason": "b"})
    info = [limiter(None, "info", {"event": "image.fetched"}) for _ in range(3)]

    assert passed["reason"] == "b"
    assert len(info) == 3


def test_same_reason_other_subject_passes():
    """The same reason about two different manifests is logged for each."""
    limiter = RepeatLimiter(window=60, clock=FakeClock())

    limiter(None, "warning", {"event": "manifest.skipped", "manifest": "a", "reason": "symbolic link"})
    other = limiter(None, "warning", {"event": "manifest.skipped", "manifest": "b", "reason": "symbolic link"})

    assert other["manifest"] == "b"
