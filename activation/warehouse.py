"""The two roles and their connections: the state store's engine (with a clear error when unreachable, and
the project's schema) and, when the warehouse is Spark, its Spark Connect session.

* :func:`get_engine` — the *state store* (``ACTIVATION_STATE_URL``, by default the warehouse itself): every
  table this project writes and reads back. On DuckDB and PostgreSQL it is the warehouse too, and
  segmentation runs in it.
* :func:`spark_warehouse` — the *warehouse* when it is Spark (``ACTIVATION_WAREHOUSE_URL=sc://…``): where the
  orders live and segmentation runs; None when the warehouse is the state store's own database.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from activation.errors import ConfigError, WarehouseError
from activation.settings import Settings
from activation.tables import metadata, split_table_name

if TYPE_CHECKING:
    from activation.spark import SparkWarehouse

_ENGINES: dict[str, Engine] = {}
_SPARK: dict[str, SparkWarehouse] = {}

_DUCKDB_LOCK = re.compile(
    r"Could not set lock on file .*?Conflicting lock is held in (?P<program>.+?) \(PID (?P<pid>\d+)\)"
)
LOCK_POLL_S = 1.0


def redact(url: str) -> str:
    """The URL with its password hidden, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable URL>"


def duckdb_lock_holder(exc: BaseException) -> tuple[str, int] | None:
    """(program, PID) of the process holding a DuckDB file, when ``exc`` is DuckDB's lock conflict."""
    found = _DUCKDB_LOCK.search(str(getattr(exc, "orig", exc)))
    return (found["program"], int(found["pid"])) if found else None


def _lock_error(url: str, program: str, pid: int, waited_s: float) -> WarehouseError:
    waited = f" (waited {waited_s:.0f} s)" if waited_s else ""
    return WarehouseError(
        f"the DuckDB warehouse {make_url(url).database} is in use by another process: PID {pid} ({program}){waited}; "
        "a DuckDB file admits one process at a time",
        fix=f"wait for PID {pid} to finish (another flow run, an `activation` command or a DuckDB shell) or stop it, "
        "then rerun; to wait for it automatically set ACTIVATION_WAREHOUSE_LOCK_WAIT_SECONDS (flows wait "
        "30 minutes by default); for runs that overlap, keep the warehouse in PostgreSQL",
    )


#: What to tell someone whose warehouse does not exist yet (the commands that create one).
CREATE_FIX = (
    "check ACTIVATION_WAREHOUSE_URL (a typo in the path?); a new warehouse is made by "
    "`activation ingest FILE --format …`, `activation demo-data` + ingest, or `activation demo`"
)


def duckdb_file(url: str) -> Path | None:
    """The file of a DuckDB warehouse URL (None for other warehouses and in-memory DuckDB)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    if parsed.get_backend_name() == "duckdb" and parsed.database and parsed.database != ":memory:":
        return Path(parsed.database).expanduser()
    return None


def make_engine(
    url: str,
    *,
    check: bool = True,
    lock_wait_s: float = 0,
    create: bool = True,
    read_only: bool = False,
    setting: str = "ACTIVATION_WAREHOUSE_URL",
) -> Engine:
    """Create an engine for ``url``; for a DuckDB file, create its folder first (``create``).

    ``lock_wait_s``: when another process holds the DuckDB file, keep trying this long before giving up.
    ``create=False``: a DuckDB file that does not exist is an error, not a new empty warehouse (a
    mistyped path would otherwise make folders and an empty warehouse, then report "no orders").
    ``read_only``: the warehouse refuses writes where the dialect can say so (a DuckDB file opened read-only;
    PostgreSQL read-only transactions); implies ``create=False``. A read-only DuckDB file still keeps
    writers out while the engine has a connection open: dispose of it after reading.
    ``setting``: the setting the URL came from, named in the errors (``ACTIVATION_STATE_URL`` for a state
    store of its own).

    Raises:
        ConfigError: the URL is malformed or names a driver that is not installed.
        WarehouseError: the warehouse cannot be reached, (DuckDB) another process holds its file, or
            (``create=False``) the DuckDB file is missing.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(
            f"{setting} is not a valid SQLAlchemy URL: {url!r}",
            fix="use e.g. duckdb:///data/warehouse.duckdb or postgresql+psycopg://user:pass@host:5432/db",
        ) from exc
    file = duckdb_file(url)
    create = create and not read_only
    if file is not None:
        if not create and not file.is_file():
            raise WarehouseError(
                f"no warehouse at {file}" + ("" if file.parent.is_dir() else f" (no folder {file.parent})"),
                fix=CREATE_FIX,
            )
        if create:
            file.parent.mkdir(parents=True, exist_ok=True)
    if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() in ("", "psycopg2"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    kwargs: dict[str, Any] = {"future": True}
    if parsed.get_backend_name() == "postgresql":
        kwargs["connect_args"] = {"connect_timeout": 10}
        kwargs["pool_pre_ping"] = True
    if read_only:
        kwargs.update(_read_only_options(parsed.get_backend_name(), kwargs.get("connect_args", {})))
    try:
        engine = create_engine(parsed, **kwargs)
    except (NoSuchModuleError, ImportError) as exc:
        raise ConfigError(
            f"no SQLAlchemy driver installed for warehouse URL {redact(url)}: {exc}",
            fix="install the dialect's driver package (e.g. pip install snowflake-sqlalchemy)",
        ) from exc
    if check:
        started = time.monotonic()
        while True:
            try:
                with engine.connect() as conn:
                    conn.execute(text("select 1"))
                break
            except SQLAlchemyError as exc:
                holder = duckdb_lock_holder(exc)
                if holder is None:
                    engine.dispose()
                    raise _unreachable(url, exc, setting) from exc
                waited = time.monotonic() - started
                if waited >= lock_wait_s:
                    engine.dispose()
                    # not chained: a held lock is not a dropped connection, so no task retries it
                    raise _lock_error(url, *holder, waited) from None
                time.sleep(min(LOCK_POLL_S, lock_wait_s - waited))
    return engine


def _read_only_options(backend: str, connect_args: dict[str, Any]) -> dict[str, Any]:
    """Engine options that make the warehouse refuse writes (other dialects: the caller never writes)."""
    if backend == "duckdb":
        return {"connect_args": {**connect_args, "read_only": True}}
    if backend == "postgresql":
        return {"connect_args": {**connect_args, "options": "-c default_transaction_read_only=on"}}
    return {}


def db_reason(exc: BaseException) -> str:
    """The first line of what the database said (the driver's error under SQLAlchemy's), for messages."""
    text = str(getattr(exc, "orig", exc)).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _unreachable(url: str, exc: SQLAlchemyError, setting: str) -> WarehouseError:
    reason = db_reason(exc)
    what = "the state store" if setting == "ACTIVATION_STATE_URL" else "the warehouse"
    return WarehouseError(
        f"cannot reach {what} at {redact(url)}: {reason}",
        fix=f"check {setting} (host, port, database, credentials) and that the server is up",
    )


def get_engine(settings: Settings, *, default_lock_wait_s: float = 0, create: bool = True) -> Engine:
    """A cached, checked engine for the settings' state store, with the project's tables created.

    A DuckDB file held by another process is waited for ``ACTIVATION_WAREHOUSE_LOCK_WAIT_SECONDS``, or
    ``default_lock_wait_s`` when that is not set (commands: 0, fail at once; flows: 30 minutes).
    ``create=False`` (every command but those that load data): a DuckDB warehouse file must exist already
    (a separate state store, ``ACTIVATION_STATE_URL``, is created when missing).
    """
    url = settings.resolved_state_url
    engine = _ENGINES.get(url)
    # a state store of its own (beside a Spark warehouse) is made on first use: nothing else creates it
    create = create or url != settings.resolved_warehouse_url
    if engine is None:
        wait = settings.warehouse_lock_wait_seconds
        own = url != settings.resolved_warehouse_url
        engine = make_engine(
            url,
            lock_wait_s=default_lock_wait_s if wait is None else wait,
            create=create,
            setting="ACTIVATION_STATE_URL" if own else "ACTIVATION_WAREHOUSE_URL",
        )
        ensure_schema(engine)
        _ENGINES[url] = engine
    return engine


def engine_if_exists(settings: Settings) -> Engine | None:
    """The warehouse's engine, or None when it is a DuckDB file that does not exist (commands that can
    work without one, such as ``templates preview`` with a made-up customer)."""
    file = duckdb_file(settings.resolved_state_url)
    if file is not None and not file.is_file() and settings.resolved_state_url not in _ENGINES:
        return None
    return get_engine(settings, create=False)


def spark_warehouse(settings: Settings) -> SparkWarehouse | None:
    """The Spark Connect session of a Spark warehouse (cached), or None when the warehouse is SQL.

    Raises:
        ConfigError: pyspark is not installed.
        WarehouseError: nothing answers at the URL.
    """
    if not settings.warehouse_is_spark:
        return None
    url = settings.resolved_warehouse_url.strip()
    if url not in _SPARK:
        from activation.spark import SparkWarehouse

        _SPARK[url] = SparkWarehouse.open(url)
    return _SPARK[url]


def dispose_engines() -> None:
    """Close every cached engine (DuckDB holds a file lock while open) and Spark session."""
    for engine in _ENGINES.values():
        engine.dispose()
    _ENGINES.clear()
    for spark in _SPARK.values():
        spark.close()
    _SPARK.clear()


def ensure_schema(engine: Engine) -> None:
    """Create the project's tables that do not exist yet (never alters existing ones)."""
    metadata.create_all(engine, checkfirst=True)


def has_table(bind: Engine | Connection, name: str) -> bool:
    schema, name = split_table_name(name)
    return inspect(bind).has_table(name, schema=schema)


@contextmanager
def transaction(engine: Engine) -> Iterator[Connection]:
    """One atomic unit of work: everything in it is written, or nothing."""
    with engine.begin() as conn:
        yield conn
