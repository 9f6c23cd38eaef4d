"""Shared values for policy tests: playback ids, a fixed time and a DecisionInput builder."""

from __future__ import annotations

from datetime import UTC, datetime

from gateway.auth.principal import Viewer
from gateway.policy.model import DecisionInput

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
FREE_ID = "FreeClip0aB1cD2eF3gH4iJ5kL6mN7oP8qR9sT0uV1w"
PREMIUM_ID = "PremiumFilm0aB1cD2eF3gH4iJ5kL6mN7oP8qR9sT0u"
UNKNOWN_ID = "NotInCatalog0aB1cD2eF3gH4iJ5kL6mN7oP8qR9sT0"


def decision_input(
    playback_id: str = FREE_ID,
    *,
    viewer: Viewer | None = None,
    audiences: tuple[str, ...] | None = None,
    country: str = "US",
    client: str | None = None,
    origin: str | None = None,
    now: datetime = NOW,
) -> DecisionInput:
    return DecisionInput(
        viewer=viewer or Viewer(),
        playback_id=playback_id,
        audiences=audiences,
        now=now,
        country=country,
        client=client,
        origin=origin,
    )
