"""``resegment``: compute the quarter's RFM snapshot and publish its summary and migration matrix."""

from __future__ import annotations

from typing import Any

from flows.artifacts import artifact_key, publish_table
from flows.schedule import AsOf, earlier_run_with_this_name, period_flow, run_parameters, skipped
from flows.tasks import compute_snapshot_task, migration_task, segment_summary_task


@period_flow("resegment", hours=4)
def resegment(as_of: AsOf = None, scheme: str | None = None) -> dict[str, Any]:
    """Compute and store the snapshot of ``scheme`` as of ``as_of`` (default: end of the last full quarter).

    Publishes the ``segments-…`` summary table and, when an earlier snapshot exists, the
    ``migration-…`` matrix. Returns the snapshot's counts. A scheduled run whose quarter already has a
    completed or running ``resegment`` run steps aside (:mod:`flows.schedule`).

    Args:
        as_of: the snapshot date, YYYY-MM-DD (default: the end of the last full quarter before the run's
            scheduled start, in ACTIVATION_SCHEDULE_TIMEZONE).
        scheme: segmentation scheme, e.g. rfm11 (default: the ``default_scheme`` setting).
    """
    as_of, scheme = run_parameters(as_of, scheme)
    if (other := earlier_run_with_this_name()) is not None:
        return skipped("resegment", other)
    snapshot = compute_snapshot_task(as_of, scheme)
    publish_table(
        artifact_key("segments", scheme, as_of),
        segment_summary_task(as_of, scheme),
        f"{scheme} segments as of {as_of.isoformat()}: customers, share, mean R/F/M, revenue",
    )
    previous, matrix = migration_task(as_of, scheme)
    if previous is not None:
        publish_table(
            artifact_key("migration", scheme, as_of),
            matrix,
            f"{scheme} customers moving between segments from {previous} to {as_of.isoformat()}",
        )
    return {"as_of": as_of.isoformat(), "scheme": scheme, "previous_as_of": previous, **snapshot}
