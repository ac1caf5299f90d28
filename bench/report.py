"""Render benchmark results as Markdown and place them in BENCHMARKS.md between markers."""

from __future__ import annotations

from pathlib import Path

from bench.results import MIRROR, NOOP, TUNE, Results, RunRecord, SetInfo, median_of


START_MARKER = "<!-- bench:results:start -->"
END_MARKER = "<!-- bench:results:end -->"
REFERENCE_TOOL = "herbsync"

NOOP_DESCRIPTIONS = {
    "herbsync": "same manifest dropped again into the running daemon, to a fresh complete report",
    "herbsync-restart": "daemon restart, same manifest, to complete report",
    "herbsync-fetch": "`herbsync fetch` again",
    "rclone": "`rclone copy` again (destination checked)",
    "s5cmd": "`s5cmd sync`",
    "aws": "`aws s3 sync`",
}


def _number(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _failed(runs: list[RunRecord]) -> str:
    failures = [run for run in runs if not run.ok]
    return "" if not failures else f" ({len(failures)} of {len(runs)} failed)"


def _ratios(results: Results, info: SetInfo, tool: str) -> str:
    """Return herbsync's time divided by ``tool``'s, for each round both completed."""
    if tool == REFERENCE_TOOL:
        return "—"
    reference = {run.round: run for run in results.select(info.name, REFERENCE_TOOL, MIRROR) if run.ok}
    ratios = []
    for run in results.select(info.name, tool, MIRROR):
        base = reference.get(run.round)
        if run.ok and base is not None and run.seconds > 0:
            ratios.append(f"{base.seconds / run.seconds:.2f}")
    return ", ".join(ratios) or "—"


def mirror_table(results: Results, info: SetInfo) -> list[str]:
    """Return the table of mirror runs of one set: one row per tool."""
    lines = [
        f"#### {info.name}: {info.description} ({info.total_bytes / 1e6:,.0f} MB)",
        "",
        "| tool | concurrency | median s | MB/s | CPU s | peak RSS MB | server CPU s | sync after s "
        "| herbsync ÷ tool, per round |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for tool in results.tools():
        runs = results.select(info.name, tool, MIRROR)
        if not runs:
            continue
        seconds = median_of(runs, "seconds")
        rate = None if not seconds else info.total_bytes / seconds / 1e6
        rss = median_of(runs, "peak_rss")
        lines.append(
            f"| {tool}{_failed(runs)} | {info.settings.get(tool, '—')} | {_number(seconds)} | {_number(rate, 0)} "
            f"| {_number(median_of(runs, 'cpu_seconds'))} | {_number(None if rss is None else rss / 1e6, 0)} "
            f"| {_number(median_of(runs, 'server_cpu_seconds'))} | {_number(median_of(runs, 'sync_seconds'))} "
            f"| {_ratios(results, info, tool)} |"
        )
    return [*lines, ""]


def noop_table(results: Results) -> list[str]:
    """Return the table of runs on a target that already contains every object."""
    lines = [
        "| set | tool | what | median s | CPU s | herbsync ÷ tool |",
        "| --- | --- | --- | ---: | ---: | ---: |",
    ]
    for info in results.sets:
        reference = median_of(results.select(info.name, REFERENCE_TOOL, NOOP), "seconds")
        for tool in results.tools():
            runs = results.select(info.name, tool, NOOP)
            if not runs:
                continue
            seconds = median_of(runs, "seconds")
            ratio = None if tool == REFERENCE_TOOL or not seconds or reference is None else reference / seconds
            lines.append(
                f"| {info.name} | {tool}{_failed(runs)} | {NOOP_DESCRIPTIONS.get(tool, 'again')} "
                f"| {_number(seconds)} | {_number(median_of(runs, 'cpu_seconds'))} | {_number(ratio)} |"
            )
    return [*lines, ""]


def first_file_table(results: Results) -> list[str]:
    """Return the table of times from the manifest drop to the first verified image on disk."""
    lines = ["| set | median ms | per round ms |", "| --- | ---: | --- |"]
    for info in results.sets:
        runs = [run for run in results.select(info.name, REFERENCE_TOOL, MIRROR) if run.ok]
        values = [run.first_file_seconds * 1000 for run in runs if run.first_file_seconds is not None]
        median = median_of(runs, "first_file_seconds")
        per_round = ", ".join(f"{value:.0f}" for value in values) or "—"
        lines.append(f"| {info.name} | {_number(None if median is None else median * 1000, 0)} | {per_round} |")
    return [*lines, ""]


def tuning_table(results: Results) -> list[str]:
    """Return the seconds each peer took at each tried concurrency, and the one chosen."""
    tuned = [run for run in results.runs if run.kind == TUNE]
    if not tuned:
        return ["No tuning runs: every tool ran at its default concurrency.", ""]

    lines = ["| set | tool | seconds at each concurrency | chosen |", "| --- | --- | --- | ---: |"]
    for info in results.sets:
        for tool in results.tools():
            runs = results.select(info.name, tool, TUNE)
            if not runs:
                continue
            tried = ", ".join(f"{run.setting}: {_number(run.seconds) if run.ok else 'failed'}" for run in runs)
            lines.append(f"| {info.name} | {tool} | {tried} | {info.settings.get(tool, '—')} |")
    return [*lines, ""]


def header(results: Results) -> list[str]:
    """Return the date, machine, versions, commands and skipped tools."""
    machine = results.machine
    lines = [
        f"### Run of {results.started_at}",
        "",
        f"Command: `{results.command}`",
        "",
        f"Machine: {machine['cores']} cores ({machine['cpu']}), {machine['memory']} memory, "
        f"Linux {machine['kernel']}, disk {machine['disk']}. Client and server share the machine.",
        "",
        f"1-minute load average: {machine.get('load_at_start', '?')} at the start, "
        f"{machine.get('load_at_end', '?')} at the end. A load above the core count means that other work "
        "competed for the cores.",
        "",
        f"Rounds: {results.rounds}.",
        "",
        "| software | version |",
        "| --- | --- |",
    ]
    lines += [f"| {name} | {version} |" for name, version in results.versions.items()]
    lines += ["", "| tool | mirror command (N: the concurrency in the tables) |", "| --- | --- |"]
    lines += [f"| {name} | `{command}` |" for name, command in results.commands.items()]
    lines.append("")
    if results.skipped:
        lines += ["Skipped tools:", ""]
        lines += [f"- {name}: {reason}" for name, reason in results.skipped.items()]
        lines.append("")
    return lines


def render(results: Results) -> str:
    """Return the whole results section as Markdown."""
    lines = header(results)
    lines += ["#### Mirror into an empty folder", ""]
    for info in results.sets:
        lines += mirror_table(results, info)
    lines += ["#### Run again on a complete folder", ""]
    lines += noop_table(results)
    lines += [
        "#### herbsync: manifest drop to first verified image on disk",
        "",
        "The daemon fetches up to 16 images at once, so with large",
        "images the first one is complete only when about 16 of them have been downloaded together.",
        "",
    ]
    lines += first_file_table(results)
    lines += ["#### Concurrency tuning (one run each, before the rounds)", ""]
    lines += tuning_table(results)
    return "\n".join(lines)


def write_markdown(path: Path, section: str) -> None:
    """Replace the text between the result markers in ``path`` with ``section``.

    A file without markers gets them, with the section, appended.
    """
    block = f"{START_MARKER}\n{section.rstrip()}\n{END_MARKER}\n"
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    start = text.find(START_MARKER)
    end = text.find(END_MARKER)
    if start == -1 or end == -1 or end < start:
        separator = "\n" if text and not text.endswith("\n") else ""
        path.write_text(text + separator + block, encoding="utf-8")
        return
    rest = text[end + len(END_MARKER) :].lstrip("\n")
    path.write_text(text[:start] + block + ("\n" + rest if rest else ""), encoding="utf-8")
