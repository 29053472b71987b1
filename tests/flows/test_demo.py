"""``activation demo`` as a new user runs it: a fresh folder, no credentials, no Prefect server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from datetime import date
from pathlib import Path

import duckdb
import pytest

from flows.demo import backtest_as_of

ROOT = Path(__file__).resolve().parents[2]


def run_activation(
    *args: str, cwd: Path, extra_env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """The ``activation`` command in a subprocess with a clean environment (no ACTIVATION_*, no API URL)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACTIVATION_", "PREFECT_"))}
    env.update(
        {
            "PREFECT_HOME": str(cwd / ".prefect"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "COLUMNS": "200",
            **(extra_env or {}),
        }
    )
    code = "from activation.cli import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def counts(warehouse: Path) -> dict[str, int]:
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        return {
            name: con.execute(f"select count(*) from {name}").fetchone()[0]  # type: ignore[index]
            for name in (
                "orders",
                "customers",
                "rfm_snapshots",
                "campaigns",
                "campaign_members",
                "sync_state",
                "destination_campaigns",
                "campaign_outcomes",
            )
        }
    finally:
        con.close()


def test_backtest_as_of_leaves_months_of_real_orders_after_it() -> None:
    assert backtest_as_of(date(2025, 12, 31)) == date(2025, 6, 30)
    assert backtest_as_of(date(2026, 3, 15)) == date(2025, 9, 30)
    gap = date(2025, 12, 31) - backtest_as_of(date(2025, 12, 31))
    assert gap.days >= 150


@pytest.mark.slow
@pytest.mark.prefect
def test_demo_runs_the_whole_cycle_twice_without_duplicating_anything(tmp_path: Path) -> None:
    first = run_activation("demo", "--customers", "200", "--orders", "1600", cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    out = first.stdout
    for label in ("warehouse", "outbox", "template preview", "ROI report"):
        assert label in out, out
    data = tmp_path / "data"
    report = next((data / "reports").glob("*.html"))
    assert report.with_suffix(".csv").exists()
    assert (data / "preview" / "index.html").exists()
    emails = list((data / "outbox").rglob("*.eml"))
    assert emails
    before = counts(data / "warehouse.duckdb")
    assert all(before[k] > 0 for k in ("orders", "campaigns", "sync_state", "campaign_outcomes")), before

    second = run_activation("demo", "--customers", "200", "--orders", "1600", cwd=tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    assert counts(data / "warehouse.duckdb") == before
    assert sorted((data / "outbox").rglob("*.eml")) == sorted(emails)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_demo_with_a_prefect_api_url_that_points_nowhere_fails_clearly(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/api"
    result = run_activation("demo", cwd=tmp_path, extra_env={"PREFECT_API_URL": url}, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"PREFECT_API_URL={url} does not answer" in result.stderr
    assert "unset PREFECT_API_URL" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists()  # failed before touching anything


def test_a_prefect_api_url_that_is_not_a_url_fails_clearly(tmp_path: Path) -> None:
    result = run_activation("run", "resegment", cwd=tmp_path, extra_env={"PREFECT_API_URL": "localhost:4200"})
    assert result.returncode == 2, result.stdout + result.stderr
    assert "is not an http(s) URL" in result.stderr
