"""Snapshots: compute a scheme as of a date into ``rfm_snapshots`` (atomically), summarise, compare.

One snapshot = one transaction of the state store: the metrics are materialised once in a temporary table,
the cut-points are read from it, the previous rows of the same as_of+scheme are deleted and the new ones
inserted with ``INSERT … SELECT`` (pushed down), and the ``snapshot_runs`` row records the cut-points and
warnings. Either all of it is written, or nothing.

On a Spark warehouse (``ACTIVATION_WAREHOUSE_URL=sc://…``) the same statements run in Spark: the metrics are
materialised there once (``CACHE TABLE … AS SELECT``), the cut-points read from them, and the scored rows
(customer, R/F/M, scores, segment) come back as Arrow and are bulk-loaded into the state store (DuckDB: an
Arrow scan; PostgreSQL: ``COPY``) inside the state store's transaction, so a failure still writes nothing.
The data checks run there too (the same statements, compiled for Spark), except the relationships check
(see :data:`SPARK_RELATIONSHIPS_SKIPPED`); model-based schemes do not run on Spark.
"""

from __future__ import annotations

import io
import json
import time as _time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import SmallInteger, String, case, cast, column, delete, func, insert, literal, select, table
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from activation import dialect
from activation.chunks import chunked
from activation.clock import utcnow
from activation.dialect import CreateTempTableAs, serialize
from activation.errors import ActivationError, ConfigError, NotFoundError, WarehouseError
from activation.files import atomic_text, csv_writer, output_file
from activation.settings import Settings
from activation.spark import SparkWarehouse
from activation.tables import rfm_snapshots, snapshot_runs, source_table
from activation.warehouse import db_reason, has_table, spark_warehouse
from segments import checks, rfm
from segments.schemes import (
    METRIC_NAMES,
    AssignContext,
    Scheme,
    get_assigner,
    load_scheme,
    reachable_segments,
)

EXPORT_COLUMNS = [
    "customer_id",
    "recency_days",
    "frequency",
    "monetary",
    "r_score",
    "f_score",
    "m_score",
    "segment",
]
# A snapshot whose as_of is this many days after the newest order is probably missing recent data.
STALE_DATA_DAYS = 7

#: the warning of a snapshot computed on Spark: its customers are not checked against the customers table,
#: which lives in the state store
SPARK_RELATIONSHIPS_SKIPPED = (
    "relationships check skipped: the warehouse is Spark and the customers table is in the state store, so "
    "customers with orders are not checked against it"
)


@dataclass
class SnapshotResult:
    """What :func:`compute_snapshot` wrote."""

    as_of: date
    scheme: str
    scheme_hash: str
    lookback_days: int | None
    customers: int
    segments: dict[str, int]
    cutpoints: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    checks: Any = None
    seconds: float = 0.0
    #: seconds per step: ``metrics`` (materialised once), ``cutpoints``, ``rows`` (scoring and writing the
    #: rows; on Spark ``fetch``, the scored rows as Arrow, and ``insert``, their bulk load, instead)
    steps: dict[str, float] = field(default_factory=dict)


def last_quarter_end(today: date) -> date:
    """The last day of the last full calendar quarter before ``today`` (the default ``as_of``)."""
    quarter_start = date(today.year, 3 * ((today.month - 1) // 3) + 1, 1)
    return quarter_start - timedelta(days=1)


def _resolve_scheme(scheme: str | Scheme, settings: Settings) -> Scheme:
    return scheme if isinstance(scheme, Scheme) else load_scheme(scheme, settings)


@dataclass
class _InStore:
    """The warehouse when it is the state store itself: statements run on the transaction's connection."""

    conn: Connection

    @contextmanager
    def cached(self, name: str, query: Any, what: str = "") -> Iterator[None]:
        """``query`` materialised once as the temporary table ``name`` for the block (dropped after it;
        after a failure the rollback drops it)."""
        self.conn.execute(CreateTempTableAs(name, query))
        yield
        self.conn.exec_driver_sql(f"DROP TABLE {self.conn.dialect.identifier_preparer.quote(name)}")

    def one(self, query: Any, what: str = "") -> dict[str, Any]:
        return dict(self.conn.execute(query).mappings().one())


#: where the segmentation statements run: the state store's own database, or a Spark warehouse
Runner = _InStore | SparkWarehouse


def _source_name(settings: Settings, scheme: Scheme) -> str:
    return "contact_events" if scheme.source == "contact_events" else settings.orders.table


def _first_last(side: Runner, settings: Settings, scheme: Scheme) -> tuple[Any, Any]:
    if scheme.source == "contact_events":
        src = source_table("contact_events", "occurred_at")
        at = src.c.occurred_at
    else:
        src = source_table(settings.orders.table, settings.orders.ordered_at)
        at = src.c[settings.orders.ordered_at]
    row = side.one(select(func.min(at).label("first"), func.max(at).label("last")).select_from(src))
    return row["first"], row["last"]


def _no_customers_error(
    side: Runner, settings: Settings, scheme: Scheme, window: rfm.Window
) -> NotFoundError:
    first, last = _first_last(side, settings, scheme)
    what = "contact events" if scheme.source == "contact_events" else f"orders in {settings.orders.table!r}"
    if first is None:
        return NotFoundError(f"there are no {what}", fix="load data first (`activation ingest …`)")
    first_d = first.date() if isinstance(first, datetime) else first
    last_d = last.date() if isinstance(last, datetime) else last
    if first_d > window.as_of:
        return NotFoundError(
            f"as_of {window.as_of} is before any data: the first of the {what} is on {first_d}",
            fix=f"use --as-of {first_d} or later (data runs {first_d} to {last_d})",
        )
    since = f"{window.start:%Y-%m-%d}" if window.start is not None else "the beginning"
    return NotFoundError(
        f"no counting {what} in the window {since} to {window.as_of} "
        f"(data runs {first_d} to {last_d}; excluded statuses {settings.excluded_statuses})",
        fix="widen --lookback-days or choose another --as-of",
    )


def _analyse_cuts(
    scheme: Scheme, stats: dict[str, Any]
) -> tuple[dict[str, list[float]], dict[str, Any], list[str]]:
    cuts: dict[str, list[float]] = {}
    record: dict[str, Any] = {}
    warnings: list[str] = []
    empties: dict[str, list[int]] = {}
    for m, bins in sorted(scheme.scores.items()):
        cuts[m] = rfm.thresholds(m, bins, stats)
        empty = rfm.empty_scores(m, bins, cuts[m], stats)
        empties[m] = empty
        record[m] = {
            "metric": METRIC_NAMES[m],
            "method": bins.method,
            "bins": bins.n,
            "thresholds": cuts[m],
            "empty_scores": empty,
            "min": _num(stats[f"{m}_min"]),
            "max": _num(stats[f"{m}_max"]),
            "mean": _num(stats[f"{m}_mean"]),
        }
        if empty:
            why = (
                f"tied cut-points {cuts[m]}"
                if bins.method == "quantile"
                else f"no customer in those bins ({bins.method})"
            )
            warnings.append(
                f"{METRIC_NAMES[m]}: score(s) {', '.join(map(str, empty))} of 1..{bins.n} are empty ({why}); "
                f"scores are skipped, not invented"
            )
    if scheme.is_rules:
        reached = set(reachable_segments(scheme, empties))
        unreachable = [s for s in scheme.segment_names if s not in reached]
        if unreachable:
            warnings.append(
                f"segment(s) {', '.join(unreachable)} cannot get any customer with these cut-points "
                f"(their score cells are empty)"
            )
    return cuts, record, warnings


def _num(v: Any) -> Any:
    return float(v) if v is not None else None


def compute_snapshot(
    engine: Engine,
    settings: Settings,
    as_of: date,
    scheme: str | Scheme,
    lookback_days: int | None = None,
    *,
    run_checks: bool = True,
) -> SnapshotResult:
    """Compute ``scheme`` as of ``as_of`` in the warehouse and store it, replacing the same as_of+scheme.

    Orders count when ``as_of - lookback_days < date(ordered_at) <= as_of`` and their status is not
    excluded. Everything happens in one transaction: a failure leaves the previous snapshot untouched.

    Args:
        lookback_days: overrides ``settings.lookback_days`` (None there means no lower bound).
        run_checks: run :func:`segments.checks.run_checks` first (blocking failures stop before writing).

    Raises:
        ConfigError: unknown or invalid scheme, bad lookback.
        DataCheckError: a blocking data check failed.
        NotFoundError: no counting orders (e.g. as_of before any data).
        WarehouseError: the warehouse failed.
    """
    started = _time.perf_counter()
    scheme = _resolve_scheme(scheme, settings)
    lookback = lookback_days if lookback_days is not None else settings.lookback_days
    if lookback is not None and lookback < 1:
        raise ConfigError(
            f"lookback_days must be at least 1, got {lookback}", fix="pass --lookback-days 365 or similar"
        )
    window = rfm.Window.of(as_of, lookback)
    report = None
    spark = spark_warehouse(settings)
    if spark is not None:
        _check_spark_source(spark, settings, scheme)
        if run_checks:
            report = checks.run_checks(
                engine, settings, source=scheme.source, relationships=False, spark=spark
            )
    elif run_checks:
        # the relationship check runs on the snapshot's own per-customer metrics (no second pass over orders)
        report = checks.run_checks(engine, settings, source=scheme.source, relationships=False)
    elif scheme.source == "orders" and not has_table(engine, settings.orders.table):
        raise WarehouseError(
            f"table {settings.orders.table!r} does not exist in the warehouse",
            fix="load data with `activation ingest` or set ACTIVATION_ORDERS__TABLE",
        )
    try:
        with engine.begin() as conn:
            serialize(conn, f"snapshot:{scheme.name}:{as_of.isoformat()}")
            side = spark if spark is not None else _InStore(conn)
            result = _compute_in(conn, side, engine, settings, scheme, window, lookback, report)
    except ActivationError:
        raise
    except SQLAlchemyError as exc:
        reason = db_reason(exc)
        raise WarehouseError(
            f"computing snapshot {scheme.name} as of {as_of} failed in the warehouse: {reason}",
            fix="check the orders source settings (ACTIVATION_ORDERS__*) and the warehouse; nothing was written",
        ) from exc
    result.checks = report
    if report is not None:
        result.warnings[:0] = [report.describe(r) for r in report.warnings]
    if spark is not None and run_checks and scheme.source == "orders":
        result.warnings.insert(0, SPARK_RELATIONSHIPS_SKIPPED)
    result.seconds = _time.perf_counter() - started
    return result


def _check_spark_source(spark: SparkWarehouse, settings: Settings, scheme: Scheme) -> None:
    """What a snapshot on Spark needs before it starts: a rule-based scheme and its source table there."""
    if not scheme.is_rules:
        raise ConfigError(
            f"scheme {scheme.name} is of kind {scheme.kind}, and a Spark warehouse computes rule-based "
            "schemes only so far",
            fix="use a rule-based scheme (e.g. --scheme rfm11), or a DuckDB/PostgreSQL warehouse for this one",
        )
    name = _source_name(settings, scheme)
    if not spark.has_table(name):
        setting = (
            "the contact_events table" if scheme.source == "contact_events" else "ACTIVATION_ORDERS__TABLE"
        )
        raise WarehouseError(
            f"table {name!r} does not exist in the Spark warehouse",
            fix=f"create it in Spark (or check {setting}); `activation ingest` does not load into Spark",
        )


def _compute_in(
    conn: Connection,
    side: Runner,
    engine: Engine,
    settings: Settings,
    scheme: Scheme,
    window: rfm.Window,
    lookback: int | None,
    report: checks.CheckReport | None = None,
) -> SnapshotResult:
    tmp_name = f"rfm_metrics_{uuid.uuid4().hex[:12]}"
    metrics = table(
        tmp_name, column("customer_id"), column("recency_days"), column("frequency"), column("monetary")
    )
    steps = _Steps()
    with side.cached(tmp_name, rfm.metrics_select(settings, scheme, window), "computing the metrics"):
        steps.done("metrics")
        cut_q = rfm.cutpoints_select(metrics, scheme).add_columns(
            func.min(metrics.c.recency_days).label("recency_min")
        )
        stats = side.one(cut_q, "reading the cut-points")
        steps.done("cutpoints")
        if not stats["customers"]:
            raise _no_customers_error(side, settings, scheme, window)
        cuts, record, warnings = _analyse_cuts(scheme, stats)
        if report is not None and scheme.source == "orders" and not isinstance(side, SparkWarehouse):
            related = checks.relationships_check(conn, settings, select(metrics.c.customer_id))
            if related is not None:
                report.results.append(related)
        warnings += _date_warnings(window, stats["recency_min"])
        key = (rfm_snapshots.c.as_of == window.as_of) & (rfm_snapshots.c.scheme == scheme.name)
        conn.execute(delete(rfm_snapshots).where(key))
        conn.execute(
            delete(snapshot_runs).where(
                (snapshot_runs.c.as_of == window.as_of) & (snapshot_runs.c.scheme == scheme.name)
            )
        )
        scored = rfm.scored_select(metrics, scheme, cuts, window.as_of)
        if isinstance(side, SparkWarehouse):
            rows = _fetch_scored(side, scheme, scored, window.as_of)
            steps.done("fetch")
            _bulk_insert_snapshot(conn, rows)
            steps.done("insert")
        elif scheme.is_rules:
            conn.execute(insert(rfm_snapshots).from_select([c.name for c in scored.selected_columns], scored))
            steps.done("rows")
        else:
            _assign_with_model(conn, engine, settings, scheme, window, scored, record, warnings)
            steps.done("rows")

    counts: dict[str, int] = dict(
        conn.execute(
            select(rfm_snapshots.c.segment, func.count()).where(key).group_by(rfm_snapshots.c.segment)
        ).all()
    )
    segments = {name: int(counts.get(name, 0)) for name in scheme.segment_names}
    conn.execute(
        insert(snapshot_runs).values(
            as_of=window.as_of,
            scheme=scheme.name,
            scheme_hash=scheme.scheme_hash,
            lookback_days=lookback,
            customers=int(stats["customers"]),
            cutpoints=json.dumps(record, sort_keys=True),
            warnings=json.dumps(warnings),
            created_at=utcnow(),
        )
    )
    return SnapshotResult(
        as_of=window.as_of,
        scheme=scheme.name,
        scheme_hash=scheme.scheme_hash,
        lookback_days=lookback,
        customers=int(stats["customers"]),
        segments=segments,
        cutpoints=record,
        warnings=warnings,
        steps=steps.seconds,
    )


class _Steps:
    """Seconds per named step, each from the end of the one before."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = _time.perf_counter()

    def done(self, name: str) -> None:
        now = _time.perf_counter()
        self.seconds[name] = round(now - self._last, 3)
        self._last = now


def _fetch_scored(spark: SparkWarehouse, scheme: Scheme, scored: Any, as_of: date) -> Any:
    """The scored rows from Spark as Arrow, without what this side can add: ``as_of`` and ``scheme`` are
    constants, and the segment travels as its index in the scheme's names (a byte, not a string, per row);
    a fifth less to move (10M orders: 119 MB of Arrow became ~75 MB)."""
    import numpy as np
    import pyarrow as pa

    names = list(dict.fromkeys([r.segment for r in scheme.rules] + [scheme.default or ""]))
    rows = scored.subquery("scored_rows")
    code = case({name: i for i, name in enumerate(names)}, value=rows.c.segment)
    kept = [c for c in rows.c if c.name not in ("as_of", "scheme", "segment")]
    got = spark.arrow(select(*kept, cast(code, SmallInteger).label("segment_code")), "scoring the customers")
    n = got.num_rows
    codes = got.column("segment_code").combine_chunks().cast(pa.int32())
    segment = pa.DictionaryArray.from_arrays(codes, pa.array(names, pa.string())).cast(pa.string())
    scheme_col = pa.DictionaryArray.from_arrays(
        pa.array(np.zeros(n, dtype=np.int32)), pa.array([scheme.name], pa.string())
    ).cast(pa.string())
    as_of_col = pa.array(np.full(n, np.datetime64(as_of, "D")), pa.date32())
    got = got.drop_columns(["segment_code"])
    return (
        got.append_column("as_of", as_of_col)
        .append_column("scheme", scheme_col)
        .append_column("segment", segment)
    )


def _date_warnings(window: rfm.Window, recency_min: Any) -> list[str]:
    """A gap between the newest counting order and as_of, and an as_of in the future."""
    warnings = []
    if recency_min is not None and recency_min > STALE_DATA_DAYS:
        warnings.append(
            f"as_of {window.as_of} is {recency_min} days after the newest counting order: every "
            f"recency includes that gap (data not loaded up to as_of?)"
        )
    if window.as_of > date.today():
        warnings.append(f"as_of {window.as_of} is in the future: later orders will change this snapshot")
    return warnings


def _assign_with_model(
    conn: Connection,
    engine: Engine,
    settings: Settings,
    scheme: Scheme,
    window: rfm.Window,
    scored: Any,
    record: dict[str, Any],
    warnings: list[str],
) -> None:
    """Model-based kinds: metrics and scores come from the same SQL; the registered assigner picks the
    segment in Python; rows are written to the same table in the same transaction."""
    assigner = get_assigner(scheme.kind)
    frame = _read_frame(conn, scored)
    ctx = AssignContext(engine=engine, settings=settings, scheme=scheme, as_of=window.as_of)
    segments = assigner(ctx, frame.drop(columns=["segment"]))
    if len(segments) != len(frame):
        raise ConfigError(
            f"the {scheme.kind} assigner returned {len(segments)} segments for {len(frame)} customers",
            fix="return one segment per metrics row",
        )
    frame["segment"] = list(segments)
    unknown = sorted(set(frame["segment"]) - set(scheme.segment_names))
    if unknown:
        raise ConfigError(
            f"the {scheme.kind} assigner produced segments {unknown} not listed in scheme {scheme.name}",
            fix=f"list them under `segments:` in {scheme.name}.yaml",
        )
    import pyarrow as pa

    _bulk_insert_snapshot(
        conn, pa.Table.from_pandas(frame[[c.name for c in rfm_snapshots.c]], preserve_index=False)
    )
    warnings.extend(ctx.notes)
    if ctx.info:
        record["model"] = ctx.info


def _read_frame(conn: Connection, query: Any) -> pd.DataFrame:
    """The rows of ``query`` as a DataFrame (DuckDB: one columnar fetch; others: through the driver)."""
    if dialect.is_duckdb(conn):
        compiled = query.compile(conn, compile_kwargs={"literal_binds": True})
        driver: Any = conn.connection.driver_connection
        return driver.execute(str(compiled)).df()
    return pd.DataFrame(conn.execute(query).mappings().all())


def _bulk_insert_snapshot(conn: Connection, rows: Any) -> None:
    """Insert snapshot rows given as a ``pyarrow.Table`` (a model's assignment, or scored rows from Spark)
    in the caller's transaction (DuckDB: Arrow scan; PostgreSQL: COPY; else executemany)."""
    cols = list(rows.column_names)
    raw: Any = conn.connection.driver_connection
    if dialect.is_duckdb(conn):
        raw.register("_snapshot_rows", rows)
        try:
            raw.execute(
                f"INSERT INTO rfm_snapshots ({', '.join(cols)}) SELECT {', '.join(cols)} FROM _snapshot_rows"
            )
        finally:
            raw.unregister("_snapshot_rows")
    elif dialect.is_postgres(conn):
        import pyarrow.csv as pa_csv

        # Arrow writes the CSV (nulls as empty fields, strings quoted as needed, doubles round-trip exact):
        # 2.3x faster than a Python loop over rows into COPY (1M rows: 11.5 s before, 5.1 s after)
        copy = f"COPY rfm_snapshots ({', '.join(cols)}) FROM STDIN (FORMAT csv)"
        with raw.cursor() as cur, cur.copy(copy) as cp:
            for batch in rows.to_batches(100_000):
                buf = io.BytesIO()
                pa_csv.write_csv(batch, buf, pa_csv.WriteOptions(include_header=False))
                cp.write(buf.getvalue())
    else:
        for part in chunked(rows.to_pylist(), 50_000):
            conn.execute(insert(rfm_snapshots), part)


# --- reading snapshots ---------------------------------------------------------------------------


def _require_snapshot(conn: Connection, as_of: date, scheme: str) -> None:
    found = conn.execute(
        select(snapshot_runs.c.as_of).where(
            (snapshot_runs.c.as_of == as_of) & (snapshot_runs.c.scheme == scheme)
        )
    ).first()
    if found is None:
        runs = conn.execute(
            select(snapshot_runs.c.as_of)
            .where(snapshot_runs.c.scheme == scheme)
            .order_by(snapshot_runs.c.as_of)
        ).scalars()
        have = ", ".join(str(d) for d in runs) or "none"
        raise NotFoundError(
            f"no {scheme} snapshot as of {as_of} (existing: {have})",
            fix=f"run `activation segment --as-of {as_of} --scheme {scheme}` first",
        )


def snapshot_run(engine: Engine, as_of: date, scheme: str) -> dict[str, Any]:
    """The ``snapshot_runs`` row of a snapshot, with cut-points and warnings decoded."""
    with engine.connect() as conn:
        _require_snapshot(conn, as_of, scheme)
        row = dict(
            conn.execute(
                select(snapshot_runs).where(
                    (snapshot_runs.c.as_of == as_of) & (snapshot_runs.c.scheme == scheme)
                )
            )
            .mappings()
            .one()
        )
    row["cutpoints"] = json.loads(row["cutpoints"])
    row["warnings"] = json.loads(row["warnings"])
    return row


def segment_summary(
    engine: Engine, as_of: date, scheme: str, settings: Settings | None = None
) -> pd.DataFrame:
    """Per segment: customers, share, mean recency/frequency/monetary and revenue (sum of monetary).

    With ``settings`` (or for a shipped scheme) rows follow the scheme's segment order and include empty
    segments; otherwise they are sorted by customers.

    Raises:
        NotFoundError: no such snapshot.
    """
    s = rfm_snapshots.c
    with engine.connect() as conn:
        _require_snapshot(conn, as_of, scheme)
        q = (
            select(
                s.segment,
                func.count().label("customers"),
                func.avg(s.recency_days).label("recency_mean"),
                func.avg(s.frequency).label("frequency_mean"),
                func.avg(s.monetary).label("monetary_mean"),
                func.sum(s.monetary).label("revenue"),
            )
            .where((s.as_of == as_of) & (s.scheme == scheme))
            .group_by(s.segment)
        )
        frame = pd.DataFrame(conn.execute(q).mappings().all())
    cols = ["segment", "customers", "share", "recency_mean", "frequency_mean", "monetary_mean", "revenue"]
    if frame.empty:
        return pd.DataFrame(columns=cols)
    for c in ("recency_mean", "frequency_mean", "monetary_mean", "revenue"):
        frame[c] = frame[c].astype(float)
    frame["customers"] = frame["customers"].astype(int)
    order: list[str] | None = None
    try:
        order = load_scheme(scheme, settings).segment_names
    except ConfigError:
        order = None
    if order is not None:
        frame = frame.set_index("segment").reindex(order).reset_index()
        frame["customers"] = frame["customers"].fillna(0).astype(int)
        frame["revenue"] = frame["revenue"].fillna(0.0)
    else:
        frame = frame.sort_values(["customers", "segment"], ascending=[False, True]).reset_index(drop=True)
    frame["share"] = frame["customers"] / frame["customers"].sum()
    return frame[cols]


def latest_snapshot_as_of(engine: Engine, scheme: str, before: date | None = None) -> date | None:
    """The newest as_of with a ``scheme`` snapshot (strictly before ``before`` when given), or None."""
    q = select(func.max(snapshot_runs.c.as_of)).where(snapshot_runs.c.scheme == scheme)
    if before is not None:
        q = q.where(snapshot_runs.c.as_of < before)
    with engine.connect() as conn:
        value = conn.execute(q).scalar()
    if isinstance(value, datetime):
        return value.date()
    return value


def migration_matrix(
    engine: Engine, from_as_of: date, to_as_of: date, scheme: str, settings: Settings | None = None
) -> pd.DataFrame:
    """Customers moving between segments from one snapshot to another.

    Rows are the ``from`` segments plus ``new`` (not in the from snapshot), columns the ``to`` segments
    plus ``gone`` (not in the to snapshot); cells count customers. Computed in the warehouse (full join).

    Raises:
        NotFoundError: either snapshot does not exist.
    """
    s = rfm_snapshots.c
    with engine.connect() as conn:
        _require_snapshot(conn, from_as_of, scheme)
        _require_snapshot(conn, to_as_of, scheme)
        a = (
            select(s.customer_id, s.segment)
            .where((s.as_of == from_as_of) & (s.scheme == scheme))
            .cte("before")
        )
        b = select(s.customer_id, s.segment).where((s.as_of == to_as_of) & (s.scheme == scheme)).cte("after")
        moved = (
            select(
                func.coalesce(a.c.segment, literal("new", String)).label("from_segment"),
                func.coalesce(b.c.segment, literal("gone", String)).label("to_segment"),
            )
            .select_from(a.join(b, a.c.customer_id == b.c.customer_id, full=True))
            .cte("moved")
        )
        q = select(moved.c.from_segment, moved.c.to_segment, func.count().label("customers")).group_by(
            moved.c.from_segment, moved.c.to_segment
        )
        rows = pd.DataFrame(
            conn.execute(q).mappings().all(), columns=["from_segment", "to_segment", "customers"]
        )
    try:
        names = load_scheme(scheme, settings).segment_names
    except ConfigError:
        names = sorted(set(rows["from_segment"]) | set(rows["to_segment"]) - {"new", "gone"})
    extra = sorted((set(rows["from_segment"]) | set(rows["to_segment"])) - set(names) - {"new", "gone"})
    index = [*names, *extra, "new"]
    columns = [*names, *extra, "gone"]
    matrix = rows.pivot_table(
        index="from_segment", columns="to_segment", values="customers", aggfunc="sum", fill_value=0
    )
    matrix = matrix.reindex(index=index, columns=columns, fill_value=0).astype(int)
    matrix.index.name = "from_segment"
    matrix.columns.name = "to_segment"
    return matrix


def export_snapshot(
    engine: Engine, as_of: date, scheme: str, out: Path | str, chunk_rows: int = 200_000
) -> int:
    """Write one CSV row per customer with exactly :data:`EXPORT_COLUMNS` (sorted by customer_id);
    returns the number of rows. Streams in chunks, written to a temporary file then renamed, so a
    failure never leaves a half-written file.

    Raises:
        NotFoundError: no such snapshot.
    """
    out = output_file(out, example=f"{scheme}-{as_of.isoformat()}.csv")
    s = rfm_snapshots.c
    q = (
        select(*(s[c] for c in EXPORT_COLUMNS))
        .where((s.as_of == as_of) & (s.scheme == scheme))
        .order_by(s.customer_id)
    )
    n = 0
    with engine.connect() as conn:
        _require_snapshot(conn, as_of, scheme)
        result = conn.execution_options(stream_results=True, yield_per=chunk_rows).execute(q)
        with atomic_text(out) as fh:
            writer = csv_writer(fh)
            writer.writerow(EXPORT_COLUMNS)
            m = EXPORT_COLUMNS.index("monetary")
            for part in result.partitions(chunk_rows):
                # sums of floating-point amounts carry noise (885.5200000000001): round it away
                writer.writerows((*r[:m], round(r[m], 6), *r[m + 1 :]) for r in part)
                n += len(part)
    return n


__all__ = [
    "EXPORT_COLUMNS",
    "SnapshotResult",
    "compute_snapshot",
    "export_snapshot",
    "last_quarter_end",
    "latest_snapshot_as_of",
    "migration_matrix",
    "segment_summary",
    "snapshot_run",
]
