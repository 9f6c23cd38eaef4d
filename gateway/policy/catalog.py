"""The `catalog` section: content attributes by playback id."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from gateway.policy.fields import (
    FileContext,
    check_keys,
    check_mapping,
    check_sequence,
    describe_type,
    require_key,
    string_list,
)
from gateway.tokens.mux import PLAYBACK_ID_PATTERN

CATALOG_ENTRY_KEYS = ("playback_ids", "attributes")

# Attribute names become fields of `content` in conditions, so they must be CEL identifiers.
_ATTRIBUTE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass
class CatalogBuilder:
    """Collect catalog entries from every file, checking that no playback id appears twice."""

    attributes_by_id: dict[str, dict[str, Any]] = field(default_factory=dict)
    first_seen: dict[str, str] = field(default_factory=dict)
    list_attributes: set[str] = field(default_factory=set)
    attribute_names: set[str] = field(default_factory=set)

    def add_section(self, value: Any, line: int, ctx: FileContext) -> None:
        """Add one file's `catalog` list."""
        ctx = ctx.for_rule("catalog")
        entries = check_sequence(value, "catalog", line, ctx)
        if entries is None:
            return
        for index, entry in enumerate(entries):
            self._add_entry(entry, entries.line_of(index), ctx)

    def attribute_defaults(self) -> dict[str, Any]:
        """Return the value of each attribute for content that does not set it.

        An attribute that is a list in any catalog entry defaults to an empty list, so that
        `x in content.attr` is false instead of failing. Every other attribute defaults to null.
        """
        return {
            name: [] if name in self.list_attributes else None for name in sorted(self.attribute_names)
        }

    def complete_catalog(self) -> dict[str, dict[str, Any]]:
        """Return every entry's attributes with the defaults filled in."""
        defaults = self.attribute_defaults()
        return {pid: {**defaults, **attributes} for pid, attributes in self.attributes_by_id.items()}

    def _add_entry(self, value: Any, line: int, ctx: FileContext) -> None:
        entry = check_mapping(value, "a catalog entry", line, ctx)
        if entry is None:
            return
        check_keys(entry, CATALOG_ENTRY_KEYS, "a catalog entry", ctx)

        attributes: dict[str, Any] = {}
        if "attributes" in entry:
            attributes = self._attributes(entry["attributes"], entry.line_of("attributes"), ctx)

        if not require_key(entry, "playback_ids", "a catalog entry", ctx):
            return
        ids = string_list(entry["playback_ids"], "playback_ids", entry.line_of("playback_ids"), ctx)
        if ids is None:
            return
        if not ids and not entry["playback_ids"]:
            ctx.add(entry.line_of("playback_ids"), "playback_ids must list at least one playback id")

        for playback_id, id_line in ids:
            self._add_playback_id(playback_id, id_line, attributes, ctx)

    def _add_playback_id(
        self, playback_id: str, line: int, attributes: dict[str, Any], ctx: FileContext
    ) -> None:
        if not PLAYBACK_ID_PATTERN.match(playback_id):
            ctx.add(line, f"invalid playback id '{playback_id}': use 1 to 128 letters and digits")
            return

        where = f"{ctx.file}:{line}"
        if playback_id in self.first_seen:
            first = self.first_seen[playback_id]
            ctx.add(line, f"playback id '{playback_id}' is already in the catalog at {first}")
            return
        self.first_seen[playback_id] = where
        self.attributes_by_id[playback_id] = attributes

    def _attributes(self, value: Any, line: int, ctx: FileContext) -> dict[str, Any]:
        mapping = check_mapping(value, "attributes", line, ctx)
        if mapping is None:
            return {}

        attributes: dict[str, Any] = {}
        for name, raw in mapping.items():
            name_line = mapping.line_of(name)
            if not isinstance(name, str) or not _ATTRIBUTE_NAME.match(name):
                message = f"invalid attribute name '{name}': use letters, digits and '_', not starting with a digit"
                ctx.add(name_line, message)
                continue
            if name == "playback_id":
                message = "attribute 'playback_id' is reserved: content.playback_id is always the requested id"
                ctx.add(name_line, message)
                continue

            converted = _attribute_value(name, raw, name_line, ctx)
            if converted is _INVALID:
                continue
            attributes[name] = converted
            self.attribute_names.add(name)
            if isinstance(converted, list):
                self.list_attributes.add(name)
        return attributes


_INVALID = object()


def _attribute_value(name: str, value: Any, line: int, ctx: FileContext) -> Any:
    if isinstance(value, list):
        items = [_scalar(f"attribute '{name}' item", item, line, ctx) for item in value]
        return _INVALID if any(item is _INVALID for item in items) else items
    return _scalar(f"attribute '{name}'", value, line, ctx)


def _scalar(where: str, value: Any, line: int, ctx: FileContext) -> Any:
    if value is None or isinstance(value, str | bool | int | float):
        return value

    if isinstance(value, datetime):
        # YAML timestamps without an offset are UTC by the YAML spec. PyYAML leaves them naive.
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)

    if isinstance(value, date):
        example = f"{value.isoformat()}T00:00:00Z"
        ctx.add(line, f"{where} is a date, which conditions cannot compare; write a timestamp such as "
                f"{example}, or quote it to keep a string")
        return _INVALID

    ctx.add(line, f"{where} must be a string, number, boolean, null or timestamp, not {describe_type(value)}")
    return _INVALID

