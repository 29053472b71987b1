"""Snapshots: reruns, atomic replace, summary, export, migration, the model-based hook, and the CLI."""

from __future__ import annotations

import csv
import json
from datetime import date, timedelta
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from activation.errors import ConfigError, NotFoundError
from activation.settings import Settings
from activation.tables import rfm_snapshots, snapshot_runs
from segments.schemes import register_assigner
from segments.snapshots import (
    EXPORT_COLUMNS,
    compute_snapshot,
    export_snapshot,
    last_quarter_end,
    latest_snapshot_as_of,
    migration_matrix,
    segment_summary,
)
from tests.cli_helpers import run_cli
from tests.rfm_fixtures import add_orders, at, grid_orders

AS_OF = date(2024, 6, 30)


def rows(engine: Engine, scheme: str = "rfm11", as_of: date = AS_OF) -> list[tuple]:
    s = rfm_snapshots.c
    with engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                select(rfm_snapshots).where((s.as_of == as_of) & (s.scheme == scheme)).order_by(s.customer_id)
            )
        ]


def count_runs(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(snapshot_runs)).scalar_one()


@pytest.mark.parametrize(
    ("today", "expected"),
    [
        (date(2025, 5, 14), date(2025, 3, 31)),
        (date(2025, 1, 1), date(2024, 12, 31)),
        (date(2025, 3, 31), date(2024, 12, 31)),  # the quarter is not over until the day is
        (date(2025, 10, 1), date(2025, 9, 30)),
        (date(2025, 7, 15), date(2025, 6, 30)),
    ],
)
def test_last_quarter_end(today: date, expected: date) -> None:
    assert last_quarter_end(today) == expected


def test_rerun_is_identical_and_replaces(engine: Engine, settings: Settings) -> None:
    add_orders(engine, grid_orders(AS_OF))
    first = compute_snapshot(engine, settings, AS_OF, "rfm11")
    before = rows(engine)
    second = compute_snapshot(engine, settings, AS_OF, "rfm11")
    assert rows(engine) == before
    assert first.segments == second.segments and first.cutpoints == second.cutpoints
    assert count_runs(engine) == 1
    assert list(first.steps) == ["metrics", "cutpoints", "rows"]
    assert all(v >= 0 for v in first.steps.values()) and sum(first.steps.values()) <= first.seconds
    # new data, same as_of+scheme: replaced, not appended
    add_orders(engine, [("newbie", at(AS_OF), 5.0)])
    compute_snapshot(engine, settings, AS_OF, "rfm11")
    assert len(rows(engine)) == 26 and count_runs(engine) == 1


def test_failure_midway_keeps_previous_snapshot(engine: Engine, settings: Settings, tmp_path: Path) -> None:
    add_orders(engine, grid_orders(AS_OF))
    folder = tmp_path / "schemes"
    folder.mkdir()
    (folder / "broken_model.yaml").write_text(
        "kind: broken_model\nscores:\n  m: {method: quantile}\nsegments: [A]\n"
    )
    user = settings.model_copy(update={"schemes_dir": folder})
    register_assigner("broken_model", lambda ctx, metrics: metrics["customer_id"].map(lambda _: "A"))
    compute_snapshot(engine, user, AS_OF, "broken_model")
    good = rows(engine, "broken_model")
    assert len(good) == 25 and {r[-1] for r in good} == {"A"}
    # the assigner now fails after the old rows were deleted inside the transaction
    register_assigner("broken_model", lambda ctx, metrics: metrics["customer_id"].map(lambda _: "Z"))
    with pytest.raises(ConfigError, match=r"segments \['Z'\] not listed"):
        compute_snapshot(engine, user, AS_OF, "broken_model")
    assert rows(engine, "broken_model") == good
    assert count_runs(engine) == 1


def test_model_based_hook_writes_the_same_rows(engine: Engine, settings: Settings, tmp_path: Path) -> None:
    add_orders(engine, grid_orders(AS_OF))
    folder = tmp_path / "schemes"
    folder.mkdir()
    (folder / "halves.yaml").write_text(
        "kind: halves\nscores:\n  r: {method: quantile}\n  f: {method: quantile}\n  m: {method: quantile}\n"
        "segments: [Frequent, Rare]\nparams: {threshold: 3}\n"
    )
    user = settings.model_copy(update={"schemes_dir": folder})

    def halves(ctx, metrics: pd.DataFrame) -> pd.Series:
        ctx.notes.append("halves: split at frequency 3")
        ctx.info["threshold"] = ctx.scheme.params["threshold"]
        return metrics["frequency"].map(
            lambda f: "Frequent" if f >= ctx.scheme.params["threshold"] else "Rare"
        )

    register_assigner("halves", halves)
    result = compute_snapshot(engine, user, AS_OF, "halves")
    assert result.segments == {"Frequent": 15, "Rare": 10}
    assert "halves: split at frequency 3" in result.warnings
    assert result.cutpoints["model"] == {"threshold": 3}
    snap = {r[2]: r for r in rows(engine, "halves")}
    assert snap["g53"][6:] == (5, 3, 3, "Frequent")  # r, f, m scores from the same SQL, then the segment


def test_summary_and_latest(engine: Engine, settings: Settings) -> None:
    add_orders(engine, grid_orders(AS_OF))
    compute_snapshot(engine, settings, AS_OF, "rfm11")
    summary = segment_summary(engine, AS_OF, "rfm11", settings)
    assert list(summary.columns) == [
        "segment",
        "customers",
        "share",
        "recency_mean",
        "frequency_mean",
        "monetary_mean",
        "revenue",
    ]
    assert summary["segment"].tolist()[0] == "Champions"
    champions = summary.set_index("segment").loc["Champions"]
    assert champions.customers == 2 and champions.share == pytest.approx(2 / 25)
    assert champions.frequency_mean == pytest.approx(4.5) and champions.revenue == pytest.approx(90.0)
    assert summary["customers"].sum() == 25
    assert latest_snapshot_as_of(engine, "rfm11") == AS_OF
    assert latest_snapshot_as_of(engine, "rfm11", before=AS_OF) is None
    assert latest_snapshot_as_of(engine, "seed5") is None
    with pytest.raises(NotFoundError, match="no rfm11 snapshot as of 2024-03-31"):
        segment_summary(engine, date(2024, 3, 31), "rfm11")


def test_export_has_exactly_the_contract_columns(engine: Engine, settings: Settings, tmp_path: Path) -> None:
    add_orders(engine, grid_orders(AS_OF))
    compute_snapshot(engine, settings, AS_OF, "seed5")
    out = tmp_path / "out" / "seed5.csv"
    assert export_snapshot(engine, AS_OF, "seed5", out) == 25
    with out.open() as fh:
        reader = csv.reader(fh)
        header = next(reader)
        body = list(reader)
    assert header == EXPORT_COLUMNS
    assert header == "customer_id,recency_days,frequency,monetary,r_score,f_score,m_score,segment".split(",")
    assert len(body) == 25 and [r[0] for r in body] == sorted(r[0] for r in body)
    assert list(out.parent.iterdir()) == [out]  # no temporary file left
    with pytest.raises(NotFoundError):
        export_snapshot(engine, date(2020, 1, 1), "seed5", tmp_path / "new" / "none.csv")
    assert not (tmp_path / "new").exists()  # not even the folder


def test_export_monetary_has_no_floating_point_noise(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    add_orders(
        engine, [("c1", at("2024-03-01"), 0.1), ("c1", at("2024-03-02"), 0.2), ("c2", at("2024-03-03"), 5.0)]
    )
    compute_snapshot(engine, settings, AS_OF, "value_tier")
    out = tmp_path / "value_tier.csv"
    export_snapshot(engine, AS_OF, "value_tier", out)
    with out.open() as fh:
        rows = {r["customer_id"]: r for r in csv.DictReader(fh)}
    assert rows["c1"]["monetary"] == "0.3"  # 0.1 + 0.2 summed in floating point is 0.30000000000000004
    assert rows["c2"]["monetary"] == "5.0"


def test_migration_matrix_with_new_and_gone(engine: Engine, settings: Settings) -> None:
    q1, q2 = date(2024, 3, 31), date(2024, 6, 30)
    add_orders(
        engine,
        [
            ("stay", at("2024-03-30"), 10.0),
            ("stay", at("2024-06-29"), 10.0),
            ("gone", at("2024-01-05"), 10.0),  # outside a 90-day window at q2
            ("new", at("2024-05-01"), 10.0),
        ],
    )
    compute_snapshot(engine, settings, q1, "value_tier", lookback_days=90)
    compute_snapshot(engine, settings, q2, "value_tier", lookback_days=90)
    m = migration_matrix(engine, q1, q2, "value_tier")
    assert list(m.index) == ["High", "Mid", "Low", "new"]
    assert list(m.columns) == ["High", "Mid", "Low", "gone"]
    assert m.loc["new"].sum() == 1 and m["gone"].sum() == 1
    assert int(m.values.sum()) == 3
    with pytest.raises(NotFoundError):
        migration_matrix(engine, date(2023, 12, 31), q2, "value_tier")


# --- CLI ----------------------------------------------------------------------------------------


def test_cli_segment_export_migration(engine: Engine, settings: Settings, tmp_path: Path) -> None:
    rows_ = grid_orders(AS_OF) + [(f"once{i}", at(AS_OF - timedelta(days=i)), 5.0) for i in range(40)]
    rows_ += [("g11", at("2024-02-01"), 5.0), ("old", at("2024-01-15"), 5.0)]
    add_orders(engine, rows_)
    res = run_cli("segment", "--as-of", "2024-06-30")
    assert res.exit_code == 0, res.output
    assert "rfm11 as of 2024-06-30" in res.stdout and "Champions" in res.stdout and "share" in res.stdout
    assert "warning:" in res.stderr and "frequency" in res.stderr and "empty" in res.stderr
    res = run_cli("segment", "--as-of", "2024-03-31", "--scheme", "seed5", "--lookback-days", "400")
    assert res.exit_code == 0, res.output
    res = run_cli("segment", "--as-of", "2024-06-30", "--scheme", "seed5", "--lookback-days", "400")
    assert res.exit_code == 0, res.output
    out = tmp_path / "x.csv"
    res = run_cli("segments", "export", "--as-of", "2024-06-30", "--scheme", "seed5", "--out", str(out))
    assert res.exit_code == 0, res.output
    assert out.read_text().splitlines()[0] == ",".join(EXPORT_COLUMNS)
    mig = tmp_path / "m.csv"
    res = run_cli(
        "segments",
        "migration",
        "--from",
        "2024-03-31",
        "--to",
        "2024-06-30",
        "--scheme",
        "seed5",
        "--out",
        str(mig),
    )
    assert res.exit_code == 0, res.output
    frame = pd.read_csv(mig, index_col=0)
    assert "new" in frame.index and "gone" in frame.columns
    assert int(frame.values.sum()) == 66  # the union of both snapshots' customers


def test_cli_tables_never_cut_numbers_on_a_narrow_terminal(
    engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A log or a cron mail is 80 columns wide: segment names may wrap, numbers must stay whole."""
    import io

    from rich.console import Console

    from activation import console
    from segments.cli import migration_command, segment_command

    add_orders(engine, [(f"c{i}", at(AS_OF - timedelta(days=6 * i)), 123456.78) for i in range(30)])
    out = io.StringIO()
    monkeypatch.setattr(console, "out", Console(file=out, width=80))
    # called as functions, every option is passed (a typer default is an OptionInfo, which is truthy)
    flags = {"lookback_days": None, "allow_negative_amounts": False, "as_json": False}
    segment_command(as_of="2024-03-31", scheme="rfm11", **flags)
    segment_command(as_of="2024-06-30", scheme="rfm11", **flags)
    migration_command(from_as_of="2024-03-31", to_as_of="2024-06-30", scheme="rfm11", out=None, as_json=False)
    text = out.getvalue()
    assert "…" not in text
    for revenue in segment_summary(engine, AS_OF, "rfm11", settings)["revenue"]:
        assert f"{revenue:,.2f}" in text


def test_cli_bad_inputs(
    engine: Engine, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_orders(engine, grid_orders(AS_OF))
    res = run_cli("segment", "--as-of", "2024-06-30", "--scheme", "nope")
    assert res.exit_code == 2 and "unknown scheme 'nope'" in res.stderr and "fix:" in res.stderr
    res = run_cli("segment", "--as-of", "2020-01-01")
    assert res.exit_code == 2 and "before any data" in res.stderr and "2024-" in res.stderr
    res = run_cli("segment", "--as-of", "30/06/2024")
    assert res.exit_code == 2 and "not a date" in res.stderr
    folder = tmp_path / "schemes"
    folder.mkdir()
    (folder / "broken.yaml").write_text("scores:\n  r: {method: quantile\n")
    monkeypatch.setenv("ACTIVATION_SCHEMES_DIR", str(folder))
    res = run_cli("segment", "--as-of", "2024-06-30", "--scheme", "broken")
    assert res.exit_code == 2 and "broken.yaml:3" in res.stderr and "not valid YAML" in res.stderr
    res = run_cli(
        "segments", "export", "--as-of", "2024-06-30", "--scheme", "seed5", "--out", str(tmp_path / "a.csv")
    )
    assert res.exit_code == 2 and "no seed5 snapshot" in res.stderr
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(rfm_snapshots)).scalar_one() == 0


def test_cli_settings_from_the_environment(
    engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_orders(
        engine,
        [
            ("a", at("2024-06-01"), 10.0, "Completed"),
            ("a", at("2024-06-20"), 20.0, "Returned"),
            ("b", at("2022-01-01"), 5.0, "Completed"),  # older than the default 730-day lookback
        ],
    )

    def segment() -> dict[str, tuple]:
        res = run_cli("segment", "--as-of", "2024-06-30", "--scheme", "seed5")
        assert res.exit_code == 0, res.output
        return {r[2]: r[3:6] for r in rows(engine, "seed5")}

    # a comma-separated list, as the docs show, or JSON
    monkeypatch.setenv("ACTIVATION_EXCLUDED_STATUSES", "Cancelled, Refunded")
    monkeypatch.setenv("ACTIVATION_COUNTED_STATUSES", "Completed, Returned")
    assert segment() == {"a": (10, 2, 30.0)}
    monkeypatch.setenv("ACTIVATION_EXCLUDED_STATUSES", '["Returned"]')
    monkeypatch.setenv("ACTIVATION_COUNTED_STATUSES", '["completed"]')
    assert segment() == {"a": (29, 1, 10.0)}
    # null: all history
    monkeypatch.setenv("ACTIVATION_LOOKBACK_DAYS", "null")
    assert set(segment()) == {"a", "b"}
    # a value that is not a setting's type: a clear error naming the variable, nothing written
    monkeypatch.setenv("ACTIVATION_LOOKBACK_DAYS", "two years")
    res = run_cli("segment", "--as-of", "2024-03-31", "--scheme", "seed5")
    assert res.exit_code == 2, res.output
    assert "ACTIVATION_LOOKBACK_DAYS" in res.stderr and "'two years'" in res.stderr and "fix:" in res.stderr
    assert latest_snapshot_as_of(engine, "seed5", before=date(2024, 6, 30)) is None


def test_cli_unreachable_warehouse(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ACTIVATION_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("ACTIVATION_WAREHOUSE_URL", "postgresql+psycopg://nobody@127.0.0.1:1/none")
    res = run_cli("segment", "--as-of", "2024-06-30")
    assert res.exit_code == 2
    assert "cannot reach the warehouse" in res.stderr and "fix:" in res.stderr


def test_stale_data_and_future_as_of_warn(engine: Engine, settings: Settings) -> None:
    add_orders(engine, grid_orders(AS_OF))
    later = AS_OF + timedelta(days=60)
    result = compute_snapshot(engine, settings, later, "seed5", lookback_days=400)
    assert any("days after the newest counting order" in w for w in result.warnings)
    future = date.today() + timedelta(days=400)
    with pytest.raises(NotFoundError, match="no counting orders"):
        compute_snapshot(engine, settings, future, "seed5", lookback_days=30)
    result = compute_snapshot(engine, settings, future, "seed5", lookback_days=5000)
    assert any("in the future" in w for w in result.warnings)
    assert json.loads(json.dumps(result.cutpoints))  # JSON-serialisable as stored


def test_only_excluded_orders_is_a_clear_error(engine: Engine, settings: Settings) -> None:
    add_orders(engine, [("a", at("2024-06-01"), 5.0, "Cancelled")])
    unbounded = settings.model_copy(update={"lookback_days": None})
    with pytest.raises(NotFoundError, match="no counting orders .* the beginning to 2024-06-30") as err:
        compute_snapshot(engine, unbounded, AS_OF, "seed5")
    assert "cancelled" in err.value.message
    assert count_runs(engine) == 0
