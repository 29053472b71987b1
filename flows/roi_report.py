"""``roi_report``: write the segment ROI report (HTML + CSV) and publish its table as an artifact."""

from __future__ import annotations

from typing import Any

from flows.artifacts import artifact_key, publish_markdown, publish_table
from flows.schedule import AsOf, period_flow, run_parameters
from flows.tasks import roi_report_task


@period_flow("roi-report", hours=1)
def roi_report(
    as_of: AsOf = None,
    scheme: str | None = None,
    window_days: int | None = None,
    out: str | None = None,
) -> dict[str, Any]:
    """Write ``out`` (default ``<data_dir>/reports/roi-<scheme>-<as_of>.html``) and ``report.csv`` beside it.

    Args:
        as_of: the campaigns' snapshot date, YYYY-MM-DD (default: the end of the last full quarter before the
            run's scheduled start, in ACTIVATION_SCHEDULE_TIMEZONE).
        scheme: segmentation scheme, e.g. rfm11 (default: the ``default_scheme`` setting).
        window_days: attribution window in days (default: ACTIVATION_ATTRIBUTION_WINDOW_DAYS).
        out: HTML file to write (default: under the data folder); the CSV is written beside it.
    """
    as_of, scheme = run_parameters(as_of, scheme)
    report = roi_report_task(as_of, scheme, out, window_days)
    publish_table(
        artifact_key("roi", scheme, as_of),
        report["rows"],
        f"ROI per segment of the {scheme} campaigns of {as_of.isoformat()} (treated vs holdout)",
    )
    paths = report["paths"]
    publish_markdown(
        artifact_key("roi-report", scheme, as_of),
        "# Segment ROI report\n\n" + "\n".join(f"* {k}: `{v}`" for k, v in paths.items()) + "\n",
        "where the ROI report was written",
    )
    return {"as_of": as_of.isoformat(), "scheme": scheme, "report": paths, "segments": len(report["rows"])}
