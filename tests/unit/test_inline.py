"""``Inline``: a call that never waits runs on the calling thread; one that must wait runs
on the event loop, from the start."""

import asyncio
import threading

import pytest

from services.inline import Inline, NeedsLoop, require_loop


async def _on_thread() -> int:
    return threading.get_ident()


async def _needs_io(started: list[int]) -> int:
    started.append(threading.get_ident())
    require_loop("a test seam")
    await asyncio.sleep(0.01)
    return threading.get_ident()


async def _bare_yield() -> int:
    await asyncio.sleep(0)
    return threading.get_ident()


async def _fails() -> int:
    raise ValueError("boom")


async def _slow(cancelled: threading.Event) -> int:
    require_loop("a slow seam")
    try:
        await asyncio.sleep(10)
    except asyncio.CancelledError:
        cancelled.set()
        raise
    return 0


async def test_a_call_that_never_waits_runs_on_the_calling_thread() -> None:
    """No suspension: the answer is computed on the handler thread, the loop untouched."""
    inline = Inline(asyncio.get_running_loop())
    caller, ran = await asyncio.to_thread(
        lambda: (threading.get_ident(), inline.run(_on_thread, 1))
    )
    assert ran == caller


async def test_a_seam_that_must_wait_moves_the_call_to_the_loop_from_the_start() -> None:
    """require_loop off the loop restarts the coroutine on the loop thread."""
    loop_thread = threading.get_ident()
    inline = Inline(asyncio.get_running_loop())
    started: list[int] = []
    caller, ran = await asyncio.to_thread(
        lambda: (threading.get_ident(), inline.run(lambda: _needs_io(started), 1))
    )
    assert ran == loop_thread
    assert started == [caller, loop_thread]  # tried inline once, then run whole on the loop


async def test_a_bare_yield_is_resumed_on_the_loop() -> None:
    """asyncio.sleep(0) off the loop: the same coroutine continues on the loop thread."""
    loop_thread = threading.get_ident()
    inline = Inline(asyncio.get_running_loop())
    assert await asyncio.to_thread(inline.run, _bare_yield, 1) == loop_thread


async def test_errors_reach_the_caller() -> None:
    """An exception raised inline is the caller's, not swallowed or retried."""
    inline = Inline(asyncio.get_running_loop())
    with pytest.raises(ValueError, match="boom"):
        await asyncio.to_thread(inline.run, _fails, 1)


async def test_a_call_out_of_time_is_cancelled_on_the_loop() -> None:
    """Past its deadline the caller gets TimeoutError and the coroutine is cancelled."""
    inline = Inline(asyncio.get_running_loop())
    cancelled = threading.Event()
    with pytest.raises(TimeoutError):
        await asyncio.to_thread(inline.run, lambda: _slow(cancelled), 0.05)
    for _ in range(100):
        if cancelled.is_set():
            break
        await asyncio.sleep(0.01)
    assert cancelled.is_set()


async def test_require_loop_passes_on_the_loop() -> None:
    """On the event loop's own thread, a seam may wait."""
    require_loop("a seam on the loop")


def test_require_loop_raises_off_the_loop() -> None:
    """Off any loop, require_loop signals the driver."""
    with pytest.raises(NeedsLoop):
        require_loop("a seam off the loop")
