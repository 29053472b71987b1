"""``activation demo`` and ``activation run …``: the same flows the deployments run, started once.

Prefect is imported inside the command functions only, so ``activation --help`` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from activation import console
from activation.dates import parse_datetime
from activation.errors import ConfigError

run_app = typer.Typer(
    help="Run one flow once, now (the deployments in prefect.yaml run them on a schedule).",
    no_args_is_help=True,
)

AS_OF = typer.Option(None, "--as-of", help="YYYY-MM-DD; default: the end of the last full quarter.")
SCHEME = typer.Option(None, "--scheme", help="Segmentation scheme; default: the default_scheme setting.")
DESTINATION = typer.Option("outbox", "--destination", help="outbox | mailchimp | hubspot")
WINDOW_DAYS = typer.Option(
    None,
    "--window-days",
    help="Attribution window in days (default: ACTIVATION_ATTRIBUTION_WINDOW_DAYS, 30).",
)
SEND = typer.Option(False, "--send", help="Send the campaigns (default: drafts).")
FORCE = typer.Option(False, "--force", help="Override the sync guardrails.")
EVENTS_FROM = typer.Option(
    None,
    "--destination",
    help="Also read opens, clicks and unsubscribes from this destination (default: conversions from the "
    "warehouse only).",
)
REPORT_OUT = typer.Option(
    None,
    "--out",
    help="HTML file to write (default: <data_dir>/reports/roi-<scheme>-<as-of>.html); the CSV is written "
    "beside it with the same name.",
)


def _prepare(as_of: str | None, destination: str | None = None) -> Any:
    """Validate the date, the destination and the Prefect API before any flow starts (clear errors, no half runs)."""
    from activation.settings import get_settings
    from connectors.registry import check_destination
    from flows.dates import resolve_as_of
    from flows.runtime import check_prefect_api

    settings = get_settings()
    resolved = resolve_as_of(as_of, settings)
    if destination is not None:
        check_destination(destination, settings)
    console.out.print(f"running on {check_prefect_api()}", highlight=False)
    return resolved


def _show(result: dict[str, Any]) -> None:
    console.out.print_json(json.dumps(result, default=str))


@run_app.command("quarterly")
def run_quarterly(
    as_of: str | None = AS_OF,
    scheme: str | None = SCHEME,
    destination: str = DESTINATION,
    send: bool = SEND,
    force: bool = FORCE,
    report: bool = typer.Option(
        True, "--report/--no-report", help="Also collect outcomes and write the ROI report."
    ),
) -> None:
    """resegment → activate → collect outcomes → ROI report."""
    resolved = _prepare(as_of, destination)
    from flows.quarterly_cycle import quarterly_cycle

    _show(
        quarterly_cycle(
            as_of=resolved, scheme=scheme, destination=destination, send=send, force=force, report=report
        )
    )


@run_app.command("resegment")
def run_resegment(as_of: str | None = AS_OF, scheme: str | None = SCHEME) -> None:
    """Compute and store the RFM snapshot; publish the segment summary and migration matrix."""
    resolved = _prepare(as_of)
    from flows.resegment import resegment

    _show(resegment(as_of=resolved, scheme=scheme))


@run_app.command("activate")
def run_activate(
    as_of: str | None = AS_OF,
    scheme: str | None = SCHEME,
    destination: str = DESTINATION,
    send: bool = SEND,
    schedule_at: str | None = typer.Option(
        None, "--schedule-at", help="Schedule the send: an ISO date-time, UTC unless it has an offset."
    ),
    force: bool = FORCE,
) -> None:
    """Plan campaigns, check the sync plan, sync the audiences, create/send the campaigns."""
    when = parse_datetime(schedule_at, "--schedule-at")
    resolved = _prepare(as_of, destination)
    from flows.activate import activate

    _show(
        activate(
            as_of=resolved,
            scheme=scheme,
            destination=destination,
            send=send,
            schedule_at=when,
            force=force,
        )
    )


@run_app.command("collect-outcomes")
def run_collect_outcomes(
    as_of: str | None = AS_OF,
    scheme: str | None = SCHEME,
    window_days: int | None = WINDOW_DAYS,
    destination: str | None = EVENTS_FROM,
) -> None:
    """Record opens, clicks, unsubscribes and conversions of the campaigns planned as of --as-of."""
    resolved = _prepare(as_of, destination)
    from flows.collect_outcomes import collect_outcomes

    _show(collect_outcomes(as_of=resolved, scheme=scheme, window_days=window_days, destination=destination))


@run_app.command("roi-report")
def run_roi_report(
    as_of: str | None = AS_OF,
    scheme: str | None = SCHEME,
    window_days: int | None = WINDOW_DAYS,
    out: str | None = REPORT_OUT,
) -> None:
    """Write the segment ROI report (HTML + CSV)."""
    resolved = _prepare(as_of)
    from flows.roi_report import roi_report

    _show(roi_report(as_of=resolved, scheme=scheme, window_days=window_days, out=out))


def demo(
    customers: int | None = typer.Option(None, "--customers", help="Demo customers (default: 20000)."),
    orders: int | None = typer.Option(None, "--orders", help="Demo orders (default: 160000)."),
    seed: int = typer.Option(7, "--seed", help="Random seed of the demo data (fixed: reruns are identical)."),
    scheme: str | None = SCHEME,
    plant: bool = typer.Option(
        True,
        "--plant/--no-plant",
        help="Plant a known conversion lift for the treated (At Risk +15 pp, Hibernating +12 pp, Champions "
        "+0 pp) in the orders after the as_of, so the report shows what it recovers (docs/roi.md).",
    ),
) -> None:
    """Run the whole quarterly cycle on demo data: embedded warehouse, local outbox, ROI backtest."""
    from activation.settings import get_settings
    from flows.demo import print_demo, run_demo
    from segments.demo_data import DEFAULT_PLANTED

    print_demo(
        console.out,
        run_demo(
            get_settings(),
            customers=customers,
            orders=orders,
            seed=seed,
            scheme=scheme,
            plant=DEFAULT_PLANTED if plant else None,
        ),
    )


def serve(
    scheme: str | None = SCHEME,
    destination: str = DESTINATION,
) -> None:
    """Run the schedules of prefect.yaml from this process and folder, without a work pool (small installs)."""
    from activation.settings import get_settings
    from connectors.registry import check_destination
    from flows.runtime import check_prefect_api, prefect_api_url

    settings = get_settings()
    check_destination(destination, settings)
    if prefect_api_url() is None:
        raise ConfigError(
            "activation serve needs a Prefect server that outlives it (PREFECT_API_URL is not set)",
            fix="start one with `prefect server start` and export PREFECT_API_URL=http://127.0.0.1:4200/api",
        )
    console.out.print(f"serving the scheduled flows on {check_prefect_api()}; Ctrl-C stops", highlight=False)
    from flows.serve import serve as serve_flows

    serve_flows(settings, scheme or settings.default_scheme, destination)


def demo_data_command(
    out: Path = typer.Option(..., "--out", help="Folder to write the files to (created)."),
    customers: int = typer.Option(5_000, "--customers", min=1, help="Number of customers."),
    orders: int = typer.Option(
        40_000, "--orders", min=1, help="Number of order rows (at least --customers)."
    ),
    seed: int = typer.Option(7, "--seed", help="Random seed; the same seed writes byte-identical files."),
    plant: str | None = typer.Option(
        None,
        "--plant",
        help='Plant a known conversion lift for the members the campaigns will treat, e.g. "At Risk=+0.10,'
        'Hibernating=+0.08" (absolute, 0 <= lift < 1; "default" for the demo\'s); written to '
        "planted_orders.parquet (docs/roi.md).",
    ),
    plant_as_of: str | None = typer.Option(
        None, "--plant-as-of", help="The send date the planted lift follows (default: the demo's as_of)."
    ),
    scheme: str | None = SCHEME,
) -> None:
    """Write a deterministic synthetic data set (orders, customers, support tickets) and its mappings."""
    from activation.dates import parse_date
    from activation.settings import get_settings
    from segments.demo_data import DEFAULT_PLANTED, generate, parse_plant

    uplift = None if plant is None else DEFAULT_PLANTED if plant.strip() == "default" else parse_plant(plant)
    as_of = parse_date(plant_as_of or None, "--plant-as-of")
    if as_of is not None and uplift is None:
        raise ConfigError(
            "--plant-as-of needs --plant", fix='add --plant "At Risk=+0.10" (or drop --plant-as-of)'
        )
    settings = get_settings()
    if uplift is not None:
        from flows.demo import check_plant, plant_demo_files

        check_plant(settings, scheme, uplift)
    files = generate(out, customers=customers, orders=orders, seed=seed)
    rows = files.describe()
    effects: list[Any] = []
    if uplift is not None:
        as_of, effects = plant_demo_files(settings, files, uplift, as_of=as_of, scheme=scheme, seed=seed)
        total = sum(e.orders for e in effects)
        rows.append((files.planted, f"{total:,} planted orders after {as_of} (source: demo planted uplift)"))
    _print_demo_files(out, rows, files, effects)


def _print_demo_files(out: Path, rows: list[tuple[Path, str]], files: Any, effects: list[Any]) -> None:
    from rich.table import Table

    table = Table(title=f"demo data in {out}", show_header=True)
    table.add_column("file")
    table.add_column("what")
    for path, what in rows:
        table.add_row(str(path), what)
    console.out.print(table)
    for e in effects:
        console.out.print(
            f"planted {e.segment}: {e.uplift * 100:+.1f} pp conversion for {e.treated:,} treated "
            f"({e.orders:,} orders, mean {e.mean_amount:.2f}; {e.redeemed:,} redeem the coupon, "
            f"discount {e.discount:.2f})",
            highlight=False,
            soft_wrap=True,
        )
    console.out.print(
        f"load it with: activation ingest {files.orders} --format parquet --mapping {files.mapping}",
        soft_wrap=True,
    )
    if effects:
        console.out.print(
            f"planted orders: activation ingest {files.planted} --format parquet --mapping "
            f"{files.planted_mapping}",
            soft_wrap=True,
        )
    console.out.print(
        f"support tickets: activation ingest {files.tickets} --format csv --mapping {files.tickets_mapping}",
        soft_wrap=True,
    )


def register(app: typer.Typer) -> None:
    """Add this package's commands to ``app``."""
    app.command("demo-data")(demo_data_command)
    app.command("demo")(demo)
    app.command("serve")(serve)
    app.add_typer(run_app, name="run")
