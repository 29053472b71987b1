"""A Spark warehouse, for real: a local Spark Connect server (tests/spark_harness.py) holds the orders, the
snapshot is computed there and stored in a DuckDB or PostgreSQL state store, and it must equal, row for row,
the snapshot DuckDB computes from the same orders (every shipped rule-based scheme, tied data, a lookback
window and none). Also the errors: no state store, a state URL that cannot hold state, nothing answering at
the sc:// URL, a failing statement (nothing written)."""

from __future__ import annotations

import json
import math
import uuid
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine

from activation.errors import ConfigError, WarehouseError
from activation.settings import OrdersSource, Settings
from activation.tables import rfm_snapshots, snapshot_runs
from activation.warehouse import dispose_engines, get_engine, spark_warehouse
from segments.demo_data import generate
from segments.ingest import ingest_file
from segments.schemes import list_schemes, load_scheme
from segments.snapshots import SPARK_CHECKS_SKIPPED, compute_snapshot
from tests.cli_helpers import run_cli
from tests.conftest import drop_postgres_database, new_postgres_database
from tests.rfm_fixtures import add_orders, at, grid_orders
from tests.spark_harness import load_table, spark_url  # noqa: F401  (the session's server)

AS_OF = date(2024, 6, 30)
RULE_SCHEMES = [n for n in list_schemes() if load_scheme(n).is_rules]
SCORED = ("customer_id", "recency_days", "frequency", "r_score", "f_score", "m_score", "segment")


def _duck_arrow(engine: Engine, name: str) -> Any:
    with engine.connect() as conn:
        raw: Any = conn.connection.driver_connection
        return raw.sql(f"SELECT * FROM {name}").to_arrow_table()


def _demo_orders(settings: Settings, tmp_path: Path) -> None:
    files = generate(tmp_path / "demo", customers=1_500, orders=9_000, seed=11, end=AS_OF)
    engine = get_engine(settings)
    ingest_file(engine, settings, files.orders, "parquet", mapping_path=files.mapping)
    ingest_file(engine, settings, files.tickets, "csv", mapping_path=files.tickets_mapping)


def _tied_orders(settings: Settings, tmp_path: Path) -> None:
    """The 5x5 grid plus 60 customers with identical orders: every cut-point lands on a tie."""
    rows = grid_orders(AS_OF)
    for i in range(60):
        rows += [(f"t{i:02d}", at(AS_OF - timedelta(days=3 * (i % 4))), 25.0)] * (1 + i % 3)
    rows += [(f"old{i}", at(AS_OF - timedelta(days=400 + i)), 5.0 * i) for i in range(10)]
    add_orders(get_engine(settings), rows)


def _spark_settings(duck: Settings, url: str, state_url: str, table: str) -> Settings:
    return Settings(
        data_dir=duck.data_dir,
        warehouse_url=url,
        state_url=state_url,
        orders=OrdersSource(table=table),
    )


def _snapshot(engine: Engine, scheme: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    s = rfm_snapshots.c
    with engine.connect() as conn:
        rows = conn.execute(
            select(rfm_snapshots).where((s.as_of == AS_OF) & (s.scheme == scheme)).order_by(s.customer_id)
        )
        found = [dict(r) for r in rows.mappings()]
        cuts = conn.execute(
            select(snapshot_runs.c.cutpoints).where(
                (snapshot_runs.c.as_of == AS_OF) & (snapshot_runs.c.scheme == scheme)
            )
        ).scalar_one()
    return found, json.loads(cuts)


def _assert_same(duck: Engine, state: Engine, scheme: str) -> None:
    want, want_cuts = _snapshot(duck, scheme)
    got, got_cuts = _snapshot(state, scheme)
    assert len(got) == len(want) > 0, scheme
    for w, g in zip(want, got, strict=True):
        assert {k: g[k] for k in SCORED} == {k: w[k] for k in SCORED}, scheme
        assert math.isclose(g["monetary"], w["monetary"], rel_tol=1e-9, abs_tol=1e-9), (scheme, w, g)
    assert got_cuts.keys() == want_cuts.keys()
    for m, record in want_cuts.items():
        other = got_cuts[m]
        assert other["empty_scores"] == record["empty_scores"], (scheme, m)
        if m == "m":  # sums of cents in another order: equal to the last bits
            assert other["thresholds"] == pytest.approx(record["thresholds"], rel=1e-9), scheme
        else:
            assert other["thresholds"] == record["thresholds"], (scheme, m)


def _copy_to_spark(url: str, duck: Settings, *, events: bool) -> str:
    """The DuckDB warehouse's orders (and contact events) as Spark tables; returns the orders table's name."""
    engine = get_engine(duck)
    table = f"orders_{uuid.uuid4().hex[:8]}"
    load_table(url, table, _duck_arrow(engine, "orders"))
    if events:
        load_table(url, "contact_events", _duck_arrow(engine, "contact_events"))
    return table


@pytest.mark.spark
@pytest.mark.parametrize(
    ("data", "lookback"), [("demo", 365), ("demo", None), ("ties", 365)], ids=["demo-365d", "demo-all", "ties"]
)
def test_spark_snapshot_equals_duckdb(
    spark_url: str,  # noqa: F811
    duck_settings: Settings,
    tmp_path: Path,
    data: str,
    lookback: int | None,
) -> None:
    (_demo_orders if data == "demo" else _tied_orders)(duck_settings, tmp_path)
    table = _copy_to_spark(spark_url, duck_settings, events=data == "demo")
    spark = _spark_settings(duck_settings, spark_url, f"duckdb:///{tmp_path / 'state.duckdb'}", table)
    schemes = [s for s in RULE_SCHEMES if data == "demo" or load_scheme(s).source == "orders"]
    for scheme in schemes:
        compute_snapshot(get_engine(duck_settings), duck_settings, AS_OF, scheme, lookback, run_checks=False)
        result = compute_snapshot(get_engine(spark), spark, AS_OF, scheme, lookback)
        assert result.warnings[0] == SPARK_CHECKS_SKIPPED
        _assert_same(get_engine(duck_settings), get_engine(spark), scheme)
