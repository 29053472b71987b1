"""Per-customer features as of a date, computed in the warehouse by one SQL statement (one row per
customer; the orders are never pulled into pandas), and the BG/NBD + Gamma-Gamma inputs derived from them.

Features as of ``t`` come from orders on or before ``t`` (excluded statuses dropped): recency, frequency,
monetary, tenure, mean days between orders, average and largest order, spend and orders in the last
``window`` days, spend in the ``window`` days before that, spend and orders in the last 30 days, spend in
the same ``window``-day period a year earlier, and recency over the mean gap (how overdue the next order is).
With a target, also the spend and the number of orders in ``(t, t + target_days]``.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import and_, case, func, literal_column, select
from sqlalchemy.engine import Engine
from sqlalchemy.sql import Select

from activation import dialect, statuses
from activation import tables as t
from activation.settings import Settings

FEATURES: tuple[str, ...] = (
    "recency_days",
    "frequency",
    "monetary",
    "tenure_days",
    "mean_gap_days",
    "avg_order",
    "max_order",
    "spend_last",
    "orders_last",
    "spend_prev",
    "recency_over_gap",
    "spend_30d",
    "orders_30d",
    "spend_last_year",
)


# --- features (SQL, pushed down) -----------------------------------------------------------------


def _orders(settings: Settings) -> Any:
    src = settings.orders
    cols = [src.order_id, src.customer_id, src.ordered_at, src.amount] + ([src.status] if src.status else [])
    return t.source_table(src.table, *cols)


def _day_start(d: date) -> datetime:
    return datetime(d.year, d.month, d.day)


def feature_query(settings: Settings, as_of: date, window_days: int, target_days: int | None) -> Select[Any]:
    """One row per customer with an order on or before ``as_of``: the raw aggregates of :data:`FEATURES`
    over ``window_days`` windows (dates as timestamps; day differences are taken after), plus ``target`` =
    spend and ``target_orders`` = orders in ``(as_of, as_of + target_days]`` when ``target_days`` is given."""
    src = settings.orders
    o = _orders(settings)
    cid, oid, ts, amount = o.c[src.customer_id], o.c[src.order_id], o.c[src.ordered_at], o.c[src.amount]
    end = _day_start(as_of + timedelta(days=1))  # orders on the as_of day count
    last_start = _day_start(as_of - timedelta(days=window_days - 1))
    prev_start = _day_start(as_of - timedelta(days=2 * window_days - 1))
    d30_start = _day_start(as_of - timedelta(days=29))
    # the same period a year earlier: (as_of - 365, as_of - 365 + h], never past as_of
    ly_start = _day_start(as_of - timedelta(days=364))
    ly_end = min(_day_start(as_of - timedelta(days=364 - window_days)), end)
    past = ts < end
    zero: Any = literal_column("0.0")
    cols = [
        cid.label("customer_id"),
        func.min(case((past, ts))).label("first_at"),
        func.max(case((past, ts))).label("last_at"),
        func.count(case((past, oid))).label("frequency"),
        func.coalesce(func.sum(case((past, amount), else_=zero)), zero).label("monetary"),
        func.max(case((past, amount))).label("max_order"),
        func.coalesce(func.sum(case((and_(past, ts >= last_start), amount), else_=zero)), zero).label(
            "spend_last"
        ),
        func.count(case((and_(past, ts >= last_start), oid))).label("orders_last"),
        func.coalesce(
            func.sum(case((and_(ts >= prev_start, ts < last_start), amount), else_=zero)), zero
        ).label("spend_prev"),
        func.coalesce(func.sum(case((and_(past, ts >= d30_start), amount), else_=zero)), zero).label(
            "spend_30d"
        ),
        func.count(case((and_(past, ts >= d30_start), oid))).label("orders_30d"),
        func.coalesce(func.sum(case((and_(ts >= ly_start, ts < ly_end), amount), else_=zero)), zero).label(
            "spend_last_year"
        ),
    ]
    stop = end if target_days is None else _day_start(as_of + timedelta(days=target_days + 1))
    where = [ts < stop]
    if target_days is not None:
        cols.append(func.coalesce(func.sum(case((ts >= end, amount), else_=zero)), zero).label("target"))
        cols.append(func.count(case((ts >= end, oid))).label("target_orders"))
    if src.status and settings.excluded_statuses:
        where.append(statuses.counts(o.c[src.status], settings.excluded_statuses))
    return select(*cols).where(*where).group_by(cid).having(func.count(case((past, oid))) > 0).order_by(cid)


def load_features(
    engine: Engine, settings: Settings, as_of: date, window_days: int, target_days: int | None = None
) -> pd.DataFrame:
    """The per-customer feature frame as of ``as_of`` (sorted by customer_id), with ``target`` and
    ``target_orders`` over the ``target_days`` after it when given."""
    query = feature_query(settings, as_of, window_days, target_days)
    with engine.connect() as conn:
        if dialect.is_duckdb(conn):  # one columnar fetch, not a million rows through the DB-API
            driver: Any = conn.connection.driver_connection
            raw = driver.execute(str(query.compile(conn, compile_kwargs={"literal_binds": True}))).df()
        else:
            raw = pd.read_sql(query, conn)
    return _derive(raw, as_of)


def _derive(raw: pd.DataFrame, as_of: date) -> pd.DataFrame:
    ref = pd.Timestamp(as_of)
    first = pd.to_datetime(raw["first_at"]).dt.normalize()
    last = pd.to_datetime(raw["last_at"]).dt.normalize()
    out = pd.DataFrame({"customer_id": raw["customer_id"].astype(str)})
    out["recency_days"] = (ref - last).dt.days.astype("float64")
    out["frequency"] = raw["frequency"].astype("float64")
    out["monetary"] = raw["monetary"].astype("float64")
    out["tenure_days"] = (ref - first).dt.days.astype("float64")
    span = (last - first).dt.days.astype("float64")
    out["mean_gap_days"] = np.where(out["frequency"] > 1, span / (out["frequency"] - 1).clip(lower=1), np.nan)
    out["avg_order"] = out["monetary"] / out["frequency"].clip(lower=1)
    out["max_order"] = raw["max_order"].astype("float64")
    out["spend_last"] = raw["spend_last"].astype("float64")
    out["orders_last"] = raw["orders_last"].astype("float64")
    out["spend_prev"] = raw["spend_prev"].astype("float64")
    for name in ("spend_30d", "orders_30d", "spend_last_year"):
        out[name] = raw[name].astype("float64")
    out["recency_over_gap"] = out["recency_days"] / out["mean_gap_days"].where(out["mean_gap_days"] > 0)
    if "target" in raw:
        out["target"] = raw["target"].astype("float64")
        out["target_orders"] = raw["target_orders"].astype("float64")
    return out.reset_index(drop=True)


def data_range(engine: Engine, settings: Settings) -> tuple[date, date] | None:
    """First and last order date among the orders segmentation counts (None when there are none)."""
    src = settings.orders
    o = _orders(settings)
    ts = o.c[src.ordered_at]
    q = select(func.min(ts), func.max(ts))
    if src.status and settings.excluded_statuses:
        q = q.where(statuses.counts(o.c[src.status], settings.excluded_statuses))
    with engine.connect() as conn:
        lo, hi = conn.execute(q).one()
    if lo is None:
        return None
    return pd.Timestamp(lo).date(), pd.Timestamp(hi).date()


def btyd_inputs(features: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """BG/NBD + Gamma-Gamma inputs in days from a feature frame: repeat orders ``x``, day of the last order
    ``t_x`` and age ``T`` (both counted from the first order), and the mean order value ``m``."""
    x = features["frequency"].to_numpy(dtype=np.float64) - 1.0
    big_t = features["tenure_days"].to_numpy(dtype=np.float64)
    t_x = big_t - features["recency_days"].to_numpy(dtype=np.float64)
    return x, t_x, big_t, features["avg_order"].to_numpy(dtype=np.float64)
