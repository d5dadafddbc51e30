"""At most one log line per kind of event per interval, with a count of those left out.

A line per request is how a hostile client floods a log: undecodable payloads, a bug
that one crafted request triggers every time, a backend that fails every call. Call
sites ask ``LogThrottle.allow(kind)`` before logging; it answers how many events of
that kind were left out since the last line (log it with the line), or None to stay
quiet; ``warning`` and ``exception`` do both, adding ``left_out`` to the line. Metrics
still count every event.
"""

import threading
from typing import Any

from services.clock import Clock, SystemClock

DEFAULT_INTERVAL = 10.0  # seconds between two lines of one kind


class LogThrottle:
    """Decides which events get a log line; safe on any thread."""

    def __init__(self, interval: float = DEFAULT_INTERVAL, clock: Clock | None = None) -> None:
        self._interval = interval
        self._clock = clock or SystemClock()
        self._lock = threading.Lock()
        self._next: dict[str, float] = {}  # kind -> when its next line may be written
        self._left_out: dict[str, int] = {}  # kind -> events since its last line

    def allow(self, kind: str) -> int | None:
        """None: do not log this event. Else log it, with this many events of ``kind``
        left out since the previous line."""
        now = self._clock.monotonic()
        with self._lock:
            if now < self._next.get(kind, now):
                self._left_out[kind] = self._left_out.get(kind, 0) + 1
                return None
            self._next[kind] = now + self._interval
            return self._left_out.pop(kind, 0)

    def warning(self, kind: str, logger: Any, event: str, **fields: Any) -> None:
        """``logger.warning(event, left_out=..., **fields)`` if ``kind`` may log now."""
        left_out = self.allow(kind)
        if left_out is not None:
            logger.warning(event, left_out=left_out, **fields)

    def exception(self, kind: str, logger: Any, event: str, **fields: Any) -> None:
        """``logger.exception(...)`` likewise (call it in an ``except`` block)."""
        left_out = self.allow(kind)
        if left_out is not None:
            logger.exception(event, left_out=left_out, **fields)
