"""Hot reload under traffic: good, then bad, then good policy; answers never stop or go wrong."""

import asyncio
from collections.abc import Callable
from typing import Any

from tests.ratelimit_calls import POLICY, make_request, write_policy
from tests.service.test_ratelimit_grpc import wait_serving

BAD = "domain: edge\ndescriptors:\n  - key: user\n    rate_limit: {unit: fortnight}\n"
GOOD_2 = POLICY.replace("requests_per_unit: 1000", "requests_per_unit: 2000")


async def test_reload_good_bad_good_under_traffic(start_app: Callable[..., Any]) -> None:
    """Every call during good→bad→good changes succeeds and shows the limit of a good set."""
    running = await start_app()
    await wait_serving(running)
    seen: list[int] = []
    errors: list[BaseException] = []
    stop = asyncio.Event()

    async def traffic() -> None:
        request = make_request("edge", [("user", "vip")])
        while not stop.is_set():
            try:
                reply = await running.stub.ShouldRateLimit(request)
                seen.append(reply.statuses[0].current_limit.requests_per_unit)
            except Exception as exc:  # any failed call fails the test below
                errors.append(exc)
            await asyncio.sleep(0)

    async def wait_for_limit(limit: int) -> None:
        for _ in range(200):
            if seen and seen[-1] == limit:
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"limit {limit} never served (last {seen[-1:]})")

    tasks = [asyncio.create_task(traffic()) for _ in range(4)]
    first_digest = running.app.state.current.digest
    await wait_for_limit(1000)

    write_policy(running.policies, BAD)
    for _ in range(100):
        if running.app.state.last_rejection is not None:
            break
        await asyncio.sleep(0.02)
    assert running.app.state.last_rejection is not None
    assert "fortnight" in running.app.state.last_rejection.errors[0]
    assert running.app.state.current.digest == first_digest
    count_at_bad = len(seen)
    await asyncio.sleep(0.2)
    assert len(seen) > count_at_bad  # still answering
    assert set(seen[count_at_bad:]) == {1000}  # with the last good policy

    write_policy(running.policies, GOOD_2)
    await wait_for_limit(2000)
    stop.set()
    await asyncio.gather(*tasks)
    assert errors == []
    assert set(seen) == {1000, 2000}
