"""Load a policy directory: read every YAML file, recognise its documents, compile.

Nothing half-loaded ever escapes: ``load_directory`` either returns a complete
``PolicySet`` or raises ``PolicyLoadError`` listing every problem of every file.

Files: ``*.yaml`` and ``*.yml`` anywhere below the directory, following symlinks
(Kubernetes ConfigMap mounts), skipping dotfiles and dot-directories (``..data``,
``.a.yaml.swp``) and editor leftovers (``#a.yaml#``, ``a.yaml~``).
"""

import hashlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.authz.authorization_policy import AuthorizationPolicy, compile_policy
from services.authz.config import AuthzConfig
from services.authz.mesh_config import MeshSettings, compile_istio_configmap, compile_mesh_config
from services.authz.request_authentication import (
    RequestAuthentication,
    compile_request_authentication,
)
from services.policy.errors import ErrorSink, PolicyError, PolicyLoadError
from services.policy.yamltext import YamlSyntaxError, parse_documents
from services.ratelimit.config import ConfigDocument, compile_config, is_ratelimit_document
from services.ratelimit.model import RateLimitConfig
from services.xds.build import Services, build_snapshot
from services.xds.gateway import Endpoint, Gateway, compile_gateway
from services.xds.ratelimit_policy import (
    RateLimitPolicy,
    compile_rate_limit_policy,
    descriptor_config,
)

# apiVersion/kind -> which compiler reads the document
KINDS: dict[tuple[str, str], str] = {
    ("security.istio.io/v1", "AuthorizationPolicy"): "AuthorizationPolicy",
    ("security.istio.io/v1beta1", "AuthorizationPolicy"): "AuthorizationPolicy",
    ("security.istio.io/v1", "RequestAuthentication"): "RequestAuthentication",
    ("security.istio.io/v1beta1", "RequestAuthentication"): "RequestAuthentication",
    ("mixerless.io/v1alpha1", "MeshConfig"): "MeshConfig",
    ("mixerless.io/v1alpha1", "Gateway"): "Gateway",
    ("mixerless.io/v1alpha1", "RateLimitPolicy"): "RateLimitPolicy",
    ("v1", "ConfigMap"): "ConfigMap",
}
PLACEHOLDER_SERVICES = Services(Endpoint("127.0.0.1", 9001), Endpoint("127.0.0.1", 8081))
SUPPORTED = ", ".join(sorted({f"{kind} ({version})" for version, kind in KINDS}))

POLICY_SUFFIXES = (".yaml", ".yml")


class PolicyDirectoryChangingError(Exception):
    """A file vanished while being read (an atomic swap in progress); try again shortly."""


@dataclass(frozen=True, slots=True)
class LoadOptions:
    """Settings that change how policies compile."""

    merge_domains: bool = False


@dataclass(frozen=True, slots=True)
class PolicySet:
    """Everything compiled from one policy directory, named by its content hash."""

    digest: str
    files: tuple[str, ...] = ()
    ratelimit: RateLimitConfig = field(default_factory=RateLimitConfig)
    authz: AuthzConfig = field(default_factory=lambda: AuthzConfig(MeshSettings()))
    gateways: tuple[Gateway, ...] = ()
    rate_limit_policies: tuple[RateLimitPolicy, ...] = ()

    def gateway_policies(self, gateway: str) -> tuple[RateLimitPolicy, ...]:
        return tuple(p for p in self.rate_limit_policies if p.gateway == gateway)


def is_policy_file(name: str) -> bool:
    """True for YAML files that are not hidden or editor leftovers (``#a.yaml#``, ``a.yaml~``)."""
    return name.endswith(POLICY_SUFFIXES) and not name.startswith((".", "#"))


def policy_files(directory: Path) -> Iterator[Path]:
    """Every policy file below ``directory``, in a stable order; symlink loops are cut."""
    seen: set[str] = set()
    for root, dirs, files in os.walk(directory, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if is_policy_file(name):
                yield Path(root, name)


def load_directory(directory: Path, options: LoadOptions) -> PolicySet:
    """Parse, validate and compile every policy file in ``directory``.

    Raises ``PolicyLoadError`` with all problems found, or
    ``PolicyDirectoryChangingError`` if the directory changed mid-read.
    """
    if not directory.is_dir():
        raise PolicyLoadError(
            [PolicyError(str(directory), 0, "", "policy directory does not exist")]
        )
    digest = hashlib.sha256()
    sinks: list[ErrorSink] = []
    ratelimit_documents: list[ConfigDocument] = []
    kinds = _KindDocuments()
    names: list[str] = []
    for path in policy_files(directory):
        relative = path.relative_to(directory).as_posix()
        try:
            raw = path.read_bytes()
        except FileNotFoundError as exc:
            raise PolicyDirectoryChangingError(str(path)) from exc
        digest.update(f"{len(relative)}:{relative}:{len(raw)}:".encode())
        digest.update(raw)
        names.append(relative)
        sink = ErrorSink(str(path))
        sinks.append(sink)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            sink.add(1, "", f"file is not UTF-8 text: {exc.reason} at byte {exc.start}")
            continue
        try:
            documents = parse_documents(text)
        except YamlSyntaxError as exc:
            sink.add(exc.line, "", f"error loading config file: invalid YAML: {exc.message}")
            continue
        for document in documents:
            body = document.body
            if is_ratelimit_document(body):
                ratelimit_documents.append(ConfigDocument(body, document.line, sink))
            elif isinstance(body, dict) and ("kind" in body or "apiVersion" in body):
                kinds.add(body, document.line, sink)
            else:
                sink.add(
                    document.line,
                    "",
                    "unrecognised document: expected a rate limit config "
                    "(domain + descriptors) or a document with apiVersion and kind",
                )
    ratelimit_documents.extend(kinds.link_gateways())
    ratelimit = compile_config(ratelimit_documents, merge_domains=options.merge_domains)
    kinds.check_gateway_builds()
    errors = [error for sink in sinks for error in sink.errors]
    if errors:
        raise PolicyLoadError(errors)
    return PolicySet(
        digest.hexdigest()[:16],
        tuple(names),
        ratelimit,
        kinds.config(),
        tuple(gateway for gateway, _ in kinds.gateways),
        tuple(policy for policy, _ in kinds.rate_limit_policies),
    )


class _KindDocuments:
    """Documents with apiVersion/kind, compiled as they are read; cross-document checks last."""

    def __init__(self) -> None:
        self.policies: list[AuthorizationPolicy] = []
        self.authentications: list[RequestAuthentication] = []
        self.meshes: list[MeshSettings] = []
        self.gateways: list[tuple[Gateway, ErrorSink]] = []
        self.rate_limit_policies: list[tuple[RateLimitPolicy, ErrorSink]] = []
        self._names: dict[tuple[str, str], str] = {}

    def add(self, body: Mapping[str, Any], line: int, sink: ErrorSink) -> None:
        version, kind = str(body.get("apiVersion") or ""), str(body.get("kind") or "")
        reader = KINDS.get((version, kind))
        if not version or not kind:
            missing = "apiVersion" if not version else "kind"
            sink.add(line, missing, f"document has no {missing} (mixerless reads: {SUPPORTED})")
            return
        if reader is None:
            sink.add(
                line,
                "kind",
                f"unsupported document kind {kind!r} (apiVersion {version!r}); "
                f"mixerless reads: {SUPPORTED}",
            )
            return
        if reader == "AuthorizationPolicy":
            policy = compile_policy(body, line, sink)
            if policy is not None and self._unique(kind, policy.key, sink, line):
                self.policies.append(policy)
        elif reader == "RequestAuthentication":
            authn = compile_request_authentication(body, line, sink)
            if authn is not None and self._unique(kind, authn.meta.key, sink, line):
                self.authentications.append(authn)
        elif reader == "Gateway":
            compiled = compile_gateway(body, line, sink)
            if compiled is not None and self._unique(kind, compiled.name, sink, line):
                self.gateways.append((compiled, sink))
        elif reader == "RateLimitPolicy":
            quota = compile_rate_limit_policy(body, line, sink)
            if quota is not None and self._unique(kind, quota.key, sink, line):
                self.rate_limit_policies.append((quota, sink))
        else:
            compile_mesh = compile_mesh_config if reader == "MeshConfig" else _istio_configmap
            mesh = compile_mesh(body, line, sink)
            if mesh is not None:
                if self.meshes:
                    sink.add(line, "kind", f"a second mesh config (first: {self.meshes[0].source})")
                else:
                    self.meshes.append(mesh)

    def _unique(self, kind: str, key: str, sink: ErrorSink, line: int) -> bool:
        first = self._names.get((kind, key))
        if first is not None:
            sink.add(line, "metadata.name", f"duplicate {kind} {key} (first at {first})")
            return False
        self._names[(kind, key)] = f"{sink.file}:{line}"
        return True

    def link_gateways(self) -> list[ConfigDocument]:
        """Check what gateways and rate limit policies name; derive each gateway's domain."""
        by_name = {gateway.name: gateway for gateway, _ in self.gateways}
        nodes: dict[str, str] = {}
        for known_gateway, sink in self.gateways:
            for node in known_gateway.nodes:
                if node in nodes:
                    message = f"node '{node}' also serves {nodes[node]}"
                    sink.add(known_gateway.line, "spec.nodes", message)
                nodes[node] = known_gateway.name
        derived: dict[str, list[dict[str, Any]]] = {}
        for quota, sink in self.rate_limit_policies:
            gateway = by_name.get(quota.gateway)
            if gateway is None:
                sink.add(quota.line, "spec.targetRef.name", f"no Gateway named '{quota.gateway}'")
                continue
            known = {route.name for route in gateway.routes}
            for route in quota.routes:
                if route not in known:
                    sink.add(
                        quota.line, "spec.routes", f"Gateway {gateway.name} has no route '{route}'"
                    )
            derived.setdefault(gateway.name, []).append(descriptor_config(quota))
        documents = []
        for gateway, sink in self.gateways:
            if gateway.name in derived:
                body = {"domain": gateway.domain, "descriptors": derived[gateway.name]}
                documents.append(ConfigDocument(body, gateway.line, sink))
        return documents

    def check_gateway_builds(self) -> None:
        """Build every gateway's Envoy resources once, so a set whose gateway config
        cannot be built is rejected whole (the real build, at publish, differs only in
        the addresses of mixerless itself)."""
        if any(sink for _, sink in self.gateways) or any(
            sink for _, sink in self.rate_limit_policies
        ):
            return  # already rejected; the build would only repeat the errors
        mesh = self.config().mesh
        for gateway, sink in self.gateways:
            policies = [p for p, _ in self.rate_limit_policies if p.gateway == gateway.name]
            try:
                build_snapshot(gateway, policies, mesh, PLACEHOLDER_SERVICES)
            except ValueError as exc:
                sink.add(gateway.line, "spec", f"Envoy configuration cannot be built: {exc}")

    def config(self) -> AuthzConfig:
        mesh = self.meshes[0] if self.meshes else MeshSettings()
        return AuthzConfig(mesh, self.policies, self.authentications)


def _istio_configmap(body: Any, line: int, sink: ErrorSink) -> MeshSettings | None:
    """Only Istio's own ``istio`` ConfigMap is read; other ConfigMaps are an error."""
    metadata = body.get("metadata") or {}
    if not isinstance(metadata, dict) or metadata.get("name") != "istio":
        sink.add(line, "metadata.name", "the only ConfigMap mixerless reads is Istio's 'istio'")
        return None
    return compile_istio_configmap(body, line, sink)
