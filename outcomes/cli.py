"""Commands ``activation outcomes collect`` and ``activation report roi``.

Settings, the warehouse, the ledger and the report (pydantic, SQLAlchemy, pandas) are imported inside each
command, so ``activation --help`` does not load them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from activation import console
from activation.dates import parse_date

if TYPE_CHECKING:
    from activation.settings import Settings
    from connectors.base import Destination


SCHEME = typer.Option(None, "--scheme", help="Segmentation scheme; default from settings.")
WINDOW_DAYS = typer.Option(
    None,
    "--window-days",
    min=1,
    help="Attribution window in days (default: the attribution window setting, 30 days).",
)


def _destination(name: str | None, settings: Settings) -> Destination | None:
    if not name:
        return None
    from connectors.registry import get_destination

    return get_destination(name, settings)


outcomes_app = typer.Typer(
    help="Record what happened to campaign members (events, conversions).", no_args_is_help=True
)
report_app = typer.Typer(help="Write reports: the segment ROI report (HTML + CSV).", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add ``outcomes collect`` and ``report roi`` to ``app``."""
    app.add_typer(outcomes_app, name="outcomes")
    app.add_typer(report_app, name="report")


@outcomes_app.command("collect")
def collect(
    as_of: str | None = typer.Option(
        None, "--as-of", help="Campaigns' as_of (YYYY-MM-DD); default: the latest."
    ),
    scheme: str | None = SCHEME,
    window_days: int | None = WINDOW_DAYS,
    destination: str | None = typer.Option(
        None,
        "--destination",
        help="Also read email events (opens, clicks, unsubscribes) from this destination.",
    ),
    as_json: bool = console.JSON_OPTION,
) -> None:
    """Record conversions from warehouse orders (and email events from a destination) in the outcome ledger."""
    from activation.settings import get_settings
    from activation.warehouse import get_engine
    from outcomes.ledger import collect_outcomes

    day = parse_date(as_of, "--as-of")
    settings = get_settings()
    engine = get_engine(settings, create=False)
    result = collect_outcomes(
        engine,
        settings,
        day,
        scheme or settings.default_scheme,
        window_days,
        destination=_destination(destination, settings),
    )
    for w in result.warnings:
        console.warn(w)
    if as_json:
        console.print_json("outcomes collect", dataclasses.asdict(result))
    else:
        console.out.print(result.summary(), highlight=False, soft_wrap=True)


@report_app.command("roi")
def roi(
    as_of: str = typer.Option(..., "--as-of", help="Campaigns' as_of (YYYY-MM-DD)."),
    scheme: str | None = SCHEME,
    window_days: int | None = WINDOW_DAYS,
    out: Path = typer.Option(Path("report.html"), "--out", help="HTML file; the CSV is written next to it."),
    as_json: bool = console.JSON_OPTION,
) -> None:
    """Write the segment ROI report: HTML with charts and a CSV with one row per segment."""
    from activation.settings import get_settings
    from activation.warehouse import get_engine
    from outcomes.report import write_roi_report

    day = parse_date(as_of, "--as-of")
    settings = get_settings()
    engine = get_engine(settings, create=False)
    paths = write_roi_report(engine, settings, day, scheme or settings.default_scheme, out, window_days)
    for w in paths.warnings:
        console.warn(w)
    if as_json:
        console.print_json(
            "report roi",
            {
                "as_of": day,
                "scheme": scheme or settings.default_scheme,
                "html": paths.html,
                "csv": paths.csv,
                "segments": list(paths.rows),
                "warnings": paths.warnings,
            },
        )
    else:
        console.out.print(f"wrote {paths.html} and {paths.csv}", highlight=False, soft_wrap=True)
