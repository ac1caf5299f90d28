"""Command line of the benchmark: ``python -m bench`` from the repository root.

Starts SeaweedFS on 127.0.0.1, loads each data set, mirrors it with herbsync
and each installed peer, and writes the results as JSON and Markdown.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.datasets import UPLOAD_THREADS, DataSet, select_sets, upload_set
from bench.herbsync_daemon import HerbsyncDaemon
from bench.herbsync_fetch import HerbsyncFetch
from bench.machine import describe_machine, load_average, software_versions
from bench.measure import ServerMeter
from bench.peers import all_peers
from bench.report import render, write_markdown
from bench.results import Results, SetInfo, load_results
from bench.session import Options, SetSession
from bench.tool import Tool
from herbsync.testing.seaweed import SeaweedServer


REPOSITORY = Path(__file__).resolve().parent.parent
DEFAULT_MARKDOWN = REPOSITORY / "BENCHMARKS.md"


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``python -m bench``."""
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark herbsync against rclone, s5cmd and the AWS CLI on a local SeaweedFS server.",
    )

    parser.add_argument(
        "--sets", help="comma-separated data sets: thumbnails, web, scans (default: all three)"
    )
    parser.add_argument(
        "--tools", help="comma-separated tools: herbsync, herbsync-fetch, rclone, s5cmd, aws (default: all installed)"
    )
    parser.add_argument("--rounds", type=int, help="rounds of every tool on every set (default: 3, or 1 with --quick)")
    parser.add_argument(
        "--quick", action="store_true", help="a few small objects, 1 round, no tuning, hashes checked: a smoke run"
    )

    parser.add_argument("--no-tune", action="store_true", help="run every peer at its default concurrency")
    parser.add_argument(
        "--verify-hashes", action="store_true", help="hash every mirrored file after each run (always on with --quick)"
    )

    parser.add_argument(
        "--workdir",
        type=Path,
        help="folder for the server data, targets and logs, kept afterwards (default: a temporary folder, removed)",
    )
    parser.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    parser.add_argument(
        "--render",
        type=Path,
        metavar="JSON",
        help="run nothing: write the results in a file saved with --json into the Markdown file",
    )
    parser.add_argument(
        "--markdown",
        type=Path,
        help=f"write the results section into this Markdown file (default: {DEFAULT_MARKDOWN.name} at the "
        "repository root; with --quick, only when given)",
    )
    return parser


def choose_tools(names: str | None) -> tuple[list[Tool], dict[str, str]]:
    """Return the installed tools among ``names`` (all when None) and why the others are skipped."""
    everything: list[Tool] = [HerbsyncDaemon(), HerbsyncFetch(), *all_peers()]
    known = {tool.name: tool for tool in everything}
    requested = list(known) if not names else [name.strip() for name in names.split(",") if name.strip()]
    unknown = [name for name in requested if name not in known]
    if unknown:
        msg = f"unknown tool {unknown[0]!r}; choose from {', '.join(known)}"
        raise SystemExit(msg)

    tools: list[Tool] = []
    skipped: dict[str, str] = {}
    for name in requested:
        reason = known[name].unavailable_reason()
        if reason is None:
            tools.append(known[name])
        else:
            skipped[name] = reason
    return tools, skipped


def load_set(server: SeaweedServer, client: object, data_set: DataSet, workdir: Path) -> tuple[SetInfo, list[str]]:
    """Create the set's bucket, upload its objects and write its manifest."""
    started = time.monotonic()
    server.create_bucket(data_set.bucket)
    digests = upload_set(client, data_set)
    upload_seconds = time.monotonic() - started

    manifest = workdir / "manifests" / f"{data_set.name}.txt"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text("\n".join(digests) + "\n", encoding="utf-8")
    print(
        f"{data_set.name}: uploaded {data_set.count} objects, {data_set.total_bytes / 1e6:,.0f} MB "
        f"in {upload_seconds:.1f} s",
        flush=True,
    )
    info = SetInfo(
        data_set.name,
        data_set.description,
        data_set.count,
        data_set.size,
        data_set.bucket,
        str(manifest),
        upload_seconds,
    )
    return info, digests


def run_benchmark(arguments: argparse.Namespace, data_sets: list[DataSet], workdir: Path, keep: bool) -> Results:
    """Start the server, benchmark every set, stop the server; return the results."""
    tools, skipped = choose_tools(arguments.tools)
    rounds = arguments.rounds or (1 if arguments.quick else 3)
    options = Options(
        rounds=rounds,
        tune=not (arguments.quick or arguments.no_tune),
        verify_hashes=arguments.verify_hashes or arguments.quick,
        keep_targets=keep,
    )
    for name, reason in skipped.items():
        print(f"skipping {name}: {reason}", flush=True)

    results = Results(
        started_at=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        command=shlex.join(["python", "-m", "bench", *sys.argv[1:]]),
        quick=arguments.quick,
        rounds=rounds,
        machine={**describe_machine(workdir), "load_at_start": load_average()},
        versions=software_versions(tools),
        commands={tool.name: tool.describe() for tool in tools},
        skipped=skipped,
    )

    with SeaweedServer(workdir / "seaweed") as server:
        meter = ServerMeter(server.pid)
        client = server.client(max_pool_connections=UPLOAD_THREADS)
        for data_set in data_sets:
            info, digests = load_set(server, client, data_set, workdir)
            results.sets.append(info)
            session = SetSession(info, data_set, digests, server.endpoint_url, workdir, tools, meter, options)
            results.runs.extend(session.run())
    results.machine["load_at_end"] = load_average()
    return results


def render_saved(saved: Path, markdown: Path) -> int:
    """Write the results of an earlier run, saved with ``--json``, into ``markdown``."""
    results = Results.from_dict(load_results(saved))
    write_markdown(markdown, render(results))
    print(f"results of {saved} written to {markdown}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return 0 when every run left a complete target, else 1."""
    parser = build_parser()
    arguments = parser.parse_args(argv)
    if arguments.render is not None:
        return render_saved(arguments.render, arguments.markdown or DEFAULT_MARKDOWN)
    try:
        data_sets = select_sets(arguments.sets.split(",") if arguments.sets else None, arguments.quick)
    except ValueError as error:
        parser.error(str(error))

    keep = arguments.workdir is not None
    workdir = arguments.workdir or Path(tempfile.mkdtemp(prefix="herbsync-bench-"))
    workdir = workdir.absolute()
    workdir.mkdir(parents=True, exist_ok=True)

    try:
        results = run_benchmark(arguments, data_sets, workdir, keep)
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)

    section = render(results)
    print(section)
    if arguments.json:
        results.save(arguments.json)
    markdown = arguments.markdown or (None if arguments.quick else DEFAULT_MARKDOWN)
    if markdown is not None:
        write_markdown(markdown, section)
        print(f"results written to {markdown}")

    failed = [run for run in results.runs if not run.ok]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
