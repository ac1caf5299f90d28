"""Tests of manifest parsing: every format, written as real files and read back."""

from __future__ import annotations

import gzip
import re
import shutil
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from herbsync.digest import is_digest
from herbsync.manifests import MAX_PROBLEMS, Entry, Problem, read_manifest
from herbsync.manifests import tomlfile


SPECIMENS = Path(__file__).resolve().parent.parent / "samples" / "specimens"
DIGESTS = [line.split()[0] for line in (SPECIMENS / "SHA256SUMS").read_text().splitlines() if line.strip()]
A, B, C, D, E = DIGESTS[:5]

BUCKET = "devvyn.aafc-srdc.herbarium"
EXTENSION = re.compile(r"[a-z0-9]{1,8}")


def image_key(digest: str, extension: str = "jpg") -> str:
    return f"images/{digest[0:2]}/{digest[2:4]}/{digest}.{extension}"


def write(directory: Path, name: str, content: str | bytes) -> Path:
    path = directory / name
    if isinstance(content, str):
        path.write_bytes(content.encode())
    else:
        path.write_bytes(content)
    return path


def parse(path: Path) -> tuple[list[Entry], list[Problem]]:
    entries: list[Entry] = []
    problems: list[Problem] = []
    for item in read_manifest(path):
        if isinstance(item, Entry):
            entries.append(item)
        else:
            problems.append(item)
    return entries, problems


def digests_and_lines(entries: list[Entry]) -> list[tuple[str, int]]:
    return [(entry.digest, entry.line) for entry in entries]


# Line lists


def test_plain_list_comments_and_blanks(tmp_path: Path) -> None:
    content = f"# wanted specimens\n\n  {A}  \n\t{B}\t# trailing comment\n#{C}\n{D}\n\n"
    entries, problems = parse(write(tmp_path, "wanted.txt", content))

    assert problems == []
    assert digests_and_lines(entries) == [(A, 3), (B, 4), (D, 6)]
    assert entries[0] == Entry(A, 3)


def test_plain_list_crlf(tmp_path: Path) -> None:
    content = f"{A}\r\n{B}\r\n# comment\r\n{C}\r\n"
    entries, problems = parse(write(tmp_path, "crlf.txt", content))

    assert problems == []
    assert digests_and_lines(entries) == [(A, 1), (B, 2), (C, 4)]


def test_plain_list_bom(tmp_path: Path) -> None:
    content = b"\xef\xbb\xbf" + f"{A}\n{B}\n".encode()
    entries, problems = parse(write(tmp_path, "bom.txt", content))

    assert problems == []
    assert digests_and_lines(entries) == [(A, 1), (B, 2)]


def test_plain_list_uppercase(tmp_path: Path) -> None:
    content = f"{A.upper()}\n{B[:32].upper()}{B[32:]}\n"
    entries, problems = parse(write(tmp_path, "upper.txt", content))

    assert problems == []
    assert digests_and_lines(entries) == [(A, 1), (B, 2)]


def test_sha256sum_text_and_binary(tmp_path: Path) -> None:
    content = (
        f"{A}  {A}.jpg\n"
        f"{B} *scans/{B}.TIF\n"
        f"{C}  ../other folder/specimen.jpeg\n"
        f"\\{D}  back\\\\slash.png\n"
        f"{E}  no-extension\n"
    )
    entries, problems = parse(write(tmp_path, "SHA256SUMS", content))

    assert problems == []
    assert digests_and_lines(entries) == [(A, 1), (B, 2), (C, 3), (D, 4), (E, 5)]
    assert [entry.extension for entry in entries] == ["jpg", "tif", "jpg", "png", None]
    assert all(entry.key is None for entry in entries)


def test_bsd_tag_lines(tmp_path: Path) -> None:
    content = (
        f"SHA256 ({A}.jpg) = {A}\n"
        f"SHA256 (label scan.tif) = {B.upper()}\n"
        f"SHA256(plate.png)= {C}\n"
        f"SHA2-256(sheet.webp)= {D}\n"
    )
    entries, problems = parse(write(tmp_path, "tags.txt", content))

    assert problems == []
    assert digests_and_lines(entries) == [(A, 1), (B, 2), (C, 3), (D, 4)]
    assert [entry.extension for entry in entries] == ["jpg", "tif", "png", "webp"]


def test_url_list_every_form(tmp_path: Path) -> None:
    lines = [
        f"https://s3.ca-central-1.amazonaws.com/{BUCKET}/{image_key(A)}",
        f"https://{BUCKET}.s3.ca-central-1.amazonaws.com/{image_key(B, 'tif')}",
        f"s3://{BUCKET}/{image_key(C, 'PNG')}",
        f"http://127.0.0.1:8333/{image_key(D)}?versionId=3",
        f"HTTPS://{BUCKET}.s3.amazonaws.com/flat/{E}",
        f"https://s3.amazonaws.com/{BUCKET}/images%2F00%2F0e/{A}.jpeg",
    ]
    entries, problems = parse(write(tmp_path, "urls.txt", "\n".join(lines) + "\n"))

    assert problems == []
    assert digests_and_lines(entries) == [(A, 1), (B, 2), (C, 3), (D, 4), (E, 5), (A, 6)]
    assert [entry.extension for entry in entries] == ["jpg", "tif", "png", "jpg", None, "jpg"]
    assert [entry.key for entry in entries] == [
        image_key(A),
        image_key(B, "tif"),
        image_key(C, "PNG"),
        image_key(D),
        f"flat/{E}",
        image_key(A, "jpeg"),
    ]


def test_url_list_rejects_bad_urls(tmp_path: Path) -> None:
    lines = [
        f"https://s3.ca-central-1.amazonaws.com/{BUCKET}/images/readme.txt",
        f"https://s3.ca-central-1.amazonaws.com/{BUCKET}/images/../{A}.jpg",
        f"s3://{BUCKET}/images/%2e%2e/{B}.jpg",
        "http://[::1/broken",
        f"s3://{BUCKET}/{image_key(C)}",
    ]
    entries, problems = parse(write(tmp_path, "urls.txt", "\n".join(lines) + "\n"))

    assert digests_and_lines(entries) == [(C, 5)]
    assert [problem.line for problem in problems] == [1, 2, 3, 4]
    assert "<sha256>.<extension>" in problems[0].reason
    assert "'..'" in problems[1].reason
    assert "'..'" in problems[2].reason
    assert "not a valid URL" in problems[3].reason


def test_mixed_line_list(tmp_path: Path) -> None:
    content = (
        f"{A}\n"
        f"{B}  {B}.tif\n"
        f"SHA256 (c.png) = {C}\n"
        f"s3://{BUCKET}/{image_key(D)}\n"
        f"# done\n"
        f"{E.upper()}  # last one\n"
    )
    entries, problems = parse(write(tmp_path, "mixed.txt", content))

    assert problems == []
    assert digests_and_lines(entries) == [(A, 1), (B, 2), (C, 3), (D, 4), (E, 6)]
    assert [entry.extension for entry in entries] == [None, "tif", "png", "jpg", None]
    assert entries[3].key == image_key(D)


def test_invalid_lines_reported(tmp_path: Path) -> None:
    content = (
        f"{A}\n"
        f"{A[:63]}\n"
        f"{'g' * 64}\n"
        "../../etc/passwd\n"
        f"../{B}\n"
        f"{B}\n"
        f"{A}{B}\n"
        "hello world\n"
        f"{C}\n"
    )
    entries, problems = parse(write(tmp_path, "bad.txt", content))

    assert digests_and_lines(entries) == [(A, 1), (B, 6), (C, 9)]
    assert [problem.line for problem in problems] == [2, 3, 4, 5, 7, 8]
    assert [problem.text for problem in problems[:4]] == [A[:63], "g" * 64, "../../etc/passwd", f"../{B}"]
    assert "63 hex digits" in problems[0].reason
    assert "not all are hex digits" in problems[1].reason
    assert "'..'" in problems[2].reason
    assert "'..'" in problems[3].reason
    assert "128 hex digits" in problems[4].reason
    assert "expected a 64-character SHA-256" in problems[5].reason


def test_invalid_utf8_line(tmp_path: Path) -> None:
    content = f"{A}\n".encode() + b"caf\xe9 \xff\xfe\n" + f"{B}\n".encode()
    entries, problems = parse(write(tmp_path, "latin1.txt", content))

    assert digests_and_lines(entries) == [(A, 1), (B, 3)]
    assert len(problems) == 1
    assert problems[0].line == 2
    assert "not valid UTF-8" in problems[0].reason


def test_carriage_return_endings(tmp_path: Path) -> None:
    short = write(tmp_path, "short.txt", f"{A}\r{B}\r")
    long = write(tmp_path, "long.txt", f"{A}\r" * 2000)

    for path in (short, long):
        entries, problems = parse(path)
        assert entries == []
        assert len(problems) == 1
        assert problems[0].line == 1
        assert "carriage returns" in problems[0].reason


def test_overlong_line_skipped(tmp_path: Path) -> None:
    content = f"{A}\n{'x' * 200_000}\n{B}\n{'y' * 70_000}"
    entries, problems = parse(write(tmp_path, "long.txt", content))

    assert digests_and_lines(entries) == [(A, 1), (B, 3)]
    assert [problem.line for problem in problems] == [2, 4]
    assert all("longer than 64 KiB" in problem.reason for problem in problems)
    assert problems[0].text.startswith("xxx")
    assert len(problems[0].text) <= 80


def test_overlong_line_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "huge.txt"
    with path.open("wb") as file:
        file.write(f"{A}\n".encode())
        for _ in range(32):
            file.write(b"z" * (1024 * 1024))

    tracemalloc.start()
    try:
        entries, problems = parse(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert digests_and_lines(entries) == [(A, 1)]
    assert [problem.line for problem in problems] == [2]
    assert peak < 4 * 1024 * 1024


def test_tif_extension_kept(tmp_path: Path) -> None:
    content = (
        f"{A}  {A}.tif\n"
        f"{B}  scan.TIFF\n"
        f"s3://{BUCKET}/{image_key(C, 'tif')}\n"
        f"SHA256 (sheet.tif) = {D}\n"
    )
    entries, problems = parse(write(tmp_path, "tifs.txt", content))

    assert problems == []
    assert [entry.extension for entry in entries] == ["tif", "tif", "tif", "tif"]


# JSONL


def test_jsonl_fields(tmp_path: Path) -> None:
    lines = [
        f'{{"sha256": "{A}", "path": "{image_key(A)}", "bytes": 123456, "logical_id": "DAO 000123"}}',
        "",
        f'{{"sha256": "{B.upper()}", "content_type": "image/tiff", "logical_id": 42}}',
        f'{{"sha256": "{C}", "path": "scans/sheet.png", "content_type": "image/jpeg", "extra": [1, 2]}}',
        f'{{"sha256": "{D}", "bytes": 0}}',
    ]
    entries, problems = parse(write(tmp_path, "images.jsonl", "\n".join(lines) + "\n"))

    assert problems == []
    assert entries == [
        Entry(A, 1, "jpg", 123456, image_key(A), "DAO 000123"),
        Entry(B, 3, "tif", None, None, "42"),
        Entry(C, 4, "png", None, "scans/sheet.png", None),
        Entry(D, 5, None, 0, None, None),
    ]


def test_jsonl_bad_lines(tmp_path: Path) -> None:
    lines = [
        f'{{"sha256": "{A}"}}',
        '{"sha256": "abc"',
        f'["{B}"]',
        '{"path": "images/x.jpg"}',
        f'{{"sha256": "{B}", "bytes": -1}}',
        f'{{"sha256": "{B}", "bytes": true}}',
        f'{{"sha256": "{B}", "path": "../../etc/passwd"}}',
        f'{{"sha256": "{B}", "path": "{image_key(C)}"}}',
        '{"sha256": 12}',
        f'{{"sha256": "{B}", "logical_id": "bad\\u0000label"}}',
        f'{{"sha256": "{E}"}}',
    ]
    entries, problems = parse(write(tmp_path, "bad.jsonl", "\n".join(lines) + "\n"))

    assert digests_and_lines(entries) == [(A, 1), (E, 11)]
    assert [problem.line for problem in problems] == [2, 3, 4, 5, 6, 7, 8, 9, 10]
    assert "not valid JSON" in problems[0].reason
    assert "not a JSON object" in problems[1].reason
    assert "no 'sha256'" in problems[2].reason
    assert "'bytes'" in problems[3].reason
    assert "'bytes'" in problems[4].reason
    assert "'..'" in problems[5].reason
    assert "Make them agree" in problems[6].reason
    assert "not a string" in problems[7].reason
    assert "control characters" in problems[8].reason


# CSV and TSV


def test_csv_quoted_fields(tmp_path: Path) -> None:
    content = (
        '"notes","SHA256","path","bytes"\r\n'
        f'"Collected near ""Swift Current"", SK",{A},"{image_key(A)}",123456\r\n'
        f'"multi\r\nline note",{B},,\r\n'
        "\r\n"
        f'plain,"{C}","{image_key(C, "tif")}",""\r\n'
    )
    entries, problems = parse(write(tmp_path, "images.csv", content))

    assert problems == []
    assert entries == [
        Entry(A, 2, "jpg", 123456, image_key(A), None),
        Entry(B, 3, None, None, None, None),
        Entry(C, 6, "tif", None, image_key(C, "tif"), None),
    ]


def test_tsv(tmp_path: Path) -> None:
    content = f"key\tsha256\tbytes\n{image_key(A)}\t{A}\t10\nnot here\t{B}\t\n"
    entries, problems = parse(write(tmp_path, "images.tsv", content))

    assert problems == []
    assert entries == [
        Entry(A, 2, "jpg", 10, image_key(A), None),
        Entry(B, 3, None, None, "not here", None),
    ]


def test_csv_semicolon_detected(tmp_path: Path) -> None:
    content = f"# export of the catalog\ncatalogNumber;Sha256\nDAO 1;{A}\nDAO 2;{B}\n"
    entries, problems = parse(write(tmp_path, "export.txt", content))

    assert problems == []
    assert [(entry.digest, entry.line, entry.label) for entry in entries] == [(A, 3, "DAO 1"), (B, 4, "DAO 2")]


def test_csv_label_columns(tmp_path: Path) -> None:
    content = (
        "logical_id,occurrenceID,sha256,catalogNumber\n"
        f"L1,urn:occ:1,{A},DAO 1\n"
        f"L2,urn:occ:2,{B},\n"
        f"L3,,{C},\n"
        f",,{D},\n"
    )
    entries, problems = parse(write(tmp_path, "labels.csv", content))

    assert problems == []
    assert [entry.label for entry in entries] == ["DAO 1", "urn:occ:2", "L3", None]


def test_csv_bad_rows(tmp_path: Path) -> None:
    content = (
        "sha256,path,bytes\n"
        f"{A},,12\n"
        f"{B},,twelve\n"
        ",images/x.jpg,\n"
        f"{C[:40]},,\n"
        ",,\n"
        f"{D},../secret.jpg,\n"
        f"{E}\n"
    )
    entries, problems = parse(write(tmp_path, "bad.csv", content))

    assert digests_and_lines(entries) == [(A, 2), (E, 8)]
    assert [problem.line for problem in problems] == [3, 4, 5, 7]
    assert "'bytes'" in problems[0].reason
    assert "no 'sha256'" in problems[1].reason
    assert "not 64 hex digits" in problems[2].reason
    assert "'..'" in problems[3].reason


def test_csv_header_only(tmp_path: Path) -> None:
    entries, problems = parse(write(tmp_path, "empty.csv", "sha256,path\n"))

    assert entries == []
    assert len(problems) == 1
    assert problems[0].line is None
    assert "lists no images" in problems[0].reason


def test_jsonl_after_long_preamble(tmp_path: Path) -> None:
    preamble = "# exported by the catalog; one object per line\n" * 400
    content = preamble + f'{{"sha256": "{A}", "logical_id": "DAO 1"}}\n'
    entries, problems = parse(write(tmp_path, "export.log", content))

    assert problems == []
    assert entries == [Entry(A, 401, None, None, None, "DAO 1")]


# TOML


TOML_CONFIG = f"""# Test images by category
[test_images.readable_specimens]
description = "Clear labels"
urls = [
    "https://s3.ca-central-1.amazonaws.com/{BUCKET}/{image_key(A)}",
    "https://s3.ca-central-1.amazonaws.com/{BUCKET}/{image_key(B)}",
]

[test_images.faded_labels]
description = "Faded labels"
urls = ["s3://{BUCKET}/{image_key(C, 'tif')}", "not an image"]

[test_images.nested]
groups = [["{D}"], [1, true]]

[settings]
endpoint = "https://s3.ca-central-1.amazonaws.com"
retries = 3
"""


def test_toml_categories(tmp_path: Path) -> None:
    entries, problems = parse(write(tmp_path, "config.toml", TOML_CONFIG))

    assert digests_and_lines(entries) == [(A, 5), (B, 6), (C, 11), (D, 14)]
    assert [entry.extension for entry in entries] == ["jpg", "jpg", "tif", None]
    assert entries[0].key == image_key(A)
    assert entries[2].key == image_key(C, "tif")
    assert len(problems) == 1
    assert problems[0].line == 11
    assert problems[0].text == "not an image"


def test_toml_detected_by_content(tmp_path: Path) -> None:
    entries, problems = parse(write(tmp_path, "config.txt", TOML_CONFIG))

    assert digests_and_lines(entries) == [(A, 5), (B, 6), (C, 11), (D, 14)]
    assert [problem.line for problem in problems] == [11]


def test_toml_invalid_syntax(tmp_path: Path) -> None:
    content = f'[images]\nurls = ["s3://{BUCKET}/{image_key(A)}"\nbroken = \n'
    entries, problems = parse(write(tmp_path, "broken.toml", content))

    assert entries == []
    assert len(problems) == 1
    assert problems[0].line == 3
    assert problems[0].text == "broken.toml"
    assert "invalid TOML" in problems[0].reason


def test_toml_too_large(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tomlfile, "MAX_TOML_BYTES", 100)
    entries, problems = parse(write(tmp_path, "config.toml", TOML_CONFIG))

    assert entries == []
    assert len(problems) == 1
    assert "larger than" in problems[0].reason


def test_toml_guess_falls_back_to_lines(tmp_path: Path) -> None:
    content = f"source = catalog export\n{A}\n{B}  {B}.tif\n"
    entries, problems = parse(write(tmp_path, "wanted.txt", content))

    assert digests_and_lines(entries) == [(A, 2), (B, 3)]
    assert [problem.line for problem in problems] == [1]


# Compression, empty and binary files


def test_gzip_plain_list(tmp_path: Path) -> None:
    content = gzip.compress(f"{A}\n# comment\n{B}  {B}.tif\n".encode())
    entries, problems = parse(write(tmp_path, "wanted.txt", content))

    assert problems == []
    assert digests_and_lines(entries) == [(A, 1), (B, 3)]
    assert entries[1].extension == "tif"


def test_gzip_jsonl(tmp_path: Path) -> None:
    lines = [
        f'{{"sha256": "{A}", "path": "{image_key(A)}", "bytes": 5}}',
        f'{{"sha256": "{B}", "logical_id": "DAO 2"}}',
    ]
    content = gzip.compress("\n".join(lines).encode())
    entries, problems = parse(write(tmp_path, "images.jsonl.gz", content))

    assert problems == []
    assert entries == [Entry(A, 1, "jpg", 5, image_key(A), None), Entry(B, 2, None, None, None, "DAO 2")]


def test_gzip_truncated(tmp_path: Path) -> None:
    text = "".join(f"{DIGESTS[index % len(DIGESTS)]}\n" for index in range(5000))
    content = gzip.compress(text.encode())
    entries, problems = parse(write(tmp_path, "cut.gz", content[: len(content) - 20]))

    assert len(problems) == 1
    assert problems[0].line is None
    assert "corrupt or truncated" in problems[0].reason
    assert all(is_digest(entry.digest) for entry in entries)


def test_empty_file(tmp_path: Path) -> None:
    entries, problems = parse(write(tmp_path, "empty.txt", b""))

    assert entries == []
    assert len(problems) == 1
    assert problems[0].line is None
    assert problems[0].text == "empty.txt"
    assert "lists no images" in problems[0].reason


def test_comments_only_file(tmp_path: Path) -> None:
    entries, problems = parse(write(tmp_path, "notes.txt", "# nothing yet\n\n   \n# later\n"))

    assert entries == []
    assert len(problems) == 1
    assert "lists no images" in problems[0].reason


def test_binary_file(tmp_path: Path) -> None:
    path = tmp_path / "photo.txt"
    shutil.copyfile(SPECIMENS / f"{A}.jpg", path)
    entries, problems = parse(path)

    assert entries == []
    assert len(problems) == 1
    assert problems[0].line is None
    assert problems[0].reason.startswith("binary file, not a manifest:")


def test_utf16_file(tmp_path: Path) -> None:
    entries, problems = parse(write(tmp_path, "utf16.txt", f"{A}\n".encode("utf-16")))

    assert entries == []
    assert len(problems) == 1
    assert "UTF-16" in problems[0].reason


def test_problem_limit(tmp_path: Path) -> None:
    content = "bad line\n" * (MAX_PROBLEMS + 500) + f"{A}\n"
    entries, problems = parse(write(tmp_path, "noisy.txt", content))

    assert digests_and_lines(entries) == [(A, MAX_PROBLEMS + 501)]
    assert len(problems) == MAX_PROBLEMS + 1
    assert problems[-1].line is None
    assert "500 more problems" in problems[-1].reason


def test_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        list(read_manifest(tmp_path / "missing.txt"))


# Random input


FRAGMENTS = [
    A,
    B.upper(),
    f"{C}  {C}.tif",
    f"{D} *x.JPEG",
    f"SHA256 (y) = {E}",
    f"s3://{BUCKET}/{image_key(A)}",
    f"https://s3.ca-central-1.amazonaws.com/{BUCKET}/{image_key(B)}",
    f'{{"sha256": "{A}", "path": "a.png", "bytes": 1}}',
    "sha256,path,bytes,catalogNumber",
    f'{A},"{image_key(A)}",7,"x"',
    "[images]",
    f'urls = ["{A}"]',
    "../../etc/passwd",
    "# comment",
    '"',
    "{",
    "[",
]

text_manifests = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=80)), max_size=30).map(
    lambda lines: "\n".join(lines).encode("utf-8", "surrogatepass")
)
cut_gzip = st.tuples(text_manifests, st.integers(min_value=0, max_value=40)).map(
    lambda pair: gzip.compress(pair[0])[: max(2, len(gzip.compress(pair[0])) - pair[1])]
)
manifest_bytes = st.one_of(
    st.binary(max_size=4000),
    st.binary(max_size=200).map(lambda data: b"{" + data),
    st.binary(max_size=200).map(lambda data: b"sha256,path\n" + data),
    text_manifests,
    text_manifests.map(gzip.compress),
    cut_gzip,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=manifest_bytes, name=st.sampled_from(["m.txt", "m.toml", "m.csv", "m.jsonl.gz"]))
def test_random_bytes_never_raise(tmp_path: Path, content: bytes, name: str) -> None:
    path = write(tmp_path, name, content)

    for item in read_manifest(path):
        if isinstance(item, Problem):
            assert isinstance(item.reason, str)
            assert item.line is None or item.line >= 0
            continue

        assert is_digest(item.digest)
        assert item.extension is None or EXTENSION.fullmatch(item.extension)
        assert item.line >= 0
        assert item.size is None or item.size >= 0
