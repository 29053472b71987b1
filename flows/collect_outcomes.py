"""``collect_outcomes``: record what happened to the members of a quarter's campaigns (daily)."""

from __future__ import annotations

from typing import Any

from prefect import flow

from activation.settings import get_settings
from connectors.registry import check_destination
from flows.schedule import AsOf, OptionalDestination, run_as_of, run_name
from flows.tasks import collect_outcomes_task


@flow(
    name="collect-outcomes",
    flow_run_name=run_name("collect-outcomes"),
    persist_result=False,
    timeout_seconds=2 * 3600,
)
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
    settings = get_settings()
    as_of = run_as_of(as_of, settings)
    scheme = scheme or settings.default_scheme
    if destination:
        check_destination(destination, settings)
    collected = collect_outcomes_task(as_of, scheme, window_days, destination)
    return {"as_of": as_of.isoformat(), "scheme": scheme, **collected}
