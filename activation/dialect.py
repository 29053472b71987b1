"""Every difference between warehouse dialects, in one small place.

The SQL of the project is built with SQLAlchemy Core and runs unchanged on DuckDB and PostgreSQL. What
differs is collected here:

* ``days_between(later, earlier)`` — whole days between two dates (DuckDB and PostgreSQL both return an
  integer for ``date - date``; other warehouses use ``datediff``).
* ``insert_ignore(table)`` — ``INSERT … ON CONFLICT DO NOTHING`` (PostgreSQL syntax; duckdb-engine
  inherits PostgreSQL's compiler, so the same construct works there).
* ``is_duckdb(engine)`` / ``is_postgres(engine)`` — for bulk-load fast paths only, never for semantics.
* ``hash_bucket(expr, bind)`` — the first 32 bits of ``md5(expr)`` as an integer in ``[0, 2**32)``; identical to
  ``int(hashlib.md5(s.encode()).hexdigest()[:8], 16)`` in Python (used for stable holdout splits).
* ``id_hash(expr, seed, bind)`` — a seeded 64-bit hash (``hash`` / ``hashtextextended``) for fingerprints.
* ``sha256_hex(expr, bind)`` — lower-case hex SHA-256 of a text expression's UTF-8 bytes (email hashes).
* ``percentiles_disc(ps, order_by)`` — several discrete quantiles in one ordered-set aggregate
  (``percentile_disc(ARRAY[...]) WITHIN GROUP (ORDER BY …)``: one sort instead of one per quantile;
  DuckDB and PostgreSQL both return an array).
* ``prefer_hash_joins(conn)`` — inside a transaction on PostgreSQL, ``SET LOCAL enable_nestloop = off``: big
  set-based statements over freshly loaded (not yet analysed) tables otherwise risk a nested loop over millions of
  rows; a no-op elsewhere.
* ``serialize(conn, key)`` — one writer at a time per ``key`` for the rest of the transaction: a transaction-level
  advisory lock on PostgreSQL (``pg_advisory_xact_lock``); a no-op on DuckDB, whose file admits one writing
  process and whose concurrent transactions in one process fail on conflict instead of interleaving.
* ``exclusive(engine, key, what)`` — a context manager for long jobs that span many transactions (a sync): a
  session-level advisory lock on PostgreSQL (released by the server if the process dies), a process-wide
  lock elsewhere (a DuckDB file admits one writing process anyway); a second holder fails at once, naming
  ``what``.
* ``CreateTempTableAs(name, select)`` — ``CREATE TEMPORARY TABLE name AS SELECT …``, to materialise an
  intermediate result that later statements read more than once.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime
from typing import Any

from sqlalchemy import BigInteger, Date, DateTime, Integer, Table, cast, func, literal, literal_column, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql import operators
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.elements import BindParameter, ClauseElement, ColumnElement
from sqlalchemy.sql.selectable import Select
from sqlalchemy.sql.visitors import InternalTraversal
from sqlalchemy.types import Float

from activation.errors import ConflictError


def dialect_name(bind: Engine | Connection) -> str:
    return bind.dialect.name


def is_duckdb(bind: Engine | Connection) -> bool:
    return dialect_name(bind) == "duckdb"


def is_postgres(bind: Engine | Connection) -> bool:
    return dialect_name(bind) in {"postgresql", "postgres"}


def as_date(expr: Any) -> ColumnElement[Any]:
    return cast(expr, Date)


SPARK = "databricks"  # Spark SQL: the Databricks dialect's compiler (the Spark Connect path sends its text)
# dialects whose own rendering of a datetime parameter is not what a comparison with a table column needs
_TYPED_LITERALS = (SPARK, "bigquery", "snowflake", "trino")


class _OneArg(ColumnElement[Any]):
    """A construct over one bound value or expression that each dialect renders its own way (``@compiles``)."""

    inherit_cache = True
    _traverse_internals = [("arg", InternalTraversal.dp_clauseelement)]

    def __init__(self, arg: ClauseElement) -> None:
        self.arg = arg


class _TwoArgs(ColumnElement[Any]):
    inherit_cache = True
    _traverse_internals = [
        ("left", InternalTraversal.dp_clauseelement),
        ("right", InternalTraversal.dp_clauseelement),
    ]

    def __init__(self, left: ClauseElement, right: ClauseElement) -> None:
        self.left = left
        self.right = right


class DateLiteral(_OneArg):
    """A date constant. DuckDB/PostgreSQL: the bound parameter as ever; elsewhere a typed ``DATE '…'``
    (with literal binds) or ``CAST(:p AS DATE)``, so that a selected date is a date, not a string."""

    inherit_cache = True
    type = Date()


class TimestampBound(_OneArg):
    """A datetime constant compared with a table column (the window bounds). DuckDB/PostgreSQL: the bound
    parameter; Spark and Trino: ``TIMESTAMP '…'`` (Trino compares no varchar with a timestamp); BigQuery and
    Snowflake: a plain string literal, which both coerce to the column's own type (BigQuery's ``DATETIME``
    literal would not compare with a ``TIMESTAMP`` column)."""

    inherit_cache = True
    type = DateTime()


def date_literal(value: date) -> DateLiteral:
    return DateLiteral(literal(value, Date))


def before(col: ColumnElement[Any], value: datetime) -> ColumnElement[bool]:
    """``col < value`` with ``value`` a :class:`TimestampBound` (the parameter named after the column)."""
    return col < TimestampBound(col._bind_param(operators.lt, value))


def at_or_after(col: ColumnElement[Any], value: datetime) -> ColumnElement[bool]:
    """``col >= value`` with ``value`` a :class:`TimestampBound`."""
    return col >= TimestampBound(col._bind_param(operators.ge, value))


@compiles(DateLiteral)
@compiles(TimestampBound)
def _compile_default_literal(element: _OneArg, compiler: Any, **kw: Any) -> str:
    return str(compiler.process(element.arg, **kw))


@compiles(DateLiteral, *_TYPED_LITERALS)
def _compile_date_literal(element: DateLiteral, compiler: Any, **kw: Any) -> str:
    if kw.get("literal_binds"):
        return f"DATE '{_bind_value(element).isoformat()}'"
    return f"CAST({compiler.process(element.arg, **kw)} AS DATE)"


@compiles(TimestampBound, *_TYPED_LITERALS)
def _compile_timestamp_bound(element: TimestampBound, compiler: Any, **kw: Any) -> str:
    if not kw.get("literal_binds"):
        return str(compiler.process(element.arg, **kw))
    text_ = f"'{_bind_value(element).isoformat(sep=' ')}'"
    return text_ if compiler.dialect.name in {"bigquery", "snowflake"} else f"TIMESTAMP {text_}"


def _bind_value(element: _OneArg) -> Any:
    arg = element.arg
    assert isinstance(arg, BindParameter)
    return arg.effective_value


class DaysBetween(_TwoArgs):
    """Whole days from ``right`` (earlier) to ``left`` (later), both taken as dates (see :func:`days_between`)."""

    inherit_cache = True
    type = Integer()


def days_between(later: Any, earlier: Any) -> ColumnElement[int]:
    """Whole days from ``earlier`` to ``later`` (dates or timestamps, compared as dates): DuckDB and
    PostgreSQL subtract dates; Spark ``datediff(later, earlier)``; BigQuery ``DATE_DIFF(later, earlier, DAY)``;
    Snowflake ``DATEDIFF(day, earlier, later)``; Trino ``date_diff('day', earlier, later)`` (on dates: on
    timestamps Trino counts whole 24-hour periods, not calendar days)."""
    return DaysBetween(_expression(later), _expression(earlier))


def _as_date_once(expr: ClauseElement) -> ClauseElement:
    return expr if isinstance(expr, DateLiteral) else as_date(expr)


def _expression(value: Any) -> ClauseElement:
    """An SQL expression as it is (a column, ``text()``), a Python value as a bound literal."""
    return value if isinstance(value, ClauseElement) else literal(value)


@compiles(DaysBetween)
def _compile_days_default(element: DaysBetween, compiler: Any, **kw: Any) -> str:
    return str(compiler.process(cast(as_date(element.left) - as_date(element.right), Integer), **kw))


_DAYS_FORMS = {
    SPARK: "datediff({later}, {earlier})",
    "bigquery": "DATE_DIFF({later}, {earlier}, DAY)",
    "snowflake": "DATEDIFF(day, {earlier}, {later})",
    "trino": "date_diff('day', {earlier}, {later})",
}


@compiles(DaysBetween, *_DAYS_FORMS)
def _compile_days(element: DaysBetween, compiler: Any, **kw: Any) -> str:
    later = compiler.process(_as_date_once(element.left), **kw)
    earlier = compiler.process(_as_date_once(element.right), **kw)
    return _DAYS_FORMS[compiler.dialect.name].format(later=later, earlier=earlier)


def insert_ignore(table: Table) -> Any:
    """``INSERT … ON CONFLICT DO NOTHING`` on the table's primary key."""
    return postgresql.insert(table).on_conflict_do_nothing()


class HashBucket(_OneArg):
    """First 32 bits of ``md5(arg)`` as an integer (see :func:`hash_bucket`)."""

    inherit_cache = True
    type = BigInteger()


def hash_bucket(expr: Any, bind: Engine | Connection | None = None) -> ColumnElement[int]:
    """First 32 bits of ``md5(expr)`` as a non-negative integer (same value on every dialect, and as
    ``int(md5(s)[:8], 16)`` in Python). ``bind`` is not needed: the compiler picks each dialect's form."""
    return HashBucket(_expression(expr))


@compiles(HashBucket)
def _compile_hash_default(element: HashBucket, compiler: Any, **kw: Any) -> str:
    prefix = func.substr(func.md5(element.arg), 1, 8)
    return str(compiler.process(cast(literal_column("'0x'").concat(prefix), BigInteger), **kw))


@compiles(HashBucket, "postgresql")
def _compile_hash_postgres(element: HashBucket, compiler: Any, **kw: Any) -> str:
    prefix = func.substr(func.md5(element.arg), 1, 8)
    return str(compiler.process(cast(cast(literal_column("'x'").concat(prefix), _Bit32()), BigInteger), **kw))


_HASH_FORMS = {
    SPARK: "CAST(conv(substr(md5({x}), 1, 8), 16, 10) AS BIGINT)",
    "bigquery": "CAST(CONCAT('0x', SUBSTR(TO_HEX(MD5({x})), 1, 8)) AS INT64)",
    "snowflake": "TO_NUMBER(UPPER(SUBSTR(MD5({x}), 1, 8)), 'XXXXXXXX')",
    "trino": "from_base(substr(to_hex(md5(to_utf8({x}))), 1, 8), 16)",
}


@compiles(HashBucket, *_HASH_FORMS)
def _compile_hash(element: HashBucket, compiler: Any, **kw: Any) -> str:
    return _HASH_FORMS[compiler.dialect.name].format(x=compiler.process(element.arg, **kw))


def id_hash(expr: Any, seed: int, bind: Engine | Connection) -> ColumnElement[int] | None:
    """A 64-bit hash of a text expression (``seed`` picks one of independent hashes), or None on a dialect
    without one; used to fingerprint a multiset of ids by summing them."""
    if is_duckdb(bind):
        return func.hash(expr, literal_column(str(int(seed))))
    if is_postgres(bind):
        return func.hashtextextended(expr, literal_column(str(int(seed))))
    return None


def sha256_hex(expr: Any, bind: Engine | Connection) -> ColumnElement[str]:
    """Lower-case hex SHA-256 of the UTF-8 bytes of a text expression."""
    if is_postgres(bind):
        return func.encode(
            func.sha256(func.convert_to(expr, literal_column("'UTF8'"))), literal_column("'hex'")
        )
    return func.sha256(expr)


class _Bit32(postgresql.BIT):
    def __init__(self) -> None:
        super().__init__(32)


class PercentilesDisc(ColumnElement[Any]):
    """Several discrete quantiles in one array-valued ordered-set aggregate (see :func:`percentiles_disc`)."""

    inherit_cache = True
    _traverse_internals = [
        ("ps", InternalTraversal.dp_clauseelement_list),
        ("order_by", InternalTraversal.dp_clauseelement),
    ]

    def __init__(self, ps: list[ColumnElement[Any]], order_by: ColumnElement[Any]) -> None:
        self.ps = ps
        self.order_by = order_by


def percentiles_disc(ps: list[float], order_by: Any) -> ColumnElement[Any]:
    """Discrete quantiles ``ps`` of ``order_by`` as one array-valued ordered-set aggregate: PostgreSQL and
    DuckDB ``percentile_disc(ARRAY[…]) WITHIN GROUP (ORDER BY …)``, Spark ``percentile_disc(array(…))
    WITHIN GROUP (ORDER BY …)`` (exact, the same definition: the first value whose cumulative share reaches p).
    Engines without it get another exact form from :func:`quantile_form`."""
    return PercentilesDisc([literal(p, Float(precision=53)) for p in ps], order_by)


@compiles(PercentilesDisc)
def _compile_percentiles_default(element: PercentilesDisc, compiler: Any, **kw: Any) -> str:
    agg = func.percentile_disc(postgresql.array(element.ps)).within_group(element.order_by)
    return str(compiler.process(agg, **kw))


@compiles(PercentilesDisc, SPARK)
def _compile_percentiles_spark(element: PercentilesDisc, compiler: Any, **kw: Any) -> str:
    agg = func.percentile_disc(func.array(*element.ps)).within_group(element.order_by)
    return str(compiler.process(agg, **kw))


# How each engine computes exact quantile cut-points (segments/rfm.py builds the statement accordingly):
# "array": one percentile_disc over an array of probabilities (PostgreSQL, DuckDB, Spark/Databricks);
# "each": one percentile_disc(p) per cut-point (Snowflake has no array form);
# "ranked": ROW_NUMBER() OVER (ORDER BY x) and COUNT(x) OVER (), picking row ceil(k*N/n) (BigQuery, Trino and
# any other engine: their percentile functions are approximate or missing). Approximate quantiles are never used.
_QUANTILE_FORMS = {"postgresql": "array", "duckdb": "array", SPARK: "array", "snowflake": "each"}


def quantile_form(name: str | None) -> str:
    """``"array"``, ``"each"`` or ``"ranked"``: the exact cut-point form for dialect ``name`` (None: the
    array form of DuckDB/PostgreSQL)."""
    return "array" if name is None else _QUANTILE_FORMS.get(name, "ranked")


class CreateTempTableAs(Executable, ClauseElement):
    """``CREATE TEMPORARY TABLE <name> AS <select>`` (bound parameters of the select are kept)."""

    inherit_cache = False

    def __init__(self, name: str, select: Select[Any]) -> None:
        self.name = name
        self.select = select


@compiles(CreateTempTableAs)
def _compile_create_temp_table_as(element: CreateTempTableAs, compiler: Any, **kw: Any) -> str:
    name = compiler.preparer.quote(element.name)
    return f"CREATE TEMPORARY TABLE {name} AS {compiler.process(element.select, **kw)}"


def prefer_hash_joins(conn: Connection) -> None:
    """For the rest of the current transaction, keep PostgreSQL's planner off nested loops (see module doc)."""
    if is_postgres(conn):
        conn.exec_driver_sql("SET LOCAL enable_nestloop = off")


def serialize(conn: Connection, key: str) -> None:
    """Wait until no other transaction holds ``key`` and hold it until this one ends (see module doc).

    Two runs that replace the same snapshot or plan the same campaigns (a schedule and a manual run) then
    happen one after the other: the second sees the first's result instead of failing on a duplicate key."""
    if is_postgres(conn):
        conn.execute(_XACT_LOCK, {"key": key})


# transaction locks (serialize) and session locks (exclusive) hash the key with different seeds: separate spaces
_XACT_LOCK = text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))")
_TRY_SESSION_LOCK = text("SELECT pg_try_advisory_lock(hashtextextended(:key, 1))")
_SESSION_UNLOCK = text("SELECT pg_advisory_unlock(hashtextextended(:key, 1))")


_local_locks: dict[tuple[str, str], threading.Lock] = {}
_local_guard = threading.Lock()


@contextmanager
def exclusive(engine: Engine, key: str, what: str) -> Iterator[None]:
    """Hold ``key`` for the duration of the block, or fail at once if someone else holds it (see module doc).

    Raises:
        ConflictError: another run holds ``key``; ``what`` names it in the message.
    """
    busy = ConflictError(
        f"{what} is already running",
        fix="wait for it to finish and run again (a rerun continues where it stopped)",
    )
    with _local_guard:
        local = _local_locks.setdefault(
            (engine.url.render_as_string(hide_password=True), key), threading.Lock()
        )
    if not local.acquire(blocking=False):
        raise busy
    try:
        if not is_postgres(engine):
            yield
            return
        with engine.connect() as conn:
            got = conn.execute(_TRY_SESSION_LOCK, {"key": key}).scalar()
            conn.commit()
            if not got:
                raise busy
            try:
                yield
            finally:
                conn.execute(_SESSION_UNLOCK, {"key": key})
                conn.commit()
    finally:
        local.release()
