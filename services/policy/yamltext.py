"""YAML documents that remember where each value came from.

PyYAML's safe loader, with mappings built as ``LineMap`` and sequences as
``LineList``: plain ``dict``/``list`` subclasses that also hold the line of the
node, of each key and of each item. Duplicate keys in one mapping are errors
(PyYAML would silently keep the last one).

Hostile text gets an error, never an exception of another kind, a hang or a huge
structure: a file holds at most ``MAX_DOCUMENTS`` documents and ``max_nodes`` nodes,
counting a node reached through an alias each time it is reached (so an "alias bomb"
that expands to billions is refused before anything walks it), nested at most
``MAX_DEPTH`` deep; an integer must fit in 64 bits (no policy field holds more, and
Python refuses to convert decimal literals over 4,300 digits). The loader passes its
per-file byte cap as ``max_nodes``: every node takes at least one byte of text, so no
file under the byte cap is refused for its nodes unless aliases multiply them.
"""

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, Final

import yaml

MAX_DOCUMENTS: Final = 10_000
DEFAULT_MAX_NODES: Final = 4 << 20
MAX_DEPTH: Final = 100
_INT_BOUND: Final = 1 << 64

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


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    line = node.start_mark.line + 1
    text = str(node.value)
    shown = text if len(text) <= 40 else f"{text[:20]}...({len(text)} characters)"
    try:
        value: int = yaml.constructor.SafeConstructor.construct_yaml_int(loader, node)
    except ValueError:  # a decimal literal past Python's 4,300-digit conversion limit
        value = _INT_BOUND
    if not -_INT_BOUND < value < _INT_BOUND:
        raise YamlSyntaxError(line, f"integer {shown} is out of range (64 bits at most)")
    return value


def _weigh(
    node: yaml.Node, depth: int, weights: dict[yaml.Node, int], open_: set[yaml.Node], cap: int
) -> int:
    """How many nodes ``node`` stands for, aliases expanded; raises past the caps.

    ``weights`` remembers each node already weighed (nodes compare by identity), so the
    walk visits each distinct node once, however many aliases reach it.
    """
    if depth > MAX_DEPTH:
        line = node.start_mark.line + 1
        raise YamlSyntaxError(line, f"nested more than {MAX_DEPTH} levels deep")
    if isinstance(node, yaml.ScalarNode):
        return 1
    known = weights.get(node)
    if known is not None:
        return known
    if node in open_:
        line = node.start_mark.line + 1
        raise YamlSyntaxError(line, "an alias refers to a node that contains it")
    open_.add(node)
    total = 1
    children: list[yaml.Node] = (
        [part for pair in node.value for part in pair]
        if isinstance(node, yaml.MappingNode)
        else list(node.value)
    )
    for child in children:
        total += _weigh(child, depth + 1, weights, open_, cap)
        if total > cap:
            line = node.start_mark.line + 1
            raise YamlSyntaxError(
                line, f"more than {cap:,} nodes, aliases counted where they are used"
            )
    open_.discard(node)
    weights[node] = total
    return total


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


@dataclass(frozen=True, slots=True)
class YamlDocument:
    """One document of a (possibly multi-document) YAML file."""

    index: int
    line: int
    body: Any


def parse_documents(text: str, *, max_nodes: int = DEFAULT_MAX_NODES) -> list[YamlDocument]:
    """Parse every document of ``text``; empty documents are dropped.

    Raises ``YamlSyntaxError`` naming the line of the first syntax problem, or of the
    first value past a cap.
    """
    loader = _Loader(text)
    documents: list[YamlDocument] = []
    nodes = 0
    try:
        index = 0
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            if index >= MAX_DOCUMENTS:
                line = node.start_mark.line + 1
                raise YamlSyntaxError(line, f"more than {MAX_DOCUMENTS:,} documents in one file")
            nodes += _weigh(node, 1, {}, set(), max_nodes)
            if nodes > max_nodes:
                line = node.start_mark.line + 1
                raise YamlSyntaxError(line, f"more than {max_nodes:,} nodes in one file")
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
