"""A Spark warehouse, for real: a local Spark Connect server (tests/spark_harness.py) holds the orders, the
snapshot is computed there and stored in a DuckDB or PostgreSQL state store, and it must equal, row for row,
the snapshot DuckDB computes from the same orders (every shipped rule-based scheme, tied data, a lookback
window and none). Also the errors: no state store, a state URL that cannot hold state, nothing answering at
the sc:// URL, a failing statement (nothing written)."""

from __future__ import annotations

import json
import math
import re
import uuid
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import column as sa_column
from sqlalchemy import select
from sqlalchemy import table as sa_table
from sqlalchemy.engine import Engine

from activation.errors import ConfigError, DataCheckError, WarehouseError
from activation.settings import OrdersSource, Settings
from activation.tables import rfm_snapshots, snapshot_runs
from activation.warehouse import dispose_engines, get_engine, spark_warehouse
from segments import rfm
from segments.checks import run_checks
from segments.demo_data import generate
from segments.ingest import ingest_file
from segments.schemes import list_schemes, load_scheme
from segments.snapshots import SPARK_RELATIONSHIPS_SKIPPED, compute_snapshot
from tests.cli_helpers import run_cli
from tests.conftest import drop_postgres_database, new_postgres_database
from tests.rfm_fixtures import add_orders, at, grid_orders
from tests.spark_harness import load_table, pyspark_installed, spark_url  # noqa: F401  (fixtures)

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


def _found(report: Any) -> list[tuple[str, int, list[dict[str, Any]]]]:
    return [(r.name, r.failures, r.examples) for r in report.results]


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
    ("data", "lookback"),
    [("demo", 365), ("demo", None), ("ties", 365)],
    ids=["demo-365d", "demo-all", "ties"],
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
        source = load_scheme(scheme).source
        if source == "orders":
            assert result.warnings[0] == SPARK_RELATIONSHIPS_SKIPPED
        # the data checks ran in Spark and found what they find in DuckDB (relationships aside)
        want = run_checks(get_engine(duck_settings), duck_settings, source=source, relationships=False)
        assert result.checks is not None
        assert _found(result.checks) == _found(want) != []
        assert list(result.steps) == ["metrics", "cutpoints", "fetch", "insert"]
        _assert_same(get_engine(duck_settings), get_engine(spark), scheme)


@pytest.mark.spark
@pytest.mark.postgres
def test_spark_snapshot_into_a_postgresql_state_store(
    spark_url: str,  # noqa: F811
    duck_settings: Settings,
    tmp_path: Path,
) -> None:
    _demo_orders(duck_settings, tmp_path)
    table = _copy_to_spark(spark_url, duck_settings, events=False)
    state_url = new_postgres_database()
    try:
        spark = _spark_settings(duck_settings, spark_url, state_url, table)
        for scheme in ("rfm11", "quartile9"):
            compute_snapshot(get_engine(duck_settings), duck_settings, AS_OF, scheme, 365, run_checks=False)
            compute_snapshot(get_engine(spark), spark, AS_OF, scheme, 365)
            _assert_same(get_engine(duck_settings), get_engine(spark), scheme)
    finally:
        dispose_engines()
        drop_postgres_database(state_url)


@pytest.mark.spark
def test_the_cut_points_and_the_scoring_read_the_cached_metrics(
    spark_url: str,  # noqa: F811
    duck_settings: Settings,
) -> None:
    """Spark reuses a cached view only where the plan matches it: a ``WITH`` clause over the view did not, and
    the scoring recomputed the metrics from the orders (a second full aggregate, unseen in the results)."""
    _tied_orders(duck_settings, Path())
    table = _copy_to_spark(spark_url, duck_settings, events=False)
    spark = _spark_settings(duck_settings, spark_url, "duckdb://", table)
    scheme = load_scheme("rfm11", spark)
    warehouse = spark_warehouse(spark)
    assert warehouse is not None
    metrics = sa_table(
        "cached_metrics", *(sa_column(c) for c in rfm.METRIC_COLUMNS.values()), sa_column("customer_id")
    )
    window = rfm.Window.of(AS_OF, 365)

    def plan(statement: Any) -> str:
        return str(warehouse.one(f"EXPLAIN {warehouse.compile(statement)}")["plan"])

    with warehouse.cached("cached_metrics", rfm.metrics_select(spark, scheme, window)):
        stats = warehouse.one(rfm.cutpoints_select(metrics, scheme, "databricks"))
        cuts = {m: rfm.thresholds(m, bins, stats) for m, bins in scheme.scores.items()}
        for statement in (
            rfm.cutpoints_select(metrics, scheme, "databricks"),
            rfm.scored_select(metrics, scheme, cuts, AS_OF),
        ):
            text = plan(statement)
            assert "Scan In-memory table cached_metrics" in text, text


@pytest.mark.spark
def test_bad_orders_in_spark_stop_the_snapshot_with_what_is_wrong(
    spark_url: str,  # noqa: F811
    duck_settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The data checks read the orders in Spark: a repeated order id, an unknown status, an order in the
    future and one without a customer each block the snapshot (exit 2), and nothing is written."""
    import pyarrow as pa

    _tied_orders(duck_settings, tmp_path)
    good = _duck_arrow(get_engine(duck_settings), "orders")
    first = good.slice(0, 1).to_pylist()[0]
    later = at(date.today() + timedelta(days=30))
    bad_rows = [
        {**first, "amount": 1.0},  # the same order id again
        {**first, "order_id": "bad-status", "status": "Pending Review"},
        {**first, "order_id": "bad-future", "ordered_at": later},
        {**first, "order_id": "bad-customer", "customer_id": None},
    ]
    table = f"orders_{uuid.uuid4().hex[:8]}"
    load_table(spark_url, table, pa.concat_tables([good, pa.Table.from_pylist(bad_rows, schema=good.schema)]))
    state = tmp_path / "state.duckdb"
    spark = _spark_settings(duck_settings, spark_url, f"duckdb:///{state}", table)
    with pytest.raises(DataCheckError) as err:
        compute_snapshot(get_engine(spark), spark, AS_OF, "rfm11", 365)
    failed = {r.name: r.failures for r in err.value.failures}
    assert failed == {
        "not_null(customer_id)": 1,
        "not_future(ordered_at)": 1,
        "accepted_values(status)": 1,
        "unique(order_id)": 1,
    }, failed
    assert "Pending Review" in str(err.value) and "nothing was written" in err.value.fix
    with get_engine(spark).connect() as conn:
        assert conn.execute(select(rfm_snapshots.c.customer_id)).first() is None
        assert conn.execute(select(snapshot_runs.c.as_of)).first() is None
    for key, value in {
        "ACTIVATION_DATA_DIR": str(tmp_path / "cli"),
        "ACTIVATION_WAREHOUSE_URL": spark_url,
        "ACTIVATION_STATE_URL": f"duckdb:///{state}",
        "ACTIVATION_ORDERS__TABLE": table,
    }.items():
        monkeypatch.setenv(key, value)
    result = run_cli("segment", "--as-of", str(AS_OF), "--lookback-days", "365")
    assert result.exit_code == 2, result.output
    assert "unique(order_id)" in result.output and "Traceback" not in result.output


@pytest.mark.spark
def test_a_failing_statement_on_spark_writes_nothing(
    spark_url: str,  # noqa: F811
    duck_settings: Settings,
    tmp_path: Path,
) -> None:
    _tied_orders(duck_settings, tmp_path)
    table = _copy_to_spark(spark_url, duck_settings, events=False)
    spark = _spark_settings(duck_settings, spark_url, f"duckdb:///{tmp_path / 'state.duckdb'}", table)
    compute_snapshot(get_engine(spark), spark, AS_OF, "rfm11", 365)
    before = _snapshot(get_engine(spark), "rfm11")
    broken = spark.model_copy(update={"orders": OrdersSource(table=table, amount="no_such_column")})
    with pytest.raises(ConfigError, match="has no column 'no_such_column' \\(the amount column\\)"):
        compute_snapshot(get_engine(broken), broken, AS_OF, "rfm11", 365)  # the checks read Spark's columns
    with pytest.raises(WarehouseError) as err:
        compute_snapshot(get_engine(broken), broken, AS_OF, "rfm11", 365, run_checks=False)
    assert "computing the metrics failed in the Spark warehouse at sc://127.0.0.1" in str(err.value)
    assert "no_such_column" in str(err.value)
    assert _snapshot(get_engine(spark), "rfm11") == before
    missing = spark.model_copy(update={"orders": OrdersSource(table="no_such_orders")})
    with pytest.raises(WarehouseError, match="table 'no_such_orders' does not exist in the Spark warehouse"):
        compute_snapshot(get_engine(missing), missing, AS_OF, "rfm11", 365)
    with pytest.raises(ConfigError, match="rule-based schemes only"):
        compute_snapshot(get_engine(spark), spark, AS_OF, "kmeans", 365)


def test_a_spark_warehouse_needs_a_state_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACTIVATION_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("ACTIVATION_WAREHOUSE_URL", "sc://127.0.0.1:15002")
    result = run_cli("segment", "--as-of", "2024-06-30")
    assert result.exit_code == 2, result.output
    assert "ACTIVATION_STATE_URL is not set" in result.output
    assert "duckdb:///" in result.output  # the fix names a URL to use
    assert "Traceback" not in result.output
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    ("warehouse", "state", "message"),
    [
        ("sc://127.0.0.1:15002", "sc://127.0.0.1:15003", "must be a DuckDB or PostgreSQL URL"),
        ("sc://127.0.0.1:15002", "snowflake://u:secret@acct/db", "must be a DuckDB or PostgreSQL URL"),
        ("snowflake://u:secret@acct/db", None, "ACTIVATION_STATE_URL is not set"),
        ("duckdb:///w.duckdb", "duckdb:///s.duckdb", "supported for a Spark warehouse (sc://) only"),
    ],
)
def test_state_url_errors(warehouse: str, state: str | None, message: str, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, warehouse_url=warehouse, state_url=state)
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        get_engine(settings)
    assert "secret" not in str(err.value)
    assert err.value.fix


def test_an_unreachable_state_store_names_its_own_setting(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    state = f"postgresql+psycopg://u:secret@127.0.0.1:{port}/state"
    settings = Settings(data_dir=tmp_path, warehouse_url="sc://127.0.0.1:15002", state_url=state)
    with pytest.raises(WarehouseError, match="cannot reach the state store at") as err:
        get_engine(settings)
    assert "check ACTIVATION_STATE_URL" in err.value.fix
    assert "secret" not in str(err.value)


def test_the_state_store_defaults_to_a_duckdb_or_postgresql_warehouse(tmp_path: Path) -> None:
    for url in (f"duckdb:///{tmp_path / 'w.duckdb'}", "postgresql+psycopg://u@h:5432/db"):
        assert Settings(data_dir=tmp_path, warehouse_url=url).resolved_state_url == url
        assert Settings(data_dir=tmp_path, warehouse_url=url, state_url=url).resolved_state_url == url
    default = Settings(data_dir=tmp_path)
    assert default.resolved_state_url == default.resolved_warehouse_url


@pytest.mark.spark
@pytest.mark.usefixtures("pyspark_installed")
def test_nothing_answering_at_the_spark_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"sc://127.0.0.1:{port}"
    with pytest.raises(WarehouseError, match=f"cannot reach the Spark warehouse at {url}") as err:
        spark_warehouse(Settings(data_dir=tmp_path, warehouse_url=url, state_url="duckdb:///:memory:"))
    assert "ACTIVATION_WAREHOUSE_URL" in (err.value.fix or "")
    monkeypatch.setenv("ACTIVATION_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("ACTIVATION_WAREHOUSE_URL", url)
    monkeypatch.setenv("ACTIVATION_STATE_URL", f"duckdb:///{tmp_path / 'state.duckdb'}")
    result = run_cli("segment", "--as-of", "2024-06-30")
    assert result.exit_code == 2, result.output
    assert f"cannot reach the Spark warehouse at {url}" in result.output
    assert "Traceback" not in result.output and "_MultiThreadedRendezvous" not in result.output


@pytest.mark.spark
def test_activation_segment_on_spark_from_the_command_line(
    spark_url: str,  # noqa: F811
    duck_settings: Settings,
    tmp_path: Path,
) -> None:
    import os
    import subprocess
    import sys

    _tied_orders(duck_settings, tmp_path)
    table = _copy_to_spark(spark_url, duck_settings, events=False)
    compute_snapshot(get_engine(duck_settings), duck_settings, AS_OF, "rfm11", 365, run_checks=False)
    state = tmp_path / "state" / "state.duckdb"
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
        "ACTIVATION_DATA_DIR": str(tmp_path / "cli-data"),
        "ACTIVATION_WAREHOUSE_URL": spark_url,
        "ACTIVATION_STATE_URL": f"duckdb:///{state}",
        "ACTIVATION_ORDERS__TABLE": table,
    }
    args = [
        sys.executable,
        "-m",
        "activation.cli",
        "segment",
        "--as-of",
        str(AS_OF),
        "--lookback-days",
        "365",
        "--json",
    ]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["customers"] == 85
    assert SPARK_RELATIONSHIPS_SKIPPED in done.stderr  # the user sees what was not checked
    state_settings = Settings(data_dir=tmp_path / "cli-data", warehouse_url=f"duckdb:///{state}")
    _assert_same(get_engine(duck_settings), get_engine(state_settings), "rfm11")
