"""Plain data shared by the authz service: the request as seen, and the answer given.

``CheckInput`` is what the servicer extracts from an Envoy ``CheckRequest``;
``Decision`` is what it turns back into a ``CheckResponse``. Everything between
(path normalization, JWT, policy matching, CUSTOM providers) reads and writes
these types and nothing from gRPC.
"""

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

Header = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Peer:
    """One end of the connection: IP, port and (with mTLS) its SPIFFE identity."""

    address: str = ""
    port: int = 0
    principal: str = ""  # the peer certificate's URI SAN, e.g. spiffe://td/ns/foo/sa/bar


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """The HTTP request Envoy asks about.

    ``headers`` has lower-case names; a header sent several times is joined with ``,``
    there (as Envoy joins it), and its separate values are in ``repeated`` when Envoy
    sent them apart (raw header maps). ``path`` is as received: with query and fragment.
    """

    method: str = "GET"
    host: str = ""
    path: str = "/"
    scheme: str = "http"
    protocol: str = "HTTP/1.1"
    headers: Mapping[str, str] = field(default_factory=dict)
    repeated: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    body: bytes = b""
    body_truncated: bool = False


@dataclass(frozen=True, slots=True)
class CheckInput:
    """Everything a decision may depend on."""

    request: HttpRequest
    source: Peer = field(default_factory=Peer)
    destination: Peer = field(default_factory=Peer)
    sni: str = ""
    context: Mapping[str, str] = field(default_factory=dict)  # CheckRequest context_extensions
    http: bool = True  # False for a network (TCP) check, which carries no HTTP request
    original: Any = None  # the CheckRequest itself, forwarded as-is to gRPC CUSTOM providers


class DynamicMetadata(Mapping[str, Any]):
    """The ``dynamic_metadata`` of an allowed CheckResponse, as plain values.

    Built once where its values are known (per verified token, in the JWT cache
    entry) and then handed on by reference. The servicer's wire encoding is kept on
    the object itself (``encoded``), so it is made once and is dropped with the
    object: no cache anywhere else needs to know which metadata it has seen.
    """

    __slots__ = ("_encoded", "_values")

    def __init__(self, values: Mapping[str, Any]) -> None:
        self._values = dict(values)
        self._encoded: bytes | None = None

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"DynamicMetadata({self._values!r})"

    def encoded(self, encode: Callable[[Mapping[str, Any]], bytes]) -> bytes:
        """``encode(values)``, computed on first use and kept with this object."""
        if self._encoded is None:
            self._encoded = encode(self._values)
        return self._encoded

    def merged(self, other: Mapping[str, Any]) -> "DynamicMetadata":
        """A new object with ``other``'s keys over these (its encoding made afresh)."""
        return DynamicMetadata({**self._values, **other})


class Effects(NamedTuple):
    """What an allowed request carries: header and query changes, dynamic metadata.

    Accumulated by value, stage after stage (``plus``): later stages' header changes
    follow earlier ones, and their metadata keys win.
    """

    upstream: tuple[Header, ...] = ()  # set on the request to the upstream
    upstream_remove: tuple[str, ...] = ()
    downstream: tuple[Header, ...] = ()  # set on the response to the client
    query_set: tuple[Header, ...] = ()
    query_remove: tuple[str, ...] = ()
    metadata: DynamicMetadata | None = None

    def plus(self, later: "Effects") -> "Effects":
        """These effects followed by ``later``'s."""
        if later is NO_EFFECTS:
            return self
        if self is NO_EFFECTS:
            return later
        metadata = self.metadata
        if later.metadata is not None:
            metadata = later.metadata if metadata is None else metadata.merged(later.metadata)
        return Effects(
            self.upstream + later.upstream,
            self.upstream_remove + later.upstream_remove,
            self.downstream + later.downstream,
            self.query_set + later.query_set,
            self.query_remove + later.query_remove,
            metadata,
        )


NO_EFFECTS = Effects()


@dataclass(frozen=True, slots=True)
class Reason:
    """Which policy and rule decided, for logs and ``mixerless explain``."""

    stage: str  # "path", "custom", "jwt", "deny", "allow", "default"
    policy: str = ""  # namespace/name
    rule: int | None = None
    detail: str = ""

    def __str__(self) -> str:
        parts = []
        if self.policy:
            parts.append(f"policy {self.policy}")
        if self.rule is not None:
            parts.append(f"rule {self.rule}")
        if self.detail:
            parts.append(self.detail)
        return f"{self.stage}: {', '.join(parts)}" if parts else self.stage


class Encoded:
    """A Decision's encoded answer, made on first use and kept with it: a Decision served
    again (a decision cache hit, a constant denial) is encoded once (the servicer's)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: bytes | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer: allow (with header changes) or deny (with status, body and headers).

    ``base`` and ``appended``: this Decision is ``base`` (a cached one) with the headers
    ``appended`` added to the client's response (a quota's ``x-ratelimit-*``), so its
    encoding is the base's, kept, followed by theirs. The other fields hold the whole.
    """

    allowed: bool
    status: int = 200  # HTTP status of a denial
    body: str = ""
    upstream_headers: tuple[Header, ...] = ()  # set on the request to the upstream
    upstream_headers_to_remove: tuple[str, ...] = ()
    downstream_headers: tuple[Header, ...] = ()  # set on the response to the client
    query_parameters_to_set: tuple[Header, ...] = ()
    query_parameters_to_remove: tuple[str, ...] = ()
    dynamic_metadata: DynamicMetadata | None = None
    reason: Reason = field(default_factory=lambda: Reason("default"))
    audit: tuple[str, ...] = ()  # AUDIT policies that matched
    dry_run: tuple[str, ...] = ()  # what dry-run policies would have done
    base: "Decision | None" = field(default=None, compare=False, repr=False)
    appended: tuple[Header, ...] = field(default=(), compare=False, repr=False)
    encoded: Encoded = field(default_factory=Encoded, compare=False, repr=False)


RBAC_DENIED = "RBAC: access denied"
