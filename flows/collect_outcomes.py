"""``collect_outcomes``: record what happened to the members of a quarter's campaigns (daily)."""

from __future__ import annotations

from typing import Any

from flows.schedule import AsOf, OptionalDestination, period_flow, run_parameters
from flows.tasks import collect_outcomes_task


@period_flow("collect-outcomes", hours=2)
def collect_outcomes(
    as_of: AsOf = None,
    scheme: str | None = None,
    window_days: int | None = None,
    destination: OptionalDestination = None,
) -> dict[str, Any]:
    """Collect sends/opens/clicks from the destination and conversions from the warehouse.

    Idempotent: collecting twice records nothing twice. ``as_of`` picks the campaigns (default: those
    of the end of the last full quarter, i.e. the ones currently live).

    Args:
        as_of: the campaigns' snapshot date, YYYY-MM-DD (default: the end of the last full quarter before the
            run's scheduled start, in ACTIVATION_SCHEDULE_TIMEZONE).
        scheme: segmentation scheme, e.g. rfm11 (default: the ``default_scheme`` setting).
        window_days: attribution window in days (default: ACTIVATION_ATTRIBUTION_WINDOW_DAYS).
        destination: also read opens, clicks and unsubscribes from this destination (outbox, mailchimp or
            hubspot); empty: conversions from the warehouse only.
    """
    as_of, scheme = run_parameters(as_of, scheme, destination)
    collected = collect_outcomes_task(as_of, scheme, window_days, destination)
    return {"as_of": as_of.isoformat(), "scheme": scheme, **collected}
