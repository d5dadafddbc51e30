"""YAML documents that remember where each value came from.

PyYAML's safe loader, with mappings built as ``LineMap`` and sequences as
``LineList``: plain ``dict``/``list`` subclasses that also hold the line of the
node, of each key and of each item. Duplicate keys in one mapping are errors
(PyYAML would silently keep the last one).
"""

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import yaml

_BaseLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class LineMap(dict[Any, Any]):
    """A mapping with ``line`` (where it starts) and ``key_lines`` (where each key is)."""

    line: int
    key_lines: dict[Any, int]

    def line_of(self, key: Any) -> int:
        return self.key_lines.get(key, self.line)


class LineList(list[Any]):
    """A sequence with ``line`` (where it starts) and ``item_lines``."""

    line: int
    item_lines: list[int]

    def line_of(self, index: int) -> int:
        if 0 <= index < len(self.item_lines):
            return self.item_lines[index]
        return self.line


class YamlSyntaxError(Exception):
    """The text is not valid YAML; ``line`` is 1-based."""

    def __init__(self, line: int, message: str) -> None:
        self.line = line
        self.message = message
        super().__init__(f"line {line}: {message}")


class _Loader(_BaseLoader):  # type: ignore[misc, valid-type]
    pass


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> LineMap:
    loader.flatten_mapping(node)
    result = LineMap()
    result.line = node.start_mark.line + 1
    result.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        key_line = key_node.start_mark.line + 1
        if not isinstance(key, Hashable):
            raise YamlSyntaxError(key_line, "a mapping key must be a scalar")
        if key in result.key_lines:
            raise YamlSyntaxError(key_line, f"duplicate key {key!r} in one mapping")
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = key_line
    return result


def _construct_sequence(loader: yaml.SafeLoader, node: yaml.SequenceNode) -> LineList:
    result = LineList(loader.construct_object(child, deep=True) for child in node.value)
    result.line = node.start_mark.line + 1
    result.item_lines = [child.start_mark.line + 1 for child in node.value]
    return result


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


@dataclass(frozen=True, slots=True)
class YamlDocument:
    """One document of a (possibly multi-document) YAML file."""

    index: int
    line: int
    body: Any


def parse_documents(text: str) -> list[YamlDocument]:
    """Parse every document of ``text``; empty documents are dropped.

    Raises ``YamlSyntaxError`` naming the line of the first syntax problem.
    """
    loader = _Loader(text)
    documents: list[YamlDocument] = []
    try:
        index = 0
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            body = loader.construct_document(node)
            if body is not None:
                documents.append(YamlDocument(index, node.start_mark.line + 1, body))
            index += 1
    except YamlSyntaxError:
        raise
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise YamlSyntaxError(line, " ".join(filter(None, [exc.context, exc.problem]))) from None
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(1, str(exc)) from None
    finally:
        loader.dispose()
    return documents
