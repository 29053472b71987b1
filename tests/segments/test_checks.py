"""Data checks before segmenting (not_null, numeric, accepted_values, unique, relationships), on both
warehouses, and the guarantee that a failing check writes nothing."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import event, func, select, text
from sqlalchemy.engine import Engine

from activation.errors import ConfigError, DataCheckError, WarehouseError
from activation.settings import OrdersSource, Settings
from activation.tables import rfm_snapshots, snapshot_runs
from segments.checks import run_checks
from segments.ingest import ingest_file
from segments.snapshots import compute_snapshot
from tests.cli_helpers import run_cli
from tests.rfm_fixtures import add_customers, add_orders, at, grid_orders

AS_OF = date(2024, 6, 30)


def custom_table(engine: Engine, name: str, amount_type: str = "DOUBLE PRECISION") -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                f"CREATE TABLE {name} (id VARCHAR, cust VARCHAR, ts TIMESTAMP, total {amount_type}, state VARCHAR)"
            )
        )


def insert_custom(engine: Engine, name: str, rows: list[tuple]) -> None:
    with engine.begin() as conn:
        for r in rows:
            conn.execute(
                text(f"INSERT INTO {name} VALUES (:id, :cust, :ts, :total, :state)"),
                dict(zip(["id", "cust", "ts", "total", "state"], r, strict=True)),
            )


def mapped(settings: Settings, table: str) -> Settings:
    source = OrdersSource(
        table=table, order_id="id", customer_id="cust", ordered_at="ts", amount="total", status="state"
    )
    return settings.model_copy(update={"orders": source})


def snapshot_count(engine: Engine) -> tuple[int, int]:
    with engine.connect() as conn:
        return (
            conn.execute(select(func.count()).select_from(rfm_snapshots)).scalar_one(),
            conn.execute(select(func.count()).select_from(snapshot_runs)).scalar_one(),
        )


def test_clean_data_passes(engine: Engine, settings: Settings) -> None:
    add_orders(engine, grid_orders(AS_OF))
    report = run_checks(engine, settings)
    assert report.ok and not report.warnings
    names = [r.name for r in report.results]
    assert names == [
        "not_null(order_id)",
        "not_null(customer_id)",
        "not_null(ordered_at)",
        "not_null(amount)",
        "non_negative(amount)",
        "not_future(ordered_at)",
        "accepted_values(status)",
        "unique(order_id)",
    ]


def test_duplicate_order_ids_block_and_write_nothing(engine: Engine, settings: Settings) -> None:
    add_orders(engine, grid_orders(AS_OF))
    compute_snapshot(engine, settings, AS_OF, "rfm11")
    before = snapshot_count(engine)
    add_orders(
        engine,
        [
            ("x", at("2024-06-01"), 5.0, "Completed", "dup-1"),
            ("y", at("2024-06-02"), 6.0, "Completed", "dup-1"),
        ],
    )
    with pytest.raises(DataCheckError) as err:
        compute_snapshot(engine, settings, AS_OF, "rfm11")
    msg = err.value.message
    assert "unique(order_id): 1 row(s) fail" in msg and "dup-1" in msg
    assert err.value.failures[0].name == "unique(order_id)"
    assert "nothing was written" in (err.value.fix or "")
    assert snapshot_count(engine) == before
    with pytest.raises(DataCheckError):
        compute_snapshot(engine, settings, date(2024, 5, 31), "seed5")
    assert snapshot_count(engine) == before


def test_nulls_in_a_user_table_with_mapped_columns(engine: Engine, settings: Settings) -> None:
    custom_table(engine, "raw_orders")
    insert_custom(
        engine,
        "raw_orders",
        [
            ("1", "a", at("2024-06-01"), 10.0, "paid"),
            ("2", None, at("2024-06-01"), 10.0, "paid"),
            ("3", "b", None, 10.0, "paid"),
            ("4", "c", at("2024-06-01"), None, "paid"),
            (None, "d", at("2024-06-01"), 1.0, "paid"),
        ],
    )
    user = mapped(settings, "raw_orders")
    with pytest.raises(DataCheckError) as err:
        compute_snapshot(engine, user, AS_OF, "seed5")
    failed = {f.name: f for f in err.value.failures}
    assert set(failed) == {
        "not_null(order_id)",
        "not_null(customer_id)",
        "not_null(ordered_at)",
        "not_null(amount)",
    }
    assert failed["not_null(customer_id)"].failures == 1
    assert failed["not_null(customer_id)"].examples[0]["id"] == "2"
    assert snapshot_count(engine) == (0, 0)


def test_schema_qualified_user_table_segments(engine: Engine, settings: Settings) -> None:
    with engine.begin() as conn:
        conn.execute(text("CREATE SCHEMA analytics"))
    custom_table(engine, "analytics.fct_orders")
    insert_custom(
        engine,
        "analytics.fct_orders",
        [
            ("1", "a", at("2024-06-01"), 10.0, "paid"),
            ("2", "a", at("2024-06-02"), 5.0, "Cancelled"),
            ("3", "b", at("2024-05-01"), 7.5, None),
        ],
    )
    user = mapped(settings, "analytics.fct_orders")
    result = compute_snapshot(engine, user, AS_OF, "seed5")
    assert result.customers == 2


def test_amount_must_be_numeric(engine: Engine, settings: Settings) -> None:
    custom_table(engine, "text_orders", amount_type="VARCHAR")
    insert_custom(engine, "text_orders", [("1", "a", at("2024-06-01"), "12.50", "paid")])
    with pytest.raises(DataCheckError, match=r"numeric\(amount\)"):
        run_checks(engine, mapped(settings, "text_orders"))


def test_status_vocabulary_is_trimmed_case_insensitive_and_unknown_values_block(
    engine: Engine, settings: Settings
) -> None:
    add_orders(
        engine,
        [
            ("a", at("2024-06-01"), 10.0, " SHIPPED "),
            ("b", at("2024-06-01"), 20.0, "Refunded"),  # excluded by the default vocabulary
            ("c", at("2024-06-01"), 30.0, None),  # no status: counts
            ("d", at("2024-06-01"), 40.0, "paid"),
        ],
    )
    result = compute_snapshot(engine, settings, AS_OF, "seed5")
    assert result.customers == 3  # a, c, d; b's only order was refunded
    before = snapshot_count(engine)
    add_orders(
        engine,
        [
            ("e", at("2024-06-02"), 1.0, "Pending review", "pend-1"),
            ("e", at("2024-06-03"), 1.0, "Pending review", "pend-2"),
            ("f", at("2024-06-03"), 1.0, "on hold", "hold-1"),
        ],
    )
    with pytest.raises(DataCheckError) as err:
        compute_snapshot(engine, settings, date(2024, 6, 29), "seed5")
    msg, fix = err.value.message, err.value.fix or ""
    assert "accepted_values(status): 3 row(s) fail" in msg
    assert "'Pending review' (2)" in msg and "'on hold' (1)" in msg and "pend-1" in msg
    assert "ACTIVATION_COUNTED_STATUSES" in fix and "statuses:" in fix and "docs/mapping.md" in fix
    assert snapshot_count(engine) == before
    mapped_statuses = settings.model_copy(
        update={
            "counted_statuses": [*settings.counted_statuses, "pending review"],
            "excluded_statuses": [*settings.excluded_statuses, "On Hold"],
        }
    )
    assert compute_snapshot(engine, mapped_statuses, date(2024, 6, 29), "seed5").customers == 4


def test_negative_orders_block_unless_allowed(engine: Engine, settings: Settings) -> None:
    add_orders(engine, grid_orders(AS_OF))
    compute_snapshot(engine, settings, AS_OF, "seed5")
    before = snapshot_count(engine)
    add_orders(engine, [("r", at("2024-06-01"), -120.5, "Completed", "refund-7")])
    with pytest.raises(DataCheckError) as err:
        compute_snapshot(engine, settings, AS_OF, "seed5")
    assert "non_negative(amount): 1 row(s) fail" in err.value.message and "refund-7" in err.value.message
    assert "--allow-negative-amounts" in (err.value.fix or "")
    assert "ACTIVATION_ALLOW_NEGATIVE_AMOUNTS" in (err.value.fix or "")
    assert snapshot_count(engine) == before
    allowed = settings.model_copy(update={"allow_negative_amounts": True})
    result = compute_snapshot(engine, allowed, AS_OF, "seed5")
    assert any("non_negative(amount)" in w and "refund-7" in w for w in result.warnings)


def test_orders_after_now_block_beyond_the_tolerance(engine: Engine, settings: Settings) -> None:
    soon = datetime.now(UTC).replace(tzinfo=None) + timedelta(hours=2)
    add_orders(engine, [("a", at("2024-06-01"), 5.0), ("a", soon, 5.0, "Completed", "in-two-hours")])
    run_checks(engine, settings)  # within the 24 h tolerance (time zones)
    add_orders(engine, [("b", datetime(2030, 1, 5, 9, 0), 5.0, "Completed", "typo-2030")])
    with pytest.raises(DataCheckError) as err:
        compute_snapshot(engine, settings, AS_OF, "seed5")
    assert "not_future(ordered_at): 1 row(s) fail" in err.value.message and "typo-2030" in err.value.message
    assert "in-two-hours" not in err.value.message
    assert "ACTIVATION_FUTURE_TOLERANCE_HOURS" in (err.value.fix or "")
    assert snapshot_count(engine) == (0, 0)


def test_orders_of_unknown_customers_warn(engine: Engine, settings: Settings) -> None:
    add_orders(engine, [("known", at("2024-06-01"), 1.0), ("stranger", at("2024-06-01"), 2.0)])
    assert not run_checks(engine, settings).warnings  # empty customers table: relationship not checked
    add_customers(engine, ["known"])
    report = run_checks(engine, settings)
    assert report.ok
    assert [w.name for w in report.warnings] == ["relationships(customer_id -> customers)"]
    assert report.warnings[0].examples[0]["customer_id"] == "stranger"
    result = compute_snapshot(engine, settings, AS_OF, "seed5")
    assert any("relationships" in w for w in result.warnings)


def test_missing_table_and_column(engine: Engine, settings: Settings) -> None:
    with pytest.raises(WarehouseError, match="table 'fct_missing' does not exist"):
        compute_snapshot(
            engine, settings.model_copy(update={"orders": OrdersSource(table="fct_missing")}), AS_OF, "seed5"
        )
    custom_table(engine, "raw_orders")
    wrong = OrdersSource(
        table="raw_orders",
        order_id="id",
        customer_id="customer",
        ordered_at="ts",
        amount="total",
        status=None,
    )
    with pytest.raises(ConfigError) as err:
        run_checks(engine, settings.model_copy(update={"orders": wrong}))
    assert "no column 'customer'" in err.value.message and "ACTIVATION_ORDERS__CUSTOMER_ID" in (
        err.value.fix or ""
    )


def _statements(engine: Engine) -> list[str]:
    seen: list[str] = []

    @event.listens_for(engine, "before_cursor_execute")
    def record(conn: object, cursor: object, statement: str, *args: object) -> None:
        seen.append(" ".join(statement.split()))

    return seen


def test_unique_ids_are_verified_once_until_they_change(engine: Engine, settings: Settings) -> None:
    custom_table(engine, "raw_orders")
    insert_custom(engine, "raw_orders", [(str(i), "a", at("2024-06-01"), 1.0, "paid") for i in range(5)])
    user = mapped(settings, "raw_orders")
    seen = _statements(engine)
    run_checks(engine, user)
    assert sum("GROUP BY raw_orders.id" in s for s in seen) == 1
    seen.clear()
    run_checks(engine, user)  # the same ids: their fingerprint says they were found unique
    assert not any("GROUP BY raw_orders.id" in s for s in seen)
    # same row count, one id now twice: the fingerprint no longer matches and the full check finds it
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM raw_orders WHERE id = '4'"))
    insert_custom(engine, "raw_orders", [("3", "b", at("2024-06-02"), 1.0, "paid")])
    with pytest.raises(DataCheckError, match=r"unique\(order_id\): 1 row\(s\) fail"):
        run_checks(engine, user)


def test_ingest_vouches_for_the_ids_it_writes(engine: Engine, settings: Settings, tmp_path: Path) -> None:
    mapping = tmp_path / "m.yaml"
    mapping.write_text("columns: {order_id: o, customer_id: c, ordered_at: d, amount: a}\n")
    for name, body in [
        ("a.csv", "1,c1,2024-05-01,5\n2,c2,2024-05-02,6\n"),
        ("b.csv", "2,c2,2024-05-02,7\n3,c1,2024-06-01,8\n"),
    ]:
        (tmp_path / name).write_text("o,c,d,a\n" + body)
        ingest_file(engine, settings, tmp_path / name, "csv", mapping)
    seen = _statements(engine)
    assert run_checks(engine, settings).ok
    assert not any("GROUP BY orders.order_id" in s for s in seen)
    add_orders(engine, [("c9", at("2024-06-03"), 1.0, "Completed", "3")])  # written behind ingest's back
    with pytest.raises(DataCheckError, match="unique"):
        compute_snapshot(engine, settings, AS_OF, "seed5")


def test_cli_segment_refuses_negative_orders_until_the_flag(engine: Engine, settings: Settings) -> None:
    add_orders(engine, [*grid_orders(AS_OF), ("r", at("2024-06-01"), -40.0, "Completed", "refund-9")])
    refused = run_cli("segment", "--as-of", AS_OF.isoformat(), "--scheme", "seed5")
    assert (
        refused.exit_code == 2
        and "refund-9" in refused.stderr
        and "--allow-negative-amounts" in refused.stderr
    )
    assert snapshot_count(engine) == (0, 0)
    allowed = run_cli(
        "segment", "--as-of", AS_OF.isoformat(), "--scheme", "seed5", "--allow-negative-amounts"
    )
    assert allowed.exit_code == 0, allowed.output
    assert "non_negative(amount)" in allowed.stderr and snapshot_count(engine)[1] == 1
