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
from typing import Any

from sqlalchemy import BigInteger, Date, Integer, Table, cast, func, literal, literal_column, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.elements import ClauseElement, ColumnElement
from sqlalchemy.sql.selectable import Select
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


def days_between(later: Any, earlier: Any, bind: Engine | Connection | None = None) -> ColumnElement[int]:
    """Whole days from ``earlier`` to ``later`` (both dates)."""
    if bind is not None and not (is_duckdb(bind) or is_postgres(bind)):
        return cast(func.datediff("day", earlier, later), Integer)
    return cast(as_date(later) - as_date(earlier), Integer)


def insert_ignore(table: Table) -> Any:
    """``INSERT … ON CONFLICT DO NOTHING`` on the table's primary key."""
    return postgresql.insert(table).on_conflict_do_nothing()


def hash_bucket(expr: Any, bind: Engine | Connection) -> ColumnElement[int]:
    """First 32 bits of ``md5(expr)`` as a non-negative integer (same value on every dialect)."""
    prefix = func.substr(func.md5(expr), 1, 8)
    if is_postgres(bind):
        return cast(cast(literal_column("'x'").concat(prefix), _Bit32()), BigInteger)
    return cast(literal_column("'0x'").concat(prefix), BigInteger)


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


def percentiles_disc(ps: list[float], order_by: Any) -> ColumnElement[Any]:
    """Discrete quantiles ``ps`` of ``order_by`` as one array-valued ordered-set aggregate."""
    return func.percentile_disc(postgresql.array([literal(p, Float(precision=53)) for p in ps])).within_group(
        order_by
    )


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
