"""AuthzService with its decision cache: the same answers as without it, served again
only for the same policy-read attributes, never past a token's exp or a reload."""

import asyncio
import threading

from services.authz.config import AuthzConfig
from services.authz.jwt.authenticate import JwtAuthenticator
from services.authz.model import CheckInput, Decision, HttpRequest
from services.authz.providers.registry import ProviderClients
from services.authz.service import AuthzService, DecisionCacheOptions, WorkloadDefaults
from services.clock import ManualClock
from services.inline import Inline
from services.metrics import Metrics
from tests.conformance.harness import (
    allow,
    jwt_rule,
    op,
    request_authentication,
    rule,
)
from tests.jwt_issuer import ISSUER, NOW, claims, jwks, token
from tests.unit.authz.plans import compiled

DOCUMENTS = (
    request_authentication(jwt_rule(ISSUER, jwks=jwks("rsa"))),
    allow(
        rule(to=op(paths=["/public"])),
        rule(
            to=op(paths=["/private"]),
            when=[{"key": "request.auth.claims[sub]", "values": ["alice"]}],
        ),
    ),
)


def service(config: AuthzConfig | list[AuthzConfig], clock: ManualClock) -> AuthzService:
    current = (lambda: config[0]) if isinstance(config, list) else (lambda: config)
    return AuthzService(
        current,
        JwtAuthenticator(clock=clock),
        ProviderClients(),
        Metrics(),
        WorkloadDefaults(),
        clock=clock,
        cache=DecisionCacheOptions(entries=100, ttl=3600),
    )


def request(
    path: str, subject: str | None = None, exp: int | None = None, **headers: str
) -> CheckInput:
    sent = dict(headers)
    if subject is not None:
        sent["authorization"] = f"Bearer {token(claims(sub=subject, exp=exp or int(NOW) + 3600))}"
    return CheckInput(HttpRequest(host="api.example.com", path=path, headers=sent))


def outcome(decision: Decision) -> tuple[bool, int, str]:
    return decision.allowed, decision.status, decision.body


async def test_the_same_request_is_answered_from_the_cache() -> None:
    """A repeated request is a cache hit with the very same answer."""
    clock = ManualClock(NOW)
    authz = service(compiled(*DOCUMENTS), clock)
    first = await authz.check(request("/private", "alice"))
    second = await authz.check(request("/private", "alice"))
    assert outcome(first) == outcome(second) == (True, 200, "")
    assert authz.decisions is not None and authz.decisions.hits == 1


async def test_a_differing_read_attribute_is_evaluated_afresh() -> None:
    """Another subject or another path (both read by the policies) is never a hit."""
    clock = ManualClock(NOW)
    authz = service(compiled(*DOCUMENTS), clock)
    assert (await authz.check(request("/private", "alice"))).allowed
    assert not (await authz.check(request("/private", "bob"))).allowed
    assert not (await authz.check(request("/other", "alice"))).allowed
    assert authz.decisions is not None and authz.decisions.hits == 0


async def test_an_unread_header_does_not_split_the_cache() -> None:
    """A header no policy reads is not part of the key: the second request is a hit."""
    clock = ManualClock(NOW)
    authz = service(compiled(*DOCUMENTS), clock)
    await authz.check(request("/public", **{"x-request-id": "1"}))
    decision = await authz.check(request("/public", **{"x-request-id": "2"}))
    assert decision.allowed
    assert authz.decisions is not None and authz.decisions.hits == 1


async def test_a_cached_allow_ends_with_its_token() -> None:
    """Past the token's exp (and Envoy's 60 s skew) the request is evaluated again: 401."""
    clock = ManualClock(NOW)
    authz = service(compiled(*DOCUMENTS), clock)
    check = request("/private", "alice", exp=int(NOW) + 30)
    assert (await authz.check(check)).allowed
    clock.advance(31)
    assert (
        authz.decisions is not None and authz.decisions.get(("absent",), clock.monotonic()) is None
    )
    clock.advance(61)
    expired = await authz.check(check)
    assert (expired.allowed, expired.status) == (False, 401)


async def test_a_reload_drops_every_cached_answer() -> None:
    """A new policy set answers by its own policies at once, whatever was cached."""
    clock = ManualClock(NOW)
    configs = [compiled(*DOCUMENTS)]
    authz = service(configs, clock)
    assert (await authz.check(request("/public"))).allowed
    configs[0] = compiled(allow(rule(to=op(paths=["/elsewhere"]))))
    assert not (await authz.check(request("/public"))).allowed


async def test_concurrent_misses_on_handler_threads_evaluate_once() -> None:
    """Handler threads missing the same key together share one evaluation (no stampede)."""
    clock = ManualClock(NOW)
    authz = service(compiled(*DOCUMENTS), clock)
    inline = Inline(asyncio.get_running_loop())
    check = request("/private", "alice")
    start = threading.Barrier(4)  # the default executor has at least 5 threads

    def one() -> bool:
        start.wait()
        return inline.run(lambda: authz.check(check), 5).allowed

    answers = await asyncio.gather(*(asyncio.to_thread(one) for _ in range(4)))
    assert answers == [True] * 4
    cache = authz.decisions
    assert cache is not None and cache.misses - cache.coalesced == 1  # one evaluation
    assert cache.abandoned == 0
