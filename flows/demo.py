"""``activation demo``: the whole quarterly cycle on demo data, with nothing to configure or start.

1. generate the demo data set (fixed seed, small) into ``<data_dir>/demo/``;
2. ingest it into the warehouse (the embedded DuckDB file by default; re-ingesting adds nothing);
3. run ``quarterly_cycle`` at a past ``as_of`` — a quarter end about six months before the last demo
   order — with the local outbox, so the orders that really followed are the outcomes (a backtest);
4. print where everything is.

Every step is idempotent, so running the demo twice leaves the same warehouse, outbox and report.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from activation.settings import Settings
from activation.warehouse import get_engine, redact
from flows.dates import last_quarter_end, resolve_as_of

BACKTEST_GAP_DAYS = 150
"""``as_of`` is the last quarter end at least this long before the last demo order."""


@dataclass
class DemoResult:
    warehouse: str
    data_dir: Path
    outbox_dir: Path
    report_html: Path | None
    report_csv: Path | None
    preview: Path | None
    as_of: date
    scheme: str
    api: str
    cycle: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)


def backtest_as_of(last_order: date) -> date:
    """A quarter end ~6 months before the last order, so the attribution window has real orders."""
    return last_quarter_end(last_order - timedelta(days=BACKTEST_GAP_DAYS))


def prepare_demo_data(
    settings: Settings, *, customers: int | None, orders_n: int | None, seed: int
) -> tuple[Path, date]:
    """Generate and ingest the demo data set; return its folder and the date of its last order."""
    from segments.demo_data import DEFAULT_CUSTOMERS, DEFAULT_ORDERS, generate
    from segments.ingest import ingest_file

    files = generate(
        settings.data_dir / "demo",
        customers=customers if customers is not None else DEFAULT_CUSTOMERS,
        orders=orders_n if orders_n is not None else DEFAULT_ORDERS,
        seed=seed,
    )
    engine = get_engine(settings)
    ingest_file(engine, settings, files.orders, "parquet", mapping_path=files.mapping)
    ingest_file(engine, settings, files.tickets, "csv", mapping_path=files.tickets_mapping)
    return files.out_dir, files.last_date


def start_prefect_api() -> tuple[str, float]:
    """Make sure the Prefect API is up (starting the temporary one if needed); return its name and seconds."""
    from prefect.client.orchestration import get_client

    from activation.errors import ConfigError
    from flows.runtime import check_prefect_api

    started = time.perf_counter()
    described = check_prefect_api()
    try:
        with get_client(sync_client=True) as client:
            problem = client.api_healthcheck()
    except RuntimeError as exc:  # the temporary server did not come up
        problem = exc
    if problem is not None:
        reason = str(problem).strip().splitlines()[0][:300]
        raise ConfigError(
            f"the temporary Prefect API did not start: {reason}",
            fix="rerun (the first start creates Prefect's database), or start `prefect server start` and set "
            "PREFECT_API_URL=http://127.0.0.1:4200/api",
        )
    return described, time.perf_counter() - started


def run_demo(
    settings: Settings,
    *,
    customers: int | None = None,
    orders: int | None = None,
    seed: int = 7,
    scheme: str | None = None,
) -> DemoResult:
    """Run the demo end to end (see the module docstring) and say where everything is."""
    from flows.runtime import local_run

    with local_run():
        return _run_demo(settings, customers=customers, orders=orders, seed=seed, scheme=scheme)


def _run_demo(
    settings: Settings, *, customers: int | None, orders: int | None, seed: int, scheme: str | None
) -> DemoResult:
    timings: dict[str, float] = {}
    scheme = scheme or settings.default_scheme
    api, timings["prefect_startup"] = start_prefect_api()

    started = time.perf_counter()
    data_dir, last_order = prepare_demo_data(settings, customers=customers, orders_n=orders, seed=seed)
    timings["demo_data"] = time.perf_counter() - started

    as_of = resolve_as_of(backtest_as_of(last_order), settings)
    from flows.quarterly_cycle import quarterly_cycle

    started = time.perf_counter()
    cycle = quarterly_cycle(as_of=as_of, scheme=scheme, destination="outbox", send=True, report=True)
    timings["cycle"] = time.perf_counter() - started

    report = cycle.get("roi", {}).get("report", {})
    started = time.perf_counter()
    preview = _write_preview(settings, as_of, scheme)
    timings["preview"] = time.perf_counter() - started
    return DemoResult(
        warehouse=redact(settings.resolved_warehouse_url),
        data_dir=data_dir,
        outbox_dir=settings.resolved_outbox_dir,
        report_html=Path(report["html"]) if report.get("html") else None,
        report_csv=Path(report["csv"]) if report.get("csv") else None,
        preview=preview,
        as_of=as_of,
        scheme=scheme,
        api=api,
        cycle=cycle,
        timings=timings,
    )


def _write_preview(settings: Settings, as_of: date, scheme: str) -> Path | None:
    """The template preview of the demo's segments (index.html), when the campaigns package offers one."""
    try:
        from campaigns.preview import write_previews
    except ImportError:
        return None
    out = settings.data_dir / "preview"
    write_previews(settings, out, engine=get_engine(settings), scheme=scheme)
    return out / "index.html"


def print_demo(console: Any, result: DemoResult) -> None:
    """Tell the user where everything is."""

    def line(label: str, value: object) -> None:
        console.print(f"  [bold]{label:<18}[/]{value}", highlight=False, soft_wrap=True)

    console.print(
        f"\n[bold green]demo done[/]: {result.scheme} backtest as of {result.as_of.isoformat()}"
        f" (ran on {result.api})",
        highlight=False,
    )
    line("warehouse", result.warehouse)
    line("demo data", result.data_dir)
    line("outbox", result.outbox_dir)
    if result.preview is not None:
        line("template preview", result.preview)
    if result.report_html is not None:
        line("ROI report", result.report_html)
    if result.report_csv is not None:
        line("ROI table (csv)", result.report_csv)
    timing = ", ".join(f"{k} {v:.1f} s" for k, v in result.timings.items())
    line("timings", timing)
    console.print(
        "\nnext: open the report in a browser; `activation run quarterly --help` for real runs.",
        highlight=False,
    )
