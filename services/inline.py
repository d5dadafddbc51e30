"""Answer on the server thread when nothing has to wait; hand over to the event loop when
something does.

The authz and ratelimit gRPC servers run their handlers on grpcio's sync thread pool: a
call costs far less there than on grpc.aio (``docs/architecture.md``, "The gRPC
servers"). The services behind them are coroutines, because a few steps wait for I/O (a
JWKS fetch, a CUSTOM provider, a Redis round trip). Most calls never wait: keys are
cached, no provider applies, counts are in memory or leased.

``Inline.run`` therefore drives the call's coroutine on the calling thread. One that
returns without suspending never touches the loop. A seam that is about to wait calls
``require_loop()`` first: off the loop it raises ``NeedsLoop`` *before any side effect*,
and the call starts again from the top on the loop thread, where it may wait. The
contract for seams (counter stores, key sources, provider clients, their fakes in tests):
call ``require_loop()`` before the first ``await`` that can suspend. Code before a seam
must not have side effects a second run would repeat (the pipeline logs and counts after
its last seam for that reason).
"""

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

# grpcio reports "no deadline" as a huge time remaining, too large for a lock's timeout.
NO_DEADLINE = 86_400.0


class NeedsLoop(Exception):
    """Raised off the event loop by a seam that must wait for I/O."""


def on_loop() -> bool:
    """Whether this thread runs an event loop (where a coroutine may wait)."""
    # _get_running_loop is asyncio's public low-level accessor (events.__all__): it
    # returns None instead of raising, and costs one C call.
    return asyncio._get_running_loop() is not None


def complete_now(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to its end here, off any loop; ``NeedsLoop`` if it would wait."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coro.close()  # it suspended without require_loop: nothing may have waited yet
    raise NeedsLoop("a coroutine suspended off the event loop")


def require_loop(what: str) -> None:
    """Raise ``NeedsLoop`` unless this thread runs an event loop; ``what`` must wait."""
    if asyncio._get_running_loop() is None:
        raise NeedsLoop(what)


class Inline:
    """Runs coroutines on the calling thread, or on ``loop`` when they must wait."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def run(self, make: Callable[[], Coroutine[Any, Any, T]], timeout: float | None) -> T:
        """The result of ``make()``, computed here if it never waits; else on the loop,
        waiting at most ``timeout`` seconds (``TimeoutError``; the call is then cancelled)."""
        coro = make()
        try:
            yielded = coro.send(None)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        except NeedsLoop:
            coro = make()  # nothing happened yet: start again where waiting is possible
        else:
            if yielded is not None:  # a future can only come from a loop this thread lacks
                coro.close()
                raise RuntimeError("a coroutine waited off the event loop without require_loop")
            # A bare yield (asyncio.sleep(0)): the loop resumes the coroutine where it is.
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        if timeout is not None and timeout >= NO_DEADLINE:
            timeout = None
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise
