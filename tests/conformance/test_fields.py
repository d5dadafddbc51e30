"""Every AuthorizationPolicy field, its ``not`` form, and every ``when`` key, through gRPC.

Most tables use one ALLOW policy holding the field under test: a request the field matches
is allowed (200), anything else hits "an ALLOW policy exists and none matched" (403). That
also shows the absent-attribute rule: an absent attribute never matches a positive value,
so the ``not`` form holds (reference §1.3).
"""

import pytest

from tests.conformance.conftest import Launcher
from tests.conformance.harness import (
    Case,
    allow,
    bearer,
    cond,
    deny,
    jwt_rule,
    matrix,
    mesh_config,
    op,
    params,
    request_authentication,
    rule,
    src,
    yaml_docs,
)
from tests.jwt_issuer import ISSUER, claims, jwks, token

RA = request_authentication(jwt_rule(ISSUER, jwks=jwks("rsa")))
PEER = "spiffe://cluster.local/ns/foo/sa/bar"
OTHER_PEER = "spiffe://cluster.local/ns/foobar/sa/baz"


def allowing(*rules, jwt=False):
    """One ALLOW policy with ``rules`` (plus the test RequestAuthentication)."""
    return yaml_docs(*([RA] if jwt else []), allow(*rules))


def jwt(**overrides):
    """A request carrying a valid token for ``claims(**overrides)``."""
    return {"headers": bearer(token(claims(**overrides)))}


def peer(principal):
    return {"source_principal": principal}


PLAIN = {}  # no mTLS, no token, nothing special

SOURCE_CASES = [
    *matrix(
        "principals exact",
        allowing(rule(from_=src(principals=["cluster.local/ns/foo/sa/bar"]))),
        [
            ("same spiffe id", peer(PEER), 200),
            ("other spiffe id", peer(OTHER_PEER), 403),
            ("plaintext never matches", PLAIN, 403),
        ],
        ref="§1.4 principals",
    ),
    *matrix(
        "principals *",
        allowing(rule(from_=src(principals=["*"]))),
        [("any mTLS peer", peer(OTHER_PEER), 200), ("plaintext", PLAIN, 403)],
        ref="§1.4 principals '*' = any mTLS peer",
    ),
    *matrix(
        "principals prefix",
        allowing(rule(from_=src(principals=["cluster.local/ns/foo/*"]))),
        [("in prefix", peer(PEER), 200), ("outside", peer(OTHER_PEER), 403)],
        ref="§1.5 v* = prefix",
    ),
    *matrix(
        "principals suffix",
        allowing(rule(from_=src(principals=["*/sa/bar"]))),
        [
            ("suffix matches", peer("spiffe://td.example/ns/x/sa/bar"), 200),
            ("other sa", peer(OTHER_PEER), 403),
        ],
        ref="§1.4 *x -> spiffe://.*x",
    ),
    *matrix(
        "notPrincipals",
        allowing(rule(from_=src(notPrincipals=["cluster.local/ns/foo/sa/bar"]))),
        [
            ("named peer excluded", peer(PEER), 403),
            ("other peer", peer(OTHER_PEER), 200),
            ("plaintext satisfies not-form", PLAIN, 200),
        ],
        ref="§1.3 absent attribute -> not-form matches",
    ),
    *matrix(
        "namespaces",
        allowing(rule(from_=src(namespaces=["foo"]))),
        [
            ("peer in ns foo", peer(PEER), 200),
            ("ns foobar is not foo", peer(OTHER_PEER), 403),
            ("plaintext", PLAIN, 403),
        ],
        ref="§1.4 namespaces regex .*/ns/<v>/.*",
    ),
    *matrix(
        "namespaces wildcard",
        allowing(rule(from_=src(namespaces=["foo*"]))),
        [("foobar matches foo*", peer(OTHER_PEER), 200), ("plaintext", PLAIN, 403)],
        ref="§1.4 namespaces '*' -> '.*'",
    ),
    *matrix(
        "notNamespaces",
        allowing(rule(from_=src(notNamespaces=["foo"]))),
        [
            ("peer in foo excluded", peer(PEER), 403),
            ("peer elsewhere", peer(OTHER_PEER), 200),
            ("plaintext allowed (ISTIO-SECURITY-2021-004)", PLAIN, 200),
        ],
        ref="§1.3, §4 mTLS-only fields",
    ),
    *matrix(
        "serviceAccounts ns/sa",
        allowing(rule(from_=src(serviceAccounts=["foo/bar"]))),
        [
            ("foo/bar", peer(PEER), 200),
            ("foo/baz", peer("spiffe://cluster.local/ns/foo/sa/baz"), 403),
            ("plaintext", PLAIN, 403),
        ],
        ref="§1.4 serviceAccounts",
    ),
    *matrix(
        "serviceAccounts bare sa = policy namespace",
        allowing(rule(from_=src(serviceAccounts=["bar"]))),
        [
            ("istio-system/bar", peer("spiffe://cluster.local/ns/istio-system/sa/bar"), 200),
            ("foo/bar is another namespace", peer(PEER), 403),
        ],
        ref="§1.4 serviceAccounts 'sa' = policy namespace",
    ),
    *matrix(
        "serviceAccounts dots are escaped",
        allowing(rule(from_=src(serviceAccounts=["my.ns/bar"]))),
        [
            ("my.ns/bar", peer("spiffe://cluster.local/ns/my.ns/sa/bar"), 200),
            ("myXns/bar (CVE-2026-39350)", peer("spiffe://cluster.local/ns/myXns/sa/bar"), 403),
        ],
        ref="§4 CVE-2026-39350",
    ),
    *matrix(
        "notServiceAccounts",
        allowing(rule(from_=src(notServiceAccounts=["foo/bar"]))),
        [("excluded", peer(PEER), 403), ("other", peer(OTHER_PEER), 200), ("plain", PLAIN, 200)],
        ref="§1.3",
    ),
    *matrix(
        "ipBlocks",
        allowing(rule(from_=src(ipBlocks=["10.0.0.0/8", "192.0.2.77"]))),
        [
            ("peer in CIDR", {"source_ip": "10.20.30.40"}, 200),
            ("single IP", {"source_ip": "192.0.2.77"}, 200),
            ("peer outside", {"source_ip": "192.0.2.78"}, 403),
            (
                "XFF is ignored",
                {"source_ip": "192.0.2.78", "xff": "10.1.1.1,192.0.2.78"},
                403,
            ),
        ],
        ref="§1.4 ipBlocks = direct_remote_ip",
    ),
    *matrix(
        "notIpBlocks",
        allowing(rule(from_=src(notIpBlocks=["10.0.0.0/8"]))),
        [("excluded", {"source_ip": "10.0.0.1"}, 403), ("other", {"source_ip": "192.0.2.1"}, 200)],
        ref="§1.3",
    ),
    *matrix(
        "ipBlocks IPv6",
        allowing(rule(from_=src(ipBlocks=["2001:db8::/32"]))),
        [
            ("v6 in block", {"source_ip": "2001:db8::5"}, 200),
            ("v4 never matches a v6 block", {"source_ip": "10.0.0.1"}, 403),
        ],
        ref="§1.5 IP values",
    ),
    *matrix(
        "remoteIpBlocks with 0 trusted proxies = peer",
        allowing(rule(from_=src(remoteIpBlocks=["203.0.113.0/24"]))),
        [
            ("peer in block", {"source_ip": "203.0.113.7"}, 200),
            ("XFF ignored with 0 hops", {"xff": "203.0.113.7,192.0.2.10"}, 403),
        ],
        ref="§1.4 XFF rules, N=0 means the peer",
    ),
]

PRINCIPAL_TABLE = [
    (
        f"{ISSUER}/alice",
        [
            ("iss/sub exact", jwt(), 200),
            ("other sub", jwt(sub="bob"), 403),
            ("no token", PLAIN, 403),
        ],
    ),
    (
        "*",
        [
            ("any principal", jwt(sub="bob"), 200),
            ("token without sub (#59541)", jwt(sub=None), 403),
            ("no token", PLAIN, 403),
        ],
    ),
    ("*/alice", [("any issuer, sub alice", jwt(), 200), ("sub bob", jwt(sub="bob"), 403)]),
    (
        "*.example.com/alice",
        [("issuer suffix + exact sub", jwt(), 200), ("sub bob", jwt(sub="bob"), 403)],
    ),
    ("*ice", [("sub suffix, no '/'", jwt(), 200), ("sub bob", jwt(sub="bob"), 403)]),
    (f"{ISSUER}/*", [("exact issuer, any sub", jwt(sub="zed"), 200), ("no token", PLAIN, 403)]),
    (f"{ISSUER}/al*", [("sub prefix", jwt(), 200), ("sub bob", jwt(sub="bob"), 403)]),
    ("https://issuer*", [("X* with '/' splits into iss 'https:/' + sub prefix", jwt(), 403)]),
]
REQUEST_PRINCIPAL_CASES = [
    case
    for value, rows in PRINCIPAL_TABLE
    for case in matrix(
        f"requestPrincipals {value}",
        allowing(rule(from_=src(requestPrincipals=[value])), jwt=True),
        rows,
        ref="§2.4 request principal split at the last '/'",
    )
] + matrix(
    "notRequestPrincipals *",
    allowing(rule(from_=src(notRequestPrincipals=["*"])), jwt=True),
    [("no token satisfies the not-form", PLAIN, 200), ("authenticated", jwt(), 403)],
    ref="§1.3 a request without a JWT satisfies notRequestPrincipals",
)


def host(name):
    return {"host": name}


def path(value):
    return {"path": value}


OPERATION_CASES = [
    *matrix(
        "hosts exact",
        allowing(rule(to=op(hosts=["api.example.com"]))),
        [
            ("same host", host("api.example.com"), 200),
            ("case-insensitive (CVE-2021-39155)", host("API.Example.COM"), 200),
            ("host:port does not match a bare host", host("api.example.com:8080"), 403),
            ("other host", host("www.example.com"), 403),
        ],
        ref="§1.5 hosts",
    ),
    *matrix(
        "hosts with :* for ports",
        allowing(rule(to=op(hosts=["api.example.com", "api.example.com:*"]))),
        [
            ("bare", host("api.example.com"), 200),
            ("with port", host("api.example.com:8080"), 200),
            ("upper-case with port", host("API.EXAMPLE.COM:443"), 200),
        ],
        ref="§1.5 hosts port rule",
    ),
    *matrix(
        "hosts suffix",
        allowing(rule(to=op(hosts=["*.Example.com"]))),
        [
            ("subdomain, pattern case ignored", host("shop.example.COM"), 200),
            ("apex is not *.example.com", host("example.com"), 403),
        ],
        ref="§1.5 *v = suffix, hosts ignore case",
    ),
    *matrix(
        "notHosts",
        allowing(rule(to=op(notHosts=["admin.example.com"]))),
        [
            ("excluded host", host("ADMIN.example.com"), 403),
            ("other host", host("api.example.com"), 200),
            ("port defeats notHosts (2021-008)", host("admin.example.com:80"), 200),
        ],
        ref="§1.5 hosts port rule",
    ),
    *matrix(
        "ports",
        allowing(rule(to=op(ports=["8080"]))),
        [
            ("listener port", {"destination_port": 8080}, 200),
            ("other port", {"destination_port": 8443}, 403),
            ("Host port is irrelevant", {"destination_port": 8443, "host": "a:8080"}, 403),
        ],
        ref="§1.4 ports = destination_port",
    ),
    *matrix(
        "notPorts",
        allowing(rule(to=op(notPorts=["8443"]))),
        [("excluded", {"destination_port": 8443}, 403), ("other", {"destination_port": 80}, 200)],
        ref="§1.4",
    ),
    *matrix(
        "methods",
        allowing(rule(to=op(methods=["GET", "HEAD"]))),
        [
            ("GET", {"method": "GET"}, 200),
            ("HEAD", {"method": "HEAD"}, 200),
            ("POST", {"method": "POST"}, 403),
        ],
        ref="§1.4 methods",
    ),
    *matrix(
        "methods *",
        allowing(rule(to=op(methods=["*"]))),
        [("any method", {"method": "PATCH"}, 200)],
        ref="§1.5 '*' = present",
    ),
    *matrix(
        "notMethods",
        allowing(rule(to=op(notMethods=["DELETE"]))),
        [("excluded", {"method": "DELETE"}, 403), ("other", {"method": "PUT"}, 200)],
        ref="§1.3",
    ),
    *matrix(
        "paths exact",
        allowing(rule(to=op(paths=["/api/users"]))),
        [
            ("same path", path("/api/users"), 200),
            ("query is ignored", path("/api/users?id=1&x=/y"), 200),
            ("trailing slash differs", path("/api/users/"), 403),
            ("case-sensitive", path("/API/users"), 403),
        ],
        ref="§1.4 paths = url_path (no query)",
    ),
    *matrix(
        "paths prefix",
        allowing(rule(to=op(paths=["/api/*"]))),
        [
            ("below prefix", path("/api/v1/x"), 200),
            ("prefix itself is /api/", path("/api/"), 200),
            ("/api has no trailing slash", path("/api"), 403),
        ],
        ref="§1.5 v* = prefix",
    ),
    *matrix(
        "paths suffix",
        allowing(rule(to=op(paths=["*.css"]))),
        [("suffix", path("/static/site.css"), 200), ("other", path("/static/site.js"), 403)],
        ref="§1.5 *v = suffix",
    ),
    *matrix(
        "paths presence",
        allowing(rule(to=op(paths=["*"]))),
        [("any path", path("/anything/at/all"), 200)],
        ref="§1.5 '*' = presence",
    ),
    *matrix(
        "paths star in the middle is literal",
        allowing(rule(to=op(paths=["/api/*/users"]))),
        [
            ("a segment does not fill it", path("/api/v1/users"), 403),
            ("only the literal '*' matches", path("/api/*/users"), 200),
        ],
        ref="§1.5 a '*' in the middle is literal",
    ),
    *matrix(
        "notPaths",
        allowing(rule(to=op(notPaths=["/admin/*"]))),
        [("excluded", path("/admin/x"), 403), ("other", path("/public"), 200)],
        ref="§1.3",
    ),
    *matrix(
        "path template {**}",
        allowing(rule(to=op(paths=["/allow/admin/{**}"]))),
        [
            ("/allow/admin/ matches", path("/allow/admin/"), 200),
            ("/allow/admin does not", path("/allow/admin"), 403),
            ("deep path", path("/allow/admin/a/b/c"), 200),
            ("query ignored", path("/allow/admin/x?y=1"), 200),
        ],
        ref="§1.5 path templates table",
    ),
    *matrix(
        "path template {*} then {**}",
        allowing(rule(to=op(paths=["/foo/{*}/bar/{**}"]))),
        [
            ("/foo/buzz/bar/bat", path("/foo/buzz/bar/bat"), 200),
            ("empty {*} segment", path("/foo//bar/x"), 403),
            ("two segments for {*}", path("/foo/a/b/bar/x"), 403),
        ],
        ref="§1.5 path templates table",
    ),
    *matrix(
        "path template {*} alone",
        allowing(rule(to=op(paths=["/items/{*}"]))),
        [
            ("one segment", path("/items/42"), 200),
            ("two segments", path("/items/42/edit"), 403),
            ("empty segment", path("/items/"), 403),
        ],
        ref="§1.5 {*} = exactly one non-empty segment",
    ),
]


def headers(**values):
    return {"headers": {k.replace("_", "-"): v for k, v in values.items()}}


def when_allowing(*conditions, jwt=False):
    return allowing(rule(when=list(conditions)), jwt=jwt)


CONDITION_CASES = [
    *matrix(
        "request.headers exact",
        when_allowing(cond("request.headers[X-Tenant]", ["acme"])),
        [
            ("value matches, name case-insensitive", headers(x_tenant="acme"), 200),
            ("values are case-sensitive", headers(x_tenant="ACME"), 403),
            ("absent header", PLAIN, 403),
        ],
        ref="§1.4 request.headers, §1.5 case rules",
    ),
    *matrix(
        "request.headers presence",
        when_allowing(cond("request.headers[x-debug]", ["*"])),
        [
            ("present with a value", headers(x_debug="1"), 200),
            ("present but empty", headers(x_debug=""), 200),
            ("absent", PLAIN, 403),
        ],
        ref="§1.4 '*' = present (may be empty)",
    ),
    *matrix(
        "request.headers prefix and suffix",
        when_allowing(cond("request.headers[user-agent]", ["curl/*", "*-bot"])),
        [
            ("prefix", headers(user_agent="curl/8.0"), 200),
            ("suffix", headers(user_agent="search-bot"), 200),
            ("neither", headers(user_agent="Mozilla/5.0"), 403),
        ],
        ref="§1.5",
    ),
    *matrix(
        "request.headers notValues",
        when_allowing(cond("request.headers[x-env]", not_values=["prod"])),
        [
            ("absent satisfies notValues", PLAIN, 200),
            ("other value", headers(x_env="dev"), 200),
            ("excluded value", headers(x_env="prod"), 403),
        ],
        ref="§1.3 a missing header satisfies notValues",
    ),
    *matrix(
        "request.headers values and notValues",
        when_allowing(cond("request.headers[x-env]", ["*"], ["prod"])),
        [
            ("present, not excluded", headers(x_env="dev"), 200),
            ("excluded", headers(x_env="prod"), 403),
            ("absent fails values", PLAIN, 403),
        ],
        ref="§1.3 (OR values) AND NOT(OR notValues)",
    ),
    *matrix(
        "request.headers[:path] includes the query",
        when_allowing(cond("request.headers[:path]", ["/search?q=*"])),
        [
            ("query present", path("/search?q=x"), 200),
            ("no query", path("/search"), 403),
        ],
        ref="§1.4 pseudo-headers, ':path' includes the query",
    ),
    *matrix(
        "request.headers[:method]",
        when_allowing(cond("request.headers[:method]", ["POST"])),
        [("POST", {"method": "POST"}, 200), ("GET", {"method": "GET"}, 403)],
        ref="§1.4 pseudo-headers",
    ),
    *matrix(
        "request.auth.claims list claim",
        when_allowing(cond("request.auth.claims[groups]", ["admin"]), jwt=True),
        [
            ("list with the value", jwt(groups=["dev", "admin"]), 200),
            ("string claim equal", jwt(groups="admin"), 200),
            ("list without the value", jwt(groups=["dev"]), 403),
            ("claim absent", jwt(), 403),
            ("no token", PLAIN, 403),
        ],
        ref="§1.4 claims: string, or list with a matching element",
    ),
    *matrix(
        "request.auth.claims nested",
        when_allowing(cond("request.auth.claims[realm][role]", ["admin"]), jwt=True),
        [
            ("nested value", jwt(realm={"role": "admin"}), 200),
            ("nested list", jwt(realm={"role": ["user", "admin"]}), 200),
            ("other value", jwt(realm={"role": "user"}), 403),
            ("flat claim named 'role'", jwt(role="admin"), 403),
        ],
        ref="§1.4 nested claims use repeated brackets",
    ),
    *matrix(
        "request.auth.claims dot in bracket is literal",
        when_allowing(cond("request.auth.claims[kubernetes.io][namespace]", ["prod"]), jwt=True),
        [
            ("key 'kubernetes.io'", jwt(**{"kubernetes.io": {"namespace": "prod"}}), 200),
            ("nested kubernetes -> io", jwt(kubernetes={"io": {"namespace": "prod"}}), 403),
        ],
        ref="§1.4 a dot inside a bracket is literal",
    ),
    *matrix(
        "request.auth.claims[a.b] never reaches nested a.b",
        when_allowing(cond("request.auth.claims[a.b]", ["x"]), jwt=True),
        [
            ("nested {a:{b:x}}", jwt(a={"b": "x"}), 403),
            ("literal key 'a.b'", jwt(**{"a.b": "x"}), 200),
        ],
        ref="§1.4 claims[a.b] never reaches {a:{b:..}}",
    ),
    *matrix(
        "request.auth.claims non-string types",
        when_allowing(cond("request.auth.claims[level]", ["5", "true"]), jwt=True),
        [
            ("number never matches", jwt(level=5), 403),
            ("boolean never matches", jwt(level=True), 403),
            ("string matches", jwt(level="5"), 200),
        ],
        ref="§1.4 claim types (#39703)",
    ),
    *matrix(
        "request.auth.claims[scope] space-delimited",
        when_allowing(cond("request.auth.claims[scope]", ["read"]), jwt=True),
        [
            ("'write read' is split", jwt(scope="write read"), 200),
            ("no such scope", jwt(scope="write admin"), 403),
        ],
        ref="§2.3 claims metadata: scope is split on spaces",
    ),
    *matrix(
        "request.auth.claims[scope] whole string no longer matches",
        when_allowing(cond("request.auth.claims[scope]", ["write read"]), jwt=True),
        [("split claim", jwt(scope="write read"), 403)],
        ref="§2.3 '[\"write read\"]' no longer matches",
    ),
    *matrix(
        "request.auth.claims[permission] space-delimited",
        when_allowing(cond("request.auth.claims[permission]", ["delete"]), jwt=True),
        [("split", jwt(permission="get delete"), 200)],
        ref="§2.3 permission is split too",
    ),
    *matrix(
        "request.auth.claims spaceDelimitedClaims",
        yaml_docs(
            request_authentication(
                jwt_rule(ISSUER, jwks=jwks("rsa"), spaceDelimitedClaims=["roles"])
            ),
            allow(rule(when=cond("request.auth.claims[roles]", ["ops"]))),
        ),
        [("custom claim split", jwt(roles="dev ops"), 200), ("not split elsewhere", jwt(), 403)],
        ref="§2.3 spaceDelimitedClaims",
    ),
    *matrix(
        "request.auth.claims notValues",
        when_allowing(cond("request.auth.claims[groups]", not_values=["banned"]), jwt=True),
        [
            ("no token satisfies notValues", PLAIN, 200),
            ("claim absent", jwt(), 200),
            ("excluded element", jwt(groups=["x", "banned"]), 403),
        ],
        ref="§1.3",
    ),
    *matrix(
        "request.auth.principal",
        when_allowing(cond("request.auth.principal", [f"{ISSUER}/alice"]), jwt=True),
        [("principal", jwt(), 200), ("other", jwt(sub="bob"), 403), ("no token", PLAIN, 403)],
        ref="§1.4 request.auth.principal",
    ),
    *matrix(
        "request.auth.audiences",
        when_allowing(cond("request.auth.audiences", ["api.example.com"]), jwt=True),
        [
            ("string aud", jwt(aud="api.example.com"), 200),
            ("list aud", jwt(aud=["other", "api.example.com"]), 200),
            ("other aud", jwt(aud="other"), 403),
            ("no token", PLAIN, 403),
        ],
        ref="§1.4 request.auth.audiences",
    ),
    *matrix(
        "request.auth.presenter",
        when_allowing(cond("request.auth.presenter", ["web-app"]), jwt=True),
        [("azp", jwt(azp="web-app"), 200), ("other azp", jwt(azp="cli"), 403)],
        ref="§1.4 request.auth.presenter = azp",
    ),
    *matrix(
        "source.ip",
        when_allowing(cond("source.ip", ["10.0.0.0/8"])),
        [
            ("peer in block", {"source_ip": "10.9.8.7"}, 200),
            ("XFF ignored", {"source_ip": "192.0.2.1", "xff": "10.9.8.7,192.0.2.1"}, 403),
        ],
        ref="§1.4 source.ip = direct_remote_ip",
    ),
    *matrix(
        "remote.ip",
        when_allowing(cond("remote.ip", ["203.0.113.0/24"])),
        [
            ("peer", {"source_ip": "203.0.113.1"}, 200),
            ("other", {"source_ip": "198.51.100.1"}, 403),
        ],
        ref="§1.4 remote.ip",
    ),
    *matrix(
        "destination.ip",
        when_allowing(cond("destination.ip", ["10.1.0.0/16"])),
        [
            ("local address in block", {"destination_ip": "10.1.2.3"}, 200),
            ("other", {"destination_ip": "10.2.0.1"}, 403),
        ],
        ref="§1.4 destination.ip",
    ),
    *matrix(
        "destination.port",
        when_allowing(cond("destination.port", ["8443"])),
        [("8443", {"destination_port": 8443}, 200), ("8080", {"destination_port": 8080}, 403)],
        ref="§1.4 destination.port",
    ),
    *matrix(
        "connection.sni",
        when_allowing(cond("connection.sni", ["*.example.com"])),
        [
            ("SNI suffix", {"sni": "api.example.com"}, 200),
            ("other SNI", {"sni": "example.org"}, 403),
            ("no TLS", PLAIN, 403),
        ],
        ref="§1.4 connection.sni",
    ),
    *matrix(
        "connection.sni notValues",
        when_allowing(cond("connection.sni", not_values=["internal.example.com"])),
        [("no SNI", PLAIN, 200), ("excluded", {"sni": "internal.example.com"}, 403)],
        ref="§1.3",
    ),
    *matrix(
        "source.principal",
        when_allowing(cond("source.principal", ["cluster.local/ns/foo/sa/bar"])),
        [("peer", peer(PEER), 200), ("other", peer(OTHER_PEER), 403), ("plain", PLAIN, 403)],
        ref="§1.4 source.principal",
    ),
    *matrix(
        "source.namespace",
        when_allowing(cond("source.namespace", ["foo"])),
        [("ns foo", peer(PEER), 200), ("ns foobar", peer(OTHER_PEER), 403), ("plain", PLAIN, 403)],
        ref="§1.4 source.namespace",
    ),
    *matrix(
        "source.serviceAccount",
        when_allowing(cond("source.serviceAccount", ["foo/bar"])),
        [("foo/bar", peer(PEER), 200), ("other", peer(OTHER_PEER), 403)],
        ref="§1.4 undocumented key source.serviceAccount",
    ),
    *matrix(
        "source.trustDomain",
        when_allowing(cond("source.trustDomain", ["cluster.local"])),
        [
            ("trust domain", peer(PEER), 200),
            ("other domain", peer("spiffe://other.td/ns/foo/sa/bar"), 403),
        ],
        ref="§1.4 undocumented key source.trustDomain",
    ),
]

STRUCTURE_CASES = [
    *matrix(
        "fields in one source are ANDed",
        allowing(rule(from_=src(ipBlocks=["10.0.0.0/8"], principals=["*"]))),
        [
            ("both hold", {"source_ip": "10.0.0.1", "source_principal": PEER}, 200),
            ("only ip", {"source_ip": "10.0.0.1"}, 403),
        ],
        ref="§1.3 fields within a source are ANDed",
    ),
    *matrix(
        "from entries are ORed",
        allowing(rule(from_=[src(ipBlocks=["10.0.0.0/8"]), src(principals=["*"])])),
        [
            ("first entry", {"source_ip": "10.0.0.1"}, 200),
            ("second entry", peer(PEER), 200),
            ("neither", PLAIN, 403),
        ],
        ref="§1.3 one of the from entries",
    ),
    *matrix(
        "from, to and when are ANDed",
        allowing(
            rule(
                from_=src(ipBlocks=["10.0.0.0/8"]),
                to=op(methods=["GET"]),
                when=[
                    cond("request.headers[x-a]", ["1"]),
                    cond("request.headers[x-b]", ["2"]),
                ],
            )
        ),
        [
            (
                "all hold",
                {"source_ip": "10.0.0.1", "headers": {"x-a": "1", "x-b": "2"}},
                200,
            ),
            ("one when fails", {"source_ip": "10.0.0.1", "headers": {"x-a": "1"}}, 403),
            (
                "to fails",
                {"source_ip": "10.0.0.1", "method": "PUT", "headers": {"x-a": "1", "x-b": "2"}},
                403,
            ),
        ],
        ref="§1.3 all when conditions must match",
    ),
    *matrix(
        "X and notX both apply",
        allowing(rule(to=op(paths=["/api/*"], notPaths=["/api/internal/*"]))),
        [("in X, not in notX", path("/api/v1"), 200), ("in both", path("/api/internal/x"), 403)],
        ref="§1.3 if both X and notX are set, both must hold",
    ),
    *matrix(
        "rules are ORed",
        allowing(rule(to=op(paths=["/a"])), rule(to=op(paths=["/b"]))),
        [
            ("first rule", path("/a"), 200),
            ("second rule", path("/b"), 200),
            ("none", path("/c"), 403),
        ],
        ref="§1.3 a policy matches if any rule matches",
    ),
]

REPEATED_HEADER_CASES = [
    *matrix(
        "repeated header, ALLOW on one value",
        when_allowing(cond("request.headers[x-role]", ["admin"])),
        [
            ("single value", {"raw_headers": [("x-role", "admin")]}, 200),
            ("one of two values", {"raw_headers": [("x-role", "user"), ("x-role", "admin")]}, 200),
        ],
        ref="§1.6 CVE-2026-26308: each value is matched individually",
    ),
    *matrix(
        "repeated header, DENY on one value",
        yaml_docs(deny(rule(when=cond("request.headers[x-role]", ["banned"])))),
        [
            ("single value", {"raw_headers": [("x-role", "banned")]}, 403),
            (
                "hidden behind a first value",
                {"raw_headers": [("x-role", "user"), ("x-role", "banned")]},
                403,
            ),
            ("other value", {"raw_headers": [("x-role", "user")]}, 200),
        ],
        ref="§1.6 CVE-2026-26308, §4 headers",
    ),
]

ROOT_NAMESPACE_CASES = [
    Case(
        f"meshConfig.rootNamespace: {label}",
        yaml_docs(
            deny(rule(to=op(paths=["/from-root"])), namespace="mesh-root", name="root"),
            deny(rule(to=op(paths=["/from-istio-system"])), name="istio-system"),
        ),
        {"path": path_, "context": {"namespace": "foo", "labels": "app=gw"}},
        status,
        mesh=mesh_config(root_namespace="mesh-root"),
        ref="§1.1 policies come from meshConfig.rootNamespace",
    )
    for label, path_, status in [
        ("its policies are mesh-wide", "/from-root", 403),
        ("istio-system is then an ordinary namespace", "/from-istio-system", 200),
    ]
]

CASES = SOURCE_CASES + REQUEST_PRINCIPAL_CASES + OPERATION_CASES + CONDITION_CASES
CASES += REPEATED_HEADER_CASES + ROOT_NAMESPACE_CASES
CASES += STRUCTURE_CASES


@pytest.mark.parametrize("case", params(CASES))
async def test_field(authz: Launcher, case: Case) -> None:
    """A request the field (or condition) matches gets the ALLOW; anything else 403."""
    await authz.run(case)
