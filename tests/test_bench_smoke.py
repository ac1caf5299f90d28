"""The benchmark's quick mode runs end to end, so ``python -m bench`` cannot rot.

It checks that every tool mirrored every object and that the report has a row
per tool. It never checks speed: timings on a shared 2-core machine vary too
much to assert on.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from herbsync.digest import calculate_sha256


REPOSITORY = Path(__file__).resolve().parent.parent
# Only keeps a broken build from hanging; the quick run takes about 25 s.
RUN_TIMEOUT = 600


def _run_quick_benchmark(workdir: Path) -> dict[str, Any]:
    results_path = workdir / "results.json"
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--workdir",
            str(workdir),
            "--json",
            str(results_path),
            "--markdown",
            str(workdir / "report.md"),
        ],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    output = f"stdout:\n{completed.stdout[-6000:]}\nstderr:\n{completed.stderr[-6000:]}"
    assert completed.returncode == 0, output
    results: dict[str, Any] = json.loads(results_path.read_text(encoding="utf-8"))
    return results


def _table_rows(report: str, set_name: str) -> list[str]:
    """Return the first cell of each row of a set's mirror table."""
    section = report.split(f"#### {set_name}:", 1)[1].split("\n\n", 2)[1]
    rows = [line for line in section.splitlines() if line.startswith("| ")][2:]
    return [row.split("|")[1].strip() for row in rows]


def test_quick_benchmark_mirrors_every_object(tmp_path):
    """Every installed tool ends with every object, and each has a report row per set."""
    results = _run_quick_benchmark(tmp_path)
    report = (tmp_path / "report.md").read_text(encoding="utf-8")
    ran = {run["tool"] for run in results["runs"] if run["kind"] == "mirror"}
    noop_tools = {run["tool"] for run in results["runs"] if run["kind"] == "noop"}

    # Peers that are not installed are skipped; herbsync always runs.
    print(f"tools run: {sorted(ran)}; skipped: {results['skipped']}")
    assert "herbsync" in ran
    assert ran | set(results["skipped"]) == {"herbsync", "herbsync-fetch", "rclone", "s5cmd", "aws"}
    assert len(results["sets"]) == 3
    assert {"herbsync", "herbsync-restart"} <= noop_tools

    for data_set in results["sets"]:
        digests = Path(data_set["manifest"]).read_text(encoding="utf-8").split()
        assert len(digests) == data_set["count"]
        assert set(data_set["targets"]) == ran

        for tool, target in data_set["targets"].items():
            for digest in digests:
                stored = Path(target) / digest[0:2] / digest[2:4] / f"{digest}.jpg"
                assert stored.is_file(), f"{tool} did not mirror {digest} of {data_set['name']}"
                assert calculate_sha256(stored) == digest, f"{tool} stored wrong bytes for {digest}"

        assert sorted(_table_rows(report, data_set["name"])) == sorted(ran)

    failed = [run for run in results["runs"] if run["error"] or run["missing"] or run["wrong"]]
    assert failed == []
