"""Flows: plain helpers and tasks (``task.fn``) first, then a few end-to-end runs on a real Prefect API
(one session harness) on DuckDB and PostgreSQL, including the faults of issue 5."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

from activation import tables as t
from activation.errors import ConfigError, GuardrailError, InputError
from activation.settings import Settings
from activation.warehouse import get_engine
from campaigns.plan import period_label
from connectors.errors import RetriesExhaustedError, ServerError
from flows.artifacts import artifact_key
from flows.dates import resolve_as_of
from segments.snapshots import last_quarter_end
from tests.cli_helpers import run_cli
from tests.prefect_harness import prefect_api  # noqa: F401  (session fixture)

DEMO_AS_OF = date(2025, 6, 30)
EMAIL = re.compile(rb"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[a-z]{2,}")


def load_demo(settings: Settings, tmp_path: Path, customers: int = 300, orders: int = 2_400) -> Engine:
    """A small demo data set ingested into the settings' warehouse."""
    from segments.demo_data import generate
    from segments.ingest import ingest_file

    files = generate(tmp_path / "demo", customers, orders, 7)
    engine = get_engine(settings)
    ingest_file(engine, settings, files.orders, "parquet", mapping_path=files.mapping)
    return engine


def count(engine: Engine, table: Any, *where: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table).where(*where)).scalar() or 0)


# --- plain helpers -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("today", "expected"),
    [
        (date(2026, 5, 10), date(2026, 3, 31)),
        (date(2026, 1, 1), date(2025, 12, 31)),
        (date(2026, 12, 31), date(2026, 9, 30)),
        (date(2026, 7, 1), date(2026, 6, 30)),
    ],
)
def test_as_of_defaults_to_the_end_of_the_last_full_quarter(today: date, expected: date) -> None:
    assert last_quarter_end(today) == expected
    assert resolve_as_of(None, Settings(), today=today) == expected


def _freeze_clock(monkeypatch: pytest.MonkeyPatch, instant: datetime) -> None:
    """``datetime.now(tz)`` where today's date is taken (``activation.settings.today_in``) returns ``instant``
    seen from ``tz``."""
    import activation.settings

    class FrozenClock(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> datetime:  # type: ignore[override]
            return instant.astimezone(tz)

    monkeypatch.setattr(activation.settings, "datetime", FrozenClock)


@pytest.mark.parametrize(
    ("instant", "zone", "expected"),
    [
        # 06:00 on 1 July in Auckland (the quarterly schedule there) is still 30 June in UTC
        (datetime(2026, 6, 30, 18, 0, tzinfo=UTC), "Pacific/Auckland", date(2026, 6, 30)),
        (datetime(2026, 6, 30, 18, 0, tzinfo=UTC), "UTC", date(2026, 3, 31)),
        # 06:00 on 1 July in UTC is 23:00 on 30 June in Los Angeles: Q2 has not ended there
        (datetime(2026, 7, 1, 6, 0, tzinfo=UTC), "America/Los_Angeles", date(2026, 3, 31)),
        (datetime(2026, 7, 1, 6, 0, tzinfo=UTC), "UTC", date(2026, 6, 30)),
        # the first minute of a quarter, and the last one of the quarter before
        (datetime(2026, 1, 1, 0, 0, tzinfo=UTC), "UTC", date(2025, 12, 31)),
        (datetime(2025, 12, 31, 23, 59, tzinfo=UTC), "UTC", date(2025, 9, 30)),
    ],
)
def test_as_of_default_is_taken_in_the_schedule_timezone(
    monkeypatch: pytest.MonkeyPatch, instant: datetime, zone: str, expected: date
) -> None:
    _freeze_clock(monkeypatch, instant)
    assert resolve_as_of(None, Settings(schedule_timezone=zone)) == expected


def test_future_as_of_is_judged_in_the_schedule_timezone(monkeypatch: pytest.MonkeyPatch) -> None:
    _freeze_clock(monkeypatch, datetime(2026, 6, 30, 18, 0, tzinfo=UTC))  # 1 July 06:00 in Auckland
    assert resolve_as_of("2026-07-01", Settings(schedule_timezone="Pacific/Auckland")) == date(2026, 7, 1)
    with pytest.raises(InputError, match="in the future"):
        resolve_as_of("2026-07-01", Settings(schedule_timezone="UTC"))


def test_unknown_schedule_timezone_names_the_setting() -> None:
    with pytest.raises(ConfigError, match="ACTIVATION_SCHEDULE_TIMEZONE='Mars/Olympus'") as err:
        resolve_as_of(None, Settings(schedule_timezone="Mars/Olympus"))
    assert "IANA" in str(err.value.fix)


def test_as_of_in_the_future_is_refused() -> None:
    with pytest.raises(InputError, match="in the future"):
        resolve_as_of("2026-06-01", Settings(), today=date(2026, 5, 10))
    with pytest.raises(InputError, match="YYYY-MM-DD"):
        resolve_as_of("last quarter", Settings(), today=date(2026, 5, 10))
    assert resolve_as_of("2026-05-10", Settings(), today=date(2026, 5, 10)) == date(2026, 5, 10)


@pytest.mark.parametrize(
    ("zone", "day", "expected"),
    [
        ("Pacific/Auckland", date(2026, 10, 1), date(2026, 9, 30)),
        ("UTC", date(2026, 9, 30), date(2026, 6, 30)),
    ],
)
def test_a_scheduled_run_takes_its_quarter_from_its_scheduled_start_in_the_setting_zone(
    zone: str, day: date, expected: date
) -> None:
    """A run scheduled for 1 October 06:00 in Auckland (30 September 17:00 UTC) but started by a worker on
    2 January: the quarter is the one before its scheduled start in ACTIVATION_SCHEDULE_TIMEZONE, not the clock's."""
    from types import SimpleNamespace

    from flows.schedule import run_as_of, run_today

    late = SimpleNamespace(
        expected_start_time=datetime(2026, 9, 30, 17, 0, tzinfo=UTC),
        auto_scheduled=False,
        start_time=datetime(2027, 1, 2, 9, 0, tzinfo=UTC),
        deployment_id=None,
    )
    settings = Settings(schedule_timezone=zone)
    assert run_today(settings, late) == day
    assert resolve_as_of(None, settings, today=run_today(settings, late)) == expected
    assert run_as_of(None, settings) == resolve_as_of(None, settings)  # outside a flow run: today


class HeldWarehouse:
    """Another process holding a DuckDB file open (as a running flow or a DuckDB shell does)."""

    def __init__(self, path: Path) -> None:
        import subprocess
        import sys

        self.process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import duckdb, sys; c = duckdb.connect(sys.argv[1]); print('held', flush=True); "
                "sys.stdin.read()",
                str(path),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None and self.process.stdout.readline().strip() == "held"

    def release(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=30)
        assert self.process.stdout is not None
        self.process.stdout.close()


def test_a_held_duckdb_warehouse_names_the_process_and_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from activation.errors import WarehouseError
    from activation.warehouse import make_engine
    from flows.tasks import retriable_error

    path = tmp_path / "warehouse.duckdb"
    make_engine(f"duckdb:///{path}").dispose()
    monkeypatch.setenv("ACTIVATION_WAREHOUSE_URL", f"duckdb:///{path}")
    monkeypatch.setenv("ACTIVATION_DATA_DIR", str(tmp_path / "data"))
    holder = HeldWarehouse(path)
    try:
        with pytest.raises(WarehouseError) as err:
            make_engine(f"duckdb:///{path}")
        assert (
            f"PID {holder.process.pid}" in err.value.message
            and "in use by another process" in err.value.message
        )
        assert "server is up" not in str(err.value) and "ACTIVATION_WAREHOUSE_LOCK_WAIT_SECONDS" in str(
            err.value.fix
        )
        assert not retriable_error(err.value)  # waited for (below), never retried as a dropped connection

        result = run_cli("segment", "--as-of", "2025-06-30")
        assert result.exit_code == 2, result.output
        assert f"PID {holder.process.pid}" in result.output and "server is up" not in result.output
    finally:
        holder.release()


def test_a_flow_waits_for_a_held_duckdb_warehouse(tmp_path: Path) -> None:
    import threading

    from activation.warehouse import make_engine

    path = tmp_path / "warehouse.duckdb"
    make_engine(f"duckdb:///{path}").dispose()
    holder = HeldWarehouse(path)
    timer = threading.Timer(1.0, holder.release)
    timer.start()
    engine = make_engine(f"duckdb:///{path}", lock_wait_s=120)  # the holder finishes; this one goes on
    timer.join()
    assert holder.process.returncode == 0  # it really was held until the other process ended
    with engine.connect() as conn:
        assert conn.execute(text("select 42")).scalar() == 42
    engine.dispose()


def test_artifact_keys_use_only_what_prefect_allows() -> None:
    assert artifact_key("segments", "rfm11", date(2025, 12, 31)) == "segments-rfm11-2025q4"
    assert period_label(date(2025, 11, 14)) == "20251114"  # as in the campaign ids
    key = artifact_key("sync-plan", "Vip_FM", date(2025, 11, 14), "mailchimp")
    assert re.fullmatch(r"[a-z0-9-]+", key) and "--" not in key, key
    assert artifact_key("segments", "vip- -fm", date(2025, 12, 31)) == "segments-vip-fm-2025q4"


def test_only_retriable_errors_are_retried() -> None:
    from flows.tasks import retriable_error

    assert retriable_error(ServerError("503", status=503))
    assert retriable_error(OperationalError("select 1", {}, Exception("server closed the connection")))
    wrapped = RuntimeError("wrapper")
    wrapped.__cause__ = ServerError("502", status=502)
    assert retriable_error(wrapped)
    assert not retriable_error(RetriesExhaustedError("gave up"))
    assert not retriable_error(GuardrailError("segment swings"))
    assert not retriable_error(ValueError("bug"))
    assert not retriable_error(None)


def test_task_summaries_carry_counts_not_members() -> None:
    from flows.tasks import summarize

    members = [{"customer_id": "C1", "email": "a@example.com"}]
    out = summarize({"as_of": date(2025, 6, 30), "customers": 3, "members": members, "segments": {"A": 2}})
    assert out == {"as_of": "2025-06-30", "customers": 3, "segments": {"A": 2}}


def test_tasks_are_configured_for_retries_and_keep_no_results() -> None:
    from flows import tasks

    for name in (
        "compute_snapshot_task",
        "plan_campaigns_task",
        "sync_task",
        "collect_outcomes_task",
        "roi_report_task",
    ):
        task = getattr(tasks, name)
        assert task.retries == 3 and task.retry_condition_fn is tasks.is_retriable, name
        assert task.retry_jitter_factor and task.timeout_seconds, name
        assert task.persist_result is False, name


def test_task_functions_run_without_prefect(duck_settings: Settings, tmp_path: Path) -> None:
    """Each task body is the plain function underneath: call it with ``.fn``."""
    from flows import tasks

    engine = load_demo(duck_settings, tmp_path)
    snap = tasks.compute_snapshot_task.fn(DEMO_AS_OF, "rfm11")
    assert snap["customers"] == count(engine, t.rfm_snapshots, t.rfm_snapshots.c.as_of == DEMO_AS_OF)
    rows = tasks.segment_summary_task.fn(DEMO_AS_OF, "rfm11")
    assert rows and all("@" not in str(r) for r in rows)
    assert tasks.migration_task.fn(DEMO_AS_OF, "rfm11") == (None, [])
    plan = tasks.plan_campaigns_task.fn(DEMO_AS_OF, "rfm11")
    assert plan["campaign_ids"] and plan["treated"] > 0
    dry = tasks.sync_plan_task.fn(DEMO_AS_OF, "rfm11", "outbox")
    assert dry["totals"]["dry_run"] is True and dry["segments"]
    assert count(engine, t.sync_state) == 0  # a dry run writes nothing


def test_future_as_of_on_the_command_line_is_a_clear_error() -> None:
    result = run_cli("run", "quarterly", "--as-of", "2999-01-01")
    assert result.exit_code == 2, result.output
    assert "in the future" in result.output and "fix:" in result.output


def _help(*command: str) -> str:
    """``--help`` of a command as one line of words (the box and the line wrapping removed)."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", run_cli(*command, "--help").output).split())


def test_run_and_demo_help_say_what_each_option_does() -> None:
    outcomes = _help("run", "collect-outcomes")
    assert "``" not in outcomes and "ACTIVATION_ATTRIBUTION_WINDOW_DAYS" in outcomes
    assert "conversions from the warehouse only" in outcomes
    report = _help("run", "roi-report")
    assert "report.csv" not in report and "same name" in report and "roi-<scheme>-<as-of>.html" in report
    demo = _help("demo")
    assert "small" not in demo and "20000" in demo and "160000" in demo and "--no-plant" in demo


# --- end to end on a real Prefect API --------------------------------------------------------------


def api_post(path: str, body: dict[str, Any]) -> Any:
    """POST to the test API over HTTP (this client version sends nulls some filter endpoints reject)."""
    import httpx
    from prefect.settings import PREFECT_API_URL

    response = httpx.post(f"{PREFECT_API_URL.value()}{path}", json=body, timeout=30)
    response.raise_for_status()
    return response.json()


def all_flow_runs() -> list[dict[str, Any]]:
    return api_post("/flow_runs/filter", {"sort": "START_TIME_DESC", "limit": 200})


def flow_run_logs(flow_run_ids: list[str]) -> list[str]:
    """Every log message of these flow runs (and their tasks), page by page."""
    messages: list[str] = []
    while True:
        page = api_post(
            "/logs/filter",
            {
                "logs": {"flow_run_id": {"any_": flow_run_ids}},
                "limit": 200,
                "offset": len(messages),
                "sort": "TIMESTAMP_ASC",
            },
        )
        messages += [log["message"] for log in page]
        if len(page) < 200:
            return messages


def one_line_failure(flow_run_id: str, words: str) -> str:
    """The log line of a run (or its tasks) that reports ``words``, once the logs have reached the API; no
    line of the run carries a traceback."""
    import time

    for _ in range(60):
        messages = flow_run_logs([flow_run_id])
        found = [m for m in messages if words in m]
        if found:
            assert not [m for m in messages if "Traceback" in m], messages
            return found[0]
        time.sleep(0.5)
    raise AssertionError(f"no log line with {words!r}: {flow_run_logs([flow_run_id])}")


def all_artifacts() -> list[dict[str, Any]]:
    """Every artifact on the API, page by page."""
    found: list[dict[str, Any]] = []
    while True:
        page = api_post("/artifacts/filter", {"sort": "CREATED_DESC", "limit": 200, "offset": len(found)})
        found += page
        if len(page) < 200:
            return found


def read_artifact(key: str) -> Any:
    """The latest artifact with ``key``, or None."""
    found = api_post(
        "/artifacts/filter", {"artifacts": {"key": {"any_": [key]}}, "sort": "CREATED_DESC", "limit": 1}
    )
    return type("Artifact", (), found[0]) if found else None


@pytest.mark.prefect
@pytest.mark.slow
def test_quarterly_cycle_end_to_end_leaves_no_personal_data_in_prefect(
    prefect_api: str,  # noqa: F811
    settings: Settings,
    tmp_path: Path,
) -> None:
    import os

    from flows.quarterly_cycle import quarterly_cycle

    engine = load_demo(settings, tmp_path)
    state = quarterly_cycle(
        as_of=DEMO_AS_OF,
        scheme="rfm11",
        destination="outbox",
        send=True,
        report_out=str(tmp_path / "report.html"),
        return_state=True,
    )
    assert state.is_completed(), state.message
    result = state.result()
    assert result["as_of"] == "2025-06-30" and result["roi"]["segments"] > 0
    assert Path(result["roi"]["report"]["html"]).exists() and (tmp_path / "report.csv").exists()
    assert count(engine, t.campaign_outcomes) > 0
    assert count(engine, t.sync_runs, t.sync_runs.c.status == "succeeded") == 1

    for key in (
        "segments-rfm11-2025q2",
        "sync-plan-rfm11-2025q2-outbox",
        "sync-result-rfm11-2025q2-outbox",
        "roi-rfm11-2025q2",
    ):
        assert read_artifact(key) is not None, key

    # personal data: no customer e-mail or name in Prefect's result storage, home, logs or artifacts
    with engine.connect() as conn:
        emails = {e.lower() for e in conn.execute(text("select email from customers")).scalars() if e}
        names = {n for n in conn.execute(text("select first_name from customers")).scalars() if n}
    assert len(emails) > 100 and len(names) > 20
    name_re = re.compile(r"\b(" + "|".join(re.escape(n) for n in sorted(names)) + r")\b")
    runs = all_flow_runs()
    texts = flow_run_logs([r["id"] for r in runs])
    artifacts = all_artifacts()
    assert {a["key"] for a in artifacts} >= {
        "segments-rfm11-2025q2",
        "sync-plan-rfm11-2025q2-outbox",
        "sync-result-rfm11-2025q2-outbox",
        "roi-rfm11-2025q2",
    }
    texts += [f"{a['key']} {a['description']} {a['data']}" for a in artifacts]
    texts += [f"{r['parameters']!r} {r['state_name']} {(r.get('state') or {}).get('message')}" for r in runs]
    assert len(texts) > 20
    for blob in texts:
        assert not (set(m.decode().lower() for m in EMAIL.findall(blob.encode())) & emails), blob[:200]
        assert not name_re.search(blob), blob[:200]
    stores = [
        Path(os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"]),
        Path(os.environ["PREFECT_HOME"]),
        Path(os.environ["PREFECT_LOCAL_STORAGE_PATH"]),
    ]
    for store in stores:
        for path in store.rglob("*") if store.exists() else []:
            if path.is_file() and path.stat().st_size < 50_000_000 and path.suffix not in {".db", ".db-wal"}:
                found = {m.decode().lower() for m in EMAIL.findall(path.read_bytes())}
                assert not found & emails, path

    # a rerun changes nothing: no new campaign version, no new sync writes, no duplicate outcomes
    campaigns_before = count(engine, t.campaigns)
    outcomes_before = count(engine, t.campaign_outcomes)
    again = quarterly_cycle(
        as_of=DEMO_AS_OF,
        scheme="rfm11",
        destination="outbox",
        send=True,
        report_out=str(tmp_path / "report.html"),
    )
    assert again["activate"]["sync"]["write_calls"] == 0
    assert count(engine, t.campaigns) == campaigns_before
    assert count(engine, t.campaign_outcomes) == outcomes_before


@pytest.mark.prefect
def test_cli_run_calls_the_same_flow(prefect_api: str, duck_settings: Settings, tmp_path: Path) -> None:  # noqa: F811
    engine = load_demo(duck_settings, tmp_path)
    result = run_cli("run", "resegment", "--as-of", "2025-06-30", "--scheme", "seed5")
    assert result.exit_code == 0, result.output
    assert count(engine, t.snapshot_runs, t.snapshot_runs.c.scheme == "seed5") == 1
    assert read_artifact("segments-seed5-2025q2") is not None


@pytest.mark.prefect
@pytest.mark.slow
def test_cli_run_quarterly_runs_the_quarterly_cycle_flow_once(
    prefect_api: str,  # noqa: F811
    duck_settings: Settings,
    tmp_path: Path,
) -> None:
    import httpx
    from prefect.settings import PREFECT_API_URL

    engine = load_demo(duck_settings, tmp_path)
    result = run_cli("run", "quarterly", "--as-of", "2025-06-30", "--scheme", "seed5", "--no-report")
    assert result.exit_code == 0, result.output
    assert '"activate"' in result.stdout and '"outcomes"' not in result.stdout
    runs = [
        r
        for r in all_flow_runs()
        if r["parameters"].get("scheme") == "seed5" and r["parameters"].get("report") is False
    ]
    assert len(runs) == 1, runs
    assert runs[0]["parameters"]["as_of"] == "2025-06-30" and runs[0]["state_type"] == "COMPLETED"
    flow = httpx.get(f"{PREFECT_API_URL.value()}/flows/{runs[0]['flow_id']}", timeout=30).json()
    assert flow["name"] == "quarterly-cycle"
    assert count(engine, t.snapshot_runs, t.snapshot_runs.c.scheme == "seed5") == 1
    assert (
        count(engine, t.sync_runs, t.sync_runs.c.scheme == "seed5", t.sync_runs.c.status == "succeeded") == 1
    )


@pytest.mark.prefect
def test_guardrail_abort_fails_before_any_write_and_publishes_the_reason(
    prefect_api: str,  # noqa: F811
    duck_settings: Settings,
    tmp_path: Path,
) -> None:
    from flows.activate import activate
    from flows.resegment import resegment

    engine = load_demo(duck_settings, tmp_path)
    resegment(as_of=DEMO_AS_OF, scheme="rfm11")
    with engine.begin() as conn:  # everybody unsubscribed: the audience is empty
        conn.execute(update(t.customers).values(unsubscribed=True))
    state = activate(as_of=DEMO_AS_OF, scheme="rfm11", destination="outbox", send=True, return_state=True)
    assert state.is_failed()
    with pytest.raises(GuardrailError, match="stopped before any write"):
        state.result()
    artifact = read_artifact("guardrail-rfm11-2025q2-outbox")
    assert artifact is not None and "source is empty" in str(artifact.data)
    # the run's log says it in one line with the fix, without a traceback
    failure = one_line_failure(str(state.state_details.flow_run_id), "stopped before any write")
    assert (
        failure.startswith("flow run failed: sync to outbox stopped before any write") and "(fix: " in failure
    )
    assert count(engine, t.sync_runs) == 0 and count(engine, t.sync_state) == 0
    assert count(engine, t.destination_campaigns) == 0
    assert not any(duck_settings.resolved_outbox_dir.rglob("*.eml"))


class FlakyOutbox:
    """The real outbox, except the destination starts failing (503) after ``fail_after`` members."""

    calls = 0

    def __new__(cls, settings: Settings, fail_after: int) -> Any:
        from connectors.outbox import OutboxDestination

        class _Flaky(OutboxDestination):
            def _apply_one(self, plan: Any, change: Any, touched: set[str]) -> Any:
                FlakyOutbox.calls += 1
                if FlakyOutbox.calls > fail_after:
                    raise ServerError("503 Service Unavailable (injected)", status=503)
                return super()._apply_one(plan, change, touched)

        return _Flaky(settings)


@pytest.mark.prefect
@pytest.mark.slow
def test_destination_failing_mid_way_retries_then_fails_and_a_rerun_converges(
    prefect_api: str,  # noqa: F811
    duck_settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import connectors.outbox
    import flows.activate
    import flows.tasks
    from flows.activate import activate
    from flows.resegment import resegment
    from flows.tasks import sync_task

    engine = load_demo(duck_settings, tmp_path)
    resegment(as_of=DEMO_AS_OF, scheme="rfm11")
    attempts: list[int] = []
    FlakyOutbox.calls = 0  # counted across attempts: after 45 members the destination stays down

    def flaky(name: str, settings: Settings) -> Any:
        attempts.append(1)
        return FlakyOutbox(settings, fail_after=45)

    with monkeypatch.context() as mp:
        mp.setattr(connectors.outbox, "BATCH", 20)
        mp.setattr(flows.activate, "sync_task", sync_task.with_options(retry_delay_seconds=[0, 0, 0]))
        mp.setattr(flows.tasks, "get_destination", flaky)
        state = activate(as_of=DEMO_AS_OF, scheme="rfm11", destination="outbox", send=True, return_state=True)
    assert state.is_failed()
    with pytest.raises(ServerError, match="503"):
        state.result()
    assert len(attempts) == 5  # the dry-run plan, then the first try and 3 retries
    with engine.connect() as conn:
        statuses = conn.execute(select(t.sync_runs.c.status)).scalars().all()
    assert statuses == ["failed"] * 4, statuses  # every attempt closed as failed, none left running
    # nothing half-recorded: state only for confirmed batches, no campaign marked sent
    synced = count(engine, t.sync_state)
    assert synced == 40  # two confirmed batches of 20; the 46th member failed
    assert count(engine, t.destination_campaigns, t.destination_campaigns.c.status == "sent") == 0

    # the same run again, without --force: its guardrail compares with the last completed sync, not with
    # the partial state the failed attempts left
    done = activate(as_of=DEMO_AS_OF, scheme="rfm11", destination="outbox", send=True)
    treated = done["plan"]["treated"]
    assert done["sync"]["status"] == "succeeded"
    with engine.connect() as conn:
        per_member = conn.execute(
            select(t.sync_state.c.customer_id, func.count()).group_by(t.sync_state.c.customer_id)
        ).all()
    assert per_member and all(n == 1 for _, n in per_member)
    assert 0 < len(per_member) <= treated
    assert len(list(duck_settings.resolved_outbox_dir.rglob("*.eml"))) == len(per_member)
    assert count(engine, t.destination_campaigns, t.destination_campaigns.c.status == "sent") == len(
        done["plan"]["campaign_ids"]
    )


@pytest.mark.prefect
def test_wrong_api_key_fails_the_flow_once_without_the_key_in_prefect(
    prefect_api: str,  # noqa: F811
    duck_settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A non-retriable destination error is not retried by the task, and the key reaches no Prefect log."""
    import flows.activate
    from connectors.errors import AuthError
    from flows.activate import activate
    from flows.resegment import resegment
    from flows.tasks import sync_task
    from tests.fakes.mailchimp import FakeMailchimp

    engine = load_demo(duck_settings, tmp_path)
    resegment(as_of=DEMO_AS_OF, scheme="rfm11")
    wrong_key = "feedfacefeedfacefeedfacefeedface-us1"
    with FakeMailchimp() as mc:
        monkeypatch.setenv("ACTIVATION_MAILCHIMP__API_KEY", wrong_key)
        monkeypatch.setenv("ACTIVATION_MAILCHIMP__LIST_ID", mc.list_id)
        monkeypatch.setenv("ACTIVATION_MAILCHIMP__BASE_URL", mc.base_url)
        monkeypatch.setattr(
            flows.activate, "sync_task", sync_task.with_options(retry_delay_seconds=[0, 0, 0])
        )
        state = activate(as_of=DEMO_AS_OF, scheme="rfm11", destination="mailchimp", return_state=True)
        calls = mc.calls
        assert mc.write_calls == 0
    assert state.is_failed()
    with pytest.raises(AuthError, match="ACTIVATION_MAILCHIMP__API_KEY"):
        state.result()
    assert calls == 1  # one attempt: its first read was refused; a wrong key is not retried
    assert count(engine, t.sync_state) == 0 and count(engine, t.sync_log) == 0
    flow_run_id = str(state.state_details.flow_run_id)
    failure = one_line_failure(flow_run_id, "flow run failed: Mailchimp rejected the API key")
    assert (
        failure.startswith("flow run failed: ")
        and "(fix: " in failure
        and "ACTIVATION_MAILCHIMP__API_KEY" in failure
    )
    texts = flow_run_logs([flow_run_id]) + [state.message or ""]
    assert not [m for m in texts if wrong_key[:32] in m]


@pytest.mark.prefect
def test_unknown_destination_or_missing_credentials_stop_before_anything_runs(
    prefect_api: str,  # noqa: F811
    duck_settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from activation.errors import ConfigError
    from flows.activate import activate
    from flows.quarterly_cycle import quarterly_cycle

    for name in ("ACTIVATION_MAILCHIMP__API_KEY", "ACTIVATION_HUBSPOT__TOKEN"):
        monkeypatch.delenv(name, raising=False)
    engine = load_demo(duck_settings, tmp_path)
    runs_before = len(all_flow_runs())
    result = run_cli("run", "activate", "--destination", "mailchimps", "--as-of", "2025-06-30")
    assert result.exit_code == 2, result.output
    assert (
        "unknown destination 'mailchimps'" in result.output and "outbox, mailchimp, hubspot" in result.output
    )
    assert "Traceback" not in result.output
    result = run_cli("run", "quarterly", "--destination", "hubspot", "--as-of", "2025-06-30")
    assert result.exit_code == 2, result.output
    assert "ACTIVATION_HUBSPOT__TOKEN" in result.output
    assert len(all_flow_runs()) == runs_before  # refused before any flow run started

    # a deployment's parameters reach the flow directly: it checks them before it waits, plans or syncs
    state = quarterly_cycle(as_of=DEMO_AS_OF, scheme="rfm11", destination="mailchimp", return_state=True)
    assert state.is_failed()
    with pytest.raises(ConfigError, match="ACTIVATION_MAILCHIMP__API_KEY"):
        state.result()
    state = activate(
        as_of=DEMO_AS_OF,
        scheme="rfm11",
        destination="nowhere",
        wait_for_snapshot_minutes=120,
        return_state=True,
    )
    with pytest.raises(ConfigError, match="unknown destination 'nowhere'"):
        state.result()
    assert count(engine, t.snapshot_runs) == 0 and count(engine, t.campaigns) == 0
    assert count(engine, t.sync_runs) == 0
