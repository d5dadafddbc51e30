"""The mesh-wide settings authz needs: a ``MeshConfig`` document, or Istio's ``istio`` ConfigMap.

``MeshConfig`` (``apiVersion: mixerless.io/v1alpha1``) holds, under ``spec``, a subset
of Istio's meshConfig with the same field names, read strictly:
``rootNamespace``, ``extensionProviders`` (``envoyExtAuthzGrpc`` / ``envoyExtAuthzHttp``),
``pathNormalization.normalization`` and
``defaultConfig.gatewayTopology.numTrustedProxies``.

Istio's own ``istio`` ConfigMap (its ``data.mesh`` text) is read leniently: it holds
much more of meshConfig than authz uses, and all of that is ignored, as are
extension providers of other kinds (tracing, access logs).
"""

from dataclasses import dataclass, field
from typing import Any

from services.authz.paths import PathNormalization
from services.authz.providers.config import Provider, parse_provider
from services.policy.errors import ErrorSink
from services.policy.fields import Fields
from services.policy.k8s import CONFIGMAP_KEYS, read_object, read_spec
from services.policy.yamltext import YamlSyntaxError, parse_documents

AUTHZ_PROVIDER_KINDS = ("envoyExtAuthzGrpc", "envoyExtAuthzHttp")
MESH_KEYS = frozenset({"rootNamespace", "extensionProviders", "pathNormalization", "defaultConfig"})


@dataclass(frozen=True, slots=True)
class MeshSettings:
    """What authz takes from meshConfig, with Istio's defaults."""

    root_namespace: str = "istio-system"
    providers: dict[str, Provider] = field(default_factory=dict)
    path_normalization: PathNormalization = PathNormalization.BASE
    num_trusted_proxies: int = 0
    source: str = "defaults"


def _read_mesh(mesh: Fields, *, strict: bool, source: str) -> MeshSettings:
    root = mesh.text("rootNamespace") or "istio-system"
    providers: dict[str, Provider] = {}
    entry_keys = {"name", *AUTHZ_PROVIDER_KINDS}
    for entry in mesh.children(
        "extensionProviders", what="extension provider", allowed=entry_keys if strict else None
    ):
        if not strict and not any(kind in entry for kind in AUTHZ_PROVIDER_KINDS):
            continue  # a tracing or logging provider: not ours
        provider = parse_provider(entry)
        if provider is None:
            continue
        if provider.name in providers:
            entry.error("name", f"duplicate extension provider '{provider.name}'")
            continue
        providers[provider.name] = provider
    normalization = PathNormalization.BASE
    path = mesh.child(
        "pathNormalization", what="pathNormalization", allowed={"normalization"} if strict else None
    )
    if path is not None and "normalization" in path:
        text = path.text("normalization")
        parsed = PathNormalization.parse(text)
        if parsed is None:
            path.error(
                "normalization",
                f"unknown normalization '{text}' "
                "(NONE, BASE, MERGE_SLASHES or DECODE_AND_MERGE_SLASHES)",
            )
        else:
            normalization = parsed
    hops = 0
    default_config = mesh.child(
        "defaultConfig", what="defaultConfig", allowed={"gatewayTopology"} if strict else None
    )
    if default_config is not None:
        topology = default_config.child(
            "gatewayTopology",
            what="gatewayTopology",
            allowed={"numTrustedProxies", "forwardClientCertDetails", "proxyProtocol"}
            if strict
            else None,
        )
        if topology is not None:
            hops = topology.integer("numTrustedProxies", minimum=0, maximum=64)
    return MeshSettings(root, providers, normalization, hops, source)


def compile_mesh_config(body: Any, line: int, sink: ErrorSink) -> MeshSettings | None:
    """A ``mixerless.io/v1alpha1`` ``MeshConfig`` document."""
    errors_before = len(sink.errors)
    top, _, spec = read_spec(body, line, sink, "MeshConfig", MESH_KEYS)
    assert spec is not None
    settings = _read_mesh(spec, strict=True, source=f"{sink.file}:{top.line}")
    return settings if len(sink.errors) == errors_before else None


def compile_istio_configmap(body: Any, line: int, sink: ErrorSink) -> MeshSettings | None:
    """Istio's ``istio`` ConfigMap: the YAML text under ``data.mesh``."""
    errors_before = len(sink.errors)
    top, _ = read_object(body, line, sink, "ConfigMap", CONFIGMAP_KEYS)
    data = top.mapping("data")
    if data is None or not isinstance(data.get("mesh"), str):
        top.missing("data", "the istio ConfigMap must have data.mesh (meshConfig as YAML text)")
        return None
    # The block scalar starts on the line after `mesh: |`.
    offset = data.line_of("mesh") if hasattr(data, "line_of") else line
    try:
        documents = parse_documents(data["mesh"])
    except YamlSyntaxError as exc:
        sink.add(offset + exc.line, "data.mesh", f"invalid YAML: {exc.message}")
        return None
    mesh_body = documents[0].body if documents else {}
    shifted = ErrorSink(sink.file)
    mesh = Fields(
        mesh_body, path="data.mesh", sink=shifted, line=1, what="meshConfig", allowed=None
    )
    settings = _read_mesh(mesh, strict=False, source=f"{sink.file}:{top.line}")
    for error in shifted.errors:
        sink.add(error.line + offset, error.field, error.message)
    return settings if len(sink.errors) == errors_before else None
