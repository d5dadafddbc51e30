"""Load a policy directory: read every YAML file, recognise its documents, compile.

Nothing half-loaded ever escapes: ``load_directory`` either returns a complete
``PolicySet`` or raises ``PolicyLoadError`` listing every problem of every file.

Files: ``*.yaml`` and ``*.yml`` anywhere below the directory, following symlinks
(Kubernetes ConfigMap mounts), skipping dotfiles and dot-directories (``..data``,
``.a.yaml.swp``) and editor leftovers (``#a.yaml#``, ``a.yaml~``).
"""

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from services.policy.errors import ErrorSink, PolicyError, PolicyLoadError
from services.policy.yamltext import YamlSyntaxError, parse_documents
from services.ratelimit.config import ConfigDocument, compile_config, is_ratelimit_document
from services.ratelimit.model import RateLimitConfig

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
                kind = body.get("kind")
                version = body.get("apiVersion")
                sink.add(
                    document.line,
                    "kind",
                    f"unsupported document kind {kind!r} (apiVersion {version!r})",
                )
            else:
                sink.add(
                    document.line,
                    "",
                    "unrecognised document: expected a rate limit config "
                    "(domain + descriptors) or a document with apiVersion and kind",
                )
    ratelimit = compile_config(ratelimit_documents, merge_domains=options.merge_domains)
    errors = [error for sink in sinks for error in sink.errors]
    if errors:
        raise PolicyLoadError(errors)
    return PolicySet(digest.hexdigest()[:16], tuple(names), ratelimit)
