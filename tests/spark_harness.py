"""One real Spark Connect server for the whole test session (``local[2]`` on 127.0.0.1, a free port).

The server is the one bundled in the ``pyspark`` wheel (``sbin/start-connect-server.sh``), run in the
foreground (``SPARK_NO_DAEMONIZE``) in its own process group with its warehouse, metastore, logs and
scratch space in a temporary folder; it is killed with its JVM when the session ends. Without Java or
pyspark the tests that need it are skipped locally and fail in CI (``CI=true``), like the PostgreSQL ones.
"""

from __future__ import annotations

import atexit
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import IN_CI
from tests.spark_server import SparkServer

_SERVER: dict[str, Any] = {}


def _missing() -> str | None:
    """None when a server can be started here, else the reason."""
    if shutil.which("java") is None:
        return "no java on PATH (apt-get install default-jre-headless)"
    try:
        import pyspark  # noqa: F401
    except ImportError:
        return "pyspark is not installed (pip install -e '.[spark]')"
    return None


def _start() -> str:
    server = SparkServer(cores=2, conf={"spark.sql.shuffle.partitions": "4"})
    atexit.register(_stop)
    try:
        server.start()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    _SERVER["server"] = server
    return server.url


def _stop() -> None:
    server = _SERVER.pop("server", None)
    if server is not None:
        server.stop()


@pytest.fixture(scope="session")
def spark_url() -> Iterator[str]:
    """``sc://127.0.0.1:PORT`` of the session's Spark Connect server (started on first use)."""
    reason = _missing()
    if reason:
        if IN_CI:
            pytest.fail(f"Spark is required in CI: {reason}")
        pytest.skip(reason)
    yield _SERVER["server"].url if "server" in _SERVER else _start()
    _stop()


@pytest.fixture
def pyspark_installed() -> None:
    """For tests that need the Spark client but no server (skipped locally without it, failing in CI)."""
    reason = _missing()
    if reason:
        if IN_CI:
            pytest.fail(f"Spark is required in CI: {reason}")
        pytest.skip(reason)


def server_start_seconds() -> float | None:
    """How long the server took to answer (None before it started)."""
    server = _SERVER.get("server")
    return float(server.started_s) if server is not None else None


def load_table(url: str, name: str, rows: Any) -> None:
    """Write ``rows`` (a ``pyarrow.Table``) as the Spark table ``name`` (replacing it), through its own
    short-lived session, as a user's pipeline would have put the data there."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pyspark warns about pandas 3 on import
        from pyspark.sql.connect.session import SparkSession

        session = SparkSession.builder.remote(url).create()
        try:
            session.createDataFrame(rows).write.mode("overwrite").saveAsTable(name)
        finally:
            session.stop()
