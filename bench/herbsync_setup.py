"""Parts shared by both herbsync tools: the command, the configuration file and the environment.

The configuration sets only paths, the source and JSON logs, so herbsync
runs with its default transfer settings.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from bench.environment import REGION, find_command, tool_environment
from bench.tool import Job


@dataclass(frozen=True)
class HerbsyncPaths:
    """The folders of one herbsync run: the store is the job's target."""

    store: Path
    manifests: Path
    state: Path
    config: Path

    @classmethod
    def for_job(cls, job: Job) -> HerbsyncPaths:
        """Return the paths of a run, with everything but the store in the job's scratch folder."""
        return cls(job.target, job.scratch / "manifests", job.scratch / "state", job.scratch / "herbsync.toml")

    def status_file(self, manifest_name: str) -> Path:
        """Return the status report the daemon writes for a manifest."""
        return self.state / "status" / f"{manifest_name}.json"


def herbsync_command() -> list[str]:
    """Return the ``herbsync`` console script, or this Python running its module."""
    script = find_command("herbsync")
    return [script] if script else [sys.executable, "-m", "herbsync.cli"]


def _git(repository: Path, *arguments: str) -> subprocess.CompletedProcess[str] | None:
    """Run a read-only git command in ``repository``, or return None when git cannot run."""
    try:
        return subprocess.run(
            ["git", "-C", str(repository), *arguments], capture_output=True, text=True, timeout=30, check=False
        )
    except OSError:
        return None


def herbsync_version() -> str:
    """Return the installed herbsync version, the commit and whether ``herbsync/`` differs from it."""
    text = version("herbsync")
    repository = Path(__file__).resolve().parent.parent
    head = _git(repository, "rev-parse", "--short", "HEAD")
    if head is None or head.returncode != 0:
        return text

    changed = _git(repository, "diff-index", "--quiet", "HEAD", "--", "herbsync")
    untracked = _git(repository, "ls-files", "--others", "--exclude-standard", "--", "herbsync")
    modified = (changed is not None and changed.returncode != 0) or bool(untracked and untracked.stdout.strip())
    note = ", herbsync/ has uncommitted changes" if modified else ""
    return f"{text} (commit {head.stdout.strip()}{note})"


def write_config(paths: HerbsyncPaths, job: Job) -> Path:
    """Write the TOML configuration of a run and return its path."""
    # JSON strings are valid TOML basic strings.
    lines = [
        "[store]",
        f"path = {json.dumps(str(paths.store))}",
        "[manifests]",
        f"path = {json.dumps(str(paths.manifests))}",
        "[state]",
        f"path = {json.dumps(str(paths.state))}",
        "[logging]",
        'format = "json"',
        "[source]",
        'type = "s3"',
        f"bucket = {json.dumps(job.data_set.bucket)}",
        f"region = {json.dumps(REGION)}",
        f"endpoint_url = {json.dumps(job.endpoint_url)}",
    ]
    paths.config.parent.mkdir(parents=True, exist_ok=True)
    paths.config.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return paths.config


def herbsync_environment(job: Job) -> dict[str, str]:
    """Return the environment of a herbsync process."""
    return tool_environment(job.scratch / "home")
