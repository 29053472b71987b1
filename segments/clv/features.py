"""Per-customer features as of one or several dates, and the BG/NBD + Gamma-Gamma inputs derived from them.
Every date comes from one read of the orders: on DuckDB their customer, day and amount columns into NumPy
(a columnar read, cheaper than the dozens of conditional aggregates per customer that several dates need);
on other warehouses one SQL statement with one row per customer (the orders are not pulled out).

Features as of ``t`` come from orders on or before ``t`` (excluded statuses dropped): recency, frequency,
monetary, tenure, mean days between orders, average and largest order, spend and orders in the last
``window`` days, spend in the ``window`` days before that, spend and orders in the last 30 days, spend in
the same ``window``-day period a year earlier, and recency over the mean gap (how overdue the next order is).
With a target, also the spend and the number of orders in ``(t, t + target_days]``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import date, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Date, and_, case, cast, func, literal_column, select
from sqlalchemy.engine import Engine
from sqlalchemy.sql import Select
from sqlalchemy.sql.functions import Function

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


#: One feature date of :func:`feature_query`: the date, and the days after it whose spend is the target
#: (None: no target).
FeatureDate = tuple[date, int | None]


def _spans(
    as_of: date, window_days: int, target_days: int | None
) -> dict[str, tuple[str, date | None, date]]:
    """Each aggregate as of ``as_of``: its kind (``sum`` / ``count`` / ``max`` of the amount, ``last`` order
    time) over the orders whose day is in ``[start, stop)`` (no start: from the first order)."""
    end = as_of + timedelta(days=1)  # orders on the as_of day count
    last_start = as_of - timedelta(days=window_days - 1)
    d30_start = as_of - timedelta(days=29)
    # the same period a year earlier: (as_of - 365, as_of - 365 + h], never past as_of
    ly_start = as_of - timedelta(days=364)
    spans: dict[str, tuple[str, date | None, date]] = {
        "last_at": ("last", None, end),
        "frequency": ("count", None, end),
        "monetary": ("sum", None, end),
        "max_order": ("max", None, end),
        "spend_last": ("sum", last_start, end),
        "orders_last": ("count", last_start, end),
        "spend_prev": ("sum", as_of - timedelta(days=2 * window_days - 1), last_start),
        "spend_30d": ("sum", d30_start, end),
        "orders_30d": ("count", d30_start, end),
        "spend_last_year": ("sum", ly_start, min(ly_start + timedelta(days=window_days), end)),
    }
    if target_days is not None:
        stop = as_of + timedelta(days=target_days + 1)
        spans |= {"target": ("sum", end, stop), "target_orders": ("count", end, stop)}
    return spans


def _stop(dates: Sequence[FeatureDate]) -> date:
    """The day after the last one any of ``dates`` looks at."""
    return max(d + timedelta(days=(n or 0) + 1) for d, n in dates)


def _aggregate_sql(kind: str, when: Any, o: Any, src: Any) -> Any:
    amount: Any = o.c[src.amount]
    zero: Any = literal_column("0.0")
    if kind == "sum":
        return func.coalesce(func.sum(case((when, amount), else_=zero)), zero)
    if kind == "count":
        return func.count(case((when, o.c[src.order_id])))
    return func.max(case((when, amount if kind == "max" else o.c[src.ordered_at])))


def _counted(settings: Settings, o: Any) -> list[Any]:
    src = settings.orders
    if src.status and settings.excluded_statuses:
        return [statuses.counts(o.c[src.status], settings.excluded_statuses, settings.counted_statuses)]
    return []


def feature_query(settings: Settings, window_days: int, dates: Sequence[FeatureDate]) -> Select[Any]:
    """One row per customer with an order before the end of the last period any date looks at, and for
    the ``k``-th date the raw aggregates of :data:`FEATURES` as of it (``<name>_<k>``, see :func:`_spans`)
    over ``window_days`` windows (dates as timestamps; day differences are taken after), with ``target_<k>``
    = spend and ``target_orders_<k>`` = orders in ``(as_of, as_of + target_days]`` when ``target_days`` is
    given. ``first_at`` (the first order) is shared: a customer belongs to a date when ``frequency_<k>`` > 0."""
    src = settings.orders
    o = _orders(settings)
    cid, ts = o.c[src.customer_id], o.c[src.ordered_at]
    cols = [cid.label("customer_id"), func.min(ts).label("first_at")]
    for k, (as_of, target_days) in enumerate(dates):
        for name, (kind, start, stop) in _spans(as_of, window_days, target_days).items():
            when = and_(*([] if start is None else [ts >= _day_start(start)]), ts < _day_start(stop))
            cols.append(_aggregate_sql(kind, when, o, src).label(f"{name}_{k}"))
    where = [ts < _day_start(_stop(dates)), *_counted(settings, o)]
    return select(*cols).where(*where).group_by(cid).order_by(cid)


def _order_arrays(conn: Any, settings: Settings, stop: date) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """DuckDB: the customer ids in order, and every counted order before ``stop`` as NumPy columns (the
    customer's number in that order, the day since 1970-01-01, the amount)."""
    src = settings.orders
    o = _orders(settings)
    cid, ts = o.c[src.customer_id], o.c[src.ordered_at]
    where = [ts < _day_start(stop), *_counted(settings, o)]
    # DuckDB's date_diff by name: ``func.date_diff`` is taken over by the Trino dialect's two-argument
    # function once the [trino] extra is installed
    day: Function[Any] = Function(
        "date_diff", literal_column("'day'"), literal_column("DATE '1970-01-01'"), cast(ts, Date)
    )
    rows = select(
        (func.dense_rank().over(order_by=cid) - 1).label("code"),
        day.label("day"),
        o.c[src.amount].label("amount"),
    ).where(*where)
    ids = select(cid.label("customer_id")).where(*where).distinct().order_by(cid)
    driver: Any = conn.connection.driver_connection

    def run(q: Any) -> dict[str, np.ndarray]:
        sql = str(q.compile(conn, compile_kwargs={"literal_binds": True}))
        return {k: np.asarray(v) for k, v in driver.execute(sql).fetchnumpy().items()}

    return run(ids)["customer_id"].astype(object), run(rows)


def _aggregate(kind: str, code: np.ndarray, day: np.ndarray, amount: np.ndarray, n: int) -> np.ndarray:
    """One aggregate of :func:`_spans` per customer number over these orders (``last``: the latest day)."""
    if kind in ("sum", "count"):  # (float even over no orders)
        counts = np.bincount(code, weights=amount if kind == "sum" else None, minlength=n)
        return counts.astype(np.float64, copy=False)
    out = np.full(n, np.nan)
    np.fmax.at(out, code, amount if kind == "max" else day)
    return out


def _from_orders(
    conn: Any, settings: Settings, window_days: int, dates: Sequence[FeatureDate]
) -> tuple[np.ndarray, np.ndarray, Iterator[tuple[int, dict[str, np.ndarray]]]]:
    """:func:`_columns` from the orders read once into NumPy (DuckDB: a columnar read of three columns
    costs a fraction of the dozens of conditional aggregates per customer). The aggregates from the first
    order are built up date by date, each from the one before, and each date's are yielded (with its
    position in ``dates``) as soon as they are done, oldest first."""
    ids, cols = _order_arrays(conn, settings, _stop(dates))
    # days from the first one fit in 16 bits for 179 years of orders, where NumPy's stable sort is a radix sort
    days = np.asarray(cols["day"], dtype=np.int64)
    offset = days - days.min() if len(days) else days
    order = np.argsort(offset.astype(np.uint16) if offset.max(initial=0) < 2**16 else offset, kind="stable")
    code = cols["code"][order].astype(np.intp)
    day = days[order].astype(np.float64)
    amount = cols["amount"][order].astype(np.float64)
    n = len(ids)

    def at(d: date | None) -> int:  # the first order on or after day d
        return 0 if d is None else int(np.searchsorted(day, _day_number(d), side="left"))

    first = np.full(n, np.inf)
    np.fmin.at(first, code, day)

    def each() -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        since_first: dict[str, tuple[int, np.ndarray]] = {}  # name -> (row it stops at, aggregate)
        for k in sorted(range(len(dates)), key=lambda j: dates[j][0]):
            out: dict[str, np.ndarray] = {}
            for name, (kind, start, stop) in _spans(dates[k][0], window_days, dates[k][1]).items():
                lo, hi = at(start), at(stop)
                done, base = since_first.get(name, (0, None)) if start is None else (lo, None)
                part = _aggregate(kind, code[done:hi], day[done:hi], amount[done:hi], n)
                if base is not None:
                    part = np.fmax(base, part) if kind in ("max", "last") else base + part
                if start is None:
                    since_first[name] = (hi, part)
                out[name] = part
            yield k, out

    return ids, first, each()


def _from_sql(
    conn: Any, settings: Settings, window_days: int, dates: Sequence[FeatureDate]
) -> tuple[np.ndarray, np.ndarray, Iterator[tuple[int, dict[str, np.ndarray]]]]:
    """:func:`_columns` from :func:`feature_query`."""
    raw = pd.read_sql(feature_query(settings, window_days, dates), conn)

    def days(col: str) -> np.ndarray:
        stamps = pd.to_datetime(raw[col]).dt.normalize()
        return np.asarray((stamps - pd.Timestamp(0)).dt.days.to_numpy(dtype=np.float64, na_value=np.nan))

    out = []
    for k, (as_of, target_days) in enumerate(dates):
        names = _spans(as_of, window_days, target_days)
        out.append(
            {
                name: days(f"{name}_{k}") if kind == "last" else raw[f"{name}_{k}"].to_numpy(dtype=np.float64)
                for name, (kind, _, _) in names.items()
            }
        )
    return raw["customer_id"].to_numpy(dtype=object), days("first_at"), iter(enumerate(out))


def _day_number(d: date) -> int:
    return (d - date(1970, 1, 1)).days


def iter_feature_sets(
    engine: Engine, settings: Settings, window_days: int, dates: Sequence[FeatureDate]
) -> Iterator[tuple[int, pd.DataFrame]]:
    """The per-customer feature frame as of each of ``dates`` (sorted by customer_id), with ``target`` and
    ``target_orders`` over the ``target_days`` after it when given, from one read of the orders: on DuckDB
    the orders' three columns into NumPy, elsewhere one SQL statement (:func:`feature_query`). Each frame
    comes with its position in ``dates`` as soon as it is ready (on DuckDB the oldest date first), so the
    caller can start on it while the others are computed."""
    with engine.connect() as conn:
        load = _from_orders if dialect.is_duckdb(conn) else _from_sql
        ids, first, per_date = load(conn, settings, window_days, dates)
        names = pd.Series(ids).astype(str)
        for k, cols in per_date:
            keep = np.flatnonzero(cols["frequency"] > 0)
            part = {name: values[keep] for name, values in cols.items()}
            yield k, _derive(names.iloc[keep].reset_index(drop=True), first[keep], part, dates[k][0])


def load_feature_sets(
    engine: Engine, settings: Settings, window_days: int, dates: Sequence[FeatureDate]
) -> list[pd.DataFrame]:
    """:func:`iter_feature_sets` in the order of ``dates``."""
    frames = dict(iter_feature_sets(engine, settings, window_days, dates))
    return [frames[k] for k in range(len(dates))]


def load_features(
    engine: Engine, settings: Settings, as_of: date, window_days: int, target_days: int | None = None
) -> pd.DataFrame:
    """The per-customer feature frame as of ``as_of`` (sorted by customer_id), with ``target`` and
    ``target_orders`` over the ``target_days`` after it when given."""
    return load_feature_sets(engine, settings, window_days, [(as_of, target_days)])[0]


def _derive(ids: pd.Series, first: np.ndarray, raw: dict[str, np.ndarray], as_of: date) -> pd.DataFrame:
    """The features from the aggregates of :func:`_spans` (days as day numbers)."""
    ref = float(_day_number(as_of))
    frequency, monetary = raw["frequency"], raw["monetary"]
    recency = ref - raw["last_at"]
    mean_gap = np.where(frequency > 1, (raw["last_at"] - first) / np.maximum(frequency - 1, 1), np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        over_gap = np.where(mean_gap > 0, recency / np.where(mean_gap > 0, mean_gap, 1.0), np.nan)
    cols: dict[str, Any] = {
        "customer_id": ids,
        "recency_days": recency,
        "frequency": frequency,
        "monetary": monetary,
        "tenure_days": ref - first,
        "mean_gap_days": mean_gap,
        "avg_order": monetary / np.maximum(frequency, 1),
        **{name: raw[name] for name in ("max_order", "spend_last", "orders_last", "spend_prev")},
        **{name: raw[name] for name in ("spend_30d", "orders_30d", "spend_last_year")},
        "recency_over_gap": over_gap,
    }
    cols |= {name: raw[name] for name in ("target", "target_orders") if name in raw}
    return pd.DataFrame(cols)


def data_range(engine: Engine, settings: Settings) -> tuple[date, date] | None:
    """First and last order date among the orders segmentation counts (None when there are none)."""
    src = settings.orders
    o = _orders(settings)
    ts = o.c[src.ordered_at]
    q = select(func.min(ts), func.max(ts))
    if src.status and settings.excluded_statuses:
        q = q.where(statuses.counts(o.c[src.status], settings.excluded_statuses, settings.counted_statuses))
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
