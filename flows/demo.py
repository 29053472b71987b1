"""``activation demo``: the whole quarterly cycle on demo data, with nothing to configure or start.

0. check the templates and the offer policy (``./templates``, ``ACTIVATION_TEMPLATES_DIR`` or the packaged
   defaults) and start the Prefect API, before anything is written;
1. generate the demo data set (fixed seed, small) into ``<data_dir>/demo/``;
2. ingest it into the warehouse (the embedded DuckDB file by default; re-ingesting adds nothing);
3. run ``quarterly_cycle`` at a past ``as_of`` — a quarter end about six months before the last demo
   order — with the local outbox, so the orders that really followed are the outcomes (a backtest);
4. checkpoint the DuckDB warehouse (one file, no write-ahead log left beside it) and print where everything is.

Every step is idempotent, so running the demo twice leaves the same warehouse, outbox and report, and a demo
stopped half-way (an error, Ctrl-C) says what it wrote so far: rerunning it finishes the job.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from activation import interrupt
from activation.defaults import describe_templates_dir
from activation.errors import ActivationError, ConfigError
from activation.settings import Settings
from activation.split import campaign_key
from activation.warehouse import duckdb_file, ensure_schema, get_engine, make_engine, redact
from campaigns.coupons import coupon_codes
from campaigns.lint import check_templates
from campaigns.policy import load_policy, scheme_segments
from campaigns.preview import write_previews
from connectors.registry import check_destination
from flows.dates import resolve_as_of
from flows.runtime import check_prefect_api, local_run
from segments.demo_data import (
    DEFAULT_PLANTED,
    DemoDataFiles,
    PlantCoupon,
    PlantedEffect,
    PlantTarget,
    generate,
    plant_uplift,
    write_planted_orders,
)
from segments.ingest import ingest_file
from segments.schemes import list_schemes
from segments.snapshots import compute_snapshot, last_quarter_end

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
    templates: str
    cycle: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    planted: list[PlantedEffect] = field(default_factory=list)


def backtest_as_of(last_order: date) -> date:
    """A quarter end ~6 months before the last order, so the attribution window has real orders."""
    return last_quarter_end(last_order - timedelta(days=BACKTEST_GAP_DAYS))


#: the demo's shop: big enough that the planted win-back lifts are detectable with the policy's holdouts
DEMO_CUSTOMERS = 20_000
DEMO_ORDERS = 160_000


def prepare_demo_data(
    settings: Settings, *, customers: int | None, orders_n: int | None, seed: int
) -> tuple[Path, date]:
    """Generate and ingest the demo data set; return its folder and the date of its last order."""
    files = generate(
        settings.data_dir / "demo",
        customers=customers if customers is not None else DEMO_CUSTOMERS,
        orders=orders_n if orders_n is not None else DEMO_ORDERS,
        seed=seed,
    )
    engine = get_engine(settings)
    ingest_file(engine, settings, files.orders, "parquet", mapping_path=files.mapping)
    ingest_file(engine, settings, files.tickets, "csv", mapping_path=files.tickets_mapping)
    return files.out_dir, files.last_date


def plant_targets(
    settings: Settings, as_of: date, scheme: str, uplift: Mapping[str, float]
) -> dict[str, PlantTarget]:
    """What to plant per segment, from the offer policy: the campaign's fixed holdout share (a segment with
    a power-sized holdout is left without an effect: its share is only known at plan time) and, for a coupon
    offer, the member's personal code (``campaigns.coupons``, the plan's derivation) and the offer's cost."""
    policy = load_policy(settings)
    secret = settings.coupon_key()
    out: dict[str, PlantTarget] = {}
    for segment, lift in uplift.items():
        resolved = policy.for_segment(scheme, segment)
        if resolved.holdout_target is not None:
            continue
        offer = resolved.offer
        coupon = None
        if offer.has_coupon:
            key, prefix = campaign_key(scheme, as_of, segment), offer.coupon_prefix or ""

            def codes(ids: list[str], key: str = key, prefix: str = prefix) -> dict[str, str]:
                return dict(zip(ids, coupon_codes(secret, key, ids, prefix), strict=True))

            coupon = PlantCoupon(codes, offer.discount_for)
        out[segment] = PlantTarget(float(lift), resolved.holdout_share, coupon, resolved.global_control_share)
    return out


def check_plant(settings: Settings, scheme: str | None, uplift: Mapping[str, float]) -> None:
    """Before anything is written: every segment named in ``uplift`` is one of the scheme's.

    Raises:
        ConfigError: a segment the scheme does not define (the option, the names it has).
    """
    scheme = scheme or settings.default_scheme
    names = scheme_segments(scheme, settings)
    if names is None:
        raise ConfigError(
            f"--scheme {scheme}: no such scheme", fix="use one of " + ", ".join(list_schemes(settings))
        )
    unknown = [s for s in uplift if s not in names]
    if unknown:
        raise ConfigError(
            f"--plant names {', '.join(unknown)}, not a segment of {scheme}",
            fix=f"use the segment names of {scheme}: {', '.join(names)}",
        )


def plant_effects(
    settings: Settings, as_of: date, scheme: str, uplift: Mapping[str, float], seed: int
) -> list[PlantedEffect]:
    """Segment the quarter before ``as_of`` and ``as_of`` itself (so the report has a migration matrix), then
    plant ``uplift`` into the orders after ``as_of`` for the members the campaigns will treat
    (:func:`plant_targets`; an empty ``uplift`` removes earlier planted orders), then segment the quarter
    after (the migration lift)."""
    engine = get_engine(settings)
    compute_snapshot(engine, settings, last_quarter_end(as_of - timedelta(days=1)), scheme)
    compute_snapshot(engine, settings, as_of, scheme)
    targets = plant_targets(settings, as_of, scheme, uplift)
    planted = plant_uplift(engine, settings, as_of, scheme, targets, seed=seed)
    # the next quarter too, after the planted orders: the report's migration lift compares the groups there
    compute_snapshot(engine, settings, last_quarter_end(as_of + timedelta(days=95)), scheme)
    return planted


def plant_demo_files(
    settings: Settings,
    files: DemoDataFiles,
    uplift: Mapping[str, float],
    *,
    as_of: date | None = None,
    scheme: str | None = None,
    seed: int = 7,
) -> tuple[date, list[PlantedEffect]]:
    """Plant ``uplift`` into a generated data set (``activation demo-data --plant``): a scratch DuckDB
    warehouse (deleted after) ingests the orders and segments ``as_of`` (default: the demo's backtest
    as_of) with ``settings``' scheme definitions; the planted orders go to ``planted_orders.parquet`` beside
    the orders (mapping ``planted_mapping.yaml``, source ``demo planted uplift``), for the members the
    campaigns of ``settings``' policy will treat. Returns the as_of and what was planted.

    Raises:
        ConfigError: a segment the snapshot does not have, or a lift outside [0, 1).
    """
    scheme = scheme or settings.default_scheme
    as_of = as_of or backtest_as_of(files.last_date)
    with tempfile.TemporaryDirectory(prefix="activation-plant-") as tmp:
        engine = make_engine(f"duckdb:///{Path(tmp) / 'scratch.duckdb'}")
        try:
            ensure_schema(engine)
            ingest_file(engine, settings, files.orders, "parquet", mapping_path=files.mapping)
            compute_snapshot(engine, settings, as_of, scheme)
            targets = plant_targets(settings, as_of, scheme, uplift)
            effects = plant_uplift(engine, settings, as_of, scheme, targets, seed=seed)
            write_planted_orders(engine, files)
        finally:
            engine.dispose()
    return as_of, effects


def start_prefect_api() -> tuple[str, float]:
    """Make sure the Prefect API is up (starting the temporary one if needed); return its name and seconds."""
    from prefect.client.orchestration import get_client  # Prefect: once the templates passed (see run_demo)

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


def check_templates_first(settings: Settings, scheme: str) -> None:
    """The templates and the policy the demo will use, linted before anything is written.

    Raises:
        ConfigError: a problem in the policy or a template (every ``file:line`` of them).
    """
    issues = check_templates(settings, scheme=scheme)
    if issues:
        raise ConfigError(
            f"the demo's templates ({describe_templates_dir(settings.templates_dir)}) have "
            f"{len(issues)} problem(s); nothing was written:\n" + "\n".join(f"  {i}" for i in issues),
            fix="correct them (`activation templates check` lists them), or run the demo from a folder without "
            "./templates and with ACTIVATION_TEMPLATES_DIR unset to use the packaged defaults",
        )


class DemoProgress:
    """What the demo has written so far, for the message of a demo stopped half-way."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.step = "checking the templates"
        self.wrote: list[str] = []

    def remains(self) -> str:
        if not self.wrote:
            return "nothing was written"
        return (
            f"the demo stopped while {self.step}; written so far: {'; '.join(self.wrote)}. Every step is "
            f"idempotent: rerun `activation demo` to finish, or delete {self.settings.data_dir} to start over"
        )


def run_demo(
    settings: Settings,
    *,
    customers: int | None = None,
    orders: int | None = None,
    seed: int = 7,
    scheme: str | None = None,
    plant: Mapping[str, float] | None = DEFAULT_PLANTED,
) -> DemoResult:
    """Run the demo end to end (see the module docstring) and say where everything is.

    Prefect (seconds to import) is imported only after the templates and the policy passed their check, so
    a mistake there is reported at once."""
    progress = DemoProgress(settings)
    interrupt.on_interrupt(lambda: f"interrupted; {progress.remains()}")
    try:
        with local_run():
            return _run_demo(
                settings, progress, customers=customers, orders=orders, seed=seed, scheme=scheme, plant=plant
            )
    except ActivationError as exc:
        if progress.wrote:
            exc.fix = f"{exc.fix}; {progress.remains()}" if exc.fix else progress.remains()
        raise


def _run_demo(
    settings: Settings,
    progress: DemoProgress,
    *,
    customers: int | None,
    orders: int | None,
    seed: int,
    scheme: str | None,
    plant: Mapping[str, float] | None,
) -> DemoResult:
    timings: dict[str, float] = {}
    scheme = scheme or settings.default_scheme
    check_templates_first(settings, scheme)
    check_destination("outbox", settings)
    progress.step = "starting the Prefect API"
    api, timings["prefect_startup"] = start_prefect_api()

    started = time.perf_counter()
    progress.step = "writing the demo data"
    progress.wrote.append(f"demo data in {settings.data_dir / 'demo'}")
    progress.wrote.append(f"the warehouse {redact(settings.resolved_warehouse_url)}")
    data_dir, last_order = prepare_demo_data(settings, customers=customers, orders_n=orders, seed=seed)
    timings["demo_data"] = time.perf_counter() - started

    as_of = resolve_as_of(backtest_as_of(last_order), settings)
    started = time.perf_counter()
    progress.step = "segmenting the quarters around the as_of and planting the known effect"
    planted = plant_effects(settings, as_of, scheme, dict(plant or {}), seed)
    timings["plant"] = time.perf_counter() - started
    from flows.quarterly_cycle import quarterly_cycle  # Prefect: see run_demo

    started = time.perf_counter()
    progress.step = "running the quarterly cycle (snapshot, campaigns, outbox, outcomes, report)"
    progress.wrote.append(f"the outbox {settings.resolved_outbox_dir}")
    cycle = quarterly_cycle(as_of=as_of, scheme=scheme, destination="outbox", send=True, report=True)
    timings["cycle"] = time.perf_counter() - started

    report = cycle.get("roi", {}).get("report", {})
    started = time.perf_counter()
    progress.step = "writing the template preview"
    preview = _write_preview(settings, as_of, scheme)
    timings["preview"] = time.perf_counter() - started
    checkpoint_duckdb(settings)
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
        templates=describe_templates_dir(settings.templates_dir),
        cycle=cycle,
        timings=timings,
        planted=planted,
    )


def checkpoint_duckdb(settings: Settings) -> None:
    """Fold DuckDB's write-ahead log into the warehouse file, so the demo leaves one file behind."""
    if duckdb_file(settings.resolved_state_url) is None:
        return
    with get_engine(settings).connect() as conn:
        conn.exec_driver_sql("CHECKPOINT")


def _write_preview(settings: Settings, as_of: date, scheme: str) -> Path:
    """The template preview of the demo's segments (index.html)."""
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
    line("templates", result.templates)
    line("warehouse", result.warehouse)
    line("demo data", result.data_dir)
    line("outbox", result.outbox_dir)
    if result.preview is not None:
        line("template preview", result.preview)
    if result.report_html is not None:
        line("ROI report", result.report_html)
    if result.report_csv is not None:
        line("ROI table (csv)", result.report_csv)
    if result.planted:
        line(
            "planted effect",
            ", ".join(f"{p.segment} {p.uplift * 100:+.0f} pp" for p in result.planted)
            + " conversion for the treated (the report should find them)",
        )
    timing = ", ".join(f"{k} {v:.1f} s" for k, v in result.timings.items())
    line("timings", timing)
    console.print(
        "\nnext: open the report in a browser; `activation run quarterly --help` for real runs.",
        highlight=False,
    )
