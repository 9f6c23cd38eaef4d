"""Broken policy files and the exact problems (line, rule, message) that loading reports."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.policy.loader import load_policy
from gateway.policy.problems import PolicyLoadError

DURATION_HINT = "use a positive whole number with a unit s, m, h or d (90s, 15m, 4h, 1d) or integer seconds"
AUDIENCE_LIST = "video, thumbnail, storyboard, gif, drm_license"
RESOLUTIONS = "270p, 360p, 480p, 540p, 720p, 1080p, 1440p, 2160p"
CEL_EXPECTING = (
    "{'[', '{', '(', '.', '-', '!', 'true', 'false', 'null', NUM_FLOAT, NUM_INT, NUM_UINT, STRING, BYTES, "
    "IDENTIFIER}"
)
COMPARE_HINT = 'compare explicitly, as in `content.tier == "free"` or `content.drm == true`'

# Each case: the file's text and the problems as (line, rule, message). `{file}` in a message
# stands for the written file's path.
BROKEN_POLICIES: dict[str, tuple[str, list[tuple[int, str | None, str]]]] = {
    "missing version": (
        """
        rules:
          - name: everyone
            effect: allow
            audiences: [video]
        """,
        [(1, None, "missing required key 'version' (write `version: 1`)")],
    ),
    "unsupported version": (
        """
        version: 2
        rules: []
        """,
        [(1, None, "unsupported version 2; this gateway reads version 1")],
    ),
    "version as string": (
        """
        version: "1"
        """,
        [(1, None, "unsupported version '1'; this gateway reads version 1")],
    ),
    "unknown top-level key": (
        """
        version: 1
        rule:
          - name: a
        """,
        [(2, None, "unknown key 'rule' in a policy file (did you mean 'rules'?); "
                   "allowed keys: catalog, defaults, rules, version")],
    ),
    "invalid yaml": (
        """
        version: 1
        rules:
          - name: a
            effect: [allow
        """,
        [(5, None, "invalid YAML: expected ',' or ']', but got '<stream end>' (while parsing a flow sequence)")],
    ),
    "two documents": (
        """
        version: 1
        ---
        version: 1
        """,
        [(2, None, "a file must contain a single YAML document: remove the second '---'")],
    ),
    "empty file": (
        """
        # only a comment
        """,
        [(1, None, "file is empty")],
    ),
    "list at top level": (
        """
        - version: 1
        """,
        [(1, None, "a policy file must be a mapping, not a list")],
    ),
    "duplicate key": (
        """
        version: 1
        rules:
          - name: a
            effect: allow
            audiences: [video]
            effect: deny
        """,
        [(6, None, "duplicate key 'effect' (first at line 4)")],
    ),
    "invalid durations": (
        """
        version: 1
        defaults:
          ttl: 1.5h
          max_ttl: 0
        rules:
          - name: a
            effect: allow
            audiences: [video]
            ttl: 10w
          - name: b
            effect: allow
            when: viewer.authenticated
            audiences: [video]
            ttl: -5m
        """,
        [
            (3, "defaults", f"ttl: invalid duration '1.5h': {DURATION_HINT}"),
            (4, "defaults", f"max_ttl: invalid duration 0: must be positive; {DURATION_HINT}"),
            (9, "a", f"ttl: invalid duration '10w': unknown unit 'w'; {DURATION_HINT}"),
            (10, "b", "unreachable: allow rule 'a' at {file}:6 has no condition and always decides first"),
            (14, "b", f"ttl: invalid duration '-5m': {DURATION_HINT}"),
        ],
    ),
    "ttl above max_ttl": (
        """
        version: 1
        defaults: {ttl: 2d, max_ttl: 1d}
        """,
        [(2, "defaults", "ttl 2d is above max_ttl 1d")],
    ),
    "ttl above built-in max_ttl": (
        """
        version: 1
        defaults:
          ttl: 48h
        """,
        [(3, "defaults", "ttl 2d is above max_ttl 1d (the built-in value when max_ttl is unset)")],
    ),
    "unknown defaults key": (
        """
        version: 1
        defaults: {ttl: 1h, max: 2h}
        """,
        [(2, "defaults", "unknown key 'max' in defaults (did you mean 'max_ttl'?); allowed keys: max_ttl, ttl")],
    ),
    "rule name missing or invalid": (
        """
        version: 1
        rules:
          - effect: deny
          - name: Premium Users
            effect: deny
          - name: 42
            effect: deny
        """,
        [
            (3, None, "a rule is missing required key 'name'"),
            (4, None, "invalid rule name 'Premium Users': use lowercase letters, digits, '-' and '_', "
                      "starting with a letter or digit, at most 64 characters"),
            (6, None, "invalid rule name 42: use lowercase letters, digits, '-' and '_', "
                      "starting with a letter or digit, at most 64 characters"),
        ],
    ),
    "duplicate rule name": (
        """
        version: 1
        rules:
          - name: embargo
            effect: deny
            when: 'request.country == "XX"'
          - name: embargo
            effect: deny
            when: 'request.country == "YY"'
        """,
        [(6, "embargo", "duplicate rule name (first at {file}:3)")],
    ),
    "effect missing or invalid": (
        """
        version: 1
        rules:
          - name: a
            effect: permit
          - name: b
            audiences: [video]
        """,
        [
            (4, "a", "invalid effect 'permit': use allow or deny"),
            (5, "b", "missing required key 'effect' (allow or deny)"),
        ],
    ),
    "invalid conditions": (
        """
        version: 1
        rules:
          - name: syntax
            effect: deny
            when: 'viewer.id =='
          - name: unknown-variables
            effect: deny
            when: 'user.id == "x" && session.ok'
          - name: number
            effect: deny
            when: 42
          - name: blank
            effect: deny
            when: '  '
          - name: comprehension-is-fine
            effect: deny
            when: 'viewer.entitlements.exists(e, e == "banned")'
        """,
        [
            (5, "syntax", "when: invalid CEL: line 1 column 13 of the expression: Syntax error: "
                          f"mismatched input '<EOF>' expecting {CEL_EXPECTING}"),
            (8, "unknown-variables", "when: unknown variables 'session', 'user'; "
                                     "conditions may use viewer, content, request, now"),
            (11, "number", "when: must be a CEL expression in a string, not a number"),
            (14, "blank", "when: must be a non-empty CEL expression; omit `when` to always match"),
        ],
    ),
    "conditions that can never hold": (
        """
        version: 1
        catalog:
          - playback_ids: [FreeClip0aB1cD2eF3gH4iJ5kL6mN7oP8qR9sT0uV1w]
            attributes: {tier: free, drm: true}
        rules:
          - name: string-result
            effect: deny
            when: "content.playback_id"
          - name: list-plus-int
            effect: deny
            when: "viewer.entitlements + 1"
          - name: string-above-int
            effect: deny
            when: 'content.tier > 3'
          - name: null-outside-catalog
            effect: deny
            when: 'content.drm'
          - name: missing-claim-is-data
            effect: deny
            when: 'viewer.claims.plan == "gold"'
          - name: null-origin-is-data
            effect: deny
            when: 'request.origin.startsWith("https://")'
          - name: anonymous-id-is-data
            effect: deny
            when: 'viewer.id.startsWith("staff-")'
        """,
        [
            (8, "string-result", "when: returns a string, not a bool, with an anonymous viewer and content "
                                 f"not in the catalog; {COMPARE_HINT}"),
            (11, "list-plus-int", "when: fails with a type error for every sample request (No such overload: "
                                  "the operation is not defined for the given operand types); "
                                  "compare values of the same type"),
            (14, "string-above-int", "when: fails with a type error for every sample request (No such "
                                     "overload: the operation is not defined for the given operand types); "
                                     "compare values of the same type"),
            (17, "null-outside-catalog", "when: returns null, not a bool, with an anonymous viewer and content "
                                         f"not in the catalog; {COMPARE_HINT}"),
        ],
    ),
    "unknown fields": (
        """
        version: 1
        catalog:
          - playback_ids: [FreeClip0aB1cD2eF3gH4iJ5kL6mN7oP8qR9sT0uV1w]
            attributes: {tier: free, regions_blocked: [XX]}
        rules:
          - name: content-typo
            effect: allow
            audiences: [video]
            when: 'content.teir == "free"'
          - name: viewer-typo
            effect: allow
            audiences: [video]
            when: '"premium" in viewer.entitlement'
          - name: request-typo-in-deny
            effect: deny
            when: 'request.contry == "XX" || viewer.authenticated'
          - name: attribute-not-in-catalog
            effect: deny
            when: 'has(content.drm) && content.drm == true'
          - name: claims-are-data
            effect: deny
            when: 'viewer.claims.contry == "XX"'
          - name: text-in-strings-is-data
            effect: deny
            when: 'request.country == "content.teir"'
        """,
        [
            (9, "content-typo", "when: unknown field 'content.teir'; the fields of content (catalog "
                                 "attributes and playback_id) are playback_id, regions_blocked, tier"),
            (13, "viewer-typo", "when: unknown field 'viewer.entitlement'; the fields of viewer are "
                                "authenticated, claims, entitlements, id"),
            (16, "request-typo-in-deny", "when: unknown field 'request.contry'; the fields of request are "
                                         "audiences, client, country, origin"),
            (19, "attribute-not-in-catalog", "when: unknown field 'content.drm'; the fields of content "
                                             "(catalog attributes and playback_id) are playback_id, "
                                             "regions_blocked, tier"),
        ],
    ),
    "comparisons that never hold": (
        """
        version: 1
        catalog:
          - playback_ids: [FreeClip0aB1cD2eF3gH4iJ5kL6mN7oP8qR9sT0uV1w]
            attributes: {tier: free, rank: 2, regions_blocked: [XX]}
        rules:
          - name: int-tier
            effect: allow
            audiences: [video]
            when: 'content.tier == 1'
          - name: list-equals-string
            effect: allow
            audiences: [video]
            when: 'viewer.authenticated && viewer.entitlements == "premium"'
          - name: literal-first
            effect: deny
            when: '1 != content.tier'
          - name: country-never-null
            effect: deny
            when: 'request.country == null'
          - name: int-equals-double-is-data
            effect: deny
            when: 'content.rank == 2.0'
          - name: default-null-is-data
            effect: deny
            when: 'content.tier == null'
          - name: operand-with-arithmetic-is-left-to-dry-run
            effect: deny
            when: 'content.tier == 1 + 0'
        """,
        [
            (9, "int-tier", "when: `content.tier == 1` is always false because content.tier is always a "
                             "string or null, never an int"),
            (13, "list-equals-string", 'when: `viewer.entitlements == "premium"` is always false because '
                                       "viewer.entitlements is always a list, never a string; to test "
                                       'membership, write `"premium" in viewer.entitlements`'),
            (16, "literal-first", "when: `1 != content.tier` is always true because content.tier is always a "
                                  "string or null, never an int"),
            (19, "country-never-null", "when: `request.country == null` is always false because "
                                       "request.country is always a string, never null"),
        ],
    ),
    "audiences": (
        """
        version: 1
        rules:
          - name: missing
            effect: allow
            when: viewer.authenticated
          - name: empty
            effect: allow
            when: viewer.authenticated
            audiences: []
          - name: unknown-and-twice
            effect: allow
            when: viewer.authenticated
            audiences: [video, videos, video]
          - name: not-a-list
            effect: allow
            when: viewer.authenticated
            audiences: video
        """,
        [
            (3, "missing", f"an allow rule is missing required key 'audiences' ({AUDIENCE_LIST})"),
            (9, "empty", "audiences must list at least one audience"),
            (13, "unknown-and-twice", f"unknown audience 'videos'; audiences: {AUDIENCE_LIST}"),
            (13, "unknown-and-twice", "audience 'video' is listed twice"),
            (17, "not-a-list", "audiences must be a list, not a string"),
        ],
    ),
    "claims": (
        """
        version: 1
        rules:
          - name: fits-none
            effect: allow
            when: viewer.authenticated
            audiences: [thumbnail, storyboard]
            claims:
              max_resolution: 720p
          - name: reserved
            effect: allow
            when: viewer.authenticated
            audiences: [video]
            claims: {exp: 1, sub: x}
          - name: unknown-claim
            effect: allow
            when: viewer.authenticated
            audiences: [video]
            claims: {max_res: 720p}
          - name: invalid-value
            effect: allow
            when: viewer.authenticated
            audiences: [video]
            claims: {max_resolution: 4k}
          - name: too-wide-for-gif
            effect: allow
            when: viewer.authenticated
            audiences: [thumbnail, gif]
            claims: {width: 1000}
          - name: end-before-start
            effect: allow
            when: viewer.authenticated
            audiences: [video, storyboard]
            claims: {asset_start_time: 30, asset_end_time: 10}
          - name: not-a-mapping
            effect: allow
            when: viewer.authenticated
            audiences: [video]
            claims: [max_resolution]
        """,
        [
            (8, "fits-none", "claims.max_resolution fits none of the rule's audiences (thumbnail, storyboard); "
                             "Mux defines it for: video"),
            (13, "reserved", "claims.exp is set by the gateway and cannot be set by a policy: remove 'exp'"),
            (13, "reserved", "claims.sub is set by the gateway and cannot be set by a policy: remove 'sub'"),
            (18, "unknown-claim", "claims.max_res is not a Mux claim (did you mean 'max_resolution'?)"),
            (23, "invalid-value", f"claims.max_resolution must be one of: {RESOLUTIONS}"),
            (28, "too-wide-for-gif", "claims.width must be at most 640 for gif tokens"),
            (33, "end-before-start", "claims.asset_end_time must be greater than asset_start_time"),
            (38, "not-a-mapping", "claims must be a mapping, not a list"),
        ],
    ),
    "deny rule with grant keys": (
        """
        version: 1
        rules:
          - name: d
            effect: deny
            audiences: [video]
            ttl: 1h
            claims: {max_resolution: 720p}
            message: nope
            colour: red
          - name: a
            effect: allow
            audiences: [video]
            message: hi
        """,
        [
            (5, "d", "'audiences' is only for allow rules; a deny rule has name, effect, when and message"),
            (6, "d", "'ttl' is only for allow rules; a deny rule has name, effect, when and message"),
            (7, "d", "'claims' is only for allow rules; a deny rule has name, effect, when and message"),
            (9, "d", "unknown key 'colour' in a deny rule; allowed keys: effect, message, name, when"),
            (13, "a", "'message' is only for deny rules; an allow rule has name, effect, when, audiences, "
                      "ttl and claims"),
        ],
    ),
    "deny message not a string": (
        """
        version: 1
        rules:
          - name: d
            effect: deny
            message: [a, b]
        """,
        [(5, "d", "message must be a non-empty string, not a list")],
    ),
    "allow after unconditional allow": (
        """
        version: 1
        rules:
          - name: everyone
            effect: allow
            audiences: [video]
          - name: never
            effect: allow
            when: 'viewer.authenticated'
            audiences: [video]
          - name: still-denies
            effect: deny
            when: 'request.country == "XX"'
        """,
        [(6, "never", "unreachable: allow rule 'everyone' at {file}:3 has no condition and always decides first")],
    ),
    "allow after when true": (
        """
        version: 1
        rules:
          - name: everyone
            effect: allow
            when: "true"
            audiences: [video]
          - name: never
            effect: allow
            audiences: [video]
        """,
        [(7, "never", "unreachable: allow rule 'everyone' at {file}:3 has no condition and always decides first")],
    ),
    "catalog": (
        """
        version: 1
        catalog:
          - playback_ids: [abc, "has-dash", 12345]
            attributes:
              tier: premium
              playback_id: x
              2bad: y
              nested: {a: 1}
              released: 2026-01-01
          - playback_ids: [abc]
          - attributes: {tier: free}
          - playback_ids: []
          - playback_ids: [def]
            extra: 1
          - not an entry
        """,
        [
            (3, "catalog", "playback_ids item 12345 must be a string; quote it in YAML"),
            (3, "catalog", "invalid playback id 'has-dash': use 1 to 128 letters and digits"),
            (6, "catalog", "attribute 'playback_id' is reserved: content.playback_id is always the requested id"),
            (7, "catalog", "invalid attribute name '2bad': use letters, digits and '_', not starting with a digit"),
            (8, "catalog", "attribute 'nested' must be a string, number, boolean, null or timestamp, not a mapping"),
            (9, "catalog", "attribute 'released' is a date, which conditions cannot compare; write a timestamp "
                           "such as 2026-01-01T00:00:00Z, or quote it to keep a string"),
            (10, "catalog", "playback id 'abc' is already in the catalog at {file}:3"),
            (11, "catalog", "a catalog entry is missing required key 'playback_ids'"),
            (12, "catalog", "playback_ids must list at least one playback id"),
            (14, "catalog", "unknown key 'extra' in a catalog entry; allowed keys: attributes, playback_ids"),
            (15, "catalog", "a catalog entry must be a mapping, not a string"),
        ],
    ),
}


@pytest.mark.parametrize("case", list(BROKEN_POLICIES), ids=list(BROKEN_POLICIES))
def test_broken_policy_reports_problems(case: str, write_policy: Callable[..., Path]) -> None:
    text, expected = BROKEN_POLICIES[case]
    path = write_policy(text)

    with pytest.raises(PolicyLoadError) as raised:
        load_policy(path)

    got = [(problem.line, problem.rule, problem.message) for problem in raised.value.problems]
    wanted = [(line, rule, message.replace("{file}", str(path))) for line, rule, message in expected]
    assert got == wanted
    assert all(problem.file == str(path) for problem in raised.value.problems)


def test_error_text_lists_file_line_rule(write_policy: Callable[..., Path]) -> None:
    path = write_policy(
        """
        version: 1
        rules:
          - name: a
            effect: permit
          - effect: deny
        """
    )

    with pytest.raises(PolicyLoadError) as raised:
        load_policy(path)

    assert str(raised.value) == (
        f"{path}:4: a: invalid effect 'permit': use allow or deny\n"
        f"{path}:5: a rule is missing required key 'name'"
    )


def test_missing_path_is_reported(tmp_path: Path) -> None:
    with pytest.raises(PolicyLoadError) as raised:
        load_policy(tmp_path / "absent")

    assert str(raised.value) == f"{tmp_path / 'absent'}: no such file or folder"


def test_folder_without_yaml_is_reported(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a policy", encoding="utf-8")

    with pytest.raises(PolicyLoadError) as raised:
        load_policy(tmp_path)

    assert str(raised.value) == f"{tmp_path}: the folder has no *.yaml policy files"


def test_non_utf8_file_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_bytes(b"version: 1\nrules: []\n# caf\xe9\n")

    with pytest.raises(PolicyLoadError) as raised:
        load_policy(path)

    assert str(raised.value) == f"{path}: the file is not UTF-8 text (invalid byte at offset 26)"


def test_second_defaults_in_folder_is_reported(write_policy: Callable[..., Path]) -> None:
    first = write_policy("version: 1\ndefaults: {ttl: 1h}\n", "policies/a.yaml")
    second = write_policy("version: 1\nrules: []\ndefaults:\n  ttl: 2h\n", "policies/b.yaml")

    with pytest.raises(PolicyLoadError) as raised:
        load_policy(first.parent)

    assert str(raised.value) == (
        f"{second}:3: defaults are already set at {first}:2; keep a single defaults section"
    )


def test_duplicates_across_folder_files_are_reported(write_policy: Callable[..., Path]) -> None:
    first = write_policy(
        """
        version: 1
        catalog:
          - playback_ids: [abc123]
        rules:
          - name: everyone
            effect: allow
            audiences: [video]
        """,
        "policies/10-base.yaml",
    )
    second = write_policy(
        """
        version: 1
        catalog:
          - playback_ids: [abc123]
        rules:
          - name: everyone
            effect: deny
          - name: later
            effect: allow
            when: viewer.authenticated
            audiences: [video]
        """,
        "policies/20-more.yaml",
    )

    with pytest.raises(PolicyLoadError) as raised:
        load_policy(first.parent)

    assert [str(problem) for problem in raised.value.problems] == [
        f"{second}:3: catalog: playback id 'abc123' is already in the catalog at {first}:3",
        f"{second}:5: everyone: duplicate rule name (first at {first}:5)",
        f"{second}:7: later: unreachable: allow rule 'everyone' at {first}:5 has no condition and "
        "always decides first",
    ]
