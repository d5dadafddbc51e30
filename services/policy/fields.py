"""Typed, strict reading of one YAML mapping.

``Fields`` wraps a mapping from ``yamltext`` with its field path (``descriptors[0].rate_limit``)
and an ``ErrorSink``. Unknown keys, wrong types and missing required fields are
recorded as errors naming file, line and field; the reader then returns a default
so validation goes on and every problem is reported in one pass.
"""

from collections.abc import Collection, Iterator
from typing import Any

from services.policy.errors import ErrorSink
from services.policy.yamltext import LineList, LineMap

_MISSING: Any = object()


def describe(value: Any) -> str:
    """A short, human name for a YAML value's type, with the value itself."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int | float):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"a string ({value!r})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def join_path(parent: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{parent}[{key}]"
    return f"{parent}.{key}" if parent else key


class Fields:
    """The fields of one mapping, read with their types checked.

    ``allowed`` lists the keys this mapping may hold; any other key is an error
    (``None`` accepts any key, for documents read leniently).
    ``what`` names the mapping in messages ("descriptor", "rate_limit").
    """

    def __init__(
        self,
        node: Any,
        *,
        path: str,
        sink: ErrorSink,
        line: int,
        what: str,
        allowed: Collection[str] | None,
    ) -> None:
        self.path = path
        self.sink = sink
        self.what = what
        self.valid = isinstance(node, dict)
        self._map: LineMap | dict[Any, Any] = node if self.valid else {}
        self.line = getattr(node, "line", line)
        if not self.valid:
            sink.add(line, path, f"{what} must be a mapping, got {describe(node)}")
            return
        for key in self._map:
            if not isinstance(key, str):
                self.error(key, f"key is not a string: {key}")
            elif allowed is not None and key not in allowed:
                expected = ", ".join(sorted(allowed))
                self.error(key, f"unknown key '{key}' in {what} (expected one of: {expected})")

    def __contains__(self, key: str) -> bool:
        return key in self._map

    def is_empty(self) -> bool:
        """True for a mapping with no keys at all (``{}``)."""
        return not self._map

    def line_of(self, key: Any) -> int:
        if isinstance(self._map, LineMap):
            return self._map.line_of(key)
        return self.line

    def path_of(self, key: str | int) -> str:
        return join_path(self.path, key)

    def error(self, key: Any, message: str) -> None:
        self.sink.add(self.line_of(key), join_path(self.path, str(key)), message)

    def missing(self, key: str, message: str) -> None:
        """Report a problem with ``key`` that is absent: at this mapping's line."""
        self.sink.add(self.line, self.path_of(key), message)

    def raw(self, key: str, default: Any = None) -> Any:
        return self._map.get(key, default)

    def _typed(self, key: str, types: tuple[type, ...], name: str, required: bool) -> Any:
        value = self._map.get(key, _MISSING)
        if value is _MISSING or value is None:
            if required:
                self.missing(key, f"{self.what} is missing '{key}'")
            return _MISSING
        if isinstance(value, bool) and bool not in types:
            self.error(key, f"must be {name}, got {describe(value)}")
            return _MISSING
        if not isinstance(value, types):
            self.error(key, f"must be {name}, got {describe(value)}")
            return _MISSING
        return value

    def text(self, key: str, *, required: bool = False, default: str = "") -> str:
        value = self._typed(key, (str,), "a string", required)
        return default if value is _MISSING else str(value)

    def flag(self, key: str, *, default: bool = False) -> bool:
        value = self._typed(key, (bool,), "true or false", False)
        return default if value is _MISSING else bool(value)

    def integer(
        self,
        key: str,
        *,
        default: int = 0,
        required: bool = False,
        minimum: int | None = None,
        maximum: int | None = None,
    ) -> int:
        value = self._typed(key, (int,), "an integer", required)
        if value is _MISSING:
            return default
        if minimum is not None and value < minimum:
            self.error(key, f"must be at least {minimum}, got {value}")
            return default
        if maximum is not None and value > maximum:
            self.error(key, f"must be at most {maximum}, got {value}")
            return default
        return int(value)

    def mapping(self, key: str, *, required: bool = False) -> LineMap | None:
        value = self._typed(key, (dict,), "a mapping", required)
        return None if value is _MISSING else value

    def sequence(self, key: str, *, required: bool = False) -> LineList | None:
        value = self._typed(key, (list,), "a list", required)
        return None if value is _MISSING else value

    def strings(self, key: str) -> tuple[str, ...]:
        """A list of non-empty strings (absent: empty); other items are errors."""
        raw = self.sequence(key)
        if raw is None:
            return ()
        found = []
        for item in raw:
            if not isinstance(item, str) or not item:
                self.error(key, f"values must be non-empty strings, got {describe(item)}")
                continue
            found.append(item)
        return tuple(found)

    def child(self, key: str, *, what: str, allowed: Collection[str] | None) -> "Fields | None":
        """The fields of the sub-mapping at ``key``, or None if absent or not a mapping."""
        if self._map.get(key) is None:
            return None
        return Fields(
            self._map[key],
            path=self.path_of(key),
            sink=self.sink,
            line=self.line_of(key),
            what=what,
            allowed=allowed,
        )

    def children(
        self, key: str, *, what: str, allowed: Collection[str] | None
    ) -> Iterator["Fields"]:
        """The fields of each mapping in the list at ``key``; other items are errors."""
        items = self.sequence(key)
        if items is None:
            return
        for index, item in enumerate(items):
            line = items.line_of(index) if isinstance(items, LineList) else self.line_of(key)
            path = f"{self.path_of(key)}[{index}]"
            if not isinstance(item, dict):
                self.sink.add(line, path, f"{what} must be a mapping, got {describe(item)}")
                continue
            yield Fields(item, path=path, sink=self.sink, line=line, what=what, allowed=allowed)
