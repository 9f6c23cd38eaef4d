"""YAML parsing with line numbers: key and item lines, merge keys, duplicates, syntax errors."""

from __future__ import annotations

import pytest

from gateway.policy.yamlsource import YamlSyntaxError, parse_yaml


def test_lines_of_keys_and_items() -> None:
    document = parse_yaml("a: 1\nlist:\n  - x\n  - [y,\n     z]\nmap: {k: v}\n")

    assert document.value == {"a": 1, "list": ["x", ["y", "z"]], "map": {"k": "v"}}
    assert document.value.key_lines == {"a": 1, "list": 2, "map": 6}
    assert document.value["list"].item_lines == [3, 4]
    assert document.value["list"][1].item_lines == [4, 5]
    assert document.value.line_of("missing") == 1
    assert document.duplicate_keys == []


def test_merge_key_override_is_not_duplicate() -> None:
    document = parse_yaml("base: &b\n  x: 1\n  y: 2\nother:\n  <<: *b\n  y: 3\n  y: 4\n")

    assert document.value["other"] == {"x": 1, "y": 3}
    assert document.duplicate_keys == [(7, "duplicate key 'y' (first at line 6)")]


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("", 1, "file is empty"),
        (
            "a: [1,\n",
            2,
            "invalid YAML: expected the node content, but found '<stream end>' (while parsing a flow node)",
        ),
        ("a: 1\n---\nb: 2\n", 2, "a file must contain a single YAML document: remove the second '---'"),
        ("a: b: c\n", 1, "invalid YAML: mapping values are not allowed here"),
    ],
)
def test_syntax_errors_carry_line(text: str, line: int, message: str) -> None:
    with pytest.raises(YamlSyntaxError) as raised:
        parse_yaml(text)

    assert raised.value.line == line
    assert raised.value.message == message
