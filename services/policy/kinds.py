"""What a service tells the catalog about a kind of policy document it reads.

A service exports one ``Kind`` per document kind (``AuthorizationPolicy``,
``Gateway``, an envoyproxy/ratelimit config, ...) and one link step over the
``Compiled`` documents of its kinds. The catalog, which sits above every service,
dispatches each document to its kind through a table, then calls the link steps;
this toolkit module only names the shapes both sides agree on.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from services.policy.errors import ErrorSink

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

ApiKind = tuple[str, str]  # (apiVersion, kind), as a document declares it


class Kind(Protocol[T_co]):
    """Protocol: one kind of policy document.

    ``reads`` lists the ``apiVersion``/``kind`` pairs this kind reads; a kind with
    none reads documents that declare neither, recognised by ``recognises`` (an
    envoyproxy/ratelimit config: ``domain`` and ``descriptors``). ``compile``
    validates one document, reporting every problem to ``sink`` with its line and
    field, and returns the compiled value or None when there were errors.
    ``identity`` is the name two documents of the kind may not share (Kubernetes'
    ``namespace/name``), or None where sharing is allowed.
    """

    @property
    def name(self) -> str: ...

    @property
    def reads(self) -> frozenset[ApiKind]: ...

    def recognises(self, body: Mapping[str, Any]) -> bool: ...

    def compile(self, body: Any, line: int, sink: ErrorSink) -> T_co | None: ...

    def identity(self, value: Any) -> str | None: ...


@dataclass(frozen=True, slots=True)
class Compiled(Generic[T]):
    """A compiled document, with where it came from (for errors found when linking)."""

    value: T
    line: int
    sink: ErrorSink


@dataclass(frozen=True, slots=True)
class DocumentKind(Generic[T]):
    """A ``Kind`` made of its parts: the pairs it reads and the function that compiles it."""

    name: str
    reads: frozenset[ApiKind]
    compiler: Callable[[Any, int, ErrorSink], T | None]
    key: Callable[[T], str] | None = None
    recogniser: Callable[[Mapping[str, Any]], bool] | None = None

    def recognises(self, body: Mapping[str, Any]) -> bool:
        return self.recogniser is not None and self.recogniser(body)

    def compile(self, body: Any, line: int, sink: ErrorSink) -> T | None:
        return self.compiler(body, line, sink)

    def identity(self, value: Any) -> str | None:
        return self.key(value) if self.key is not None else None


@dataclass(slots=True)
class Collected:
    """The compiled documents of one policy set, by kind name, in file order."""

    documents: dict[str, list[Compiled[Any]]] = field(default_factory=dict)

    def add(self, kind: Kind[T], compiled: Compiled[T]) -> None:
        self.documents.setdefault(kind.name, []).append(compiled)

    def of(self, kind: Kind[T]) -> list[Compiled[T]]:
        """Every compiled document of ``kind`` (typed by the kind asked for)."""
        return self.documents.get(kind.name, [])
