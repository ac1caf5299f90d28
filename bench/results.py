"""The records of a benchmark: every measured run, plus what is needed to reproduce it."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


TUNE = "tune"
MIRROR = "mirror"
NOOP = "noop"


@dataclass
class RunRecord:
    """One measured run of one tool on one data set."""

    data_set: str
    tool: str
    #: ``tune`` (choosing the concurrency), ``mirror`` (empty target) or ``noop`` (complete target).
    kind: str
    round: int
    setting: int
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    peak_rss: int = 0
    server_cpu_seconds: float = 0.0
    #: Seconds of ``sync`` right after the run: the write-back the tool left behind.
    sync_seconds: float = 0.0
    first_file_seconds: float | None = None
    missing: int = 0
    wrong: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the run finished and left every object in place."""
        return self.error is None and self.missing == 0 and self.wrong == 0


@dataclass
class SetInfo:
    """A loaded data set and where its files are."""

    name: str
    description: str
    count: int
    size: int
    bucket: str
    manifest: str
    upload_seconds: float
    #: Tool name to the concurrency it ran with.
    settings: dict[str, int] = field(default_factory=dict)
    #: Tool name to the target folder of its last mirror.
    targets: dict[str, str] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        """The size of all objects together, in bytes."""
        return self.count * self.size


@dataclass
class Results:
    """Everything one benchmark run measured."""

    started_at: str
    command: str
    quick: bool
    rounds: int
    machine: dict[str, str]
    versions: dict[str, str]
    #: Tool name to its mirror command with placeholders, in the order the tools were given.
    commands: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    sets: list[SetInfo] = field(default_factory=list)
    runs: list[RunRecord] = field(default_factory=list)

    def select(self, data_set: str, tool: str, kind: str) -> list[RunRecord]:
        """Return the runs of one tool on one set of one kind, in round order."""
        found = [run for run in self.runs if (run.data_set, run.tool, run.kind) == (data_set, tool, kind)]
        return sorted(found, key=lambda run: run.round)

    def tools(self) -> list[str]:
        """Return the names of the tools that ran in command-line order, then extra names like ``herbsync-restart``."""
        ran = list(dict.fromkeys(run.tool for run in self.runs))
        requested = [name for name in self.commands if name in ran]
        return requested + [name for name in ran if name not in self.commands]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Results:
        """Rebuild results from the dict that ``save`` wrote as JSON."""
        fields = dict(data)
        fields["sets"] = [SetInfo(**info) for info in data.get("sets", [])]
        fields["runs"] = [RunRecord(**run) for run in data.get("runs", [])]
        return cls(**fields)

    def save(self, path: Path) -> None:
        """Write the results as JSON."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")


def median_of(runs: list[RunRecord], attribute: str) -> float | None:
    """Return the median of one attribute over the successful runs, or None if none succeeded."""
    values = [getattr(run, attribute) for run in runs if run.ok and getattr(run, attribute) is not None]
    return statistics.median(values) if values else None


def load_results(path: Path) -> dict[str, Any]:
    """Read a results file written by ``Results.save``."""
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data
