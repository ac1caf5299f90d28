"""A source backed by an S3 bucket (AWS or any S3-compatible endpoint)."""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import structlog
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, PartialCredentialsError

from herbsync.digest import (
    DEFAULT_EXTENSION,
    normalize_digest,
    relative_path,
    split_name,
)
from herbsync.errors import (
    AccessDenied,
    InvalidDigest,
    ObjectNotFound,
    SourceError,
    SourceUnavailable,
)
from herbsync.sources.base import (
    FetchResult,
    ImageSource,
    ImageStream,
    ProgressCallback,
    Sink,
    TransferOptions,
    UploadResult,
)
from herbsync.sources.s3http import (
    PRESIGNED_URL_SECONDS,
    BodyChunks,
    PresignedGetter,
    certificate_bundle,
    error_code,
    proxy_for,
)
from herbsync.store import StoredFile, write_chunks


if TYPE_CHECKING:
    from herbsync.sources.s3crt import CrtDownloader


log = structlog.get_logger("herbsync.sources")

Fetched = TypeVar("Fetched")

NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
ACCESS_DENIED_CODES = frozenset(
    {
        "403",
        "AccessDenied",
        "AllAccessDisabled",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "AccountProblem",
    }
)
# Everything else a server can answer is treated as transient only when it is
# a throttle or a 5xx; other 4xx codes are permanent for that object.
TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "InternalError",
        "ServiceUnavailable",
        "503",
        "500",
        "502",
        "504",
    }
)
# Pattern of the text after ``<digest>.`` in a key that herbsync stores: a
# plain extension, never a path separator or "..", so a key cannot steer a write.
_IMAGE_EXTENSION = re.compile(r"[A-Za-z0-9]{1,8}")

# Images of at least this many bytes are streamed through urllib3 in
# ``copy_to``, smaller ones go through the CRT client. On a 2-core machine
# with the server beside it, the CRT client was much faster than urllib3 on
# 2,000 images of 200 KB and as fast on 500 of 2 MB. On 20 of 50 MB it took
# 1.7 times as long and, with 8 MiB parts, held 300 MB of part buffers
# against 100 MB (BENCHMARKS.md).
LARGE_IMAGE_BYTES = 8 * 1024 * 1024

# Codes a server returns when an upload's bytes do not match the checksum
# sent with them: the bytes were corrupted on the way, so a retry can succeed.
CORRUPTED_UPLOAD_CODES = frozenset({"BadDigest", "XAmzContentSHA256Mismatch"})


def map_client_error(error: ClientError, location: str) -> SourceError:
    """Return the herbsync error for a botocore ``ClientError`` on ``location``."""
    code = str(error.response.get("Error", {}).get("Code", ""))
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return map_error_code(code, status, location)


def map_error_code(code: str, status: int, location: str) -> SourceError:
    """Return the herbsync error for an S3 error ``code`` (or '') and HTTP ``status`` on ``location``."""
    if code in NOT_FOUND_CODES:
        return ObjectNotFound(f"{location} not found")
    if code == "NoSuchBucket":
        return SourceError(f"{location}: the bucket does not exist; check [source] bucket")
    if code in ACCESS_DENIED_CODES:
        return AccessDenied(
            f"{location}: access denied ({code}); check the credentials and the bucket policy"
        )
    if code in CORRUPTED_UPLOAD_CODES:
        return SourceUnavailable(
            f"{location}: server rejected the upload ({code}) because the bytes it received "
            "do not match their SHA-256 checksum; they were corrupted in transit, so try again"
        )
    if code in TRANSIENT_CODES or status >= 500:
        return SourceUnavailable(f"{location}: server returned {code or status}")
    return SourceError(f"{location}: server returned {code or status}")


def log_client_retries(client: Any) -> None:
    """Log each retry that botocore makes by itself, with the reason for it.

    botocore retries throttling, 5xx responses, timeouts and dropped
    connections up to 4 times before herbsync gets an error. Without this
    handler those retries would leave no trace in the log.
    """

    def remember_reason(request_dict: dict[str, Any], response: Any, caught_exception: Any, **_: Any) -> None:
        request_dict["context"]["herbsync_retry_reason"] = _retry_reason(response, caught_exception)

    def log_retry(request: Any, operation_name: str, **_: Any) -> None:
        attempt = request.context.get("retries", {}).get("attempt", 1)
        if attempt > 1:
            log.info(
                "s3.retrying",
                operation=operation_name,
                url=request.url,
                attempt=attempt,
                reason=request.context.get("herbsync_retry_reason", "unknown"),
            )

    client.meta.events.register("needs-retry.s3", remember_reason)
    client.meta.events.register("request-created.s3", log_retry)


def _retry_reason(response: Any, caught_exception: Any) -> str:
    if caught_exception is not None:
        return str(caught_exception)
    if response is None:
        return "no response"
    http_response, parsed = response
    code = parsed.get("Error", {}).get("Code", "") if isinstance(parsed, dict) else ""
    return f"server returned {http_response.status_code} {code}".strip()


@contextlib.contextmanager
def map_errors(location: str) -> Iterator[None]:
    """Translate botocore exceptions raised inside the block into ``SourceError``."""
    try:
        yield
    except ClientError as error:
        raise map_client_error(error, location) from error
    except NoCredentialsError as error:
        msg = (
            f"{location}: no AWS credentials found; set them in the environment or "
            "~/.aws, or set anonymous = true for a public bucket"
        )
        raise AccessDenied(msg) from error
    except PartialCredentialsError as error:
        msg = f"{location}: {error}; set both the access key ID and the secret access key"
        raise AccessDenied(msg) from error
    except BotoCoreError as error:
        raise SourceUnavailable(f"{location}: {error}") from error
    except OSError as error:
        raise SourceUnavailable(f"{location}: {error}") from error


class S3ImageSource(ImageSource):
    """Images in an S3 bucket under ``<prefix>/ab/cd/<digest>.<ext>``.

    The boto3 client is built on first use, through boto3's usual credential
    chain (environment, shared files, instance roles) unless ``anonymous`` is
    set, and is shared by all threads. ``copy_to`` downloads through the AWS
    Common Runtime's S3 client (``CrtDownloader``), signed with the same
    credentials. ``open_image``, and ``copy_to`` where a proxy is set or
    awscrt cannot be imported, send GETs presigned by the boto3 client
    through a urllib3 pool (``PresignedGetter``). ``use_crt=False`` sends
    every download that way.
    """

    def __init__(
        self,
        bucket: str,
        region: str = "ca-central-1",
        prefix: str = "images",
        endpoint_url: str | None = None,
        anonymous: bool = False,
        max_pool_connections: int = 16,
        client: Any = None,
        connect_timeout: float = 10.0,
        read_timeout: float = 30.0,
        use_crt: bool = True,
    ) -> None:
        self.bucket = bucket
        self.region = region
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.anonymous = anonymous
        # Anonymous requests cannot write, so only signed sources take uploads.
        self.accepts_uploads = not anonymous
        self.max_pool_connections = max_pool_connections
        #: Seconds to wait for a connection, and for each read from it.
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.base_url = (endpoint_url or f"https://s3.{region}.amazonaws.com").rstrip("/")
        self.base_url = f"{self.base_url}/{bucket}"
        self._client = client
        self._credentials: Any = None
        self._getter: PresignedGetter | None = None
        # False until built; None when ``copy_to`` takes the urllib3 route.
        self._downloader: CrtDownloader | None | bool = False if use_crt else None
        self._average_size: float | None = None
        self._client_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"S3ImageSource(bucket={self.bucket!r}, prefix={self.prefix!r})"

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def prepare(self, concurrency: int = 1) -> None:
        """Build the client now, with a connection pool for ``concurrency`` transfers."""
        with self._client_lock:
            if self._client is None:
                self.max_pool_connections = max(self.max_pool_connections, concurrency)
        _ = self.client
        _ = self.getter
        try:
            _ = self.downloader
        except AccessDenied as error:
            # Without credentials the daemon still starts and serves its
            # other sources. Each download from here then fails with this error.
            log.warning("s3.no_credentials", source=self.describe(), error=str(error))

    @property
    def client(self) -> Any:
        """The boto3 S3 client, built on first use."""
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    self._client = self._build_client()
        return self._client

    @property
    def getter(self) -> PresignedGetter:
        """The urllib3 pool that image GETs go through, built on first use."""
        if self._getter is None:
            with self._client_lock:
                if self._getter is None:
                    self._getter = PresignedGetter(
                        self.max_pool_connections, self.connect_timeout, self.read_timeout
                    )
        return self._getter

    @property
    def downloader(self) -> CrtDownloader | None:
        """The CRT client that ``copy_to`` downloads through, built on first use; None where it cannot be used."""
        if self._downloader is False:
            client = self.client
            with self._client_lock:
                if self._downloader is False:
                    self._downloader = self._build_downloader(client)
        return self._downloader  # type: ignore[return-value]

    def _build_downloader(self, client: Any) -> CrtDownloader | None:
        # Imported here because importing awscrt took about 0.08 s on a
        # 2-core machine, which commands that never reach S3 should not pay.
        try:
            from herbsync.sources.s3crt import CrtDownloader, Endpoint
        except ImportError as error:
            log.info("s3.crt_unavailable", reason=f"cannot import awscrt: {error}", fallback="urllib3")
            return None

        # One URL built by botocore gives the scheme, host and path prefix of
        # every key, whatever addressing style and endpoint settings apply.
        probe_key = self.key_for("0" * 64)
        with map_errors(self.describe()):
            url = client.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": probe_key})
        endpoint = Endpoint.from_object_url(url, probe_key)
        if proxy_for(url, urllib.request.getproxies_environment()):
            # NOTE: the CRT client could take the proxy, but herbsync does not pass it on yet.
            log.info("s3.crt_unavailable", reason="a proxy is set for this endpoint", fallback="urllib3")
            return None

        return CrtDownloader(
            endpoint,
            client.meta.region_name or self.region,
            None if self.anonymous else self._frozen_credentials,
            self.max_pool_connections,
            self.connect_timeout,
            self.read_timeout,
            certificate_bundle(),
        )

    def _frozen_credentials(self) -> tuple[str, str, str | None] | None:
        """Return the current key, secret and token of the credentials the boto3 client was built with."""
        if self._credentials is None:
            return None
        frozen = self._credentials.get_frozen_credentials()
        return frozen.access_key, frozen.secret_key, frozen.token

    def _build_client(self) -> Any:
        # Imported here because importing boto3 took about 0.16 s on a
        # 2-core machine (python -X importtime), which commands that never
        # reach S3 (status, wait, a fetch with nothing to fetch) should not pay.
        import boto3
        from botocore import UNSIGNED
        from botocore.config import Config

        # Path-style addressing is what S3-compatible servers expect, and it
        # is the only style that works with dotted bucket names there.
        config = Config(
            region_name=self.region,
            max_pool_connections=self.max_pool_connections,
            retries={"max_attempts": 4, "mode": "standard"},
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            # herbsync hashes every byte with SHA-256 itself, so boto3's own
            # CRC of each response would only cost CPU.
            response_checksum_validation="when_required",
            request_checksum_calculation="when_required",
            s3={"addressing_style": "path"} if self._custom_endpoint() else {},
            signature_version=UNSIGNED if self.anonymous else None,
        )
        session = boto3.session.Session()
        with map_errors(self.describe()):
            client = session.client("s3", endpoint_url=self.endpoint_url, config=config)
            # The same credentials (refreshed where they expire) sign the CRT downloads.
            self._credentials = None if self.anonymous else session.get_credentials()
        log_client_retries(client)
        return client

    def _custom_endpoint(self) -> str | None:
        """Return the S3-compatible endpoint in use, from the table or boto3's variables."""
        return (
            self.endpoint_url
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
        )

    def key_for(self, digest: str, extension: str = DEFAULT_EXTENSION) -> str:
        """Return the object key of an image."""
        relative = str(relative_path(digest, extension))
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def get_image_path(self, sha256_hash: str) -> str | None:
        """Return the image's URL at the endpoint, with the default extension (not checked for existence), or None."""
        try:
            digest = normalize_digest(sha256_hash)
        except InvalidDigest:
            return None
        return f"{self.base_url}/{self.key_for(digest)}"

    def get_s3_uri(self, sha256_hash: str) -> str | None:
        """Return the image's ``s3://`` URI (not checked for existence), or None."""
        try:
            digest = normalize_digest(sha256_hash)
        except InvalidDigest:
            return None
        return f"s3://{self.bucket}/{self.key_for(digest)}"

    def exists(self, sha256_hash: str) -> bool:
        try:
            digest = normalize_digest(sha256_hash)
            self.find_key(digest)
        except ObjectNotFound:
            return False
        except (InvalidDigest, SourceError) as error:
            log.warning("exists.failed", digest=sha256_hash, source=self.describe(), error=str(error))
            return False
        return True

    def find_key(self, digest: str, extension: str | None = None) -> str:
        """Return the key holding ``digest``, trying the given or default extension first."""
        key = self.key_for(digest, extension or DEFAULT_EXTENSION)
        try:
            with map_errors(f"s3://{self.bucket}/{key}"):
                self.client.head_object(Bucket=self.bucket, Key=key)
            return key
        except ObjectNotFound:
            return self._list_key(digest)

    def _list_key(self, digest: str) -> str:
        """Find an image stored under another extension by listing its key prefix."""
        prefix = self.key_for(digest, "")[:-1] + "."
        with map_errors(f"s3://{self.bucket}/{prefix}*"):
            # The delimiter folds keys that go on into "subfolders" into one
            # common prefix, so they cannot crowd image keys out of the page.
            answer = self.client.list_objects_v2(
                Bucket=self.bucket, Prefix=prefix, Delimiter="/", MaxKeys=10
            )
        keys = sorted(str(item["Key"]) for item in answer.get("Contents", []))
        keys += sorted(str(item["Prefix"]) for item in answer.get("CommonPrefixes", []))
        image_keys = [key for key in keys if _IMAGE_EXTENSION.fullmatch(key[len(prefix) :])]
        if not image_keys:
            raise ObjectNotFound(self._not_found_message(prefix, keys))
        return image_keys[0]

    def _not_found_message(self, prefix: str, skipped: list[str]) -> str:
        message = f"s3://{self.bucket}/{prefix}* not found"
        if skipped:
            message += (
                f"; skipped {len(skipped)} keys such as {skipped[0]!r} because the text after "
                "the digest is not a plain extension of 1 to 8 letters or digits"
            )
        return message

    def open_image(self, digest: str, extension: str | None = None) -> ImageStream:
        key, response = self._with_listed_key(digest, extension, self._get)

        _, found_extension = split_name(key)
        location = f"s3://{self.bucket}/{key}"
        chunks = BodyChunks(response, location)
        length = response.headers.get("Content-Length")
        size = int(length) if length and length.isdigit() else None
        return ImageStream(found_extension or DEFAULT_EXTENSION, location, chunks, size)

    def copy_to(
        self,
        digest: str,
        sink: Sink,
        extension: str | None = None,
        expected_size: int | None = None,
    ) -> FetchResult:
        """Download an image into ``sink``, verified while it streams.

        Images expected to be small go through the CRT client, large ones
        through urllib3 (see ``LARGE_IMAGE_BYTES``). The expected size is
        ``expected_size`` where the manifest gives one, else the average
        size of the recent downloads of this source. A CRT download that
        turns out to be large is cancelled at its response headers and
        streamed through urllib3 instead.
        """
        downloader = self.downloader
        result = None
        if downloader is not None and not self._expects_large(expected_size):
            result = self._copy_through(downloader, digest, sink, extension, expected_size)
        if result is None:
            result = super().copy_to(digest, sink, extension, expected_size)
        self._note_size(result.stored.size)
        return result

    def _expects_large(self, expected_size: int | None) -> bool:
        size = expected_size if expected_size is not None else self._average_size
        return size is not None and size >= LARGE_IMAGE_BYTES

    def _note_size(self, size: int) -> None:
        # A moving average over about the last 10 downloads. Threads may race
        # here, which only skews the average a little.
        if self._average_size is None:
            self._average_size = float(size)
        else:
            self._average_size += (size - self._average_size) * 0.1

    def _copy_through(
        self,
        downloader: CrtDownloader,
        digest: str,
        sink: Sink,
        extension: str | None,
        expected_size: int | None,
    ) -> FetchResult | None:
        """Download through the CRT client. Returns None, having kept nothing, when the image is large."""
        # Imported here, where awscrt is known to import, and not at the top
        # of ``copy_to``, which also serves sources without it.
        from herbsync.sources.s3crt import ObjectTooLarge

        started = time.monotonic()
        try:
            key, stored = self._with_listed_key(
                digest, extension, lambda key: self._download(downloader, key, digest, sink, expected_size)
            )
        except ObjectTooLarge as error:
            self._note_size(error.size)
            return None
        return FetchResult(stored, f"s3://{self.bucket}/{key}", time.monotonic() - started)

    def _with_listed_key(
        self, digest: str, extension: str | None, fetch: Callable[[str], Fetched]
    ) -> tuple[str, Fetched]:
        """Call ``fetch`` with the image's key for ``extension``, or with the listed key after ObjectNotFound.

        Returns the key that worked and what ``fetch`` returned.
        """
        key = self.key_for(digest, extension or DEFAULT_EXTENSION)
        try:
            return key, fetch(key)
        except ObjectNotFound:
            key = self._list_key(digest)
            return key, fetch(key)

    def _download(
        self, downloader: CrtDownloader, key: str, digest: str, sink: Sink, expected_size: int | None
    ) -> StoredFile:
        from herbsync.sources.s3crt import ErrorResponse

        location = f"s3://{self.bucket}/{key}"
        _, extension = split_name(key)

        def open_writer() -> Any:
            return sink.open_writer(digest, extension or DEFAULT_EXTENSION, location, expected_size)

        try:
            return downloader.download(key, location, open_writer, max_size=LARGE_IMAGE_BYTES - 1)
        except ErrorResponse as error:
            if error.status != 416:
                raise map_error_code(error.code or str(error.status), error.status, location) from None

        # The CRT client asks for the first part with a Range header, and
        # SeaweedFS 4.48 returns 416 InvalidRange for that on an empty object,
        # so the object is fetched again without one.
        response = self._get(key)
        return write_chunks(open_writer(), BodyChunks(response, location))

    def _get(self, key: str) -> Any:
        """Send a GET of ``key`` through the presigned-URL path; return the 200 response, body unread."""
        location = f"s3://{self.bucket}/{key}"
        with map_errors(location):
            url = self.client.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": key},
                ExpiresIn=PRESIGNED_URL_SECONDS,
            )
        response = self.getter.get(url, location)
        if response.status == 200:
            return response

        try:
            code = error_code(response)
        finally:
            response.close()
            response.release_conn()
        raise map_error_code(code, response.status, location)

    def upload(
        self,
        path: str | os.PathLike[str],
        options: TransferOptions | None = None,
        progress: ProgressCallback | None = None,
    ) -> UploadResult:
        """Upload a file to ``<prefix>/ab/cd/<sha256>.<ext>``, verified by the server.

        The file is hashed once. One PUT carries the SHA-256 and ``If-None-Match: *``;
        files above ``options.multipart_threshold`` go up in parts, each with
        its own SHA-256. An object that already exists under the key counts
        as uploaded once its size matches. Raises ``FileChanged`` (transient)
        when the file changes while it is read, ``AccessDenied``,
        ``SourceUnavailable`` (also for bytes corrupted in transit),
        ``SourceError``, and ``OSError`` when the file cannot be read.
        """
        # Imported here because herbsync.upload imports this module.
        from herbsync.upload.s3put import upload_file

        return upload_file(self, Path(path), options or TransferOptions(), progress)
