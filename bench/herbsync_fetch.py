"""``herbsync fetch`` as a benchmarked tool: one process that mirrors a manifest and exits."""

from __future__ import annotations

import subprocess

from bench.herbsync_setup import HerbsyncPaths, herbsync_command, herbsync_environment, herbsync_version, write_config
from bench.tool import CommandTool, Job
from herbsync.config import Settings


class HerbsyncFetch(CommandTool):
    """The one-shot verb, with the same engine and default settings as the daemon."""

    name = "herbsync-fetch"
    default_setting = Settings().workers

    def unavailable_reason(self) -> str | None:
        completed = subprocess.run(
            [*herbsync_command(), "fetch", "--help"], capture_output=True, timeout=60, check=False
        )
        if completed.returncode != 0:
            return "this herbsync has no `fetch` verb yet (`herbsync fetch --help` failed)"
        return None

    def version(self) -> str:
        return herbsync_version()

    def describe(self) -> str:
        return "herbsync fetch --config FILE --no-progress MANIFEST (default settings)"

    def environment(self, job: Job, setting: int) -> dict[str, str]:
        return herbsync_environment(job)

    def mirror_command(self, job: Job, setting: int) -> list[str]:
        paths = HerbsyncPaths.for_job(job)
        write_config(paths, job)
        return [*herbsync_command(), "fetch", "--config", str(paths.config), "--no-progress", str(job.manifest)]

    def noop_command(self, job: Job, setting: int) -> list[str] | None:
        return self.mirror_command(job, setting)
