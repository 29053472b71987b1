"""``quarterly_cycle``: resegment → activate → collect outcomes → ROI report, in one run."""

from __future__ import annotations

from typing import Any

from flows.activate import activate
from flows.collect_outcomes import collect_outcomes
from flows.resegment import resegment
from flows.roi_report import roi_report
from flows.schedule import AsOf, Destination, earlier_run_with_this_name, period_flow, run_parameters, skipped


@period_flow("quarterly-cycle", hours=12)
def quarterly_cycle(
    as_of: AsOf = None,
    scheme: str | None = None,
    destination: Destination = "outbox",
    send: bool = False,
    force: bool = False,
    report: bool = True,
    window_days: int | None = None,
    report_out: str | None = None,
) -> dict[str, Any]:
    """The whole quarter as one run, each step a subflow (so each has its own state and artifacts).

    On a past ``as_of`` this is a backtest: the outcomes are the orders that really followed. With
    ``report=False`` it stops after activation (outcomes are collected later by the daily flow): that is
    the quarterly deployment, one process for both steps, so they never contend for a DuckDB file. A
    scheduled run whose quarter already has a completed or running cycle steps aside.

    Args:
        as_of: the snapshot date, YYYY-MM-DD (default: the end of the last full quarter before the run's
            scheduled start, in ACTIVATION_SCHEDULE_TIMEZONE).
        scheme: segmentation scheme, e.g. rfm11 (default: the ``default_scheme`` setting).
        destination: where the audiences go: outbox (files, no credentials), mailchimp or hubspot.
        send: send the campaigns instead of leaving drafts.
        force: override the sync guardrails.
        report: also collect outcomes and write the ROI report in this run (a backtest on a past as_of).
        window_days: attribution window in days (default: ACTIVATION_ATTRIBUTION_WINDOW_DAYS).
        report_out: HTML file of the ROI report (default: under the data folder).
    """
    as_of, scheme = run_parameters(as_of, scheme, destination)
    if (other := earlier_run_with_this_name()) is not None:
        return skipped("quarterly-cycle", other)
    result: dict[str, Any] = {"as_of": as_of.isoformat(), "scheme": scheme}
    result["resegment"] = resegment(as_of=as_of, scheme=scheme)
    result["activate"] = activate(as_of=as_of, scheme=scheme, destination=destination, send=send, force=force)
    if report:
        result["outcomes"] = collect_outcomes(
            as_of=as_of, scheme=scheme, window_days=window_days, destination=destination
        )
        result["roi"] = roi_report(as_of=as_of, scheme=scheme, window_days=window_days, out=report_out)
    return result
