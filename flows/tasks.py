"""Prefect tasks: each one builds the engine from settings and calls one plain, tested function.

Rules every task here follows (the flow tests check them):

* inputs and outputs are keys and counts (``as_of``, ``scheme``, campaign ids, totals), never
  member lists, engines or clients — so no e-mail address or name reaches Prefect's result
  storage, caches, artifacts or logs, and nothing unhashable is hashed for a cache key;
* results are not persisted (``persist_result=False``); the warehouse is the record;
* retries only for errors that can succeed on a second try (:func:`is_retriable`), with jittered
  back-off; everything else fails the run at once with the error's own message.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from contextlib import closing
from datetime import date, datetime
from typing import Any

import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DisconnectionError, OperationalError

from activation.errors import NotFoundError
from activation.settings import Settings, get_settings
from activation.warehouse import dispose_engines, get_engine
from campaigns.plan import plan_campaigns
from connectors.errors import RetriableError
from connectors.registry import get_destination
from connectors.sync import SyncOptions, sync_audience
from flows.artifacts import table_rows
from outcomes.ledger import collect_outcomes
from outcomes.report import write_roi_report
from segments.snapshots import compute_snapshot, latest_snapshot_as_of, migration_matrix, segment_summary

RETRY_DELAYS = [5.0, 30.0, 120.0]
"""Seconds between attempts; each is jittered by up to ±50 % so parallel runs do not retry in step."""


def retriable_error(exc: BaseException | None) -> bool:
    """True for errors a retry can cure: a destination's retriable error, a dropped warehouse connection."""
    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, RetriableError | OperationalError | DisconnectionError):
            return True
        exc = exc.__cause__
        seen += 1
    return False


def is_retriable(task: Any, task_run: Any, state: Any) -> bool:
    """``retry_condition_fn`` of every task that talks to the warehouse or a destination."""
    exc = state.data if isinstance(getattr(state, "data", None), BaseException) else None
    if exc is None:
        try:
            exc = state.result(raise_on_failure=False)
        except Exception as raised:
            exc = raised
    return retriable_error(exc if isinstance(exc, BaseException) else None)


TASK_DEFAULTS: dict[str, Any] = {
    "retries": len(RETRY_DELAYS),
    "retry_delay_seconds": RETRY_DELAYS,
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": is_retriable,
    "persist_result": False,
    "cache_policy": NO_CACHE,
}


def _log() -> Any:
    """The run logger inside a flow/task run (sent to the API); a plain logger when called as ``.fn``."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("flows")


def _settings() -> Settings:
    return get_settings()


FLOW_LOCK_WAIT_S = 1800.0
"""How long a flow waits for a DuckDB warehouse held by another process (a run still going when the next
one starts) unless ACTIVATION_WAREHOUSE_LOCK_WAIT_SECONDS says otherwise; commands do not wait."""


def _engine(settings: Settings) -> Engine:
    return get_engine(settings, default_lock_wait_s=FLOW_LOCK_WAIT_S)


_LIST_KEYS = {"warnings", "campaign_ids"}
"""List fields worth keeping in a summary (messages and keys; never members)."""


def summarize(obj: Any) -> dict[str, Any]:
    """The scalar fields of a result object (counts, ids, paths as text); lists of members are dropped."""
    if obj is None:
        return {}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        items = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    elif hasattr(obj, "model_dump"):
        items = obj.model_dump()
    elif isinstance(obj, dict):
        items = dict(obj)
    else:
        items = {k: v for k, v in vars(obj).items() if not k.startswith("_")}
    out: dict[str, Any] = {}
    for key, value in items.items():
        if isinstance(value, bool | int | float | str) or value is None:
            out[key] = value
        elif isinstance(value, date | datetime):
            out[key] = value.isoformat()
        elif hasattr(value, "__fspath__"):
            out[key] = str(value)
        elif key in _LIST_KEYS and isinstance(value, list | tuple) and len(value) <= 100:
            out[key] = [str(v) for v in value]
        elif isinstance(value, dict) and all(
            isinstance(v, bool | int | float | str) or v is None for v in value.values()
        ):
            out[key] = {str(k): v for k, v in value.items()}
    return out


# --- segments -------------------------------------------------------------------------------------


@task(name="compute-snapshot", timeout_seconds=3600, **TASK_DEFAULTS)
def compute_snapshot_task(as_of: date, scheme: str) -> dict[str, Any]:
    """Compute and store the RFM snapshot of ``scheme`` as of ``as_of``."""
    settings = _settings()
    result = compute_snapshot(_engine(settings), settings, as_of, scheme)
    summary = summarize(result)
    _log().info("snapshot %s %s: %s customers", scheme, as_of, summary.get("customers", "?"))
    return summary


@task(name="segment-summary", timeout_seconds=600, **TASK_DEFAULTS)
def segment_summary_task(as_of: date, scheme: str) -> list[dict[str, Any]]:
    """Per-segment aggregates of a snapshot (customers, share, mean R/F/M, revenue)."""
    settings = _settings()
    return table_rows(segment_summary(_engine(settings), as_of, scheme, settings))


@task(name="migration-matrix", timeout_seconds=600, **TASK_DEFAULTS)
def migration_task(as_of: date, scheme: str) -> tuple[str | None, list[dict[str, Any]]]:
    """Segment-to-segment counts from the previous snapshot of ``scheme`` to this one."""
    engine = _engine(_settings())
    previous = latest_snapshot_as_of(engine, scheme, before=as_of)
    if previous is None:
        return None, []
    return previous.isoformat(), table_rows(migration_matrix(engine, previous, as_of, scheme))


@task(name="wait-for-snapshot", timeout_seconds=6 * 3600, persist_result=False, cache_policy=NO_CACHE)
def wait_for_snapshot_task(as_of: date, scheme: str, wait_minutes: float) -> None:
    """Wait (up to ``wait_minutes``) until ``resegment`` has stored the snapshot ``activate`` needs."""
    deadline = time.monotonic() + wait_minutes * 60
    while True:
        found = latest_snapshot_as_of(
            _engine(_settings()), scheme, before=date.fromordinal(as_of.toordinal() + 1)
        )
        if found == as_of:
            return
        if time.monotonic() >= deadline:
            raise NotFoundError(
                f"no {scheme} snapshot as of {as_of.isoformat()}",
                fix=f"run `activation run resegment --as-of {as_of.isoformat()} --scheme {scheme}` first",
            )
        _log().info("waiting for the %s snapshot as of %s", scheme, as_of)
        dispose_engines()  # let go of a DuckDB file while waiting: the resegment run needs it
        time.sleep(min(30.0, max(0.5, deadline - time.monotonic())))


# --- campaigns and destinations --------------------------------------------------------------------


@task(name="plan-campaigns", timeout_seconds=3600, **TASK_DEFAULTS)
def plan_campaigns_task(as_of: date, scheme: str) -> dict[str, Any]:
    """Plan one campaign per active segment (holdouts, coupons); idempotent."""
    settings = _settings()
    result = plan_campaigns(_engine(settings), settings, as_of, scheme)
    summary = plan_summary(result)
    _log().info(
        "planned %s campaigns for %s %s: %s treated, %s holdout",
        len(summary["campaign_ids"]),
        scheme,
        as_of,
        summary["treated"],
        summary["holdout"],
    )
    return summary


def plan_summary(result: Any) -> dict[str, Any]:
    """Campaign ids and per-segment counts of a ``PlanResult``."""
    segments = [summarize(s) for s in getattr(result, "segments", [])]
    return {
        "campaign_ids": [s["campaign_id"] for s in segments if s.get("campaign_id")],
        "treated": sum(int(s.get("treated") or 0) for s in segments),
        "holdout": sum(int(s.get("holdout") or 0) for s in segments),
        "segments": segments,
    }


def sync_summary(result: Any) -> dict[str, Any]:
    """Totals of a ``SyncResult`` plus one row of counts per segment (no member appears in either)."""
    summary = result.summary() if hasattr(result, "summary") else summarize(result)
    segments = summary.pop("segments", {}) or {}
    totals = summarize(summary)
    totals["guardrail_violations"] = [str(v) for v in summary.get("guardrail_violations") or []]
    rows = []
    for name, seg in segments.items():
        row = summarize(seg)
        row.pop("skips", None)
        row.update({f"skip_{reason}": n for reason, n in (seg.get("skips") or {}).items()})
        row["segment"] = name
        rows.append(row)
    return {"totals": totals, "segments": rows}


def _sync(destination: str, options: SyncOptions) -> dict[str, Any]:
    """One audience sync (or its dry run: ``SyncOptions.preview``) on the flows' engine, as its summary."""
    settings = _settings()
    engine = _engine(settings)
    with closing(get_destination(destination, settings)) as dest:
        result = sync_audience(engine, settings, dest, options)
    return sync_summary(result)


@task(name="sync-plan", timeout_seconds=3600, **TASK_DEFAULTS)
def sync_plan_task(as_of: date, scheme: str, destination: str) -> dict[str, Any]:
    """Dry run of the audience sync: what would change and which guardrails it trips; writes nothing."""
    return _sync(destination, SyncOptions.preview(as_of, scheme))


@task(name="sync-audience", timeout_seconds=4 * 3600, **TASK_DEFAULTS)
def sync_task(
    as_of: date, scheme: str, destination: str, send: bool, schedule_at: datetime | None, force: bool
) -> dict[str, Any]:
    """Sync the planned audiences to ``destination`` (only changes) and create/send the campaigns."""
    summary = _sync(destination, SyncOptions(as_of, scheme, send=send, schedule_at=schedule_at, force=force))
    _log().info("synced %s %s to %s: %s", scheme, as_of, destination, summary["totals"])
    return summary


# --- outcomes and ROI ------------------------------------------------------------------------------


@task(name="collect-outcomes", timeout_seconds=3600, **TASK_DEFAULTS)
def collect_outcomes_task(
    as_of: date, scheme: str, window_days: int | None, destination: str | None
) -> dict[str, Any]:
    """Record sends, opens, clicks and conversions of the campaigns of ``as_of`` (idempotent)."""
    settings = _settings()
    source = get_destination(destination, settings) if destination else None
    try:
        result = collect_outcomes(
            _engine(settings), settings, as_of, scheme, window_days=window_days, destination=source
        )
    finally:
        if source is not None:
            source.close()
    summary = summarize(result)
    _log().info("collected outcomes for %s %s: %s", scheme, as_of, summary)
    return summary


@task(name="roi-report", timeout_seconds=3600, **TASK_DEFAULTS)
def roi_report_task(as_of: date, scheme: str, out: str | None, window_days: int | None) -> dict[str, Any]:
    """Write the HTML + CSV ROI report; return its paths and the per-segment ROI rows."""
    settings = _settings()
    target = out or str(settings.data_dir / "reports" / f"roi-{scheme}-{as_of.isoformat()}.html")
    paths = write_roi_report(_engine(settings), settings, as_of, scheme, target, window_days=window_days)
    summary = summarize(paths)
    rows: list[dict[str, Any]] = []
    csv_path = summary.get("csv")
    if csv_path:
        rows = table_rows(pd.read_csv(csv_path))
    return {"paths": summary, "rows": rows}
