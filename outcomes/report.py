"""The segment ROI report: one self-contained HTML file (inline SVG charts, no scripts, no network)
and a CSV with one row per segment next to it (``report.html`` → ``report.csv``).

Charts are drawn here as SVG strings: conversion treated vs holdout with 95 % CI bars, revenue per
member with CI bars, segment sizes over every snapshot of the scheme, and the migration matrix from the
previous snapshot as a heatmap. Where the orders carry country / city / category, the report also lists
the top values per segment (by revenue in the lookback before ``as_of``).
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from sqlalchemy import String, column, extract, func, select, table, text, tuple_
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from activation.clock import end_of_day
from activation.dialect import prefer_hash_joins
from activation.errors import ActivationError, InputError
from activation.files import atomic_write, atomic_write_all, output_file, safe_frame
from activation.settings import Settings
from activation.tables import campaign_members, rfm_snapshots, snapshot_runs, split_table_name
from campaigns.plan import current_campaigns
from campaigns.policy import segment_order
from outcomes.ledger import campaign_windows, orders_source, valid_status, windows_values
from outcomes.programme import ProgrammeLift, programme_lift
from outcomes.roi import (
    CONVERSION_CI_METHOD,
    CSV_COLUMNS,
    CUPED_METHOD,
    MULTIPLE_COMPARISONS_METHOD,
    REVENUE_CI_METHOD,
    STATUS_EMPTY,
    STATUS_NO_HOLDOUT,
    compute_roi,
    lift_text,
    roi_totals,
)
from outcomes.stats import newcombe_diff_interval
from segments.demo_data import PLANTED_SOURCE
from segments.schemes import load_scheme
from segments.snapshots import latest_snapshot_as_of, migration_matrix

TEMPLATES_DIR = Path(__file__).parent / "report_templates"
TREATED_COLOR = "#2563eb"
HOLDOUT_COLOR = "#f59e0b"
PALETTE = [
    "#2563eb", "#f59e0b", "#10b981", "#ef4444", "#8b5cf6", "#14b8a6",
    "#f97316", "#64748b", "#ec4899", "#84cc16", "#0ea5e9", "#a16207",
]  # fmt: skip
BREAKDOWN_DIMENSIONS = ("country", "city", "category")
TOP_N = 5


@dataclass(frozen=True)
class ReportPaths:
    """Where the report was written."""

    html: Path
    csv: Path
    warnings: tuple[str, ...] = ()
    rows: tuple[dict[str, Any], ...] = ()  # the CSV's rows, one per segment


# --------------------------------------------------------------------------- SVG charts


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _nice_max(value: float) -> float:
    if value <= 0 or math.isnan(value):
        return 1.0
    exp: float = 10 ** math.floor(math.log10(value))
    for m in (1, 2, 2.5, 5, 10):
        if value <= m * exp:
            return m * exp
    return 10 * exp


def _finite(v: Any) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def _ticks(low: float, high: float, target: int = 6) -> list[float]:
    """Round axis ticks covering ``[low, high]`` (0 always included)."""
    low, high = min(low, 0.0), max(high, 0.0)
    if high - low <= 0:
        high = 1.0
    step = _nice_max((high - low) / (target - 1))
    start = math.floor(low / step) * step
    ticks = [start]
    while ticks[-1] < high - 1e-12:
        ticks.append(ticks[-1] + step)
    return [round(t, 12) for t in ticks]


def grouped_bar_chart(
    title: str,
    categories: list[str],
    series: list[dict[str, Any]],
    value_format: str = "{:.1%}",
) -> str:
    """Horizontal grouped bars with optional CI whiskers.

    ``series`` items: ``{"name", "color", "values", "lows", "highs"}`` (lists aligned with categories;
    ``nan`` values are drawn as "n/a").
    """
    bar_h, gap, label_w, plot_w, right = 14, 12, 170, 460, 70
    n_series = max(len(series), 1)
    block = n_series * bar_h + gap
    top = 40
    height = top + max(len(categories), 1) * block + 30
    width = label_w + plot_w + right
    values = [v for s in series for key in ("values", "highs") for v in (s.get(key) or []) if _finite(v)]
    lows = [v for s in series for v in (s.get("lows") or []) if _finite(v)]
    ticks = _ticks(min(0.0, min(lows, default=0.0)), max(values, default=0.0))
    vmin, vmax = ticks[0], ticks[-1]
    span = vmax - vmin or 1.0

    def x(v: float) -> float:
        return label_w + (v - vmin) / span * plot_w

    parts = [
        f'<svg class="chart" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{_esc(title)}">',
        f'<text x="4" y="16" class="ct">{_esc(title)}</text>',
    ]
    lx = label_w
    for s in series:
        parts.append(f'<rect x="{lx}" y="24" width="10" height="10" fill="{s["color"]}"/>')
        parts.append(f'<text x="{lx + 14}" y="33" class="cl">{_esc(s["name"])}</text>')
        lx += 14 + 8 * len(str(s["name"])) + 16
    for v in ticks:
        gx = x(v)
        parts.append(f'<line x1="{gx:.1f}" y1="{top - 2}" x2="{gx:.1f}" y2="{height - 24}" class="grid"/>')
        parts.append(
            f'<text x="{gx:.1f}" y="{height - 10}" class="ax" text-anchor="middle">{_esc(value_format.format(v))}</text>'
        )
    if vmin < 0:
        parts.append(
            f'<line x1="{x(0):.1f}" y1="{top - 2}" x2="{x(0):.1f}" y2="{height - 24}" class="zero"/>'
        )
    for ci, cat in enumerate(categories):
        y0 = top + ci * block
        parts.append(
            f'<text x="{label_w - 6}" y="{y0 + n_series * bar_h / 2 + 4:.1f}" class="cl" text-anchor="end">{_esc(cat)}</text>'
        )
        for si, s in enumerate(series):
            y = y0 + si * bar_h
            v = s["values"][ci]
            if not _finite(v):
                parts.append(f'<text x="{x(0) + 4:.1f}" y="{y + bar_h - 3}" class="na">n/a</text>')
                continue
            x0, x1 = sorted((x(0), x(v)))
            parts.append(
                f'<rect x="{x0:.1f}" y="{y + 1}" width="{max(x1 - x0, 0.5):.1f}" height="{bar_h - 2}" '
                f'fill="{s["color"]}"><title>{_esc(s["name"])} {_esc(cat)}: {_esc(value_format.format(v))}</title></rect>'
            )
            lo = (s.get("lows") or [math.nan] * len(categories))[ci]
            hi = (s.get("highs") or [math.nan] * len(categories))[ci]
            text_x = x1 + 4
            if _finite(lo) and _finite(hi):
                cy = y + bar_h / 2
                parts.append(
                    f'<line x1="{x(lo):.1f}" y1="{cy:.1f}" x2="{x(hi):.1f}" y2="{cy:.1f}" class="ci"/>'
                    f'<line x1="{x(lo):.1f}" y1="{cy - 4:.1f}" x2="{x(lo):.1f}" y2="{cy + 4:.1f}" class="ci"/>'
                    f'<line x1="{x(hi):.1f}" y1="{cy - 4:.1f}" x2="{x(hi):.1f}" y2="{cy + 4:.1f}" class="ci"/>'
                )
                text_x = max(text_x, x(hi) + 4)
            parts.append(
                f'<text x="{text_x:.1f}" y="{y + bar_h - 3}" class="vl">{_esc(value_format.format(v))}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)


def stacked_bar_chart(title: str, frame: pd.DataFrame, order: list[str]) -> str:
    """Vertical stacked bars: one bar per as_of (rows of ``frame``), one colour per segment (columns)."""
    if frame.empty:
        return ""
    bar_w, gap, left, top, plot_h = 46, 18, 60, 40, 260
    legend_w = 190
    width = left + len(frame) * (bar_w + gap) + gap + legend_w
    height = top + plot_h + 50
    totals = frame.sum(axis=1)
    vmax = _nice_max(float(totals.max()))
    colours = {seg: PALETTE[i % len(PALETTE)] for i, seg in enumerate(order)}
    parts = [
        f'<svg class="chart" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{_esc(title)}">',
        f'<text x="4" y="16" class="ct">{_esc(title)}</text>',
    ]
    for i in range(5):
        v = vmax * i / 4
        y = top + plot_h - v / vmax * plot_h
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - legend_w}" y2="{y:.1f}" class="grid"/>')
        parts.append(f'<text x="{left - 4}" y="{y + 4:.1f}" class="ax" text-anchor="end">{v:,.0f}</text>')
    for bi, (as_of, row) in enumerate(frame.iterrows()):
        bx = left + gap + bi * (bar_w + gap)
        y = top + plot_h
        for seg in order:
            v = float(row.get(seg, 0) or 0)
            if v <= 0:
                continue
            h = v / vmax * plot_h
            y -= h
            parts.append(
                f'<rect x="{bx}" y="{y:.1f}" width="{bar_w}" height="{h:.1f}" fill="{colours[seg]}">'
                f"<title>{_esc(as_of)} · {_esc(seg)}: {v:,.0f}</title></rect>"
            )
        parts.append(
            f'<text x="{bx + bar_w / 2}" y="{top + plot_h + 14}" class="ax" text-anchor="middle">{_esc(as_of)}</text>'
        )
    lx = width - legend_w + 10
    for i, seg in enumerate(order):
        ly = top + i * 16
        parts.append(f'<rect x="{lx}" y="{ly}" width="10" height="10" fill="{colours[seg]}"/>')
        parts.append(f'<text x="{lx + 14}" y="{ly + 9}" class="cl">{_esc(seg)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _blend(light: str, dark: str, t: float) -> str:
    a = [int(light[i : i + 2], 16) for i in (1, 3, 5)]
    b = [int(dark[i : i + 2], 16) for i in (1, 3, 5)]
    t = min(max(t, 0.0), 1.0)
    return "#" + "".join(f"{round(x + (y - x) * t):02x}" for x, y in zip(a, b, strict=True))


def heatmap(title: str, matrix: pd.DataFrame) -> str:
    """Heatmap of a from × to count matrix; shade = share of the row (where customers of a segment went)."""
    if matrix.empty:
        return ""
    cell, left, top = 44, 170, 150
    width = left + cell * len(matrix.columns) + 20
    height = top + cell * len(matrix.index) + 20
    parts = [
        f'<svg class="chart" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{_esc(title)}">',
        f'<text x="4" y="16" class="ct">{_esc(title)}</text>',
        f'<text x="4" y="{top - 6}" class="ax">from ↓ / to →</text>',
    ]
    for ci, col in enumerate(matrix.columns):
        cx = left + ci * cell + cell / 2
        parts.append(
            f'<text x="{cx:.1f}" y="{top - 6}" class="ax" transform="rotate(-45 {cx:.1f} {top - 6})">{_esc(col)}</text>'
        )
    for ri, (frm, row) in enumerate(matrix.iterrows()):
        y = top + ri * cell
        parts.append(
            f'<text x="{left - 6}" y="{y + cell / 2 + 4:.1f}" class="cl" text-anchor="end">{_esc(frm)}</text>'
        )
        total = float(row.sum()) or 1.0
        for ci, col in enumerate(matrix.columns):
            v = float(row[col])
            share = v / total
            fill = _blend("#f1f5ff", "#1e3a8a", share)
            x = left + ci * cell
            parts.append(
                f'<rect x="{x}" y="{y}" width="{cell - 2}" height="{cell - 2}" fill="{fill}">'
                f"<title>{_esc(frm)} → {_esc(col)}: {v:,.0f} ({share:.0%} of row)</title></rect>"
            )
            if v:
                colour = "#fff" if share > 0.45 else "#111"
                parts.append(
                    f'<text x="{x + (cell - 2) / 2:.1f}" y="{y + cell / 2 + 3:.1f}" class="hm" text-anchor="middle" '
                    f'fill="{colour}">{v:,.0f}</text>'
                )
    parts.append("</svg>")
    return "".join(parts)


# --------------------------------------------------------------------------- data for the charts


def segment_sizes(engine: Engine, scheme: str) -> pd.DataFrame:
    """Customers per segment for every snapshot of ``scheme`` (rows: as_of, columns: segment)."""
    s = rfm_snapshots.c
    stmt = (
        select(s.as_of, s.segment, func.count().label("n"))
        .where(s.scheme == scheme)
        .group_by(s.as_of, s.segment)
    )
    with engine.connect() as conn:
        rows = conn.execute(stmt).all()
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame(rows, columns=["as_of", "segment", "n"])
    df["as_of"] = df["as_of"].map(lambda d: d.isoformat() if hasattr(d, "isoformat") else str(d))
    return df.pivot_table(
        index="as_of", columns="segment", values="n", aggfunc="sum", fill_value=0
    ).sort_index()


def migration(
    engine: Engine, settings: Settings, scheme: str, from_as_of: date, to_as_of: date
) -> pd.DataFrame:
    """Customers moving from each segment of one snapshot to each of the next (``(new)`` / ``(gone)``
    for customers present in only one): :func:`segments.snapshots.migration_matrix`, labelled for the
    report."""
    mat = migration_matrix(engine, from_as_of, to_as_of, scheme, settings=settings)
    return mat.rename(index={"new": "(new)"}, columns={"gone": "(gone)"})


def _order_axis(labels: list[str], order: list[str], last: str) -> list[str]:
    known = [x for x in order if x in labels]
    rest = sorted(x for x in labels if x not in known and x != last)
    return known + rest + ([last] if last in labels else [])


def _source_columns(engine: Engine, name: str) -> list[str]:
    """Column names of a table or view (``SELECT * … LIMIT 0``: works where reflection does not)."""
    schema, tbl = split_table_name(name)
    try:
        with engine.connect() as conn:
            return list(
                conn.execute(select(text("*")).select_from(table(tbl, schema=schema)).limit(0)).keys()
            )
    except SQLAlchemyError:
        return []


def planted_orders(engine: Engine, settings: Settings, as_of: date, window_days: int) -> int:
    """Orders the demo planted (``source`` = :data:`segments.demo_data.PLANTED_SOURCE`) in the window after
    ``as_of``; 0 when the orders source has no ``source`` column."""
    if "source" not in {c.lower() for c in _source_columns(engine, settings.orders.table)}:
        return 0
    o = orders_source(settings, extra_columns=["source"])
    start = end_of_day(as_of)
    with engine.connect() as conn:
        n = conn.execute(
            select(func.count())
            .select_from(o)
            .where(
                o.c.source == PLANTED_SOURCE,
                o.c.ordered_at > start,
                o.c.ordered_at <= start + timedelta(days=window_days),
            )
        ).scalar()
    return int(n or 0)


def next_snapshot(engine: Engine, scheme: str, as_of: date) -> date | None:
    """The first ``scheme`` snapshot run after ``as_of``, or None."""
    with engine.connect() as conn:
        value = conn.execute(
            select(func.min(snapshot_runs.c.as_of)).where(
                snapshot_runs.c.scheme == scheme, snapshot_runs.c.as_of > as_of
            )
        ).scalar()
    return value.date() if isinstance(value, datetime) else value


def migration_lift(
    engine: Engine, settings: Settings, as_of: date, scheme: str
) -> tuple[date | None, pd.DataFrame]:
    """Did treated members move to a better segment by the next snapshot more often than their holdout?

    "Better" = earlier in the scheme's segment order (rfm11: Champions first, Lost last); a member absent
    from the next snapshot did not move up. Per segment: members and movers of each group, the difference of
    the two shares and its Newcombe interval (the conversion interval's method). Returns the next snapshot's
    as_of (None when there is none yet: the frame is empty) and one row per segment with a holdout."""
    nxt = next_snapshot(engine, scheme, as_of)
    camps = current_campaigns(engine, as_of, scheme)
    if nxt is None or not camps:
        return nxt, pd.DataFrame()
    try:
        order = load_scheme(scheme, settings).segment_names
    except ActivationError:
        order = []
    rank = {seg: i for i, seg in enumerate(order)}
    seg_of = {c.campaign_id: c.segment for c in camps}
    m, sn = campaign_members.c, rfm_snapshots.c
    stmt = (
        select(m.campaign_id, m.member_group, sn.segment, func.count())
        .select_from(
            campaign_members.outerjoin(
                rfm_snapshots, (sn.customer_id == m.customer_id) & (sn.as_of == nxt) & (sn.scheme == scheme)
            )
        )
        .where(m.campaign_id.in_(list(seg_of)))
        .group_by(m.campaign_id, m.member_group, sn.segment)
    )
    with engine.connect() as conn:
        counts = pd.DataFrame(conn.execute(stmt).all(), columns=["campaign_id", "group", "next", "n"])
    rows = []
    for cid, grp in counts.groupby("campaign_id", sort=False):
        seg = seg_of[str(cid)]
        here = rank.get(seg, -1)
        up = grp["next"].map(lambda s, here=here: s in rank and rank[s] < here)
        stats = {g: (int(grp.loc[up & (grp["group"] == g), "n"].sum()), int(grp.loc[grp["group"] == g, "n"].sum()))
                 for g in ("treatment", "holdout")}  # fmt: skip
        (xt, nt), (xh, nh) = stats["treatment"], stats["holdout"]
        if nt == 0 or nh == 0:
            continue
        d, low, high = newcombe_diff_interval(xt, nt, xh, nh)
        rows.append({"segment": seg, "treated": nt, "treated_up": xt, "holdout": nh, "holdout_up": xh,
                     "lift": d, "ci_low": low, "ci_high": high})  # fmt: skip
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame = (
            frame.set_index("segment")
            .reindex([s for s in segment_order(settings, scheme, list(frame["segment"]))])
            .reset_index()
        )
    return nxt, frame


WEEKDAYS = ("Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat")  # extract(dow): 0 = Sunday on both dialects


def timing_breakdowns(
    engine: Engine, settings: Settings, as_of: date, scheme: str, window_days: int
) -> tuple[dict[str, dict[str, list[tuple[str, float, int]]]], dict[str, int]]:
    """When the attributed orders came: ``({"hour": {segment: [(hour, share, orders)]}, "weekday": …},
    {segment: orders})``, top three per segment by orders, from the qualifying orders of treated members inside their campaign's
    attribution window (the report's own windows), computed in the warehouse (one grouped pass)."""
    windows = campaign_windows(engine, settings, as_of, scheme, window_days)
    if not windows:
        return {}, {}
    seg_of = {w.campaign_id: w.segment for w in windows}
    w = windows_values(windows)
    o = orders_source(settings)
    m = campaign_members.c
    hour = extract("hour", o.c.ordered_at)
    dow = extract("dow", o.c.ordered_at)
    stmt = (
        select(m.campaign_id, hour.label("hour"), dow.label("dow"), func.count().label("n"))
        .select_from(
            campaign_members.join(w, w.c.campaign_id == m.campaign_id).join(
                o, (o.c.customer_id == m.customer_id) & (o.c.ordered_at > w.c.start_at)
            )
        )
        .where(
            m.member_group == "treatment", o.c.ordered_at <= w.c.end_at, valid_status(settings, o.c.status)
        )
        .group_by(m.campaign_id, hour, dow)
    )
    with engine.connect() as conn:
        prefer_hash_joins(conn)
        rows = pd.DataFrame(conn.execute(stmt).all(), columns=["campaign_id", "hour", "dow", "n"])
    if rows.empty:
        return {}, {}
    rows["segment"] = rows["campaign_id"].map(seg_of)
    rows["weekday"] = rows["dow"].astype(int).map(lambda d: WEEKDAYS[d % 7])
    rows["hour"] = rows["hour"].astype(int).map(lambda h: f"{h:02d}:00")
    out: dict[str, dict[str, list[tuple[str, float, int]]]] = {}
    for dim in ("hour", "weekday"):
        per: dict[str, list[tuple[str, float, int]]] = {}
        for seg, grp in rows.groupby("segment", sort=False):
            top = grp.groupby(dim, as_index=False)["n"].sum().sort_values(["n", dim], ascending=[False, True])
            total = int(top["n"].sum())
            per[str(seg)] = [(str(v), int(n) / total, int(n)) for v, n in top.head(3).itertuples(index=False)]
        out[dim] = per
    totals = {str(k): int(v) for k, v in rows.groupby("segment")["n"].sum().items()}
    return out, totals


def breakdowns(
    engine: Engine, settings: Settings, as_of: date, scheme: str
) -> dict[str, dict[str, list[tuple[str, float, int]]]]:
    """Top countries / cities / categories per segment: ``{dimension: {segment: [(value, revenue, order rows)]}}``.

    Uses the orders of the segment's campaign members in the lookback before ``as_of`` (the profile the
    segment was built on). A dimension comes from the orders table; where the orders leave it empty (or
    lack it) and the customers table has a column of that name, the customer's value is used instead
    (country and city are often customer attributes). Only dimensions with values are reported.
    """
    ocols = {c.lower(): c for c in _source_columns(engine, settings.orders.table)}
    ccols = {c.lower(): c for c in _source_columns(engine, settings.customers.table)}
    cust_key = settings.customers.customer_id
    if cust_key.lower() not in ccols:
        ccols = {}
    wanted = [d for d in BREAKDOWN_DIMENSIONS if d in ocols or d in ccols]
    if not wanted:
        return {}
    camps = current_campaigns(engine, as_of, scheme)
    if not camps:
        return {}
    o = orders_source(settings, extra_columns=[ocols[d] for d in wanted if d in ocols])
    schema, cname = split_table_name(settings.customers.table)
    cu = table(cname, *[column(ccols[d]) for d in wanted if d in ccols], column(cust_key), schema=schema)
    dim_cols: list[Any] = []
    for d in wanted:
        if d in ocols and d in ccols:
            dim_cols.append(func.coalesce(o.c[ocols[d]], cu.c[ccols[d]].cast(String)))
        elif d in ocols:
            dim_cols.append(o.c[ocols[d]])
        else:
            dim_cols.append(cu.c[ccols[d]].cast(String))
    seg_of = {c.campaign_id: c.segment for c in camps}
    m = campaign_members.c
    cond = [
        m.campaign_id.in_(list(seg_of)),
        o.c.ordered_at <= end_of_day(as_of),
        valid_status(settings, o.c.status),
    ]
    if settings.lookback_days:
        cond.append(o.c.ordered_at > end_of_day(as_of - timedelta(days=settings.lookback_days)))
    source = campaign_members.join(o, o.c.customer_id == m.customer_id)
    if ccols:
        source = source.outerjoin(cu, cu.c[cust_key].cast(String) == m.customer_id)
    out: dict[str, dict[str, list[tuple[str, float, int]]]] = {}
    stmt = (
        select(
            m.campaign_id,
            *[c.label(f"d{i}") for i, c in enumerate(dim_cols)],
            *[func.grouping(c).label(f"g{i}") for i, c in enumerate(dim_cols)],
            func.sum(o.c.amount).label("revenue"),
            func.count().label("orders"),  # order rows; count(distinct) would force a sort per set
        )
        .select_from(source)
        .where(*cond)
        .group_by(func.grouping_sets(*[tuple_(m.campaign_id, c) for c in dim_cols]))
    )  # one pass over the orders for every dimension
    with engine.connect() as conn:
        prefer_hash_joins(conn)
        result = conn.execute(stmt)
        all_rows = pd.DataFrame(result.all(), columns=list(result.keys()))
    if all_rows.empty:
        return {}
    all_rows["segment"] = all_rows["campaign_id"].map(seg_of)
    for i, dim in enumerate(wanted):
        df = all_rows[(all_rows[f"g{i}"] == 0) & all_rows[f"d{i}"].notna()]
        if df.empty:
            continue
        per: dict[str, list[tuple[str, float, int]]] = {}
        for seg, grp in df.groupby("segment", sort=False):
            top = grp.groupby(f"d{i}", as_index=False)[["revenue", "orders"]].sum()
            top = top.sort_values(["revenue", f"d{i}"], ascending=[False, True]).head(TOP_N)
            per[str(seg)] = [(str(v), float(r), int(n)) for v, r, n in top.itertuples(index=False)]
        out[dim] = per
    return out


# --------------------------------------------------------------------------- the report


def _fmt(v: Any, kind: str = "num") -> str:
    if not _finite(v):
        return "n/a"
    if kind == "pct":
        return f"{v * 100:.2f} %"
    if kind == "int":
        return f"{int(v):,}"
    if kind == "ratio":
        return f"{v:.2f}"
    return f"{v:,.2f}"


def _ci(lo: Any, hi: Any, kind: str = "num") -> str:
    if not (_finite(lo) and _finite(hi)):
        return ""
    if kind == "pp":
        return f"[{lo * 100:+.2f}, {hi * 100:+.2f}] pp"
    return f"[{lo:,.2f}, {hi:,.2f}]"


def _share(r: Any) -> str:
    n = r["treated"] + r["holdout"]
    return f"{r['holdout'] / n:.0%}" if _finite(n) and n > 0 else "n/a"


def _table_rows(df: pd.DataFrame, backtest: bool = False) -> list[dict[str, str]]:
    rows = []
    for _, r in df.iterrows():
        no_lift = r["status"] in (STATUS_NO_HOLDOUT, STATUS_EMPTY)
        # a backtest sent nothing: a profit or ROI would be chance, as the summary cards say too
        no_profit = str(r["status"]) if no_lift else ("n/a (backtest)" if backtest else None)
        rows.append(
            {
                "segment": str(r["segment"]),
                "offer": str(r["offer_type"]).replace("_", " "),
                "treated": _fmt(r["treated"], "int"),
                "holdout": _fmt(r["holdout"], "int")
                + f" ({_share(r)}"
                + (f"; MDE {r['conversion_mde'] * 100:.1f} pp)" if _finite(r["conversion_mde"]) else ")"),
                "tconv": _fmt(r["treated_conversion_rate"], "pct"),
                "hconv": _fmt(r["holdout_conversion_rate"], "pct"),
                "lift": lift_text(r),
                "trev": _fmt(r["treated_revenue_per_member"]),
                "hrev": _fmt(r["holdout_revenue_per_member"]),
                "rlift": str(r["status"])
                if no_lift
                else f"{_fmt(r['incremental_revenue_per_member'])} "
                f"{_ci(r['incremental_revenue_per_member_ci_low'], r['incremental_revenue_per_member_ci_high'])}",
                "cuped": str(r["status"])
                if no_lift
                else f"{_fmt(r['cuped_incremental_revenue_per_member'])} "
                f"{_ci(r['cuped_incremental_revenue_per_member_ci_low'], r['cuped_incremental_revenue_per_member_ci_high'])}"
                f", {_fmt(r['cuped_revenue_variance_reduction'], 'pct')}",
                "redeemed": _fmt(r["coupons_redeemed"], "int"),
                "cost": _fmt(r["offer_cost"]),
                "profit": no_profit
                or f"{_fmt(r['incremental_profit'])} "
                f"{_ci(r['incremental_profit_ci_low'], r['incremental_profit_ci_high'])}",
                "roi": no_profit
                or f"{_fmt(r['roi'], 'ratio')} {_ci(r['roi_ci_low'], r['roi_ci_high'])}".strip(),
                "status": str(r["status"]),
                "significant": ("yes" if r["significant"] else "no")
                + f" (Holm: {'yes' if r['conversion_significant_holm'] else 'no'})",
                "method": f"{r['conversion_ci_method']} / {r['revenue_ci_method']}",
                "sent": _fmt(r["sent"], "int"),
                "open_rate": _fmt(r["open_rate"], "pct"),
                "click_rate": _fmt(r["click_rate"], "pct"),
                "unsub_rate": _fmt(r["unsubscribe_rate"], "pct"),
                "bounced": _fmt(r["bounced"], "int"),
            }
        )
    return rows


def _group_series(df: pd.DataFrame, value: str, ci: str) -> list[dict[str, Any]]:
    """The treated and the holdout bars of a chart: column ``<group>_<value>`` with the interval
    ``<group>_<ci>_ci_low`` / ``_ci_high``."""
    return [
        {
            "name": name,
            "color": color,
            "values": list(df[f"{group}_{value}"]),
            "lows": list(df[f"{group}_{ci}_ci_low"]),
            "highs": list(df[f"{group}_{ci}_ci_high"]),
        }
        for name, group, color in (
            ("treated", "treated", TREATED_COLOR),
            ("holdout", "holdout", HOLDOUT_COLOR),
        )
    ]


def _lift_charts(df: pd.DataFrame) -> tuple[str, str]:
    """The conversion and the revenue-per-member charts, treated vs holdout (empty without rows)."""
    if not len(df):
        return "", ""
    cats = [str(s) for s in df["segment"]]
    conv_chart = grouped_bar_chart(
        "Conversion rate in the attribution window (95 % Wilson CI)",
        cats,
        _group_series(df, "conversion_rate", "conversion"),
        "{:.1%}",
    )
    rev_chart = grouped_bar_chart(
        "Revenue per member (95 % t CI; non-buyers count as 0)",
        cats,
        _group_series(df, "revenue_per_member", "revenue_per_member"),
        "{:,.2f}",
    )
    return conv_chart, rev_chart


def _sizes_chart(engine: Engine, settings: Settings, scheme: str) -> str:
    """Segment sizes over every snapshot of the scheme, stacked in the scheme's segment order."""
    sizes = segment_sizes(engine, scheme)
    size_order = segment_order(settings, scheme, [str(c) for c in sizes.columns]) if not sizes.empty else []
    return stacked_bar_chart(f"Segment sizes over snapshots ({scheme})", sizes, size_order)


def _migration_section(engine: Engine, settings: Settings, scheme: str, as_of: date) -> tuple[str, str]:
    """The migration heatmap from the previous snapshot to ``as_of``, or a note why there is none:
    ``(chart, note)``."""
    prev = latest_snapshot_as_of(engine, scheme, before=as_of)
    has_current = latest_snapshot_as_of(engine, scheme, before=as_of + timedelta(days=1)) == as_of
    if not has_current:
        return "", f"no {scheme} snapshot stored for {as_of.isoformat()}: no migration matrix"
    if prev is None:
        return "", f"{as_of.isoformat()} is the first {scheme} snapshot: no previous snapshot to compare with"
    mat = migration(engine, settings, scheme, prev, as_of)
    if mat.empty:
        return "", ""
    mat = mat.loc[(mat.sum(axis=1) > 0), (mat.sum(axis=0) > 0)]
    seg_names = segment_order(
        settings, scheme, list({*map(str, mat.index), *map(str, mat.columns)} - {"(new)", "(gone)"})
    )
    mat = mat.reindex(
        index=_order_axis([str(i) for i in mat.index], seg_names, "(new)"),
        columns=_order_axis([str(c) for c in mat.columns], seg_names, "(gone)"),
        fill_value=0,
    )
    return heatmap(f"Migration {prev.isoformat()} → {as_of.isoformat()} (shade = share of row)", mat), ""


def _breakdown_rows(
    bd: dict[str, dict[str, list[tuple[str, float, int]]]], order: list[str]
) -> list[dict[str, str]]:
    """Per segment: the top values of each dimension with their revenue."""
    breakdown_rows = []
    for seg in order:
        cells = {}
        for dim, per in bd.items():
            cells[dim] = ", ".join(f"{v} ({rev:,.0f})" for v, rev, _ in per.get(seg, [])) or "–"
        if cells:
            breakdown_rows.append({"segment": seg, **cells})
    return breakdown_rows


def _timing_rows(
    timing: dict[str, dict[str, list[tuple[str, float, int]]]], timing_n: dict[str, int], order: list[str]
) -> list[dict[str, str]]:
    """Per segment with orders: the top values of each timing dimension with their share of orders."""
    return [
        {
            "segment": seg,
            **{
                dim: ", ".join(f"{v} ({share:.0%})" for v, share, _ in per.get(seg, [])) or "–"
                for dim, per in timing.items()
            },
            "orders": f"{timing_n[seg]:,}",
        }
        for seg in order
        if seg in timing_n
    ]


def _migration_lift_rows(lift: pd.DataFrame) -> list[dict[str, str]]:
    """Per segment: the share moving up a segment, treated vs holdout, and the lift with its interval."""
    return [
        {
            "segment": str(r["segment"]),
            "treated": f"{_fmt(r['treated_up'] / r['treated'], 'pct')} of {_fmt(r['treated'], 'int')}",
            "holdout": f"{_fmt(r['holdout_up'] / r['holdout'], 'pct')} of {_fmt(r['holdout'], 'int')}",
            "lift": f"{r['lift'] * 100:+.2f} pp [{r['ci_low'] * 100:+.2f}, {r['ci_high'] * 100:+.2f}]",
            "significant": "yes" if r["ci_low"] > 0 or r["ci_high"] < 0 else "no",
        }
        for _, r in lift.iterrows()
    ]


def _programme_cells(p: ProgrammeLift | None) -> dict[str, str] | None:
    """The programme-vs-global-control table, formatted; None without a global control."""
    if p is None:
        return None
    cd, rd = p.conversion_diff, p.revenue_diff
    return {
        "treated": _fmt(p.treated, "int"),
        "control": _fmt(p.control, "int"),
        "tconv": _fmt(p.treated_conversion, "pct"),
        "hconv": _fmt(p.control_conversion, "pct"),
        "conv_diff": f"{_fmt(cd[0], 'pp')} {_ci(cd[1], cd[2], 'pp')}",
        "trev": _fmt(p.treated_revenue),
        "hrev": _fmt(p.control_revenue),
        "rev_diff": f"{_fmt(rd[0])} {_ci(rd[1], rd[2])}",
        "n_quarters": str(len(p.quarters)),
        "quarters": ", ".join(q.isoformat() for q in p.quarters),
    }


def _totals_cells(df: pd.DataFrame, settings: Settings) -> dict[str, str] | None:
    """The formatted totals across segments (:func:`outcomes.roi.roi_totals`), None without rows."""
    totals = roi_totals(df, settings) if len(df) else {}
    if not totals:
        return None
    return {
        "treated": _fmt(totals.get("treated"), "int"),
        "holdout": _fmt(totals.get("holdout"), "int"),
        "tconv": _fmt(totals.get("treated_conversion_rate"), "pct"),
        "hconv": _fmt(totals.get("holdout_conversion_rate"), "pct"),
        "trev": _fmt(totals.get("treated_revenue_per_member")),
        "hrev": _fmt(totals.get("holdout_revenue_per_member")),
        "cost": _fmt(totals.get("offer_cost")),
        "profit": _fmt(totals.get("incremental_profit")),
        "roi": _fmt(totals.get("roi"), "ratio"),
    }


def _header_context(engine: Engine, settings: Settings, df: pd.DataFrame) -> dict[str, Any]:
    """The report's title, period, backtest facts, warnings and notes (from ``df.attrs``)."""
    attrs = df.attrs
    as_of: date = attrs["as_of"]
    backtest = attrs.get("backtest", False)
    return {
        "title": f"Segment ROI — {attrs['scheme']}, as_of {as_of.isoformat()}",
        "as_of": as_of.isoformat(),
        "scheme": attrs["scheme"],
        "window_days": attrs["window_days"],
        "backtest": backtest,
        "planted_orders": planted_orders(engine, settings, as_of, int(attrs["window_days"]))
        if backtest
        else 0,
        "planted_source": PLANTED_SOURCE,
        "data_end": attrs["data_end"].date().isoformat() if attrs.get("data_end") else "no orders",
        "generated_at": str(attrs.get("generated_at", "")),
        "send_times": sorted({str(t) for t in df["send_time"]}) if len(df) else [],
        "warnings": attrs.get("warnings", []),
        "notes": attrs.get("notes", []),
    }


def _method_context(settings: Settings) -> dict[str, Any]:
    """The methods and settings the report's footnotes state."""
    return {
        "conversion_ci_method": CONVERSION_CI_METHOD,
        "revenue_ci_method": REVENUE_CI_METHOD,
        "cuped_method": CUPED_METHOD,
        "multiple_comparisons_method": MULTIPLE_COMPARISONS_METHOD,
        "gross_margin": f"{settings.gross_margin:.0%}",
        "cost_per_send": _fmt(settings.cost_per_send),
        "min_group_size": settings.min_group_size,
        "excluded_statuses": ", ".join(settings.excluded_statuses) or "none",
        "currency": settings.brand.currency,
    }


def render_roi_html(engine: Engine, settings: Settings, df: pd.DataFrame) -> str:
    """The HTML report for a table from :func:`outcomes.roi.compute_roi`."""
    attrs = df.attrs
    as_of: date = attrs["as_of"]
    scheme: str = attrs["scheme"]
    order = segment_order(settings, scheme, [str(s) for s in df["segment"]])
    df = df.set_index("segment", drop=False).loc[order] if len(df) else df
    df.attrs.update(attrs)

    conv_chart, rev_chart = _lift_charts(df)
    mig_chart, mig_note = _migration_section(engine, settings, scheme, as_of)
    bd = breakdowns(engine, settings, as_of, scheme)
    timing, timing_n = (
        timing_breakdowns(engine, settings, as_of, scheme, int(attrs["window_days"])) if len(df) else ({}, {})
    )
    lift_as_of, lift = migration_lift(engine, settings, as_of, scheme)
    env = Environment(
        loader=FileSystemLoader(str(TEMPLATES_DIR)),
        autoescape=select_autoescape(["html", "j2"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    tpl = env.get_template("roi_report.html.j2")
    header = _header_context(engine, settings, df)
    return tpl.render(
        **header,
        # a backtest's profit is chance, unless a known effect was planted (the demo): then it is the point
        rows=_table_rows(df, bool(header["backtest"]) and not header["planted_orders"]),
        has_events=bool(
            len(df) and (df[["sent", "opened", "clicked", "unsubscribed", "bounced"]].to_numpy().sum() > 0)
        ),
        totals=_totals_cells(df, settings),
        conv_chart=Markup(conv_chart),
        rev_chart=Markup(rev_chart),
        sizes_chart=Markup(_sizes_chart(engine, settings, scheme)),
        migration_chart=Markup(mig_chart),
        migration_note=mig_note,
        breakdown_dims=list(bd),
        breakdown_rows=_breakdown_rows(bd, order),
        timing_rows=_timing_rows(timing, timing_n, order),
        migration_lift_as_of=lift_as_of.isoformat() if lift_as_of else "",
        migration_lift_rows=_migration_lift_rows(lift),
        programme=_programme_cells(
            programme_lift(engine, settings, as_of, scheme, int(attrs["window_days"]))
        ),
        **_method_context(settings),
    )


def csv_text(df: pd.DataFrame) -> str:
    """The report CSV: one row per segment, the columns of :data:`outcomes.roi.CSV_COLUMNS` (text cells
    neutralised for spreadsheets, :func:`activation.files.csv_cell`)."""
    out = safe_frame(df.reindex(columns=CSV_COLUMNS))
    return str(out.to_csv(index=False, lineterminator="\n", float_format="%.12g"))


def write_csv(df: pd.DataFrame, path: Path) -> None:
    """Write :func:`csv_text` to ``path`` (whole or not at all)."""
    atomic_write(output_file(path), csv_text(df))


def write_roi_report(
    engine: Engine,
    settings: Settings,
    as_of: date,
    scheme: str | None,
    out: str | Path,
    window_days: int | None = None,
) -> ReportPaths:
    """Write the HTML report to ``out`` and the CSV next to it (same stem, ``.csv``).

    Raises:
        NotFoundError: no campaign for that as_of and scheme (run ``activation plan`` first).
    """
    out = output_file(out, example=f"roi-{as_of.isoformat()}.html")
    if out.suffix.lower() == ".csv":
        raise InputError(
            f"--out {out} names the CSV; the HTML report goes to --out and the CSV next to it",
            fix=f"give the HTML file, e.g. --out {out.with_suffix('.html')}",
        )
    csv_path = output_file(out.with_suffix(".csv"), flag=f"the CSV next to --out {out}:")
    df = compute_roi(engine, settings, as_of, scheme, window_days)
    page = render_roi_html(engine, settings, df)
    atomic_write_all([(csv_path, csv_text(df)), (out, page)])
    return ReportPaths(
        html=out,
        csv=csv_path,
        warnings=tuple(df.attrs.get("warnings", ())),
        rows=tuple(df.reindex(columns=CSV_COLUMNS).to_dict(orient="records")),
    )
