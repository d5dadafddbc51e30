"""One log line per kind of event per interval, and the count of those left out."""

import structlog

from services.clock import ManualClock
from services.log_throttle import LogThrottle


def test_first_event_is_logged_and_the_rest_counted_until_the_interval_ends() -> None:
    """The first event of a kind logs; the next ones within the interval do not, and the
    next line reports how many were left out."""
    clock = ManualClock()
    throttle = LogThrottle(10.0, clock)
    assert throttle.allow("bad") == 0
    assert [throttle.allow("bad") for _ in range(5)] == [None] * 5
    clock.advance(9.9)
    assert throttle.allow("bad") is None
    clock.advance(0.1)
    assert throttle.allow("bad") == 6
    assert throttle.allow("bad") is None


def test_kinds_are_throttled_apart() -> None:
    """A flood of one kind does not silence another."""
    throttle = LogThrottle(10.0, ManualClock())
    assert throttle.allow("undecodable") == 0
    assert throttle.allow("undecodable") is None
    assert throttle.allow("failed") == 0


def test_warning_and_exception_log_with_the_left_out_count() -> None:
    """The helpers write the line only when allowed, with ``left_out`` and the fields."""
    clock = ManualClock()
    throttle = LogThrottle(10.0, clock)
    log = structlog.get_logger("test")
    with structlog.testing.capture_logs() as lines:
        for _ in range(3):
            throttle.warning("bad", log, "bad body", peer="p")
        try:
            raise RuntimeError("a bug")
        except RuntimeError:
            throttle.exception("bug", log, "failed")
            throttle.exception("bug", log, "failed")
        clock.advance(10.0)
        throttle.warning("bad", log, "bad body", peer="p")
    assert [(line["event"], line["left_out"], line["log_level"]) for line in lines] == [
        ("bad body", 0, "warning"),
        ("failed", 0, "error"),
        ("bad body", 2, "warning"),
    ]
