"""The request attributes AuthorizationPolicy fields are matched against, computed once.

The service fills one ``Attributes`` per request (normalized path, trusted client
address, lower-cased host, the verified JWT) before any policy is evaluated, so
matching never re-derives anything.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class HeaderValues(tuple[str, ...]):
    """Each value of a header sent more than once; matched one by one (CVE-2026-26308)."""

    __slots__ = ()


@dataclass(slots=True)
class Attributes:
    """One request, as policies see it. Absent values are ``None`` or empty."""

    method: str = "GET"
    host: str = ""  # lower-cased :authority, port included when sent
    path: str = "/"  # normalized, without query or fragment
    path_with_query: str = "/"  # the :path header: normalized path, query kept
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-case names
    repeated: Mapping[str, HeaderValues] = field(default_factory=dict)
    source_ip: str = ""  # the peer (ipBlocks)
    remote_ip: str = ""  # the trusted client address (remoteIpBlocks)
    source_principal: str = ""  # peer certificate URI SAN (spiffe://...)
    destination_ip: str = ""
    destination_port: int = 0
    sni: str = ""
    issuer: str | None = None  # verified JWT
    subject: str | None = None
    claims: Mapping[str, Any] | None = None

    def header(self, name: str) -> str | HeaderValues | None:
        """A header's value; a header sent several times gives each of its values."""
        if name in self.repeated:
            return self.repeated[name]
        if name == ":path":
            return self.path_with_query
        if name == ":method":
            return self.method
        if name in (":authority", "host"):
            return self.headers.get(name, self.host)
        return self.headers.get(name)

    def claim(self, path: tuple[str, ...]) -> Any:
        value: Any = self.claims
        for key in path:
            if not isinstance(value, Mapping):
                return None
            value = value.get(key)
        return value
