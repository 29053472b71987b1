"""Data checks before segmenting, in the spirit of dbt schema tests (not_null, unique, accepted_values,
relationships), run as SQL inside the warehouse.

Blocking checks (``severity="error"``) stop segmentation with a :class:`DataCheckError` naming the check,
the number of failing rows, a few example rows and the fix; nothing is written. ``severity="warn"`` checks
are reported only: orders of customers missing from ``customers`` still segment correctly, they just
cannot be contacted later.

On orders: not_null (order id, customer, time, amount), numeric(amount), non_negative(amount) (blocking
unless ``settings.allow_negative_amounts``), not_future(ordered_at) (beyond
``settings.future_tolerance_hours``), accepted_values(status) (the vocabulary of
:mod:`activation.statuses`), unique(order_id), and relationships to customers (a warning). They take three
statements: one aggregate for every count, one ``GROUP BY status``, one ``GROUP BY order_id``; example rows
are fetched only for a failing check. The aggregate also fingerprints the order ids (row count and the sum
of their 64-bit hashes, ``verified_sources``): when they are the ids last verified unique, or written by
ingest (which keeps them unique), the ``GROUP BY order_id`` — by far the most expensive check — is skipped.
The relationship check runs on distinct customers; a snapshot runs it on its own per-customer metrics
instead of a second pass over the orders.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import and_, column, delete, exists, func, insert, not_, select, table
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from activation import dialect, statuses
from activation.clock import utcnow
from activation.errors import ConfigError, DataCheckError, WarehouseError
from activation.settings import Settings
from activation.spark import SparkConnection, SparkWarehouse
from activation.tables import source_table, split_table_name, verified_sources
from activation.warehouse import db_reason, has_table

EXAMPLES = 5

#: ``error`` blocks segmentation (:class:`DataCheckError`); ``warn`` is reported and segmentation goes on
Severity = Literal["error", "warn"]


@dataclass
class CheckResult:
    """One check: ``failures`` rows fail it; ``examples`` shows a few of them."""

    name: str
    description: str
    severity: Severity
    failures: int
    examples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.failures == 0


@dataclass
class CheckReport:
    """Every check run, in order."""

    table: str
    results: list[CheckResult]

    @property
    def ok(self) -> bool:
        """No blocking check failed."""
        return not self.blocking

    @property
    def blocking(self) -> list[CheckResult]:
        return [r for r in self.results if not r.passed and r.severity == "error"]

    @property
    def warnings(self) -> list[CheckResult]:
        return [r for r in self.results if not r.passed and r.severity == "warn"]

    def describe(self, result: CheckResult) -> str:
        ex = "; ".join(", ".join(f"{k}={v!r}" for k, v in row.items()) for row in result.examples)
        return f"{result.name}: {result.failures} row(s) fail ({result.description})" + (
            f"; e.g. {ex}" if ex else ""
        )


NUMERIC_TYPES = ("int", "double", "real", "float", "decimal", "numeric", "money")


def _columns(conn: Connection, name: str) -> dict[str, str]:
    """Column name -> declared type, from ``information_schema`` (the same on DuckDB and PostgreSQL)."""
    schema, tname = split_table_name(name)
    cols = table(
        "columns",
        column("table_schema"),
        column("table_name"),
        column("column_name"),
        column("data_type"),
        column("ordinal_position"),
        schema="information_schema",
    )
    q = select(cols.c.table_schema, cols.c.column_name, cols.c.data_type).where(cols.c.table_name == tname)
    if schema:
        q = q.where(cols.c.table_schema == schema)
    rows = conn.execute(q.order_by(cols.c.table_schema, cols.c.ordinal_position)).all()
    first_schema = rows[0][0] if rows else None
    return {r[1]: str(r[2]) for r in rows if r[0] == first_schema}


def _require(conn: Connection, name: str, needed: dict[str, str], setting_prefix: str) -> dict[str, Any]:
    spark = conn.warehouse if isinstance(conn, SparkConnection) else None
    if not (spark.has_table(name) if spark is not None else has_table(conn, name)):
        raise WarehouseError(
            f"table {name!r} does not exist in the warehouse",
            fix=f"load data with `activation ingest` or point ACTIVATION_{setting_prefix}__TABLE at your table/view",
        )
    cols = spark.columns(name) if spark is not None else _columns(conn, name)
    for setting, col in needed.items():
        if cols and col not in cols:
            raise ConfigError(
                f"table {name!r} has no column {col!r} (the {setting} column)",
                fix=f"set ACTIVATION_{setting_prefix}__{setting.upper()} to the right column; "
                f"columns are: {', '.join(sorted(cols))}",
            )
    return cols


def _count_and_examples(
    conn: Connection, cond: Any, src: Any, show: list[Any]
) -> tuple[int, list[dict[str, Any]]]:
    n = conn.execute(select(func.count()).select_from(src).where(cond)).scalar_one()
    examples: list[dict[str, Any]] = []
    if n:
        rows = conn.execute(select(*show).select_from(src).where(cond).limit(EXAMPLES)).mappings().all()
        examples = [dict(r) for r in rows]
    return int(n), examples


def _examples(conn: Connection, src: Any, cond: Any, show: list[Any], order: Any) -> list[dict[str, Any]]:
    rows = conn.execute(select(*show).select_from(src).where(cond).order_by(order).limit(EXAMPLES)).mappings()
    return [dict(r) for r in rows]


def _not_null(conn: Connection, src: Any, cols: list[tuple[str, Any]], show: list[Any]) -> list[CheckResult]:
    """All not-null counts in one scan; examples only for the columns that fail."""
    counts = conn.execute(
        select(*(func.count().filter(col.is_(None)).label(label) for label, col in cols)).select_from(src)
    ).one()
    results = []
    for (label, col), n in zip(cols, counts, strict=True):
        examples: list[dict[str, Any]] = []
        if n:
            rows = conn.execute(
                select(*show).select_from(src).where(col.is_(None)).limit(EXAMPLES)
            ).mappings()
            examples = [dict(r) for r in rows]
        results.append(CheckResult(f"not_null({label})", f"{col.name} is null", "error", int(n), examples))
    return results


def future_limit(settings: Settings) -> datetime:
    """Orders dated after this (UTC, naive like the warehouse's timestamps) block segmentation."""
    now = utcnow()
    return now + timedelta(hours=settings.future_tolerance_hours)


def _status_check(conn: Connection, settings: Settings, src: Any, st: Any, oid: Any) -> CheckResult:
    """Unknown statuses: one ``GROUP BY status`` (a handful of distinct values), compared in Python."""
    counted, excluded = settings.counted_statuses, settings.excluded_statuses
    vocabulary = set(statuses.normalized([*counted, *excluded]))
    seen = conn.execute(select(st, func.count()).select_from(src).group_by(st)).all()
    unknown = sorted(
        (
            (v, int(n))
            for v, n in seen
            if v is not None and v.strip() and statuses.normalize(v) not in vocabulary
        ),
        key=lambda vn: (-vn[1], vn[0]),
    )
    examples: list[dict[str, Any]] = []
    if unknown:
        values = [v for v, _ in unknown[:20]]
        rows = conn.execute(
            select(st, func.min(oid).label("example_order"))
            .select_from(src)
            .where(st.in_(values))
            .group_by(st)
        ).all()
        first = {v: o for v, o in rows}
        examples = [{"status": v, "orders": n, "e.g. order": first.get(v)} for v, n in unknown[:EXAMPLES]]
    listed = ", ".join(f"{v!r} ({n:,})" for v, n in unknown[:20])
    return CheckResult(
        "accepted_values(status)",
        f"status not in the vocabulary: {listed}" if unknown else "status not in the vocabulary",
        "error",
        sum(n for _, n in unknown),
        examples,
    )


def _fingerprint_sums(conn: Connection, oid: Any) -> list[Any]:
    h = dialect.id_hash(oid, 0, conn)
    return [] if h is None else [func.sum(h).label("id_hash")]


def _fingerprint(rows: int, sums: Any) -> str:
    return ":".join([str(rows), *(str(int(v)) if v is not None else "-" for v in sums)])


def ids_fingerprint(conn: Connection, table_name: str, id_column: str) -> tuple[str, str, int] | None:
    """``(key, fingerprint, rows)`` of the ids in ``table_name.id_column`` (row count and the sum of 64-bit
    hashes: a changed multiset of ids matches with a probability of about 2^-64), or None on a dialect
    without a hash. One aggregate over the ids."""
    src = source_table(table_name, id_column)
    sums = _fingerprint_sums(conn, src.c[id_column])
    if not sums:
        return None
    row = conn.execute(select(func.count(), *sums).select_from(src)).one()
    return f"{table_name}.{id_column}", _fingerprint(int(row[0]), row[1:]), int(row[0])


def stored_fingerprint(conn: Connection, key: str) -> str | None:
    if not has_table(conn, verified_sources.name):
        return None
    vs = verified_sources.c
    return conn.execute(select(vs.fingerprint).where(vs.source == key)).scalar_one_or_none()


def store_fingerprint(conn: Connection, key: str, fingerprint: str) -> None:
    """Record that the order ids with ``fingerprint`` are unique (inside the caller's transaction)."""
    if not has_table(conn, verified_sources.name):
        return
    conn.execute(delete(verified_sources).where(verified_sources.c.source == key))
    conn.execute(insert(verified_sources).values(source=key, fingerprint=fingerprint, verified_at=utcnow()))


def _order_checks(
    conn: Connection, settings: Settings, relationships: bool, verified: list[tuple[str, str]]
) -> CheckReport:
    """Every orders check in as few scans as possible: one aggregate for the null, negative and future
    counts, one ``GROUP BY status``, one ``GROUP BY order_id`` for uniqueness; examples only on failure."""
    o = settings.orders
    needed = {
        "order_id": o.order_id,
        "customer_id": o.customer_id,
        "ordered_at": o.ordered_at,
        "amount": o.amount,
    }
    if o.status:
        needed["status"] = o.status
    cols = _require(conn, o.table, needed, "ORDERS")
    src = source_table(o.table, *needed.values())
    c = src.c
    oid, cid, at, amt = c[o.order_id], c[o.customer_id], c[o.ordered_at], c[o.amount]
    results: list[CheckResult] = []
    show = [oid, cid, at, amt]

    amount_type = cols.get(o.amount)
    numeric = amount_type is None or any(t in amount_type.lower() for t in NUMERIC_TYPES)
    limit = future_limit(settings)
    nulls = [("order_id", oid), ("customer_id", cid), ("ordered_at", at), ("amount", amt)]
    conds: list[tuple[str, Any]] = [(label, col.is_(None)) for label, col in nulls]
    if numeric:
        conds.append(("negative", amt < 0))
    conds.append(("future", at > limit))
    sums = _fingerprint_sums(conn, oid)
    counts = conn.execute(
        select(
            func.count().label("rows"), *(func.count().filter(cond).label(k) for k, cond in conds), *sums
        ).select_from(src)
    ).one()
    total = int(counts[0])
    n_of = {k: int(n) for (k, _), n in zip(conds, counts[1 : 1 + len(conds)], strict=True)}
    fingerprint = _fingerprint(total, counts[1 + len(conds) :]) if sums else None
    for (label, col), (_, cond) in zip(nulls, conds, strict=False):
        n = n_of[label]
        ex = _examples(conn, src, cond, show, oid) if n else []
        results.append(CheckResult(f"not_null({label})", f"{col.name} is null", "error", n, ex))

    results.append(_amount_check(conn, settings, src, show, amount_type, total, n_of.get("negative", 0)))
    n = n_of["future"]
    results.append(
        CheckResult(
            "not_future(ordered_at)",
            f"{o.ordered_at} is after {limit:%Y-%m-%d %H:%M} UTC (now + {settings.future_tolerance_hours:g} h)",
            "error",
            n,
            _examples(conn, src, at > limit, show, at.desc()) if n else [],
        )
    )

    if o.status:
        results.append(_status_check(conn, settings, src, c[o.status], oid))

    results.append(_unique_check(conn, f"{o.table}.{o.order_id}", oid, fingerprint, verified))
    if relationships:
        rel = relationships_check(
            conn, settings, select(cid.label("customer_id")).select_from(src).distinct()
        )
        if rel is not None:
            results.append(rel)
    return CheckReport(o.table, results)


def _amount_check(
    conn: Connection,
    settings: Settings,
    src: Any,
    show: list[Any],
    amount_type: str | None,
    total: int,
    n: int,
) -> CheckResult:
    """The amount is a number (else every row fails: cast it in a view) and not negative (a warning only
    when negative amounts are allowed)."""
    o = settings.orders
    if amount_type is not None and not any(t in amount_type.lower() for t in NUMERIC_TYPES):
        return CheckResult(
            "numeric(amount)",
            f"column {o.amount} has type {amount_type}, not a number; cast it in a view",
            "error",
            total,
            [],
        )
    amt = src.c[o.amount]
    return CheckResult(
        "non_negative(amount)",
        f"{o.amount} is negative (an order whose returns exceed its purchases)",
        "warn" if settings.allow_negative_amounts else "error",
        n,
        _examples(conn, src, amt < 0, show, amt) if n else [],
    )


def _unique_check(
    conn: Connection, key: str, oid: Any, fingerprint: str | None, verified: list[tuple[str, str]]
) -> CheckResult:
    """Order ids on more than one row: skipped while the ids are the ones verified unique before (or
    written so by ingest); ids found unique are added to ``verified``."""
    examples: list[dict[str, Any]] = []
    if fingerprint is not None and fingerprint == stored_fingerprint(conn, key):
        n_dup = 0
    else:
        dup = select(oid.label("order_id"), func.count().label("rows")).group_by(oid).having(func.count() > 1)
        n_dup = int(conn.execute(select(func.count()).select_from(dup.subquery("duplicates"))).scalar_one())
        if n_dup:
            examples = [dict(r) for r in conn.execute(dup.order_by(oid).limit(EXAMPLES)).mappings()]
        elif fingerprint is not None:
            verified.append((key, fingerprint))
    return CheckResult("unique(order_id)", "order id appears on more than one row", "error", n_dup, examples)


def relationships_check(conn: Connection, settings: Settings, customers_of: Any) -> CheckResult | None:
    """Customers of ``customers_of`` (a select of distinct ``customer_id``) missing from the customers table;
    None when that table is absent or empty (nothing to relate to)."""
    cu = settings.customers
    if not has_table(conn, cu.table):
        return None
    cust = source_table(cu.table, cu.customer_id)
    if conn.execute(select(cust.c[cu.customer_id]).limit(1)).first() is None:
        return None
    ids = customers_of.subquery("customers_of")
    missing = not_(exists(select(1).select_from(cust).where(cust.c[cu.customer_id] == ids.c.customer_id)))
    n, ex = _count_and_examples(conn, and_(ids.c.customer_id.is_not(None), missing), ids, [ids.c.customer_id])
    return CheckResult(
        "relationships(customer_id -> customers)",
        f"customer with orders not in {cu.table}",
        "warn",
        n,
        ex,
    )


def _checks_on(
    conn: Connection, settings: Settings, source: str, relationships: bool, verified: list[tuple[str, str]]
) -> CheckReport:
    if source == "contact_events":
        return _event_checks(conn)
    return _order_checks(conn, settings, relationships, verified)


def _event_checks(conn: Connection) -> CheckReport:
    _require(
        conn, "contact_events", {"customer_id": "customer_id", "occurred_at": "occurred_at"}, "CONTACT_EVENTS"
    )
    src = source_table("contact_events", "event_id", "customer_id", "occurred_at")
    cols = [("customer_id", src.c.customer_id), ("occurred_at", src.c.occurred_at)]
    return CheckReport("contact_events", _not_null(conn, src, cols, list(src.c)))


def run_checks(
    engine: Engine,
    settings: Settings,
    source: str = "orders",
    *,
    relationships: bool = True,
    spark: SparkWarehouse | None = None,
) -> CheckReport:
    """Run the data checks on the segmentation source (``orders`` per ``settings.orders``, or
    ``contact_events``): in the state store's database, or in ``spark`` when the warehouse is Spark (the
    same statements, compiled for Spark; no relationships check there, since the customers table is in the
    state store, and no stored fingerprint of verified ids, so the unique-id check groups by order id).

    Raises:
        DataCheckError: a blocking check failed (names the check, the count and example rows).
        WarehouseError: the source table does not exist or the warehouse fails.
        ConfigError: a configured column does not exist.
    """
    verified: list[tuple[str, str]] = []
    try:
        if spark is not None:
            on_spark: Any = SparkConnection(spark)
            report = _checks_on(on_spark, settings, source, False, verified)
        else:
            with engine.connect() as conn:
                report = _checks_on(conn, settings, source, relationships, verified)
        if verified:  # ids found unique: later runs on the same ids skip the GROUP BY order_id
            with engine.begin() as conn:
                store_fingerprint(conn, *verified[0])
    except SQLAlchemyError as exc:
        reason = db_reason(exc)
        raise WarehouseError(
            f"data checks on {settings.orders.table if source == 'orders' else source} failed to run: {reason}",
            fix="check the table and the ACTIVATION_ORDERS__* column settings",
        ) from exc
    if not report.ok:
        lines = [report.describe(r) for r in report.blocking]
        fixes = list(
            dict.fromkeys(_FIXES.get(r.name.split("(")[0], _FIXES["default"]) for r in report.blocking)
        )
        raise DataCheckError(
            f"data checks failed on {report.table}: " + " | ".join(lines),
            failures=report.blocking,
            fix="; ".join(fixes) + "; nothing was written",
        )
    return report


_FIXES = {
    "default": "fix or exclude the failing rows in the source (or a view over it), then rerun",
    "non_negative": "net each refund into its order or drop those rows in the source (or a view over it); to "
    "segment with negative orders anyway, pass --allow-negative-amounts or set ACTIVATION_ALLOW_NEGATIVE_AMOUNTS=true",
    "accepted_values": "say whether each status is a purchase: list it in ACTIVATION_COUNTED_STATUSES or "
    "ACTIVATION_EXCLUDED_STATUSES (comma-separated, replacing the default vocabulary in docs/mapping.md), or "
    "map it to a known status under 'statuses:' in the ingest mapping file",
    "not_future": "correct those dates (a time zone or a day/month mix-up?) or drop the rows; the tolerance is "
    "ACTIVATION_FUTURE_TOLERANCE_HOURS",
}
