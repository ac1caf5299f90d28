"""Retry timing of failed images across passes, driven by a fake clock.

``Mirror`` records each failure with ``next_attempt_at`` in the state
database, and ``State.pending`` leaves an image out until that time. Every
policy here makes one attempt per pass, so no test sleeps.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from herbsync.errors import AccessDenied, SourceError, SourceUnavailable
from herbsync.manifests import Entry
from herbsync.mirror import Mirror, RetryPolicy
from herbsync.sources.base import ImageStream
from herbsync.sources.local import LocalImageSource
from herbsync.state import ManifestRecord, State
from herbsync.store import Store


MANIFEST = "retry.txt"
START = 1_000_000.0


class FakeClock:
    """A wall clock that moves only when the test sets it."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FailingSource(LocalImageSource):
    """A local source whose every read raises ``error``, counting the attempts."""

    def __init__(self, base_path: Path, error: SourceError) -> None:
        super().__init__(base_path)
        self.error = error
        self.calls = 0

    def open_image(self, digest: str, extension: str | None = None) -> ImageStream:
        self.calls += 1
        raise self.error


def policy(jitter: float = 0.0) -> RetryPolicy:
    return RetryPolicy(attempts=1, backoff=0.0, first_retry=60.0, max_retry=3600.0, jitter=jitter)


def want(state: State, digests: list[str]) -> None:
    record = ManifestRecord(MANIFEST, 0, 0, "", [], 0)
    state.replace_manifest(record, [Entry(digest, line) for line, digest in enumerate(digests, 1)])


def failure_of(state: State, digest: str) -> dict:
    failures = {failure["sha256"]: failure for failure in state.manifest_failures(MANIFEST)}
    return failures[digest]


def digest_of(index: int) -> str:
    return hashlib.sha256(f"image {index}".encode()).hexdigest()


class Harness:
    """A store, a state and a mirror over ``source``, all on one fake clock."""

    def __init__(self, root: Path, source: LocalImageSource, retry: RetryPolicy) -> None:
        self.root = root
        self.store = Store(root / "store")
        self.source = source
        self.retry = retry
        self.clock = FakeClock()
        self.state = State(root / "state")
        self.mirror = Mirror(self.store, source, self.state, 1, retry, clock=self.clock)

    def restart(self) -> None:
        """Close the mirror and the database and open them again, as a daemon restart does."""
        self.close()
        self.state = State(self.root / "state")
        self.mirror = Mirror(self.store, self.source, self.state, 1, self.retry, clock=self.clock)

    def run_pass(self):
        return self.mirror.run_pass()

    def close(self) -> None:
        self.mirror.close()
        self.state.close()


@pytest.fixture
def empty_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "source"
    folder.mkdir()
    return folder


@pytest.fixture
def harness_for(tmp_path: Path):
    opened: list[Harness] = []

    def make(source: LocalImageSource, retry: RetryPolicy) -> Harness:
        harness = Harness(tmp_path, source, retry)
        opened.append(harness)
        return harness

    yield make
    for harness in opened:
        harness.close()


class TestDelays:
    """How long an image waits after each failure."""

    def test_first_retry_within_jitter(self, harness_for, empty_folder):
        unavailable = FailingSource(empty_folder, SourceUnavailable("503 Slow Down"))
        harness = harness_for(unavailable, policy(jitter=0.2))
        digests = [digest_of(index) for index in range(20)]
        want(harness.state, digests)

        result = harness.run_pass()

        delays = [failure_of(harness.state, digest)["next_attempt_at"] - START for digest in digests]
        assert result.failed == 20
        assert min(delays) >= 60.0 * 0.8
        assert max(delays) <= 60.0 * 1.2
        assert len(set(delays)) > 1

    def test_delays_double_up_to_max_retry(self, harness_for, empty_folder):
        unavailable = FailingSource(empty_folder, SourceUnavailable("connection reset"))
        harness = harness_for(unavailable, policy())
        digest = digest_of(1)
        want(harness.state, [digest])

        delays = []
        for _ in range(8):
            harness.run_pass()
            failure = failure_of(harness.state, digest)
            delays.append(failure["next_attempt_at"] - harness.clock.now)
            harness.clock.now = failure["next_attempt_at"]

        assert delays == [60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 3600.0, 3600.0]
        assert failure_of(harness.state, digest)["attempts"] == 8

    def test_not_found_backs_off_further(self, harness_for, empty_folder):
        """A missing image waits eight times longer than a transient failure, up to max_retry."""
        harness = harness_for(LocalImageSource(empty_folder), policy())
        digest = digest_of(1)
        want(harness.state, [digest])

        delays = []
        for _ in range(4):
            harness.run_pass()
            failure = failure_of(harness.state, digest)
            delays.append(failure["next_attempt_at"] - harness.clock.now)
            harness.clock.now = failure["next_attempt_at"]

        assert failure["kind"] == "not_found"
        assert delays == [480.0, 960.0, 1920.0, 3600.0]

    def test_access_denied_backs_off_further(self, harness_for, empty_folder):
        denied = FailingSource(empty_folder, AccessDenied("403 Forbidden"))
        harness = harness_for(denied, policy())
        digest = digest_of(1)
        want(harness.state, [digest])

        harness.run_pass()

        failure = failure_of(harness.state, digest)
        assert failure["kind"] == "access_denied"
        assert failure["next_attempt_at"] - START == 480.0


class TestSchedule:
    """When a failed image is tried again."""

    def test_not_pending_before_its_time(self, harness_for, empty_folder):
        unavailable = FailingSource(empty_folder, SourceUnavailable("timed out"))
        harness = harness_for(unavailable, policy())
        digest = digest_of(1)
        want(harness.state, [digest])
        harness.run_pass()
        due = failure_of(harness.state, digest)["next_attempt_at"]

        early = harness.state.pending(due - 0.001)
        on_time = harness.state.pending(due)

        assert [entry.digest for entry in early] == []
        assert [entry.digest for entry in on_time] == [digest]

    def test_pass_skips_image_until_due(self, harness_for, empty_folder):
        unavailable = FailingSource(empty_folder, SourceUnavailable("timed out"))
        harness = harness_for(unavailable, policy())
        want(harness.state, [digest_of(1)])
        harness.run_pass()

        harness.clock.now = START + 59.0
        early = harness.run_pass()
        calls_before_due = unavailable.calls
        harness.clock.now = START + 60.0
        due = harness.run_pass()

        assert early.failed == 0
        assert calls_before_due == 1
        assert due.failed == 1
        assert unavailable.calls == 2

    def test_schedule_survives_restart(self, harness_for, empty_folder):
        unavailable = FailingSource(empty_folder, SourceUnavailable("timed out"))
        harness = harness_for(unavailable, policy())
        digest = digest_of(1)
        want(harness.state, [digest])
        harness.run_pass()
        before = failure_of(harness.state, digest)

        harness.restart()
        after = failure_of(harness.state, digest)
        harness.clock.now = START + 30.0
        early = harness.run_pass()
        harness.clock.now = before["next_attempt_at"]
        harness.run_pass()

        assert after["next_attempt_at"] == before["next_attempt_at"]
        assert after["attempts"] == 1
        assert early.failed == 0
        assert harness.state.next_attempt_at() == before["next_attempt_at"] + 120.0
        assert failure_of(harness.state, digest)["attempts"] == 2

    def test_success_clears_the_failure(self, harness_for, empty_folder):
        content = b"specimen sheet"
        digest = hashlib.sha256(content).hexdigest()
        harness = harness_for(LocalImageSource(empty_folder), policy())
        want(harness.state, [digest])
        harness.run_pass()

        Store(empty_folder).place(digest, "jpg", [content], "test")
        harness.clock.now = START + 480.0
        result = harness.run_pass()

        assert result.fetched == 1
        assert harness.state.attempts(digest) == 0
        assert harness.state.next_attempt_at() is None
