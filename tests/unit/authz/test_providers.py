"""CUSTOM providers: settings validated as Istio does, calls answered as Envoy's ext_authz does.

Every call goes to a real provider in this process (``tests/providers.py``) over
127.0.0.1: a gRPC ext_authz server or an HTTP one.
"""

import asyncio
import textwrap
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import aiohttp
import grpc
import pytest

from services import envoy_api as api
from services.authz.model import CheckInput, HttpRequest, Peer
from services.authz.providers.client import PAYLOAD_TOO_LARGE, ProviderDecision
from services.authz.providers.config import (
    KINDS,
    GrpcProvider,
    HeaderPatterns,
    HttpProvider,
    Provider,
    RequestBody,
    parse_provider,
)
from services.authz.providers.grpc_provider import GrpcProviderClient
from services.authz.providers.http_provider import HttpProviderClient
from services.authz.providers.registry import ProviderClients
from services.policy.errors import ErrorSink
from services.policy.fields import Fields
from services.policy.yamltext import parse_documents
from tests.providers import (
    GrpcAuthzServer,
    GrpcFailure,
    HttpAuthzServer,
    HttpReply,
    allow,
    deny,
    header_option,
    unused_port,
)

Action = api.HeaderValueOption.HeaderAppendAction

# --- helpers --------------------------------------------------------------------------------


def parse(text: str) -> tuple[Provider | None, list[str]]:
    """One extensionProviders entry from YAML; the errors as ``file:line: field: message``."""
    sink = ErrorSink("mesh.yaml")
    document = parse_documents(textwrap.dedent(text))[0]
    fields = Fields(
        document.body,
        path="extensionProviders[0]",
        sink=sink,
        line=document.line,
        what="extension provider",
        allowed={"name", *KINDS},
    )
    return parse_provider(fields), [str(error) for error in sink.errors]


def parsed(text: str) -> Provider:
    provider, errors = parse(text)
    assert errors == []
    assert provider is not None
    return provider


def envoy_check_request(request: HttpRequest) -> Any:
    """A CheckRequest as the gateway's Envoy sends it (body and partial flag included)."""
    message = api.CheckRequest()
    attributes = message.attributes
    attributes.source.address.socket_address.address = "10.0.0.7"
    attributes.source.address.socket_address.port_value = 40000
    attributes.destination.address.socket_address.address = "10.0.0.1"
    attributes.destination.address.socket_address.port_value = 8080
    attributes.context_extensions["namespace"] = "istio-system"
    http = attributes.request.http
    http.id = "1234"
    http.method = request.method
    http.host = request.host
    http.path = request.path
    http.scheme = request.scheme
    http.protocol = request.protocol
    http.headers.update(
        {":authority": request.host, ":method": request.method, ":path": request.path}
    )
    http.headers.update(request.headers)
    if request.body:
        http.body = request.body.decode()
        http.headers["x-envoy-auth-partial-body"] = str(request.body_truncated).lower()
    return message


def check_input(
    *,
    method: str = "GET",
    path: str = "/api/items?id=7&q=a%20b",
    host: str = "shop.example.com",
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    body_truncated: bool = False,
    original: bool = True,
) -> CheckInput:
    request = HttpRequest(
        method=method,
        host=host,
        path=path,
        headers=headers if headers is not None else {"authorization": "Bearer t"},
        body=body,
        body_truncated=body_truncated,
    )
    return CheckInput(
        request,
        source=Peer("10.0.0.7", 40000, "spiffe://td/ns/a/sa/b"),
        destination=Peer("10.0.0.1", 8080),
        context={"namespace": "istio-system"},
        original=envoy_check_request(request) if original else None,
    )


def grpc_provider(port: int, **settings: Any) -> GrpcProvider:
    return GrpcProvider("ext-grpc", "foo/127.0.0.1", port, **settings)


def http_provider(port: int, **settings: Any) -> HttpProvider:
    return HttpProvider("ext-http", "127.0.0.1", port, **settings)


def patterns(*items: str) -> HeaderPatterns:
    return HeaderPatterns(items)


@pytest.fixture(name="grpc_server")
async def fixture_grpc_server() -> AsyncIterator[GrpcAuthzServer]:
    async with GrpcAuthzServer() as server:
        yield server


@pytest.fixture(name="http_server")
async def fixture_http_server() -> AsyncIterator[HttpAuthzServer]:
    async with HttpAuthzServer() as server:
        yield server


async def ask_grpc(provider: GrpcProvider, check: CheckInput) -> ProviderDecision:
    client = GrpcProviderClient(provider)
    try:
        return await client.check(check)
    finally:
        await client.close()


async def ask_http(provider: HttpProvider, check: CheckInput, **options: Any) -> ProviderDecision:
    client = HttpProviderClient(provider, **options)
    try:
        return await client.check(check)
    finally:
        await client.close()


# --- configuration --------------------------------------------------------------------------


class TestProviderConfig:
    def test_grpc_defaults(self) -> None:
        """A minimal gRPC provider gets Istio's defaults: 600 s, fail closed with 403, no body."""
        provider = parsed(
            """
            name: ext
            envoyExtAuthzGrpc: {service: authz/ext-authz.authz.svc.cluster.local, port: 9000}
            """
        )
        assert provider == GrpcProvider(
            "ext", "authz/ext-authz.authz.svc.cluster.local", 9000, 600.0, False, 403
        )
        assert provider.host == "ext-authz.authz.svc.cluster.local"
        assert provider.address == "ext-authz.authz.svc.cluster.local:9000"

    def test_http_every_field(self) -> None:
        """Every envoyExtAuthzHttp field is read, with Istio's names."""
        provider = parsed(
            """
            name: ext
            envoyExtAuthzHttp:
              service: 10.1.2.3
              port: 8000
              timeout: 0.25s
              failOpen: true
              statusOnError: "503"
              clearRouteCache: true
              pathPrefix: /check
              includeRequestHeadersInCheck: [x-user, "x-b3-*", "*-id"]
              includeHeadersInCheck: [cookie]
              includeAdditionalHeadersInCheck:
                x-from: mixerless
                x-peer: "%DOWNSTREAM_REMOTE_ADDRESS%"
              includeRequestBodyInCheck:
                {maxRequestBytes: 100, allowPartialMessage: true, packAsBytes: true}
              headersToUpstreamOnAllow: [x-auth-user]
              headersToDownstreamOnDeny: [x-reason]
              headersToDownstreamOnAllow: [set-cookie]
            """
        )
        assert isinstance(provider, HttpProvider)
        assert (provider.timeout, provider.fail_open, provider.status_on_error) == (0.25, True, 503)
        assert provider.clear_route_cache
        assert provider.path_prefix == "/check"
        assert provider.request_header_patterns.patterns == ("x-user", "x-b3-*", "*-id")
        assert provider.include_headers_in_check.patterns == ("cookie",)
        assert [n for n, _ in provider.include_additional_headers_in_check] == ["x-from", "x-peer"]
        assert provider.include_request_body_in_check == RequestBody(100, True, True)
        assert provider.headers_to_upstream_on_allow.patterns == ("x-auth-user",)
        assert provider.headers_to_downstream_on_deny.patterns == ("x-reason",)
        assert provider.headers_to_downstream_on_allow.patterns == ("set-cookie",)

    def test_deprecated_header_list_counts_when_the_new_one_is_empty(self) -> None:
        """includeHeadersInCheck is used only without includeRequestHeadersInCheck (Istio)."""
        provider = parsed(
            """
            name: ext
            envoyExtAuthzHttp: {service: a.b, port: 80, includeHeadersInCheck: [x-old]}
            """
        )
        assert isinstance(provider, HttpProvider)
        assert provider.request_header_patterns.matches("x-old")

    @pytest.mark.parametrize(
        ("timeout", "seconds"), [("2s", 2.0), ("0.5s", 0.5), ("1.000000001s", 1.000000001)]
    )
    def test_protobuf_duration_timeouts(self, timeout: str, seconds: float) -> None:
        """timeout takes protobuf Duration JSON strings (seconds with an 's')."""
        provider = parsed(
            f"""
            name: ext
            envoyExtAuthzGrpc: {{service: a.b, port: 80, timeout: "{timeout}"}}
            """
        )
        assert provider.timeout == seconds

    def test_status_on_error_as_a_yaml_integer(self) -> None:
        """statusOnError is a string in Istio's API; an unquoted YAML integer is taken too."""
        provider = parsed(
            "name: ext\nenvoyExtAuthzGrpc: {service: a.b, port: 80, statusOnError: 401}"
        )
        assert provider.status_on_error == 401

    def test_header_patterns_exact_prefix_suffix_any_case(self) -> None:
        """Header patterns: exact, 'x*' prefix, '*x' suffix, all without regard to case."""
        matcher = patterns("X-User", "x-b3-*", "*-ID")
        assert [matcher.matches(n) for n in ("x-user", "X-B3-TraceId", "request-id")] == [True] * 3
        assert [matcher.matches(n) for n in ("x-user2", "x-b3", "id-x")] == [False] * 3

    @pytest.mark.parametrize(
        ("spec", "message"),
        [
            (
                "{port: 80}",
                "mesh.yaml:3: extensionProviders[0].envoyExtAuthzGrpc.service: "
                "service must not be empty",
            ),
            (
                "{service: a.b}",
                "mesh.yaml:3: extensionProviders[0].envoyExtAuthzGrpc.port: "
                "envoyExtAuthzGrpc is missing 'port'",
            ),
            (
                "{service: a.b, port: 0}",
                "envoyExtAuthzGrpc.port: port must be in the range [1, 65535], found: 0",
            ),
            (
                "{service: a.b, port: 65536}",
                "envoyExtAuthzGrpc.port: port must be in the range [1, 65535], found: 65536",
            ),
            ("{service: a/b/c, port: 80}", "envoyExtAuthzGrpc.service: invalid service 'a/b/c'"),
            ("{service: a_b.c, port: 80}", "'a_b.c' is not a valid host name or IP address"),
            ("{service: a.b, port: 80, timeout: 500ms}", "timeout: must be a protobuf Duration"),
            ("{service: a.b, port: 80, timeout: 2m}", "timeout: must be a protobuf Duration"),
            ("{service: a.b, port: 80, timeout: 5}", "got a number (5)"),
            ("{service: a.b, port: 80, timeout: -1s}", "timeout: must not be negative"),
            ("{service: a.b, port: 80, statusOnError: abc}", "invalid statusOnError 'abc'"),
            ("{service: a.b, port: 80, statusOnError: '999'}", "unsupported statusOnError 999"),
            ("{service: a.b, port: 80, statusOnError: '0'}", "unsupported statusOnError 0"),
            ("{service: a.b, port: 80, failOpen: yes please}", "failOpen: must be true or false"),
            (
                "{service: a.b, port: 80, includeRequestBodyInCheck: {}}",
                "includeRequestBodyInCheck.maxRequestBytes: maxRequestBytes must be set",
            ),
            (
                "{service: a.b, port: 80, includeRequestBodyInCheck: {maxRequestBytes: 0}}",
                "maxRequestBytes must be at least 1, found: 0",
            ),
            (
                "{service: a.b, port: 80, pathPrefix: /x}",
                "unknown key 'pathPrefix' in envoyExtAuthzGrpc",
            ),
        ],
    )
    def test_grpc_rejections(self, spec: str, message: str) -> None:
        """What Istio (or Envoy, on the config Istio makes) rejects is an error naming the field."""
        provider, errors = parse(f"\nname: ext\nenvoyExtAuthzGrpc: {spec}\n")
        assert provider is None
        assert len(errors) == 1, errors
        assert message in errors[0]

    @pytest.mark.parametrize(
        ("extra", "message"),
        [
            ("pathPrefix: check", "pathPrefix: pathPrefix must begin with `/`, found: 'check'"),
            ("pathPrefix: '/a%zz'", "invalid pathPrefix '/a%zz'"),
            (
                "includeRequestHeadersInCheck: [x-a, '*']",
                'includeRequestHeadersInCheck[1]: a single wildcard ("*") is not supported',
            ),
            ("includeHeadersInCheck: ['*']", 'includeHeadersInCheck[0]: a single wildcard ("*")'),
            ("headersToUpstreamOnAllow: ['*']", "headersToUpstreamOnAllow[0]: a single wildcard"),
            ("headersToDownstreamOnDeny: ['*']", "headersToDownstreamOnDeny[0]: a single wildcard"),
            ("headersToDownstreamOnAllow: ['*']", "headersToDownstreamOnAllow[0]: a single"),
            ("headersToDownstreamOnAllow: [7]", "must be a header name pattern, got a number (7)"),
            ("headersToDownstreamOnAllow: x-a", "headersToDownstreamOnAllow: must be a list"),
            (
                "includeAdditionalHeadersInCheck: {host: x}",
                "includeAdditionalHeadersInCheck.host: :-prefixed or host headers may not be",
            ),
            (
                "includeAdditionalHeadersInCheck: {':path': /x}",
                ":-prefixed or host headers may not be modified",
            ),
            (
                "includeAdditionalHeadersInCheck: {content-length: '5'}",
                "content-length is about the connection",
            ),
            ("includeAdditionalHeadersInCheck: {x-n: 5}", "x-n: must be a string, got a number"),
            ("includeAdditionalHeadersInCheck: {x-n: 50%}", "write %% for a literal %"),
            (
                "includeAdditionalHeadersInCheck: {x-n: '%START_TIME%'}",
                "unsupported command operator %START_TIME%",
            ),
        ],
    )
    def test_http_rejections(self, extra: str, message: str) -> None:
        """The HTTP-only fields are checked as Istio and Envoy check them."""
        provider, errors = parse(
            f"\nname: ext\nenvoyExtAuthzHttp:\n  service: a.b\n  port: 80\n  {extra}\n"
        )
        assert provider is None
        assert len(errors) == 1, errors
        assert message in errors[0]
        assert errors[0].startswith("mesh.yaml:6: extensionProviders[0].envoyExtAuthzHttp.")

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("envoyExtAuthzGrpc: {service: a.b, port: 80}", "name: extension provider name must"),
            ("name: ext", "envoyExtAuthzGrpc: extension provider must set one of"),
            (
                "{name: ext, envoyExtAuthzGrpc: {service: a, port: 1}, "
                "envoyExtAuthzHttp: {service: a, port: 1}}",
                "envoyExtAuthzHttp: only one of envoyExtAuthzGrpc, envoyExtAuthzHttp may be set",
            ),
        ],
    )
    def test_entry_rejections(self, text: str, message: str) -> None:
        """An entry needs a name and exactly one ext_authz kind."""
        provider, errors = parse(text)
        assert provider is None
        assert any(message in error for error in errors), errors

    def test_every_problem_is_reported_at_once(self) -> None:
        """Validation goes on after the first problem, so one pass reports them all."""
        _, errors = parse(
            """
            name: ext
            envoyExtAuthzHttp:
              port: 0
              timeout: 1m
              headersToUpstreamOnAllow: ['*']
            """
        )
        assert [e.split(": ")[1].rsplit(".", 1)[1] for e in errors] == [
            "service",
            "port",
            "timeout",
            "headersToUpstreamOnAllow[0]",
        ]


# --- gRPC provider --------------------------------------------------------------------------


class TestGrpcRequest:
    async def test_the_original_check_request_is_forwarded(
        self, grpc_server: GrpcAuthzServer
    ) -> None:
        """The provider receives the gateway's CheckRequest, field for field."""
        check = check_input(headers={"authorization": "Bearer t", "x-custom": "1"})
        decision = await ask_grpc(grpc_provider(grpc_server.port), check)
        assert decision == ProviderDecision(True)
        assert grpc_server.requests == [check.original]

    async def test_without_body_setting_the_body_is_not_sent(
        self, grpc_server: GrpcAuthzServer
    ) -> None:
        """Without includeRequestBodyInCheck, body and x-envoy-auth-partial-body are cleared."""
        check = check_input(method="POST", body=b'{"a": 1}')
        await ask_grpc(grpc_provider(grpc_server.port), check)
        http = grpc_server.requests[0].attributes.request.http
        assert (http.body, http.raw_body) == ("", b"")
        assert "x-envoy-auth-partial-body" not in http.headers
        assert http.method == "POST"

    async def test_body_is_sent_up_to_the_limit(self, grpc_server: GrpcAuthzServer) -> None:
        """includeRequestBodyInCheck sends the body, flagged whole with partial-body false."""
        provider = grpc_provider(grpc_server.port, include_request_body_in_check=RequestBody(100))
        await ask_grpc(provider, check_input(method="POST", body=b"hello"))
        http = grpc_server.requests[0].attributes.request.http
        assert (http.body, http.headers["x-envoy-auth-partial-body"]) == ("hello", "false")

    async def test_pack_as_bytes_uses_raw_body(self, grpc_server: GrpcAuthzServer) -> None:
        """packAsBytes puts the body in raw_body instead of body."""
        settings = RequestBody(100, pack_as_bytes=True)
        provider = grpc_provider(grpc_server.port, include_request_body_in_check=settings)
        await ask_grpc(provider, check_input(method="POST", body=b"hello"))
        http = grpc_server.requests[0].attributes.request.http
        assert (http.body, http.raw_body) == ("", b"hello")

    async def test_partial_message_is_cut_and_flagged(self, grpc_server: GrpcAuthzServer) -> None:
        """Over maxRequestBytes with allowPartialMessage: the first bytes, flagged partial."""
        settings = RequestBody(4, allow_partial_message=True)
        provider = grpc_provider(grpc_server.port, include_request_body_in_check=settings)
        await ask_grpc(provider, check_input(method="POST", body=b"0123456789"))
        http = grpc_server.requests[0].attributes.request.http
        assert (http.body, http.headers["x-envoy-auth-partial-body"]) == ("0123", "true")

    @pytest.mark.parametrize("fail_open", [False, True])
    async def test_body_over_the_limit_is_413(
        self, grpc_server: GrpcAuthzServer, fail_open: bool
    ) -> None:
        """Over maxRequestBytes without allowPartialMessage: 413, unasked, even with failOpen."""
        provider = grpc_provider(
            grpc_server.port, include_request_body_in_check=RequestBody(4), fail_open=fail_open
        )
        decision = await ask_grpc(provider, check_input(method="POST", body=b"0123456789"))
        assert decision == PAYLOAD_TOO_LARGE == ProviderDecision(False, 413, "Payload Too Large")
        assert grpc_server.requests == []

    async def test_body_cut_by_the_gateway_is_413(self, grpc_server: GrpcAuthzServer) -> None:
        """A body the gateway already truncated counts as over the provider's limit."""
        provider = grpc_provider(grpc_server.port, include_request_body_in_check=RequestBody(100))
        check = check_input(method="POST", body=b"0123", body_truncated=True)
        assert await ask_grpc(provider, check) == PAYLOAD_TOO_LARGE

    async def test_without_original_a_request_is_built(self, grpc_server: GrpcAuthzServer) -> None:
        """A CheckInput without its CheckRequest is sent as one built from its fields."""
        check = check_input(headers={"x-a": "1"}, original=False)
        await ask_grpc(grpc_provider(grpc_server.port), check)
        attributes = grpc_server.requests[0].attributes
        http = attributes.request.http
        assert (http.method, http.host, http.path) == (
            "GET",
            check.request.host,
            check.request.path,
        )
        assert dict(http.headers) == {
            ":authority": check.request.host,
            ":method": "GET",
            ":path": check.request.path,
            "x-a": "1",
        }
        assert attributes.source.address.socket_address.address == "10.0.0.7"
        assert attributes.source.principal == "spiffe://td/ns/a/sa/b"
        assert dict(attributes.context_extensions) == {"namespace": "istio-system"}


class TestGrpcAllow:
    async def test_header_changes(self, grpc_server: GrpcAuthzServer) -> None:
        """OK: headers set upstream, headers_to_remove removed, response headers downstream."""
        grpc_server.reply = allow(
            [("X-Auth-User", "alice")],
            remove=["authorization", ":path", "host"],
            response_headers=[("set-cookie", "s=1")],
        )
        decision = await ask_grpc(grpc_provider(grpc_server.port), check_input())
        assert decision == ProviderDecision(
            True,
            upstream_headers=(("x-auth-user", "alice"),),
            upstream_headers_to_remove=("authorization",),
            downstream_headers=(("set-cookie", "s=1"),),
        )

    @pytest.mark.parametrize(
        ("option", "result"),
        [
            (header_option("x-tag", "b"), "b"),
            (header_option("x-tag", "b", append=False), "b"),
            (header_option("x-tag", "b", append=True), "a,b"),
            (header_option("x-tag", "b", action=Action.ADD_IF_ABSENT), None),
            (header_option("x-tag", "b", action=Action.OVERWRITE_IF_EXISTS), "b"),
            (header_option("x-tag", "b", action=Action.OVERWRITE_IF_EXISTS_OR_ADD), "b"),
        ],
    )
    async def test_append_semantics_on_an_existing_header(
        self, grpc_server: GrpcAuthzServer, option: Any, result: str | None
    ) -> None:
        """append false (the default) replaces, append true joins with ',', actions apply."""
        grpc_server.reply = allow([option])
        check = check_input(headers={"x-tag": "a"})
        decision = await ask_grpc(grpc_provider(grpc_server.port), check)
        assert dict(decision.upstream_headers).get("x-tag") == result

    @pytest.mark.parametrize(
        ("option", "result"),
        [
            (header_option("x-tag", "b", append=True), None),
            (header_option("x-tag", "b", action=Action.ADD_IF_ABSENT), "b"),
            (header_option("x-tag", "b", action=Action.OVERWRITE_IF_EXISTS), None),
        ],
    )
    async def test_append_semantics_on_a_missing_header(
        self, grpc_server: GrpcAuthzServer, option: Any, result: str | None
    ) -> None:
        """Appending to or overwriting an absent header does nothing; add-if-absent adds."""
        grpc_server.reply = allow([option])
        decision = await ask_grpc(grpc_provider(grpc_server.port), check_input(headers={}))
        assert dict(decision.upstream_headers).get("x-tag") == result

    async def test_query_changes_and_dynamic_metadata(self, grpc_server: GrpcAuthzServer) -> None:
        """Query parameter changes and dynamic metadata are carried in the decision."""
        reply = allow(metadata={"user": "alice"})
        reply.ok_response.query_parameters_to_set.add(key="tenant", value="t1")
        reply.ok_response.query_parameters_to_remove.append("token")
        grpc_server.reply = reply
        decision = await ask_grpc(grpc_provider(grpc_server.port), check_input())
        assert decision.query_parameters_to_set == (("tenant", "t1"),)
        assert decision.query_parameters_to_remove == ("token",)
        assert decision.dynamic_metadata == {"user": "alice"}


class TestGrpcDeny:
    async def test_status_body_and_headers_pass_through(self, grpc_server: GrpcAuthzServer) -> None:
        """denied_response status, body and headers go to the client."""
        grpc_server.reply = deny(401, "who are you?", [("WWW-Authenticate", "Bearer")])
        decision = await ask_grpc(grpc_provider(grpc_server.port), check_input())
        assert decision == ProviderDecision(
            False, 401, "who are you?", downstream_headers=(("www-authenticate", "Bearer"),)
        )

    @pytest.mark.parametrize("status", [None, 0, 299])
    async def test_default_status_is_403(
        self, grpc_server: GrpcAuthzServer, status: int | None
    ) -> None:
        """A denial with no status, 0, or one outside Envoy's StatusCode enum is a 403."""
        grpc_server.reply = deny(status, "no")
        decision = await ask_grpc(grpc_provider(grpc_server.port), check_input())
        assert (decision.allowed, decision.status, decision.error) == (False, 403, False)

    async def test_any_non_ok_status_is_a_denial(self, grpc_server: GrpcAuthzServer) -> None:
        """A CheckResponse with a non-OK status and no denied_response is a plain 403."""
        reply = api.CheckResponse()
        reply.status.code = grpc.StatusCode.UNAUTHENTICATED.value[0]
        grpc_server.reply = reply
        decision = await ask_grpc(grpc_provider(grpc_server.port), check_input())
        assert decision == ProviderDecision(False, 403)


class TestGrpcErrors:
    @pytest.mark.parametrize(
        "code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN]
    )
    async def test_failed_call_fails_closed(
        self, grpc_server: GrpcAuthzServer, code: grpc.StatusCode
    ) -> None:
        """A failed call is denied with statusOnError and an empty body."""
        grpc_server.reply = GrpcFailure(code, "broken")
        provider = grpc_provider(grpc_server.port, status_on_error=503)
        decision = await ask_grpc(provider, check_input())
        assert decision == ProviderDecision(False, 503, "", error=True)

    async def test_failed_call_with_fail_open_allows(self, grpc_server: GrpcAuthzServer) -> None:
        """With failOpen a failed call lets the request through, marked as an error."""
        grpc_server.reply = GrpcFailure(grpc.StatusCode.INTERNAL)
        decision = await ask_grpc(grpc_provider(grpc_server.port, fail_open=True), check_input())
        assert decision == ProviderDecision(True, error=True)

    async def test_slow_provider_times_out(self, grpc_server: GrpcAuthzServer) -> None:
        """The provider timeout is the call's deadline; a late answer is an error (403)."""
        grpc_server.delay = 2.0
        started = time.monotonic()
        decision = await ask_grpc(grpc_provider(grpc_server.port, timeout=0.2), check_input())
        assert decision == ProviderDecision(False, 403, "", error=True)
        assert time.monotonic() - started < 1.5

    async def test_unreachable_provider_fails_closed(self) -> None:
        """Nothing listening: statusOnError, fail closed by default."""
        provider = grpc_provider(await unused_port(), timeout=5.0)
        assert await ask_grpc(provider, check_input()) == ProviderDecision(False, 403, error=True)

    async def test_error_response_is_an_error(self, grpc_server: GrpcAuthzServer) -> None:
        """error_response (newer API) takes the error path: failOpen or statusOnError."""
        reply = api.CheckResponse()
        reply.status.code = grpc.StatusCode.INTERNAL.value[0]
        reply.error_response.body = "backend down"
        grpc_server.reply = reply
        closed = await ask_grpc(grpc_provider(grpc_server.port, status_on_error=503), check_input())
        assert closed == ProviderDecision(False, 503, "backend down", error=True)
        opened = await ask_grpc(grpc_provider(grpc_server.port, fail_open=True), check_input())
        assert opened == ProviderDecision(True, error=True)

    @pytest.mark.parametrize("answer", [b"\xff\xff\xff\xff not protobuf", b"\x0a\x05ab"])
    async def test_an_answer_that_is_no_check_response_is_an_error(self, answer: bytes) -> None:
        """Bytes that are not a CheckResponse are a failed call: statusOnError or failOpen,
        never an exception."""
        server = grpc.aio.server()
        handler = grpc.unary_unary_rpc_method_handler(lambda request, context: answer)
        server.add_generic_rpc_handlers(
            [
                grpc.method_handlers_generic_handler(
                    api.AUTHORIZATION_SERVICE_NAME, {"Check": handler}
                )
            ]
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            closed = await ask_grpc(grpc_provider(port, status_on_error=503), check_input())
            opened = await ask_grpc(grpc_provider(port, fail_open=True), check_input())
        finally:
            await server.stop(0)
        assert closed == ProviderDecision(False, 503, "", error=True)
        assert opened == ProviderDecision(True, error=True)

    async def test_channel_is_reused_and_reopened_after_close(
        self, grpc_server: GrpcAuthzServer
    ) -> None:
        """One client serves many calls, and works again after close()."""
        client = GrpcProviderClient(grpc_provider(grpc_server.port))
        results = await asyncio.gather(*(client.check(check_input()) for _ in range(5)))
        await client.close()
        results.append(await client.check(check_input()))
        await client.close()
        assert all(r.allowed for r in results) and len(grpc_server.requests) == 6


# --- HTTP provider --------------------------------------------------------------------------


class TestHttpRequest:
    async def test_method_path_host_and_default_headers(self, http_server: HttpAuthzServer) -> None:
        """Same method; pathPrefix + path and query; Host, Authorization, Content-Length 0 only."""
        check = check_input(
            method="DELETE",
            headers={"authorization": "Bearer t", "cookie": "c=1", "user-agent": "curl"},
        )
        await ask_http(http_server_provider(http_server, path_prefix="/check"), check)
        [seen] = http_server.requests
        assert (seen.method, seen.target) == ("DELETE", "/check/api/items?id=7&q=a%20b")
        assert sorted(seen.headers) == [
            ("authorization", "Bearer t"),
            ("content-length", "0"),
            ("host", "shop.example.com"),
        ]
        assert seen.body == b""

    async def test_fragment_is_not_sent(self, http_server: HttpAuthzServer) -> None:
        """A fragment in the original path never reaches the provider."""
        await ask_http(http_server_provider(http_server), check_input(path="/a?b=1#frag"))
        assert http_server.requests[0].target == "/a?b=1"

    async def test_include_request_headers_patterns(self, http_server: HttpAuthzServer) -> None:
        """includeRequestHeadersInCheck: exact, prefix and suffix patterns, any case."""
        provider = http_server_provider(
            http_server, include_request_headers_in_check=patterns("X-User", "x-b3-*", "*-id")
        )
        headers = {
            "x-user": "alice",
            "x-b3-traceid": "t",
            "x-request-id": "r",
            "x-other": "no",
            "connection": "keep-alive, x-user",
            "x-envoy-auth-partial-body": "spoofed",
        }
        await ask_http(provider, check_input(headers=headers))
        seen = http_server.requests[0]
        assert seen.names == {"host", "content-length", "x-user", "x-b3-traceid", "x-request-id"}

    async def test_without_body_setting_no_body_and_no_partial_flag(
        self, http_server: HttpAuthzServer
    ) -> None:
        """Without includeRequestBodyInCheck: no body; a client's partial-body flag is dropped."""
        provider = http_server_provider(
            http_server, include_request_headers_in_check=patterns("x-envoy-*")
        )
        headers = {"x-envoy-auth-partial-body": "false", "x-envoy-x": "1"}
        await ask_http(provider, check_input(method="POST", headers=headers, body=b"secret"))
        seen = http_server.requests[0]
        assert (seen.body, seen.header("content-length")) == (b"", "0")
        assert seen.names == {"host", "content-length", "x-envoy-x"}

    async def test_deprecated_header_list(self, http_server: HttpAuthzServer) -> None:
        """includeHeadersInCheck is used when includeRequestHeadersInCheck is empty."""
        provider = http_server_provider(http_server, include_headers_in_check=patterns("x-old"))
        await ask_http(provider, check_input(headers={"x-old": "1", "x-new": "2"}))
        assert http_server.requests[0].header("x-old") == "1"
        assert http_server.requests[0].header("x-new") is None

    async def test_additional_headers_override_client_headers(
        self, http_server: HttpAuthzServer
    ) -> None:
        """includeAdditionalHeadersInCheck values replace client headers; operators expand."""
        provider = parsed(
            f"""
            name: ext
            envoyExtAuthzHttp:
              service: 127.0.0.1
              port: {http_server.port}
              includeRequestHeadersInCheck: [x-tenant]
              includeAdditionalHeadersInCheck:
                X-Tenant: fixed
                authorization: "static %% token"
                x-peer: "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%:%REQ(x-tenant)%"
            """
        )
        assert isinstance(provider, HttpProvider)
        check = check_input(headers={"x-tenant": "spoofed", "authorization": "Bearer t"})
        await ask_http(provider, check)
        seen = http_server.requests[0]
        assert seen.header("x-tenant") == "fixed"
        assert seen.header("authorization") == "static % token"
        assert seen.header("x-peer") == "10.0.0.7:spoofed"

    async def test_body_is_sent_with_its_length(self, http_server: HttpAuthzServer) -> None:
        """includeRequestBodyInCheck: the body goes along, Content-Length says its size."""
        provider = http_server_provider(http_server, include_request_body_in_check=RequestBody(100))
        await ask_http(provider, check_input(method="POST", body=b"hello"))
        seen = http_server.requests[0]
        assert (seen.body, seen.header("content-length")) == (b"hello", "5")
        assert seen.header("x-envoy-auth-partial-body") is None  # not an allowed header

    async def test_partial_body_and_its_header(self, http_server: HttpAuthzServer) -> None:
        """allowPartialMessage cuts the body; the partial flag goes if a pattern allows it."""
        provider = http_server_provider(
            http_server,
            include_request_body_in_check=RequestBody(4, allow_partial_message=True),
            include_request_headers_in_check=patterns("x-envoy-*"),
        )
        await ask_http(provider, check_input(method="POST", body=b"0123456789"))
        seen = http_server.requests[0]
        assert (seen.body, seen.header("x-envoy-auth-partial-body")) == (b"0123", "true")

    @pytest.mark.parametrize("fail_open", [False, True])
    async def test_body_over_the_limit_is_413(
        self, http_server: HttpAuthzServer, fail_open: bool
    ) -> None:
        """Over maxRequestBytes without allowPartialMessage: 413, unasked, even with failOpen."""
        provider = http_server_provider(
            http_server, include_request_body_in_check=RequestBody(4), fail_open=fail_open
        )
        decision = await ask_http(provider, check_input(method="POST", body=b"0123456789"))
        assert decision == PAYLOAD_TOO_LARGE
        assert http_server.requests == []


def http_server_provider(server: HttpAuthzServer, **settings: Any) -> HttpProvider:
    return http_provider(server.port, **settings)


class TestHttpAllow:
    async def test_only_200_allows(self, http_server: HttpAuthzServer) -> None:
        """200 allows; with no header lists configured nothing is passed on."""
        http_server.reply = HttpReply(200, [("x-auth-user", "alice")], b"ignored")
        decision = await ask_http(http_server_provider(http_server), check_input())
        assert decision == ProviderDecision(True)

    async def test_headers_to_upstream_and_downstream(self, http_server: HttpAuthzServer) -> None:
        """headersToUpstreamOnAllow go upstream, headersToDownstreamOnAllow to the client."""
        http_server.reply = HttpReply(
            200,
            [
                ("X-Auth-User", "alice"),
                ("x-auth-role", "a"),
                ("x-auth-role", "b"),
                ("Set-Cookie", "s=1"),
                ("x-internal", "no"),
                ("x-envoy-auth-headers-to-remove", "authorization, x-api-key, :path, host"),
            ],
        )
        provider = http_server_provider(
            http_server,
            headers_to_upstream_on_allow=patterns("x-auth-*"),
            headers_to_downstream_on_allow=patterns("set-cookie"),
        )
        decision = await ask_http(provider, check_input())
        assert decision == ProviderDecision(
            True,
            upstream_headers=(("x-auth-user", "alice"), ("x-auth-role", "b")),
            upstream_headers_to_remove=("authorization", "x-api-key"),
            downstream_headers=(("set-cookie", "s=1"),),
        )

    async def test_framing_headers_never_go_upstream(self, http_server: HttpAuthzServer) -> None:
        """A pattern matching content-length still never sends the provider's framing upstream."""
        http_server.reply = HttpReply(200, [("Content-Type", "text/plain")], b"ok")
        provider = http_server_provider(http_server, headers_to_upstream_on_allow=patterns("c*"))
        decision = await ask_http(provider, check_input())
        assert decision.upstream_headers == (("content-type", "text/plain"),)


class TestHttpDeny:
    async def test_status_body_and_all_headers_by_default(
        self, http_server: HttpAuthzServer
    ) -> None:
        """Non-200: that status and body; with no headersToDownstreamOnDeny, all its headers."""
        http_server.reply = HttpReply(
            401, [("WWW-Authenticate", "Basic"), ("x-reason", "no token")], b"login first"
        )
        decision = await ask_http(http_server_provider(http_server), check_input())
        assert (decision.allowed, decision.status, decision.body) == (False, 401, "login first")
        headers = dict(decision.downstream_headers)
        assert headers["www-authenticate"] == "Basic" and headers["x-reason"] == "no token"
        assert "content-length" not in headers and not decision.error

    async def test_headers_to_downstream_on_deny_filters(
        self, http_server: HttpAuthzServer
    ) -> None:
        """headersToDownstreamOnDeny keeps its headers, plus WWW-Authenticate and Location."""
        http_server.reply = HttpReply(
            302,
            [("Location", "https://login/"), ("x-reason", "r"), ("x-trace", "t"), ("Server", "s")],
        )
        provider = http_server_provider(
            http_server, headers_to_downstream_on_deny=patterns("x-re*")
        )
        decision = await ask_http(provider, check_input())
        assert decision == ProviderDecision(
            False, 302, "", downstream_headers=(("location", "https://login/"), ("x-reason", "r"))
        )

    async def test_other_2xx_is_a_denial(self, http_server: HttpAuthzServer) -> None:
        """Only 200 allows: a 204 is a denial with status 204."""
        http_server.reply = HttpReply(204)
        decision = await ask_http(http_server_provider(http_server), check_input())
        assert (decision.allowed, decision.status) == (False, 204)

    async def test_body_read_is_bounded_and_decoded(self, http_server: HttpAuthzServer) -> None:
        """A long body is cut at max_body_bytes; invalid UTF-8 is replaced."""
        http_server.reply = HttpReply(403, body=b"\xff" + b"x" * 100_000)
        decision = await ask_http(
            http_server_provider(http_server), check_input(), max_body_bytes=10
        )
        assert decision.body == "\ufffd" + "x" * 9


class TestHttpErrors:
    @pytest.mark.parametrize("status", [500, 503, 599])
    async def test_5xx_fails_closed(self, http_server: HttpAuthzServer, status: int) -> None:
        """A 5xx is an error, not a denial: statusOnError with an empty body."""
        http_server.reply = HttpReply(status, [("x-reason", "r")], b"oops")
        decision = await ask_http(
            http_server_provider(http_server, status_on_error=401), check_input()
        )
        assert decision == ProviderDecision(False, 401, "", error=True)

    @pytest.mark.parametrize("status", [600, 999, 99])
    async def test_a_status_that_is_no_http_status_is_an_error(
        self, http_server: HttpAuthzServer, status: int
    ) -> None:
        """600 or 99 is a provider failure (statusOnError, or failOpen), never sent on."""
        http_server.reply = HttpReply(status, [("x-reason", "r")], b"oops")
        closed = await ask_http(
            http_server_provider(http_server, status_on_error=401), check_input()
        )
        assert closed == ProviderDecision(False, 401, "", error=True)
        opened = await ask_http(http_server_provider(http_server, fail_open=True), check_input())
        assert opened == ProviderDecision(True, error=True)

    async def test_5xx_with_fail_open_allows(self, http_server: HttpAuthzServer) -> None:
        """With failOpen a 5xx lets the request through, marked as an error."""
        http_server.reply = HttpReply(500)
        decision = await ask_http(http_server_provider(http_server, fail_open=True), check_input())
        assert decision == ProviderDecision(True, error=True)

    async def test_slow_provider_times_out(self, http_server: HttpAuthzServer) -> None:
        """The provider timeout bounds the whole call; a late answer is an error."""
        http_server.delay = 2.0
        started = time.monotonic()
        provider = http_server_provider(http_server, timeout=0.2, status_on_error=504)
        decision = await ask_http(provider, check_input())
        assert decision == ProviderDecision(False, 504, "", error=True)
        assert time.monotonic() - started < 1.5

    async def test_unreachable_provider_fails_closed(self) -> None:
        """Nothing listening: 403 by default."""
        provider = http_provider(await unused_port(), timeout=5.0)
        assert await ask_http(provider, check_input()) == ProviderDecision(False, 403, error=True)

    async def test_unreachable_provider_with_fail_open(self) -> None:
        """Nothing listening, failOpen: allowed, marked as an error."""
        provider = http_provider(await unused_port(), fail_open=True)
        assert await ask_http(provider, check_input()) == ProviderDecision(True, error=True)

    async def test_no_cookies_kept_between_calls(self, http_server: HttpAuthzServer) -> None:
        """A Set-Cookie from the provider is not sent back on the next check."""
        http_server.reply = HttpReply(200, [("Set-Cookie", "session=abc; Path=/")])
        provider = replace(http_server_provider(http_server), service="localhost")
        client = HttpProviderClient(provider)  # a host name: cookie jars skip IP addresses
        await client.check(check_input())
        await client.check(check_input())
        await client.close()
        assert http_server.requests[1].header("cookie") is None


# --- registry -------------------------------------------------------------------------------


class TestProviderClients:
    async def test_same_settings_share_a_client(self) -> None:
        """Equal provider settings (e.g. after a reload) get the same client."""
        clients = ProviderClients()
        first = clients.get(grpc_provider(9000))
        assert clients.get(grpc_provider(9000)) is first
        assert clients.get(http_provider(9000)) is not first
        await clients.close()

    async def test_changed_provider_replaces_and_closes_the_old_client(
        self, http_server: HttpAuthzServer
    ) -> None:
        """A provider whose settings change gets a new client; the old one is closed."""
        sessions: list[aiohttp.ClientSession] = []

        def factory() -> aiohttp.ClientSession:
            sessions.append(aiohttp.ClientSession())
            return sessions[-1]

        clients = ProviderClients(http_session_factory=factory, grace=0)
        old = http_server_provider(http_server)
        await clients.get(old).check(check_input())
        await clients.get(replace(old, timeout=5.0)).check(check_input())
        await asyncio.sleep(0.05)
        assert [s.closed for s in sessions] == [True, False]
        await clients.close()
        assert all(s.closed for s in sessions)

    async def test_retain_closes_removed_providers(self, http_server: HttpAuthzServer) -> None:
        """retain() closes the clients of providers a reload dropped."""
        sessions: list[aiohttp.ClientSession] = []

        def factory() -> aiohttp.ClientSession:
            sessions.append(aiohttp.ClientSession())
            return sessions[-1]

        clients = ProviderClients(http_session_factory=factory, grace=0)
        kept, dropped = (
            http_server_provider(http_server),
            replace(http_server_provider(http_server), name="other"),
        )
        for provider in (kept, dropped):
            await clients.get(provider).check(check_input())
        await clients.retain([kept])
        await asyncio.sleep(0.05)
        assert [s.closed for s in sessions] == [False, True]
        await clients.close()
