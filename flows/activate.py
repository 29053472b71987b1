"""``activate``: plan campaigns, check the sync plan against the guardrails, sync, create/send."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from prefect import flow

from activation.errors import GuardrailError
from activation.settings import get_settings
from flows.artifacts import artifact_key, publish_markdown, publish_table
from flows.dates import resolve_as_of
from flows.tasks import plan_campaigns_task, sync_plan_task, sync_task, wait_for_snapshot_task


def _plan_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per counter of a sync summary (nested per-reason counts flattened)."""
    rows: list[dict[str, Any]] = []
    for key, value in summary.items():
        if isinstance(value, dict):
            rows.extend({"item": f"{key}: {k}", "value": v} for k, v in value.items())
        else:
            rows.append({"item": key, "value": value})
    return rows


@flow(name="activate", persist_result=False, timeout_seconds=8 * 3600)
def activate(
    as_of: date | None = None,
    scheme: str | None = None,
    destination: str = "outbox",
    send: bool = False,
    schedule_at: datetime | None = None,
    force: bool = False,
    wait_for_snapshot_minutes: float = 0,
) -> dict[str, Any]:
    """Plan → dry-run plan with guardrails → sync → create (and, when asked, send) the campaigns.

    Args:
        as_of: the snapshot date (default: end of the last full quarter).
        scheme: segmentation scheme (default: the ``default_scheme`` setting).
        destination: ``outbox``, ``mailchimp`` or ``hubspot``.
        send: send (or schedule, with ``schedule_at``) the campaigns instead of leaving drafts.
        force: override the guardrails (a segment swinging beyond the allowed share).
        wait_for_snapshot_minutes: on a schedule, wait this long for ``resegment`` to finish.

    Raises:
        GuardrailError: the sync plan looks wrong; nothing was written to the destination and the
            reason is published as the ``guardrail-…`` artifact.
    """
    settings = get_settings()
    as_of = resolve_as_of(as_of, settings)
    scheme = scheme or settings.default_scheme
    wait_for_snapshot_task(as_of, scheme, wait_for_snapshot_minutes)
    planned = plan_campaigns_task(as_of, scheme)
    try:
        dry_run = sync_plan_task(as_of, scheme, destination, force)
        publish_table(
            artifact_key("sync-plan", scheme, as_of, destination),
            _plan_rows(dry_run),
            f"what a sync of {scheme} {as_of.isoformat()} to {destination} would change",
        )
        synced = sync_task(as_of, scheme, destination, send, schedule_at, force)
    except GuardrailError as exc:
        publish_markdown(
            artifact_key("guardrail", scheme, as_of, destination),
            f"# Sync to {destination} stopped by a guardrail\n\n{exc.message}\n\n"
            f"Nothing was written to {destination}. {exc.fix or ''}\n",
            f"why the {scheme} {as_of.isoformat()} sync to {destination} was aborted",
        )
        raise
    publish_table(
        artifact_key("sync-result", scheme, as_of, destination),
        _plan_rows(synced),
        f"result of the {scheme} {as_of.isoformat()} sync to {destination}",
    )
    return {"as_of": as_of.isoformat(), "scheme": scheme, "plan": planned, "sync": synced}
