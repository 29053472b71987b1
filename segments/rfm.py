"""RFM as SQL (SQLAlchemy Core), run inside the warehouse: metrics, cut-points, scores, segments.

Three statements, one step per CTE or subquery:

1. :func:`metrics_select` — ``source_rows`` (orders in the window, excluded statuses dropped) →
   ``metrics`` (per customer: last order, count, total) → ``final`` (recency_days, frequency, monetary).
   The caller materialises it once (a temporary table), because both the cut-points and the scoring
   read it; recomputing the aggregate would double the cost.
2. :func:`cutpoints_select` — per scored metric, all quantile cut-points in one ordered-set aggregate
   (``percentile_disc(ARRAY[...]) WITHIN GROUP (ORDER BY x)``), the mean, min and max.
3. :func:`scored_select` — a ``scored`` subquery (scores from the cut-points, bound as parameters) and,
   over it, the segment as a ``CASE`` over the scheme's rules in order. A subquery, not a CTE: Spark
   reuses a cached view only when no ``WITH`` clause refers to it.

Score rule (see docs/segmentation.md): for a metric where higher is better, score = 1 + the number of
cut-points strictly below the value; for recency (lower is better) the mirror: cut-points are taken on
the descending order and score = 1 + the number of cut-points strictly above the value. Scores depend on
values only: equal values get equal scores, reruns are identical, scores are monotonic in the metric.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any

from sqlalchemy import Integer, String, and_, case, cast, func, literal, select, true
from sqlalchemy.sql import Select
from sqlalchemy.sql.elements import ColumnElement

from activation import statuses
from activation.dialect import (
    at_or_after,
    before,
    date_literal,
    days_between,
    percentiles_disc,
    quantile_form,
)
from activation.settings import Settings
from activation.tables import Double, source_table
from segments.schemes import LOWER_IS_BETTER, Bins, Scheme

METRIC_COLUMNS = {"r": "recency_days", "f": "frequency", "m": "monetary"}


@dataclass(frozen=True)
class Window:
    """Orders with ``start <= ordered_at < end`` count; ``end`` is the day after ``as_of``."""

    as_of: date
    start: datetime | None
    end: datetime

    @classmethod
    def of(cls, as_of: date, lookback_days: int | None) -> Window:
        """The window of ``lookback_days`` whole days ending with ``as_of`` (None: no lower bound)."""
        end = datetime.combine(as_of + timedelta(days=1), time.min)
        start = end - timedelta(days=lookback_days) if lookback_days else None
        return cls(as_of, start, end)


def _source_rows(settings: Settings, scheme: Scheme, window: Window) -> Any:
    """``source_rows``: one row per order (or event) that counts, with customer, time and amount."""
    if scheme.source == "contact_events":
        ev = source_table("contact_events", "customer_id", "occurred_at")
        at = ev.c.occurred_at
        amount: ColumnElement[Any] = literal(0.0, Double)
        conds = [before(at, window.end)]
        src: Any = ev
        cust = ev.c.customer_id
    else:
        o = settings.orders
        src = source_table(o.table, o.customer_id, o.ordered_at, o.amount, o.status or "")
        at = src.c[o.ordered_at]
        amount = src.c[o.amount]
        cust = src.c[o.customer_id]
        conds = [before(at, window.end)]
        if o.status and settings.excluded_statuses:
            conds.append(
                statuses.counts(src.c[o.status], settings.excluded_statuses, settings.counted_statuses)
            )
    if window.start is not None:
        conds.append(at_or_after(at, window.start))
    return (
        select(cust.label("customer_id"), at.label("at"), amount.label("amount"))
        .select_from(src)
        .where(and_(*conds))
        .cte("source_rows")
    )


def metrics_select(settings: Settings, scheme: Scheme, window: Window) -> Select[Any]:
    """Per customer with at least one counting order in the window: recency_days, frequency, monetary.

    ``frequency`` counts rows: the orders source holds one row per order (the data checks verify that
    order ids are unique), which avoids a ``count(distinct)`` several times slower.
    """
    rows = _source_rows(settings, scheme, window)
    metrics = (
        select(
            rows.c.customer_id,
            func.max(rows.c.at).label("last_at"),
            func.count().label("frequency"),
            func.sum(rows.c.amount).label("monetary"),
        )
        .group_by(rows.c.customer_id)
        .cte("metrics")
    )
    final = select(
        cast(metrics.c.customer_id, String).label("customer_id"),
        days_between(date_literal(window.as_of), metrics.c.last_at).label("recency_days"),
        cast(metrics.c.frequency, Integer).label("frequency"),
        cast(func.coalesce(metrics.c.monetary, 0.0), Double).label("monetary"),
    ).cte("final")
    return select(final.c.customer_id, final.c.recency_days, final.c.frequency, final.c.monetary)


def cutpoint_probabilities(bins: Bins) -> list[float]:
    """The probabilities of the quantile cut-points of ``bins``: k/n for k = 1..n-1, nudged down by
    1e-12 so that the warehouse's ``ceil(p * N)`` lands exactly on position k·N/n when that is a whole
    number (binary floats like 2/3 would otherwise round either way). The nudge is far smaller than
    the gap 1/n to the next position for any N below 10^10."""
    return [k / bins.n - 1e-12 for k in range(1, bins.n)]


def cutpoints_select(metrics: Any, scheme: Scheme, dialect_name: str | None = None) -> Select[Any]:
    """One row: per scored metric the quantile cut-points (``<m>_cuts``, an array, or ``<m>_cut1`` …
    ``<m>_cut<n-1>``, as :func:`activation.dialect.quantile_form` decides for ``dialect_name``), ``<m>_mean``,
    ``<m>_min``, ``<m>_max``; plus ``customers``."""
    form = quantile_form(dialect_name)
    cols: list[Any] = [func.count().label("customers")]
    joins: list[Any] = []
    for m, bins in sorted(scheme.scores.items()):
        x = metrics.c[METRIC_COLUMNS[m]]
        if bins.method == "quantile":
            order = x.desc() if m in LOWER_IS_BETTER else x
            if form == "array":
                cols.append(percentiles_disc(cutpoint_probabilities(bins), order).label(f"{m}_cuts"))
            elif form == "each":
                cols += [
                    func.percentile_disc(literal(p, Double)).within_group(order).label(f"{m}_cut{k}")
                    for k, p in enumerate(cutpoint_probabilities(bins), 1)
                ]
            else:
                ranked = _ranked_cuts(metrics, m, bins)
                joins.append(ranked)
                cols += [func.max(c).label(c.name) for c in ranked.c]
        if bins.method == "fixed":
            edges = bins.edges or []
            for s in range(1, bins.n + 1):
                cond = _fixed_bin(m, edges, s, x)
                cols.append(func.sum(case((cond, 1), else_=0)).label(f"{m}_bin{s}"))
        cols += [
            cast(func.avg(x), Double).label(f"{m}_mean"),
            func.min(x).label(f"{m}_min"),
            func.max(x).label(f"{m}_max"),
        ]
    source: Any = metrics
    for j in joins:
        source = source.join(j, true())
    return select(*cols).select_from(source)


def _ranked_cuts(metrics: Any, m: str, bins: Bins) -> Any:
    """``<m>_cuts``: one row, the exact cut-points of metric ``m`` without percentile_disc. Cut-point k is the
    value at position ceil(k·N/n) of the order (descending for recency), i.e. the first position pos with
    pos·n >= k·N: integer arithmetic, exact for any N (the same row percentile_disc(k/n) picks)."""
    x = metrics.c[METRIC_COLUMNS[m]]
    lower = m in LOWER_IS_BETTER
    ranked = (
        select(
            x.label("v"),
            func.row_number().over(order_by=x.desc() if lower else x).label("pos"),
            func.count(x).over().label("n"),
        )
        .where(x.is_not(None))
        .subquery(f"{m}_ranked")
    )
    pick = func.max if lower else func.min
    return select(
        *[
            pick(case((ranked.c.pos * bins.n >= ranked.c.n * k, ranked.c.v))).label(f"{m}_cut{k}")
            for k in range(1, bins.n)
        ]
    ).subquery(f"{m}_cuts")


def _fixed_bin(m: str, edges: list[float], s: int, x: Any) -> ColumnElement[bool]:
    """Whether ``x`` falls in fixed bin ``s`` (edges are where bins 2..n start on the metric's scale)."""
    if m in LOWER_IS_BETTER:
        # score = 1 + #{e > x}: bin s holds edges[n-1-s] <= x < edges[n-s] counted from the top
        k = s - 1  # number of edges above x
        n = len(edges)
        conds = []
        if k > 0:
            conds.append(x < edges[n - k])
        if k < n:
            conds.append(x >= edges[n - k - 1])
        return and_(*conds)
    conds = []
    if s > 1:
        conds.append(x >= edges[s - 2])
    if s <= len(edges):
        conds.append(x < edges[s - 1])
    return and_(*conds)


def thresholds(m: str, bins: Bins, stats: dict[str, Any]) -> list[float]:
    """The values a metric is compared with to score it (cut-points, the mean, or fixed edges)."""
    if bins.method == "quantile":
        cuts = (
            stats[f"{m}_cuts"] if f"{m}_cuts" in stats else [stats[f"{m}_cut{k}"] for k in range(1, bins.n)]
        )
        return [float(c) for c in cuts]
    if bins.method == "mean":
        return [float(stats[f"{m}_mean"])]
    return [float(e) for e in bins.edges or []]


def score_expr(m: str, bins: Bins, cuts: list[float], x: ColumnElement[Any]) -> ColumnElement[int]:
    """1 + the number of thresholds the value passes.

    quantile/mean: higher-is-better passes ``c < x``; recency passes ``c > x``. fixed: edges are where
    the next bin starts, so higher-is-better passes ``e <= x``; recency passes ``e > x``.
    """
    lower = m in LOWER_IS_BETTER
    terms: list[ColumnElement[Any]] = []
    for c in cuts:
        p = literal(c, Double)
        if bins.method == "fixed":
            cond = x < p if lower else x >= p
        else:
            cond = x < p if lower else x > p
        terms.append(case((cond, 1), else_=0))
    expr: ColumnElement[Any] = literal(1, Integer)
    for t in terms:
        expr = expr + t
    return cast(expr, Integer)


def segment_case(scheme: Scheme, scored: Any) -> ColumnElement[str]:
    """The scheme's rules as one ``CASE`` (first match wins), never a pattern over an "RFM string"."""
    whens = []
    for rule in scheme.rules:
        conds = [scored.c[f"{m}_score"].between(lo, hi) for m, (lo, hi) in sorted(rule.when.items())]
        whens.append((and_(*conds) if conds else literal(True), literal(rule.segment, String)))
    default = literal(scheme.default, String) if scheme.default is not None else literal("", String)
    return case(*whens, else_=default)


def scored_select(metrics: Any, scheme: Scheme, cuts: dict[str, list[float]], as_of: date) -> Select[Any]:
    """Rows ready for ``rfm_snapshots``: metrics, scores (0 for unscored metrics) and the segment."""
    score_cols = []
    for m in ("r", "f", "m"):
        bins = scheme.scores.get(m)
        if bins is None:
            score_cols.append(literal(0, Integer).label(f"{m}_score"))
        else:
            score_cols.append(score_expr(m, bins, cuts[m], metrics.c[METRIC_COLUMNS[m]]).label(f"{m}_score"))
    # a subquery, not a CTE: Spark does not match a cached view referenced inside a WITH clause, so a CTE
    # over the cached metrics would recompute them from the orders (measured: 12 s of a 10M-order segment)
    scored = select(
        metrics.c.customer_id, metrics.c.recency_days, metrics.c.frequency, metrics.c.monetary, *score_cols
    ).subquery("scored")
    segment = segment_case(scheme, scored) if scheme.is_rules else literal("", String)
    return select(
        date_literal(as_of).label("as_of"),
        literal(scheme.name, String).label("scheme"),
        scored.c.customer_id,
        scored.c.recency_days,
        scored.c.frequency,
        scored.c.monetary,
        scored.c.r_score,
        scored.c.f_score,
        scored.c.m_score,
        segment.label("segment"),
    )


def empty_scores(m: str, bins: Bins, cuts: list[float], stats: dict[str, Any]) -> list[int]:
    """Scores no customer gets. Quantile cut-points are values of the data (``percentile_disc``), so a
    bin is empty exactly when two neighbouring cut-points tie, or (top bin) when the last cut-point is
    already the extreme value. Fixed bins are counted in the data."""
    lower = m in LOWER_IS_BETTER
    lo, hi = stats[f"{m}_min"], stats[f"{m}_max"]
    if lo is None:
        return list(range(1, bins.n + 1))
    if bins.method == "fixed":
        counts = [int(stats[f"{m}_bin{s}"] or 0) for s in range(1, bins.n + 1)]
        return [s for s, c in enumerate(counts, 1) if c == 0]
    extreme = float(lo) if lower else float(hi)
    empty = [k + 1 for k in range(1, len(cuts)) if cuts[k - 1] == cuts[k]]
    if (extreme >= cuts[-1]) if lower else (extreme <= cuts[-1]):
        empty.append(bins.n)
    return empty
