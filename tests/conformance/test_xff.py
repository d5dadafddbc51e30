"""``remoteIpBlocks``/``remote.ip`` behind 0, 1 and 2 trusted proxies; ``ipBlocks`` ignores XFF.

The gateway runs with ``use_remote_address: true`` and ``xff_num_trusted_hops: N``
(reference §1.4 XFF rules). Its trusted client address is the N-th entry from the right
of the *incoming* XFF (the peer when N=0 or when XFF is too short), and it appends its
peer before asking the authz server. So each ``xff`` below is written as the server
receives it, peer last, and the client is the (N+1)-th entry from the right.

Addresses: clients in 203.0.113.0/24 are allowed, 198.51.100.0/24 are attackers,
10.0.0.0/8 are the load balancers in front of the gateway.
"""

import pytest

from tests.conformance.conftest import Launcher
from tests.conformance.harness import (
    Case,
    allow,
    cond,
    deny,
    mesh_config,
    params,
    rule,
    src,
    yaml_docs,
)

ALLOW_CLIENTS = yaml_docs(allow(rule(from_=src(remoteIpBlocks=["203.0.113.0/24"]))))
DENY_ATTACKERS = yaml_docs(deny(rule(from_=src(remoteIpBlocks=["198.51.100.0/24"]))))


def via(peer, xff=None):
    request = {"source_ip": peer}
    if xff is not None:
        request["xff"] = xff
    return request


def table(name, hops, policy, rows, ref="§1.4 XFF rules"):
    mesh = mesh_config(num_trusted_proxies=hops)
    return [
        Case(f"{name} N={hops}: {label}", policy, request, status, mesh=mesh, ref=ref)
        for label, request, status in rows
    ]


CASES = [
    *table(
        "remoteIpBlocks ALLOW",
        0,
        ALLOW_CLIENTS,
        [
            ("client connects directly", via("203.0.113.7", "203.0.113.7"), 200),
            (
                "client behind an LB: N=0 trusts only the peer",
                via("10.0.0.1", "203.0.113.7,10.0.0.1"),
                403,
            ),
            ("attacker spoofs XFF", via("198.51.100.1", "203.0.113.7,198.51.100.1"), 403),
            ("no XFF at all", via("203.0.113.7"), 200),
        ],
    ),
    *table(
        "remoteIpBlocks ALLOW",
        1,
        ALLOW_CLIENTS,
        [
            ("client behind one LB", via("10.0.0.1", "203.0.113.7,10.0.0.1"), 200),
            ("with spaces after commas", via("10.0.0.1", "203.0.113.7, 10.0.0.1"), 200),
            (
                "attacker prepends an allowed address",
                via("10.0.0.1", "203.0.113.7, 198.51.100.1,10.0.0.1"),
                403,
            ),
            (
                "two spoofed entries",
                via("10.0.0.1", "203.0.113.7,203.0.113.8,198.51.100.1,10.0.0.1"),
                403,
            ),
            ("XFF shorter than N+1: the peer", via("10.0.0.1", "10.0.0.1"), 403),
            ("allowed peer, XFF too short", via("203.0.113.9", "203.0.113.9"), 200),
            ("unparseable entry: the peer", via("10.0.0.1", "garbage,10.0.0.1"), 403),
            ("entry with a port is not an IP", via("10.0.0.1", "203.0.113.7:5555,10.0.0.1"), 403),
            ("IPv6 client", via("10.0.0.1", "2001:db8::1,10.0.0.1"), 403),
        ],
    ),
    *table(
        "remoteIpBlocks ALLOW",
        2,
        ALLOW_CLIENTS,
        [
            ("client behind two proxies", via("10.0.0.1", "203.0.113.7,10.0.0.2,10.0.0.1"), 200),
            (
                "attacker prepends an allowed address",
                via("10.0.0.1", "203.0.113.7,198.51.100.1,10.0.0.2,10.0.0.1"),
                403,
            ),
            (
                "one proxy fewer than N: a client-written entry is taken",
                via("10.0.0.1", "198.51.100.1,203.0.113.7,10.0.0.1"),
                403,
            ),
            ("XFF shorter than N+1: the peer", via("10.0.0.1", "203.0.113.7,10.0.0.1"), 403),
        ],
    ),
    *table(
        "remoteIpBlocks DENY",
        1,
        DENY_ATTACKERS,
        [
            ("attacker behind the LB", via("10.0.0.1", "198.51.100.1,10.0.0.1"), 403),
            (
                "attacker prepends a clean address",
                via("10.0.0.1", "203.0.113.7,198.51.100.1,10.0.0.1"),
                403,
            ),
            ("clean client", via("10.0.0.1", "203.0.113.7,10.0.0.1"), 200),
            (
                "clean client prepended by someone",
                via("10.0.0.1", "198.51.100.1,203.0.113.7,10.0.0.1"),
                200,
            ),
        ],
    ),
    *table(
        "remote.ip condition",
        1,
        yaml_docs(allow(rule(when=cond("remote.ip", ["203.0.113.0/24"])))),
        [
            ("client behind one LB", via("10.0.0.1", "203.0.113.7,10.0.0.1"), 200),
            ("spoofed", via("10.0.0.1", "203.0.113.7,198.51.100.1,10.0.0.1"), 403),
        ],
    ),
    *table(
        "notRemoteIpBlocks",
        1,
        yaml_docs(allow(rule(from_=src(notRemoteIpBlocks=["198.51.100.0/24"])))),
        [
            ("excluded client", via("10.0.0.1", "198.51.100.1,10.0.0.1"), 403),
            ("other client", via("10.0.0.1", "203.0.113.7,10.0.0.1"), 200),
        ],
    ),
    *table(
        "remoteIpBlocks IPv6",
        1,
        yaml_docs(allow(rule(from_=src(remoteIpBlocks=["2001:db8::/32"])))),
        [
            ("IPv6 client", via("10.0.0.1", "2001:db8::1,10.0.0.1"), 200),
            ("IPv4 client", via("10.0.0.1", "203.0.113.7,10.0.0.1"), 403),
        ],
    ),
    *table(
        "ipBlocks ignores XFF",
        1,
        yaml_docs(allow(rule(from_=src(ipBlocks=["203.0.113.0/24"])))),
        [
            ("client behind LB is not the peer", via("10.0.0.1", "203.0.113.7,10.0.0.1"), 403),
            (
                "peer in block, XFF says otherwise",
                via("203.0.113.7", "198.51.100.1,203.0.113.7"),
                200,
            ),
        ],
        ref="§1.4 ipBlocks = direct_remote_ip; XFF is ignored",
    ),
    *table(
        "source.ip ignores XFF",
        2,
        yaml_docs(deny(rule(when=cond("source.ip", ["10.0.0.1"])))),
        [("peer is the LB", via("10.0.0.1", "203.0.113.7,10.0.0.2,10.0.0.1"), 403)],
        ref="§1.4 source.ip = direct_remote_ip",
    ),
]


@pytest.mark.parametrize("case", params(CASES))
async def test_trusted_client_address(authz: Launcher, case: Case) -> None:
    """remote.ip is the (N+1)-th XFF entry from the right; spoofed entries never count."""
    await authz.run(case)
