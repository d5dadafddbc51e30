"""The authz gRPC server itself: malformed bodies, and many Checks at once on its threads."""

import asyncio

import grpc
import pytest

from services import envoy_api as api
from tests.conformance.conftest import Launcher
from tests.conformance.harness import (
    Outcome,
    allow,
    bearer,
    jwt_rule,
    op,
    request_authentication,
    rule,
    yaml_docs,
)
from tests.hostile_bodies import check_bodies
from tests.jwt_issuer import ISSUER, claims, jwks, token

POLICIES = yaml_docs(
    request_authentication(jwt_rule(ISSUER, jwks=jwks("rsa"))),
    allow(
        rule(to=op(paths=["/public"])),
        rule(when=[{"key": "request.auth.claims[sub]", "values": ["alice"]}]),
    ),
)


@pytest.mark.parametrize("kind", list(check_bodies()))
async def test_a_body_that_is_not_a_check_request_fails_that_call_only(
    authz: Launcher, kind: str
) -> None:
    """Garbage, invalid UTF-8, a truncated message and one nested too deep are
    INVALID_ARGUMENT; the next Check is answered as usual."""
    server = await authz.start(POLICIES)
    raw = server.channel.unary_unary(
        f"/{api.AUTHORIZATION_SERVICE_NAME}/Check",
        request_serializer=None,
        response_deserializer=None,
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await raw(check_bodies()[kind])
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "the body is not a CheckRequest"
    assert (await server.outcome(path="/public")).status == 200


async def test_concurrent_checks_each_get_their_own_answer(authz: Launcher) -> None:
    """Checks in flight together on the handler threads never see each other's request."""
    server = await authz.start(POLICIES)
    alice = bearer(token(claims(sub="alice")))
    bob = bearer(token(claims(sub="bob")))
    requests = [{"path": "/private", "headers": alice if i % 2 else bob} for i in range(400)]
    outcomes: list[Outcome] = await asyncio.gather(*(server.outcome(**r) for r in requests))
    assert [o.status for o in outcomes] == [200 if i % 2 else 403 for i in range(400)]
