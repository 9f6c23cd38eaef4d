"""Mux claim names, ranges and URL shapes."""

from __future__ import annotations

import pytest

from gateway.tokens.mux import (
    AUDIENCE_CODES,
    ClaimValueError,
    check_claim,
    check_claim_set,
    claim_names_for,
    playback_url,
)


def test_audience_codes_match_mux() -> None:
    assert AUDIENCE_CODES == {"video": "v", "thumbnail": "t", "storyboard": "s", "gif": "g", "drm_license": "d"}


@pytest.mark.parametrize(
    ("audience", "names"),
    [
        ("video", ["asset_end_time", "asset_start_time", "default_subtitles_lang", "exclude_pdt",
                   "max_resolution", "min_resolution", "playback_restriction_id", "program_end_time",
                   "program_start_time", "redundant_streams", "rendition_order", "roku_trick_play"]),
        ("thumbnail", ["fit_mode", "flip_h", "flip_v", "height", "latest", "playback_restriction_id",
                       "program_time", "rotate", "time", "width"]),
        ("storyboard", ["asset_end_time", "asset_start_time", "format", "playback_restriction_id",
                        "program_end_time", "program_start_time"]),
        ("gif", ["end", "fps", "height", "playback_restriction_id", "start", "width"]),
        ("drm_license", ["playback_restriction_id"]),
    ],
)
def test_claim_names_per_audience(audience: str, names: list[str]) -> None:
    assert claim_names_for(audience) == names


@pytest.mark.parametrize(
    ("audience", "name", "value"),
    [
        ("video", "max_resolution", "1080p"),
        ("video", "min_resolution", "270p"),
        ("video", "rendition_order", "desc"),
        ("video", "redundant_streams", True),
        ("video", "default_subtitles_lang", "pt-BR"),
        ("video", "asset_end_time", 30),
        ("storyboard", "asset_start_time", 12.5),
        ("video", "program_start_time", 1767225600),
        ("thumbnail", "time", 0),
        ("thumbnail", "width", 640),
        ("thumbnail", "rotate", 270),
        ("thumbnail", "fit_mode", "smartcrop"),
        ("thumbnail", "latest", False),
        ("gif", "width", 640),
        ("gif", "fps", 30),
        ("storyboard", "format", "webp"),
        ("drm_license", "playback_restriction_id", "restriction1"),
    ],
)
def test_check_claim_accepts_documented_values(audience: str, name: str, value: object) -> None:
    assert check_claim(audience, name, value) == value


@pytest.mark.parametrize(
    ("audience", "name", "value", "message"),
    [
        ("video", "max_resolution", "4k", "must be one of: 270p, 360p, 480p, 540p, 720p, 1080p, 1440p, 2160p"),
        ("video", "rendition_order", "asc", "must be one of: desc"),
        ("video", "redundant_streams", "true", "must be true or false"),
        ("video", "default_subtitles_lang", "english!", "must be a BCP-47 language tag such as en or pt-BR"),
        ("video", "asset_end_time", -1, "must be between 0 and 31536000"),
        ("thumbnail", "time", 1e308, "must be between 0 and 31536000"),
        ("video", "asset_end_time", True, "must be a number"),
        ("video", "program_start_time", 1.5, "must be an integer"),
        ("thumbnail", "rotate", 45, "must be one of: 90, 180, 270"),
        ("thumbnail", "fit_mode", "zoom", "must be one of: preserve, stretch, crop, smartcrop, pad"),
        ("thumbnail", "width", 0, "must be between 1 and 10000"),
        ("gif", "width", 641, "must be at most 640 for gif tokens"),
        ("gif", "fps", 31, "must be between 1 and 30"),
        ("storyboard", "format", "gif", "must be one of: jpg, png, webp"),
        ("video", "time", 3, "is not a Mux claim for video tokens; allowed: asset_end_time, asset_start_time, "
         "default_subtitles_lang, exclude_pdt, max_resolution, min_resolution, playback_restriction_id, "
         "program_end_time, program_start_time, redundant_streams, rendition_order, roku_trick_play"),
        ("thumbnail", "sub", "x", "is set by the gateway and cannot be requested: remove 'sub'"),
        ("video", "exp", 1, "is set by the gateway and cannot be requested: remove 'exp'"),
        ("gif", "kid", "k", "is set by the gateway and cannot be requested: remove 'kid'"),
        ("storyboard", "aud", "s", "is set by the gateway and cannot be requested: remove 'aud'"),
    ],
)
def test_check_claim_rejects_with_message(audience: str, name: str, value: object, message: str) -> None:
    with pytest.raises(ClaimValueError) as caught:
        check_claim(audience, name, value)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("audience", "claims", "problems"),
    [
        ("video", {"min_resolution": "1080p", "max_resolution": "720p"},
         [("min_resolution", "must not be above max_resolution (720p)")]),
        ("video", {"asset_start_time": 30, "asset_end_time": 10},
         [("asset_end_time", "must be greater than asset_start_time")]),
        ("gif", {"start": 1, "end": 1.1}, [("end", "end - start must be between 0.25 and 10 seconds")]),
        ("gif", {"start": 0, "end": 11}, [("end", "end - start must be between 0.25 and 10 seconds")]),
        ("gif", {"end": 10}, []),
        ("gif", {"start": 3}, []),
        ("video", {"min_resolution": "480p", "max_resolution": "720p"}, []),
        ("video", {"asset_end_time": 30, "program_start_time": 1},
         [("program_start_time", "cannot be combined with asset_end_time: use one way to set the time")]),
        ("storyboard", {"asset_start_time": 0, "program_end_time": 9},
         [("program_end_time", "cannot be combined with asset_start_time: use one way to set the time")]),
        ("thumbnail", {"time": 3, "latest": True},
         [("latest", "cannot be combined with time: use one way to set the time")]),
        ("thumbnail", {"program_time": 1767225600, "width": 100}, []),
    ],
)
def test_check_claim_set(audience: str, claims: dict[str, object], problems: list[tuple[str, str]]) -> None:
    assert check_claim_set(audience, claims) == problems


def test_negative_zero_becomes_zero() -> None:
    assert check_claim("thumbnail", "time", -0.0) == 0
    assert str(check_claim("thumbnail", "time", -0.0)) == "0"


def test_integral_float_is_an_integer() -> None:
    assert check_claim("gif", "width", 320.0) == 320
    assert isinstance(check_claim("gif", "width", 320.0), int)


@pytest.mark.parametrize(
    ("audience", "url"),
    [
        ("video", "https://stream.mux.com/abc123.m3u8?token=T"),
        ("thumbnail", "https://image.mux.com/abc123/thumbnail.jpg?token=T"),
        ("storyboard", "https://image.mux.com/abc123/storyboard.vtt?token=T"),
        ("gif", "https://image.mux.com/abc123/animated.gif?token=T"),
        ("drm_license", "https://license.mux.com/license/widevine/abc123?token=T"),
    ],
)
def test_playback_url_carries_only_token(audience: str, url: str) -> None:
    assert playback_url(audience, "abc123", "T") == url
