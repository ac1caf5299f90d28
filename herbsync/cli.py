"""The ``herbsync`` command: run the daemon and the one-shot verbs."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from herbsync.config import DEFAULT_CONFIG_PATH, Settings, load_settings
from herbsync.errors import ConfigError, HerbsyncError
from herbsync.state import DATABASE_NAME, State
from herbsync.status import manifest_status


EXIT_OK = 0
EXIT_FAILED = 1
EXIT_TIMEOUT = 2
EXIT_USAGE = 64


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_CONFIG_PATH,
        metavar="FILE",
        help=f"configuration file (default: {DEFAULT_CONFIG_PATH})",
    )


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``herbsync`` command."""
    parser = argparse.ArgumentParser(
        prog="herbsync",
        description="Mirror SHA-256-keyed images from S3 into a verified local store.",
    )
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    run = verbs.add_parser("run", help="run the daemon in the foreground")
    _add_config(run)

    status = verbs.add_parser("status", help="show what is wanted, present, pending and failed")
    _add_config(status)
    status.add_argument("manifest", nargs="?", help="a manifest's name in the folder, or its path")
    status.add_argument("--json", action="store_true", help="print JSON for scripts")

    wait = verbs.add_parser("wait", help="wait until a manifest's images are present")
    _add_config(wait)
    wait.add_argument("manifest", help="a manifest's name in the folder, or its path")
    wait.add_argument(
        "--timeout", type=float, default=None, metavar="SECONDS", help="give up after SECONDS (default: never)"
    )

    fetch = verbs.add_parser("fetch", help="fetch images once, without the daemon")
    _add_config(fetch)
    fetch.add_argument("items", nargs="+", metavar="HASH|URL|MANIFEST", help="hashes, image URLs or manifest files")
    fetch.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    return parser


def _settings(path: Path) -> Settings:
    return load_settings(path)


def _manifest_name(settings: Settings, given: str) -> str:
    path = Path(given)
    if path.parent != Path(".") and path.resolve().parent != settings.manifests_path.resolve():
        msg = f"{given} is not in the manifest folder {settings.manifests_path}; give its name there"
        raise ConfigError(msg)
    return path.name


def _open_state(settings: Settings) -> State:
    if not (settings.state_path / DATABASE_NAME).exists():
        msg = f"no state database in {settings.state_path}; has `herbsync run` started with this configuration?"
        raise ConfigError(msg)
    return State(settings.state_path, readonly=True)


def command_run(arguments: argparse.Namespace) -> int:
    """Run the daemon until SIGTERM or Ctrl-C."""
    from herbsync._logging import configure_logging
    from herbsync.daemon import Daemon

    settings = _settings(arguments.config)
    configure_logging(settings.log_format, settings.log_level)
    daemon = Daemon(settings)
    daemon.install_signal_handlers()
    daemon.run()
    return EXIT_OK


def command_fetch(arguments: argparse.Namespace) -> int:
    """Fetch the given images once; exit 1 if any failed or any input was invalid."""
    from herbsync._logging import configure_logging
    from herbsync.oneshot import fetch_once

    settings = _settings(arguments.config)
    configure_logging(settings.log_format, "warning")
    report = fetch_once(settings, arguments.items, progress=not arguments.no_progress)

    for problem in report.problems:
        print(f"invalid input: {problem}", file=sys.stderr)
    for digest, reason in sorted(report.failures.items()):
        print(f"failed {digest}: {reason}", file=sys.stderr)
    print(
        f"{report.requested} requested: {report.fetched} fetched, "
        f"{report.present} already present, {len(report.failures)} failed"
    )
    return EXIT_FAILED if report.failures or report.problems else EXIT_OK


def _print_table(report: dict[str, Any]) -> None:
    print(
        f"{report['manifest']}: {report['entries']} entries, {report['present']} present, "
        f"{report['pending']} pending, {report['failed']} failed"
        + (" (complete)" if report["complete"] else "")
    )
    for failure in report["failures"]:
        label = f"{failure['label']}: " if failure.get("label") else ""
        print(f"  failed  {label}{failure['sha256']}  {failure['kind']}: {failure['reason']}")
    for problem in report["invalid_lines"]:
        print(f"  invalid line {problem['line']}: {problem['text']!r}: {problem['reason']}")


def command_status(arguments: argparse.Namespace) -> int:
    """Print the totals, or one manifest's status report."""
    settings = _settings(arguments.config)
    state = _open_state(settings)
    try:
        if arguments.manifest:
            name = _manifest_name(settings, arguments.manifest)
            report = manifest_status(state, name)
            if report is None:
                print(f"manifest {name!r} is not known to herbsync yet", file=sys.stderr)
                return EXIT_FAILED
            reports = [report]
        else:
            reports = [manifest_status(state, name) for name in state.manifest_names()]
        totals = state.totals()
    finally:
        state.close()

    if arguments.json:
        print(json.dumps({"totals": totals, "manifests": reports}, indent=2))
        return EXIT_OK

    print(
        f"{totals['wanted']} wanted, {totals['present']} present, "
        f"{totals['pending']} pending, {totals['failed']} failed"
    )
    for report in reports:
        if report is not None:
            _print_table(report)
    return EXIT_OK


def command_wait(arguments: argparse.Namespace) -> int:
    """Wait for a manifest: 0 when all present, 1 when settled with failures, 2 on timeout."""
    settings = _settings(arguments.config)
    name = _manifest_name(settings, arguments.manifest)
    deadline = None if arguments.timeout is None else time.monotonic() + arguments.timeout

    while True:
        report = _read_report(settings, name)
        if report is not None and report["complete"]:
            print(f"{name}: all {report['entries']} images present")
            return EXIT_OK
        if report is not None and report["settled"] and report["entries"] > 0:
            print(f"{name}: {report['failed']} of {report['entries']} images failed")
            for failure in report["failures"]:
                print(f"  {failure['sha256']}  {failure['kind']}: {failure['reason']}")
            return EXIT_FAILED
        if deadline is not None and time.monotonic() >= deadline:
            pending = "unknown" if report is None else report["pending"]
            print(f"{name}: timed out with {pending} images still pending", file=sys.stderr)
            return EXIT_TIMEOUT
        time.sleep(0.2)


def _read_report(settings: Settings, name: str) -> dict[str, Any] | None:
    if not (settings.state_path / DATABASE_NAME).exists():
        return None
    state = State(settings.state_path, readonly=True)
    try:
        return manifest_status(state, name)
    finally:
        state.close()


COMMANDS = {
    "run": command_run,
    "status": command_status,
    "wait": command_wait,
    "fetch": command_fetch,
}


def main(argv: list[str] | None = None) -> int:
    """Run the ``herbsync`` command line; return the exit status."""
    arguments = build_parser().parse_args(argv)
    try:
        return COMMANDS[arguments.verb](arguments)
    except ConfigError as error:
        print(f"herbsync: {error}", file=sys.stderr)
        return EXIT_USAGE
    except HerbsyncError as error:
        print(f"herbsync: {error}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
