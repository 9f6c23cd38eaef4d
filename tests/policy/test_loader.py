"""Loading valid policies: files and folders, version hash, defaults, catalog and warnings."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from gateway.policy.engine import Defaults
from gateway.policy.loader import load_policy
from gateway.policy.problems import PolicyProblem


def test_single_file_loads(write_policy: Callable[..., Path]) -> None:
    path = write_policy(
        """
        version: 1
        defaults: {ttl: 30m, max_ttl: 4h}
        catalog:
          - playback_ids: [abc123, def456]
            attributes: {tier: premium, regions_blocked: [DE]}
          - playback_ids: [ghi789]
            attributes: {tier: free, duration: 93.5}
        rules:
          - name: embargo
            effect: deny
            when: 'request.country in content.regions_blocked'
            message: not here
          - name: premium
            effect: allow
            when: 'content.tier == "premium"'
            audiences: [video, thumbnail]
            ttl: 2h
            claims: {max_resolution: 1080p, playback_restriction_id: restr1}
        """
    )

    policy = load_policy(path)

    assert policy.version == hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    assert policy.path == str(path)
    assert policy.files == (str(path),)
    assert policy.defaults == Defaults(ttl=1800, max_ttl=14_400)
    assert [rule.name for rule in policy.rules] == ["embargo", "premium"]
    assert policy.warnings == ()

    embargo, premium = policy.rules
    assert embargo.effect == "deny"
    assert embargo.message == "not here"
    assert embargo.when == "request.country in content.regions_blocked"
    assert embargo.line == 9
    assert premium.audiences == ("video", "thumbnail")
    assert premium.ttl == 7200
    assert premium.claims == {"max_resolution": "1080p", "playback_restriction_id": "restr1"}
    assert premium.claims_for("video") == {"max_resolution": "1080p", "playback_restriction_id": "restr1"}
    assert premium.claims_for("thumbnail") == {"playback_restriction_id": "restr1"}


def test_catalog_fills_missing_attributes(write_policy: Callable[..., Path]) -> None:
    path = write_policy(
        """
        version: 1
        catalog:
          - playback_ids: [abc123, def456]
            attributes: {tier: premium, regions_blocked: [DE, FR]}
          - playback_ids: [ghi789]
            attributes: {tier: free, premiere: 2027-03-01T18:00:00, rating: 4.5}
          - playback_ids: [jkl012]
        """
    )

    policy = load_policy(path)

    assert policy.attribute_defaults == {"premiere": None, "rating": None, "regions_blocked": [], "tier": None}
    assert policy.catalog["abc123"] == {
        "premiere": None, "rating": None, "regions_blocked": ["DE", "FR"], "tier": "premium",
    }
    assert policy.catalog["ghi789"] == {
        "premiere": datetime(2027, 3, 1, 18, 0, tzinfo=UTC), "rating": 4.5, "regions_blocked": [], "tier": "free",
    }
    assert policy.catalog["jkl012"] == {"premiere": None, "rating": None, "regions_blocked": [], "tier": None}
    assert policy.content_for("zzz999") == {
        "premiere": None, "rating": None, "regions_blocked": [], "tier": None, "playback_id": "zzz999",
    }


def test_folder_merges_files_in_name_order(write_policy: Callable[..., Path]) -> None:
    second = write_policy(
        """
        version: 1
        catalog:
          - playback_ids: [def456]
            attributes: {tier: free}
        rules:
          - name: free
            effect: allow
            when: 'content.tier == "free"'
            audiences: [video]
        """,
        "policies/20-free.yaml",
    )
    first = write_policy(
        """
        version: 1
        defaults: {ttl: 2h}
        catalog:
          - playback_ids: [abc123]
            attributes: {tier: premium}
        rules:
          - name: premium
            effect: allow
            when: 'content.tier == "premium"'
            audiences: [video]
        """,
        "policies/10-premium.yaml",
    )
    write_policy("version: 2\n", "policies/.10-premium.yaml.swp.yaml")
    write_policy("not: a policy\n", "policies/tests/cases.yaml")
    write_policy("not: a policy\n", "policies/README.md")

    policy = load_policy(first.parent)

    expected_version = hashlib.sha256(first.read_bytes() + second.read_bytes()).hexdigest()[:12]
    assert policy.version == expected_version
    assert policy.files == (str(first), str(second))
    assert [rule.name for rule in policy.rules] == ["premium", "free"]
    assert [rule.file for rule in policy.rules] == [str(first), str(second)]
    assert sorted(policy.catalog) == ["abc123", "def456"]
    assert policy.defaults == Defaults(ttl=7200, max_ttl=86_400)


def test_built_in_defaults_without_section(write_policy: Callable[..., Path]) -> None:
    path = write_policy(
        """
        version: 1
        rules:
          - name: everyone
            effect: allow
            audiences: [video]
        """
    )

    policy = load_policy(path)

    assert policy.defaults == Defaults(ttl=3600, max_ttl=86_400)
    assert policy.max_grant_ttl == 3600


def test_max_grant_ttl_is_capped(write_policy: Callable[..., Path]) -> None:
    path = write_policy(
        """
        version: 1
        defaults: {ttl: 1h, max_ttl: 6h}
        rules:
          - name: long
            effect: allow
            when: viewer.authenticated
            audiences: [video]
            ttl: 2d
          - name: short
            effect: allow
            audiences: [video]
            ttl: 5m
          - name: deny-ttl-irrelevant
            effect: deny
            when: 'request.country == "XX"'
        """
    )

    policy = load_policy(path)

    assert policy.max_grant_ttl == 21_600
    assert policy.grant_ttl(policy.rules[0]) == 21_600
    assert policy.grant_ttl(policy.rules[1]) == 300
    assert policy.warnings == (
        PolicyProblem(str(path), 4, "long", "ttl 2d is above defaults.max_ttl 6h; tokens get 6h"),
    )


def test_policy_without_allow_rules_warns(write_policy: Callable[..., Path]) -> None:
    path = write_policy(
        """
        version: 1
        rules:
          - name: embargo
            effect: deny
        """
    )

    policy = load_policy(path)

    assert policy.max_grant_ttl == 0
    assert [str(warning) for warning in policy.warnings] == [f"{path}: no allow rules: every request is denied"]


def test_yaml_conveniences_are_accepted(write_policy: Callable[..., Path]) -> None:
    path = write_policy(
        """
        version: 1
        rules:
          - &base
            name: first
            effect: allow
            when: viewer.authenticated
            audiences: [video, storyboard]
            ttl: 900
          - <<: *base
            name: second
            when: true
        """
    )

    policy = load_policy(path)

    first, second = policy.rules
    assert second.audiences == ("video", "storyboard")
    assert second.ttl == 900
    assert second.when == "true"
    assert second.condition.always_true is True
    assert first.condition.always_true is False


def test_comprehension_variables_are_not_unknown(write_policy: Callable[..., Path]) -> None:
    path = write_policy(
        """
        version: 1
        rules:
          - name: staff
            effect: allow
            when: >-
              viewer.entitlements.exists(e, e.startsWith("staff-"))
              && request.audiences.all(a, a in ["video", "thumbnail"])
              && viewer.claims.all(k, v, k != "banned")
            audiences: [video, thumbnail]
        """
    )

    policy = load_policy(path)

    assert policy.rules[0].name == "staff"
