"""A TLS-terminating TCP relay on 127.0.0.1, so tests can reach SeaweedFS over HTTPS.

``TlsRelay`` accepts TLS connections with a certificate for 127.0.0.1 and
copies the decrypted bytes to and from a plain TCP port. Requests pass
unchanged, the ``Host`` header included, so SigV4 signatures stay valid.
"""

from __future__ import annotations

import socket
import ssl
import threading
from types import TracebackType

CHUNK = 64 * 1024


class TlsRelay:
    """A relay of TLS connections on a free port of 127.0.0.1 to ``upstream_port``."""

    def __init__(self, context: ssl.SSLContext, upstream_port: int) -> None:
        self._context = context
        self._upstream_port = upstream_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="tls-relay", daemon=True)

    @property
    def url(self) -> str:
        """The HTTPS endpoint URL of the relay."""
        return f"https://127.0.0.1:{self.port}"

    def __enter__(self) -> TlsRelay:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._closing.set()
        # On Linux, shutdown wakes the accept() that close alone leaves blocked.
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        self._thread.join(timeout=5)

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            secure = self._context.wrap_socket(client, server_side=True)
        except (ssl.SSLError, OSError):
            # A client that rejects the certificate ends the handshake here.
            client.close()
            return
        upstream = socket.create_connection(("127.0.0.1", self._upstream_port))
        threading.Thread(target=_copy, args=(upstream, secure), daemon=True).start()
        _copy(secure, upstream)


def _copy(source: socket.socket, target: socket.socket) -> None:
    """Copy bytes until ``source`` closes, then close both sockets."""
    try:
        while data := source.recv(CHUNK):
            target.sendall(data)
    except OSError:
        pass
    finally:
        for end in (source, target):
            try:
                end.close()
            except OSError:
                pass
