"""Commands of this package: ``ingest``, ``segment`` and ``segments export|migration``.

Settings, the warehouse, files and the segment logic (pydantic, SQLAlchemy, pandas) are imported inside
each command, so ``activation --help`` does not load them.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich import box
from rich.table import Table

from activation import console
from activation.dates import parse_date
from activation.display import add_columns
from segments.cli_models import model_lines

if TYPE_CHECKING:
    import pandas as pd

    from segments.snapshots import SnapshotResult


def register(app: typer.Typer) -> None:
    """Add this package's commands to ``app``."""
    register_ingest(app)
    register_segmentation(app)


def register_ingest(app: typer.Typer) -> None:
    """The ``ingest`` command (``demo-data``, which plants by the offer policy, is in ``flows.cli``)."""
    app.command("ingest")(ingest_command)


def ingest_command(
    path: Path = typer.Argument(..., help="File to load (csv, xlsx, txt, parquet)."),
    fmt: str = typer.Option(..., "--format", help="online-retail | cdnow | csv | parquet"),
    mapping: Path | None = typer.Option(None, "--mapping", help="Column mapping YAML (csv and parquet)."),
) -> None:
    """Load transactions (and customers when present) into the warehouse; print a quality report."""
    from activation.settings import get_settings
    from activation.warehouse import get_engine
    from segments.ingest import ingest_file

    settings = get_settings()
    report = ingest_file(get_engine(settings), settings, path, fmt, mapping)
    table = Table(title=f"ingest {path.name}", show_header=True)
    table.add_column("")
    table.add_column("value", justify="right")
    for label, value in report.lines():
        table.add_row(label, value)
    console.out.print(table)


# --- segment, segments export, segments migration ------------------------------------------------

segments_app = typer.Typer(help="Work with stored segment snapshots.", no_args_is_help=True)


def register_segmentation(app: typer.Typer) -> None:
    """The ``segment`` command and the ``segments export|migration`` group."""
    app.command("segment")(segment_command)
    segments_app.command("export")(export_command)
    segments_app.command("migration")(migration_command)
    app.add_typer(segments_app, name="segments")


def segment_command(
    as_of: str | None = typer.Option(
        None,
        "--as-of",
        help="Snapshot date YYYY-MM-DD (orders up to the end of that day). Default: last quarter end.",
    ),
    scheme: str | None = typer.Option(
        None, "--scheme", help="Scheme name (default: the default scheme setting, rfm11)."
    ),
    lookback_days: int | None = typer.Option(
        None,
        "--lookback-days",
        min=1,
        help="Only orders in the N days ending with as_of (default: settings).",
    ),
    allow_negative_amounts: bool = typer.Option(
        False,
        "--allow-negative-amounts",
        help="Segment even when orders have a negative amount (default: a blocking data check).",
    ),
    as_json: bool = console.JSON_OPTION,
) -> None:
    """Compute and store a segment snapshot; print customers, share, mean R/F/M and revenue per segment."""
    from activation.settings import get_settings, today_in
    from activation.warehouse import get_engine
    from segments.snapshots import compute_snapshot, last_quarter_end, segment_summary

    day = parse_date(as_of or None, "--as-of")
    settings = get_settings()
    if allow_negative_amounts:
        settings = settings.model_copy(update={"allow_negative_amounts": True})
    when = day or last_quarter_end(today_in(settings))
    name = scheme or settings.default_scheme
    engine = get_engine(settings, create=False)
    result = compute_snapshot(engine, settings, when, name, lookback_days=lookback_days)
    summary = segment_summary(engine, when, name, settings)
    for warning in result.warnings:
        console.warn(warning)
    if as_json:
        console.print_json(
            "segment",
            {
                "as_of": when,
                "scheme": name,
                "lookback_days": result.lookback_days,
                "customers": result.customers,
                "segments": summary.to_dict(orient="records"),
                "cutpoints": result.cutpoints,
                "warnings": result.warnings,
            },
        )
        return
    _print_snapshot(name, when, result, summary)


def _print_snapshot(name: str, when: date, result: SnapshotResult, summary: pd.DataFrame) -> None:
    """The per-segment table of a snapshot (fits 80 columns), its cut-points and the model it used."""
    window = f"last {result.lookback_days} days" if result.lookback_days else "all history"
    table = Table(
        title=f"{name} as of {when} ({window}): {result.customers:,} customers",
        show_header=True,
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
    )  # fits 80 columns
    cells = []
    for row in summary.itertuples(index=False):
        empty = row.customers == 0
        cells.append(
            [
                str(row.segment),
                f"{row.customers:,}",
                f"{row.share:.1%}",
                "" if empty else f"{row.recency_mean:,.1f}",
                "" if empty else f"{row.frequency_mean:,.2f}",
                "" if empty else f"{row.monetary_mean:,.2f}",
                f"{row.revenue:,.2f}",
            ]
        )
    headers = (
        "segment",
        "customers",
        "share",
        "mean recency (days)",
        "mean frequency",
        "mean monetary",
        "revenue",
    )
    add_columns(table, headers, cells, wrap=(0,))
    for line in cells:
        table.add_row(*line)
    console.print_table(table)
    for m, rec in sorted(result.cutpoints.items()):
        if m == "model":
            continue
        console.out.print(
            f"{rec['metric']}: {rec['method']} {rec['bins']} bins, thresholds {_fmt_list(rec['thresholds'])}",
            highlight=False,
        )
    model = result.cutpoints.get("model")
    if model:
        for text in model_lines(model):
            console.out.print(text, highlight=False)


def _fmt_list(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


def export_command(
    as_of: str = typer.Option(..., "--as-of", help="Snapshot date YYYY-MM-DD."),
    scheme: str = typer.Option(..., "--scheme", help="Scheme name."),
    out: Path = typer.Option(..., "--out", help="CSV file to write."),
) -> None:
    """Write one CSV row per customer: customer_id, recency_days, frequency, monetary, r_score, f_score,
    m_score, segment."""
    from activation.settings import get_settings
    from activation.warehouse import get_engine
    from segments.snapshots import export_snapshot

    day = parse_date(as_of, "--as-of")
    settings = get_settings()
    n = export_snapshot(get_engine(settings, create=False), day, scheme, out)
    console.out.print(f"wrote {n:,} customers to {out}", highlight=False)


def migration_command(
    from_as_of: str = typer.Option(..., "--from", help="Earlier snapshot date YYYY-MM-DD."),
    to_as_of: str = typer.Option(..., "--to", help="Later snapshot date YYYY-MM-DD."),
    scheme: str = typer.Option(..., "--scheme", help="Scheme name."),
    out: Path | None = typer.Option(None, "--out", help="Also write the matrix as CSV."),
    as_json: bool = console.JSON_OPTION,
) -> None:
    """Customers moving between segments from one snapshot to another (incl. new and gone)."""
    from activation.files import atomic_write, output_file, safe_frame
    from activation.settings import get_settings
    from activation.warehouse import get_engine
    from segments.snapshots import migration_matrix

    start, end = parse_date(from_as_of, "--from"), parse_date(to_as_of, "--to")
    settings = get_settings()
    if out is not None:
        out = output_file(out, example="migration.csv")
    matrix = migration_matrix(get_engine(settings, create=False), start, end, scheme, settings)
    if out is not None:
        atomic_write(out, str(safe_frame(matrix).to_csv()))
    if as_json:
        console.print_json(
            "segments migration",
            {
                "scheme": scheme,
                "from": start,
                "to": end,
                "rows": [str(r) for r in matrix.index],
                "columns": [str(c) for c in matrix.columns],
                "counts": {str(r): {str(c): int(v) for c, v in row.items()} for r, row in matrix.iterrows()},
                "csv": out,
            },
        )
        return
    table = Table(title=f"{scheme}: {start} (rows) -> {end} (columns)", show_header=True)
    cells = [[str(seg), *(f"{v:,}" for v in row.tolist())] for seg, row in matrix.iterrows()]
    add_columns(table, ["from \\ to", *(str(col) for col in matrix.columns)], cells)
    for line in cells:
        table.add_row(*line)
    console.print_table(table)
    if out is not None:
        console.out.print(f"wrote {out}", highlight=False)
