"""One gateway compiled once, at policy load, and completed at publish.

* ``compile_gateway_config`` (at load) writes the gateway's own resources as Envoy's
  JSON (``build.py``), compiles every ``safe_regex`` with RE2 as Envoy does, parses the
  JSON into protobuf messages (a field Envoy does not know fails here and never
  reaches an Envoy) and checks that every reference resolves. What ``mixerless check``
  accepts is what is published;
* ``snapshot`` (at publish) adds the two clusters that point at mixerless itself,
  whose addresses are a serving setting, not policy; ``gateway_resources`` does the
  same as JSON, for ``mixerless render``.
"""

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format

from services import envoy_api as api
from services.policy.re2 import check_re2
from services.xds.build import (
    ListenerSettings,
    Services,
    mixerless_resources,
    own_resources,
)
from services.xds.gateway import Gateway
from services.xds.ratelimit_policy import RateLimitPolicy
from services.xds.snapshot import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    Snapshot,
    check_consistent,
)


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """One gateway, validated and compiled: its own Envoy resources, as JSON and parsed."""

    gateway: Gateway
    policies: tuple[RateLimitPolicy, ...]
    settings: ListenerSettings
    resources: Mapping[str, Mapping[str, dict[str, Any]]]  # type URL -> name -> Envoy JSON
    messages: Mapping[str, Mapping[str, Any]]  # type URL -> name -> protobuf message

    @property
    def name(self) -> str:
        return self.gateway.name


_MESSAGES: Mapping[str, Any] = {
    CLUSTER: api.Cluster,
    ENDPOINT: api.ClusterLoadAssignment,
    LISTENER: api.Listener,
    ROUTE: api.RouteConfiguration,
}


def _parse(
    resources: Mapping[str, Mapping[str, Mapping[str, Any]]],
) -> dict[str, dict[str, Any]]:
    """Envoy JSON -> protobuf messages; ``ValueError`` names the resource that fails."""
    messages: dict[str, dict[str, Any]] = {}
    for type_url, named in resources.items():
        messages[type_url] = {}
        for name, body in named.items():
            try:
                messages[type_url][name] = json_format.ParseDict(body, _MESSAGES[type_url]())
            except json_format.ParseError as exc:
                raise ValueError(f"{type_url.rsplit('.', 1)[-1]} {name}: {exc}") from exc
    return messages


def _regexes(value: Any) -> Iterator[str]:
    """Every ``safe_regex`` in Envoy JSON."""
    if isinstance(value, dict):
        for key, item in value.items():
            if (
                key == "safe_regex"
                and isinstance(item, dict)
                and isinstance(item.get("regex"), str)
            ):
                yield item["regex"]
            else:
                yield from _regexes(item)
    elif isinstance(value, list):
        for item in value:
            yield from _regexes(item)


def compile_gateway_config(
    gateway: Gateway, policies: Sequence[RateLimitPolicy], settings: ListenerSettings
) -> GatewayConfig:
    """Build, parse and cross-check the gateway's own resources, once, at policy load.

    Raises ``ValueError`` (or ``InconsistentSnapshotError``) naming what is wrong.
    """
    resources = own_resources(gateway, policies, settings)
    for regex in _regexes(resources):
        check_re2(regex)  # written by hand (rateLimits) or generated: Envoy compiles them all
    messages = _parse(resources)
    eds = {name for name, body in resources[CLUSTER].items() if body.get("type") == "EDS"}
    referenced = {
        ENDPOINT: frozenset(eds),
        ROUTE: frozenset(resources[LISTENER]),
        CLUSTER: frozenset(
            route["route"]["cluster"]
            for config in resources[ROUTE].values()
            for host in config["virtual_hosts"]
            for route in host["routes"]
            if "route" in route  # a direct_response route names no cluster
        ),
    }
    check_consistent(Snapshot.unversioned(messages), referenced)
    return GatewayConfig(gateway, tuple(policies), settings, resources, messages)


def gateway_resources(
    config: GatewayConfig, services: Services
) -> dict[str, dict[str, dict[str, Any]]]:
    """Every resource of the gateway as Envoy JSON, by type URL and name (for ``render``)."""
    own = config.resources
    theirs = mixerless_resources(config.gateway, services)
    return {
        type_url: {**own[type_url], **theirs.get(type_url, {})}
        for type_url in (CLUSTER, ENDPOINT, LISTENER, ROUTE)
    }


def snapshot(config: GatewayConfig, services: Services) -> Snapshot:
    """What the gateway's Envoys are sent: its compiled resources plus mixerless's clusters."""
    theirs = _parse(mixerless_resources(config.gateway, services))
    return Snapshot.build(
        {
            type_url: {**config.messages[type_url], **theirs.get(type_url, {})}
            for type_url in (CLUSTER, ENDPOINT, LISTENER, ROUTE)
        }
    )
