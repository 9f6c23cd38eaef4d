"""Policy durations: accepted spellings, rejected values and their messages."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.policy.durations import DurationError, format_duration, parse_duration

HINT = "use a positive whole number with a unit s, m, h or d (90s, 15m, 4h, 1d) or integer seconds"


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("90s", 90),
        ("15m", 900),
        ("4h", 14_400),
        ("1d", 86_400),
        ("3600", 3600),
        (" 2h ", 7200),
        (3600, 3600),
        ("3650d", 315_360_000),
    ],
)
def test_parse_duration_accepts(value: Any, seconds: int) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("1.5h", f"invalid duration '1.5h': {HINT}"),
        ("-5m", f"invalid duration '-5m': {HINT}"),
        ("0s", f"invalid duration '0s': must be positive; {HINT}"),
        (0, f"invalid duration 0: must be positive; {HINT}"),
        (-30, f"invalid duration -30: must be positive; {HINT}"),
        ("10w", f"invalid duration '10w': unknown unit 'w'; {HINT}"),
        ("1H", f"invalid duration '1H': unknown unit 'H'; {HINT}"),
        ("1 h", f"invalid duration '1 h': {HINT}"),
        ("", f"invalid duration '': {HINT}"),
        (1.5, f"invalid duration 1.5: {HINT}"),
        (True, f"invalid duration True: {HINT}"),
        (None, f"invalid duration None: {HINT}"),
        ("3651d", "invalid duration '3651d': must be at most 3650d"),
    ],
)
def test_parse_duration_rejects(value: Any, message: str) -> None:
    with pytest.raises(DurationError) as raised:
        parse_duration(value)

    assert str(raised.value) == message


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(7200, "2h"), (90, "90s"), (900, "15m"), (86_400, "1d"), (90_000, "25h"), (0, "0s")],
)
def test_format_duration(seconds: int, text: str) -> None:
    assert format_duration(seconds) == text
