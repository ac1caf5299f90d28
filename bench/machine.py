"""A description of the machine and the software versions, for the report."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import boto3
import psutil

from bench.tool import Tool
from herbsync.testing.seaweed import find_weed


def cpu_model() -> str:
    """Return the processor's model name from ``/proc/cpuinfo``, or the platform's guess."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def filesystem_of(path: Path) -> str:
    """Return the device and filesystem type that hold ``path``."""
    resolved = str(path.resolve())
    best = None
    for partition in psutil.disk_partitions(all=True):
        fits = resolved == partition.mountpoint or resolved.startswith(partition.mountpoint.rstrip("/") + "/")
        if fits and (best is None or len(partition.mountpoint) > len(best.mountpoint)):
            best = partition
    return "unknown" if best is None else f"{best.device} ({best.fstype}) at {best.mountpoint}"


def describe_machine(workdir: Path) -> dict[str, str]:
    """Return cores, memory, processor, kernel and the disk of the work folder."""
    memory_gib = psutil.virtual_memory().total / 2**30
    return {
        "cores": str(psutil.cpu_count(logical=True)),
        "memory": f"{memory_gib:.1f} GiB",
        "cpu": cpu_model(),
        "kernel": platform.release(),
        "disk": filesystem_of(workdir),
    }


def load_average() -> str:
    """Return the 1-minute load average: other work on the machine skews the timings."""
    return f"{os.getloadavg()[0]:.1f}"


def weed_version() -> str:
    """Return the first line of ``weed version``."""
    completed = subprocess.run([find_weed(), "version"], capture_output=True, text=True, timeout=60, check=False)
    text = completed.stdout.strip() or completed.stderr.strip()
    return text.splitlines()[0] if text else "unknown"


def software_versions(tools: list[Tool]) -> dict[str, str]:
    """Return the version of every tool, the S3 server, Python and boto3."""
    versions = {tool.name: tool.version() for tool in tools}
    versions["SeaweedFS"] = weed_version()
    versions["Python"] = platform.python_version()
    versions["boto3"] = boto3.__version__
    return versions
