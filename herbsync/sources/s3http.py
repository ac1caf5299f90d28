"""GETs of presigned S3 URLs through a shared urllib3 connection pool.

botocore's ``get_object`` costs about 1.8 ms of CPU per 200 KB image, where
a urllib3 GET of a presigned URL costs about 0.5 ms and presigning about
0.13 ms (one thread, see "Where herbsync spends its time" in BENCHMARKS.md).
So downloads are signed by the boto3 client, which keeps its handling of
credentials, session tokens, anonymous access and addressing style, and are
sent through urllib3 here. Every other S3 call still goes through boto3.

A presigned URL carries its signature in the query string, so no URL with a
query is ever put in a log line or an error message: they name the path.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import urllib.request
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import structlog
import urllib3
from urllib3.exceptions import HTTPError, MaxRetryError
from urllib3.util.retry import Retry

from herbsync.digest import CHUNK_SIZE
from herbsync.errors import SourceUnavailable


log = structlog.get_logger("herbsync.sources")

# urllib3 warns about each retry with the whole URL, and a presigned URL
# carries its signature and access key ID. ``LoggedRetry`` logs every retry
# with the query cut out instead.
logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)

#: Retries after the first try, as many as botocore makes with ``max_attempts = 4``.
GET_RETRIES = 4
#: Statuses retried at once. Throttling (503 SlowDown) is one of them.
RETRY_STATUSES = frozenset({500, 502, 503, 504})
#: Seconds a presigned URL stays valid, far more than the retries of one GET take.
PRESIGNED_URL_SECONDS = 900
#: Bytes of an error response read to find its S3 error code.
MAX_ERROR_BODY = 64 * 1024

_ERROR_CODE = re.compile(rb"<Code>\s*([A-Za-z0-9.]{1,64})\s*</Code>")
_QUERY = re.compile(r"\?[^\s'\"()<>]*")


def redact(text: str) -> str:
    """Return ``text`` with every URL query string, where presigned signatures sit, cut out."""
    return _QUERY.sub("?<query removed>", text)


def error_code(response: Any) -> str:
    """Return the S3 error code (such as ``NoSuchKey``) from an error response's XML body, or ''."""
    try:
        body = response.read(MAX_ERROR_BODY)
    except (HTTPError, OSError):
        return ""
    return error_code_in(body or b"")


def error_code_in(body: bytes) -> str:
    """Return the S3 error code from the XML body of an error response, or ''."""
    match = _ERROR_CODE.search(body)
    return match.group(1).decode("ascii") if match else ""


class LoggedRetry(Retry):
    """A urllib3 ``Retry`` that logs each retry as ``s3.retrying``, like herbsync's botocore retries."""

    def increment(  # type: ignore[override]
        self,
        method: str | None = None,
        url: str | None = None,
        response: Any = None,
        error: Exception | None = None,
        _pool: Any = None,
        _stacktrace: Any = None,
    ) -> Retry:
        retry = super().increment(method, url, response, error, _pool, _stacktrace)
        log.info(
            "s3.retrying",
            operation="GetObject",
            path=urlsplit(url or "").path,
            attempt=len(retry.history) + 1,
            reason=_retry_reason(response, error),
        )
        return retry


def _retry_reason(response: Any, error: Exception | None) -> str:
    if error is not None:
        return redact(str(error))
    if response is None:
        return "no response"
    # urllib3 drains and drops this response before the next try, so reading
    # the start of its body here costs nothing that is needed later.
    return f"server returned {response.status} {error_code(response)}".strip()


def certificate_bundle() -> str | None:
    """Return the CA bundle to check HTTPS servers with, or None for the system store.

    ``AWS_CA_BUNDLE`` comes first, as it does for botocore, then certifi's
    bundle when certifi is installed.
    """
    configured = os.environ.get("AWS_CA_BUNDLE")
    if configured:
        return configured
    try:
        import certifi
    except ImportError:
        return None
    return str(certifi.where())


def proxy_for(url: str, proxies: dict[str, str]) -> str | None:
    """Return the proxy in ``proxies`` (from ``getproxies_environment``) for ``url``'s scheme, or None.

    None also when ``NO_PROXY`` names the URL's host.
    """
    parts = urlsplit(url)
    proxy = proxies.get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass_environment(parts.netloc, proxies):
        return proxy
    return None


class PresignedGetter:
    """Pooled connections that send GETs of presigned URLs, with retries. Thread-safe.

    Connections go straight to the server, or through the proxy that
    ``HTTPS_PROXY``/``HTTP_PROXY`` name for the URL's scheme unless
    ``NO_PROXY`` matches its host.
    NOTE: the proxy route has no test. botocore can also take proxies from
    its config file, and those are not read here.
    """

    def __init__(self, max_connections: int, connect_timeout: float, read_timeout: float) -> None:
        self._pool_settings: dict[str, Any] = {
            "num_pools": 4,
            "maxsize": max_connections,
            "block": False,
            "timeout": urllib3.Timeout(connect=connect_timeout, read=read_timeout),
            "retries": LoggedRetry(
                total=GET_RETRIES,
                status_forcelist=RETRY_STATUSES,
                allowed_methods=frozenset({"GET"}),
                backoff_factor=0.1,
                # A long Retry-After would hold a worker past the shutdown grace period.
                respect_retry_after_header=False,
                raise_on_status=False,
                redirect=False,
            ),
            "ca_certs": certificate_bundle(),
        }
        self._proxies = urllib.request.getproxies_environment()
        self._direct = urllib3.PoolManager(**self._pool_settings)
        self._managers: dict[tuple[str, str], urllib3.PoolManager] = {}
        self._lock = threading.Lock()

    def _manager_for(self, url: str) -> urllib3.PoolManager:
        parts = urlsplit(url)
        route = (parts.scheme, parts.netloc)
        manager = self._managers.get(route)
        if manager is not None:
            return manager

        with self._lock:
            manager = self._managers.get(route)
            if manager is None:
                proxy = proxy_for(url, self._proxies)
                if proxy:
                    manager = urllib3.ProxyManager(proxy, **self._pool_settings)
                else:
                    manager = self._direct
                self._managers[route] = manager
        return manager

    def get(self, url: str, location: str) -> Any:
        """Send a GET of ``url`` and return the response, whatever its status, with the body unread.

        Raises ``SourceUnavailable`` when no response arrives after the retries.
        """
        try:
            return self._manager_for(url).request(
                "GET",
                url,
                preload_content=False,
                decode_content=False,
                enforce_content_length=True,
            )
        except MaxRetryError as error:
            # The error's own text contains the signed URL, so only its cause is shown.
            raise SourceUnavailable(f"{location}: {redact(str(error.reason))}") from error.reason
        except (HTTPError, OSError) as error:
            raise SourceUnavailable(f"{location}: {redact(str(error))}") from None


class BodyChunks:
    """A response's body as an iterator of chunks of ``CHUNK_SIZE`` bytes.

    Reading raises ``SourceUnavailable`` when the body breaks off or is
    shorter than its Content-Length. ``close`` gives the connection back to
    the pool once the body was read to the end, and closes it otherwise, so a
    half-read connection is never reused. It works before the first read too.
    """

    def __init__(self, response: Any, location: str) -> None:
        self._response = response
        self._location = location
        self._complete = False
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        try:
            chunk: bytes = self._response.read(CHUNK_SIZE, decode_content=False)
        except (HTTPError, OSError) as error:
            self.close()
            raise SourceUnavailable(f"{self._location}: {redact(str(error))}") from error
        if not chunk:
            self._complete = True
            self.close()
            raise StopIteration
        return chunk

    def close(self) -> None:
        """Release the connection. It goes back to the pool after a full read and is closed otherwise."""
        if self._closed:
            return
        self._closed = True
        if not self._complete:
            self._response.close()
        self._response.release_conn()
