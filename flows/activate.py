"""``activate``: plan campaigns, check the sync plan against the guardrails, sync, create/send."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from activation.errors import GuardrailError
from connectors.sync import check_schedule_at
from flows.artifacts import artifact_key, publish_markdown, publish_table
from flows.schedule import AsOf, Destination, earlier_run_with_this_name, period_flow, run_parameters, skipped
from flows.tasks import plan_campaigns_task, sync_plan_task, sync_task, wait_for_snapshot_task


@period_flow("activate", "destination", hours=8)
def activate(
    as_of: AsOf = None,
    scheme: str | None = None,
    destination: Destination = "outbox",
    send: bool = False,
    schedule_at: datetime | None = None,
    force: bool = False,
    wait_for_snapshot_minutes: float = 0,
) -> dict[str, Any]:
    """Plan → dry-run plan with guardrails → sync → create (and, when asked, send) the campaigns.

    Args:
        as_of: the snapshot date, YYYY-MM-DD (default: the end of the last full quarter before the run's
            scheduled start, in ACTIVATION_SCHEDULE_TIMEZONE).
        scheme: segmentation scheme, e.g. rfm11 (default: the ``default_scheme`` setting).
        destination: where the audiences go: outbox (files, no credentials), mailchimp or hubspot.
        send: send (or schedule, with schedule_at) the campaigns instead of leaving drafts.
        schedule_at: with send, when the destination should send (ISO date-time, UTC unless it has an offset).
        force: override the guardrails (a segment swinging beyond the allowed share).
        wait_for_snapshot_minutes: wait this long for the resegment run of the same quarter to store its
            snapshot (0: it must exist already). The warehouse is released between looks.

    Raises:
        ConfigError: unknown destination or its credentials not set (before anything runs).
        GuardrailError: the sync plan looks wrong; nothing was written to the destination and the
            reason is published as the ``guardrail-…`` artifact.
    """
    as_of, scheme = run_parameters(as_of, scheme, destination)
    check_schedule_at(schedule_at)
    if (other := earlier_run_with_this_name()) is not None:
        return skipped("activate", other)
    wait_for_snapshot_task(as_of, scheme, wait_for_snapshot_minutes)
    planned = plan_campaigns_task(as_of, scheme)
    dry_run = sync_plan_task(as_of, scheme, destination)
    publish_table(
        artifact_key("sync-plan", scheme, as_of, destination),
        dry_run["segments"],
        f"what a sync of {scheme} {as_of.isoformat()} to {destination} would change, per segment",
    )
    violations = dry_run["totals"].get("guardrail_violations") or []
    if violations and not force:
        reason = "; ".join(violations)
        publish_markdown(
            artifact_key("guardrail", scheme, as_of, destination),
            f"# Sync to {destination} stopped by a guardrail\n\n"
            + "\n".join(f"* {v}" for v in violations)
            + f"\n\nNothing was written to {destination}. Check the `sync-plan` artifact; if the change is "
            "intended, rerun with `force: true` (CLI: `--force`).\n",
            f"why the {scheme} {as_of.isoformat()} sync to {destination} was stopped",
        )
        raise GuardrailError(
            f"sync to {destination} stopped before any write: {reason}",
            fix="check the plan (sync-plan artifact or `activation sync --dry-run`); rerun with --force if intended",
        )
    synced = sync_task(as_of, scheme, destination, send, schedule_at, force)
    publish_table(
        artifact_key("sync-result", scheme, as_of, destination),
        [
            synced["totals"]
            | {"guardrail_violations": ", ".join(synced["totals"].get("guardrail_violations", []))}
        ]
        + synced["segments"],
        f"result of the {scheme} {as_of.isoformat()} sync to {destination}",
    )
    return {"as_of": as_of.isoformat(), "scheme": scheme, "plan": planned, "sync": synced["totals"]}
