"""Ctrl-C: a real SIGINT to a real ``activation`` process prints one line — nothing was written, or what was
and how to resume — and exits 130; no traceback, no half-written warehouse, a sync that converges on rerun."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import date
from pathlib import Path

import duckdb
import pytest

from activation.settings import REPO_ROOT, Settings
from activation.warehouse import dispose_engines, get_engine
from tests.fakes.mailchimp import FakeMailchimp

ROOT = Path(__file__).resolve().parents[2]
AS_OF = date(2025, 6, 30)


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACTIVATION_")}
    env.update(
        PYTHONPATH=str(ROOT),
        ACTIVATION_DATA_DIR=str(tmp_path / "data"),
        ACTIVATION_TEMPLATES_DIR=str(REPO_ROOT / "templates"),
        ACTIVATION_COUPON_SECRET="interrupt-test",
        **extra,
    )
    return env


def _wait_for(check, what: str, limit_s: float = 60) -> None:
    """Poll until ``check()``; the limit only keeps a broken test from hanging (nothing is timed)."""
    deadline = time.monotonic() + limit_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.05)


def _sigint_as_from_a_terminal() -> None:
    """In the child: Ctrl-C's default disposition, whatever this process inherited (a shell starts background
    jobs with SIGINT ignored, and Python then leaves it ignored, so the signal would do nothing)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupt(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err


def _counts(path: Path) -> dict[str, int]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        names = [r[0] for r in con.execute("select table_name from information_schema.tables").fetchall()]
        return {n: con.execute(f'select count(*) from "{n}"').fetchall()[0][0] for n in names}
    finally:
        con.close()


def test_ctrl_c_during_an_ingest_is_one_line_exit_130_and_nothing_written(tmp_path: Path):
    """The ingest's staging step is made to wait until stopped (it writes into the staging tables first), so
    the signal lands in the middle of the ingest's transaction."""
    from segments.demo_data import generate

    files = generate(tmp_path / "demo", customers=50, orders=200, seed=1)
    ready = tmp_path / "ready"
    script = textwrap.dedent(f"""
        import pathlib, sys, time
        import segments.ingest as ingest

        real_stage = ingest._stage

        def long_stage(con, *args, **kwargs):
            real_stage(con, *args, **kwargs)
            pathlib.Path({str(ready)!r}).touch()
            while True:
                time.sleep(0.01)

        ingest._stage = long_stage
        sys.argv = ["activation", "ingest", {str(files.orders)!r}, "--format", "parquet",
                    "--mapping", {str(files.mapping)!r}]
        import activation.cli
        activation.cli.main()
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        env=_env(tmp_path),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_sigint_as_from_a_terminal,
    )
    _wait_for(ready.exists, "the ingest query to start")
    code, out, err = _interrupt(proc)
    assert code == 130, (out, err)
    assert err.strip() == "interrupted; nothing was written", err
    counts = _counts(tmp_path / "data" / "warehouse.duckdb")
    assert counts["orders"] == 0 and counts["customers"] == 0


def test_duckdb_stopping_a_query_counts_as_ctrl_c():
    """DuckDB answers Ctrl-C by stopping its query and raising RuntimeError("Query interrupted") instead of
    KeyboardInterrupt (ingest printed a 41-line traceback of it): a real interrupted query is recognised."""
    import threading

    from activation.interrupt import is_interrupt

    con = duckdb.connect()
    started = threading.Event()

    def stop() -> None:
        started.wait()
        time.sleep(0.2)
        con.interrupt()

    threading.Thread(target=stop, daemon=True).start()
    started.set()
    with pytest.raises(Exception) as err:
        con.execute("select count(*) from range(1000000000000) a, range(1000) b").fetchall()
    assert is_interrupt(err.value), repr(err.value)
    assert not is_interrupt(RuntimeError("Conversion Error: could not convert string"))


@pytest.fixture
def planned(tmp_path: Path) -> Path:
    """A warehouse with demo data, an rfm11 snapshot and a campaign plan."""
    from campaigns.plan import plan_campaigns
    from segments.demo_data import generate
    from segments.ingest import ingest_file
    from segments.snapshots import compute_snapshot

    settings = Settings(data_dir=tmp_path / "data", coupon_secret="interrupt-test")  # type: ignore[arg-type]
    files = generate(tmp_path / "demo", customers=300, orders=2000, seed=2)
    engine = get_engine(settings)
    ingest_file(engine, settings, files.orders, "parquet", mapping_path=files.mapping)
    compute_snapshot(engine, settings, AS_OF, "rfm11")
    plan_campaigns(engine, settings, AS_OF, "rfm11")
    dispose_engines()
    return tmp_path / "data" / "warehouse.duckdb"


def test_ctrl_c_during_a_sync_says_what_was_synced_and_a_rerun_finishes(tmp_path: Path, planned: Path):
    with FakeMailchimp() as mc:
        mc.faults.latency = 0.2  # every request takes a while: the signal lands mid-sync
        env = _env(
            tmp_path,
            ACTIVATION_MAILCHIMP__API_KEY=mc.api_key,
            ACTIVATION_MAILCHIMP__LIST_ID=mc.list_id,
            ACTIVATION_MAILCHIMP__BASE_URL=mc.base_url,
            ACTIVATION_MAILCHIMP__BATCH_SIZE="10",
            ACTIVATION_MAILCHIMP__MAX_CONNECTIONS="1",
        )
        cmd = [
            sys.executable,
            "-m",
            "activation.cli",
            "sync",
            "--destination",
            "mailchimp",
            "--as-of",
            "2025-06-30",
        ]
        proc = subprocess.Popen(
            cmd,
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=_sigint_as_from_a_terminal,
        )
        _wait_for(lambda: len(mc.members) >= 20, "the first member batches to arrive")
        code, out, err = _interrupt(proc)
        assert code == 130, (out, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in err, err
        assert lines[0].startswith("interrupted; ") and "member(s) were synced to mailchimp" in lines[0], err
        assert "run the same command again" in lines[0]
        con = duckdb.connect(str(planned), read_only=True)
        try:
            runs = con.execute("select status from sync_runs").fetchall()
            synced = con.execute("select count(*) from sync_state").fetchall()[0][0]
        finally:
            con.close()
        assert runs == [("failed",)]  # closed, not left 'running'
        assert 0 < synced
        mc.faults.latency = 0.0
        again = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stderr
        assert "sync succeeded" in " ".join(again.stdout.split())
