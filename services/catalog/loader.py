"""Load a policy directory: read every YAML file, hand each document to its kind, link.

Nothing half-loaded ever escapes: ``load_directory`` either returns a complete
``PolicySet`` or raises ``PolicyLoadError`` listing every problem of every file.
Whatever a file holds, that is all it raises (besides ``PolicyDirectoryChangingError``,
for a directory caught mid-swap): a file that is not a regular one or is over the size
cap is refused unread (``files.read_policy_file``), YAML past the caps of
``yamltext`` is an error, and an unexpected exception while compiling a file, or while
linking the set, becomes an error naming that file (or the directory) too.

Documents are dispatched through a table built from the kinds each service
exports (``services.<service>.kinds.KINDS``); then each service links its own
kinds into its config, in the order their dependencies need: authz first (the
mesh settings gateways are built with), then xds (whose RateLimitPolicies derive
rate limit descriptors), then ratelimit.
"""

import contextlib
import gc
import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.authz import kinds as authz_kinds
from services.authz.config import AuthzConfig
from services.authz.mesh_config import MeshSettings
from services.catalog.bridge import listener_settings, quota_rules
from services.catalog.files import (
    DEFAULT_MAX_FILE_BYTES,
    PolicyFileRefusedError,
    policy_files,
    read_policy_file,
)
from services.policy.errors import ErrorSink, PolicyError, PolicyLoadError
from services.policy.kinds import ApiKind, Collected, Compiled, Kind
from services.policy.yamltext import YamlSyntaxError, parse_documents
from services.ratelimit import kinds as ratelimit_kinds
from services.ratelimit.config import ConfigDocument
from services.ratelimit.model import RateLimitConfig
from services.xds import kinds as xds_kinds
from services.xds.kinds import XdsConfig

KINDS: tuple[Kind[Any], ...] = (
    *authz_kinds.KINDS,
    *ratelimit_kinds.KINDS,
    *xds_kinds.KINDS,
)
_BY_API_KIND: Mapping[ApiKind, Kind[Any]] = {pair: kind for kind in KINDS for pair in kind.reads}
_SHAPED = tuple(kind for kind in KINDS if not kind.reads)  # read without apiVersion/kind
SUPPORTED = ", ".join(sorted({f"{kind} ({version})" for version, kind in _BY_API_KIND}))


@dataclass(frozen=True, slots=True)
class LoadOptions:
    """Settings that change how policies compile."""

    merge_domains: bool = False
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES  # larger policy files are refused unread


@dataclass(frozen=True, slots=True)
class PolicySet:
    """Everything compiled from one policy directory, named by its content hash."""

    digest: str
    files: tuple[str, ...] = ()
    ratelimit: RateLimitConfig = field(default_factory=RateLimitConfig)
    authz: AuthzConfig = field(default_factory=lambda: AuthzConfig(MeshSettings()))
    xds: XdsConfig = field(default_factory=XdsConfig)


def load_directory(directory: Path, options: LoadOptions) -> PolicySet:
    """Parse, validate and compile every policy file in ``directory``.

    Raises ``PolicyLoadError`` with all problems found (caused by the first unexpected
    exception, if one was met), or ``PolicyDirectoryChangingError`` if the directory
    changed mid-read.
    """
    with _cycle_collection_paused():
        return _load_directory(directory, options)


@contextlib.contextmanager
def _cycle_collection_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a directory loads.

    Loading allocates millions of objects that all survive (every YAML node, then the
    compiled set), and each full collection on the way walks the whole heap: measured
    (``loadtest/policy_load.py``), 7.5 s for 50,000 descriptors against 2.7 s without,
    and 32 s against 12 s for 200,000.
    What loading builds holds no cycles (recursive YAML aliases are refused), so nothing
    is lost by collecting once afterwards instead. A load runs for seconds at most; the
    rest of the process keeps reference counting meanwhile.
    """
    if not gc.isenabled():  # paused by someone else: leave it to them
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _load_directory(directory: Path, options: LoadOptions) -> PolicySet:
    if not directory.is_dir():
        raise PolicyLoadError(
            [PolicyError(str(directory), 0, "", "policy directory does not exist")]
        )
    digest = hashlib.sha256()
    sinks: list[ErrorSink] = []
    collected = _Collector(max_nodes=options.max_file_bytes)
    names: list[str] = []
    unexpected: BaseException | None = None  # the first bug met: the rejection's cause
    for path in policy_files(directory):
        relative = path.relative_to(directory).as_posix()
        sink = ErrorSink(str(path))
        sinks.append(sink)
        try:
            raw = read_policy_file(path, options.max_file_bytes)
        except PolicyFileRefusedError as exc:
            sink.add(1, "", f"policy file refused: it {exc}")
            continue
        digest.update(f"{len(relative)}:{relative}:{len(raw)}:".encode())
        digest.update(raw)
        names.append(relative)
        try:
            collected.read_file(raw, sink)
        except Exception as exc:  # a bug or a resource limit: this file's error, not a crash
            sink.add(1, "", f"could not be loaded: {_describe(exc)}")
            unexpected = unexpected or exc
    try:
        policy_set = link(digest.hexdigest()[:16], tuple(names), collected.documents, options)
    except Exception as exc:
        message = f"the policy set could not be linked: {_describe(exc)}"
        failed = PolicyError(str(directory), 0, "", message)
        raise PolicyLoadError([*(e for sink in sinks for e in sink.errors), failed]) from exc
    errors = [error for sink in sinks for error in sink.errors]
    if errors:
        raise PolicyLoadError(errors) from unexpected
    return policy_set


def _describe(exc: BaseException) -> str:
    """An unexpected exception in one line (the loader's caller logs the traceback)."""
    text = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def link(
    digest: str, files: tuple[str, ...], collected: Collected, options: LoadOptions
) -> PolicySet:
    """Each service's link step over its compiled documents; errors go to their sinks."""
    authz = authz_kinds.link(collected)
    xds = xds_kinds.link(collected, listener_settings(authz.mesh))
    derived = [ConfigDocument(d.value, d.line, d.sink) for d in xds.ratelimit_documents]
    ratelimit = ratelimit_kinds.link(collected, derived, merge_domains=options.merge_domains)
    quotas = quota_rules(xds.config)
    if quotas:
        authz = authz.with_quotas(quotas)
    return PolicySet(digest, files, ratelimit, authz, xds.config)


class _Collector:
    """Documents compiled by their kind as they are read, names checked unique per kind."""

    def __init__(self, max_nodes: int) -> None:
        self.documents = Collected()
        self._max_nodes = max_nodes  # YAML nodes per file, aliases expanded
        self._names: dict[tuple[str, str], str] = {}

    def read_file(self, raw: bytes, sink: ErrorSink) -> None:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            sink.add(1, "", f"file is not UTF-8 text: {exc.reason} at byte {exc.start}")
            return
        try:
            documents = parse_documents(text, max_nodes=self._max_nodes)
        except YamlSyntaxError as exc:
            sink.add(exc.line, "", f"error loading config file: invalid YAML: {exc.message}")
            return
        for document in documents:
            kind = self._kind_of(document.body, document.line, sink)
            if kind is None:
                continue
            value = kind.compile(document.body, document.line, sink)
            if value is not None and self._unique(kind, value, sink, document.line):
                self.documents.add(kind, Compiled(value, document.line, sink))

    def _kind_of(self, body: Any, line: int, sink: ErrorSink) -> Kind[Any] | None:
        if isinstance(body, dict):
            shaped = next((kind for kind in _SHAPED if kind.recognises(body)), None)
            if shaped is not None:
                return shaped
        if not isinstance(body, dict) or ("kind" not in body and "apiVersion" not in body):
            sink.add(
                line,
                "",
                "unrecognised document: expected a rate limit config "
                "(domain + descriptors) or a document with apiVersion and kind",
            )
            return None
        version, name = str(body.get("apiVersion") or ""), str(body.get("kind") or "")
        if not version or not name:
            missing = "apiVersion" if not version else "kind"
            sink.add(line, missing, f"document has no {missing} (mixerless reads: {SUPPORTED})")
            return None
        kind = _BY_API_KIND.get((version, name))
        if kind is None:
            sink.add(
                line,
                "kind",
                f"unsupported document kind {name!r} (apiVersion {version!r}); "
                f"mixerless reads: {SUPPORTED}",
            )
        return kind

    def _unique(self, kind: Kind[Any], value: Any, sink: ErrorSink, line: int) -> bool:
        identity = kind.identity(value)
        if identity is None:
            return True
        first = self._names.get((kind.name, identity))
        if first is not None:
            sink.add(line, "metadata.name", f"duplicate {kind.name} {identity} (first at {first})")
            return False
        self._names[(kind.name, identity)] = f"{sink.file}:{line}"
        return True
