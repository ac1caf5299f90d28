"""Uploading one file to S3 under its SHA-256, verified by the server.

A single PUT carries ``ChecksumSHA256`` (the file's digest) and
``If-None-Match: *``: the server stores nothing unless the bytes it receives
hash to the digest, and never overwrites an object. A 412 response means the
object exists; it counts as uploaded once a HEAD shows the same size (and
the same checksum, when the server stored one). Files above the multipart
threshold go up in parts, each with its own SHA-256, and the upload is
aborted on any failure.
"""

from __future__ import annotations

import math
import mimetypes
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from botocore.exceptions import ClientError

from herbsync.digest import normalize_extension, split_name
from herbsync.errors import FileChanged, ObjectNotFound, SourceError, SourceUnavailable
from herbsync.sources.base import (
    MAX_PART_SIZE,
    MIB,
    ProgressCallback,
    TransferOptions,
    UploadResult,
)
from herbsync.sources.s3 import CORRUPTED_UPLOAD_CODES, map_errors
from herbsync.upload.hashing import (
    Fingerprint,
    HashingReader,
    check_unchanged,
    checksum_text,
    fingerprint_file,
    open_unchanged,
    version_of,
)


if TYPE_CHECKING:
    from herbsync.sources.s3 import S3ImageSource


log = structlog.get_logger("herbsync.upload")

MAX_PARTS = 10_000
# Parts sent at once. Each uses a connection of the client's pool (16 by default).
PART_WORKERS = 4

PRECONDITION_FAILED = "PreconditionFailed"

# The types S3 should serve each extension as; others come from ``mimetypes``.
CONTENT_TYPES = {
    "jpg": "image/jpeg",
    "tif": "image/tiff",
    "png": "image/png",
    "jp2": "image/jp2",
    "dng": "image/x-adobe-dng",
}


def content_type_for(extension: str) -> str:
    """Return the media type of a normalised extension, ``application/octet-stream`` if unknown."""
    known = CONTENT_TYPES.get(extension)
    if known is not None:
        return known
    guessed, _ = mimetypes.guess_type(f"file.{extension}")
    return guessed or "application/octet-stream"


def extension_of(path: Path) -> str:
    """Return the normalised extension a file is stored under (``.jpeg`` gives ``jpg``)."""
    _, extension = split_name(path.name)
    return normalize_extension(extension)


def part_size_for(size: int, requested: int) -> int:
    """Return the part size to use: ``requested``, raised to whole MiB if it needs over 10,000 parts."""
    if math.ceil(size / requested) <= MAX_PARTS:
        return requested

    needed = math.ceil(size / MAX_PARTS)
    part_size = math.ceil(needed / MIB) * MIB
    if part_size > MAX_PART_SIZE:
        msg = f"a file of {size} bytes is larger than S3 accepts (10,000 parts of 5 GiB)"
        raise SourceError(msg)
    return part_size


def error_code(error: ClientError) -> str:
    """Return the S3 error code of a botocore ``ClientError``."""
    return str(error.response.get("Error", {}).get("Code", ""))


def upload_file(
    source: S3ImageSource,
    path: Path,
    options: TransferOptions,
    progress: ProgressCallback | None = None,
) -> UploadResult:
    """Upload ``path`` to ``source`` under its SHA-256; see ``S3ImageSource.upload``."""
    started = time.monotonic()

    # 1. Hash the file once; parts are hashed in the same read.
    size = version_of(path).size
    multipart = size > options.multipart_threshold
    part_size = part_size_for(size, options.part_size) if multipart else None
    fingerprint = fingerprint_file(path, part_size)
    if fingerprint.size != size:
        msg = f"{path} changed while it was hashed; it is uploaded once it stays unchanged"
        raise FileChanged(msg)

    # 2. Send it, in one PUT or in parts.
    extension = extension_of(path)
    key = source.key_for(fingerprint.digest, extension)
    content_type = content_type_for(extension)
    upload = ObjectUpload(source, key, fingerprint, content_type, progress)
    created = upload.send_parts() if multipart else upload.send_single()

    # 3. A file that changed meanwhile is uploaded again later, under its new digest.
    check_unchanged(fingerprint, "while it was uploaded")
    seconds = time.monotonic() - started
    return UploadResult(fingerprint.digest, key, size, content_type, created, seconds, multipart)


class ObjectUpload:
    """One file's upload to one key: a single PUT or a multipart upload."""

    def __init__(
        self,
        source: S3ImageSource,
        key: str,
        fingerprint: Fingerprint,
        content_type: str,
        progress: ProgressCallback | None,
    ) -> None:
        self.client: Any = source.client
        self.bucket = source.bucket
        self.key = key
        self.fingerprint = fingerprint
        self.content_type = content_type
        self.progress = serialized(progress)
        self.location = f"s3://{source.bucket}/{key}"

    # Single PUT ------------------------------------------------------------

    def send_single(self) -> bool:
        """PUT the whole file; return False if the object already existed."""
        with open_unchanged(self.fingerprint) as stream:
            body = HashingReader(stream, 0, self.fingerprint.size, self.progress)
            with map_errors(self.location):
                try:
                    self.client.put_object(
                        Bucket=self.bucket,
                        Key=self.key,
                        Body=body,
                        ContentLength=self.fingerprint.size,
                        ContentType=self.content_type,
                        ChecksumSHA256=checksum_text(self.fingerprint.raw_digest),
                        IfNoneMatch="*",
                    )
                except ClientError as error:
                    if error_code(error) == PRECONDITION_FAILED:
                        self.confirm_existing()
                        return False
                    self._raise_if_changed(error, body, self.fingerprint.raw_digest)
                    raise

        if body.completed_digest not in (None, self.fingerprint.raw_digest):
            # Only a server that ignores checksums gets here: take back the wrong object.
            self._delete_quietly()
            msg = f"{self.fingerprint.path} changed while it was uploaded; it is uploaded again later"
            raise FileChanged(msg)
        return True

    def _raise_if_changed(self, error: ClientError, body: HashingReader, expected: bytes) -> None:
        """Raise ``FileChanged`` for a checksum rejection caused by a changed file, not by the network."""
        if error_code(error) not in CORRUPTED_UPLOAD_CODES:
            return
        if body.completed_digest is not None and body.completed_digest != expected:
            msg = f"{self.fingerprint.path} changed while it was uploaded; the server rejected the bytes"
            raise FileChanged(msg) from error

    def confirm_existing(self) -> None:
        """Accept an existing object at the key if its size (and stored SHA-256) match the file."""
        try:
            with map_errors(self.location):
                head = self.client.head_object(Bucket=self.bucket, Key=self.key, ChecksumMode="ENABLED")
        except ObjectNotFound:
            msg = f"{self.location}: the server reported the object exists, but HEAD found none; try again"
            raise SourceUnavailable(msg) from None

        stored_size = int(head.get("ContentLength", -1))
        if stored_size != self.fingerprint.size:
            msg = (
                f"{self.location} already exists with {stored_size} bytes, but {self.fingerprint.path} "
                f"has {self.fingerprint.size}; the stored object does not match its name, so inspect or delete it"
            )
            raise SourceError(msg)

        # A checksum with "-N" belongs to a multipart object and is not the file's SHA-256.
        stored_checksum = head.get("ChecksumSHA256")
        expected = checksum_text(self.fingerprint.raw_digest)
        if stored_checksum and "-" not in stored_checksum and stored_checksum != expected:
            msg = (
                f"{self.location} already exists with SHA-256 checksum {stored_checksum}, "
                f"but the file's is {expected}; the stored object does not match its name, so inspect or delete it"
            )
            raise SourceError(msg)

    def _delete_quietly(self) -> None:
        try:
            with map_errors(self.location):
                self.client.delete_object(Bucket=self.bucket, Key=self.key)
        except SourceError as error:
            log.error("upload.cleanup_failed", key=self.key, error=str(error))

    # Multipart -------------------------------------------------------------

    def send_parts(self) -> bool:
        """Upload the file in parts; return False if the object already existed."""
        if self._exists():
            self.confirm_existing()
            return False

        with map_errors(self.location):
            created = self.client.create_multipart_upload(
                Bucket=self.bucket,
                Key=self.key,
                ContentType=self.content_type,
                ChecksumAlgorithm="SHA256",
            )
        upload_id = str(created["UploadId"])

        try:
            parts = self._send_all_parts(upload_id)
            completed = self._complete(upload_id, parts)
        except BaseException:
            self._abort(upload_id)
            raise

        if not completed:
            # Another writer stored the object first: drop our parts and check theirs.
            self._abort(upload_id)
            self.confirm_existing()
        return completed

    def _exists(self) -> bool:
        try:
            with map_errors(self.location):
                self.client.head_object(Bucket=self.bucket, Key=self.key)
        except ObjectNotFound:
            return False
        return True

    def _send_all_parts(self, upload_id: str) -> list[dict[str, Any]]:
        count = len(self.fingerprint.part_digests)
        workers = min(PART_WORKERS, count)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="upload-part") as pool:
            futures = [pool.submit(self._send_part, upload_id, number) for number in range(1, count + 1)]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            _raise_first_failure(done, futures)
        return [future.result() for future in futures]

    def _send_part(self, upload_id: str, number: int) -> dict[str, Any]:
        part_size = self.fingerprint.part_size or self.fingerprint.size
        start = (number - 1) * part_size
        length = min(part_size, self.fingerprint.size - start)
        expected = self.fingerprint.part_digests[number - 1]
        checksum = checksum_text(expected)

        with open_unchanged(self.fingerprint) as stream:
            body = HashingReader(stream, start, length, self.progress)
            with map_errors(self.location):
                try:
                    answer = self.client.upload_part(
                        Bucket=self.bucket,
                        Key=self.key,
                        UploadId=upload_id,
                        PartNumber=number,
                        Body=body,
                        ContentLength=length,
                        ChecksumSHA256=checksum,
                    )
                except ClientError as error:
                    self._raise_if_changed(error, body, expected)
                    raise

        if body.completed_digest not in (None, expected):
            msg = f"{self.fingerprint.path} changed while part {number} was uploaded"
            raise FileChanged(msg)
        return {"PartNumber": number, "ETag": answer["ETag"], "ChecksumSHA256": checksum}

    def _complete(self, upload_id: str, parts: list[dict[str, Any]]) -> bool:
        """Complete the upload; return False if an object appeared at the key meanwhile."""
        with map_errors(self.location):
            try:
                self.client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=self.key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                    IfNoneMatch="*",
                )
            except ClientError as error:
                if error_code(error) == PRECONDITION_FAILED:
                    return False
                raise
        return True

    def _abort(self, upload_id: str) -> None:
        """Abort a multipart upload so its parts do not stay stored; log a failure to abort."""
        try:
            with map_errors(self.location):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=upload_id)
        except SourceError as error:
            log.error("upload.abort_failed", key=self.key, upload_id=upload_id, error=str(error))


def _raise_first_failure(done: set[Future[Any]], futures: list[Future[Any]]) -> None:
    """Cancel the parts not yet started and raise the error of a failed part, if one failed."""
    failed = [future for future in futures if future in done and future.exception() is not None]
    if not failed:
        return
    for future in futures:
        future.cancel()
    error = failed[0].exception()
    assert error is not None
    raise error


def serialized(callback: ProgressCallback | None) -> ProgressCallback | None:
    """Wrap ``callback`` so that parts sent at the same time report one at a time."""
    if callback is None:
        return None
    lock = threading.Lock()

    def report(count: int) -> None:
        with lock:
            callback(count)

    return report
