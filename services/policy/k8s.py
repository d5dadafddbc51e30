"""Kubernetes-style documents: ``apiVersion``/``kind``/``metadata``/``spec``.

Objects copied from ``kubectl get -o yaml`` carry fields the server fills in
(``uid``, ``resourceVersion``, ``status``...). They are accepted and ignored;
anything else unknown is an error.
"""

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from services.policy.errors import ErrorSink
from services.policy.fields import Fields

TOP_KEYS = frozenset({"apiVersion", "kind", "metadata", "spec", "status"})
METADATA_KEYS = frozenset(
    {
        "name",
        "namespace",
        "labels",
        "annotations",
        # filled in by the API server; harmless in copied objects
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "managedFields",
        "selfLink",
        "finalizers",
        "ownerReferences",
        "generateName",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
    }
)
DEFAULT_NAMESPACE = "default"


@dataclass(frozen=True, slots=True)
class ObjectMeta:
    """The parts of ``metadata`` policies use."""

    name: str
    namespace: str
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def api_group(api_version: Any) -> str:
    """``security.istio.io`` for ``security.istio.io/v1``; ``""`` for core ``v1``."""
    text = str(api_version or "")
    return text.rsplit("/", 1)[0] if "/" in text else ""


CONFIGMAP_KEYS = frozenset({"apiVersion", "kind", "metadata", "data", "binaryData", "immutable"})


def read_object(
    body: Any, line: int, sink: ErrorSink, what: str, top_keys: frozenset[str] = TOP_KEYS
) -> tuple[Fields, ObjectMeta]:
    """The top-level fields and metadata of a Kubernetes-style document."""
    top = Fields(body, path="", sink=sink, line=line, what=what, allowed=top_keys)
    meta = top.child("metadata", what="metadata", allowed=METADATA_KEYS)
    name = namespace = ""
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    if meta is None:
        top.missing("metadata", f"{what} is missing 'metadata' (name and namespace)")
    else:
        name = meta.text("name", required=True)
        namespace = meta.text("namespace") or DEFAULT_NAMESPACE
        labels = string_map(meta, "labels")
        annotations = string_map(meta, "annotations")
    return top, ObjectMeta(name, namespace, labels, annotations)


def read_spec(
    body: Any,
    line: int,
    sink: ErrorSink,
    kind: str,
    allowed: Collection[str],
    *,
    required: str = "",
) -> tuple[Fields, ObjectMeta, Fields | None]:
    """The top-level fields, metadata and ``spec`` of a document of ``kind``.

    An absent ``spec`` reads as an empty one, unless ``required`` is set: then it is
    reported with that message and ``spec`` is None.
    """
    top, meta = read_object(body, line, sink, kind)
    spec = top.child("spec", what=f"{kind} spec", allowed=allowed)
    if spec is None:
        if required:
            top.missing("spec", required)
            return top, meta, None
        spec = Fields({}, path="spec", sink=sink, line=top.line, what="spec", allowed=())
    return top, meta, spec


def string_map(fields: Fields, key: str) -> dict[str, str]:
    """A mapping of strings to strings (labels, annotations, matchLabels)."""
    raw = fields.mapping(key)
    if raw is None:
        return {}
    result: dict[str, str] = {}
    for name, value in raw.items():
        if not isinstance(name, str) or not isinstance(value, str | int | float | bool):
            fields.error(key, f"'{name}' must map a string to a string, got {value!r}")
            continue
        result[name] = str(value).lower() if isinstance(value, bool) else str(value)
    return result
