"""YAML parsing that keeps the line of every mapping key and sequence item, for error messages.

PyYAML's safe loader drops the position of each value, so this module composes the node tree and
builds plain dicts and lists that also carry 1-based line numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml


class LineMapping(dict[Any, Any]):
    """A YAML mapping, with the line of the mapping itself and of each key."""

    line: int
    key_lines: dict[Any, int]

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.key_lines = {}

    def line_of(self, key: Any) -> int:
        """Return the line of `key`, or of the mapping when the key is absent."""
        return self.key_lines.get(key, self.line)


class LineSequence(list[Any]):
    """A YAML sequence, with the line of the sequence itself and of each item."""

    line: int
    item_lines: list[int]

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.item_lines = []

    def line_of(self, index: int) -> int:
        return self.item_lines[index] if 0 <= index < len(self.item_lines) else self.line


@dataclass
class YamlDocument:
    """One parsed YAML document and the duplicate keys found in it, as (line, message) pairs."""

    value: Any
    duplicate_keys: list[tuple[int, str]] = field(default_factory=list)


class YamlSyntaxError(ValueError):
    """Text that is not a single valid YAML document; `line` is 1-based."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


def parse_yaml(text: str) -> YamlDocument:
    """Parse one YAML document with the safe schema and record line numbers.

    Raises YamlSyntaxError for invalid YAML, more than one document or an empty stream.
    """
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            raise YamlSyntaxError(1, "file is empty")
        document = YamlDocument(value=None)
        document.value = _build(loader, root, document)
        return document
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise YamlSyntaxError(line, _describe(error)) from error
    except yaml.YAMLError as error:
        raise YamlSyntaxError(1, f"invalid YAML: {error}") from error
    finally:
        loader.dispose()


def _describe(error: yaml.MarkedYAMLError) -> str:
    if error.context == "expected a single document in the stream":
        return "a file must contain a single YAML document: remove the second '---'"
    problem = error.problem or str(error)
    context = f" ({error.context})" if error.context else ""
    return f"invalid YAML: {problem}{context}"


def _build(loader: yaml.SafeLoader, node: yaml.Node, document: YamlDocument) -> Any:
    if isinstance(node, yaml.MappingNode):
        return _build_mapping(loader, node, document)

    if isinstance(node, yaml.SequenceNode):
        sequence = LineSequence(node.start_mark.line + 1)
        for item in node.value:
            sequence.append(_build(loader, item, document))
            sequence.item_lines.append(item.start_mark.line + 1)
        return sequence

    return loader.construct_object(node, deep=True)


def _build_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, document: YamlDocument) -> LineMapping:
    merge_keys = sum(1 for key_node, _ in node.value if key_node.tag == "tag:yaml.org,2002:merge")
    own_count = len(node.value) - merge_keys

    # Resolves `<<: *anchor` merge keys the way the safe loader does: the merged pairs come first
    # in node.value, and the mapping's own keys override them.
    loader.flatten_mapping(node)
    merged_pairs = node.value[: len(node.value) - own_count]
    own_pairs = node.value[len(node.value) - own_count :]

    mapping = LineMapping(node.start_mark.line + 1)
    for key_node, value_node in own_pairs:
        _add_pair(loader, mapping, key_node, value_node, document, report_duplicates=True)
    for key_node, value_node in merged_pairs:
        _add_pair(loader, mapping, key_node, value_node, document, report_duplicates=False)
    return mapping


def _add_pair(
    loader: yaml.SafeLoader,
    mapping: LineMapping,
    key_node: yaml.Node,
    value_node: yaml.Node,
    document: YamlDocument,
    *,
    report_duplicates: bool,
) -> None:
    key = _build(loader, key_node, document)
    key_line = key_node.start_mark.line + 1
    if not _is_hashable(key):
        document.duplicate_keys.append((key_line, "a mapping key must be a plain value"))
        return

    if key in mapping:
        if report_duplicates:
            first = mapping.key_lines[key]
            document.duplicate_keys.append((key_line, f"duplicate key '{key}' (first at line {first})"))
        return

    mapping[key] = _build(loader, value_node, document)
    mapping.key_lines[key] = key_line


def _is_hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True
