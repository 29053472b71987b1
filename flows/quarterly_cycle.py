"""``quarterly_cycle``: resegment → activate → collect outcomes → ROI report, in one run."""

from __future__ import annotations

from datetime import date
from typing import Any

from prefect import flow

from activation.settings import get_settings
from connectors.registry import check_destination
from flows.activate import activate
from flows.collect_outcomes import collect_outcomes
from flows.dates import resolve_as_of
from flows.resegment import resegment
from flows.roi_report import roi_report


@flow(name="quarterly-cycle", persist_result=False, timeout_seconds=12 * 3600)
def quarterly_cycle(
    as_of: date | None = None,
    scheme: str | None = None,
    destination: str = "outbox",
    send: bool = False,
    force: bool = False,
    report: bool = True,
    window_days: int | None = None,
    report_out: str | None = None,
) -> dict[str, Any]:
    """The whole quarter as one run, each step a subflow (so each has its own state and artifacts).

    On a past ``as_of`` this is a backtest: the outcomes are the orders that really followed. With
    ``report=False`` it stops after activation (outcomes are collected later by the daily flow).
    """
    settings = get_settings()
    as_of = resolve_as_of(as_of, settings)
    scheme = scheme or settings.default_scheme
    check_destination(destination, settings)
    result: dict[str, Any] = {"as_of": as_of.isoformat(), "scheme": scheme}
    result["resegment"] = resegment(as_of=as_of, scheme=scheme)
    result["activate"] = activate(as_of=as_of, scheme=scheme, destination=destination, send=send, force=force)
    if report:
        result["outcomes"] = collect_outcomes(
            as_of=as_of, scheme=scheme, window_days=window_days, destination=destination
        )
        result["roi"] = roi_report(as_of=as_of, scheme=scheme, window_days=window_days, out=report_out)
    return result
