"""What a deployment run takes from its schedule: the quarter, the run's name, and whether it is a duplicate.

* **The quarter comes from the scheduled time**, not the clock: a run scheduled for 1 October that a worker
  only picks up on 2 January still segments the quarter that ended on 30 September. The scheduled start is
  read in ``ACTIVATION_SCHEDULE_TIMEZONE``; a scheduled run whose schedule is in another time zone fails at
  once (the two would disagree about which day it is near midnight, and so about the quarter).
* **Run names say what a run does**: ``resegment-rfm11-2026q3``, ``activate-rfm11-2026q3-mailchimp``.
* **At most one run per flow and period**: a scheduled run whose name is already taken by a completed or
  running run (a run that piled up while the worker was down, a second schedule) is skipped; a manual run
  is refused while one with its name is running, and otherwise runs (a deliberate rerun).

Outside a deployment run (``activation run …``, ``activation demo``, subflows) nothing is skipped and the
run's date is its start, i.e. today.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime
from typing import Annotated, Any, ParamSpec, TypeVar
from zoneinfo import ZoneInfo

from prefect import Flow, flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterName,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.context import FlowRunContext
from pydantic import Field

from activation.dates import DATE_PATTERN, parse_date
from activation.errors import ConfigError, ConflictError
from activation.settings import Settings, get_settings, today_in
from campaigns.plan import period_label
from connectors.registry import NAMES, check_destination
from flows.dates import resolve_as_of
from flows.tasks import _log

AsOf = Annotated[date | None, Field(json_schema_extra={"pattern": DATE_PATTERN})]
"""An ``as_of`` parameter: a YYYY-MM-DD date, checked when a deployment run is created (Prefect does not check
the schema's ``format: date``), so "last quarter" or month 13 is refused there and not when the run starts."""

Destination = Annotated[str, Field(json_schema_extra={"enum": list(NAMES)})]
"""A destination parameter: a choice in the run form, checked when a deployment run is created; a flow called
in-process gets the clear ``unknown destination`` error of :func:`connectors.registry.check_destination`."""

OptionalDestination = Annotated[str | None, Field(json_schema_extra={"enum": [*NAMES, None]})]


def _flow_run() -> Any | None:
    ctx = FlowRunContext.get()
    return ctx.flow_run if ctx is not None else None


def _scheduled_start(flow_run: Any) -> datetime | None:
    return getattr(flow_run, "expected_start_time", None) or getattr(flow_run, "start_time", None)


def schedule_timezone_of(flow_run: Any) -> str | None:
    """The time zone of the deployment schedule that created ``flow_run`` (None for a run nobody scheduled).

    The scheduler's idempotency key is ``scheduled <deployment id> <schedule id> <time>``.
    """
    if not getattr(flow_run, "auto_scheduled", False) or flow_run.deployment_id is None:
        return None
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment(flow_run.deployment_id)
    parts = (flow_run.idempotency_key or "").split()
    schedules = [s for s in deployment.schedules or [] if len(parts) > 2 and str(s.id) == parts[2]]
    schedules = schedules or list(deployment.schedules or [])
    zones = {getattr(s.schedule, "timezone", None) or "UTC" for s in schedules}
    return zones.pop() if len(zones) == 1 else None


def run_today(settings: Settings, flow_run: Any | None = None) -> date:
    """The date of this run in ``ACTIVATION_SCHEDULE_TIMEZONE``: its scheduled start inside a flow run, else today.

    Raises:
        ConfigError: the run comes from a schedule whose time zone is not ``ACTIVATION_SCHEDULE_TIMEZONE``.
    """
    flow_run = flow_run if flow_run is not None else _flow_run()
    scheduled = _scheduled_start(flow_run) if flow_run is not None else None
    if scheduled is None:
        return today_in(settings)
    today_in(settings)  # validates the zone name with its own clear error
    zone = schedule_timezone_of(flow_run)
    if zone is not None and zone != settings.schedule_timezone:
        raise ConfigError(
            f"this run's schedule is in time zone {zone} but ACTIVATION_SCHEDULE_TIMEZONE is "
            f"{settings.schedule_timezone}: near midnight they disagree about the day, and so about the quarter",
            fix=f"use one zone for both: set the `timezone` anchor in prefect.yaml to {settings.schedule_timezone} "
            f"and redeploy, or set ACTIVATION_SCHEDULE_TIMEZONE={zone} on the worker",
        )
    return scheduled.astimezone(ZoneInfo(settings.schedule_timezone)).date()


def run_as_of(value: date | str | None, settings: Settings) -> date:
    """``resolve_as_of`` with "today" taken from the run's scheduled start (see :func:`run_today`)."""
    return resolve_as_of(value, settings, today=run_today(settings))


def run_parameters(
    as_of: date | str | None, scheme: str | None, destination: str | None = None
) -> tuple[date, str]:
    """A run's ``as_of`` (:func:`run_as_of`) and scheme (default: the ``default_scheme`` setting), and its
    destination checked, before anything runs.

    Raises:
        InputError: ``as_of`` is not a date or lies in the future.
        ConfigError: an unknown destination, or its credentials are not set.
    """
    settings = get_settings()
    day = run_as_of(as_of, settings)
    if destination:
        check_destination(destination, settings)
    return day, scheme or settings.default_scheme


P = ParamSpec("P")
R = TypeVar("R")


def period_flow(name: str, *name_parameters: str, hours: float) -> Callable[[Callable[P, R]], Flow[P, R]]:
    """``@flow`` as every flow of a period is declared: its runs named by :func:`run_name` (``name`` and
    the values of ``name_parameters``), no persisted result, a timeout of ``hours``."""
    return flow(
        name=name,
        flow_run_name=run_name(name, *name_parameters),
        persist_result=False,
        timeout_seconds=hours * 3600,
    )


def run_name(flow_name: str, *extra_parameters: str) -> Callable[[], str]:
    """A ``flow_run_name`` callable: ``<flow>-<scheme>-<period>[-<extra parameter values>]``."""

    def name() -> str:
        ctx = FlowRunContext.get()
        parameters = dict(ctx.parameters or {}) if ctx is not None else {}
        try:
            settings = get_settings()
            scheme = parameters.get("scheme") or settings.default_scheme
            as_of = parse_date(parameters.get("as_of"), "as_of")
            if as_of is None:
                as_of = resolve_as_of(
                    None, settings, today=run_today(settings, ctx.flow_run if ctx else None)
                )
        except Exception:
            return flow_name
        parts = [flow_name, str(scheme), period_label(as_of)]
        parts += [str(parameters[p]) for p in extra_parameters if parameters.get(p) not in (None, "")]
        return "-".join(parts).lower()

    return name


def earlier_run_with_this_name() -> Any | None:
    """The completed or running run that already has this deployment run's name, if there is one.

    Only runs started before this one count, so two duplicates that start together do not both step aside.

    Raises:
        ConflictError: a manual run whose name is taken by a running run (it would do the same work twice).
    """
    flow_run = _flow_run()
    if flow_run is None or flow_run.deployment_id is None or flow_run.parent_task_run_id is not None:
        return None
    with get_client(sync_client=True) as client:
        me = client.read_flow_run(flow_run.id)
        others = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                name=FlowRunFilterName(any_=[me.name]),
                state=FlowRunFilterState(
                    type=FlowRunFilterStateType(any_=[StateType.RUNNING, StateType.COMPLETED])
                ),
            ),
            limit=20,
        )
    mine = (me.start_time, str(me.id))
    earlier = [r for r in others if r.id != me.id and (r.start_time, str(r.id)) < mine]
    if not earlier:
        return None
    first = min(earlier, key=lambda r: (r.start_time, str(r.id)))
    if not me.auto_scheduled and first.state_type == StateType.RUNNING:
        raise ConflictError(
            f"run {first.name!r} ({first.id}) is doing this already",
            fix="wait for it to finish; rerun afterwards if its result is not what you need",
        )
    return first if me.auto_scheduled else None


def skipped(flow: str, other: Any) -> dict[str, Any]:
    """The result of a scheduled run that stepped aside for ``other`` (logged so the run's page says why)."""
    message = (
        f"skipped: {other.name} already {str(other.state_type.value).lower()} in run {other.id}; "
        f"one scheduled {flow} run per period (start a run by hand to redo it)"
    )
    _log().warning(message)
    return {"skipped": message, "duplicate_of": str(other.id)}
