"""systemd service notifications (``sd_notify``): READY, STATUS, WATCHDOG, RELOADING, STOPPING, EXTEND_TIMEOUT_USEC.

Uses the ``sdnotify`` package, a small pure-Python client of the protocol:
it needs no libsystemd headers to install, unlike ``systemd-python``. Outside
systemd (no ``NOTIFY_SOCKET``) every call does nothing.
"""

from __future__ import annotations

import os
import time

import sdnotify


class Notifier:
    """Sends state changes to the service manager, if there is one."""

    def __init__(self) -> None:
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._client = sdnotify.SystemdNotifier() if self.enabled else None
        watchdog_usec = os.environ.get("WATCHDOG_USEC", "")
        watchdog_pid = os.environ.get("WATCHDOG_PID", "")
        owned = not watchdog_pid or watchdog_pid == str(os.getpid())
        #: Seconds between watchdog pings (half the unit's WatchdogSec), or None.
        self.watchdog_interval = (
            int(watchdog_usec) / 2_000_000 if watchdog_usec.isdigit() and owned else None
        )
        self._last_ping = 0.0

    def _send(self, message: str) -> None:
        if self._client is not None:
            self._client.notify(message)

    def ready(self, status: str) -> None:
        """Tell systemd that start-up or a reload is complete."""
        self._send(f"READY=1\nSTATUS={status}")

    def status(self, text: str) -> None:
        """Set the one-line status shown by ``systemctl status``."""
        self._send(f"STATUS={text}")

    def extend_start(self, status: str, seconds: float = 120.0) -> None:
        """Ask systemd for ``seconds`` more before its start timeout (EXTEND_TIMEOUT_USEC), showing ``status``."""
        self._send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}\nSTATUS={status}")

    def reloading(self) -> None:
        """Tell systemd that a configuration reload has started."""
        monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send(f"RELOADING=1\nMONOTONIC_USEC={monotonic_usec}")

    def stopping(self) -> None:
        """Tell systemd that shutdown has started."""
        self._send("STOPPING=1")

    def ping_watchdog(self) -> None:
        """Send WATCHDOG=1 if the watchdog is on and half its interval has passed."""
        if self.watchdog_interval is None:
            return
        now = time.monotonic()
        if now - self._last_ping >= self.watchdog_interval:
            self._send("WATCHDOG=1")
            self._last_ping = now
