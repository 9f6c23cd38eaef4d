"""Policy evaluation: deny wins, first allow decides, grants, claims placement, failing conditions."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from gateway.auth.principal import Viewer
from gateway.policy.engine import Policy
from gateway.policy.loader import load_policy
from gateway.policy.model import Decision, Grant, RuleMiss
from tests.policy.helpers import FREE_ID, PREMIUM_ID, UNKNOWN_ID, decision_input

POLICY = f"""
version: 1
defaults: {{ttl: 1h, max_ttl: 4h}}
catalog:
  - playback_ids: [{FREE_ID}]
    attributes: {{tier: free}}
  - playback_ids: [{PREMIUM_ID}]
    attributes: {{tier: premium, regions_blocked: [DE]}}
rules:
  - name: embargo
    effect: deny
    when: 'request.country in content.regions_blocked'
    message: not in your region
  - name: premium-subscribers
    effect: allow
    when: 'content.tier == "premium" && "premium" in viewer.entitlements'
    audiences: [video, thumbnail, storyboard]
    ttl: 8h
    claims: {{max_resolution: 1080p}}
  - name: preview
    effect: allow
    when: 'content.tier == "premium"'
    audiences: [video, thumbnail, storyboard, gif]
    ttl: 10m
    claims: {{asset_end_time: 30}}
  - name: free
    effect: allow
    when: 'content.tier == "free"'
    audiences: [video, thumbnail, gif]
  - name: blocked-app
    effect: deny
    when: 'request.client == "scraper-app"'
"""

SUBSCRIBER = Viewer(id="viewer-1", authenticated=True, entitlements=("premium",))


@pytest.fixture
def policy(write_policy: Callable[..., Path]) -> Policy:
    return load_policy(write_policy(POLICY))


def error_count(rule: str) -> float:
    value = REGISTRY.get_sample_value("playback_gateway_policy_evaluation_errors_total", {"rule": rule})
    return value or 0.0


def test_first_matching_allow_decides(policy: Policy) -> None:
    decision = policy.evaluate(decision_input(PREMIUM_ID, viewer=SUBSCRIBER))

    assert decision == Decision(
        effect="allow",
        rule="premium-subscribers",
        policy_version=policy.version,
        grant=Grant(
            rule="premium-subscribers",
            audiences=("video", "thumbnail", "storyboard"),
            ttl=14_400,
            claims={"video": {"max_resolution": "1080p"}, "thumbnail": {}, "storyboard": {}},
        ),
        matched=("premium-subscribers", "preview"),
        not_matched=(
            RuleMiss("embargo", "condition is false"),
            RuleMiss("free", "condition is false"),
            RuleMiss("blocked-app", "condition is false"),
        ),
    )
    assert decision.allowed is True


def test_matching_deny_wins_over_earlier_allow(policy: Policy) -> None:
    decision = policy.evaluate(decision_input(PREMIUM_ID, viewer=SUBSCRIBER, client="scraper-app"))

    assert decision.effect == "deny"
    assert decision.rule == "blocked-app"
    assert decision.message is None
    assert decision.grant is None
    assert decision.matched == ("premium-subscribers", "preview", "blocked-app")


def test_deny_rule_message_is_returned(policy: Policy) -> None:
    decision = policy.evaluate(decision_input(PREMIUM_ID, viewer=SUBSCRIBER, country="DE"))

    assert decision.effect == "deny"
    assert decision.rule == "embargo"
    assert decision.message == "not in your region"
    assert decision.matched == ("embargo", "premium-subscribers", "preview")


def test_no_matching_rule_denies(policy: Policy) -> None:
    decision = policy.evaluate(decision_input(UNKNOWN_ID, viewer=SUBSCRIBER))

    assert decision == Decision(
        effect="deny",
        rule=None,
        policy_version=policy.version,
        message="no rule allows this request",
        matched=(),
        not_matched=tuple(
            RuleMiss(name, "condition is false")
            for name in ("embargo", "premium-subscribers", "preview", "free", "blocked-app")
        ),
    )


def test_rule_ttl_is_capped_by_max_ttl(policy: Policy) -> None:
    decision = policy.evaluate(decision_input(PREMIUM_ID, viewer=SUBSCRIBER))

    assert decision.grant is not None
    assert decision.grant.ttl == 14_400


def test_rule_without_ttl_gets_default_ttl(policy: Policy) -> None:
    decision = policy.evaluate(decision_input(FREE_ID))

    assert decision.grant is not None
    assert decision.grant.ttl == 3600


def test_unrequested_audiences_default_to_player_set(policy: Policy) -> None:
    decision = policy.evaluate(decision_input(FREE_ID))

    assert decision.rule == "free"
    assert decision.grant is not None
    assert decision.grant.audiences == ("video", "thumbnail")


def test_empty_audience_list_means_defaults(policy: Policy) -> None:
    decision = policy.evaluate(decision_input(FREE_ID, audiences=()))

    assert decision.grant is not None
    assert decision.grant.audiences == ("video", "thumbnail")


def test_requested_audiences_keep_order_once(policy: Policy) -> None:
    decision = policy.evaluate(decision_input(FREE_ID, audiences=("gif", "video", "gif")))

    assert decision.grant is not None
    assert decision.grant.audiences == ("gif", "video")
    assert decision.grant.claims == {"gif": {}, "video": {}}


def test_audience_outside_grant_denies(policy: Policy) -> None:
    decision = policy.evaluate(decision_input(PREMIUM_ID, viewer=SUBSCRIBER, audiences=("video", "gif", "drm_license")))

    assert decision.effect == "deny"
    assert decision.rule == "premium-subscribers"
    assert decision.denied_audiences == ("gif", "drm_license")
    assert decision.message == "rule 'premium-subscribers' does not grant: gif, drm_license"
    assert decision.grant is None


def test_rule_without_default_audiences_asks_for_explicit(write_policy: Callable[..., Path]) -> None:
    policy = load_policy(
        write_policy(
            """
            version: 1
            rules:
              - name: licenses
                effect: allow
                audiences: [drm_license, gif]
            """
        )
    )

    implicit = policy.evaluate(decision_input(FREE_ID))
    explicit = policy.evaluate(decision_input(FREE_ID, audiences=("drm_license",)))

    assert implicit.effect == "deny"
    assert implicit.rule == "licenses"
    assert implicit.message == (
        "rule 'licenses' grants none of the default audiences (video, thumbnail, storyboard); "
        "request audiences explicitly: drm_license, gif"
    )
    assert explicit.effect == "allow"
    assert explicit.grant is not None
    assert explicit.grant.audiences == ("drm_license",)


def test_claims_go_only_into_audiences_mux_defines(write_policy: Callable[..., Path]) -> None:
    policy = load_policy(
        write_policy(
            """
            version: 1
            rules:
              - name: clip
                effect: allow
                audiences: [video, thumbnail, storyboard, gif, drm_license]
                claims:
                  max_resolution: 720p
                  asset_end_time: 30
                  fit_mode: pad
                  playback_restriction_id: restr1
            """
        )
    )

    every_audience = ("video", "thumbnail", "storyboard", "gif", "drm_license")
    decision = policy.evaluate(decision_input(FREE_ID, audiences=every_audience))

    assert decision.grant is not None
    assert decision.grant.claims == {
        "video": {"max_resolution": "720p", "asset_end_time": 30, "playback_restriction_id": "restr1"},
        "thumbnail": {"fit_mode": "pad", "playback_restriction_id": "restr1"},
        "storyboard": {"asset_end_time": 30, "playback_restriction_id": "restr1"},
        "gif": {"playback_restriction_id": "restr1"},
        "drm_license": {"playback_restriction_id": "restr1"},
    }


def test_failing_condition_does_not_match(
    write_policy: Callable[..., Path], caplog: pytest.LogCaptureFixture
) -> None:
    policy = load_policy(
        write_policy(
            """
            version: 1
            rules:
              - name: adults-only-failing
                effect: allow
                when: 'viewer.claims.age >= 18'
                audiences: [video]
              - name: fallback
                effect: allow
                when: 'viewer.claims.size() >= 0'
                audiences: [video]
            """
        )
    )
    before = error_count("adults-only-failing")

    with caplog.at_level(logging.WARNING, logger="gateway.policy.engine"):
        first = policy.evaluate(decision_input(FREE_ID, viewer=Viewer(id="v-9", authenticated=True)))
        second = policy.evaluate(decision_input(FREE_ID, viewer=Viewer(id="v-9", authenticated=True)))

    assert first.effect == "allow"
    assert first.rule == "fallback"
    assert first.not_matched == (RuleMiss("adults-only-failing", "evaluation failed: KeyError"),)
    assert second.not_matched == first.not_matched
    assert error_count("adults-only-failing") == before + 2

    logged = [record for record in caplog.records if getattr(record, "event", None) == "policy.evaluation_failed"]
    assert len(logged) == 1
    assert logged[0].rule == "adults-only-failing"
    assert logged[0].error_type == "KeyError"
    assert logged[0].policy_version == policy.version
    assert logged[0].viewer != "v-9"
    assert logged[0].line == 3


def test_failing_deny_condition_does_not_deny(write_policy: Callable[..., Path]) -> None:
    policy = load_policy(
        write_policy(
            """
            version: 1
            rules:
              - name: bad-deny
                effect: deny
                when: '"x" in viewer.claims.missing_claim'
              - name: everyone
                effect: allow
                audiences: [video]
            """
        )
    )

    decision = policy.evaluate(decision_input(FREE_ID))

    assert decision.effect == "allow"
    assert decision.not_matched == (RuleMiss("bad-deny", "evaluation failed: KeyError"),)


def test_non_boolean_condition_does_not_match(write_policy: Callable[..., Path]) -> None:
    policy = load_policy(
        write_policy(
            """
            version: 1
            rules:
              - name: returns-string
                effect: allow
                when: 'viewer.claims.plan'
                audiences: [video]
            """
        )
    )
    before = error_count("returns-string")
    # The load-time dry run passes this condition: its sample viewers have no `plan` claim.
    viewer = Viewer(id="v1", authenticated=True, claims={"plan": "gold"})

    decision = policy.evaluate(decision_input(FREE_ID, viewer=viewer))

    assert decision.effect == "deny"
    assert decision.rule is None
    assert decision.not_matched == (RuleMiss("returns-string", "evaluation failed: NotBooleanError"),)
    assert error_count("returns-string") == before + 1


def test_uncounted_errors_for_shadow_use(write_policy: Callable[..., Path]) -> None:
    policy = load_policy(
        write_policy(
            """
            version: 1
            rules:
              - name: shadow-only-failing
                effect: allow
                when: 'viewer.claims.plan == "gold"'
                audiences: [video]
            """
        )
    )
    before = error_count("shadow-only-failing")

    decision = policy.evaluate(decision_input(FREE_ID), record_errors=False)

    assert decision.not_matched == (RuleMiss("shadow-only-failing", "evaluation failed: KeyError"),)
    assert error_count("shadow-only-failing") == before


def test_every_documented_variable_is_defined(write_policy: Callable[..., Path]) -> None:
    policy = load_policy(
        write_policy(
            f"""
            version: 1
            catalog:
              - playback_ids: [{PREMIUM_ID}]
                attributes: {{tier: premium}}
            rules:
              - {{name: anonymous-id-null, effect: deny, when: 'viewer.id == null'}}
              - {{name: not-authenticated, effect: deny, when: '!viewer.authenticated'}}
              - {{name: no-entitlements, effect: deny, when: 'viewer.entitlements == []'}}
              - {{name: no-claims, effect: deny, when: 'viewer.claims == {{}}'}}
              - {{name: unknown-id-has-attributes, effect: deny, when: 'content.tier == null'}}
              - {{name: playback-id, effect: deny, when: 'content.playback_id == "{UNKNOWN_ID}"'}}
              - name: default-audiences
                effect: deny
                when: 'request.audiences == ["video", "thumbnail", "storyboard"]'

              - {{name: empty-country, effect: deny, when: 'request.country == ""'}}
              - {{name: null-client, effect: deny, when: 'request.client == null'}}
              - {{name: null-origin, effect: deny, when: 'request.origin == null'}}
              - {{name: now-is-timestamp, effect: deny, when: 'now > timestamp("2026-01-01T00:00:00Z")'}}
            """
        )
    )

    decision = policy.evaluate(decision_input(UNKNOWN_ID, country=""))

    assert decision.not_matched == ()
    assert decision.matched == tuple(rule.name for rule in policy.rules)


def test_variables_carry_request_values(write_policy: Callable[..., Path]) -> None:
    policy = load_policy(
        write_policy(
            """
            version: 1
            rules:
              - name: everything-set
                effect: allow
                when: >-
                  viewer.id == "viewer-7" && viewer.authenticated && "gold" in viewer.entitlements
                  && viewer.claims.plan == "family" && request.audiences == ["thumbnail"]
                  && request.country == "CA" && request.client == "tv-app"
                  && request.origin == "https://watch.example" && now.getFullYear() == 2026
                  && content.playback_id.size() > 10
                audiences: [thumbnail]
            """
        )
    )
    viewer = Viewer(id="viewer-7", authenticated=True, entitlements=("gold",), claims={"plan": "family"})

    decision = policy.evaluate(
        decision_input(
            FREE_ID,
            viewer=viewer,
            audiences=("thumbnail",),
            country="CA",
            client="tv-app",
            origin="https://watch.example",
        )
    )

    assert decision.effect == "allow"
    assert decision.rule == "everything-set"


def test_naive_now_is_read_as_utc(write_policy: Callable[..., Path]) -> None:
    policy = load_policy(
        write_policy(
            """
            version: 1
            rules:
              - name: after-noon
                effect: allow
                when: 'now >= timestamp("2026-06-01T12:00:00Z")'
                audiences: [video]
            """
        )
    )

    decision = policy.evaluate(decision_input(FREE_ID, now=datetime(2026, 6, 1, 12, 0)))

    assert decision.rule == "after-noon"
