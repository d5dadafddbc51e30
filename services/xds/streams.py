"""One ADS stream's protocol state: what was sent, ACKed and NACKed per type, SotW or delta.

A stream turns queue items (requests, "snapshot changed" wake-ups) into responses;
the servicer in ``services.xds.server`` owns the streams and their gRPC calls.

One stream is one Envoy. Its first request names the node; ``key_for_node`` maps the
node to a cache key (a gateway), and the stream serves that key's snapshot. A node
without a key is sent nothing (warned once per stream). Every ``set`` of the cache
wakes every stream, which asks ``key_for_node`` again and does nothing more unless its
key or that key's snapshot changed: a node that gains or changes gateway is served.

Each stream has a reader task that only queues requests, and one writer loop that
takes, in order, requests and "snapshot changed" wake-ups from that queue, and yields
the responses they call for. Both variants follow the xDS protocol
(``docs/root/api-docs/xds_protocol.rst``):

* State of the world (``StreamAggregatedResources``): a request whose
  ``response_nonce`` is not the latest one sent for its type is stale and ignored. A
  response is sent only when the resources for the subscribed names differ from what
  the client was sent (an ACK is never answered); LDS and CDS responses carry every
  resource (an absent one is deleted), RDS and EDS the subscribed names that exist.
  ``error_detail`` marks a NACK: it is logged and counted, and the rejected response
  (same version, same resources) is never sent again on that stream. A first request
  whose ``version_info`` is the snapshot's version is not answered: a reconnecting
  Envoy already has it.
* Incremental (``DeltaAggregatedResources``): per-resource versions; only changed
  resources are sent, deletions and subscribed names that do not exist go in
  ``removed_resources``, ``initial_resource_versions`` says what a reconnecting client
  has, and subscription changes count even when their nonce is stale.

Wake-ups go through types in make-before-break order (CDS, EDS, LDS, RDS).
"""

import asyncio
import itertools
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import structlog
from google.protobuf import any_pb2

from services import envoy_api as api
from services.clock import Clock
from services.metrics import Metrics
from services.xds.cache import SnapshotCache
from services.xds.snapshot import ORDER, WILDCARD_TYPES, Snapshot

log = structlog.get_logger("mixerless.xds")

KeyForNode = Callable[[Any], str | None]


class StreamHost(Protocol):
    """Protocol: what a stream needs from the servicer that runs it."""

    cache: SnapshotCache
    key_for_node: KeyForNode
    metrics: Metrics
    clock: Clock


WILDCARD = "*"
CLOSED = object()  # queued when the client's side of the stream ends
WAKE = object()  # queued when a snapshot was published


def type_label(type_url: str) -> str:
    """The bounded metric label of a type URL: its message name, or ``other``."""
    return type_url.rsplit(".", 1)[-1] if type_url in ORDER else "other"


def _pack(message: Any) -> Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


@dataclass(slots=True)
class Nack:
    """A response the client rejected: its version and nonce, the error, when (epoch s)."""

    version: str
    nonce: str
    message: str
    at: float


@dataclass(slots=True)
class _TypeState:
    """What one stream knows about one resource type."""

    wildcard: bool = False
    names: set[str] = field(default_factory=set)  # explicitly subscribed
    nonce: str = ""  # of the latest response sent
    version_sent: str = ""
    version_acked: str = ""
    last_nack: Nack | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "subscribed": [WILDCARD] * self.wildcard + sorted(self.names),
            "version_sent": self.version_sent,
            "version_acked": self.version_acked,
            "nonce": self.nonce,
            "last_nack": None if self.last_nack is None else asdict(self.last_nack),
        }


@dataclass(slots=True)
class _SotwState(_TypeState):
    explicit: bool = False  # a name was subscribed: an empty list no longer means wildcard
    sent: dict[str, str] | None = None  # name -> version in the latest response
    nacked: set[frozenset[tuple[str, str]]] = field(default_factory=set)


@dataclass(slots=True)
class _DeltaState(_TypeState):
    client: dict[str, str] = field(default_factory=dict)  # name -> version the client holds
    told_missing: set[str] = field(default_factory=set)  # answered "does not exist"
    must_answer: set[str] = field(default_factory=set)  # unsubscribed while wildcard
    outstanding: dict[str, str] = field(default_factory=dict)  # nonce -> version, un-ACKed
    responded: bool = False


State = TypeVar("State", bound=_TypeState)


class Stream(ABC, Generic[State]):
    """One ADS stream: the node, its key, per-type state; turns queue items into responses."""

    variant = ""

    def __init__(self, servicer: "StreamHost", stream_id: int, peer: str) -> None:
        self.servicer = servicer
        self.id = stream_id
        self.peer = peer
        self.opened_at = servicer.clock.now()
        self.queue: asyncio.Queue[object] = asyncio.Queue()
        self.node: Any = None
        self.key: str | None = None
        self.types: dict[str, State] = {}
        self._mapped = False  # key_for_node was asked
        self._generation = 0  # of the key's snapshot when last looked at
        self._warned = False
        self._wake_queued = False
        self._nonces = itertools.count(1)

    def step(self, item: object) -> list[Any]:
        """The responses owed after one request or wake-up."""
        if item is WAKE:
            self._wake_queued = False
            return self._refresh() if self.node is not None and self._rekey() else []
        if self.node is None:
            self.node = item.node  # type: ignore[attr-defined]
            log.info("xds stream opened", peer=self.peer, **self._who())
            self._rekey()  # later, only wake-ups re-map: they refresh every type
        return self.handle(item)

    @abstractmethod
    def handle(self, request: Any) -> list[Any]:
        """Update the request's type state; the responses it calls for."""

    @abstractmethod
    def respond(self, type_url: str, state: State) -> list[Any]:
        """The response the type is owed now, if any."""

    def wake(self, _key: str) -> None:
        if not self._wake_queued:
            self._wake_queued = True
            self.queue.put_nowait(WAKE)

    def _rekey(self) -> bool:
        """Map the node to its key again; True if the key or the key's snapshot changed."""
        key = self.servicer.key_for_node(self.node)
        generation = 0 if key is None else self.servicer.cache.generation(key)
        if self._mapped and key == self.key and generation == self._generation:
            return False
        if key is None and not self._warned:
            log.warning("xds node matches no gateway; sending it nothing", **self._who())
            self._warned = True
        elif key is not None and key != self.key:
            log.info("xds node matched to a gateway", key=key, **self._who())
        self.key, self._generation, self._mapped = key, generation, True
        return True

    def _who(self) -> dict[str, Any]:
        return {
            "stream": self.id,
            "variant": self.variant,
            "node": self.node.id,
            "cluster": self.node.cluster,
        }

    def snapshot(self) -> Snapshot | None:
        return None if self.key is None else self.servicer.cache.get(self.key)

    def _refresh(self) -> list[Any]:
        rank = {type_url: index for index, type_url in enumerate(ORDER)}
        ordered = sorted(self.types, key=lambda t: (rank.get(t, len(ORDER)), t))
        return [response for t in ordered for response in self.respond(t, self.types[t])]

    def _next_nonce(self, state: _TypeState, type_url: str, version: str) -> str:
        state.nonce = f"{self.id}-{next(self._nonces)}"
        state.version_sent = version
        self.servicer.metrics.xds_pushes.labels(type_label(type_url)).inc()
        log.debug("xds push", stream=self.id, type=type_label(type_url), version=version)
        return state.nonce

    def _ack(self, state: _TypeState, type_url: str, version: str) -> None:
        state.version_acked = version
        self.servicer.metrics.xds_acks.labels(type_label(type_url)).inc()

    def _nack(
        self, state: _TypeState, type_url: str, request: Any, rejected: str, accepted: str
    ) -> None:
        detail = request.error_detail
        now = self.servicer.clock.now()
        state.last_nack = Nack(rejected, request.response_nonce, detail.message, now)
        self.servicer.metrics.xds_nacks.labels(type_label(type_url)).inc()
        log.warning(
            "xds update rejected by envoy",
            key=self.key,
            type=type_url,
            version=rejected,
            accepted_version=accepted,
            code=detail.code,
            message=detail.message,
            **self._who(),
        )

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "variant": self.variant,
            "peer": self.peer,
            "node": None if self.node is None else self.node.id,
            "cluster": None if self.node is None else self.node.cluster,
            "key": self.key,
            "opened_at": self.opened_at,
            "types": {t: state.describe() for t, state in self.types.items()},
        }


class SotwStream(Stream[_SotwState]):
    variant = "sotw"

    def handle(self, request: Any) -> list[Any]:
        type_url = request.type_url
        state = self.types.get(type_url)
        if state is None:
            # What a reconnecting client accepted before; equal to ours, it needs nothing.
            state = self.types[type_url] = _SotwState(version_acked=request.version_info)
        elif state.nonce:
            if request.response_nonce != state.nonce:
                log.debug("xds stale request ignored", stream=self.id, type=type_url)
                return []
            if request.HasField("error_detail"):
                self._nack(state, type_url, request, state.version_sent, request.version_info)
                state.nacked.add(frozenset((state.sent or {}).items()))
            else:
                self._ack(state, type_url, request.version_info)
        names = set(request.resource_names)
        if names:
            state.explicit = True
        state.wildcard = WILDCARD in names or not (names or state.explicit)
        state.names = names - {WILDCARD}
        return self.respond(type_url, state)

    def respond(self, type_url: str, state: _SotwState) -> list[Any]:
        snapshot = self.snapshot()
        if snapshot is None or type_url not in snapshot.resources:
            return []
        resources = snapshot.resources[type_url]
        versions = snapshot.resource_versions[type_url]
        version = snapshot.versions[type_url]
        chosen = set(resources) if state.wildcard else state.names & set(resources)
        want = {name: versions[name] for name in chosen}
        full_state = state.wildcard or type_url in WILDCARD_TYPES
        if state.sent is None:
            if state.version_acked and state.version_acked == version:
                state.sent, state.version_sent = want, version
                return []
            if not want and not full_state:
                return []
        elif want == state.sent:
            return []
        elif not full_state and all(state.sent.get(n) == v for n, v in want.items()):
            state.sent = want  # names were only unsubscribed: nothing new to send
            return []
        if frozenset(want.items()) in state.nacked:
            return []
        response = api.DiscoveryResponse(
            version_info=version,
            type_url=type_url,
            resources=[_pack(resources[name]) for name in sorted(chosen)],
        )
        response.nonce = self._next_nonce(state, type_url, version)
        state.sent = want
        return [response]


def _settle(outstanding: dict[str, str], nonce: str) -> str | None:
    """Pop ``nonce`` (and every older one) from ``outstanding``; its version, if known."""
    if nonce not in outstanding:
        return None
    while True:
        sent, version = next(iter(outstanding.items()))
        del outstanding[sent]
        if sent == nonce:
            return version


class DeltaStream(Stream[_DeltaState]):
    variant = "delta"

    def handle(self, request: Any) -> list[Any]:
        type_url = request.type_url
        state = self.types.get(type_url)
        first = state is None
        if state is None:
            held = dict(request.initial_resource_versions)
            state = self.types[type_url] = _DeltaState(client=held, responded=bool(held))
            # Legacy wildcard: the first request names nothing to (un)subscribe.
            state.wildcard = not request.resource_names_subscribe and not (
                request.resource_names_unsubscribe
            )
        if request.response_nonce:
            version = _settle(state.outstanding, request.response_nonce)
            if version is not None and request.HasField("error_detail"):
                self._nack(state, type_url, request, version, state.version_acked)
            elif version is not None:
                self._ack(state, type_url, version)
        for name in request.resource_names_subscribe:
            if name == WILDCARD:
                state.wildcard = True
                continue
            state.names.add(name)
            state.told_missing.discard(name)
            if not first:
                state.client.pop(name, None)  # subscribed again: it must be sent again
        for name in request.resource_names_unsubscribe:
            if name == WILDCARD:
                state.wildcard = False
                state.client = {n: v for n, v in state.client.items() if n in state.names}
                continue
            state.names.discard(name)
            state.told_missing.discard(name)
            state.client.pop(name, None)
            if state.wildcard:
                state.must_answer.add(name)
        return self.respond(type_url, state)

    def respond(self, type_url: str, state: _DeltaState) -> list[Any]:
        snapshot = self.snapshot()
        if snapshot is None:
            return []
        resources = snapshot.resources.get(type_url, {})
        versions = snapshot.resource_versions.get(type_url, {})
        wanted: Iterable[str] = set(resources) | state.names if state.wildcard else state.names
        changed = sorted(n for n in wanted if n in resources and state.client.get(n) != versions[n])
        absent = {n for n in state.client if n not in resources}
        absent |= {n for n in state.names | state.must_answer if n not in resources}
        removed = sorted(absent - state.told_missing)
        state.must_answer.clear()
        first_answer = state.wildcard and not state.responded and type_url in snapshot.resources
        if not changed and not removed and not first_answer:
            return []
        for name in changed:
            state.client[name] = versions[name]
            state.told_missing.discard(name)
        for name in removed:
            state.client.pop(name, None)
            if name in state.names:
                state.told_missing.add(name)
        version = snapshot.versions.get(type_url, "")
        response = api.DeltaDiscoveryResponse(
            system_version_info=version,
            type_url=type_url,
            resources=[
                api.Resource(name=n, version=versions[n], resource=_pack(resources[n]))
                for n in changed
            ],
            removed_resources=removed,
        )
        response.nonce = self._next_nonce(state, type_url, version)
        state.outstanding[response.nonce] = version
        state.responded = True
        return [response]


async def read_requests(requests: AsyncIterator[Any], queue: asyncio.Queue[object]) -> None:
    try:
        async for request in requests:
            queue.put_nowait(request)
    except Exception as exc:  # the call failed or was cancelled by the client
        log.debug("xds stream read ended", error=repr(exc))
    finally:
        queue.put_nowait(CLOSED)
