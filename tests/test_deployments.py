"""prefect.yaml for real: a local ``prefect server``, ``prefect deploy --all``, the schedules' next dates,
and one deployment run driven to completion by a process worker."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
QUARTERLY = "0 6 1 1,4,7,10 *"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prefect(*args: str, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "prefect", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def prefect_server(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """A real ``prefect server start`` on 127.0.0.1 with its own home; killed (whole group) afterwards."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "ACTIVATION_"))}
    env.update({
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
        "PWD": str(ROOT),
        "ACTIVATION_DATA_DIR": str(tmp_path / "data"),
        "ACTIVATION_WAREHOUSE_URL": f"duckdb:///{tmp_path / 'warehouse.duckdb'}",
        "ACTIVATION_COUPON_SECRET": "test-secret-not-for-production",
    })
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 - closed below
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                               "--port", str(port)], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail("prefect server did not start:\n" + (tmp_path / "server.log").read_text()[-3000:])
            time.sleep(0.5)
        yield url, env
    finally:
        try:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(server.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log.close()


def _post(url: str, path: str, body: dict[str, Any]) -> Any:
    response = httpx.post(f"{url}{path}", json=body, timeout=30)
    response.raise_for_status()
    return response.json()


def _next_quarter_start(after: datetime) -> datetime:
    for year in (after.year, after.year + 1):
        for month in (1, 4, 7, 10):
            candidate = datetime(year, month, 1, 6, tzinfo=UTC)
            if candidate > after:
                return candidate
    raise AssertionError("unreachable")


def test_prefect_yaml_schedules_match_the_timezone_setting() -> None:
    from activation.settings import Settings

    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    zones = {s["timezone"] for d in config["deployments"] for s in d.get("schedules") or []}
    assert zones == {Settings().schedule_timezone}
    crons = {d["entrypoint"]: [s["cron"] for s in d.get("schedules") or []] for d in config["deployments"]}
    assert crons["flows/resegment.py:resegment"] == [QUARTERLY]
    assert crons["flows/activate.py:activate"] == [QUARTERLY]
    # the daily outcomes read opens and clicks back from where activate synced the campaigns
    destinations = {d["entrypoint"]: d["parameters"].get("destination") for d in config["deployments"]}
    assert destinations["flows/collect_outcomes.py:collect_outcomes"] == destinations["flows/activate.py:activate"]
    assert destinations["flows/quarterly_cycle.py:quarterly_cycle"] == destinations["flows/activate.py:activate"]


@pytest.mark.slow
@pytest.mark.prefect
def test_deploy_all_schedules_and_runs_a_deployment(prefect_server: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    from prefect.server.schemas.schedules import CronSchedule

    from activation.settings import Settings
    from activation.warehouse import dispose_engines, get_engine
    from segments.demo_data import generate
    from segments.ingest import ingest_file

    url, env = prefect_server
    # a small warehouse for the triggered run (released before the worker's subprocess opens it)
    settings = Settings(data_dir=tmp_path / "data", warehouse_url=env["ACTIVATION_WAREHOUSE_URL"])
    files = generate(tmp_path / "demo", 200, 1_600, 7)
    ingest_file(get_engine(settings), settings, files.orders, "parquet", mapping_path=files.mapping)
    dispose_engines()

    created = _prefect("work-pool", "create", "rfm-activation", "--type", "process", env=env)
    assert created.returncode == 0, created.stdout + created.stderr
    # what the README tells users to run, from the repository root
    deployed = _prefect("--no-prompt", "deploy", "--all", env=env, timeout=600)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr

    deployments = {(d["entrypoint"], d["name"]): d for d in _post(url, "/deployments/filter", {"limit": 50})}
    assert sorted(name for _, name in deployments) == ["daily", "manual", "monthly", "quarterly", "quarterly"]
    by_entry = {entry: d for (entry, _), d in deployments.items()}
    expected = {
        "flows/resegment.py:resegment": QUARTERLY,
        "flows/activate.py:activate": QUARTERLY,
        "flows/collect_outcomes.py:collect_outcomes": "0 7 * * *",
        "flows/roi_report.py:roi_report": "0 8 2 * *",
    }
    reference = datetime(2026, 2, 15, tzinfo=UTC)
    for entry, cron in expected.items():
        d = by_entry[entry]
        assert d["work_pool_name"] == "rfm-activation" and d["parameters"]["scheme"] == "rfm11"
        [schedule] = [s["schedule"] for s in d["schedules"]]
        assert schedule["cron"] == cron and schedule["timezone"] == "UTC"
        if cron == QUARTERLY:
            dates = asyncio.run(CronSchedule(**schedule).get_dates(n=4, start=reference))
            assert [(x.year, x.month, x.day, x.hour) for x in dates] == [
                (2026, 4, 1, 6), (2026, 7, 1, 6), (2026, 10, 1, 6), (2027, 1, 1, 6)
            ]
    assert by_entry["flows/quarterly_cycle.py:quarterly_cycle"]["schedules"] == []

    resegment_id = by_entry["flows/resegment.py:resegment"]["id"]
    assert _next_quarter_start(reference) == datetime(2026, 4, 1, 6, tzinfo=UTC)

    # trigger one run now and let a process worker execute it
    run = _post(url, f"/deployments/{resegment_id}/create_flow_run",
                {"parameters": {"as_of": "2025-06-30", "scheme": "rfm11"}})
    worker = _prefect("worker", "start", "--pool", "rfm-activation", "--run-once", env=env, timeout=300)
    state: dict[str, Any] = {}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        state = httpx.get(f"{url}/flow_runs/{run['id']}", timeout=10).json()["state"] or {}
        if state.get("type") in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}:
            break
        time.sleep(1)
    assert state.get("type") == "COMPLETED", (state, worker.stdout[-3000:], worker.stderr[-3000:])
    from sqlalchemy import create_engine, text

    engine = create_engine(env["ACTIVATION_WAREHOUSE_URL"])
    with engine.connect() as conn:
        assert conn.execute(text("select count(*) from snapshot_runs where as_of = :d"),
                            {"d": date(2025, 6, 30)}).scalar() == 1
    engine.dispose()
