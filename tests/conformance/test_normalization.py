"""Path bypass attempts under each ``meshConfig.pathNormalization`` (reference §1.6, §4).

The policy is the classic one attackers aim at: DENY ``/admin`` and ``/admin/*``, plus a
positive ALLOW on ``/public/*`` in a second table. The expected answers are what Envoy's
connection manager does before RBAC with Istio's settings for each mode: BASE resolves dot
segments (also ``%2e``), turns ``\\`` into ``/`` and decodes unreserved escapes once;
MERGE_SLASHES also merges ``//``; DECODE_AND_MERGE_SLASHES also decodes ``%2F``/``%5C``;
NONE changes nothing. Every mode strips the fragment and ignores the query, and paths
stay case-sensitive. ``%00`` is refused with 400 wherever the path is normalized.
"""

import pytest

from tests.conformance.conftest import Launcher
from tests.conformance.harness import (
    Case,
    allow,
    cond,
    deny,
    jwt_rule,
    mesh_config,
    op,
    params,
    request_authentication,
    rule,
    yaml_docs,
)
from tests.jwt_issuer import ISSUER, jwks

MODES = ("NONE", "BASE", "MERGE_SLASHES", "DECODE_AND_MERGE_SLASHES")
DENY_ADMIN = yaml_docs(deny(rule(to=op(paths=["/admin", "/admin/*"]))))
ALLOW_PUBLIC = yaml_docs(allow(rule(to=op(paths=["/public", "/public/*"]))))

# path, then the status in NONE, BASE, MERGE_SLASHES, DECODE_AND_MERGE_SLASHES
DENY_TABLE = [
    ("/admin", (403, 403, 403, 403)),
    ("/admin/users", (403, 403, 403, 403)),
    ("//admin", (200, 200, 403, 403)),
    ("/admin//users", (403, 403, 403, 403)),
    ("//admin//users", (200, 200, 403, 403)),
    ("/%2Fadmin", (200, 200, 200, 403)),
    ("/%2fadmin/x", (200, 200, 200, 403)),
    ("/public/../admin", (200, 403, 403, 403)),
    ("/public/./../admin/x", (200, 403, 403, 403)),
    ("/public/%2e%2e/admin", (200, 403, 403, 403)),
    ("/public/%2E%2E/admin", (200, 403, 403, 403)),
    ("/public/..%2Fadmin", (200, 200, 200, 403)),
    ("/../../admin", (200, 403, 403, 403)),
    ("/./admin", (200, 403, 403, 403)),
    ("/%61dmin", (200, 403, 403, 403)),
    ("/%61%64%6D%69%6E/x", (200, 403, 403, 403)),
    ("/public\\..\\admin", (200, 403, 403, 403)),
    ("/admin\\x", (200, 403, 403, 403)),
    ("/%5Cadmin", (200, 200, 200, 403)),
    ("/ADMIN", (200, 200, 200, 200)),
    ("/Admin/users", (200, 200, 200, 200)),
    ("/admin#fragment", (403, 403, 403, 403)),
    ("/public#/../admin", (200, 200, 200, 200)),
    ("/admin?x=1", (403, 403, 403, 403)),
    ("/admin?", (403, 403, 403, 403)),
    ("/admin/?next=/public", (403, 403, 403, 403)),
    ("/public?/../admin", (200, 200, 200, 200)),
]
NUL_TABLE = ["/admin%00", "/adm%00in", "/public%00/../admin"]

ALLOW_TABLE = [
    ("/public/x", (200, 200, 200, 200)),
    ("/public/../admin", (200, 403, 403, 403)),
    ("/public/%2e%2e/admin", (200, 403, 403, 403)),
    ("/public//x", (200, 200, 200, 200)),
    ("//public/x", (403, 403, 200, 200)),
    ("/public%2Fx", (403, 403, 403, 200)),
    ("/PUBLIC/x", (403, 403, 403, 403)),
    ("/public/x#frag", (200, 200, 200, 200)),
    ("/admin#/public/x", (403, 403, 403, 403)),
]


def _cases() -> list[Case]:
    cases = []
    for table, policy, what in (
        (DENY_TABLE, DENY_ADMIN, "DENY /admin"),
        (ALLOW_TABLE, ALLOW_PUBLIC, "ALLOW /public"),
    ):
        for raw, statuses in table:
            for mode, status in zip(MODES, statuses, strict=True):
                cases.append(
                    Case(
                        f"{what} {mode}: {raw}",
                        policy,
                        {"path": raw},
                        status,
                        mesh=mesh_config(path_normalization=mode),
                        ref="§1.6, §4 path normalization",
                    )
                )
    for raw in NUL_TABLE:
        for mode in MODES[1:]:
            cases.append(
                Case(
                    f"%00 is refused {mode}: {raw}",
                    DENY_ADMIN,
                    {"path": raw},
                    400,
                    mesh=mesh_config(path_normalization=mode),
                    ref="§1.6 %00 -> 400",
                )
            )
    cases.append(
        Case(
            "default mode is BASE",
            DENY_ADMIN,
            {"path": "/public/../admin"},
            403,
            ref="§1.6 the default option is BASE",
        )
    )
    return cases


HEADER_PATH_POLICY = yaml_docs(deny(rule(when=cond("request.headers[:path]", ["/admin*"]))))
OTHER_CASES = [
    Case(
        "request.headers[:path] sees the normalized path: /./admin",
        HEADER_PATH_POLICY,
        {"path": "/./admin?x=1"},
        403,
        ref="§1.6 normalization happens before any filter; §1.4 ':path' includes the query",
    ),
    Case(
        "request.headers[:path] sees the normalized path: /%61dmin",
        HEADER_PATH_POLICY,
        {"path": "/%61dmin"},
        403,
        ref="§1.6 unreserved escapes are decoded before RBAC",
    ),
    Case(
        "request.headers[:path] sees the normalized path: /public/../admin",
        HEADER_PATH_POLICY,
        {"path": "/public/../admin"},
        403,
        ref="§1.6",
    ),
    Case(
        "request.headers[:path] sees the path without its fragment",
        yaml_docs(deny(rule(when=cond("request.headers[:path]", ["/admin"])))),
        {"path": "/admin#top"},
        403,
        ref="§1.6 the fragment is stripped (CVE-2021-39156)",
    ),
    Case(
        "request.headers[:path] keeps the query",
        HEADER_PATH_POLICY,
        {"path": "/admin?debug=1"},
        403,
        ref="§1.4 ':path' includes the query",
    ),
    Case(
        "www-authenticate realm shows the normalized path",
        yaml_docs(
            request_authentication(jwt_rule(ISSUER, jwks=jwks("rsa"))),
        ),
        {"path": "/public/../get?x=1", "headers": {"authorization": "Bearer not-a-jwt"}},
        401,
        expect_headers={
            "www-authenticate": 'Bearer realm="http://api.example.com/get?x=1", '
            'error="invalid_token"'
        },
        ref="§0 realm = original URI (the :path jwt_authn sees is already normalized)",
    ),
    Case(
        "lower-case method is refused with 400",
        yaml_docs(deny(rule(to=op(methods=["GET"])))),
        {"method": "get", "path": "/"},
        400,
        ref="§1.6 'Lower-case methods are rejected with 400 per the doc'",
    ),
]


@pytest.mark.parametrize("case", params(_cases()))
async def test_path_normalization(authz: Launcher, case: Case) -> None:
    """A path bypass attempt gets what Istio's normalization mode makes of it."""
    await authz.run(case)


@pytest.mark.parametrize("case", params(OTHER_CASES))
async def test_normalized_request(authz: Launcher, case: Case) -> None:
    """Normalization also governs what ``request.headers[:path]`` and methods see."""
    await authz.run(case)
