"""The programme against its global control group: what all the campaigns together earned, quarter after quarter.

With ``global_control: {share: …}`` in the offer policy, ``plan`` leaves a stable share of every planned segment's
customers out of every audience (``activation.split``; their own salt, so independent of every campaign's
holdout) and records them in ``global_control_members``. This module compares, over every quarter (as_of) of a
scheme up to the report's, the customers the campaigns treated with the global control members of the same
quarters:

* the unit is the **customer** (the split is by customer and stays the same across quarters): each customer's
  value is their mean over the quarters they were treated (or, for the control, held out) of the window
  revenue (qualifying orders in ``(send time, send time + window]``, the report's attribution, one send time
  per quarter: its campaigns' earliest) and of conversion (0/1);
* the difference of the two groups' means gets the **randomisation interval** of the segment rows (pooled
  within-group variance, t with n₁ + n₂ − 2 degrees of freedom), for revenue and for conversion alike.

Under "the programme changed nothing" the two groups are exchangeable (both are hash-chosen from the same
eligible customers), which is what the interval needs; ``tests/outcomes/test_programme.py`` checks the coverage
by simulation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from sqlalchemy import and_, func, select
from sqlalchemy.engine import Connection, Engine

from activation.clock import end_of_day
from activation.settings import Settings
from activation.tables import campaign_members, campaigns, global_control_members
from outcomes.ledger import orders_source, valid_status
from outcomes.stats import randomisation_diff_intervals

Floats = NDArray[np.float64]


@dataclass(frozen=True)
class ProgrammeLift:
    """Treated customers vs the global control, over ``quarters``."""

    quarters: list[date]
    treated: int  # customers treated in at least one of the quarters
    control: int  # global control customers of the quarters
    treated_conversion: float
    control_conversion: float
    conversion_diff: tuple[float, float, float]  # difference, low, high
    treated_revenue: float  # per customer and quarter
    control_revenue: float
    revenue_diff: tuple[float, float, float]


def lift_interval(treated: Floats, control: Floats, confidence: float = 0.95) -> tuple[float, float, float]:
    """Difference of means and its randomisation interval (the segment rows' method) of per-customer values."""
    if treated.size == 0 or control.size == 0 or treated.size + control.size < 3:
        return (math.nan, math.nan, math.nan)
    d, low, high = randomisation_diff_intervals(
        treated.size,
        treated.sum(),
        (treated * treated).sum(),
        control.size,
        control.sum(),
        (control * control).sum(),
        confidence,
    )
    return (float(d), float(low), float(high))


def programme_lift(
    engine: Engine, settings: Settings, as_of: date, scheme: str, window_days: int | None = None
) -> ProgrammeLift | None:
    """The programme's lift over every quarter of ``scheme`` up to ``as_of`` that has a global control; None
    when no plan recorded one."""
    window = timedelta(days=window_days or settings.attribution_window_days)
    g, c, m = global_control_members.c, campaigns.c, campaign_members.c
    with engine.connect() as conn:
        quarters = [
            q
            for (q,) in conn.execute(
                select(g.as_of)
                .where(g.scheme == scheme, g.as_of <= as_of)
                .group_by(g.as_of)
                .order_by(g.as_of)
            )
        ]
        if not quarters:
            return None
        frames = []
        for q in quarters:
            sent = conn.execute(
                select(func.min(c.send_time)).where(c.scheme == scheme, c.as_of == q, c.treated > 0)
            ).scalar()
            start = sent if isinstance(sent, datetime) else end_of_day(q)
            latest = _latest_campaigns(scheme, q)
            treated = (
                select(m.customer_id)
                .join(latest, latest.c.campaign_id == m.campaign_id)
                .where(m.member_group == "treatment")
            )
            control = select(g.customer_id).where(g.scheme == scheme, g.as_of == q)
            people = pd.DataFrame(
                [(str(x), 1) for (x,) in conn.execute(treated)]
                + [(str(x), 0) for (x,) in conn.execute(control)],
                columns=["customer_id", "treated"],
            )
            spent = _window_revenue(conn, settings, start, start + window)
            people["revenue"] = people["customer_id"].map(spent).fillna(0.0)
            people["converted"] = people["customer_id"].isin(spent.index).astype(float)
            frames.append(people)
    return summarise(pd.concat(frames, ignore_index=True), quarters)


def summarise(rows: pd.DataFrame, quarters: list[date]) -> ProgrammeLift:
    """Per customer and group, the mean over their quarters; then the two groups' difference and interval.
    ``rows``: one per customer and quarter, columns ``customer_id``, ``treated`` (1/0), ``revenue``,
    ``converted``."""
    per = rows.groupby(["treated", "customer_id"])[["revenue", "converted"]].mean()
    t = per.loc[1] if 1 in per.index.get_level_values(0) else per.iloc[:0]
    h = per.loc[0] if 0 in per.index.get_level_values(0) else per.iloc[:0]
    tc, hc = t["converted"].to_numpy(float), h["converted"].to_numpy(float)
    tr, hr = t["revenue"].to_numpy(float), h["revenue"].to_numpy(float)
    return ProgrammeLift(
        quarters=quarters,
        treated=len(t),
        control=len(h),
        treated_conversion=float(tc.mean()) if tc.size else math.nan,
        control_conversion=float(hc.mean()) if hc.size else math.nan,
        conversion_diff=lift_interval(tc, hc),
        treated_revenue=float(tr.mean()) if tr.size else math.nan,
        control_revenue=float(hr.mean()) if hr.size else math.nan,
        revenue_diff=lift_interval(tr, hr),
    )


def _latest_campaigns(scheme: str, as_of: date) -> Any:
    """(campaign_id) of the latest version of each campaign of ``as_of`` (a subquery)."""
    c = campaigns.c
    latest = (
        select(c.campaign_key, func.max(c.version).label("version"))
        .where(c.scheme == scheme, c.as_of == as_of)
        .group_by(c.campaign_key)
        .subquery()
    )
    return (
        select(c.campaign_id)
        .join(latest, and_(latest.c.campaign_key == c.campaign_key, latest.c.version == c.version))
        .subquery()
    )


def _window_revenue(conn: Connection, settings: Settings, start: datetime, end: datetime) -> pd.Series:
    """Revenue of qualifying orders in ``(start, end]`` per customer (only customers who bought)."""
    o = orders_source(settings)
    q = (
        select(o.c.customer_id, func.sum(o.c.amount))
        .where(o.c.ordered_at > start, o.c.ordered_at <= end, valid_status(settings, o.c.status))
        .group_by(o.c.customer_id)
    )
    rows = conn.execute(q).all()
    return pd.Series({str(k): float(v or 0.0) for k, v in rows}, dtype=float)
