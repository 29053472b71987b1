"""Demo data: deterministic, the requested size, a realistic shape, and real signal about future purchases."""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path

import duckdb
import numpy as np
import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

import segments.demo_data as demo_data
from activation.errors import ConfigError
from activation.settings import Settings
from segments.demo_data import generate
from tests.cli_helpers import run_cli

FILES = ("orders.parquet", "mapping.yaml", "tickets.csv", "tickets_mapping.yaml")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    generate(out, customers=5_000, orders=40_000, seed=7)
    return out


@pytest.fixture(scope="module")
def db(demo: Path) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute(f"CREATE VIEW o AS SELECT * FROM read_parquet('{demo / 'orders.parquet'}')")
    con.execute(f"CREATE VIEW t AS SELECT * FROM read_csv('{demo / 'tickets.csv'}')")
    con.execute(
        "CREATE VIEW c AS SELECT DISTINCT customer_id, email, first_name, unsubscribed, country, city FROM o"
    )
    con.execute("CREATE VIEW per AS SELECT customer_id, count(*) AS n FROM o GROUP BY 1")
    return con


def one(con: duckdb.DuckDBPyConnection, sql: str):
    return con.execute(sql).fetchone()[0]


def test_same_seed_same_bytes_other_seed_other_data(demo: Path, tmp_path: Path) -> None:
    generate(tmp_path / "again", customers=5_000, orders=40_000, seed=7)
    generate(tmp_path / "other", customers=5_000, orders=40_000, seed=8)
    for name in FILES:
        assert (tmp_path / "again" / name).read_bytes() == (demo / name).read_bytes(), name
    assert (tmp_path / "other" / "orders.parquet").read_bytes() != (demo / "orders.parquet").read_bytes()


def test_exact_sizes_and_date_span(db: duckdb.DuckDBPyConnection) -> None:
    assert one(db, "SELECT count(*) FROM o") == 40_000
    assert one(db, "SELECT count(DISTINCT order_id) FROM o") == 40_000
    assert one(db, "SELECT count(DISTINCT customer_id) FROM o") == 5_000
    first, last = db.execute("SELECT min(ordered_at)::date, max(ordered_at)::date FROM o").fetchone()
    assert date(2023, 1, 1) <= first <= date(2023, 1, 31)
    assert date(2025, 12, 1) <= last <= date(2025, 12, 31)


def test_purchase_counts_are_skewed(db: duckdb.DuckDBPyConnection) -> None:
    counts = dict(db.execute("SELECT n, count(*) FROM per GROUP BY n").fetchall())
    assert max(counts, key=counts.get) == 1  # buying once is the most common story
    assert 0.2 < counts[1] / 5_000 < 0.5
    assert one(db, "SELECT median(n) FROM per") <= 4
    assert one(db, "SELECT max(n) FROM per") >= 60
    top_decile_share = one(
        db,
        "SELECT sum(n) FILTER (WHERE r <= 500) / sum(n) FROM (SELECT n, row_number() OVER (ORDER BY n DESC) r FROM per)",
    )
    assert top_decile_share > 0.4


def test_statuses_coupons_places_categories(db: duckdb.DuckDBPyConnection) -> None:
    share = dict(db.execute("SELECT status, count(*) / 40000 FROM o GROUP BY 1").fetchall())
    assert set(share) == {"Completed", "Cancelled", "Returned"}
    assert 0.015 < share["Cancelled"] < 0.035 and 0.015 < share["Returned"] < 0.035
    coupons = dict(
        db.execute("SELECT coupon_code, count(*) FROM o WHERE coupon_code IS NOT NULL GROUP BY 1").fetchall()
    )
    assert set(coupons) == {"WELCOME10", "BLACKFRIDAY25", "HOLIDAY15", "SAVE10"}
    assert 0.05 < sum(coupons.values()) / 40_000 < 0.25
    assert (
        one(db, "SELECT count(*) FROM o WHERE coupon_code = 'BLACKFRIDAY25' AND month(ordered_at) <> 11") == 0
    )
    assert one(db, "SELECT count(DISTINCT country) FROM o") >= 8
    assert one(db, "SELECT count(DISTINCT city) FROM o") >= 12
    assert one(db, "SELECT count(DISTINCT category) FROM o") == 8
    assert one(db, "SELECT count(*) FROM o WHERE amount <= 0 OR amount IS NULL") == 0


def test_q4_peak_every_year(db: duckdb.DuckDBPyConnection) -> None:
    per_day = db.execute(
        "SELECT year(ordered_at), quarter(ordered_at), count(*) FROM o GROUP BY ALL ORDER BY ALL"
    ).fetchall()
    by = {(y, q): n for y, q, n in per_day}
    for year in (2023, 2024, 2025):
        assert by[(year, 4)] > 1.3 * by[(year, 3)], year
    # the shop grows: more orders each year
    totals = [sum(n for (y, _), n in by.items() if y == year) for year in (2023, 2024, 2025)]
    assert totals[0] < totals[1] < totals[2]


def test_customers_emails_and_consent(db: duckdb.DuckDBPyConnection) -> None:
    assert one(db, "SELECT count(*) FROM c") == 5_000  # attributes are constant per customer
    assert 0.02 < one(db, "SELECT avg(unsubscribed::int) FROM c") < 0.04
    emails = [r[0] for r in db.execute("SELECT email FROM c").fetchall()]
    valid = [e for e in emails if re.fullmatch(r"[a-z]+\.[a-z]+\d+@example\.(com|org|net)", e)]
    invalid = [e for e in emails if e not in valid]
    assert 5 <= len(invalid) <= 60
    assert all("example" in e for e in emails)  # reserved domains only (RFC 2606)
    assert one(db, "SELECT count(*) FROM (SELECT email FROM c GROUP BY 1 HAVING count(*) > 1)") >= 2
    assert one(db, "SELECT count(*) FROM c WHERE first_name IS NULL OR first_name = ''") == 0


def test_recent_and_frequent_buyers_buy_again(db: duckdb.DuckDBPyConnection) -> None:
    """The signal later parts rely on (CLV, baseline conversion per segment)."""
    rate = dict(
        db.execute(
            """
            WITH past AS (
                SELECT customer_id, count(*) AS f, DATE '2025-06-30' - max(ordered_at)::date AS r
                FROM o WHERE ordered_at < DATE '2025-07-01' GROUP BY 1),
            future AS (
                SELECT DISTINCT customer_id FROM o
                WHERE ordered_at >= DATE '2025-07-01' AND ordered_at < DATE '2025-10-01')
            SELECT CASE WHEN r <= 30 AND f >= 8 THEN 'best' WHEN r <= 30 THEN 'recent' WHEN r > 365 THEN 'lost'
                        WHEN f = 1 THEN 'one-time' ELSE 'middle' END,
                   avg((future.customer_id IS NOT NULL)::int)
            FROM past LEFT JOIN future USING (customer_id) GROUP BY 1
            """
        ).fetchall()
    )
    assert rate["best"] > 0.75
    assert rate["recent"] > 0.4
    assert rate["lost"] < 0.06
    assert rate["best"] > rate["recent"] > rate["middle"] > rate["lost"]


def test_support_tickets(db: duckdb.DuckDBPyConnection) -> None:
    n = one(db, "SELECT count(*) FROM t")
    assert 1_000 < n < 10_000
    assert one(db, "SELECT count(*) FROM t WHERE customer_id NOT IN (SELECT customer_id FROM per)") == 0
    bands = dict(
        db.execute(
            "SELECT CASE WHEN k = 1 THEN '1' WHEN k <= 3 THEN '2-3' ELSE '4+' END, count(*) "
            "FROM (SELECT customer_id, count(*) k FROM t GROUP BY 1) GROUP BY 1"
        ).fetchall()
    )
    assert set(bands) == {"1", "2-3", "4+"} and min(bands.values()) >= 50
    assert one(db, "SELECT max(opened_at)::date FROM t") <= date(2025, 12, 31)


def test_many_blocks_give_exact_unique_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo_data, "BLOCK", 700)
    files = generate(tmp_path, customers=2_500, orders=9_000, seed=3)
    assert (files.customers_count, files.orders_count) == (2_500, 9_000)
    con = duckdb.connect()
    got = con.execute(
        f"SELECT count(*), count(DISTINCT order_id), count(DISTINCT customer_id) FROM '{files.orders}'"
    ).fetchone()
    assert got == (9_000, 9_000, 2_500)
    assert one(con, f"SELECT count(DISTINCT ticket_id) = count(*) FROM read_csv('{files.tickets}')")


def test_bad_sizes() -> None:
    with pytest.raises(ConfigError, match="less than --customers"):
        generate("/nonexistent-never-created", customers=10, orders=5)


def test_cli_demo_data_then_ingest(settings: Settings, engine: Engine, tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = run_cli("demo-data", "--out", str(out), "--customers", "300", "--orders", "2000", "--seed", "1")
    assert result.exit_code == 0, result.output
    assert "2,000 orders of 300 customers" in result.stdout
    assert (
        f"activation ingest {out / 'orders.parquet'} --format parquet --mapping {out / 'mapping.yaml'}"
        in result.stdout
    )
    loaded = run_cli(
        "ingest", str(out / "orders.parquet"), "--format", "parquet", "--mapping", str(out / "mapping.yaml")
    )
    assert loaded.exit_code == 0, loaded.output
    tickets = run_cli(
        "ingest", str(out / "tickets.csv"), "--format", "csv", "--mapping", str(out / "tickets_mapping.yaml")
    )
    assert tickets.exit_code == 0, tickets.output
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*), count(DISTINCT customer_id) FROM orders")).one() == (
            2000,
            300,
        )
        assert conn.execute(text("SELECT count(*) FROM customers WHERE email IS NOT NULL")).scalar() == 300
        assert conn.execute(text("SELECT count(*) FROM contact_events")).scalar() > 0
    bad = run_cli("demo-data", "--out", str(out), "--customers", "300", "--orders", "10")
    assert bad.exit_code == 2 and "fix:" in bad.stderr


def test_where_the_data_ends_changes_only_what_is_seen() -> None:
    """Customers buy on their own clock: the same customers simulated over a span one year longer make the
    same purchases up to the shorter span's end, and more after it (a draw spread to the end of the data
    would move every purchase when the end moves, and thin out the data's last months)."""
    start, days = date(2023, 1, 1), 3 * 365 + 1
    n = 3000
    setup = np.random.default_rng(3)
    arrival = setup.random(n) * days
    rate = setup.gamma(0.35, 1.0, n) / 45.0
    dropout = setup.beta(1.0, 1.6, n)
    long_season = demo_data._daily_season(start, days + 365)
    short = demo_data._repeat_purchases(
        np.random.default_rng(1), arrival, rate, dropout, 1.0, long_season[:days]
    )
    long = demo_data._repeat_purchases(np.random.default_rng(1), arrival, rate, dropout, 1.0, long_season)
    before = long[1] < days
    assert short[0].size > 1000
    np.testing.assert_array_equal(short[0], long[0][before])
    np.testing.assert_array_equal(short[1], long[1][before])
    assert (~before).sum() > 0.1 * short[0].size
