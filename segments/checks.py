"""Data checks before segmenting, in the spirit of dbt schema tests (not_null, unique, accepted_values,
relationships), run as SQL inside the warehouse.

Blocking checks (``severity="error"``) stop segmentation with a :class:`DataCheckError` naming the check,
the number of failing rows and a few examples; nothing is written. ``severity="warn"`` checks are
reported only: orders of customers missing from ``customers`` still segment correctly, they just
cannot be contacted later.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, column, exists, func, not_, select, table
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from activation.errors import ConfigError, DataCheckError, WarehouseError
from activation.settings import Settings
from activation.warehouse import has_table
from segments.rfm import source_table

EXAMPLES = 5


@dataclass
class CheckResult:
    """One check: ``failures`` rows fail it; ``examples`` shows a few of them."""

    name: str
    description: str
    severity: str  # error | warn
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
    schema, _, tname = name.rpartition(".")
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
    if not has_table(conn, name):
        raise WarehouseError(
            f"table {name!r} does not exist in the warehouse",
            fix=f"load data with `activation ingest` or point ACTIVATION_{setting_prefix}__TABLE at your table/view",
        )
    cols = _columns(conn, name)
    for setting, col in needed.items():
        if cols and col not in cols:
            raise ConfigError(
                f"table {name!r} has no column {col!r} (the {setting} column)",
                fix=f"set ACTIVATION_{setting_prefix}__{setting.upper()} to the right column; "
                f"columns are: {', '.join(sorted(cols))}",
            )
    return cols


def _count_and_examples(conn: Connection, cond: Any, src: Any, show: list[Any]) -> tuple[int, list[dict]]:
    n = conn.execute(select(func.count()).select_from(src).where(cond)).scalar_one()
    examples: list[dict] = []
    if n:
        rows = conn.execute(select(*show).select_from(src).where(cond).limit(EXAMPLES)).mappings().all()
        examples = [dict(r) for r in rows]
    return int(n), examples


def _not_null(conn: Connection, src: Any, cols: list[tuple[str, Any]], show: list[Any]) -> list[CheckResult]:
    """All not-null counts in one scan; examples only for the columns that fail."""
    counts = conn.execute(
        select(*(func.count().filter(col.is_(None)).label(label) for label, col in cols)).select_from(src)
    ).one()
    results = []
    for (label, col), n in zip(cols, counts, strict=True):
        examples: list[dict] = []
        if n:
            rows = conn.execute(
                select(*show).select_from(src).where(col.is_(None)).limit(EXAMPLES)
            ).mappings()
            examples = [dict(r) for r in rows]
        results.append(CheckResult(f"not_null({label})", f"{col.name} is null", "error", int(n), examples))
    return results


def _order_checks(conn: Connection, settings: Settings) -> CheckReport:
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
    if o.status and cols and o.status not in cols:
        cols = {}
    src = source_table(o.table, *needed.values())
    c = src.c
    oid, cid, at, amt = c[o.order_id], c[o.customer_id], c[o.ordered_at], c[o.amount]
    results: list[CheckResult] = []
    show = [oid, cid, at, amt]

    results += _not_null(
        conn, src, [("order_id", oid), ("customer_id", cid), ("ordered_at", at), ("amount", amt)], show
    )

    amount_type = cols.get(o.amount)
    if amount_type is not None and not any(t in amount_type.lower() for t in NUMERIC_TYPES):
        results.append(
            CheckResult(
                "numeric(amount)",
                f"column {o.amount} has type {amount_type}, not a number; cast it in a view",
                "error",
                int(conn.execute(select(func.count()).select_from(src)).scalar_one()),
                [],
            )
        )

    if o.status and settings.accepted_statuses is not None:
        st = c[o.status]
        cond = and_(st.is_not(None), st.not_in(settings.accepted_statuses))
        n, ex = _count_and_examples(conn, cond, src, [oid, st])
        results.append(
            CheckResult(
                "accepted_values(status)",
                f"status not in {settings.accepted_statuses}",
                "error",
                n,
                ex,
            )
        )

    dup = select(oid.label("order_id"), func.count().label("rows")).group_by(oid).having(func.count() > 1)
    dup_sq = dup.subquery("duplicates")
    n_dup = int(conn.execute(select(func.count()).select_from(dup_sq)).scalar_one())
    examples = []
    if n_dup:
        examples = [dict(r) for r in conn.execute(dup.order_by(oid).limit(EXAMPLES)).mappings()]
    results.append(
        CheckResult("unique(order_id)", "order id appears on more than one row", "error", n_dup, examples)
    )

    cu = settings.customers
    if has_table(conn, cu.table):
        cust = source_table(cu.table, cu.customer_id)
        has_rows = conn.execute(select(cust.c[cu.customer_id]).limit(1)).first() is not None
        if has_rows:
            missing = not_(exists(select(1).select_from(cust).where(cust.c[cu.customer_id] == cid)))
            n, ex = _count_and_examples(conn, and_(cid.is_not(None), missing), src, [oid, cid])
            results.append(
                CheckResult(
                    "relationships(customer_id -> customers)",
                    f"customer not in {cu.table}",
                    "warn",
                    n,
                    ex,
                )
            )
    return CheckReport(o.table, results)


def _event_checks(conn: Connection) -> CheckReport:
    _require(
        conn, "contact_events", {"customer_id": "customer_id", "occurred_at": "occurred_at"}, "CONTACT_EVENTS"
    )
    src = source_table("contact_events", "event_id", "customer_id", "occurred_at")
    cols = [("customer_id", src.c.customer_id), ("occurred_at", src.c.occurred_at)]
    return CheckReport("contact_events", _not_null(conn, src, cols, list(src.c)))


def run_checks(engine: Engine, settings: Settings, source: str = "orders") -> CheckReport:
    """Run the data checks on the segmentation source (``orders`` per ``settings.orders``, or
    ``contact_events``).

    Raises:
        DataCheckError: a blocking check failed (names the check, the count and example rows).
        WarehouseError: the source table does not exist or the warehouse fails.
        ConfigError: a configured column does not exist.
    """
    try:
        with engine.connect() as conn:
            report = _event_checks(conn) if source == "contact_events" else _order_checks(conn, settings)
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        raise WarehouseError(
            f"data checks on {settings.orders.table if source == 'orders' else source} failed to run: {reason}",
            fix="check the table and the ACTIVATION_ORDERS__* column settings",
        ) from exc
    if not report.ok:
        lines = [report.describe(r) for r in report.blocking]
        raise DataCheckError(
            f"data checks failed on {report.table}: " + " | ".join(lines),
            failures=report.blocking,
            fix="fix or exclude the failing rows in the source (or a view over it), then rerun; nothing was written",
        )
    return report
