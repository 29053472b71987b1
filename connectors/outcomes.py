"""Reading outcomes back: the per-member events of a plan's campaigns, from the destination that sent them."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import select
from sqlalchemy.engine import Engine

from activation.settings import Settings
from activation.tables import campaigns
from connectors.base import Destination, OutcomeEvent


def read_outcomes(
    engine: Engine,
    settings: Settings,
    destination: Destination,
    as_of: date,
    scheme: str | None = None,
    *,
    since: datetime | None = None,
) -> list[OutcomeEvent]:
    """Per-member events (sent, opened, clicked, unsubscribed, bounced) of every campaign of the plan.

    ``destination`` is built by the caller, who closes it. The local outbox returns no events.
    """
    scheme = scheme or settings.default_scheme
    with engine.connect() as conn:
        ids = [
            r[0]
            for r in conn.execute(
                select(campaigns.c.campaign_id).where(
                    campaigns.c.as_of == as_of, campaigns.c.scheme == scheme
                )
            )
        ]
    return list(destination.read_outcomes(engine, ids, since))
