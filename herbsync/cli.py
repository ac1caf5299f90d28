"""The ``herbsync`` command: run the daemon and the one-shot verbs."""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from herbsync.config import DEFAULT_CONFIG_PATH, Settings, load_settings
from herbsync.errors import ConfigError, HerbsyncError
from herbsync.state import DATABASE_NAME, State
from herbsync.status import manifest_status, read_store_report
from herbsync.upload import read_report


if TYPE_CHECKING:
    from herbsync.evict import EvictionPlan, EvictionResult
    from herbsync.verify import VerifyReport


EXIT_OK = 0
EXIT_FAILED = 1
EXIT_TIMEOUT = 2
EXIT_USAGE = 64

# Keys whose values are never printed.
SECRET_WORDS = ("secret", "password", "token", "access_key", "credential")


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

    config = verbs.add_parser("config", help="check a configuration file")
    config_verbs = config.add_subparsers(dest="config_verb", required=True, metavar="ACTION")
    check = config_verbs.add_parser("check", help="validate a file and print the effective settings")
    _add_config(check)
    check.add_argument("file", nargs="?", type=Path, help="the file to check (default: --config)")

    put = verbs.add_parser("put", help="upload image files once to the [upload.target] bucket, leaving them in place")
    _add_config(put)
    put.add_argument("files", nargs="+", type=Path, metavar="FILE", help="image files to upload")
    put.add_argument("--no-progress", action="store_true", help="do not show a progress bar")

    fetch = verbs.add_parser("fetch", help="fetch images once, without the daemon")
    _add_config(fetch)
    fetch.add_argument("items", nargs="+", metavar="HASH|URL|MANIFEST", help="hashes, image URLs or manifest files")
    fetch.add_argument("--no-progress", action="store_true", help="do not show a progress bar")

    verify = verbs.add_parser("verify", help="hash stored images now and quarantine those that do not match")
    _add_config(verify)
    targets = verify.add_mutually_exclusive_group(required=True)
    targets.add_argument("--all", action="store_true", help="verify every image in the store")
    targets.add_argument("digests", nargs="*", default=[], metavar="HASH", help="SHA-256 of an image to verify")
    verify.add_argument("--workers", type=int, default=2, metavar="N", help="hashing threads (default: 2)")
    verify.add_argument("--no-progress", action="store_true", help="do not show a progress bar")

    gc = verbs.add_parser("gc", help="remove unwanted images until the store fits [store] max_size")
    _add_config(gc)
    gc.add_argument("--dry-run", action="store_true", help="list what would be removed and the space freed")
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
    if not report.synced:
        print(
            "error: syncing the store's filesystem failed, so the fetched images may not be on disk yet; "
            "check the disk (see store.sync_failed in the log). The next start hashes them again.",
            file=sys.stderr,
        )
    print(
        f"{report.requested} requested: {report.fetched} fetched, "
        f"{report.present} already present, {len(report.failures)} failed"
    )
    return EXIT_FAILED if report.failures or report.problems or not report.synced else EXIT_OK


def _masked(value: Any, key: str = "") -> Any:
    """Return ``value`` with anything that looks like a secret replaced by asterisks."""
    if isinstance(value, dict):
        return {name: _masked(item, name) for name, item in value.items()}
    if isinstance(value, list):
        return [_masked(item, key) for item in value]
    if any(word in key.lower() for word in SECRET_WORDS):
        return "********"
    return value


def command_put(arguments: argparse.Namespace) -> int:
    """Upload files once and print each one's SHA-256 and object key: 0 if all went up, else 1."""
    from herbsync.upload import put_files

    settings = _settings(arguments.config)
    if settings.upload is None:
        msg = f"{arguments.config} has no [upload] section; add [upload.target] with the bucket to upload to"
        raise ConfigError(msg)
    target = settings.upload.build_target()
    results = put_files(arguments.files, target, progress=not arguments.no_progress, options=settings.upload.transfer)
    return EXIT_OK if len(results) == len(arguments.files) else EXIT_FAILED


def _json_value(value: Any) -> Any:
    """Return a JSON-friendly form of a setting that json cannot write by itself."""
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    return str(value)


def command_config(arguments: argparse.Namespace) -> int:
    """Validate a configuration file and print its effective settings as JSON."""
    path = arguments.file or arguments.config
    settings = load_settings(path)
    effective = {
        name: str(value) if isinstance(value, Path) else value
        for name, value in dataclasses.asdict(settings).items()
    }
    print(f"{path}: valid")
    print(json.dumps(_masked(effective), indent=2, default=_json_value))
    return EXIT_OK


def _print_uploads(report: dict[str, Any]) -> None:
    print(f"uploads from {report.get('inbox')}: {report.get('failed', 0)} failing")
    for failure in report.get("failures", []):
        print(f"  upload failed  {failure.get('path')}  {failure.get('kind')}: {failure.get('reason')}")


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
                print(
                    f"manifest {name!r} is not known to herbsync: the daemon reads manifests in "
                    f"{settings.manifests_path}; run `herbsync status` to list the ones it knows",
                    file=sys.stderr,
                )
                return EXIT_FAILED
            reports = [report]
        else:
            reports = [manifest_status(state, name) for name in state.manifest_names()]
        totals = state.totals()
    finally:
        state.close()
    uploads = read_report(settings.state_path) if settings.upload is not None else None
    store = read_store_report(settings.state_path) if settings.max_size is not None else None

    if arguments.json:
        print(json.dumps({"totals": totals, "manifests": reports, "uploads": uploads, "store": store}, indent=2))
        return EXIT_OK

    print(
        f"{totals['wanted']} wanted, {totals['present']} present, "
        f"{totals['pending']} pending, {totals['failed']} failed"
    )
    if uploads is not None:
        _print_uploads(uploads)
    if store is not None and store.get("over_capacity"):
        print(
            f"store over capacity: wanted images take {store['wanted_bytes']} bytes, "
            f"more than [store] max_size = {store['max_size']}; nothing wanted is evicted, raise the cap or free disk"
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
            if report is None:
                print(
                    f"{name}: timed out before the daemon read this manifest; check that it is in "
                    f"{settings.manifests_path} and that `herbsync run` is running",
                    file=sys.stderr,
                )
            else:
                print(f"{name}: timed out with {report['pending']} images still pending", file=sys.stderr)
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


def command_verify(arguments: argparse.Namespace) -> int:
    """Hash stored images now; exit 1 listing each image that is corrupt, unreadable or missing."""
    from herbsync._logging import configure_logging
    from herbsync.digest import extract_sha256_from_url
    from herbsync.errors import InvalidDigest
    from herbsync.store import Store
    from herbsync.verify import verify_store

    settings, _ = _settings_and_max_size(arguments.config)
    configure_logging(settings.log_format, "warning")
    if arguments.workers < 1:
        print(f"herbsync: --workers {arguments.workers} is invalid: expected 1 or more", file=sys.stderr)
        return EXIT_USAGE
    try:
        digests = None if arguments.all else [extract_sha256_from_url(item) for item in arguments.digests]
    except InvalidDigest as error:
        print(f"herbsync: {error}", file=sys.stderr)
        return EXIT_USAGE

    has_state = (settings.state_path / DATABASE_NAME).exists()
    state = State(settings.state_path) if has_state else None
    try:
        report = verify_store(
            Store(settings.store_path), state, digests, arguments.workers, progress=not arguments.no_progress
        )
    finally:
        if state is not None:
            state.close()
    return _print_verify_report(report)


def _print_verify_report(report: VerifyReport) -> int:
    from herbsync.units import format_size

    for corruption in report.corrupt:
        where = f"moved to {corruption.quarantine}" if corruption.quarantine else "could not be moved to quarantine"
        print(f"corrupt {corruption.digest}: {corruption.path} hashes to {corruption.actual}; {where}", file=sys.stderr)
    for path, error in report.unreadable:
        print(f"unreadable {path}: {error}", file=sys.stderr)
    for digest in report.missing:
        print(f"missing {digest}: not in the store", file=sys.stderr)
    if report.forgotten:
        print(
            f"{len(report.forgotten)} verified images had no file, so their records were dropped; "
            "the daemon fetches them again if a manifest wants them"
        )
    print(
        f"verified {report.files} files, {format_size(report.bytes)} in {report.seconds:.1f} s: "
        f"{report.good} good, {len(report.corrupt)} corrupt, {len(report.unreadable)} unreadable, "
        f"{len(report.missing)} missing"
    )
    if report.stopped:
        print("interrupted: not every file was checked", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK if report.ok else EXIT_FAILED


def _settings_and_max_size(path: Path) -> tuple[Settings, int | None]:
    """Return the settings and ``[store] max_size`` in bytes, or None when no size limit is set."""
    settings = load_settings(path)
    return settings, settings.max_size


def command_gc(arguments: argparse.Namespace) -> int:
    """Remove unwanted images until the store fits; exit 1 if wanted images alone exceed max_size."""
    from herbsync._logging import configure_logging
    from herbsync.evict import evict, plan_eviction
    from herbsync.store import Store

    settings, max_size = _settings_and_max_size(arguments.config)
    configure_logging(settings.log_format, "warning")
    if max_size is None:
        print(f"no [store] max_size is set in {arguments.config}; gc removes nothing")
        return EXIT_OK

    _open_state(settings).close()
    state = State(settings.state_path)
    store = Store(settings.store_path)
    try:
        plan = plan_eviction(store, state, max_size)
        result = None if arguments.dry_run else evict(plan, store, state)
    finally:
        state.close()
    return _print_eviction(plan, result)


def _print_eviction(plan: EvictionPlan, result: EvictionResult | None) -> int:
    from herbsync.units import format_size

    before = format_size(plan.total_bytes)
    limit = format_size(plan.max_size)
    if result is None:
        for entry in plan.removals:
            used = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry.last_used))
            print(f"would remove {entry.path}  {format_size(entry.size)}  last used {used}")
        print(
            f"would remove {_files(len(plan.removals))}, freeing {format_size(plan.bytes_freed)}: "
            f"the store would go from {before} to {format_size(plan.total_after)}; max_size is {limit}"
        )
    else:
        print(
            f"removed {_files(result.removed)}, freeing {format_size(result.bytes_freed)}: "
            f"the store went from {before} to {format_size(result.total_bytes)}; max_size is {limit}"
        )
    if result is not None and result.failed:
        print(f"{_files(result.failed)} could not be removed; the log names each error", file=sys.stderr)
        return EXIT_FAILED
    if plan.over_capacity:
        print(
            f"wanted images alone take {format_size(plan.wanted_bytes)}, more than max_size "
            f"{format_size(plan.max_size)}; they are never evicted. Raise [store] max_size or withdraw manifests.",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return EXIT_OK


def _files(count: int) -> str:
    return f"{count} file" if count == 1 else f"{count} files"


COMMANDS = {
    "run": command_run,
    "status": command_status,
    "wait": command_wait,
    "fetch": command_fetch,
    "verify": command_verify,
    "gc": command_gc,
    "config": command_config,
    "put": command_put,
}


def main(argv: list[str] | None = None) -> int:
    """Run the ``herbsync`` command line; return the exit status."""
    arguments = build_parser().parse_args(argv)
    if arguments.verb != "run":
        # Let `herbsync status | head` end quietly, as other commands do.
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
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
