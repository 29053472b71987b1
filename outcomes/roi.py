"""ROI per segment: treated vs holdout, incremental conversion and revenue with 95 % intervals,
offer cost, incremental profit and ROI.

Conversions and revenue are aggregated in the warehouse with the attribution rule of
:mod:`outcomes.ledger` (the same SQL the ledger is filled with, so the report honours
``--window-days`` and is always current); email events (sent, opened, …) come from the ledger.

Definitions (one row per campaign = per segment of the as_of + scheme):

* ``treated`` = members of the treatment group (intent to treat: every planned member counts as
  reached, which is also how a backtest on transaction-only data works); ``holdout`` = holdout members.
* conversion rate = converters / members of the group; revenue per member = revenue / members
  (non-converters count as 0).
* ``incremental_conversion`` = treated rate − holdout rate, 95 % CI by Newcombe's hybrid score
  method (from the two Wilson intervals).
* ``incremental_revenue_per_member`` = treated − holdout revenue per member, 95 % CI by the
  randomisation interval (:func:`outcomes.stats.randomisation_diff_interval`) on per-member revenue
  incl. zeros; its level is checked by simulated null campaigns (``tests/test_calibration.py``).
* ``offer_cost`` = discounts actually redeemed by treated members (coupon orders) +
  ``cost_per_send`` × treated.
* ``incremental_profit`` = incremental revenue per member × treated × ``gross_margin`` − offer cost,
  95 % CI = margin × treated × the revenue interval − offer cost: the offer cost is what was actually
  redeemed and sent (observed, not estimated), so the uncertainty is the counterfactual revenue.
* ``roi`` = incremental profit / offer cost (empty when the cost is 0).

Without a holdout no lift is claimed (``status`` = ``n/a (no holdout)``, lift columns empty); when
either group is smaller than ``min_group_size``, fewer than :data:`MIN_BUYERS` buyers are expected in
the smaller group, or a group has no buyer at all, the row is flagged ``inconclusive`` with the reason (the intervals stay, for the record, but nothing is
called significant).
"""

from __future__ import annotations

import math
from datetime import date, datetime
from typing import Any

import pandas as pd
from sqlalchemy import case, cast, func, select
from sqlalchemy.engine import Connection, Engine

from activation.settings import Settings
from activation.tables import Double, campaign_members, campaign_outcomes, rfm_snapshots
from campaigns.holdout import conversion_mde
from campaigns.policy import segment_order
from outcomes.ledger import (
    EMAIL_EVENTS,
    CampaignWindow,
    campaign_windows,
    check_orders_source,
    drop_attribution,
    incomplete_warning,
    is_backtest,
    materialise_attribution,
    orders_end,
    resolve_window,
)
from outcomes.stats import (
    MeanStats,
    cuped_diff_intervals,
    holm_adjust,
    mean_interval,
    newcombe_diff_interval,
    randomisation_diff_interval,
    randomisation_p_value,
    two_proportion_p_value,
    wilson_interval,
)

CONVERSION_CI_METHOD = (
    "95 % interval for the difference of two proportions: Newcombe's hybrid score interval "
    "(Newcombe 1998, method 10), built from the Wilson score intervals of each group"
)
REVENUE_CI_METHOD = (
    "95 % interval for the difference of mean revenue (and profit) per member, non-buyers counting as 0: "
    "randomisation interval (t approximation of the permutation distribution of the difference of means, "
    "pooled within-group variance, n₁ + n₂ − 2 degrees of freedom; Fisher 1935, Pitman 1937)"
)
CONVERSION_METHOD_SHORT = "Newcombe hybrid score"
REVENUE_METHOD_SHORT = "randomisation (pooled t)"
CUPED_METHOD = (
    "CUPED (Deng, Xu, Kohavi & Walker 2013): each member's pre-period recency (days), ln(1 + frequency) "
    "and ln(1 + monetary) from the snapshot as covariates, θ fitted within groups, the randomisation "
    "interval of the residuals"
)
COVARIATES = ("recency_days", "ln(1 + frequency)", "ln(1 + monetary)")
MIN_BUYERS = 5
"""Fewer buyers than this expected in the smaller group (pooled buyers × its share): the row is
inconclusive (too few non-zero values to say anything about a heavy-tailed mean)."""

CUPED_COLUMNS = [
    "cuped_incremental_conversion",
    "cuped_incremental_conversion_ci_low",
    "cuped_incremental_conversion_ci_high",
    "cuped_conversion_variance_reduction",
    "cuped_incremental_revenue_per_member",
    "cuped_incremental_revenue_per_member_ci_low",
    "cuped_incremental_revenue_per_member_ci_high",
    "cuped_revenue_variance_reduction",
    "cuped_incremental_profit",
    "cuped_incremental_profit_ci_low",
    "cuped_incremental_profit_ci_high",
]

CSV_COLUMNS = [
    "segment",
    "treated",
    "holdout",
    "treated_conversion_rate",
    "holdout_conversion_rate",
    "incremental_conversion",
    "incremental_conversion_ci_low",
    "incremental_conversion_ci_high",
    "treated_revenue_per_member",
    "holdout_revenue_per_member",
    "offer_cost",
    "roi",
    "roi_ci_low",
    "roi_ci_high",
    "status",
    "campaign_id",
    "campaign_version",
    "offer_type",
    "treated_conversions",
    "holdout_conversions",
    "incremental_revenue_per_member",
    "incremental_revenue_per_member_ci_low",
    "incremental_revenue_per_member_ci_high",
    "incremental_profit_ci_low",
    "incremental_profit_ci_high",
    "conversion_ci_method",
    "revenue_ci_method",
    "conversion_mde",
    "conversion_p_value",
    "conversion_p_holm",
    "conversion_significant_holm",
    "revenue_p_value",
    "revenue_p_holm",
    "revenue_significant_holm",
    *CUPED_COLUMNS,
    "treated_revenue",
    "holdout_revenue",
    "coupons_redeemed",
    "discount_redeemed",
    "send_cost",
    "incremental_revenue",
    "incremental_profit",
    "sent",
    "opened",
    "clicked",
    "unsubscribed",
    "bounced",
    "open_rate",
    "click_rate",
    "unsubscribe_rate",
    "unknown_coupon_orders",
]

STATUS_OK = "ok"
STATUS_NO_HOLDOUT = "n/a (no holdout)"
STATUS_EMPTY = "n/a (no members)"


def _group_stats(
    conn: Connection, settings: Settings, windows: list[CampaignWindow], as_of: date, scheme: str
) -> dict[tuple[str, str], dict[str, float]]:
    """(campaign_id, group) → members, converters, revenue sums, discounts, redemptions, and the
    covariate sums CUPED needs (Σx, Σx·revenue, Σx·converted, Σx·xᵀ of :data:`COVARIATES`), in one
    statement."""
    attr = materialise_attribution(conn, settings, windows)
    m = campaign_members.alias("m")
    snap = rfm_snapshots.alias("s")
    rev = func.coalesce(cast(attr.c.revenue, Double), 0.0)
    conv = case((attr.c.customer_id.is_not(None), 1.0), else_=0.0)
    xs = [
        func.coalesce(cast(snap.c.recency_days, Double), 0.0),
        func.ln(1.0 + func.coalesce(cast(snap.c.frequency, Double), 0.0)),
        func.ln(1.0 + func.greatest(func.coalesce(cast(snap.c.monetary, Double), 0.0), 0.0)),
    ]
    cov_sums = [func.coalesce(func.sum(x), 0.0).label(f"x{i}") for i, x in enumerate(xs)]
    cov_sums += [func.coalesce(func.sum(x * rev), 0.0).label(f"xy{i}") for i, x in enumerate(xs)]
    cov_sums += [func.coalesce(func.sum(x * conv), 0.0).label(f"xc{i}") for i, x in enumerate(xs)]
    cov_sums += [
        func.coalesce(func.sum(xs[i] * xs[j]), 0.0).label(f"xx{i}{j}")
        for i in range(len(xs))
        for j in range(i, len(xs))
    ]
    stmt = (
        select(
            m.c.campaign_id,
            m.c.member_group,
            func.count().label("n"),
            func.count(attr.c.customer_id).label("converters"),
            func.coalesce(func.sum(rev), 0.0).label("revenue"),
            func.coalesce(func.sum(rev * rev), 0.0).label("revenue_sq"),
            func.coalesce(func.sum(attr.c.discount), 0.0).label("discount"),
            func.count(attr.c.coupon_code).label("redeemed"),
            func.coalesce(func.sum(attr.c.unknown_coupon_orders), 0).label("unknown"),
            *cov_sums,
        )
        .select_from(
            m.outerjoin(
                attr, (attr.c.campaign_id == m.c.campaign_id) & (attr.c.customer_id == m.c.customer_id)
            ).outerjoin(
                snap,
                (snap.c.customer_id == m.c.customer_id) & (snap.c.as_of == as_of) & (snap.c.scheme == scheme),
            )
        )
        .where(m.c.campaign_id.in_([w.campaign_id for w in windows]))
        .group_by(m.c.campaign_id, m.c.member_group)
    )
    out: dict[tuple[str, str], dict[str, float]] = {}
    rows = conn.execute(stmt).mappings().all()
    drop_attribution(conn, attr)
    for row in rows:
        out[(str(row["campaign_id"]), str(row["member_group"]))] = {
            k: (float(v) if v is not None else 0.0)
            for k, v in row.items()
            if k not in ("campaign_id", "member_group")
        }
    return out


def _event_counts(conn: Connection, campaign_ids: list[str]) -> dict[tuple[str, str], int]:
    """(campaign_id, event) → distinct treated members with that event, from the ledger."""
    co, m = campaign_outcomes, campaign_members
    stmt = (
        select(co.c.campaign_id, co.c.event, func.count(co.c.customer_id.distinct()))
        .select_from(
            co.join(m, (m.c.campaign_id == co.c.campaign_id) & (m.c.customer_id == co.c.customer_id))
        )
        .where(
            co.c.campaign_id.in_(campaign_ids), co.c.event.in_(EMAIL_EVENTS), m.c.member_group == "treatment"
        )
        .group_by(co.c.campaign_id, co.c.event)
    )
    return {(c, e): int(n) for c, e, n in conn.execute(stmt)}


def _div(a: float, b: float) -> float:
    return a / b if b else math.nan


def _covariate_sums(g: dict[str, float], y: str) -> tuple[list[float], list[float], list[list[float]]]:
    k = len(COVARIATES)
    sx = [g.get(f"x{i}", 0.0) for i in range(k)]
    sxy = [g.get(f"{y}{i}", 0.0) for i in range(k)]
    sxx = [[g.get(f"xx{min(i, j)}{max(i, j)}", 0.0) for j in range(k)] for i in range(k)]
    return sx, sxy, sxx


def cuped_row(t: dict[str, float], h: dict[str, float], margin: float, offer_cost: float) -> dict[str, float]:
    """CUPED-adjusted conversion, revenue and profit lift with intervals and variance reductions."""
    nt, nh = t.get("n", 0.0), h.get("n", 0.0)
    out = dict.fromkeys(CUPED_COLUMNS, math.nan)
    if nt + nh < len(COVARIATES) + 3:
        return out
    for name, y, ysq, key in (
        ("conversion", "converters", "converters", "xc"),
        ("revenue", "revenue", "revenue_sq", "xy"),
    ):
        d, lo, hi, red = cuped_diff_intervals(
            nt, t.get(y, 0.0), t.get(ysq, 0.0), *_covariate_sums(t, key),
            nh, h.get(y, 0.0), h.get(ysq, 0.0), *_covariate_sums(h, key),
        )  # fmt: skip
        metric = "incremental_conversion" if name == "conversion" else "incremental_revenue_per_member"
        out[f"cuped_{metric}"], out[f"cuped_{metric}_ci_low"], out[f"cuped_{metric}_ci_high"] = (
            float(d), float(lo), float(hi))  # fmt: skip
        out[f"cuped_{name}_variance_reduction"] = float(red)
    for suffix in ("", "_ci_low", "_ci_high"):
        out[f"cuped_incremental_profit{suffix}"] = (
            out[f"cuped_incremental_revenue_per_member{suffix}"] * nt * margin - offer_cost
        )
    return out


MULTIPLE_COMPARISONS_METHOD = (
    "Holm's step-down adjustment (Holm 1979) across the segments of this report with a lift, separately "
    "for conversion and for revenue per member: a segment is significant when its adjusted p-value is below "
    "0.05 and its row is ok, which keeps the chance of any false claim in the report at 5 %"
)


def apply_holm(rows: list[dict[str, Any]]) -> None:
    """Add ``*_p_holm`` and ``*_significant_holm`` to every row (Holm across the rows of one report)."""
    for metric in ("conversion", "revenue"):
        adjusted = holm_adjust([float(r[f"{metric}_p_value"]) for r in rows])
        for r, q in zip(rows, adjusted, strict=True):
            r[f"{metric}_p_holm"] = q
            r[f"{metric}_significant_holm"] = bool(
                r["status"] == STATUS_OK and not math.isnan(q) and q < 0.05
            )


def mde_columns(nt: int, nh: int, buyers: int) -> dict[str, float]:
    """The minimum detectable incremental conversion (95 %, 80 % power) of the groups this segment
    actually has, at its pooled conversion rate (:func:`campaigns.holdout.conversion_mde`)."""
    n = nt + nh
    if nt <= 0 or nh <= 0:
        return {"conversion_mde": math.nan}
    return {"conversion_mde": conversion_mde(nt, nh, buyers / n)}


def row_status(settings: Settings, nt: int, nh: int, xt: int, xh: int) -> str:
    """``ok``, ``n/a (…)``, or ``inconclusive (reason)`` for a segment's group sizes and buyers."""
    if nt == 0 and nh == 0:
        return STATUS_EMPTY
    if nh == 0 or nt == 0:
        return STATUS_NO_HOLDOUT
    reasons = []
    if min(nt, nh) < settings.min_group_size:
        reasons.append(f"group < {settings.min_group_size}")
    # The gate looks at the pooled buyers only (what the split does not decide), so it keeps the
    # interval's level on the rows it lets through; a gate on each group's own buyers would not.
    expected = (xt + xh) * min(nt, nh) / (nt + nh)
    if expected < MIN_BUYERS:
        reasons.append(f"{expected:.1f} buyers expected in the smaller group < {MIN_BUYERS}")
    elif xh == 0 or xt == 0:
        reasons.append(f"no buyer in the {'holdout' if xh == 0 else 'treated'} group")
    return f"inconclusive ({'; '.join(reasons)})" if reasons else STATUS_OK


def _group_sizes(nt: int, nh: int, xt: int, xh: int) -> dict[str, Any]:
    """Members and converters of the treated and the holdout group, and their conversion rates."""
    return {
        "treated": nt,
        "holdout": nh,
        "treated_conversions": xt,
        "holdout_conversions": xh,
        "treated_conversion_rate": _div(xt, nt),
        "holdout_conversion_rate": _div(xh, nh),
    }


Interval = tuple[float, float, float]
NO_INTERVAL: Interval = (math.nan, math.nan, math.nan)


def _conversion_columns(nt: int, nh: int, xt: int, xh: int, diff: Interval) -> dict[str, Any]:
    """Group sizes and conversion rates, each group's Wilson interval and the incremental conversion."""
    tl, th = wilson_interval(xt, nt)
    hl, hh = wilson_interval(xh, nh)
    return {
        **_group_sizes(nt, nh, xt, xh),
        "treated_conversion_ci_low": tl,
        "treated_conversion_ci_high": th,
        "holdout_conversion_ci_low": hl,
        "holdout_conversion_ci_high": hh,
        "incremental_conversion": diff[0],
        "incremental_conversion_ci_low": diff[1],
        "incremental_conversion_ci_high": diff[2],
    }


def _revenue_columns(t_stats: MeanStats, h_stats: MeanStats, diff: Interval) -> dict[str, float]:
    """Revenue and revenue per member of each group with its t interval, and the incremental revenue
    per member."""
    trl, trh = mean_interval(t_stats)
    hrl, hrh = mean_interval(h_stats)
    return {
        "treated_revenue": t_stats.total,
        "holdout_revenue": h_stats.total,
        "treated_revenue_per_member": t_stats.mean,
        "holdout_revenue_per_member": h_stats.mean,
        "treated_revenue_per_member_ci_low": trl,
        "treated_revenue_per_member_ci_high": trh,
        "holdout_revenue_per_member_ci_low": hrl,
        "holdout_revenue_per_member_ci_high": hrh,
        "incremental_revenue_per_member": diff[0],
        "incremental_revenue_per_member_ci_low": diff[1],
        "incremental_revenue_per_member_ci_high": diff[2],
    }


def _profit_columns(
    settings: Settings, t: dict[str, float], h: dict[str, float], nt: int, revenue_diff: Interval, lifts: bool
) -> dict[str, Any]:
    """Offer cost (redeemed discounts + sends), incremental revenue, profit with its interval, the
    CUPED columns and the ROI; the lift columns are NaN when a group is empty (``lifts`` false)."""
    discount = float(t.get("discount", 0.0))
    send_cost = settings.cost_per_send * nt
    offer_cost = discount + send_cost
    margin = settings.gross_margin
    rd, rdl, rdh = revenue_diff
    profit = rd * nt * margin - offer_cost
    return {
        "coupons_redeemed": int(t.get("redeemed", 0)),
        "discount_redeemed": discount,
        "send_cost": send_cost,
        "offer_cost": offer_cost,
        "gross_margin": margin,
        "incremental_revenue": rd * nt,
        "incremental_profit": profit,
        # the offer cost is observed, not estimated: the uncertainty is the counterfactual revenue
        "incremental_profit_ci_low": rdl * nt * margin - offer_cost,
        "incremental_profit_ci_high": rdh * nt * margin - offer_cost,
        **(cuped_row(t, h, margin, offer_cost) if lifts else dict.fromkeys(CUPED_COLUMNS, math.nan)),
        "roi": profit / offer_cost if offer_cost > 0 else math.nan,
        # the cost is observed: the ROI interval is the profit interval over it
        "roi_ci_low": (rdl * nt * margin - offer_cost) / offer_cost if offer_cost > 0 else math.nan,
        "roi_ci_high": (rdh * nt * margin - offer_cost) / offer_cost if offer_cost > 0 else math.nan,
    }


def _significance_columns(
    status: str,
    counts: tuple[int, int, int, int],
    t_stats: MeanStats,
    h_stats: MeanStats,
    conversion_diff: Interval,
    revenue_diff: Interval,
) -> dict[str, Any]:
    """Status, interval methods, significance by interval, p-values and the MDE; ``counts`` is
    (treated, holdout, treated buyers, holdout buyers)."""
    nt, nh, xt, xh = counts
    _, dl, dh = conversion_diff
    _, rdl, rdh = revenue_diff
    return {
        "status": status,
        "conversion_ci_method": CONVERSION_METHOD_SHORT,
        "revenue_ci_method": REVENUE_METHOD_SHORT,
        "significant": bool(status == STATUS_OK and not math.isnan(dl) and (dl > 0 or dh < 0)),
        "revenue_significant": bool(status == STATUS_OK and not math.isnan(rdl) and (rdl > 0 or rdh < 0)),
        "conversion_p_value": two_proportion_p_value(xt, nt, xh, nh),
        **mde_columns(nt, nh, xt + xh),
        "revenue_p_value": randomisation_p_value(t_stats, h_stats),
    }


def _event_columns(events: dict[str, int], nt: int) -> dict[str, Any]:
    """Email event counts of the treated members and their rates per send (per treated member when
    nothing was sent; NaN without any event)."""
    sent = events.get("sent", 0)
    has_events = any(events.get(e, 0) for e in EMAIL_EVENTS)
    reached = sent if sent else nt

    def rate(event: str) -> float:
        return _div(events.get(event, 0), reached) if has_events else math.nan

    return {
        "sent": sent,
        "opened": events.get("opened", 0),
        "clicked": events.get("clicked", 0),
        "unsubscribed": events.get("unsubscribed", 0),
        "bounced": events.get("bounced", 0),
        "open_rate": rate("opened"),
        "click_rate": rate("clicked"),
        "unsubscribe_rate": rate("unsubscribed"),
    }


def roi_row(
    settings: Settings,
    w: CampaignWindow,
    groups: dict[str, dict[str, float]],
    events: dict[str, int],
) -> dict[str, Any]:
    """One ROI row from the group aggregates of a campaign."""
    t = groups.get("treatment", {})
    h = groups.get("holdout", {})
    nt, nh = int(t.get("n", 0)), int(h.get("n", 0))
    xt, xh = int(t.get("converters", 0)), int(h.get("converters", 0))
    t_stats = MeanStats(nt, t.get("revenue", 0.0), t.get("revenue_sq", 0.0))
    h_stats = MeanStats(nh, h.get("revenue", 0.0), h.get("revenue_sq", 0.0))
    lifts = nt > 0 and nh > 0
    conversion_diff = newcombe_diff_interval(xt, nt, xh, nh) if lifts else NO_INTERVAL
    revenue_diff = randomisation_diff_interval(t_stats, h_stats) if lifts else NO_INTERVAL
    status = row_status(settings, nt, nh, xt, xh)
    return {
        "segment": w.segment,
        "campaign_id": w.campaign_id,
        "campaign_version": w.version,
        "offer_type": w.offer_type,
        "send_time": w.start,
        **_conversion_columns(nt, nh, xt, xh, conversion_diff),
        **_revenue_columns(t_stats, h_stats, revenue_diff),
        **_profit_columns(settings, t, h, nt, revenue_diff, lifts),
        **_significance_columns(status, (nt, nh, xt, xh), t_stats, h_stats, conversion_diff, revenue_diff),
        **_event_columns(events, nt),
        "unknown_coupon_orders": int(t.get("unknown", 0) + h.get("unknown", 0)),
        "_treated_revenue_sq": t_stats.total_sq,
        "_holdout_revenue_sq": h_stats.total_sq,
    }


def _segment_rows(
    conn: Connection, settings: Settings, windows: list[CampaignWindow], as_of: date, scheme: str
) -> list[dict[str, Any]]:
    """One :func:`roi_row` per campaign window, from one group-aggregate and one event query."""
    events = _event_counts(conn, [w.campaign_id for w in windows])
    stats = _group_stats(conn, settings, windows, as_of, scheme)
    return [
        roi_row(
            settings,
            w,
            {g: stats[(w.campaign_id, g)] for g in ("treatment", "holdout") if (w.campaign_id, g) in stats},
            {e: events.get((w.campaign_id, e), 0) for e in EMAIL_EVENTS},
        )
        for w in windows
    ]


def _snapshot_sizes(conn: Connection, as_of: date, scheme: str) -> dict[str, int]:
    """Segment → customers in the snapshot of ``as_of`` + ``scheme``."""
    snap = rfm_snapshots.c
    return {
        str(seg): int(n)
        for seg, n in conn.execute(
            select(snap.segment, func.count())
            .where(snap.as_of == as_of, snap.scheme == scheme)
            .group_by(snap.segment)
        )
    }


def _status_notes(rows: list[dict[str, Any]]) -> list[str]:
    """A note for every row without a claimable lift: no members, no holdout, or inconclusive."""
    notes: list[str] = []
    for r in rows:
        if r["status"] == STATUS_EMPTY:
            notes.append(f"segment {r['segment']!r} has no members: nothing to measure")
        elif r["status"] == STATUS_NO_HOLDOUT:
            notes.append(f"segment {r['segment']!r} has no holdout: no lift is claimed (n/a)")
        elif r["status"].startswith("inconclusive"):
            notes.append(
                f"segment {r['segment']!r}: {r['treated']} treated / {r['holdout']} holdout members, "
                f"{r['treated_conversions']} / {r['holdout_conversions']} buyers: {r['status']}"
            )
    return notes


def _coverage_notes(
    settings: Settings,
    scheme: str,
    rows: list[dict[str, Any]],
    snapshot_sizes: dict[str, int],
    df: pd.DataFrame,
) -> list[str]:
    """Notes on what the rows do not cover: snapshot segments without a campaign, and orders whose
    coupon code is not the member's own."""
    notes: list[str] = []
    planned = {r["segment"] for r in rows}
    unplanned = [seg for seg in segment_order(settings, scheme, list(snapshot_sizes)) if seg not in planned]
    if unplanned:
        notes.append(
            "segments of the snapshot without a campaign (suppressed or inactive in the policy): "
            + ", ".join(f"{seg} ({snapshot_sizes[seg]:,} customers)" for seg in unplanned)
        )
    unknown = int(df["unknown_coupon_orders"].sum()) if len(df) else 0
    if unknown:
        notes.append(
            f"{unknown} orders in the attribution window carry a coupon code that is not the member's own "
            "(unknown or someone else's): counted as revenue, ignored for redemption and offer cost"
        )
    return notes


def compute_roi(
    engine: Engine, settings: Settings, as_of: date, scheme: str | None, window_days: int | None = None
) -> pd.DataFrame:
    """The ROI table of the current campaigns of ``as_of`` + ``scheme``, one row per segment.

    Columns include every column of the report CSV (:data:`CSV_COLUMNS`) plus per-group CIs for the
    charts. ``df.attrs`` carries ``as_of``, ``scheme``, ``window_days``, ``backtest``, ``data_end``,
    ``warnings`` and ``notes``.

    Raises:
        NotFoundError: no campaign for that as_of and scheme (run ``activation plan`` first).
    """
    scheme = scheme or settings.default_scheme
    window = resolve_window(settings, window_days)
    check_orders_source(engine, settings)
    with engine.connect() as conn:
        windows = campaign_windows(conn, settings, as_of, scheme, window)
        rows = _segment_rows(conn, settings, windows, as_of, scheme)
        backtest = is_backtest(conn, [w.campaign_id for w in windows])
        data_end = orders_end(conn, settings)
        snapshot_sizes = _snapshot_sizes(conn, as_of, scheme)
    order = segment_order(settings, scheme, [r["segment"] for r in rows])
    rows.sort(key=lambda r: (order.index(r["segment"]), r["campaign_id"]))
    apply_holm(rows)
    df = pd.DataFrame(rows)
    incomplete = incomplete_warning(windows, data_end)
    df.attrs.update(
        {
            "as_of": as_of,
            "scheme": scheme,
            "window_days": window,
            "backtest": backtest,
            "data_end": data_end,
            "warnings": [incomplete] if incomplete else [],
            "notes": _status_notes(rows) + _coverage_notes(settings, scheme, rows, snapshot_sizes, df),
            "gross_margin": settings.gross_margin,
            "cost_per_send": settings.cost_per_send,
            "min_group_size": settings.min_group_size,
            "excluded_statuses": list(settings.excluded_statuses),
            "generated_at": datetime.now().replace(microsecond=0),
        }
    )
    return df


def roi_totals(df: pd.DataFrame, settings: Settings) -> dict[str, Any]:
    """All segments pooled (members, conversions, revenue, cost, profit, ROI) with the same methods."""
    if df.empty:
        return {}
    both = df[(df["treated"] > 0) & (df["holdout"] > 0)]
    nt, nh = int(df["treated"].sum()), int(df["holdout"].sum())
    xt, xh = int(df["treated_conversions"].sum()), int(df["holdout_conversions"].sum())
    cost = float(df["offer_cost"].sum())
    out: dict[str, Any] = {
        "segment": "All segments",
        **_group_sizes(nt, nh, xt, xh),
        "treated_revenue_per_member": _div(float(df["treated_revenue"].sum()), nt),
        "holdout_revenue_per_member": _div(float(df["holdout_revenue"].sum()), nh),
        "offer_cost": cost,
    }
    # lift pooled over segments that have both groups, summing each segment's incremental profit
    profit = float(both["incremental_profit"].sum()) if len(both) else math.nan
    out["incremental_profit"] = profit
    out["roi"] = (
        profit / float(both["offer_cost"].sum()) if len(both) and both["offer_cost"].sum() > 0 else math.nan
    )
    return out


def _fmt(value: Any, kind: str = "num") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if kind == "pct":
        return f"{value * 100:.2f} %"
    if kind == "pp":
        return f"{value * 100:+.2f} pp"
    if kind == "int":
        return f"{int(value):,}"
    if kind == "ratio":
        return f"{value:.2f}"
    return f"{value:,.2f}"


def lift_text(row: Any) -> str:
    """Incremental conversion with its CI, or why there is none."""
    if row["status"] in (STATUS_NO_HOLDOUT, STATUS_EMPTY):
        return str(row["status"])
    text = (
        f"{_fmt(row['incremental_conversion'], 'pp')} "
        f"[{_fmt(row['incremental_conversion_ci_low'], 'pp')}, {_fmt(row['incremental_conversion_ci_high'], 'pp')}]"
    )
    return text


def roi_markdown(df: pd.DataFrame) -> str:
    """The ROI table as markdown (for a Prefect artifact): one row per segment, plus method and caveats."""
    attrs = df.attrs
    head = (
        f"## Segment ROI — {attrs.get('scheme', '')} as_of {attrs.get('as_of', '')}"
        f" (attribution window {attrs.get('window_days', '')} days)\n\n"
    )
    if attrs.get("backtest"):
        head += (
            "**Backtest**: nothing was actually sent, so treated vs holdout has no treatment effect by "
            "construction; the table shows baseline conversion per segment.\n\n"
        )
    cols = [
        "Segment",
        "Treated",
        "Holdout",
        "Conv. treated",
        "Conv. holdout",
        "Incremental conversion (95 % CI)",
        "Rev./member treated",
        "Rev./member holdout",
        "Offer cost",
        "ROI",
        "Status",
        "CI method (conversion / revenue, profit)",
    ]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        roi = r["roi"]
        roi_s = str(r["status"]) if r["status"] in (STATUS_NO_HOLDOUT, STATUS_EMPTY) else _fmt(roi, "ratio")
        cells = [
            str(r["segment"]).replace("|", "\\|"),
            _fmt(r["treated"], "int"),
            _fmt(r["holdout"], "int"),
            _fmt(r["treated_conversion_rate"], "pct"),
            _fmt(r["holdout_conversion_rate"], "pct"),
            lift_text(r),
            _fmt(r["treated_revenue_per_member"]),
            _fmt(r["holdout_revenue_per_member"]),
            _fmt(r["offer_cost"]),
            roi_s,
            str(r["status"]),
            f"{r['conversion_ci_method']} / {r['revenue_ci_method']}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    tail = [""]
    for w in attrs.get("warnings", []):
        tail.append(f"- ⚠ {w}")
    for n in attrs.get("notes", []):
        tail.append(f"- {n}")
    tail.append(f"- Conversion CI: {CONVERSION_CI_METHOD}.")
    tail.append(f"- Revenue CI: {REVENUE_CI_METHOD}.")
    tail.append(f"- Significance across segments: {MULTIPLE_COMPARISONS_METHOD}.")
    return head + "\n".join(lines) + "\n" + "\n".join(tail) + "\n"


def roi_report_markdown(
    engine: Engine, settings: Settings, as_of: date, scheme: str | None, window_days: int | None = None
) -> str:
    """:func:`compute_roi` rendered by :func:`roi_markdown` (what the ``roi_report`` flow publishes)."""
    return roi_markdown(compute_roi(engine, settings, as_of, scheme, window_days))
