"""Process environments and command lookup for the benchmarked tools.

Every tool gets the same throwaway credentials for the open-mode SeaweedFS
server, a private HOME and no ambient AWS or rclone configuration, so none
of them reads a user's settings or queries an instance-metadata address for keys.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path


ACCESS_KEY = "bench"
SECRET_KEY = "bench"
REGION = "us-east-1"

_STRIPPED_PREFIXES = ("AWS_", "S3_", "RCLONE_", "BOTO")


def tool_environment(home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Return an environment with benchmark credentials, metadata lookups off and HOME at ``home``."""
    environment = {
        name: value for name, value in os.environ.items() if not name.upper().startswith(_STRIPPED_PREFIXES)
    }
    home.mkdir(parents=True, exist_ok=True)
    environment.update(
        {
            "HOME": str(home),
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }
    )
    environment.update(extra or {})
    return environment


def find_command(name: str) -> str | None:
    """Return the command ``name`` beside this Python (the venv) or on PATH, or None."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(name)


def find_packaged_binary(package: str, name: str) -> str | None:
    """Return a binary shipped inside a Python package's ``bin`` folder, or None.

    Calling it directly skips the package's Python launcher, which would add
    an interpreter start to every measured run.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / "bin" / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None
