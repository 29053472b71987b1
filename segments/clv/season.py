"""The shop's seasonality, and BG/NBD in seasonal time.

BG/NBD assumes a customer buys at a constant rate while alive. A shop with a Q4 peak breaks that: the same
customers buy more in November than in July. The fix here is the classical one of a time change: measure
time in *demand units* instead of days. A day's length is the shop's seasonal index for its day of the year
(mean 1 over a year), so a December day counts as ~1.6 days and a February day as ~0.75; a customer whose
purchases follow a seasonally modulated Poisson process buys at a constant rate in that time. BG/NBD +
Gamma-Gamma are then fitted and evaluated on the warped recency, age and horizon (``x`` and the order values
are unchanged).

The index comes from the shop's daily spend before the date (one ``GROUP BY`` day over the orders): each
day's spend over the centred 365-day moving average (which removes growth of any smooth shape), averaged per
day of the year over the years available, smoothed over :data:`SMOOTH_DAYS` days (circularly) and scaled to
mean 1. It needs every day of the year to have a centred average, i.e. :data:`MIN_HISTORY_DAYS` of orders
before the date; with less there is no index (``None``) and no seasonal predictor.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from sqlalchemy import cast, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.types import Date

from activation import statuses
from activation import tables as t
from activation.settings import Settings
from segments.clv.features import btyd_inputs

Array = NDArray[np.float64]
YEAR = 365
#: Days of orders before a date needed for an index: 365 centred averages need 182 days on either side.
MIN_HISTORY_DAYS = 2 * YEAR - 1
#: The index is smoothed over this many days of the year (a moving average, around the year's end too).
SMOOTH_DAYS = 15


def daily_spend(engine: Engine, settings: Settings, until: date) -> pd.Series:
    """The shop's spend per day up to ``until`` (days without orders 0), indexed by date; empty when there
    are no orders."""
    src = settings.orders
    o = t.source_table(src.table, src.ordered_at, src.amount, *([src.status] if src.status else []))
    ts, amount = o.c[src.ordered_at], o.c[src.amount]
    day = cast(ts, Date)
    end = datetime(until.year, until.month, until.day) + timedelta(days=1)
    where = [ts < end]
    if src.status and settings.excluded_statuses:
        where.append(statuses.counts(o.c[src.status], settings.excluded_statuses, settings.counted_statuses))
    q = select(day.label("day"), func.sum(amount).label("spend")).where(*where).group_by(day)
    with engine.connect() as conn:
        rows = conn.execute(q).all()
    if not rows:
        return pd.Series(dtype=np.float64)
    s = pd.Series({pd.Timestamp(d): float(v or 0.0) for d, v in rows}, dtype=np.float64).sort_index()
    full = pd.date_range(s.index[0], pd.Timestamp(until), freq="D")
    return s.reindex(full, fill_value=0.0)


_MONTH_STARTS = np.array([0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334])


def day_of_year(days: pd.DatetimeIndex | pd.Series) -> NDArray[np.intp]:
    """0..364 per date, as in a year without 29 February (which shares the 28th's)."""
    idx = pd.DatetimeIndex(days)
    month, day = np.asarray(idx.month), np.asarray(idx.day)
    day = np.where((month == 2) & (day == 29), 28, day)
    return np.asarray(_MONTH_STARTS[month - 1] + day - 1, dtype=np.intp)


def profile(daily: pd.Series, as_of: date) -> Array | None:
    """The seasonal index (365 values, mean 1) from the daily spend on or before ``as_of``; ``None`` with
    less than :data:`MIN_HISTORY_DAYS` days of it."""
    s = daily[daily.index <= pd.Timestamp(as_of)]
    if len(s) < MIN_HISTORY_DAYS:
        return None
    trend = s.rolling(YEAR, center=True, min_periods=YEAR).mean()
    ratio = (s / trend.where(trend > 0)).dropna()
    by_day = pd.Series(ratio.to_numpy(), index=day_of_year(ratio.index)).groupby(level=0).mean()
    if len(by_day) < YEAR:
        return None
    raw = by_day.reindex(range(YEAR)).to_numpy(dtype=np.float64)
    half = SMOOTH_DAYS // 2
    padded = np.concatenate([raw[-half:], raw, raw[:half]])
    smooth = np.convolve(padded, np.ones(SMOOTH_DAYS) / SMOOTH_DAYS, mode="valid")
    return np.asarray(smooth / smooth.mean(), dtype=np.float64)


def _clock(index: Array, start: date, days: int) -> Array:
    """Seasonal time at the start of each of the ``days + 1`` days from ``start`` (0 at ``start``)."""
    lengths = index[day_of_year(pd.date_range(pd.Timestamp(start), periods=days, freq="D"))]
    return np.concatenate([[0.0], np.cumsum(lengths)])


def warped_inputs(
    features: pd.DataFrame, as_of: date, index: Array, horizon_days: int
) -> tuple[Array, Array, Array, Array, float]:
    """BG/NBD + Gamma-Gamma inputs in seasonal time: ``x``, ``t_x``, ``T``, ``m`` as
    :func:`~segments.clv.features.btyd_inputs` gives them in days, and the length of the next
    ``horizon_days`` in seasonal time (the same for every customer)."""
    x, t_x, big_t, m = btyd_inputs(features)
    oldest = int(np.nanmax(big_t)) if len(big_t) else 0
    start = as_of - timedelta(days=oldest)
    clock = _clock(index, start, oldest + horizon_days + 1)
    first = (oldest - big_t).astype(np.intp)  # day number of the first order, from ``start``
    last = first + t_x.astype(np.intp)
    now = oldest
    horizon = clock[now + 1 + horizon_days] - clock[now + 1]
    return x, clock[last] - clock[first], clock[now] - clock[first], m, float(horizon)


def to_json(index: Array | None) -> list[float] | None:
    return None if index is None else [round(float(v), 5) for v in index]


def from_json(stored: Any) -> Array | None:
    return None if stored is None else np.asarray(stored, dtype=np.float64)
