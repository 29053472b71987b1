"""One real Spark Connect server for the whole test session (``local[2]`` on 127.0.0.1, a free port).

The server is the one bundled in the ``pyspark`` wheel (``sbin/start-connect-server.sh``), run in the
foreground (``SPARK_NO_DAEMONIZE``) in its own process group with its warehouse, metastore, logs and
scratch space in a temporary folder; it is killed with its JVM when the session ends. Without Java or
pyspark the tests that need it are skipped locally and fail in CI (``CI=true``), like the PostgreSQL ones.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import IN_CI

START_TIMEOUT_S = 180
_SERVER: dict[str, Any] = {}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _missing() -> str | None:
    """None when a server can be started here, else the reason."""
    if shutil.which("java") is None:
        return "no java on PATH (apt-get install default-jre-headless)"
    try:
        import pyspark  # noqa: F401
    except ImportError:
        return "pyspark is not installed (pip install -e '.[spark]')"
    return None


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _start() -> str:
    import pyspark

    home = Path(tempfile.mkdtemp(prefix="rfm-activation-spark-"))
    port = _free_port()
    env = {
        **os.environ,
        "SPARK_NO_DAEMONIZE": "1",
        "SPARK_LOG_DIR": str(home / "logs"),
        "SPARK_PID_DIR": str(home),
        "SPARK_LOCAL_DIRS": str(home / "local"),
        "SPARK_LOCAL_IP": "127.0.0.1",
    }
    script = Path(pyspark.__file__).parent / "sbin" / "start-connect-server.sh"
    conf = {
        "spark.connect.grpc.binding.address": "127.0.0.1",
        "spark.connect.grpc.binding.port": str(port),
        "spark.sql.warehouse.dir": str(home / "warehouse"),
        "spark.driver.extraJavaOptions": f"-Dderby.system.home={home / 'derby'}",
        "spark.ui.enabled": "false",
        "spark.sql.shuffle.partitions": "4",
        "spark.sql.session.timeZone": "UTC",
    }
    args = ["bash", str(script), "--master", "local[2]"]
    for key, value in conf.items():
        args += ["--conf", f"{key}={value}"]
    log = (home / "server.out").open("wb")
    started = time.monotonic()
    proc = subprocess.Popen(
        args, cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    _SERVER.update(proc=proc, home=home, log=log)
    atexit.register(_stop)
    while not _answers(port):
        if proc.poll() is not None or time.monotonic() - started > START_TIMEOUT_S:
            tail = (home / "server.out").read_text(errors="replace")[-2000:]
            _stop()
            pytest.fail(f"the Spark Connect server did not start on port {port}:\n{tail}")
        time.sleep(0.5)
    _SERVER["url"] = f"sc://127.0.0.1:{port}"
    _SERVER["start_s"] = time.monotonic() - started
    return str(_SERVER["url"])


def _stop() -> None:
    proc = _SERVER.pop("proc", None)
    if proc is not None and proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # the script's own group: the shell and its JVM
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    log = _SERVER.pop("log", None)
    if log is not None:
        log.close()
    home = _SERVER.pop("home", None)
    if home is not None:
        shutil.rmtree(home, ignore_errors=True)
    _SERVER.pop("url", None)


@pytest.fixture(scope="session")
def spark_url() -> Iterator[str]:
    """``sc://127.0.0.1:PORT`` of the session's Spark Connect server (started on first use)."""
    reason = _missing()
    if reason:
        if IN_CI:
            pytest.fail(f"Spark is required in CI: {reason}")
        pytest.skip(reason)
    yield _SERVER.get("url") or _start()
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
    value = _SERVER.get("start_s")
    return float(value) if value is not None else None


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
