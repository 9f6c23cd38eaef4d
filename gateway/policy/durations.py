"""Durations in policy files: `90s`, `15m`, `4h`, `1d` or integer seconds."""

from __future__ import annotations

import re
from typing import Any

_UNIT_SECONDS: dict[str, int] = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
_DURATION_PATTERN = re.compile(r"^(?P<amount>[0-9]+)(?P<unit>[a-zA-Z]*)$")

# Ten years. This bound only keeps later date arithmetic (now + ttl) far from overflow. It is not
# a recommendation, because real token lifetimes are hours or days.
MAX_DURATION_SECONDS = 10 * 365 * 86_400

_FORMAT_HINT = "use a positive whole number with a unit s, m, h or d (90s, 15m, 4h, 1d) or integer seconds"


class DurationError(ValueError):
    """A duration that is not a positive whole number of seconds, minutes, hours or days."""


def parse_duration(value: Any) -> int:
    """Convert a policy duration to whole seconds.

    Accepts an integer (seconds) or a string of digits with an optional unit s, m, h or d.
    Raises DurationError for zero, negative, fractional or unknown-unit values.
    """
    if isinstance(value, bool):
        raise DurationError(f"invalid duration {value!r}: {_FORMAT_HINT}")

    if isinstance(value, int):
        return _checked_seconds(value, value)

    if not isinstance(value, str):
        raise DurationError(f"invalid duration {value!r}: {_FORMAT_HINT}")

    match = _DURATION_PATTERN.match(value.strip())
    if match is None:
        raise DurationError(f"invalid duration {value!r}: {_FORMAT_HINT}")

    unit = match["unit"] or "s"
    if unit not in _UNIT_SECONDS:
        raise DurationError(f"invalid duration {value!r}: unknown unit {unit!r}; {_FORMAT_HINT}")
    return _checked_seconds(int(match["amount"]) * _UNIT_SECONDS[unit], value)


def _checked_seconds(seconds: int, original: Any) -> int:
    if seconds <= 0:
        raise DurationError(f"invalid duration {original!r}: must be positive; {_FORMAT_HINT}")
    if seconds > MAX_DURATION_SECONDS:
        raise DurationError(f"invalid duration {original!r}: must be at most 3650d")
    return seconds


def format_duration(seconds: int) -> str:
    """Render seconds in the largest unit that divides them exactly: 7200 -> `2h`, 90 -> `90s`."""
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
