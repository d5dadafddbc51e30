"""What one gateway's Envoys are told: a consistent, versioned set of xDS resources.

A ``Snapshot`` holds, per resource type, the resources by name, each with a
content-hash version (stable across restarts, so a reconnecting Envoy that already
has a version is not sent it again). ``check_consistent`` refuses a snapshot that
references what it does not contain (a route naming a missing cluster, a listener
naming a missing route configuration), so an inconsistent one is never published.
"""

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format

TYPE_PREFIX = "type.googleapis.com/"
CLUSTER = TYPE_PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINT = TYPE_PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = TYPE_PREFIX + "envoy.config.listener.v3.Listener"
ROUTE = TYPE_PREFIX + "envoy.config.route.v3.RouteConfiguration"
# Make-before-break: what is referenced is sent before what references it.
ORDER = (CLUSTER, ENDPOINT, LISTENER, ROUTE)
# SotW: every response of these types carries all resources; absent ones are removed.
WILDCARD_TYPES = frozenset({CLUSTER, LISTENER})


class InconsistentSnapshotError(ValueError):
    """A snapshot references resources it does not hold."""


def resource_version(message: Any) -> str:
    """A content hash of one resource, the same in every process.

    Hashed from canonical JSON (sorted keys), not from the wire bytes: the bytes of a
    message packed in an ``Any`` (typed_config, typed_per_filter_config) keep whatever
    map order they were serialized with, which varies between processes.
    """
    canonical = json.dumps(
        json_format.MessageToDict(message, preserving_proto_field_name=True),
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Resources per type URL, by name; versions are content hashes."""

    resources: Mapping[str, Mapping[str, Any]]
    resource_versions: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    versions: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def build(cls, resources: Mapping[str, Mapping[str, Any]]) -> "Snapshot":
        """A snapshot with every version computed from content."""
        full = {type_url: dict(resources.get(type_url, {})) for type_url in ORDER}
        per_resource = {
            type_url: {name: resource_version(message) for name, message in named.items()}
            for type_url, named in full.items()
        }
        versions = {}
        for type_url, named in per_resource.items():
            digest = hashlib.sha256()
            for name in sorted(named):
                digest.update(f"{name}={named[name]};".encode())
            versions[type_url] = digest.hexdigest()[:16]
        return cls(full, per_resource, versions)

    @classmethod
    def unversioned(cls, resources: Mapping[str, Mapping[str, Any]]) -> "Snapshot":
        """Resources without versions: enough for ``check_consistent``, never published."""
        return cls({type_url: dict(resources.get(type_url, {})) for type_url in ORDER})

    def names(self, type_url: str) -> frozenset[str]:
        return frozenset(self.resources.get(type_url, {}))


def check_consistent(snapshot: Snapshot, referenced: Mapping[str, frozenset[str]]) -> None:
    """Raise unless every name in ``referenced`` (type URL -> names used by other
    resources) is held by the snapshot."""
    problems = []
    for type_url, names in referenced.items():
        missing = sorted(names - snapshot.names(type_url))
        if missing:
            kind = type_url.rsplit(".", 1)[-1]
            problems.append(f"{kind} {', '.join(missing)} referenced but not defined")
    if problems:
        raise InconsistentSnapshotError("; ".join(problems))
