"""A local Spark Connect server, for the tests and the benchmarks: started on 127.0.0.1 with ``local[N]``, stopped
for good.

The server is the ``pyspark`` wheel's own ``sbin/start-connect-server.sh`` run in the foreground
(``SPARK_NO_DAEMONIZE=1``) in a process group of its own, so stopping it kills the JVM and nothing else.
Its warehouse directory, Derby home, logs and scratch space live in a temporary directory removed on stop.
No side effects on import (the benchmarks import it too).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

START_TIMEOUT_S = 180.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _sbin() -> Path:
    import pyspark

    return Path(pyspark.__file__).resolve().parent / "sbin"


class SparkServer:
    """``with SparkServer(cores=2, memory="4g") as server: spark = server.session()``."""

    def __init__(self, cores: int, memory: str = "1g", conf: dict[str, str] | None = None) -> None:
        self.cores = cores
        self.memory = memory
        self.conf = dict(conf or {})
        self.port = _free_port()
        self.url = f"sc://127.0.0.1:{self.port}"
        self.home = Path(tempfile.mkdtemp(prefix="rfm-activation-spark-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_s = 0.0
        self._session: Any = None

    def _confs(self) -> dict[str, str]:
        return {
            "spark.connect.grpc.binding.address": "127.0.0.1",
            "spark.connect.grpc.binding.port": str(self.port),
            "spark.driver.memory": self.memory,
            "spark.sql.warehouse.dir": str(self.home / "warehouse"),
            "spark.driver.extraJavaOptions": f"-Dderby.system.home={self.home / 'derby'}",
            "spark.local.dir": str(self.home / "scratch"),
            "spark.sql.session.timeZone": "UTC",
            "spark.ui.enabled": "false",
            # let adaptive execution coalesce the shuffle partitions of cached plans too (CACHE TABLE … AS):
            # without it a cached aggregate keeps all 200 partitions, and every later scan pays 200 tasks
            "spark.sql.optimizer.canChangeCachedPlanOutputPartitioning": "true",
            # shuffle partitions of 16 MB, not 64: a 10M-order aggregate's ~135 MB shuffle became 3 partitions,
            # so on local[2] one core idled through the last; measured on that floor, local[2] / local[1]
            # went from 1.14x to 0.65x (one run each, load 2-4)
            "spark.sql.adaptive.advisoryPartitionSizeInBytes": "16m",
            **self.conf,
        }

    def start(self) -> SparkServer:
        args = ["bash", str(_sbin() / "start-connect-server.sh"), "--master", f"local[{self.cores}]"]
        for key, value in self._confs().items():
            args += ["--conf", f"{key}={value}"]
        env = {
            **os.environ,
            "SPARK_NO_DAEMONIZE": "1",
            "SPARK_LOG_DIR": str(self.home / "logs"),
            "SPARK_PID_DIR": str(self.home),
            "SPARK_LOCAL_IP": "127.0.0.1",
        }
        t0 = time.perf_counter()
        with open(self.home / "server.log", "wb") as log:
            self.proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.home, start_new_session=True
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self.started_s = time.perf_counter() - t0
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        assert self.proc is not None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = (self.home / "server.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"the Spark Connect server exited ({self.proc.returncode}):\n{tail}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    pass
            except OSError:
                time.sleep(0.5)
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # pyspark warns about pandas 3 on first use
                self.session().sql("SELECT 1").collect()
            return
        raise RuntimeError(
            f"the Spark Connect server did not answer on {self.url} in {START_TIMEOUT_S:.0f} s"
        )

    def session(self) -> Any:
        if self._session is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # pyspark warns about pandas 3 on import
                from pyspark.sql import SparkSession

                self._session = SparkSession.builder.remote(self.url).getOrCreate()
        return self._session

    def stop(self) -> None:
        if self._session is not None:
            try:
                self._session.stop()
            except Exception:  # the server may already be gone; stopping it is what matters
                pass
            self._session = None
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        self.proc = None
        shutil.rmtree(self.home, ignore_errors=True)

    def __enter__(self) -> SparkServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
