"""The warehouse: engine creation (with a clear error when unreachable) and schema set-up."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from activation.errors import ConfigError, WarehouseError
from activation.settings import Settings
from activation.tables import metadata

_ENGINES: dict[str, Engine] = {}


def redact(url: str) -> str:
    """The URL with its password hidden, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable URL>"


def make_engine(url: str, *, check: bool = True) -> Engine:
    """Create an engine for ``url``; for a DuckDB file, create its folder first.

    Raises:
        ConfigError: the URL is malformed or names a driver that is not installed.
        WarehouseError: the warehouse cannot be reached.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(
            f"ACTIVATION_WAREHOUSE_URL is not a valid SQLAlchemy URL: {url!r}",
            fix="use e.g. duckdb:///data/warehouse.duckdb or postgresql+psycopg://user:pass@host:5432/db",
        ) from exc
    if parsed.get_backend_name() == "duckdb" and parsed.database and parsed.database != ":memory:":
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() in ("", "psycopg2"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    kwargs: dict = {"future": True}
    if parsed.get_backend_name() == "postgresql":
        kwargs["connect_args"] = {"connect_timeout": 10}
        kwargs["pool_pre_ping"] = True
    try:
        engine = create_engine(parsed, **kwargs)
    except (NoSuchModuleError, ImportError) as exc:
        raise ConfigError(
            f"no SQLAlchemy driver installed for warehouse URL {redact(url)}: {exc}",
            fix="install the dialect's driver package (e.g. pip install snowflake-sqlalchemy)",
        ) from exc
    if check:
        try:
            with engine.connect() as conn:
                conn.execute(text("select 1"))
        except SQLAlchemyError as exc:
            engine.dispose()
            reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0] if str(exc) else type(exc).__name__
            raise WarehouseError(
                f"cannot reach the warehouse at {redact(url)}: {reason}",
                fix="check ACTIVATION_WAREHOUSE_URL (host, port, database, credentials) and that the server is up",
            ) from exc
    return engine


def get_engine(settings: Settings) -> Engine:
    """A cached, checked engine for the settings' warehouse, with the project's tables created."""
    url = settings.resolved_warehouse_url
    engine = _ENGINES.get(url)
    if engine is None:
        engine = make_engine(url)
        ensure_schema(engine)
        _ENGINES[url] = engine
    return engine


def dispose_engines() -> None:
    """Close every cached engine (DuckDB holds a file lock while open)."""
    for engine in _ENGINES.values():
        engine.dispose()
    _ENGINES.clear()


def ensure_schema(engine: Engine) -> None:
    """Create the project's tables that do not exist yet (never alters existing ones)."""
    metadata.create_all(engine, checkfirst=True)


def has_table(bind: Engine | Connection, name: str) -> bool:
    schema = None
    if "." in name:
        schema, name = name.split(".", 1)
    return inspect(bind).has_table(name, schema=schema)


@contextmanager
def transaction(engine: Engine) -> Iterator[Connection]:
    """One atomic unit of work: everything in it is written, or nothing."""
    with engine.begin() as conn:
        yield conn
