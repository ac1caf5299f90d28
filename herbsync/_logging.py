"""structlog set-up: JSON lines for journald, readable output on a terminal."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, MutableMapping
from typing import Any

import structlog


_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class RepeatLimiter:
    """A structlog processor that drops repeats of an identical warning or error.

    Events with the same name, subject (manifest, digest or path) and error
    or reason text pass once per ``window`` seconds. The next one that passes carries ``repeated``,
    the number dropped in between.
    """

    LEVELS = frozenset({"warning", "error", "critical"})

    def __init__(self, window: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self.clock = clock
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}

    def __call__(self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        if method_name not in self.LEVELS:
            return event_dict
        detail = event_dict.get("error", event_dict.get("reason", ""))
        subject = event_dict.get("manifest", event_dict.get("digest", event_dict.get("path", "")))
        key = (str(event_dict.get("event", "")), f"{subject}\0{detail}")
        now = self.clock()
        with self._lock:
            passed_at, dropped = self._seen.get(key, (float("-inf"), 0))
            if now - passed_at < self.window:
                self._seen[key] = (passed_at, dropped + 1)
                raise structlog.DropEvent
            self._seen[key] = (now, 0)
            if len(self._seen) > 10_000:
                self._seen.clear()
        if dropped:
            event_dict["repeated"] = dropped
        return event_dict


def configure_logging(log_format: str = "auto", level: str = "info") -> None:
    """Send structlog events to stdout, as JSON unless stdout is a terminal."""
    use_json = log_format == "json" or (log_format == "auto" and not sys.stdout.isatty())
    renderer: structlog.typing.Processor
    if use_json:
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())

    processors: list[structlog.typing.Processor] = [
        RepeatLimiter(),
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if use_json:
        processors.append(structlog.processors.dict_tracebacks)
    processors.append(renderer)

    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=False,
    )
    # boto3 and watchdog log through the standard library; keep them quiet
    # unless something is wrong.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
