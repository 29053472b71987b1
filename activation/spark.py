"""Spark as a warehouse, through Spark Connect (``sc://host:15002``; Databricks Connect speaks the same protocol).

The segmentation statements are SQLAlchemy selects; here they are compiled with the Databricks SQL dialect
(literal binds: Spark Connect takes SQL text) and run in a Spark Connect session, and results come back as
Arrow. :class:`SparkWarehouse` offers the few operations a snapshot needs: materialise a select once in
Spark (``CACHE TABLE name AS SELECT``, a cached temporary view), read one row, read all rows as Arrow,
drop the view. Every Spark or gRPC failure becomes a :class:`WarehouseError` naming the URL.

Sessions run with ``spark.sql.session.timeZone=UTC``: the project's timestamps are UTC, and Spark turns a
timestamp into a date (``datediff``, ``CAST(… AS DATE)``) in the session's time zone. They also set
``spark.sql.optimizer.canChangeCachedPlanOutputPartitioning=true``: without it the cached metrics keep the 200
shuffle partitions of their aggregate, and every later read of them (cut-points, scoring) runs 200 tasks; with
it adaptive execution coalesces them (a 1M-order segment on ``local[2]``: 45.5 s before, 31.1 s after).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from activation.errors import ConfigError, WarehouseError

#: the scheme of a Spark Connect URL
SPARK_URL_PREFIX = "sc://"

#: connection attempts before an unreachable server is reported (Spark Connect's default retries ~15
#: times with back-off up to a minute; a wrong port should fail in seconds)
CONNECT_RETRIES = 3

URL_FIX = (
    "check ACTIVATION_WAREHOUSE_URL: sc://HOST:PORT (a Spark Connect server, default port 15002, e.g. "
    "sc://127.0.0.1:15002) or, for Databricks, sc://WORKSPACE-HOST:443/;token=TOKEN;x-databricks-cluster-id=ID; "
    "and that the server is running"
)


def is_spark_url(url: str | None) -> bool:
    """Whether ``url`` names a Spark Connect endpoint."""
    return bool(url) and str(url).strip().lower().startswith(SPARK_URL_PREFIX)


def redact_spark(url: str) -> str:
    """The URL without its parameters (``;token=…`` and the like)."""
    return url.split(";", 1)[0] + (";…" if ";" in url else "")


def _import_session() -> Any:
    try:
        with warnings.catch_warnings():
            # pyspark warns about pandas 3 on import; the project hands Spark no pandas objects
            warnings.simplefilter("ignore")
            from pyspark.sql.connect.client.retries import DefaultPolicy
            from pyspark.sql.connect.session import SparkSession
    except ImportError as exc:
        raise ConfigError(
            f"a Spark warehouse needs pyspark with Spark Connect, which is not installed ({exc})",
            fix="pip install 'rfm-activation[spark]' (pyspark[connect] 4.x)",
        ) from exc
    return SparkSession, DefaultPolicy


def _spark_dialect() -> Any:
    try:
        from databricks.sqlalchemy.base import DatabricksDialect
    except ImportError as exc:
        raise ConfigError(
            f"a Spark warehouse needs the Databricks SQLAlchemy dialect, which is not installed ({exc})",
            fix="pip install 'rfm-activation[spark]'",
        ) from exc
    return DatabricksDialect()


def _reason(exc: BaseException) -> str:
    """What the server or gRPC said, in one line."""
    text = str(exc).strip()
    found = re.search(r'details = "([^"]*)"', text)
    if found:
        return found.group(1)
    return text.splitlines()[0] if text else type(exc).__name__


class SparkWarehouse:
    """A Spark Connect session on ``url`` (see the module doc)."""

    def __init__(self, url: str, session: Any) -> None:
        self.url = url
        self.session = session
        self.dialect = _spark_dialect()

    @classmethod
    def open(cls, url: str) -> SparkWarehouse:
        """Connect and check the server answers.

        Raises:
            ConfigError: pyspark or the Databricks dialect is not installed.
            WarehouseError: the URL is malformed or nothing answers there.
        """
        spark_session, policy = _import_session()
        _spark_dialect()
        session = None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # retries warn when they give up; the error says it
                session = spark_session.builder.remote(url).create()
                session.client.set_retry_policies(
                    [policy(max_retries=CONNECT_RETRIES, initial_backoff=200, max_backoff=1000)]
                )
                session.conf.set("spark.sql.session.timeZone", "UTC")
                session.conf.set("spark.sql.optimizer.canChangeCachedPlanOutputPartitioning", "true")
        except Exception as exc:  # pyspark raises its own exceptions, ValueError for a bad URL, grpc errors
            if session is not None:
                cls(url, session).close()
            raise WarehouseError(
                f"cannot reach the Spark warehouse at {redact_spark(url)}: {_reason(exc)}", fix=URL_FIX
            ) from exc
        return cls(url, session)

    def compile(self, statement: Any) -> str:
        """Spark SQL text of a SQLAlchemy statement (values inlined)."""
        return str(statement.compile(dialect=self.dialect, compile_kwargs={"literal_binds": True}))

    @contextmanager
    def _failing_as(self, what: str) -> Iterator[None]:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield
        except Exception as exc:
            if isinstance(exc, (WarehouseError, ConfigError)):
                raise
            raise WarehouseError(
                f"{what} failed in the Spark warehouse at {redact_spark(self.url)}: {_reason(exc)}",
                fix="check the orders source settings (ACTIVATION_ORDERS__*) and the Spark server; "
                "nothing was written",
            ) from exc

    def arrow(self, statement: Any, what: str = "a query") -> Any:
        """All rows of ``statement`` (a SQLAlchemy select or SQL text) as a ``pyarrow.Table``."""
        sql = statement if isinstance(statement, str) else self.compile(statement)
        with self._failing_as(what):
            return self.session.sql(sql).toArrow()

    def one(self, statement: Any, what: str = "a query") -> dict[str, Any]:
        """The single row of ``statement`` as a dict."""
        rows = self.arrow(statement, what).to_pylist()
        if len(rows) != 1:
            raise WarehouseError(f"{what} returned {len(rows)} rows instead of one", fix="report this")
        return dict(rows[0])

    def execute(self, sql: str, what: str = "a statement") -> None:
        with self._failing_as(what):
            self.session.sql(sql).collect()

    def columns(self, name: str) -> dict[str, str]:
        """Column name -> Spark type (``string``, ``double``, ``decimal(10,2)``, …) of table ``name``."""
        with self._failing_as(f"reading the columns of {name!r}"):
            schema = self.session.table(name).schema
        return {f.name: f.dataType.simpleString() for f in schema.fields}

    def quote(self, name: str) -> str:
        return str(self.dialect.identifier_preparer.quote(name))

    @contextmanager
    def cached(self, name: str, statement: Any, what: str = "materialising a query") -> Iterator[None]:
        """``statement`` computed once and kept in Spark's memory as the temporary view ``name`` for the
        block (``CACHE TABLE … AS SELECT`` is eager); dropped afterwards, whatever happens."""
        view = self.quote(name)
        try:
            self.execute(f"CACHE TABLE {view} AS {self.compile(statement)}", what)
            yield
        finally:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    self.session.sql(f"UNCACHE TABLE IF EXISTS {view}").collect()
                    self.session.sql(f"DROP VIEW IF EXISTS {view}").collect()
                except Exception:  # the server is gone: its temporary views went with it
                    pass

    def has_table(self, name: str) -> bool:
        with self._failing_as(f"looking up table {name!r}"):
            return bool(self.session.catalog.tableExists(name))

    def close(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                self.session.stop()
            except Exception:
                pass


class SparkResult:
    """The rows of a statement run in Spark, read the way the data checks read a SQLAlchemy result."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    def all(self) -> list[tuple[Any, ...]]:
        return [tuple(r.values()) for r in self.rows]

    def one(self) -> tuple[Any, ...]:
        if len(self.rows) != 1:
            raise WarehouseError(f"a query returned {len(self.rows)} rows instead of one", fix="report this")
        return tuple(self.rows[0].values())

    def scalar_one(self) -> Any:
        return self.one()[0]

    def mappings(self) -> _Mappings:
        return _Mappings(self.rows)


class _Mappings(list[dict[str, Any]]):
    def all(self) -> list[dict[str, Any]]:
        return list(self)


class SparkConnection:
    """Selects run in a :class:`SparkWarehouse` through the calls of a SQLAlchemy connection that the data
    checks use on Spark (``execute(select).scalar_one() / .one() / .all() / .mappings()``; the stored-fingerprint
    and relationships queries, which also use ``first`` and ``scalar_one_or_none``, never run there), so the same
    checks read orders in Spark. ``dialect`` is the Databricks dialect (no 64-bit id hash: the unique-id check
    always groups by order id there)."""

    def __init__(self, warehouse: SparkWarehouse, what: str = "the data checks") -> None:
        self.warehouse = warehouse
        self.dialect = warehouse.dialect
        self.what = what

    def execute(self, statement: Any) -> SparkResult:
        return SparkResult(self.warehouse.arrow(statement, self.what).to_pylist())
