"""A sync run in a child process that is killed half-way (the "process killed mid-sync" tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from activation.tables import sync_runs, sync_state

REPO = Path(__file__).resolve().parents[2]


def count(engine: Engine, table) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar_one()


def kill_mid_sync(engine: Engine, child_code: str, *, timeout: float = 90) -> tuple[str, int]:
    """Run ``child_code`` (a sync) in a new Python process, SIGKILL it once its first confirmed batch is in
    ``sync_state`` (and half a second later), and return the run's status and the ``sync_state`` rows left.

    The fake server must be set to hang at some point (``faults.hang_after_writes``) so the child is stuck
    mid-sync, not finished, when it is killed."""
    child = subprocess.Popen(
        [sys.executable, "-c", child_code], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}
    )
    try:
        deadline = time.time() + timeout
        while count(engine, sync_state) == 0:  # the first confirmed batch is committed…
            assert time.time() < deadline and child.poll() is None, "child never committed a batch"
            time.sleep(0.02)
        time.sleep(0.5)  # …and whatever else can finish does
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
    with engine.connect() as conn:
        run = conn.execute(select(sync_runs.c.status)).scalar_one()
    return run, count(engine, sync_state)
