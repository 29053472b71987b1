"""prefect.yaml for real, the way a Prefect user runs it: one ``prefect server start`` for the session, a
process work pool, ``prefect deploy --all`` typed in a terminal (no ``--no-prompt``), from a folder that is not
the repository, and a worker started in yet another folder (the "second machine": only the installed package,
its own ``.env`` and the default DuckDB warehouse under its ``data/``). The quarterly schedule is moved to a
near cron so it fires during the test."""

from __future__ import annotations

import asyncio
import os
import pty
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
QUARTERLY = "0 6 1 1,4,7,10 *"
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "prefect.yaml").read_text())


def _by_flow(config: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["entrypoint"].rsplit(".", 1)[-1], d["name"]): d for d in config["deployments"]}


def _stop(process: subprocess.Popen[Any]) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=20)


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    """A real ``prefect server start`` on 127.0.0.1 with its own home, one for the session (it is slow to
    start); the environment a user's shell would have, without any ACTIVATION_ setting."""
    home = tmp_path_factory.mktemp("prefect-server")
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "ACTIVATION_"))}
    env.update(
        {
            "PREFECT_HOME": str(home / "prefect-home"),
            "PREFECT_API_URL": url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_ENABLED": "false",
            "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_LOGGING_TO_API_BATCH_INTERVAL": "0.3",
        }
    )
    log = open(home / "server.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        cwd=home,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail("prefect server did not start:\n" + (home / "server.log").read_text()[-3000:])
            time.sleep(0.5)
        yield url, env
    finally:
        _stop(server)
        log.close()


def _prefect(
    *args: str, env: dict[str, str], cwd: Path, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "prefect", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def in_terminal(args: list[str], *, cwd: Path, env: dict[str, str], timeout: float = 300) -> tuple[int, str]:
    """Run ``args`` on a pseudo-terminal, as typed by a user, with nobody answering: a prompt reads end-of-input
    (Ctrl-D) and fails the command instead of waiting forever."""
    master, slave = pty.openpty()
    process = subprocess.Popen(
        args,
        cwd=cwd,
        env={**env, "TERM": "xterm", "COLUMNS": "200"},
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
    )
    os.close(slave)
    os.write(master, b"\x04")
    output = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the terminal closed: the process is gone
                    break
                if not chunk:
                    break
                output += chunk
            elif process.poll() is not None:
                break
        else:
            _stop(process)
            pytest.fail("command still running in the terminal:\n" + output.decode(errors="replace")[-3000:])
        return process.wait(timeout=30), output.decode(errors="replace")
    finally:
        os.close(master)


def _request(method: str, url: str, body: dict[str, Any]) -> Any:
    """One API call, retried on 503 like Prefect's own client does (the server answers 503 while its SQLite
    database is busy, which happens on a loaded machine)."""
    for attempt in range(6):
        response = httpx.request(method, url, json=body, timeout=30)
        if response.status_code != 503:
            break
        time.sleep(0.5 * 2**attempt)
    response.raise_for_status()
    return response.json() if response.content else None


def _post(url: str, path: str, body: dict[str, Any]) -> Any:
    return _request("POST", f"{url}{path}", body)


def _runs(url: str, **flow_run_filter: Any) -> list[dict[str, Any]]:
    return _post(
        url, "/flow_runs/filter", {"flow_runs": flow_run_filter, "limit": 50, "sort": "START_TIME_ASC"}
    )


def _wait_for(url: str, run_id: str, timeout: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    run: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = httpx.get(f"{url}/flow_runs/{run_id}", timeout=10)
        if response.status_code == 503:  # busy, see _request
            time.sleep(1)
            continue
        response.raise_for_status()
        run = response.json()
        if (run.get("state") or {}).get("type") in TERMINAL:
            return run
        time.sleep(1)
    return run


def _logs(url: str, run_id: str, *words: str) -> str:
    """The run's log, once it holds all of ``words`` (logs reach the API in batches) or after 30 s."""
    for _ in range(60):
        logs = _post(url, "/logs/filter", {"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200})
        text = "\n".join(entry["message"] for entry in logs)
        if all(w in text for w in words):
            break
        time.sleep(0.5)
    return text


def _last_quarter_end(day: date) -> date:
    from segments.snapshots import last_quarter_end

    return last_quarter_end(day)


# --- prefect.yaml as a file --------------------------------------------------------------------------


def test_every_deployment_says_whether_it_has_a_schedule() -> None:
    # an omitted `schedules` makes `prefect deploy` ask "configure schedules?" in a terminal
    assert all(isinstance(d.get("schedules"), list) for d in _config()["deployments"])


def test_prefect_version_is_the_pinned_prefect() -> None:
    from importlib.metadata import version

    assert str(_config()["prefect-version"]) == version("prefect")


def test_one_scheduled_run_a_quarter_does_resegment_then_activate() -> None:
    """resegment and activate on one cron were two processes racing for one DuckDB file; now one run does both."""
    deployments = _by_flow(_config())
    quarterly = [key for key, d in deployments.items() for s in d["schedules"] if s["cron"] == QUARTERLY]
    assert quarterly == [("quarterly_cycle", "quarterly")]
    cycle = deployments[("quarterly_cycle", "quarterly")]
    assert cycle["parameters"]["report"] is False  # outcomes come from the daily deployment
    scheduled = {key[0] for key, d in deployments.items() if d["schedules"]}
    assert scheduled == {"quarterly_cycle", "collect_outcomes", "roi_report"}


def test_schedules_use_the_timezone_setting_and_one_destination() -> None:
    from activation.settings import Settings

    config = _config()
    zones = {s["timezone"] for d in config["deployments"] for s in d["schedules"]}
    assert zones == {Settings().schedule_timezone}
    # the daily outcomes read opens and clicks back from where activate synced the campaigns
    destinations = {d["parameters"].get("destination") for d in config["deployments"]} - {None}
    assert len(destinations) == 1


def test_entrypoints_import_from_the_installed_package() -> None:
    """Module paths, not files: a worker with only ``pip install rfm-activation`` can load every flow."""
    from prefect import Flow
    from prefect.utilities.importtools import import_object

    for deployment in _config()["deployments"]:
        entrypoint = deployment["entrypoint"]
        assert ":" not in entrypoint and not entrypoint.endswith(".py"), entrypoint
        assert isinstance(import_object(entrypoint), Flow)


def test_flow_parameters_are_described_for_the_ui() -> None:
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.importtools import import_object
    from prefect.utilities.schema_tools.validation import ValidationError, validate

    for deployment in _config()["deployments"]:
        schema = parameter_schema(import_object(deployment["entrypoint"])).model_dump_for_openapi()
        for name, prop in schema["properties"].items():
            assert prop.get("description"), f"{deployment['entrypoint']} parameter {name} has no description"
            if name == "destination":  # a choice in the run form
                assert {"outbox", "mailchimp", "hubspot"} <= set(prop["enum"]), prop
        # what the server checks when a run is created (it does not check `format: date`)
        for bad in ({"as_of": "last quarter"}, {"as_of": "2026-13-45"}, {"destination": "mailchimps"}):
            if next(iter(bad)) in schema["properties"]:
                with pytest.raises(ValidationError):
                    validate(bad, schema, raise_on_error=True)
        validate({"as_of": "2026-06-30"}, schema, raise_on_error=True)


def test_the_failure_alert_is_a_valid_prefect_automation() -> None:
    from prefect.events.schemas.automations import AutomationCore

    automation = AutomationCore.model_validate(yaml.safe_load((ROOT / "alerts.yaml").read_text()))
    assert automation.trigger.expect == {"prefect.flow-run.Failed", "prefect.flow-run.Crashed"}
    # it selects runs by the tag every deployment carries
    tag = dict(automation.trigger.match_related.root)["prefect.resource.id"]  # type: ignore[union-attr]
    assert all(tag == f"prefect.tag.{t}" for d in _config()["deployments"] for t in d["tags"])


def test_activation_serve_runs_the_same_schedules_as_prefect_yaml() -> None:
    from activation.settings import Settings
    from flows.serve import scheduled_deployments

    settings = Settings(schedule_timezone="Europe/Berlin")
    served = {
        (d.flow_name, d.name): d
        for d in scheduled_deployments(settings, scheme="rfm11", destination="outbox")
    }
    expected = {
        (d["entrypoint"].rsplit(".", 1)[-1].replace("_", "-"), d["name"]): d
        for d in _config()["deployments"]
        if d["schedules"]
    }
    assert sorted(served) == sorted(expected)
    for key, deployment in served.items():
        [schedule] = deployment.schedules
        assert schedule.schedule.cron == expected[key]["schedules"][0]["cron"]
        assert schedule.schedule.timezone == "Europe/Berlin"  # the setting, the one zone
        assert deployment.parameters == expected[key]["parameters"]
        assert deployment.concurrency_limit == 1 and deployment.tags == expected[key]["tags"]


def test_activation_serve_needs_a_server_that_outlives_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tests.cli_helpers import run_cli

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    # a test API started earlier in the run (the session's harness) sets the URL in Prefect's settings
    # context, not in the environment: without clearing it there, serve would find it and serve forever
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        result = run_cli("serve")
    assert result.exit_code == 2 and "prefect server start" in result.output, result.output


# --- a real server, a terminal, a worker elsewhere ----------------------------------------------------


@pytest.mark.slow
@pytest.mark.prefect
def test_deployed_quarter_runs_on_a_worker_in_another_folder(
    prefect_server: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    from prefect.server.schemas.schedules import CronSchedule
    from sqlalchemy import create_engine, text

    from activation.settings import Settings
    from activation.warehouse import dispose_engines, get_engine
    from segments.demo_data import generate
    from segments.ingest import ingest_file

    url, env = prefect_server
    pythonpath = os.pathsep.join(p for p in [str(ROOT), env.get("PYTHONPATH", "")] if p)
    env = {**env, "PYTHONPATH": pythonpath}

    # the deploying machine: a folder with prefect.yaml and nothing else
    deploy_dir = tmp_path / "deploy"
    deploy_dir.mkdir()
    shutil.copy(ROOT / "prefect.yaml", deploy_dir / "prefect.yaml")
    created = _prefect("work-pool", "create", "rfm-activation", "--type", "process", env=env, cwd=deploy_dir)
    assert created.returncode == 0, created.stdout + created.stderr
    code, output = in_terminal(
        [sys.executable, "-m", "prefect", "deploy", "--all"],
        cwd=deploy_dir,
        env={**env, "PWD": str(deploy_dir)},
    )
    assert code == 0, output[-4000:]
    assert "Would you like" not in output, output[-4000:]

    deployments = {
        (d["entrypoint"].rsplit(".", 1)[-1], d["name"]): d
        for d in _post(url, "/deployments/filter", {"limit": 50})
    }
    assert sorted(deployments) == sorted(_by_flow(_config()))
    cycle = deployments[("quarterly_cycle", "quarterly")]
    [schedule] = cycle["schedules"]
    assert schedule["schedule"]["cron"] == QUARTERLY and schedule["schedule"]["timezone"] == "UTC"
    dates = asyncio.run(
        CronSchedule(**schedule["schedule"]).get_dates(n=4, start=datetime(2026, 2, 15, tzinfo=UTC))
    )
    assert [(x.year, x.month, x.day, x.hour) for x in dates] == [
        (2026, 4, 1, 6),
        (2026, 7, 1, 6),
        (2026, 10, 1, 6),
        (2027, 1, 1, 6),
    ]
    assert (cycle.get("global_concurrency_limit") or {}).get("limit") == 1, cycle
    # a parameter outside its choices is refused when the run is created, not hours later by the flow
    for bad in ({"destination": "mailchimps"}, {"as_of": "last quarter"}):
        refused = httpx.post(
            f"{url}/deployments/{cycle['id']}/create_flow_run", json={"parameters": bad}, timeout=30
        )
        assert refused.status_code in (409, 422) and next(iter(bad)) in refused.text, refused.text
    # the pull step names the worker's folder when the run starts, not the folder deployed from
    assert str(deploy_dir) not in str(cycle["pull_steps"])

    # the worker's machine: its own folder, .env and default DuckDB warehouse (data/warehouse.duckdb)
    site = tmp_path / "site"
    site.mkdir()
    (site / ".env").write_text("ACTIVATION_COUPON_SECRET=test-secret-not-for-production\n")
    settings = Settings(data_dir=site / "data")
    files = generate(tmp_path / "demo", 200, 1_600, 7)
    ingest_file(get_engine(settings), settings, files.orders, "parquet", mapping_path=files.mapping)
    dispose_engines()  # a DuckDB file admits one process: let the worker's runs have it

    # a near cron for the quarterly cycle (every minute), and a daily schedule in a zone the setting is not
    _patch_schedule(url, cycle, cron="* * * * *", timezone="UTC")
    daily = deployments[("collect_outcomes", "daily")]
    _patch_schedule(url, daily, cron="* * * * *", timezone="Pacific/Auckland")

    # a late run: scheduled the day before the last quarter ended, started only now
    now = datetime.now(UTC)
    this_quarter = _last_quarter_end(now.date())
    late_at = datetime.combine(this_quarter - timedelta(days=1), datetime.min.time(), UTC) + timedelta(
        hours=6
    )
    manual = deployments[("resegment", "manual")]
    late = _post(
        url,
        f"/deployments/{manual['id']}/create_flow_run",
        {"state": {"type": "SCHEDULED", "state_details": {"scheduled_time": late_at.isoformat()}}},
    )

    # the other way to reach a second machine: each run clones the code (Prefect's git_clone pull step)
    from_git = _deploy_from_git(url, env, tmp_path, site) if (ROOT / ".git").exists() else None

    # alerts.yaml is created the way the docs say (a webhook notification block, the documented command)
    _create_alert(url, env, tmp_path, "http://127.0.0.1:9/hook")

    worker_log = open(tmp_path / "worker.log", "w")
    worker = subprocess.Popen(
        [sys.executable, "-m", "prefect", "worker", "start", "--pool", "rfm-activation"],
        cwd=site,
        env={**env, "PWD": str(site)},
        stdout=worker_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:

        def worker_output() -> str:
            worker_log.flush()
            return (tmp_path / "worker.log").read_text()[-4000:]

        # the late run segments the quarter it was scheduled in, not the one the clock is in now
        done = _wait_for(url, late["id"])
        assert done["state"]["type"] == "COMPLETED", (done["state"], _logs(url, late["id"]), worker_output())
        earlier_quarter = _last_quarter_end(late_at.date())
        assert (
            done["name"] == f"resegment-rfm11-{earlier_quarter.year}q{(earlier_quarter.month - 1) // 3 + 1}"
        )

        # the first scheduled cycle: resegment then activate, for the quarter before its scheduled time
        first = _first_run(url, cycle["id"])
        # then a second scheduled run of the same quarter, due while the first still runs (a schedule that
        # fires again, runs that piled up): every 10 s, so the test need not wait for the next minute
        _patch_schedule(url, cycle, interval=10, timezone="UTC")
        done = _wait_for(url, first["id"])
        assert done["state"]["type"] == "COMPLETED", (done["state"], _logs(url, first["id"]), worker_output())
        expected = _last_quarter_end(datetime.fromisoformat(first["expected_start_time"]).date())
        label = f"{expected.year}q{(expected.month - 1) // 3 + 1}"
        assert done["name"] == f"quarterly-cycle-rfm11-{label}"
        steps = _runs(url, parent_flow_run_id={"any_": [first["id"]]})
        assert [(r["name"], r["state"]["type"]) for r in steps] == [
            (f"resegment-rfm11-{label}", "COMPLETED"),
            (f"activate-rfm11-{label}-outbox", "COMPLETED"),
        ]

        # the daily run whose schedule is in another zone than ACTIVATION_SCHEDULE_TIMEZONE says so and stops
        odd = _wait_for(url, _first_run(url, daily["id"])["id"])
        assert odd["state"]["type"] == "FAILED"
        odd_log = _logs(url, odd["id"], "Pacific/Auckland", "ACTIVATION_SCHEDULE_TIMEZONE")
        assert "flow run failed: this run's schedule is in time zone Pacific/Auckland" in odd_log, odd_log
        assert "Traceback" not in odd_log, odd_log
        _patch_schedule(url, daily, active=False, cron=QUARTERLY, timezone="UTC")

        # the next scheduled run is a duplicate of the same quarter: it waits its turn, then steps aside
        second = _first_run(url, cycle["id"], after=first["id"])
        done = _wait_for(url, second["id"])
        _patch_schedule(url, cycle, active=False, cron=QUARTERLY, timezone="UTC")
        assert done["state"]["type"] == "COMPLETED", (done["state"], worker_output())
        assert done["name"] == f"quarterly-cycle-rfm11-{label}"
        assert "skipped" in _logs(url, second["id"], "skipped")
        assert _runs(url, parent_flow_run_id={"any_": [second["id"]]}) == []

        if from_git is not None:
            done = _wait_for(url, from_git["id"])
            assert done["state"]["type"] == "COMPLETED", (done["state"], _logs(url, from_git["id"]))
            # its entrypoint, flows/resegment.py, exists only in the clone: neither the worker's folder nor the
            # temporary folder the worker starts it in has it
    finally:
        _stop(worker)
        worker_log.close()

    engine = create_engine(f"duckdb:///{site / 'data' / 'warehouse.duckdb'}")
    with engine.connect() as conn:
        snapshots = [row[0] for row in conn.execute(text("select as_of from snapshot_runs order by as_of"))]
        campaigns = {row[0] for row in conn.execute(text("select distinct as_of from campaigns"))}
    engine.dispose()
    assert snapshots == ([GIT_AS_OF] if from_git else []) + [earlier_quarter, expected]
    assert campaigns == {expected}


def _create_alert(url: str, env: dict[str, str], tmp_path: Path, hook_url: str) -> None:
    """A webhook notification block, and alerts.yaml with its id, created with the documented command."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: url}):
        block_id = CustomWebhookNotificationBlock(
            name="rfm-alerts", url=hook_url, json_data={"subject": "{{subject}}", "body": "{{body}}"}
        ).save("rfm-alerts", overwrite=True)
    alerts = (ROOT / "alerts.yaml").read_text().replace("00000000-0000-0000-0000-000000000000", str(block_id))
    (tmp_path / "alerts.yaml").write_text(alerts)
    created = _prefect(
        "automation", "create", "--from-file", str(tmp_path / "alerts.yaml"), env=env, cwd=tmp_path
    )
    assert created.returncode == 0 and "Failed" not in created.stdout, created.stdout + created.stderr


GIT_AS_OF = date(2025, 12, 31)


def _deploy_from_git(url: str, env: dict[str, str], tmp_path: Path, site: Path) -> dict[str, Any]:
    """docs/operations.md's git_clone variant, from a clone of this repository's HEAD; returns a run of it.

    The run's folder is the fresh clone, so the settings it needs are absolute (here: job variables)."""
    repository = tmp_path / "repo.git"
    subprocess.run(["git", "init", "-q", "--bare", str(repository)], check=True)
    subprocess.run(
        ["git", "-C", str(ROOT), "push", "-q", str(repository), "HEAD:refs/heads/main"], check=True
    )
    variant = {
        "name": "rfm-activation",
        "prefect-version": _config()["prefect-version"],
        "pull": [
            {
                "prefect.deployments.steps.git_clone": {
                    "id": "clone-step",
                    "repository": f"file://{repository}",
                    "branch": "main",
                }
            }
        ],
        "deployments": [
            {
                "name": "from-git",
                "entrypoint": "flows/resegment.py:resegment",
                "parameters": {"scheme": "rfm11"},
                "schedules": [],
                "work_pool": {
                    "name": "rfm-activation",
                    "job_variables": {
                        "env": {
                            "ACTIVATION_DATA_DIR": str(site / "data"),
                            "ACTIVATION_COUPON_SECRET": "test-secret-not-for-production",
                        }
                    },
                },
            }
        ],
    }
    prefect_file = tmp_path / "prefect-git.yaml"
    prefect_file.write_text(yaml.safe_dump(variant, sort_keys=False))
    # file entrypoints are read where `prefect deploy` runs: a checkout
    deployed = _prefect(
        "--no-prompt", "deploy", "--all", "--prefect-file", str(prefect_file), env=env, cwd=ROOT
    )
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    [deployment] = [d for d in _post(url, "/deployments/filter", {"limit": 50}) if d["name"] == "from-git"]
    return _post(
        url,
        f"/deployments/{deployment['id']}/create_flow_run",
        {"parameters": {"as_of": GIT_AS_OF.isoformat()}},
    )


def _patch_schedule(url: str, deployment: dict[str, Any], active: bool = True, **schedule: Any) -> None:
    [current] = deployment["schedules"]
    _request(
        "PATCH",
        f"{url}/deployments/{deployment['id']}/schedules/{current['id']}",
        {"schedule": schedule, "active": active},
    )


def _first_run(
    url: str, deployment_id: str, after: str | None = None, timeout: float = 150
) -> dict[str, Any]:
    """The earliest scheduled run of the deployment (after run ``after``), once the worker has started it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = [r for r in _runs(url, deployment_id={"any_": [deployment_id]}) if r["start_time"]]
        ids = [r["id"] for r in runs]
        if after in ids:
            runs = runs[ids.index(after) + 1 :]
        if runs:
            return runs[0]
        time.sleep(1)
    pytest.fail(f"no run of deployment {deployment_id} started within {timeout} s")
