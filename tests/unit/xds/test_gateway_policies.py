"""Gateway and RateLimitPolicy documents: validation, and the two halves of a quota agreeing."""

import textwrap
from pathlib import Path

import pytest

from services.catalog.loader import LoadOptions, PolicySet, load_directory
from services.policy.errors import PolicyLoadError
from services.ratelimit.match import find_limit
from services.ratelimit.model import DescriptorRequest, Unit
from services.xds.direct_response import DirectResponse
from services.xds.ratelimit_policy import route_actions
from services.xds.snapshot import ROUTE

GATEWAY = """
apiVersion: mixerless.io/v1alpha1
kind: Gateway
metadata: {name: public, namespace: istio-system, labels: {istio: ingressgateway}}
spec:
  listeners: [{name: http, port: 10000}]
  routes:
  - name: products
    match: {prefix: /product}
    backend: {endpoints: ["127.0.0.1:9000"]}
  - name: default
    backend: {endpoints: ["backend.internal:8080"]}
"""


def load(tmp_path: Path, *texts: str) -> PolicySet:
    for index, text in enumerate(texts):
        (tmp_path / f"p{index}.yaml").write_text(textwrap.dedent(text).lstrip())
    return load_directory(tmp_path, LoadOptions())


def errors(tmp_path: Path, *texts: str) -> list[str]:
    with pytest.raises(PolicyLoadError) as info:
        load(tmp_path, *texts)
    return [str(e).replace(f"{tmp_path}/", "") for e in info.value.errors]


def quota(spec: str) -> str:
    return (
        "apiVersion: mixerless.io/v1alpha1\nkind: RateLimitPolicy\n"
        "metadata: {name: q, namespace: istio-system}\nspec:\n"
        "  targetRef: {kind: Gateway, name: public}\n" + textwrap.indent(spec, "  ")
    )


INVALID_GATEWAYS = {
    "bad endpoint": ("127.0.0.1:9000", "localhost", "'localhost' must be host:port"),
    "duplicate port": (
        "listeners: [{name: http, port: 10000}]",
        "listeners: [{name: http, port: 10000}, {name: other, port: 10000}]",
        "port 10000 is already used by listener 'http'",
    ),
    "bad route name": ("name: products", "name: Products_1", "must be a DNS label"),
    "two path matches": (
        "match: {prefix: /product}",
        "match: {prefix: /product, exact: /x}",
        "only one of prefix, exact or regex may be set",
    ),
    "bad regex": (
        "match: {prefix: /product}",
        "match: {regex: '(['}",
        "p0.yaml:8: spec.routes[0].match.regex: invalid regex '([': RE2 refuses it: missing ]: [",
    ),
    "regex RE2 cannot compile": (
        "match: {prefix: /product}",
        "match: {regex: '^/product(?=/)'}",
        "spec.routes[0].match.regex: invalid regex '^/product(?=/)': RE2 refuses it: "
        "invalid perl operator: (?=",
    ),
    "unknown rate limit action": (
        'backend: {endpoints: ["127.0.0.1:9000"]}',
        'backend: {endpoints: ["127.0.0.1:9000"]}\n    rateLimits: [{actions: [{nope: {}}]}]',
        "rateLimits: entry 0 is not an Envoy RateLimit",
    ),
    "lower-case method": (
        "match: {prefix: /product}",
        "match: {prefix: /product, methods: [get]}",
        "method 'get' must be upper-case",
    ),
}


BACKEND = 'backend: {endpoints: ["127.0.0.1:9000"]}'
NOT_RATE_LIMITED = "Envoy does not rate limit a directResponse route"
# Each replaces the products route's backend (line 9 of GATEWAY); the full
# "file:line: field: message" start is expected.
INVALID_DIRECT_RESPONSES = {
    "backend and directResponse": (
        f"{BACKEND}\n    directResponse: {{status: 200}}",
        "p0.yaml:10: spec.routes[0].directResponse: "
        "a route takes either backend or directResponse, not both",
    ),
    "neither": (
        "authz: true",
        "p0.yaml:7: spec.routes[0].backend: "
        "a route needs a backend (endpoints: [host:port]) or a directResponse",
    ),
    "no status": (
        "directResponse: {body: {string: down}}",
        "p0.yaml:9: spec.routes[0].directResponse.status: directResponse is missing 'status'",
    ),
    "status over 599": (
        "directResponse: {status: 600}",
        "p0.yaml:9: spec.routes[0].directResponse.status: must be at most 599, got 600",
    ),
    "status under 200": (
        "directResponse: {status: 199}",
        "p0.yaml:9: spec.routes[0].directResponse.status: must be at least 200, got 199",
    ),
    "status as text": (
        "directResponse: {status: '503'}",
        "p0.yaml:9: spec.routes[0].directResponse.status: must be an integer, got a string",
    ),
    "unknown key": (
        "directResponse: {status: 503, headers: {}}",
        "p0.yaml:9: spec.routes[0].directResponse.headers: unknown key 'headers' in "
        "directResponse (expected one of: body, status)",
    ),
    "string and bytes": (
        "directResponse: {status: 503, body: {string: a, bytes: YQ==}}",
        "p0.yaml:9: spec.routes[0].directResponse.body.string: "
        "body takes exactly one of string or bytes",
    ),
    "empty body": (
        "directResponse: {status: 503, body: {}}",
        "p0.yaml:9: spec.routes[0].directResponse.body.string: "
        "body takes exactly one of string or bytes",
    ),
    "bad base64": (
        "directResponse:\n      status: 503\n      body:\n        bytes: 'not base64!'",
        "p0.yaml:12: spec.routes[0].directResponse.body.bytes: must be standard base64",
    ),
    "body too large": (
        f"directResponse: {{status: 503, body: {{string: {'x' * 4097}}}}}",
        "p0.yaml:9: spec.routes[0].directResponse.body.string: body is 4097 bytes, "
        "more than Envoy's limit of 4096",
    ),
    "timeout": (
        "directResponse: {status: 503}\n    timeout: 5s",
        "p0.yaml:10: spec.routes[0].timeout: a directResponse route has no backend to apply "
        "timeout to",
    ),
    "retries": (
        "directResponse: {status: 503}\n    retries: {attempts: 2}",
        "p0.yaml:10: spec.routes[0].retries: a directResponse route has no backend to apply "
        "retries to",
    ),
    "rateLimits": (
        "directResponse: {status: 503}\n    rateLimits: [{actions: [{remote_address: {}}]}]",
        f"p0.yaml:10: spec.routes[0].rateLimits: {NOT_RATE_LIMITED}",
    ),
}


class TestDirectResponse:
    @pytest.mark.parametrize(
        "case", list(INVALID_DIRECT_RESPONSES), ids=list(INVALID_DIRECT_RESPONSES)
    )
    def test_rejected(self, tmp_path: Path, case: str) -> None:
        """Each broken directResponse route is rejected naming file, line and field."""
        new, expected = INVALID_DIRECT_RESPONSES[case]
        found = errors(tmp_path, GATEWAY.replace(BACKEND, new, 1))
        assert any(line.startswith(expected) for line in found), found

    @pytest.mark.parametrize(
        ("body", "expected"),
        [
            ("", None),
            (", body: {string: 'down: back at 9'}", "down: back at 9"),
            (", body: {bytes: AP8K}", b"\x00\xff\n"),
            (f", body: {{string: {'x' * 4096}}}", "x" * 4096),
        ],
    )
    def test_parsed(self, tmp_path: Path, body: str, expected: str | bytes | None) -> None:
        """status and body (text, decoded base64, up to 4096 bytes) load; no backend is kept."""
        text = GATEWAY.replace(BACKEND, f"directResponse: {{status: 503{body}}}", 1)
        route = load(tmp_path, text).xds.gateways[0].gateway.routes[0]
        assert route.direct_response == DirectResponse(503, expected)
        assert route.endpoints == ()

    def test_a_direct_response_quota_is_counted_in_its_check(self, tmp_path: Path) -> None:
        """A RateLimitPolicy may name a directResponse route: its Check counts the quota."""
        gateway = GATEWAY.replace(BACKEND, "directResponse: {status: 503}", 1)
        loaded = load(
            tmp_path, gateway, quota("routes: [products]\nlimit: {requests: 5, unit: minute}\n")
        )
        assert [r.policy for r in loaded.authz.quotas["public", "products"]] == ["istio-system/q"]

    def test_policy_cannot_name_a_direct_response_without_a_check(self, tmp_path: Path) -> None:
        """With authz: false nothing could count it: an error at the policy's spec.routes."""
        gateway = GATEWAY.replace(BACKEND, "directResponse: {status: 503}\n    authz: false", 1)
        found = errors(
            tmp_path, gateway, quota("routes: [products]\nlimit: {requests: 5, unit: minute}\n")
        )
        assert any(
            line.startswith("p1.yaml:1: spec.routes: route 'products' of Gateway public: ")
            and NOT_RATE_LIMITED in line
            and "with authz: false it is not counted inside the Check either" in line
            for line in found
        ), found


class TestGatewayValidation:
    @pytest.mark.parametrize("case", list(INVALID_GATEWAYS), ids=list(INVALID_GATEWAYS))
    def test_rejected(self, tmp_path: Path, case: str) -> None:
        """Each broken Gateway is rejected with file, line and field."""
        old, new, expected = INVALID_GATEWAYS[case]
        found = errors(tmp_path, GATEWAY.replace(old, new, 1))
        assert any(expected in line for line in found), found

    def test_defaults(self, tmp_path: Path) -> None:
        """Node ids default to the name; the rate limit domain is the gateway name."""
        gateway = load(tmp_path, GATEWAY).xds.gateways[0].gateway
        assert gateway.nodes == ("public",)
        assert gateway.domain == "public"
        assert gateway.labels_text == "istio=ingressgateway"

    def test_node_ids_are_unique(self, tmp_path: Path) -> None:
        """Two gateways cannot serve the same Envoy node."""
        other = GATEWAY.replace("name: public", "name: private").replace("10000", "10001")
        found = errors(tmp_path, GATEWAY + "  nodes: [shared]\n", other + "  nodes: [shared]\n")
        assert any("node 'shared' also serves public" in line for line in found), found


class TestRateLimitPolicy:
    def test_unknown_gateway_and_route(self, tmp_path: Path) -> None:
        """A policy must target an existing gateway and existing routes."""
        found = errors(
            tmp_path,
            GATEWAY,
            quota("routes: [nope]\nlimit: {requests: 5, unit: minute}\n"),
        )
        assert any("Gateway public has no route 'nope'" in line for line in found), found
        found = errors(
            tmp_path,
            GATEWAY,
            quota("limit: {requests: 5, unit: minute}\n").replace("name: public}", "name: gone}"),
        )
        assert any("no Gateway named 'gone'" in line for line in found), found

    def test_count_by_takes_one(self, tmp_path: Path) -> None:
        """countBy takes exactly one way of counting."""
        found = errors(
            tmp_path,
            GATEWAY,
            quota("limit: {requests: 5, unit: minute}\ncountBy: {subject: {}, header: x}\n"),
        )
        assert any("countBy takes exactly one of" in line for line in found), found

    @pytest.mark.parametrize(
        ("count_by", "entry"),
        [
            ("{subject: {}}", ("user", "alice")),
            ("{claim: groups}", ("claim", "staff")),
            ("{clientAddress: {}}", ("remote_address", "203.0.113.9")),
            ("{header: X-Api-Key}", ("header", "k-1")),
        ],
    )
    def test_actions_and_descriptors_agree(
        self, tmp_path: Path, count_by: str, entry: tuple[str, str]
    ) -> None:
        """The descriptor Envoy builds from the generated actions finds the policy's limit."""
        policy_set = load(
            tmp_path,
            GATEWAY,
            quota(
                "match: {paths: ['/product', '/product/*'], methods: [GET]}\n"
                f"limit: {{requests: 7, unit: hour}}\ncountBy: {count_by}\n"
            ),
        )
        [policy] = policy_set.xds.gateways[0].policies
        actions = route_actions(policy)["actions"]
        # What Envoy sends for a matching request: one entry per action, in order.
        keys = [next(iter(a.values())).get("descriptor_key", "remote_address") for a in actions]
        assert keys == ["policy", "match", entry[0]]
        sent = (("policy", "istio-system/q"), ("match", "yes"), entry)
        match = find_limit(policy_set.ratelimit, "public", DescriptorRequest(sent))
        assert match is not None
        assert (match.limit.requests_per_unit, match.limit.unit) == (7, Unit.HOUR)

    def test_one_hop_unless_the_gateway_names_a_rate_limit_service(self, tmp_path: Path) -> None:
        """Quotas are counted in the Check; with rateLimit.address, by Envoy's filter there."""
        limit = "limit: {requests: 5, unit: minute}\n"
        one_hop = load(tmp_path, GATEWAY, quota(limit))
        assert set(one_hop.authz.quotas) == {("public", "products"), ("public", "default")}
        own = GATEWAY.replace("spec:\n", 'spec:\n  rateLimit: {address: "rls.internal:8081"}\n', 1)
        two_hops = load(tmp_path, own, quota(limit))
        assert two_hops.authz.quotas == {}
        routes = two_hops.xds.gateways[0].resources[ROUTE]["public/http"]["virtual_hosts"][0]
        assert all(route["route"]["rate_limits"] for route in routes["routes"])

    def test_on_store_failure_is_deny_or_allow(self, tmp_path: Path) -> None:
        """onStoreFailure defaults to deny; another word is an error naming the field."""
        limit = "limit: {requests: 5, unit: minute}\n"
        [policy] = load(tmp_path, GATEWAY, quota(limit)).xds.gateways[0].policies
        assert policy.deny_on_store_failure
        [policy] = (
            load(tmp_path, GATEWAY, quota(limit + "onStoreFailure: allow\n"))
            .xds.gateways[0]
            .policies
        )
        assert not policy.deny_on_store_failure
        found = errors(tmp_path, GATEWAY, quota(limit + "onStoreFailure: local\n"))
        assert any("spec.onStoreFailure: 'local' must be deny or allow" in e for e in found), found

    def test_counting_is_exact_or_leased_and_reaches_the_limit(self, tmp_path: Path) -> None:
        """counting defaults to exact; leased marks the derived limit; another word is an error."""
        limit = "limit: {requests: 5, unit: minute}\n"
        sent = DescriptorRequest((("policy", "istio-system/q"),))
        policy_set = load(tmp_path, GATEWAY, quota(limit))
        match = find_limit(policy_set.ratelimit, "public", sent)
        assert match is not None and not match.limit.leased
        policy_set = load(tmp_path, GATEWAY, quota(limit + "counting: leased\n"))
        match = find_limit(policy_set.ratelimit, "public", sent)
        assert match is not None and match.limit.leased
        found = errors(tmp_path, GATEWAY, quota(limit + "counting: lazy\n"))
        assert any("spec.counting: 'lazy' must be exact or leased" in e for e in found), found

    def test_global_quota(self, tmp_path: Path) -> None:
        """Without countBy and match, one counter counts every request of the policy."""
        policy_set = load(tmp_path, GATEWAY, quota("limit: {requests: 3, unit: second}\n"))
        [policy] = policy_set.xds.gateways[0].policies
        assert route_actions(policy)["actions"] == [
            {"generic_key": {"descriptor_key": "policy", "descriptor_value": "istio-system/q"}}
        ]
        sent = DescriptorRequest((("policy", "istio-system/q"),))
        match = find_limit(policy_set.ratelimit, "public", sent)
        assert match is not None and match.limit.requests_per_unit == 3

    def test_path_regex_allows_query(self, tmp_path: Path) -> None:
        """The :path match accepts a query string and honours exact/prefix patterns."""
        import re

        policy_set = load(
            tmp_path,
            GATEWAY,
            quota("match: {paths: ['/product', '/api/*']}\nlimit: {requests: 1, unit: minute}\n"),
        )
        [policy] = policy_set.xds.gateways[0].policies
        header = route_actions(policy)["actions"][1]["header_value_match"]["headers"][0]
        regex = re.compile(header["string_match"]["safe_regex"]["regex"])
        assert regex.match("/product?x=1") and regex.match("/api/v1/orders")
        assert not regex.match("/productx") and not regex.match("/other")

    def test_clash_with_hand_written_domain(self, tmp_path: Path) -> None:
        """A hand-written ratelimit config for the gateway's domain is a duplicate domain."""
        found = errors(
            tmp_path,
            GATEWAY,
            quota("limit: {requests: 5, unit: minute}\n"),
            "domain: public\ndescriptors: [{key: a}]\n",
        )
        assert any("duplicate domain 'public'" in line for line in found), found
