"""``activation serve``: the scheduled deployments of ``prefect.yaml``, run by one process without a work pool.

For a small install (one machine, one project folder): ``prefect serve`` registers the deployments, keeps them
scheduled and runs each due run in a subprocess of this process, in this folder. The schedules are the ones in
``prefect.yaml`` (a test keeps them equal) in ``ACTIVATION_SCHEDULE_TIMEZONE``: one zone for both.
"""

from __future__ import annotations

from typing import Any

from prefect import Flow
from prefect import serve as prefect_serve
from prefect.schedules import Cron

from activation.settings import Settings
from flows.collect_outcomes import collect_outcomes
from flows.quarterly_cycle import quarterly_cycle
from flows.roi_report import roi_report

SCHEDULED: list[tuple[Flow[..., Any], str, str, dict[str, Any]]] = [
    (quarterly_cycle, "quarterly", "0 6 1 1,4,7,10 *", {"send": False, "report": False}),
    (collect_outcomes, "daily", "0 7 * * *", {}),
    (roi_report, "monthly", "0 8 2 * *", {}),
]
"""(flow, deployment name, cron, parameters besides scheme and destination) of every scheduled deployment."""

TAG = "rfm-activation"


def scheduled_deployments(settings: Settings, scheme: str, destination: str) -> list[Any]:
    """The scheduled deployments for :func:`prefect.serve`, one run of each at a time (as in prefect.yaml)."""
    deployments = []
    for flow, name, cron, parameters in SCHEDULED:
        params = {"scheme": scheme, **parameters}
        if "destination" in flow.parameters.properties:
            params["destination"] = destination
        deployments.append(
            flow.to_deployment(
                name=name,
                schedules=[Cron(cron, timezone=settings.schedule_timezone)],
                parameters=params,
                concurrency_limit=1,
                tags=[TAG],
            )
        )
    return deployments


def serve(settings: Settings, scheme: str, destination: str) -> None:
    """Register the scheduled deployments and run them until interrupted."""
    prefect_serve(*scheduled_deployments(settings, scheme, destination))
