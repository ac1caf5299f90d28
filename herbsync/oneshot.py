"""``herbsync fetch``: mirror given hashes or manifests once, without the daemon.

It uses the daemon's engine, store and state database, so images it fetches
count as verified for the daemon too. Its wants are registered under a hidden
manifest name and withdrawn when it ends.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from herbsync.config import Settings
from herbsync.digest import extension_from_url, extract_sha256_from_url, normalize_extension
from herbsync.durability import WriteBack, recover
from herbsync.errors import InvalidDigest
from herbsync.manifests import Entry, Problem, read_manifest
from herbsync.mirror import Mirror, Outcome, RetryPolicy
from herbsync.sources.factory import build_source
from herbsync.state import ManifestRecord, State
from herbsync.store import Store


@dataclass
class FetchReport:
    """The outcome of a one-shot fetch."""

    requested: int = 0
    fetched: int = 0
    present: int = 0
    failures: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    #: False when the fetched images could not be confirmed on disk.
    synced: bool = True


def _entries_of_argument(argument: str, report: FetchReport) -> Iterator[Entry]:
    path = Path(argument)
    if path.is_file():
        for item in read_manifest(path):
            if isinstance(item, Problem):
                where = argument if item.line is None else f"{argument}:{item.line}"
                report.problems.append(f"{where}: {item.text!r}: {item.reason}")
            else:
                yield item
        return

    try:
        digest = extract_sha256_from_url(argument)
    except InvalidDigest as error:
        report.problems.append(f"{error}; give a hash, an image URL or a manifest file")
        return
    extension = extension_from_url(argument)
    yield Entry(digest, 0, normalize_extension(extension) if extension else None)


def fetch_once(settings: Settings, arguments: list[str], progress: bool = True) -> FetchReport:
    """Fetch every image named by ``arguments`` into the store; return what happened."""
    report = FetchReport()
    state = State(settings.state_path)
    store = Store(settings.store_path)
    policy = RetryPolicy(attempts=settings.attempts, backoff=settings.backoff)
    source = build_source(settings.source)
    mirror = Mirror(store, source, state, settings.workers, policy)
    mirror.record_failures = False
    recover(store)
    write_back = WriteBack(store)
    write_back.start()
    mirror.write_back = write_back
    name = f".fetch-{os.getpid()}"

    try:
        entries = (entry for argument in arguments for entry in _entries_of_argument(argument, report))
        record = ManifestRecord(name, 0, 0, "", [], 0)
        report.requested, _ = state.replace_manifest(record, entries)
        report.present = report.requested - len(state.pending(float("inf"), limit=report.requested + 1, manifest=name))
        if report.present < report.requested:
            source.prepare(settings.workers)
        bar = tqdm(
            total=report.requested - report.present,
            unit="image",
            disable=not progress or None,
            file=sys.stderr,
        )

        def advance(outcome: Outcome) -> None:
            bar.update(1)

        mirror.on_outcome = advance
        result = mirror.run_pass(manifest=name, now=float("inf"))
        bar.close()
        report.fetched = result.fetched
        report.present += result.adopted
        report.failures = result.failures
    finally:
        mirror.close()
        # The command exits only once every file it placed is on disk.
        report.synced = write_back.close()
        state.remove_manifest(name)
        state.close()
    return report
