"""A fault-injecting HTTP/1.1 reverse proxy on 127.0.0.1, for S3 tests.

``FaultProxy`` sits between boto3 and SeaweedFS. It forwards every request
unchanged (the ``Host`` header included, so SigV4 signatures stay valid),
streams bodies in chunks in both directions, and keeps connections alive.
Faults are armed by method and each applies to the next ``count`` matching
requests, optionally only those with a given HTTP method and/or a path
(with query) containing a given substring. One fault applies per request:
the first armed one that matches.

    with FaultProxy("127.0.0.1", server.s3_port) as proxy:
        proxy.fail(503, "SlowDown", count=2, method="GET")
        s3 = server.client(endpoint_url=proxy.url)
"""

from __future__ import annotations

import http.client
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import NamedTuple
from xml.sax.saxutils import escape

CHUNK = 64 * 1024
UPSTREAM_TIMEOUT = 60.0

# Headers that describe one connection, not the message: never forwarded as they are.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "expect",  # http.server already answered 100 Continue to the client
    }
)
BODY_METHODS = frozenset({"PUT", "POST"})
ERROR_MESSAGES = {
    "SlowDown": "Please reduce your request rate.",
    "InternalError": "We encountered an internal error. Please try again.",
    "ServiceUnavailable": "Service is unable to handle request.",
}


class Entry(NamedTuple):
    """One request the proxy saw, and the status it answered (None: no answer)."""

    method: str
    path: str
    status: int | None


@dataclass
class Fault:
    """An armed fault: ``kind`` applies to the next ``remaining`` matching requests."""

    kind: str
    remaining: int
    method: str | None = None
    path: str | None = None
    status: int = 0
    code: str = ""
    nbytes: int = 0
    offset: int | None = None
    seconds: float = 0.0

    def matches(self, method: str, path: str) -> bool:
        if self.remaining <= 0:
            return False
        if self.method is not None and self.method.upper() != method:
            return False
        if self.path is not None and self.path not in path:
            return False
        return self.kind != "flip" or method in BODY_METHODS or method == "GET"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = False
    owner: FaultProxy

    def verify_request(self, request: socket.socket, client_address: object) -> bool:
        """Refuse mode: accept the connection and close it at once."""
        if self.owner.refusing:
            self.owner._note_refused()
            return False
        return True


class FaultProxy:
    """Reverse proxy to ``upstream_host:upstream_port`` with armable faults."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.refusing = False
        self.refused_connections = 0
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._log: list[Entry] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._wake = threading.Event()

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> FaultProxy:
        """Bind a free port on 127.0.0.1 and serve from a daemon thread."""
        if self._server is not None:
            msg = "FaultProxy already started"
            raise RuntimeError(msg)
        self._wake.clear()
        server = _Server(("127.0.0.1", 0), _Handler)
        server.owner = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"faultproxy-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wake stalled requests and close open connections. Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        self._wake.set()
        server.shutdown()
        server.server_close()
        self._close_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            msg = "FaultProxy is not started"
            raise RuntimeError(msg)
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``: the endpoint URL to give boto3."""
        return f"http://127.0.0.1:{self.port}"

    # -- faults -------------------------------------------------------------

    def fail(
        self,
        status: int = 503,
        code: str = "SlowDown",
        count: int = 1,
        method: str | None = None,
        path: str | None = None,
    ) -> None:
        """Answer the next ``count`` matching requests with ``status`` and an S3 XML error."""
        self._arm(Fault("fail", count, method, path, status=status, code=code))

    def cut_after(
        self, nbytes: int, count: int = 1, method: str | None = None, path: str | None = None
    ) -> None:
        """Send the headers and the first ``nbytes`` of the body, then close the connection."""
        self._arm(Fault("cut", count, method, path, nbytes=nbytes))

    def short_body(
        self,
        count: int = 1,
        method: str | None = None,
        path: str | None = None,
        missing: int = 1,
    ) -> None:
        """Send all but the last ``missing`` bytes of a body under its full Content-Length."""
        self._arm(Fault("short", count, method, path, nbytes=missing))

    def flip_byte(
        self,
        count: int = 1,
        offset: int | None = None,
        method: str | None = None,
        path: str | None = None,
    ) -> None:
        """Flip (xor 0xFF) one byte: of the request body of a PUT/POST, else of the response.

        ``offset`` defaults to the middle of the body (by its Content-Length).
        Only GET, PUT and POST requests match.
        """
        self._arm(Fault("flip", count, method, path, offset=offset))

    def stall(
        self, seconds: float, count: int = 1, method: str | None = None, path: str | None = None
    ) -> None:
        """Wait ``seconds`` before forwarding the next ``count`` matching requests."""
        self._arm(Fault("stall", count, method, path, seconds=seconds))

    def refuse(self, on: bool = True) -> None:
        """While on, accept each connection (new or kept alive) and close it unanswered."""
        self.refusing = on

    def clear(self) -> None:
        """Disarm every fault, leave refuse mode and wake stalled requests."""
        with self._lock:
            self._faults.clear()
        self.refusing = False
        self._wake.set()
        self._wake = threading.Event()

    def pending(self) -> int:
        """Return how many fault applications remain armed."""
        with self._lock:
            return sum(fault.remaining for fault in self._faults)

    # -- log ----------------------------------------------------------------

    @property
    def log(self) -> list[Entry]:
        """A copy of the (method, path, status) entries, oldest first."""
        with self._lock:
            return list(self._log)

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self._log)

    def statuses(self, method: str | None = None, path: str | None = None) -> list[int | None]:
        """Return the statuses of logged requests, filtered like faults."""
        return [
            entry.status
            for entry in self.log
            if (method is None or entry.method == method) and (path is None or path in entry.path)
        ]

    def reset_log(self) -> None:
        with self._lock:
            self._log.clear()
            self.refused_connections = 0

    # -- used by the handler ------------------------------------------------

    def _arm(self, fault: Fault) -> None:
        if fault.remaining < 1:
            msg = f"count must be at least 1, got {fault.remaining}"
            raise ValueError(msg)
        with self._lock:
            self._faults.append(fault)

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, path):
                    fault.remaining -= 1
                    self._faults = [f for f in self._faults if f.remaining > 0]
                    return fault
        return None

    def _record(self, method: str, path: str, status: int | None) -> None:
        with self._lock:
            self._log.append(Entry(method, path, status))

    def _note_refused(self) -> None:
        with self._lock:
            self.refused_connections += 1

    def _track(self, connection: socket.socket, opened: bool) -> None:
        with self._lock:
            if opened:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def _close_connections(self) -> None:
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _sleep(self, seconds: float) -> None:
        self._wake.wait(seconds)


class _Handler(BaseHTTPRequestHandler):
    """Handles one client connection; forwards over one kept-alive upstream connection."""

    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.upstream_connection: http.client.HTTPConnection | None = None
        self.response_status: int | None = None
        self.proxy._track(self.connection, opened=True)

    def finish(self) -> None:
        self.proxy._track(self.connection, opened=False)
        self._close_upstream()
        try:
            super().finish()
        except OSError:
            pass

    @property
    def proxy(self) -> FaultProxy:
        return self.server.owner

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        """Stay quiet: the proxy's log is ``FaultProxy.log``."""

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except (OSError, http.client.HTTPException):  # a peer went away mid-request
            self.close_connection = True

    def send_response_only(self, code: int, message: str | None = None) -> None:
        if code >= 200:  # not the 100 Continue that http.server sends by itself
            # Logged before the client can see a byte of the answer, so tests can trust it.
            self.response_status = code
            self.proxy._record(self.command or "", getattr(self, "path", ""), code)
        super().send_response_only(code, message)

    def _dispatch(self) -> None:
        if self.proxy.refusing:
            self.proxy._note_refused()
            self._hang_up()
            return
        self.response_status = None
        try:
            self._answer(self.proxy._take_fault(self.command, self.path))
        finally:
            if self.response_status is None:  # no answer at all
                self.proxy._record(self.command, self.path, None)

    def _answer(self, fault: Fault | None) -> None:
        if fault is not None and fault.kind == "fail":
            self._drain_request_body()
            self._send_error_xml(fault)
            return
        if fault is not None and fault.kind == "stall":
            self.proxy._sleep(fault.seconds)
        self._forward(fault)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = do_PATCH = do_OPTIONS = _dispatch

    # -- request side -------------------------------------------------------

    def _request_body(self) -> Iterator[tuple[bool, bytes]]:
        """Yield the raw request body as (is_data, bytes) pieces, chunked framing included."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            yield from _read_chunked(self.rfile)
            return
        remaining = int(self.headers.get("Content-Length") or 0)
        while remaining > 0:
            piece = self.rfile.read(min(CHUNK, remaining))
            if not piece:
                raise ConnectionError("client closed during the request body")
            remaining -= len(piece)
            yield True, piece

    def _drain_request_body(self) -> None:
        for _ in self._request_body():
            pass

    def _upstream(self) -> http.client.HTTPConnection:
        if self.upstream_connection is None:
            host, port = self.proxy.upstream
            self.upstream_connection = http.client.HTTPConnection(
                host, port, timeout=UPSTREAM_TIMEOUT
            )
        return self.upstream_connection

    def _close_upstream(self) -> None:
        if self.upstream_connection is not None:
            self.upstream_connection.close()
            self.upstream_connection = None

    def _send_upstream(self, fault: Fault | None) -> http.client.HTTPResponse:
        """Send the request upstream, headers unchanged (Host too), body streamed."""
        connection = self._upstream()
        connection.putrequest(
            self.command, self.path, skip_host=True, skip_accept_encoding=True
        )
        for name, value in self.headers.items():
            if name.lower() not in HOP_BY_HOP:
                connection.putheader(name, value)
        connection.endheaders()
        body = self._request_body()
        if fault is not None and fault.kind == "flip" and self.command in BODY_METHODS:
            length = int(
                self.headers.get("X-Amz-Decoded-Content-Length")
                or self.headers.get("Content-Length")
                or 0
            )
            body = _flip(body, _flip_offset(fault, length))
        for _, piece in body:
            connection.send(piece)
        return connection.getresponse()

    def _forward(self, fault: Fault | None) -> None:
        try:
            response = self._send_upstream(fault)
        except (OSError, http.client.HTTPException) as error:
            self._close_upstream()
            self.close_connection = True  # the request body may be partly unread
            self._send_bad_gateway(error)
            return
        try:
            self._relay_response(response, fault)
        finally:
            if not response.isclosed():  # body not read to its end: connection unusable
                self._close_upstream()

    # -- response side ------------------------------------------------------

    def _relay_response(self, response: http.client.HTTPResponse, fault: Fault | None) -> None:
        length = response.getheader("Content-Length")
        has_body = self.command != "HEAD" and response.status not in (204, 304)
        chunked = has_body and length is None
        self.send_response_only(response.status, response.reason)
        for name, value in response.getheaders():
            if name.lower() not in HOP_BY_HOP and name.lower() != "transfer-encoding":
                self.send_header(name, value)
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if has_body:
            self._relay_body(response, fault, int(length) if length is not None else None, chunked)
        else:
            response.read()  # lets http.client reuse the upstream connection

    def _relay_body(
        self,
        response: http.client.HTTPResponse,
        fault: Fault | None,
        length: int | None,
        chunked: bool,
    ) -> None:
        pieces: Iterator[tuple[bool, bytes]] = ((True, p) for p in _read_pieces(response))
        kind = None if fault is None else fault.kind
        if kind == "flip" and self.command not in BODY_METHODS:
            pieces = _flip(pieces, _flip_offset(fault, length or 0))
        limit = _cut_limit(fault, length)
        sent = 0
        for _, piece in pieces:
            if limit is not None and sent + len(piece) >= limit:
                self._write(piece[: limit - sent], chunked)
                self._hang_up()
                return
            self._write(piece, chunked)
            sent += len(piece)
        if limit is not None:  # the body was shorter than the cut: close anyway
            self._hang_up()
        elif chunked:
            self.wfile.write(b"0\r\n\r\n")

    def _write(self, piece: bytes, chunked: bool) -> None:
        if not piece:
            return
        if chunked:
            self.wfile.write(b"%x\r\n" % len(piece) + piece + b"\r\n")
        else:
            self.wfile.write(piece)

    def _hang_up(self) -> None:
        """Close the client connection now, without finishing the response."""
        self.close_connection = True
        self._close_upstream()
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _send_error_xml(self, fault: Fault) -> None:
        message = ERROR_MESSAGES.get(fault.code, fault.code)
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{escape(fault.code)}</Code><Message>{escape(message)}</Message>"
            f"<Resource>{escape(self.path)}</Resource>"
            "<RequestId>faultproxy</RequestId></Error>"
        ).encode()
        self._send_simple(fault.status, body, {"x-amz-request-id": "faultproxy"})

    def _send_bad_gateway(self, error: BaseException) -> None:
        self._send_simple(502, f"faultproxy: upstream failed: {error!r}\n".encode(), {})

    def _send_simple(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response_only(status)
        self.send_header("Content-Type", "application/xml")
        for name, value in headers.items():
            self.send_header(name, value)
        has_body = self.command != "HEAD"
        self.send_header("Content-Length", str(len(body) if has_body else 0))
        self.end_headers()
        if has_body:
            self.wfile.write(body)


def _read_pieces(response: http.client.HTTPResponse) -> Iterator[bytes]:
    """Yield a response body in pieces of at most ``CHUNK`` bytes as they arrive."""
    while piece := response.read1(CHUNK):
        yield piece


def _read_chunked(stream: object) -> Iterator[tuple[bool, bytes]]:
    """Yield a chunked body's raw bytes as (is_data, bytes): framing lines and data.

    Chunk extensions and trailers (as in aws-chunked uploads) pass unchanged.
    """
    readline = stream.readline  # type: ignore[attr-defined]
    read = stream.read  # type: ignore[attr-defined]
    while True:
        line = readline(65537)
        if not line:
            raise ConnectionError("client closed during a chunked body")
        yield False, line
        size = int(line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            break
        while size > 0:
            piece = read(min(CHUNK, size))
            if not piece:
                raise ConnectionError("client closed during a chunk")
            size -= len(piece)
            yield True, piece
        yield False, read(2)
    while True:  # trailers, up to the empty line
        line = readline(65537)
        yield False, line
        if line in (b"\r\n", b"\n", b""):
            return


def _flip_offset(fault: Fault, length: int) -> int:
    return fault.offset if fault.offset is not None else length // 2


def _flip(pieces: Iterator[tuple[bool, bytes]], offset: int) -> Iterator[tuple[bool, bytes]]:
    """Pass ``pieces`` through with the data byte at ``offset`` xor 0xFF."""
    position = 0
    for is_data, piece in pieces:
        if is_data and position <= offset < position + len(piece):
            index = offset - position
            piece = piece[:index] + bytes([piece[index] ^ 0xFF]) + piece[index + 1 :]
        if is_data:
            position += len(piece)
        yield is_data, piece


def _cut_limit(fault: Fault | None, length: int | None) -> int | None:
    """Return after how many body bytes to hang up, or None to send it all."""
    if fault is None:
        return None
    if fault.kind == "cut":
        return fault.nbytes
    if fault.kind == "short":
        return max((length or 0) - fault.nbytes, 0)
    return None
