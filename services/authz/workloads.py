"""Which workload a request comes from, and which policies attach to it.

A gateway workload has a namespace, labels and (optionally) the name of the
``Gateway`` resource it implements. Istio's attachment rules
(``pilot/pkg/model/policyattachment.go``):

* policies in the root namespace apply mesh-wide, others only in their namespace;
* ``selector.matchLabels`` must be a subset of the workload's labels (an empty or
  absent selector selects every workload in scope);
* ``targetRefs`` to a ``Gateway`` apply to that gateway in the policy's namespace;
  ``targetRefs`` of other kinds (waypoint-only in Istio) never attach to a gateway;
* ``selector`` and ``targetRefs`` are mutually exclusive.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field

from services.policy.fields import Fields
from services.policy.k8s import string_map

GATEWAY_GROUP = "gateway.networking.k8s.io"
TARGET_REF_KINDS = {
    ("gateway.networking.k8s.io", "Gateway"),
    ("gateway.networking.k8s.io", "GatewayClass"),
    ("", "Service"),
    ("networking.istio.io", "ServiceEntry"),
}
MAX_TARGET_REFS = 16


@dataclass(frozen=True, slots=True)
class Workload:
    """The gateway a request passed through."""

    namespace: str
    labels: frozenset[tuple[str, str]] = frozenset()
    gateway: str = ""  # the Gateway resource name, when known

    @classmethod
    def of(cls, namespace: str, labels: Mapping[str, str], gateway: str = "") -> "Workload":
        return cls(namespace, frozenset(labels.items()), gateway)


def parse_labels(text: str) -> dict[str, str]:
    """``a=b,c=d`` (the ``labels`` context extension and ``--workload-labels``)."""
    labels: dict[str, str] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"labels must be comma-separated key=value pairs, got {item!r}")
        labels[key.strip()] = value.strip()
    return labels


@dataclass(frozen=True, slots=True)
class TargetRef:
    group: str
    kind: str
    name: str


@dataclass(frozen=True, slots=True)
class Attachment:
    """Where a policy attaches: its namespace, and a selector or target refs."""

    namespace: str
    match_labels: frozenset[tuple[str, str]] | None = None
    target_refs: tuple[TargetRef, ...] = field(default=())

    def applies_to(self, workload: Workload, root_namespace: str) -> bool:
        if self.namespace != root_namespace and self.namespace != workload.namespace:
            return False
        if self.target_refs:
            if self.namespace != workload.namespace or not workload.gateway:
                return False
            return any(
                ref.kind == "Gateway"
                and ref.group == GATEWAY_GROUP
                and ref.name == workload.gateway
                for ref in self.target_refs
            )
        if self.match_labels:
            return self.match_labels <= workload.labels
        return True


def parse_attachment(spec: Fields, namespace: str) -> Attachment:
    """Read ``selector`` / ``targetRef`` / ``targetRefs`` from a policy spec, validating them."""
    selector = spec.child("selector", what="selector", allowed={"matchLabels"})
    match_labels = None
    if selector is not None:
        labels = string_map(selector, "matchLabels")
        for key, value in labels.items():
            if "*" in key or "*" in value:
                selector.error("matchLabels", f"wildcards are not allowed in selectors ({key})")
        match_labels = frozenset(labels.items())
    refs: list[TargetRef] = []
    ref_keys = {"group", "kind", "name", "namespace"}
    single = spec.child("targetRef", what="targetRef", allowed=ref_keys)
    found = [single] if single is not None else []
    found.extend(spec.children("targetRefs", what="targetRef", allowed=ref_keys))
    for ref in found:
        group, kind, name = ref.text("group"), ref.text("kind", required=True), ref.text("name")
        if not name:
            ref.missing("name", "targetRef is missing 'name'")
        if kind and (group, kind) not in TARGET_REF_KINDS:
            ref.error("kind", f"targetRef to {group or 'core'}/{kind} is not supported")
        ref_namespace = ref.text("namespace")
        if ref_namespace and ref_namespace != namespace:
            ref.error("namespace", "cross-namespace targetRef is not allowed")
        refs.append(TargetRef(group, kind, name))
    if len(refs) > MAX_TARGET_REFS:
        spec.error("targetRefs", f"at most {MAX_TARGET_REFS} targetRefs are allowed")
    if refs and selector is not None:
        spec.error("selector", "only one of selector or targetRefs can be set")
    if single is not None and "targetRefs" in spec:
        spec.error("targetRef", "only one of targetRef or targetRefs can be set")
    return Attachment(namespace, match_labels, tuple(refs))
