"""The benchmark loop for one data set: tune each peer, run the rounds, then the no-op runs."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from bench.datasets import DataSet
from bench.measure import CommandFailed, ServerMeter
from bench.results import MIRROR, NOOP, TUNE, RunRecord, SetInfo
from bench.targets import check_target, flush_to_disk, reset_folder
from bench.tool import Job, Outcome, Tool


@dataclass(frozen=True)
class Options:
    """Settings of the benchmark loop, the same for every data set."""

    rounds: int
    tune: bool
    #: Hash every file after each run, not only check its size.
    verify_hashes: bool
    keep_targets: bool


class SetSession:
    """Runs every tool on one loaded data set and collects the records."""

    def __init__(
        self,
        info: SetInfo,
        data_set: DataSet,
        digests: list[str],
        endpoint_url: str,
        workdir: Path,
        tools: list[Tool],
        server: ServerMeter,
        options: Options,
    ) -> None:
        self.info = info
        self.data_set = data_set
        self.digests = digests
        self.endpoint_url = endpoint_url
        self.workdir = workdir
        self.tools = tools
        self.server = server
        self.options = options
        self.records: list[RunRecord] = []

    def job_for(self, tool: Tool) -> Job:
        """Return the job of ``tool`` on this set; its folders are per set and tool."""
        return Job(
            data_set=self.data_set,
            digests=self.digests,
            endpoint_url=self.endpoint_url,
            target=self.workdir / "targets" / self.data_set.name / tool.name,
            scratch=self.workdir / "scratch" / self.data_set.name / tool.name,
            manifest=Path(self.info.manifest),
        )

    def run(self) -> list[RunRecord]:
        """Tune, run every round, run the no-op pass; return every record."""
        for tool in self.tools:
            self.info.settings[tool.name] = self._choose_setting(tool)

        for round_number in range(1, self.options.rounds + 1):
            for tool in rotated(self.tools, round_number - 1):
                self._mirror(tool, MIRROR, round_number, self.info.settings[tool.name])

        for round_number in range(1, self.options.rounds + 1):
            for tool in self.tools:
                self._noop(tool, round_number)

        for tool in self.tools:
            job = self.job_for(tool)
            if self.options.keep_targets:
                self.info.targets[tool.name] = str(job.target)
            else:
                shutil.rmtree(job.target, ignore_errors=True)
        return self.records

    def _choose_setting(self, tool: Tool) -> int:
        """Try each candidate concurrency once and return the fastest that left a complete target."""
        if not self.options.tune or len(tool.candidates) < 2:
            return tool.default_setting

        tried = [self._mirror(tool, TUNE, 0, setting) for setting in tool.candidates]
        good = [record for record in tried if record.ok]
        if not good:
            return tool.default_setting
        return min(good, key=lambda record: record.seconds).setting

    def _mirror(self, tool: Tool, kind: str, round_number: int, setting: int) -> RunRecord:
        job = self.job_for(tool)
        reset_folder(job.target)
        reset_folder(job.scratch)
        flush_to_disk()

        record = RunRecord(self.data_set.name, tool.name, kind, round_number, setting)
        try:
            outcome = tool.mirror(job, setting, self.server)
        except CommandFailed as error:
            record.error = str(error)
        else:
            self._fill(record, outcome)
        self._check(record, job)
        self.records.append(record)
        return record

    def _noop(self, tool: Tool, round_number: int) -> None:
        job = self.job_for(tool)
        setting = self.info.settings[tool.name]
        if not self._last_mirror_ok(tool):
            return

        record = RunRecord(self.data_set.name, tool.name, NOOP, round_number, setting)
        try:
            outcome = tool.noop(job, setting, self.server)
        except CommandFailed as error:
            record.error = str(error)
        else:
            if outcome is None:
                return
            self._fill(record, outcome)
            for key, usage in outcome.extra.items():
                extra = RunRecord(self.data_set.name, f"{tool.name}-{key}", NOOP, round_number, setting)
                self._fill(extra, Outcome(usage))
                self.records.append(extra)
        self._check(record, job)
        self.records.append(record)

    def _last_mirror_ok(self, tool: Tool) -> bool:
        mirrors = [record for record in self.records if record.tool == tool.name and record.kind == MIRROR]
        return bool(mirrors) and mirrors[-1].ok

    @staticmethod
    def _fill(record: RunRecord, outcome: Outcome) -> None:
        record.seconds = outcome.usage.seconds
        record.cpu_seconds = outcome.usage.cpu_seconds
        record.peak_rss = outcome.usage.peak_rss
        record.server_cpu_seconds = outcome.usage.server_cpu_seconds
        record.first_file_seconds = outcome.first_file_seconds

    def _check(self, record: RunRecord, job: Job) -> None:
        record.sync_seconds = flush_to_disk()
        check = check_target(job.target, self.digests, self.data_set.size, self.options.verify_hashes)
        record.missing = check.missing
        record.wrong = check.wrong
        status = "ok" if record.ok else f"FAILED ({record.error or f'{check.missing} missing, {check.wrong} wrong'})"
        print(
            f"  {record.kind:<6} round {record.round} {record.tool:<15} setting {record.setting:<4} "
            f"{record.seconds:8.2f} s  cpu {record.cpu_seconds:7.2f} s  {status}",
            flush=True,
        )


def rotated(tools: list[Tool], steps: int) -> list[Tool]:
    """Return ``tools`` rotated left by ``steps``, so each round starts with another tool."""
    if not tools:
        return []
    steps %= len(tools)
    return tools[steps:] + tools[:steps]
