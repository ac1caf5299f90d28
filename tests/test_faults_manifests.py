"""Hostile manifests: random bytes, NULs, bad UTF-8, huge lines, traversal, links, FIFOs.

The property tests run the drop folder in this process against a real state
database. The end-to-end test drops the same kinds of files into a running
daemon. No test may see a crash, a write outside the store, or a valid entry lost.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import threading
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from herbsync.digest import is_digest
from herbsync.drop_folder import DropFolder
from herbsync.manifests import Entry, read_manifest
from herbsync.state import State
from herbsync.status import write_status
from herbsync.store import Store


DIGESTS = [hashlib.sha256(str(number).encode()).hexdigest() for number in range(8)]
LAYOUT_EXTENSION = re.compile(r"[a-z0-9]{1,8}")
MIB = 1024 * 1024

# Lines that try to steer a path out of the store with hash-shaped text.
TRAVERSAL_LINES = [
    f"../../{DIGESTS[0]}",
    f"{DIGESTS[0]}/../../etc/passwd",
    f"{DIGESTS[0]}  ../../../../tmp/escape.jpg",
    f"{DIGESTS[0]}  ../../x.jpg/../../y",
    f"SHA256 (../../../etc/{DIGESTS[0]}.jpg) = {DIGESTS[0]}",
    f"https://example.org/../../{DIGESTS[0]}.jpg",
    f"s3://bucket/images/../../../{DIGESTS[0]}.jpg",
    f"/{DIGESTS[0][0:2]}/{DIGESTS[0][2:4]}/../../../{DIGESTS[0]}.jpg",
    f"{DIGESTS[0]}.jpg/../../../passwd",
    f"..\\..\\{DIGESTS[0]}.jpg",
]

hostile_line = st.one_of(
    st.sampled_from(TRAVERSAL_LINES).map(str.encode),
    st.binary(max_size=40).map(lambda data: data.replace(b"\n", b"")),
    st.text(max_size=40).map(lambda text: text.replace("\n", "").encode("utf-8", "surrogatepass")),
    st.sampled_from([b"\x00" * 10, b"\xff\xfe\xfd", b"\xc3\x28", b"\xed\xa0\x80", b"\r\r\r", b"{", b"[x]"]),
)


def _wants(state: State) -> list[tuple[str, str | None]]:
    return list(state.connection.execute("SELECT digest, extension FROM wants ORDER BY digest"))


def _assert_safe_wants(state: State, store: Store) -> None:
    root = store.root.resolve()
    for digest, extension in _wants(state):
        assert is_digest(digest)
        assert extension is None or LAYOUT_EXTENSION.fullmatch(extension)
        target = store.path_for(digest, extension or "jpg").resolve()
        assert target.is_relative_to(root)


class FolderUnderTest:
    """A drop folder over a real state database; each read uses a fresh manifest name."""

    def __init__(self, root: Path) -> None:
        self.manifests = root / "manifests"
        self.manifests.mkdir(parents=True, exist_ok=True)
        self.state = State(root / "state")
        self.folder = DropFolder(self.manifests, self.state)
        self.store = Store(root / "store")
        self.count = 0

    def read(self, content: bytes) -> tuple[str, Any]:
        self.count += 1
        name = f"m{self.count}.txt"
        (self.manifests / name).write_bytes(content)
        return name, self.folder.read(name)

    def forget(self, name: str) -> None:
        (self.manifests / name).unlink()
        self.folder.withdraw(name)


@pytest.fixture
def under_test(tmp_path: Path) -> Iterator[FolderUnderTest]:
    folder = FolderUnderTest(tmp_path)
    yield folder
    folder.state.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.binary(max_size=3000))
def test_random_bytes_never_break_drop_folder(under_test, content):
    """Any bytes are read without raising; only valid digests and plain extensions become wants."""
    name, result = under_test.read(content)

    assert result is not None
    _assert_safe_wants(under_test.state, under_test.store)
    assert write_status(under_test.state, name) is not None
    under_test.forget(name)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lines=st.lists(
        st.tuples(hostile_line, st.lists(st.sampled_from(DIGESTS), min_size=2, max_size=4)),
        max_size=12,
    )
)
def test_valid_lines_served_among_hostile_lines(under_test, lines):
    """Every valid digest is wanted whatever junk sits between them, and each junk line is reported."""
    first = DIGESTS[7]
    content = [first.encode()]
    expected = {first}
    for junk, digests in lines:
        content.append(junk)
        content.extend(digest.encode() for digest in digests)
        expected.update(digests)

    name, result = under_test.read(b"\n".join(content) + b"\n")

    wanted = {digest for digest, _ in _wants(under_test.state)}
    assert expected <= wanted
    # Some traversal lines are valid sha256sum or tag lines naming DIGESTS[0].
    assert wanted - expected <= {DIGESTS[0]}
    _assert_safe_wants(under_test.state, under_test.store)
    junk_lines = {2 + index + sum(len(d) for _, d in lines[:index]) for index in range(len(lines))}
    reported = {problem["line"] for problem in result.problems}
    assert reported <= junk_lines
    under_test.forget(name)


@pytest.mark.parametrize("line", TRAVERSAL_LINES)
def test_traversal_line_stays_in_store(line, tmp_path):
    """Hash-shaped text with ``..`` yields a problem or an entry whose store path stays inside."""
    path = tmp_path / "traversal.txt"
    path.write_text(line + "\n", encoding="utf-8")
    store = Store(tmp_path / "store")

    for item in read_manifest(path):
        if isinstance(item, Entry):
            target = store.path_for(item.digest, item.extension or "jpg").resolve()
            assert target.is_relative_to(store.root.resolve())
            assert item.key is None or ".." not in item.key.split("/")


def test_hundred_mib_line_read_in_bounded_memory(under_test):
    """One 100 MiB line is reported and skipped in chunks; the digest after it is wanted."""
    name = "huge.txt"
    with open(under_test.manifests / name, "wb") as stream:
        stream.writelines(b"a" * MIB for _ in range(100))
        stream.write(b"\n" + DIGESTS[1].encode() + b"\n")

    tracemalloc.start()
    try:
        result = under_test.folder.read(name)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert [problem["line"] for problem in result.problems] == [1]
    assert "longer than" in result.problems[0]["reason"]
    assert _wants(under_test.state) == [(DIGESTS[1], None)]
    assert peak < 16 * MIB


def test_fifo_swapped_in_after_check_does_not_block(under_test, monkeypatch):
    """A FIFO that replaces a manifest between the check and the open is reported, not waited on."""
    name = "swapped.txt"
    regular = under_test.manifests / "regular.txt"
    regular.write_text(DIGESTS[3] + "\n", encoding="utf-8")
    os.mkfifo(under_test.manifests / name)
    real_lstat = os.lstat
    # The drop folder checks the path with lstat first. Return the status of
    # a regular file, as if the FIFO had replaced it just after the check.
    monkeypatch.setattr(
        "herbsync.drop_folder.os.lstat",
        lambda path: real_lstat(regular) if Path(path).name == name else real_lstat(path),
    )
    finished = threading.Event()
    outcome: list[Any] = []

    def read() -> None:
        outcome.append(under_test.folder.read(name))
        finished.set()

    threading.Thread(target=read, daemon=True).start()
    returned = finished.wait(30)
    if not returned:
        with open(under_test.manifests / name, "wb"):  # unblock the reader before failing
            pass

    assert returned, "reading a FIFO blocked"
    assert outcome == [None]
    assert _wants(under_test.state) == []


def test_symlink_swapped_in_after_check_not_followed(under_test, tmp_path, monkeypatch):
    """A symbolic link that replaces a manifest between the check and the open is not read."""
    outside = tmp_path / "outside.txt"
    outside.write_text(DIGESTS[4] + "\n", encoding="utf-8")
    name = "swapped.txt"
    regular = under_test.manifests / "regular.txt"
    regular.write_text(DIGESTS[3] + "\n", encoding="utf-8")
    (under_test.manifests / name).symlink_to(outside)
    real_lstat = os.lstat
    monkeypatch.setattr(
        "herbsync.drop_folder.os.lstat",
        lambda path: real_lstat(regular) if Path(path).name == name else real_lstat(path),
    )

    result = under_test.folder.read(name)

    assert result is None
    assert _wants(under_test.state) == []


@pytest.mark.parametrize(
    "name",
    [
        os.fsdecode(b"latin-1 \xe9t\xe9.txt"),
        "x" * 251 + ".txt",
    ],
    ids=["not_utf8", "too_long"],
)
def test_unusable_file_name_skipped(name, under_test):
    """A name that cannot key the state or name a status report is skipped, not a crash."""
    (under_test.manifests / name).write_text(DIGESTS[5] + "\n", encoding="utf-8")
    (under_test.manifests / "fine.txt").write_text(DIGESTS[6] + "\n", encoding="utf-8")

    results = under_test.folder.reconcile()

    assert [result.name for result in results] == ["fine.txt"]
    assert under_test.folder.read(name) is None
    assert _wants(under_test.state) == [(DIGESTS[6], None)]
    for known in under_test.state.manifest_names():
        assert write_status(under_test.state, known) is not None


# End to end -------------------------------------------------------------------


def _files_under(folder: Path, skip: list[Path]) -> set[Path]:
    return {
        path
        for path in folder.rglob("*")
        if not path.is_dir() and not any(path.is_relative_to(excluded) for excluded in skip)
    }


def test_hostile_drops_served_nothing_outside(seaweed, bucket, s3_table, specimens, start_daemon, tmp_path):
    """The daemon survives every kind of hostile manifest at once and serves each valid entry."""
    digests = seaweed.upload_images(bucket, specimens[:6])
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "elsewhere.txt").write_text(digests[5] + "\n", encoding="utf-8")
    daemon = start_daemon(s3_table, root=tmp_path / "daemon")
    before = _files_under(tmp_path, [daemon.root])
    manifests = daemon.manifests

    (manifests / "random.txt").write_bytes(os.urandom(64 * 1024))
    (manifests / "nul.txt").write_bytes(f"{digests[0]}\nab\x00\x00cd\n{digests[1]}\n".encode())
    (manifests / "utf8.txt").write_bytes(b"bad \xff\n" + digests[2].encode() + b"\n\xc3\x28\n")
    with open(manifests / "huge-line.txt", "wb") as stream:
        stream.writelines(b"7" * MIB for _ in range(100))
        stream.write(b"\n" + digests[3].encode() + b"\n")
    (manifests / "duplicates.txt").write_bytes((digests[4] + "\n").encode() * 1_000_000)
    (manifests / "traversal.txt").write_text("\n".join(TRAVERSAL_LINES) + "\n", encoding="utf-8")
    (manifests / "link.txt").symlink_to(outside / "elsewhere.txt")
    os.mkfifo(manifests / "pipe.txt")
    (manifests / os.fsdecode(b"bad-\xff.txt")).write_text(digests[5] + "\n", encoding="utf-8")
    (manifests / ("n" * 251 + ".txt")).write_text(digests[5] + "\n", encoding="utf-8")
    daemon.drop_manifest("marker.txt", digests[0])
    # Links, FIFOs and unusable names send no file event that counts, so
    # a rescan (SIGHUP) is what finds and reports them.
    daemon.process.send_signal(signal.SIGHUP)

    reports = {
        name: daemon.wait_settled(name)
        for name in ("marker.txt", "nul.txt", "utf8.txt", "huge-line.txt", "duplicates.txt", "random.txt")
    }
    expected_skips = {"link.txt", "pipe.txt", "bad-\\xff.txt", "n" * 251 + ".txt"}
    skipped = wait_until(
        lambda: expected_skips <= {event["manifest"] for event in daemon.events("manifest.skipped")},
        f"reports of the skipped files; log:\n{daemon.log()[-3000:]}",
    )

    assert daemon.process.poll() is None
    assert reports["nul.txt"]["present"] == 2
    assert [problem["line"] for problem in reports["nul.txt"]["invalid_lines"]] == [2]
    assert reports["utf8.txt"]["present"] == 1
    assert [problem["line"] for problem in reports["utf8.txt"]["invalid_lines"]] == [1, 3]
    assert reports["huge-line.txt"]["present"] == 1
    assert [problem["line"] for problem in reports["huge-line.txt"]["invalid_lines"]] == [1]
    assert reports["duplicates.txt"]["entries"] == 1
    assert reports["duplicates.txt"]["invalid_count"] == 0
    assert reports["duplicates.txt"]["complete"] is True
    assert reports["random.txt"]["entries"] == 0
    assert reports["random.txt"]["invalid_count"] >= 1
    assert skipped is True
    assert daemon.status("link.txt") is None
    assert not daemon.stored(digests[5]).exists()
    assert _files_under(tmp_path, [daemon.root]) == before
    for path in daemon.store.rglob("*"):
        if path.is_file() and not path.relative_to(daemon.store).parts[0].startswith("."):
            assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name.partition(".")[0]
