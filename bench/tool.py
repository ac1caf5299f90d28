"""The interface every benchmarked tool implements, and the job it is given."""

from __future__ import annotations

import shlex
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from bench.datasets import DataSet
from bench.measure import ServerMeter, Usage, run_measured


@dataclass(frozen=True)
class Job:
    """One mirror of one data set into one empty target folder."""

    data_set: DataSet
    digests: list[str]
    endpoint_url: str
    #: The folder that receives ``ab/cd/<sha256>.jpg`` files.
    target: Path
    #: A folder private to the tool for list, configuration, state and log files.
    scratch: Path
    #: The plain manifest: one digest a line.
    manifest: Path

    @property
    def log_path(self) -> Path:
        """Where the tool's output goes."""
        return self.scratch / "output.log"


@dataclass(frozen=True)
class Outcome:
    """A measured run, with the time to the first complete file where the tool reports it."""

    usage: Usage
    first_file_seconds: float | None = None
    #: Further measurements of the same run, reported as tool ``<name>-<key>``.
    extra: dict[str, Usage] = field(default_factory=dict)


class Tool(ABC):
    """A program that mirrors a list of S3 objects into a local folder."""

    #: Name in reports and on the command line (``--tools``).
    name: str = ""
    #: The concurrency used without tuning.
    default_setting: int = 0
    #: Concurrency values tried when tuning; empty when the tool runs with its defaults only.
    candidates: tuple[int, ...] = ()

    @abstractmethod
    def unavailable_reason(self) -> str | None:
        """Return why the tool cannot run here, or None when it can."""

    @abstractmethod
    def version(self) -> str:
        """Return the tool's version as it prints it."""

    @abstractmethod
    def describe(self) -> str:
        """Return the mirror command with placeholders (N is the concurrency), for the report."""

    @abstractmethod
    def mirror(self, job: Job, setting: int, server: ServerMeter) -> Outcome:
        """Copy every object of ``job`` into its empty target and measure it."""

    def noop(self, job: Job, setting: int, server: ServerMeter) -> Outcome | None:
        """Run the tool again on a complete target and measure it; None when not benchmarked."""
        return None


class CommandTool(Tool):
    """A tool that is one command per run."""

    @abstractmethod
    def mirror_command(self, job: Job, setting: int) -> list[str]:
        """Return the command that mirrors ``job``."""

    def noop_command(self, job: Job, setting: int) -> list[str] | None:
        """Return the command that re-runs on a complete target, or None."""
        return None

    @abstractmethod
    def environment(self, job: Job, setting: int) -> dict[str, str]:
        """Return the environment of the tool's process."""

    def mirror(self, job: Job, setting: int, server: ServerMeter) -> Outcome:
        command = self.mirror_command(job, setting)
        return Outcome(self._run(job, setting, command, server))

    def noop(self, job: Job, setting: int, server: ServerMeter) -> Outcome | None:
        command = self.noop_command(job, setting)
        if command is None:
            return None
        return Outcome(self._run(job, setting, command, server))

    def _run(self, job: Job, setting: int, command: list[str], server: ServerMeter) -> Usage:
        with open(job.log_path, "a", encoding="utf-8") as log:
            log.write(f"$ {shlex.join(command)}\n")
        return run_measured(command, self.environment(job, setting), job.log_path, server)
