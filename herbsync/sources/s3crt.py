"""Image downloads through the S3 client of the AWS Common Runtime (awscrt).

A GET of a 200 KB image through urllib3 cost about 0.7 ms of Python CPU
time, presigning included, and through botocore about 1.8 ms, before a byte
was hashed. The CRT client signs, sends and parses in C on its own
event-loop threads, and splits large objects into ranged GETs. Python only
runs the body callback, which hashes the bytes and writes them to the
temporary file. On a 2-core machine the daemon then mirrored 2,000 images
of 200 KB faster than rclone and s5cmd (BENCHMARKS.md).

The CRT client's own retries are off. ``CrtDownloader`` retries here
instead, so that every retry is logged as ``s3.retrying`` with its reason,
as the urllib3 route does, and a stalled response is dropped after
``read_timeout`` seconds without data, which the CRT client does not do.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import structlog
from awscrt.auth import AwsCredentials, AwsCredentialsProvider
from awscrt.exceptions import AwsCrtError
from awscrt.http import HttpHeaders, HttpRequest
from awscrt.io import ClientBootstrap, ClientTlsContext, TlsContextOptions
from awscrt.s3 import S3Client, S3RequestTlsMode, S3RequestType, S3RetryConfig, S3RetryMode

from herbsync.errors import SourceError, SourceUnavailable
from herbsync.sources.s3http import GET_RETRIES, RETRY_STATUSES, error_code_in
from herbsync.store import VerifiedWriter


log = structlog.get_logger("herbsync.sources")

#: Bytes per ranged GET. Each connection buffers one part, so memory grows
#: with this times the number of connections (16 by default).
PART_SIZE = 2 * 1024 * 1024
#: Seconds before the first retry. Each later retry waits twice as long.
FIRST_BACKOFF = 0.1

FileT = TypeVar("FileT")
#: Returns the credentials to sign with, or None when none are configured.
CredentialSource = Callable[[], "tuple[str, str, str | None] | None"]


@dataclass(frozen=True)
class Endpoint:
    """The location of a bucket's objects: URL scheme, Host header and the path before each key."""

    scheme: str
    host: str
    path_prefix: str

    @classmethod
    def from_object_url(cls, url: str, key: str) -> Endpoint:
        """Build the endpoint from the URL that botocore gives for ``key`` (query ignored).

        botocore decides between path-style and virtual-hosted addressing, and
        applies the endpoint settings of the config and the environment, so
        one URL it builds gives the prefix for every other key.
        """
        parts = urlsplit(url)
        suffix = "/" + quote(key, safe="/~")
        if not parts.path.endswith(suffix):
            msg = f"cannot find the key {key!r} at the end of the object URL path {parts.path!r}"
            raise ValueError(msg)
        return cls(parts.scheme, parts.netloc, parts.path[: -len(suffix)] + "/")

    def path_of(self, key: str) -> str:
        """Return the request path of ``key``, percent-encoded as botocore encodes it."""
        return self.path_prefix + quote(key, safe="/~")


class ErrorResponse(Exception):
    """An error response that is not retried, such as 404 NoSuchKey or 403 AccessDenied."""

    def __init__(self, status: int, code: str) -> None:
        super().__init__(f"server returned {status} {code}".strip())
        self.status = status
        self.code = code


class ObjectTooLarge(Exception):
    """The object is larger than the ``max_size`` given to ``download``; nothing was kept."""

    def __init__(self, size: int) -> None:
        super().__init__(f"object of {size} bytes")
        self.size = size


class _Retryable(Exception):
    """A failed try that is worth another: a dropped connection, a stall, a 5xx or a throttle."""


@dataclass
class _Attempt:
    """The state that the callbacks of one GET record, read by the waiting thread once the request is done."""

    writer: VerifiedWriter[Any] | None = None
    failure: BaseException | None = None
    error: BaseException | None = None
    status: int | None = None
    error_body: bytes | None = None
    last_progress: float = 0.0
    too_large: int | None = None


class CrtDownloader:
    """GETs of S3 objects through one ``awscrt.s3.S3Client``, each streamed into a ``VerifiedWriter``. Thread-safe.

    ``credentials`` returns the access key, secret key and session token to
    sign with, or None when there are none. Pass ``credentials=None`` to
    send unsigned requests to a public bucket. ``ca_bundle`` names a CA
    file to trust for HTTPS instead of the system's CA store.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        region: str,
        credentials: CredentialSource | None,
        max_connections: int,
        connect_timeout: float,
        read_timeout: float,
        ca_bundle: str | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.read_timeout = read_timeout
        self._credentials = credentials
        provider = None
        if credentials is not None:
            provider = AwsCredentialsProvider.new_delegate(self._current_credentials)

        tls_mode = S3RequestTlsMode.ENABLED if endpoint.scheme == "https" else S3RequestTlsMode.DISABLED
        tls_options = None
        if endpoint.scheme == "https":
            context_options = TlsContextOptions()
            if ca_bundle:
                context_options.override_default_trust_store_from_path(ca_filepath=ca_bundle)
            tls_options = ClientTlsContext(context_options).new_connection_options()

        self._client = S3Client(
            bootstrap=ClientBootstrap.get_or_create_static_default(),
            region=region,
            tls_mode=tls_mode,
            tls_connection_options=tls_options,
            credential_provider=provider,
            part_size=PART_SIZE,
            max_active_connections_override=max_connections,
            retry_config=S3RetryConfig(retry_mode=S3RetryMode.NONE),
            connect_timeout_ms=max(1, int(connect_timeout * 1000)),
        )

    def _current_credentials(self) -> AwsCredentials:
        found = self._credentials() if self._credentials is not None else None
        if found is None:
            # The source builds a downloader only once botocore has found
            # credentials, so this means they vanished since. The request
            # then fails to sign, and is retried.
            msg = "no AWS credentials found"
            raise RuntimeError(msg)
        access_key, secret_key, token = found
        return AwsCredentials(access_key, secret_key, token)

    def download(
        self,
        key: str,
        location: str,
        open_writer: Callable[[], VerifiedWriter[FileT]],
        max_size: int | None = None,
    ) -> FileT:
        """GET ``key`` into a writer from ``open_writer`` and return what its ``finish`` returns.

        Raises ``ObjectTooLarge`` as soon as the response headers show an
        object larger than ``max_size`` bytes, before its body is read.
        Retries dropped connections, stalls, 5xx responses and throttling up
        to ``GET_RETRIES`` times, each into a new writer. Raises
        ``SourceUnavailable`` after the last retry, ``ErrorResponse`` for any
        other error response, and whatever the writer raises.
        """
        attempt = 1
        while True:
            try:
                return self._download_once(key, open_writer, max_size)
            except _Retryable as error:
                if attempt > GET_RETRIES:
                    raise SourceUnavailable(f"{location}: {error}") from None
                log.info(
                    "s3.retrying",
                    operation="GetObject",
                    path=self.endpoint.path_of(key),
                    attempt=attempt + 1,
                    reason=str(error),
                )
                time.sleep(FIRST_BACKOFF * 2 ** (attempt - 1))
                attempt += 1

    def _download_once(
        self, key: str, open_writer: Callable[[], VerifiedWriter[FileT]], max_size: int | None
    ) -> FileT:
        attempt = _Attempt(last_progress=time.monotonic())
        request = self._start(key, attempt, open_writer, max_size)
        stalled = self._wait(request, attempt)

        writer = attempt.writer
        try:
            self._raise_for_failure(attempt, stalled)
            if writer is None:
                # An empty object calls no body callback.
                writer = open_writer()
        except BaseException:
            if writer is not None:
                writer.discard()
            raise
        return writer.finish()

    def _start(
        self,
        key: str,
        attempt: _Attempt,
        open_writer: Callable[[], VerifiedWriter[Any]],
        max_size: int | None,
    ) -> Any:
        headers = HttpHeaders([("Host", self.endpoint.host)])
        http_request = HttpRequest("GET", self.endpoint.path_of(key), headers)
        cell: list[Any] = []

        def on_headers(status_code: int, headers: Any, **_: Any) -> None:
            attempt.status = status_code
            attempt.last_progress = time.monotonic()
            size = _object_size(status_code, headers)
            if max_size is not None and size is not None and size > max_size:
                attempt.too_large = size
                if cell:
                    cell[0].cancel()

        def on_body(chunk: Any, offset: int, **_: Any) -> None:
            if attempt.failure is not None or attempt.too_large is not None:
                return
            try:
                if attempt.writer is None:
                    attempt.writer = open_writer()
                if offset != attempt.writer.size:
                    msg = f"body part at byte {offset} arrived when {attempt.writer.size} bytes were written"
                    raise _Retryable(msg)
                attempt.writer.write(chunk)
                attempt.last_progress = time.monotonic()
            except BaseException as error:  # handed to the waiting thread, never lost
                attempt.failure = error
                if cell:
                    cell[0].cancel()

        def on_done(
            error: BaseException | None = None,
            status_code: int | None = None,
            error_body: bytes | None = None,
            **_: Any,
        ) -> None:
            attempt.error = error
            attempt.status = status_code or attempt.status
            attempt.error_body = error_body

        request = self._client.make_request(
            type=S3RequestType.GET_OBJECT,
            request=http_request,
            on_headers=on_headers,
            on_body=on_body,
            on_done=on_done,
        )
        cell.append(request)
        return request

    def _wait(self, request: Any, attempt: _Attempt) -> bool:
        """Wait for the request to finish, and cancel it after ``read_timeout`` s without data.

        Returns whether it stalled. A callback that failed, or found the object too large, before
        ``make_request`` returned could not cancel the request itself, so it
        is cancelled here.
        """
        future: concurrent.futures.Future[Any] = request.finished_future
        stalled = False
        cancelled = False
        poll = min(1.0, self.read_timeout / 4)
        while True:
            done, _ = concurrent.futures.wait([future], timeout=poll)
            if done:
                return stalled
            if cancelled:
                continue
            if attempt.failure is not None or attempt.too_large is not None:
                cancelled = True
                request.cancel()
            elif time.monotonic() - attempt.last_progress > self.read_timeout:
                stalled = cancelled = True
                request.cancel()

    def _raise_for_failure(self, attempt: _Attempt, stalled: bool) -> None:
        if attempt.failure is not None:
            raise attempt.failure
        if attempt.too_large is not None:
            raise ObjectTooLarge(attempt.too_large)
        if stalled:
            raise _Retryable(f"read timeout: no data for {self.read_timeout:g} s")
        if attempt.error is None:
            return

        status = attempt.status or 0
        if status >= 300:
            code = error_code_in(attempt.error_body or b"")
            if status in RETRY_STATUSES:
                raise _Retryable(f"server returned {status} {code}".strip())
            raise ErrorResponse(status, code)
        if isinstance(attempt.error, AwsCrtError) and attempt.error.name.startswith("AWS_IO_TLS_"):
            # A certificate that fails now fails again at once, and each
            # failed handshake can take s2n 10 to 30 s, so it is not retried.
            msg = (
                f"TLS connection to {self.endpoint.host} failed ({_describe(attempt.error)}); check the "
                "server's certificate, or set AWS_CA_BUNDLE to the file of the CA that signed it"
            )
            raise SourceError(msg)
        raise _Retryable(_describe(attempt.error))


def _object_size(status: int, headers: list[tuple[str, str]]) -> int | None:
    """Return the whole object's size from a 206 response's Content-Range or a 200's Content-Length."""
    for name, value in headers:
        lowered = name.lower()
        if status == 206 and lowered == "content-range":
            total = value.rpartition("/")[2]
            return int(total) if total.isdigit() else None
        if status == 200 and lowered == "content-length":
            return int(value) if value.isdigit() else None
    return None


def _describe(error: BaseException) -> str:
    if not isinstance(error, AwsCrtError):
        return str(error)
    status = _STATUS_OF_ERROR.get(error.name)
    if status is not None:
        return f"server returned {status} ({error.name}: {error.message})"
    return f"{error.name}: {error.message}"


# The CRT client reports these responses by error name alone, without their
# status or body (awscrt 0.38): 503 as SLOW_DOWN, and 500, 502 and 504 as
# INTERNAL_ERROR.
_STATUS_OF_ERROR = {
    "AWS_ERROR_S3_SLOW_DOWN": "503",
    "AWS_ERROR_S3_INTERNAL_ERROR": "500, 502 or 504",
}

