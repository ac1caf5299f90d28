"""The state database: what each manifest wants, what is present, what failed.

One SQLite file in WAL mode. The daemon's coordinator thread does most
writes. Scrub and eviction runs write through connections of their own, and
readers such as ``herbsync status`` may open it at any time.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Protocol, TypeVar


DATABASE_NAME = "herbsync.db"
SCHEMA_VERSION = 1
BATCH_SIZE = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS manifests (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    content_sha256 TEXT NOT NULL,
    read_at REAL NOT NULL,
    problems TEXT NOT NULL DEFAULT '[]',
    problem_count INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS wants (
    manifest_id INTEGER NOT NULL,
    digest TEXT NOT NULL,
    extension TEXT,
    size INTEGER,
    label TEXT,
    line INTEGER NOT NULL,
    PRIMARY KEY (manifest_id, digest)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS wants_by_digest ON wants (digest);
CREATE TABLE IF NOT EXISTS objects (
    digest TEXT PRIMARY KEY,
    extension TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    verified_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS failures (
    digest TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    reason TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    first_failed_at REAL NOT NULL,
    last_attempt_at REAL NOT NULL,
    next_attempt_at REAL NOT NULL
) WITHOUT ROWID;
-- The scrub re-hashes the least recently verified images first.
CREATE INDEX IF NOT EXISTS objects_by_verified_at ON objects (verified_at);
"""


class EntryLike(Protocol):
    """The fields of a manifest entry that the state stores."""

    digest: str
    line: int
    extension: str | None
    size: int | None
    label: str | None


@dataclass(frozen=True, slots=True)
class Want:
    """A wanted image that is not yet present."""

    digest: str
    extension: str | None
    size: int | None


@dataclass(frozen=True, slots=True)
class ManifestRecord:
    """The stored record of a manifest file."""

    name: str
    size: int
    mtime_ns: int
    content_sha256: str
    problems: list[dict[str, Any]]
    problem_count: int


@dataclass(frozen=True, slots=True)
class PresentRecord:
    """An image herbsync verified, with the size and mtime it had then."""

    digest: str
    extension: str
    size: int
    mtime_ns: int
    verified_at: float


class State:
    """The SQLite state database in a state folder."""

    def __init__(self, folder: str | Path, readonly: bool = False) -> None:
        self.folder = Path(folder)
        self.path = self.folder / DATABASE_NAME
        if readonly:
            uri = f"file:{self.path}?mode=ro"
            self.connection = sqlite3.connect(uri, uri=True, check_same_thread=False)
        else:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.connection = sqlite3.connect(self.path, check_same_thread=False)
            self._create_schema()
        self.connection.execute("PRAGMA busy_timeout = 10000")
        # Manifests of a million entries insert digests in random order; a
        # 64 MiB page cache and in-memory temporary tables keep those B-tree
        # inserts off the disk until commit.
        self.connection.execute("PRAGMA cache_size = -65536")
        self.connection.execute("PRAGMA temp_store = MEMORY")

    def _create_schema(self) -> None:
        self.connection.execute("PRAGMA journal_mode = WAL")
        self.connection.execute("PRAGMA synchronous = NORMAL")
        with self.connection:
            self.connection.executescript(_SCHEMA)
            self.connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        """Close the database connection."""
        self.connection.close()

    # Manifests ----------------------------------------------------------

    def manifest(self, name: str) -> ManifestRecord | None:
        """Return what is stored for the manifest ``name``, or None."""
        row = self.connection.execute(
            "SELECT name, size, mtime_ns, content_sha256, problems, problem_count "
            "FROM manifests WHERE name = ?",
            (name,),
        ).fetchone()
        if row is None:
            return None
        return ManifestRecord(row[0], row[1], row[2], row[3], json.loads(row[4]), row[5])

    def manifest_names(self) -> list[str]:
        """Return the names of all known manifests."""
        rows = self.connection.execute("SELECT name FROM manifests ORDER BY name")
        return [row[0] for row in rows]

    def touch_manifest(self, name: str, size: int, mtime_ns: int) -> None:
        """Record a new size and mtime for a manifest whose content did not change."""
        with self.connection:
            self.connection.execute(
                "UPDATE manifests SET size = ?, mtime_ns = ? WHERE name = ?",
                (size, mtime_ns, name),
            )

    def replace_manifest(
        self,
        record: ManifestRecord,
        entries: Iterable[EntryLike],
    ) -> tuple[int, int]:
        """Make the manifest's wants equal ``entries``; return (added, removed).

        Only entries that changed are written: the new list goes to a
        temporary table and is compared with the stored one in SQL.
        """
        connection = self.connection
        with connection:
            manifest_id = self._upsert_manifest(record)
            connection.execute(
                "CREATE TEMP TABLE IF NOT EXISTS incoming ("
                "digest TEXT PRIMARY KEY, extension TEXT, size INTEGER, label TEXT, line INTEGER"
                ") WITHOUT ROWID"
            )
            connection.execute("DELETE FROM incoming")
            for batch in _batches(entries):
                connection.executemany(
                    "INSERT OR IGNORE INTO incoming VALUES (?, ?, ?, ?, ?)",
                    [(e.digest, e.extension, e.size, e.label, e.line) for e in batch],
                )

            removed = connection.execute(
                "DELETE FROM wants WHERE manifest_id = ? "
                "AND digest NOT IN (SELECT digest FROM incoming)",
                (manifest_id,),
            ).rowcount
            connection.execute(
                "UPDATE wants SET extension = i.extension, size = i.size, label = i.label, "
                "line = i.line FROM incoming AS i WHERE wants.manifest_id = ? "
                "AND wants.digest = i.digest AND (wants.extension IS NOT i.extension "
                "OR wants.size IS NOT i.size OR wants.label IS NOT i.label OR wants.line != i.line)",
                (manifest_id,),
            )
            added = connection.execute(
                "INSERT OR IGNORE INTO wants "
                "SELECT ?, digest, extension, size, label, line FROM incoming",
                (manifest_id,),
            ).rowcount
            connection.execute("DELETE FROM incoming")
        return added, removed

    def _upsert_manifest(self, record: ManifestRecord) -> int:
        problems = json.dumps(record.problems)
        self.connection.execute(
            "INSERT INTO manifests (name, size, mtime_ns, content_sha256, read_at, problems, "
            "problem_count) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
            "size = excluded.size, mtime_ns = excluded.mtime_ns, "
            "content_sha256 = excluded.content_sha256, read_at = excluded.read_at, "
            "problems = excluded.problems, problem_count = excluded.problem_count",
            (
                record.name,
                record.size,
                record.mtime_ns,
                record.content_sha256,
                time.time(),
                problems,
                record.problem_count,
            ),
        )
        row = self.connection.execute(
            "SELECT id FROM manifests WHERE name = ?", (record.name,)
        ).fetchone()
        return int(row[0])

    def replace_problems(self, record: ManifestRecord) -> None:
        """Store the invalid lines found while reading a manifest."""
        with self.connection:
            self.connection.execute(
                "UPDATE manifests SET problems = ?, problem_count = ? WHERE name = ?",
                (json.dumps(record.problems), record.problem_count, record.name),
            )

    def remove_manifest(self, name: str) -> int:
        """Forget a manifest and withdraw its wants; return how many entries it had."""
        with self.connection:
            row = self.connection.execute(
                "SELECT id FROM manifests WHERE name = ?", (name,)
            ).fetchone()
            if row is None:
                return 0
            removed = self.connection.execute(
                "DELETE FROM wants WHERE manifest_id = ?", (row[0],)
            ).rowcount
            self.connection.execute("DELETE FROM manifests WHERE id = ?", (row[0],))
        return int(removed)

    # Wanted and present -------------------------------------------------

    def pending(
        self, now: float, after: str = "", limit: int = 1000, manifest: str | None = None
    ) -> list[Want]:
        """Return wanted images that are not present and are due, in digest order.

        With ``manifest``, only that manifest's entries count.
        """
        query = (
            "SELECT w.digest, MAX(w.extension), MAX(w.size) FROM wants AS w "
            "WHERE w.digest > ? "
            "AND NOT EXISTS (SELECT 1 FROM objects AS o WHERE o.digest = w.digest) "
            "AND NOT EXISTS (SELECT 1 FROM failures AS f WHERE f.digest = w.digest "
            "AND f.next_attempt_at > ?) "
        )
        parameters: tuple[object, ...] = (after, now)
        if manifest is not None:
            query += "AND w.manifest_id = (SELECT id FROM manifests WHERE name = ?) "
            parameters += (manifest,)
        query += "GROUP BY w.digest ORDER BY w.digest LIMIT ?"
        rows = self.connection.execute(query, parameters + (limit,))
        return [Want(*row) for row in rows]

    def next_attempt_at(self) -> float | None:
        """Return the earliest retry time among failures that are still wanted."""
        row = self.connection.execute(
            "SELECT MIN(f.next_attempt_at) FROM failures AS f "
            "WHERE EXISTS (SELECT 1 FROM wants AS w WHERE w.digest = f.digest)"
        ).fetchone()
        return None if row[0] is None else float(row[0])

    def present(self, digest: str) -> PresentRecord | None:
        """Return the verification record of ``digest``, or None."""
        row = self.connection.execute(
            "SELECT digest, extension, size, mtime_ns, verified_at FROM objects WHERE digest = ?",
            (digest,),
        ).fetchone()
        return None if row is None else PresentRecord(*row)

    def iter_present(self) -> Iterator[PresentRecord]:
        """Yield every verification record, in digest order, in batches."""
        after = ""
        while True:
            rows = self.connection.execute(
                "SELECT digest, extension, size, mtime_ns, verified_at FROM objects "
                "WHERE digest > ? ORDER BY digest LIMIT ?",
                (after, BATCH_SIZE),
            ).fetchall()
            if not rows:
                return
            for row in rows:
                yield PresentRecord(*row)
            after = rows[-1][0]

    def mark_present(self, record: PresentRecord) -> None:
        """Record a verified image and clear any failure it had."""
        with self.connection:
            self.connection.execute(
                "INSERT OR REPLACE INTO objects VALUES (?, ?, ?, ?, ?)",
                (record.digest, record.extension, record.size, record.mtime_ns, record.verified_at),
            )
            self.connection.execute("DELETE FROM failures WHERE digest = ?", (record.digest,))

    def mark_present_many(self, records: Iterable[PresentRecord], clear_failures: bool = False) -> None:
        """Record many verified images in one transaction per batch.

        With ``clear_failures``, any failure recorded for them is cleared too,
        as ``mark_present`` does.
        """
        for batch in _batches(records):
            rows = [(r.digest, r.extension, r.size, r.mtime_ns, r.verified_at) for r in batch]
            with self.connection:
                self.connection.executemany("INSERT OR REPLACE INTO objects VALUES (?, ?, ?, ?, ?)", rows)
                if clear_failures:
                    self.connection.executemany(
                        "DELETE FROM failures WHERE digest = ?", [(r.digest,) for r in batch]
                    )

    def forget_present(self, digests: Iterable[str]) -> None:
        """Drop verification records whose files are gone or changed."""
        with self.connection:
            self.connection.executemany(
                "DELETE FROM objects WHERE digest = ?", [(digest,) for digest in digests]
            )

    def record_failure(self, digest: str, kind: str, reason: str, now: float, next_attempt_at: float) -> int:
        """Record a failed attempt; return the number of attempts so far."""
        with self.connection:
            self.connection.execute(
                "INSERT INTO failures VALUES (?, ?, ?, 1, ?, ?, ?) ON CONFLICT (digest) DO UPDATE "
                "SET kind = excluded.kind, reason = excluded.reason, attempts = attempts + 1, "
                "last_attempt_at = excluded.last_attempt_at, "
                "next_attempt_at = excluded.next_attempt_at",
                (digest, kind, reason, now, now, next_attempt_at),
            )
            row = self.connection.execute(
                "SELECT attempts FROM failures WHERE digest = ?", (digest,)
            ).fetchone()
        return int(row[0])

    def retry_now(self, now: float, except_kinds: Iterable[str] = ()) -> int:
        """Make failed images due for their next try at ``now``, except failures of ``except_kinds``. Returns how many."""
        skipped = sorted(except_kinds)
        placeholders = ", ".join("?" for _ in skipped)
        with self.connection:
            cursor = self.connection.execute(
                f"UPDATE failures SET next_attempt_at = ? WHERE next_attempt_at > ? AND kind NOT IN ({placeholders})",
                (now, now, *skipped),
            )
        return cursor.rowcount

    def attempts(self, digest: str) -> int:
        """Return how many failed attempts ``digest`` has had."""
        row = self.connection.execute(
            "SELECT attempts FROM failures WHERE digest = ?", (digest,)
        ).fetchone()
        return 0 if row is None else int(row[0])

    # Status -------------------------------------------------------------

    def totals(self) -> dict[str, int]:
        """Return counts of wanted, present, failed and pending images."""
        wanted = self._count("SELECT COUNT(DISTINCT digest) FROM wants")
        present = self._count(
            "SELECT COUNT(*) FROM objects AS o WHERE EXISTS "
            "(SELECT 1 FROM wants AS w WHERE w.digest = o.digest)"
        )
        failed = self._count(
            "SELECT COUNT(*) FROM failures AS f WHERE EXISTS "
            "(SELECT 1 FROM wants AS w WHERE w.digest = f.digest)"
        )
        return {
            "wanted": wanted,
            "present": present,
            "failed": failed,
            "pending": wanted - present - failed,
        }

    def manifest_counts(self, name: str) -> dict[str, int]:
        """Return counts of entries, present, failed and pending for one manifest."""
        row = self.connection.execute(
            "SELECT COUNT(*), COUNT(o.digest), COUNT(CASE WHEN o.digest IS NULL THEN f.digest END) "
            "FROM wants AS w JOIN manifests AS m ON m.id = w.manifest_id "
            "LEFT JOIN objects AS o ON o.digest = w.digest "
            "LEFT JOIN failures AS f ON f.digest = w.digest WHERE m.name = ?",
            (name,),
        ).fetchone()
        entries, present, failed = (int(value) for value in row)
        return {
            "entries": entries,
            "present": present,
            "failed": failed,
            "pending": entries - present - failed,
        }

    def manifest_failures(self, name: str, limit: int = 1000) -> list[dict[str, Any]]:
        """Return the failed entries of a manifest with their reasons."""
        rows = self.connection.execute(
            "SELECT w.digest, w.label, w.line, f.kind, f.reason, f.attempts, f.next_attempt_at "
            "FROM wants AS w JOIN manifests AS m ON m.id = w.manifest_id "
            "JOIN failures AS f ON f.digest = w.digest WHERE m.name = ? "
            "AND NOT EXISTS (SELECT 1 FROM objects AS o WHERE o.digest = w.digest) "
            "ORDER BY w.line LIMIT ?",
            (name, limit),
        )
        keys = ("sha256", "label", "line", "kind", "reason", "attempts", "next_attempt_at")
        return [dict(zip(keys, row)) for row in rows]

    def _count(self, query: str) -> int:
        return int(self.connection.execute(query).fetchone()[0])

    # Upkeep: scrub, verify and eviction ---------------------------------

    def least_recently_verified(
        self, before: float, after: tuple[float, str] | None = None, limit: int = 1000
    ) -> list[PresentRecord]:
        """Return records verified before ``before``, oldest verification first.

        ``after`` is the ``(verified_at, digest)`` of the last record of the
        previous page; records updated since then do not shift the pages.
        """
        last_verified_at, last_digest = after if after is not None else (float("-inf"), "")
        # The row-value comparison lets SQLite walk objects_by_verified_at in
        # order; the equivalent OR of two conditions sorts the whole table.
        rows = self.connection.execute(
            "SELECT digest, extension, size, mtime_ns, verified_at FROM objects "
            "WHERE verified_at < ? AND (verified_at, digest) > (?, ?) "
            "ORDER BY verified_at, digest LIMIT ?",
            (before, last_verified_at, last_digest, limit),
        )
        return [PresentRecord(*row) for row in rows]

    def refresh_verified(self, records: Iterable[PresentRecord]) -> int:
        """Update size, mtime and verification time of existing records; return how many.

        A record whose digest and extension have no row is skipped, so an image
        removed while it was being hashed is not recorded again.
        """
        updated = 0
        for batch in _batches(records):
            rows = [(r.size, r.mtime_ns, r.verified_at, r.digest, r.extension) for r in batch]
            with self.connection:
                cursor = self.connection.executemany(
                    "UPDATE objects SET size = ?, mtime_ns = ?, verified_at = ? "
                    "WHERE digest = ? AND extension = ?",
                    rows,
                )
            updated += cursor.rowcount
        return updated

    def present_bytes(self) -> int:
        """Return the total size in bytes of every verified image."""
        return self._count("SELECT COALESCE(SUM(size), 0) FROM objects")

    def wanted_among(self, digests: Iterable[str]) -> set[str]:
        """Return the digests among ``digests`` that any manifest wants."""
        wanted: set[str] = set()
        iterator = iter(digests)
        # 500 parameters per query stays under SQLite's limit of 999 in old builds.
        while batch := list(islice(iterator, 500)):
            placeholders = ", ".join("?" * len(batch))
            rows = self.connection.execute(
                f"SELECT DISTINCT digest FROM wants WHERE digest IN ({placeholders})", batch
            )
            wanted.update(row[0] for row in rows)
        return wanted


Item = TypeVar("Item")


def _batches(items: Iterable[Item]) -> Iterator[list[Item]]:
    iterator = iter(items)
    while batch := list(islice(iterator, BATCH_SIZE)):
        yield batch
