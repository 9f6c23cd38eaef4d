"""Mux's token vocabulary: audiences, their `aud` codes, URL shapes and modifier claims.

Everything here follows Mux's signed-playback documentation and its OpenAPI spec
(docs "Secure video playback", "Signing JWTs", "Control playback resolution",
and the image, storyboard and animated-image API references).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

# Audience names in the gateway's API, mapped to the one-letter `aud` values Mux checks.
AUDIENCE_CODES: dict[str, str] = {
    "video": "v",
    "thumbnail": "t",
    "storyboard": "s",
    "gif": "g",
    "drm_license": "d",
}
AUDIENCES: tuple[str, ...] = tuple(AUDIENCE_CODES)
AUDIENCE_BY_CODE: dict[str, str] = {code: name for name, code in AUDIENCE_CODES.items()}

# Audiences granted when a request names none: the three that Mux Player uses.
DEFAULT_AUDIENCES: tuple[str, ...] = ("video", "thumbnail", "storyboard")

# Claims the gateway sets itself. A request or a policy that tries to set one is rejected.
RESERVED_CLAIMS: frozenset[str] = frozenset({"sub", "aud", "exp", "kid", "iat", "nbf"})

RESOLUTIONS: tuple[str, ...] = (
    "270p", "360p", "480p", "540p", "720p", "1080p", "1440p", "2160p",
)
FIT_MODES: tuple[str, ...] = ("preserve", "stretch", "crop", "smartcrop", "pad")

# A playback ID is alphanumeric. Real ones are 20 to 64 characters long; the bounds
# here are looser so that test fixtures and future formats still pass.
PLAYBACK_ID_PATTERN = re.compile(r"^[A-Za-z0-9]{1,128}$")

# BCP-47 language tag, loosely: a 2-3 letter language with optional subtags.
BCP47_PATTERN = re.compile(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*$")

# Upper bound for epoch-second claims: the year 9999, far past any real program time.
MAX_EPOCH = 253_402_300_799

# Mux documents no maximum for media times. A year of seconds stops absurd values such as 1e308.
# NOTE: this bound is a sanity limit chosen here, not a documented Mux limit.
MAX_MEDIA_SECONDS = 31_536_000

# Mux documents no maximum for thumbnail dimensions. This bound only stops absurd values.
# NOTE: 10,000 px is an estimate of a sane ceiling, not a documented Mux limit.
MAX_IMAGE_PIXELS = 10_000


class ClaimValueError(ValueError):
    """A modifier claim value that Mux would reject. The message explains the fix."""


@dataclass(frozen=True)
class ClaimSpec:
    """One modifier claim: the audiences whose token may carry it and its value check."""

    name: str
    audiences: frozenset[str]
    check: Callable[[Any], Any]
    description: str


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ClaimValueError("must be true or false")
    return value


def _one_of(choices: tuple[Any, ...]) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if isinstance(value, bool) or value not in choices:
            listed = ", ".join(str(choice) for choice in choices)
            raise ClaimValueError(f"must be one of: {listed}")
        return value

    return check


def _plain(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else str(number)


def _number(minimum: float, maximum: float) -> Callable[[Any], float | int]:
    def check(value: Any) -> float | int:
        if not _is_number(value):
            raise ClaimValueError("must be a number")
        if value < minimum or value > maximum:
            raise ClaimValueError(f"must be between {_plain(minimum)} and {_plain(maximum)}")
        # -0.0 equals 0, so the token carries a plain 0.
        return 0 if value == 0 else value

    return check


def _integer(minimum: int, maximum: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        # JSON has one number type, so 640.0 is the integer 640, as JSON Schema also counts it.
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ClaimValueError("must be an integer")
        if value < minimum or value > maximum:
            raise ClaimValueError(f"must be between {minimum} and {maximum}")
        return value

    return check


def _language_tag(value: Any) -> str:
    if not isinstance(value, str) or not BCP47_PATTERN.match(value):
        raise ClaimValueError("must be a BCP-47 language tag such as en or pt-BR")
    return value


def _identifier(value: Any) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= 255:
        raise ClaimValueError("must be a string of 1 to 255 characters")
    return value


_VIDEO = frozenset({"video"})
_THUMBNAIL = frozenset({"thumbnail"})
_GIF = frozenset({"gif"})
_STORYBOARD = frozenset({"storyboard"})
_CLIP = frozenset({"video", "storyboard"})
_ANY = frozenset(AUDIENCES)

_SPECS: tuple[ClaimSpec, ...] = (
    ClaimSpec("playback_restriction_id", _ANY, _identifier, "ID of a Mux playback restriction"),
    ClaimSpec("max_resolution", _VIDEO, _one_of(RESOLUTIONS), "highest rendition served"),
    ClaimSpec("min_resolution", _VIDEO, _one_of(RESOLUTIONS), "lowest rendition served"),
    ClaimSpec("rendition_order", _VIDEO, _one_of(("desc",)), "rendition order in the manifest"),
    ClaimSpec("redundant_streams", _VIDEO, _boolean, "add redundant CDN streams"),
    ClaimSpec("roku_trick_play", _VIDEO, _boolean, "add Roku trick-play images"),
    ClaimSpec("exclude_pdt", _VIDEO, _boolean, "omit EXT-X-PROGRAM-DATE-TIME tags"),
    ClaimSpec("default_subtitles_lang", _VIDEO, _language_tag, "default subtitle language"),
    ClaimSpec("asset_start_time", _CLIP, _number(0, MAX_MEDIA_SECONDS), "clip start, seconds from asset start"),
    ClaimSpec("asset_end_time", _CLIP, _number(0, MAX_MEDIA_SECONDS), "clip end, seconds from asset start"),
    ClaimSpec("program_start_time", _CLIP, _integer(0, MAX_EPOCH), "live clip start, epoch s"),
    ClaimSpec("program_end_time", _CLIP, _integer(0, MAX_EPOCH), "live clip end, epoch s"),
    ClaimSpec("time", _THUMBNAIL, _number(0, MAX_MEDIA_SECONDS), "thumbnail time, seconds"),
    ClaimSpec("width", _THUMBNAIL | _GIF, _integer(1, MAX_IMAGE_PIXELS), "width, px"),
    ClaimSpec("height", _THUMBNAIL | _GIF, _integer(1, MAX_IMAGE_PIXELS), "height, px"),
    ClaimSpec("rotate", _THUMBNAIL, _one_of((90, 180, 270)), "clockwise rotation, degrees"),
    ClaimSpec("fit_mode", _THUMBNAIL, _one_of(FIT_MODES), "how the image fits width x height"),
    ClaimSpec("flip_v", _THUMBNAIL, _boolean, "flip vertically"),
    ClaimSpec("flip_h", _THUMBNAIL, _boolean, "flip horizontally"),
    ClaimSpec("program_time", _THUMBNAIL, _integer(0, MAX_EPOCH), "live thumbnail time, epoch s"),
    ClaimSpec("latest", _THUMBNAIL, _boolean, "latest frame of a live stream"),
    ClaimSpec("start", _GIF, _number(0, MAX_MEDIA_SECONDS), "animation start, seconds"),
    ClaimSpec("end", _GIF, _number(0, MAX_MEDIA_SECONDS), "animation end, seconds"),
    ClaimSpec("fps", _GIF, _integer(1, 30), "frames per second"),
    ClaimSpec("format", _STORYBOARD, _one_of(("jpg", "png", "webp")), "storyboard image format"),
)

CLAIM_SPECS: dict[str, ClaimSpec] = {spec.name: spec for spec in _SPECS}

# Mux caps animated images at 640 px a side, tighter than the shared width/height check.
GIF_MAX_PIXELS = 640
_GIF_MIN_SECONDS = 0.25
_GIF_MAX_SECONDS = 10.0
_GIF_DEFAULT_SECONDS = 5.0


def claim_names_for(audience: str) -> list[str]:
    """Return the modifier claim names that Mux defines for one audience, sorted."""
    return sorted(name for name, spec in CLAIM_SPECS.items() if audience in spec.audiences)


def check_claim(audience: str, name: str, value: Any) -> Any:
    """Return the value if Mux accepts claim `name` in an `audience` token, else raise.

    Raises ClaimValueError with a message that names the accepted values.
    """
    if name in RESERVED_CLAIMS:
        raise ClaimValueError(f"is set by the gateway and cannot be requested: remove '{name}'")

    spec = CLAIM_SPECS.get(name)
    if spec is None or audience not in spec.audiences:
        allowed = ", ".join(claim_names_for(audience))
        raise ClaimValueError(f"is not a Mux claim for {audience} tokens; allowed: {allowed}")

    value = spec.check(value)
    if audience == "gif" and name in {"width", "height"} and value > GIF_MAX_PIXELS:
        raise ClaimValueError(f"must be at most {GIF_MAX_PIXELS} for gif tokens")
    return value


def check_claim_set(audience: str, claims: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Return (claim name, message) pairs for rules that span several claims of one token."""
    problems: list[tuple[str, str]] = []

    low, high = claims.get("min_resolution"), claims.get("max_resolution")
    if low in RESOLUTIONS and high in RESOLUTIONS and RESOLUTIONS.index(low) > RESOLUTIONS.index(high):
        problems.append(("min_resolution", f"must not be above max_resolution ({high})"))

    for start, end in (
        ("asset_start_time", "asset_end_time"),
        ("program_start_time", "program_end_time"),
    ):
        both_set = _is_number(claims.get(start)) and _is_number(claims.get(end))
        if both_set and claims[end] <= claims[start]:
            problems.append((end, f"must be greater than {start}"))

    problems.extend(_check_time_bases(claims))
    if audience == "gif":
        problems.extend(_check_gif_window(claims))
    return problems


# Pairs of claims that locate media in two different ways. Mux documents no precedence between
# them, so a request could use one to escape a limit set with the other (a preview clip's end).
_EXCLUSIVE_TIME_CLAIMS = (
    (("asset_start_time", "asset_end_time"), ("program_start_time", "program_end_time")),
    (("time",), ("program_time", "latest")),
)


def _check_time_bases(claims: Mapping[str, Any]) -> list[tuple[str, str]]:
    problems = []
    for first, second in _EXCLUSIVE_TIME_CLAIMS:
        used_first = [name for name in first if name in claims]
        used_second = [name for name in second if name in claims]
        if used_first and used_second:
            problems.append((used_second[0], f"cannot be combined with {used_first[0]}: use one way to set the time"))
    return problems


def _check_gif_window(claims: Mapping[str, Any]) -> list[tuple[str, str]]:
    start = claims.get("start", 0)
    end = claims.get("end")
    if not _is_number(start) or (end is not None and not _is_number(end)):
        return []

    length = _GIF_DEFAULT_SECONDS if end is None else end - start
    if _GIF_MIN_SECONDS <= length <= _GIF_MAX_SECONDS:
        return []
    field = "end" if end is not None else "start"
    return [(field, "end - start must be between 0.25 and 10 seconds")]


def playback_url(audience: str, playback_id: str, token: str) -> str:
    """Return the token-only Mux URL for one audience; modifiers live in the token."""
    templates = {
        "video": "https://stream.mux.com/{pid}.m3u8?token={token}",
        "thumbnail": "https://image.mux.com/{pid}/thumbnail.jpg?token={token}",
        "storyboard": "https://image.mux.com/{pid}/storyboard.vtt?token={token}",
        "gif": "https://image.mux.com/{pid}/animated.gif?token={token}",
        # Widevine is listed. PlayReady and FairPlay use the same token on sibling paths.
        "drm_license": "https://license.mux.com/license/widevine/{pid}?token={token}",
    }
    return templates[audience].format(pid=playback_id, token=token)
