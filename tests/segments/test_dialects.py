"""The segmentation statements on other warehouses: every shipped scheme compiled (literal binds, the SQL text
a Spark Connect session or a warehouse console receives) with the Databricks/Spark, BigQuery, Snowflake and
Trino SQLAlchemy dialects, checked against golden files; never an approximate quantile; and the portable exact
cut-point form (BigQuery, Trino) run on real DuckDB and PostgreSQL against their percentile_disc.

Regenerate the golden files after an intended change of the SQL: ``UPDATE_GOLDEN=1 pytest
tests/segments/test_dialects.py`` (then read the diff)."""

from __future__ import annotations

import os
import random
import re
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from databricks.sqlalchemy import DatabricksDialect
from snowflake.sqlalchemy.snowdialect import SnowflakeDialect
from sqlalchemy import Column, Integer, MetaData, Table, column, insert, table
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy_bigquery import BigQueryDialect
from trino.sqlalchemy.dialect import TrinoDialect

from activation.settings import Settings
from activation.tables import Double
from segments import rfm
from segments.schemes import Bins, Scheme, list_schemes, load_scheme

GOLDEN = Path(__file__).parent / "golden"
DIALECTS: dict[str, Dialect] = {
    "databricks": DatabricksDialect(),
    "bigquery": BigQueryDialect(),
    "snowflake": SnowflakeDialect(),
    "trino": TrinoDialect(),
}
AS_OF = date(2024, 6, 30)
METRICS = table(
    "rfm_metrics", column("customer_id"), column("recency_days"), column("frequency"), column("monetary")
)


def _cuts(scheme: Scheme) -> dict[str, list[float]]:
    # fixed stand-in cut-points: floats with many digits, so that their rendering is in the golden files
    return {
        m: [0.1 + 0.2 * k + 1234.5678 for k in range(b.n - 1)] if b.method == "quantile" else [2.5]
        for m, b in scheme.scores.items()
    }


def compiled(dialect: Dialect, scheme: Scheme) -> str:
    statements = [
        rfm.metrics_select(Settings(), scheme, rfm.Window.of(AS_OF, 365)),
        rfm.cutpoints_select(METRICS, scheme, dialect.name),
        rfm.scored_select(METRICS, scheme, _cuts(scheme), AS_OF),
    ]
    return "".join(
        f"{s.compile(dialect=dialect, compile_kwargs={'literal_binds': True})};\n\n" for s in statements
    )


@pytest.mark.parametrize("scheme_name", list_schemes())
@pytest.mark.parametrize("dialect_name", sorted(DIALECTS))
def test_statements_match_golden_sql(dialect_name: str, scheme_name: str) -> None:
    sql = compiled(DIALECTS[dialect_name], load_scheme(scheme_name))
    path = GOLDEN / dialect_name / f"{scheme_name}.sql"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(sql)
    assert path.exists(), f"no golden file {path.name}: run with UPDATE_GOLDEN=1"
    assert sql == path.read_text()


@pytest.mark.parametrize("dialect_name", sorted(DIALECTS))
def test_no_approximate_or_continuous_quantile(dialect_name: str) -> None:
    for name in list_schemes():
        sql = compiled(DIALECTS[dialect_name], load_scheme(name)).lower()
        assert not re.search(r"approx|percentile_cont|\bmedian\(|\bntile\(", sql), (dialect_name, name)
        assert "'day'" not in sql or dialect_name == "trino"  # Spark's datediff takes no quoted unit


def test_each_engine_gets_its_exact_form() -> None:
    scheme = load_scheme("rfm11")
    sql = {d: compiled(DIALECTS[d], scheme) for d in DIALECTS}
    assert "percentile_disc(array(0.199999999999," in sql["databricks"]
    assert "datediff(DATE '2024-06-30', CAST(metrics.last_at AS DATE))" in sql["databricks"]
    assert sql["snowflake"].count("percentile_disc(") == 12
    for d in ("bigquery", "trino"):
        assert "percentile_disc" not in sql[d].lower() and "row_number() over" in sql[d].lower()


# -- the portable exact form, on real engines ------------------------------------------------------------


def _datasets() -> list[list[tuple[int, int, float]]]:
    rnd = random.Random(16)
    out: list[list[tuple[int, int, float]]] = [[(3, 1, 9.5)], [(7, 2, 1.0)] * 13, [(5, 1, 2.0)] * 2]
    for n in [*range(2, 26), 40, 99, 100, 101, 250, 1000]:
        width = rnd.choice([1, 2, 3, 5, 40, 10_000])
        out.append(
            [
                (rnd.randrange(width), 1 + rnd.randrange(max(1, width // 2)), round(rnd.random() * width, 2))
                for _ in range(n)
            ]
        )
    return out


def _cutpoints(engine: Engine, rows: list[tuple[int, int, float]], scheme: Scheme, form: str | None) -> Any:
    md = MetaData()
    t = Table(
        "rfm_metrics",
        md,
        Column("recency_days", Integer),
        Column("frequency", Integer),
        Column("monetary", Double),
    )
    md.drop_all(engine)
    md.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            insert(t), [dict(zip(("recency_days", "frequency", "monetary"), r, strict=True)) for r in rows]
        )
        stats = dict(conn.execute(rfm.cutpoints_select(t, scheme, form)).mappings().one())
    return {m: rfm.thresholds(m, b, stats) for m, b in scheme.scores.items()}


def _scheme(n: int) -> Scheme:
    base = load_scheme("rfm11")
    bins = Bins(method="quantile", bins=n)
    return base.model_copy(update={"scores": {"r": bins, "f": bins, "m": bins}})


@pytest.mark.parametrize("n_bins", [2, 3, 4, 5, 7, 10])
def test_ranked_form_equals_percentile_disc(engine: Engine, n_bins: int) -> None:
    scheme = _scheme(n_bins)
    for rows in _datasets():
        exact = _cutpoints(engine, rows, scheme, None)  # percentile_disc(ARRAY[...]) WITHIN GROUP
        ranked = _cutpoints(engine, rows, scheme, "trino")  # the ROW_NUMBER form BigQuery and Trino get
        assert ranked == exact, (len(rows), n_bins)


def test_ranked_form_is_not_off_by_one_by_construction(engine: Engine) -> None:
    # the hand-computed positions: 10 values, quintiles at positions 2, 4, 6, 8 (ascending), recency descending
    rows = [(i, i, float(i)) for i in range(1, 11)]
    cuts = _cutpoints(engine, rows, _scheme(5), "trino")
    assert cuts["f"] == [2.0, 4.0, 6.0, 8.0]
    assert cuts["m"] == [2.0, 4.0, 6.0, 8.0]
    assert cuts["r"] == [9.0, 7.0, 5.0, 3.0]
