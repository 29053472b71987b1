"""RFM semantics and scores, pushed down, on DuckDB and PostgreSQL: hand-computed fixtures, every rfm11
cell, ties, as-of and lookback boundaries, statuses, and a property check against pandas."""

from __future__ import annotations

import json
import random
from datetime import date, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine

from activation.settings import Settings
from activation.tables import rfm_snapshots, snapshot_runs
from segments.schemes import LOWER_IS_BETTER, load_scheme
from segments.snapshots import compute_snapshot
from tests.rfm_fixtures import add_events, add_orders, at, grid_orders

AS_OF = date(2024, 6, 30)


def snapshot(engine: Engine, scheme: str = "rfm11", as_of: date = AS_OF) -> pd.DataFrame:
    s = rfm_snapshots.c
    with engine.connect() as conn:
        rows = conn.execute(
            select(rfm_snapshots).where((s.as_of == as_of) & (s.scheme == scheme)).order_by(s.customer_id)
        ).mappings()
        frame = pd.DataFrame([dict(r) for r in rows])
    return frame.set_index("customer_id") if not frame.empty else frame


def run_row(engine: Engine, scheme: str = "rfm11", as_of: date = AS_OF) -> dict:
    with engine.connect() as conn:
        row = (
            conn.execute(
                select(snapshot_runs).where(
                    (snapshot_runs.c.as_of == as_of) & (snapshot_runs.c.scheme == scheme)
                )
            )
            .mappings()
            .one()
        )
    return {**row, "cutpoints": json.loads(row["cutpoints"]), "warnings": json.loads(row["warnings"])}


def test_hand_computed_metrics_and_scores(engine: Engine, settings: Settings) -> None:
    # five customers, one per quintile of every metric
    add_orders(
        engine,
        [
            ("a", at("2024-06-30", 9), 500.0),  # R 0 days, F 1
            ("b", at("2024-06-20"), 40.0),
            ("b", at("2024-06-25"), 60.0),  # R 5, F 2, M 100
            ("c", at("2024-05-01"), 10.0),
            ("c", at("2024-05-31"), 10.0),
            ("c", at("2024-06-10"), 10.0),  # R 20, F 3, M 30
            ("d", at("2024-03-01"), 1.0),
            ("d", at("2024-03-02"), 1.0),
            ("d", at("2024-03-03"), 1.0),
            ("d", at("2024-04-01"), 1.0),  # R 90, F 4, M 4
            *[("e", at("2023-01-01") + timedelta(days=i), 250.0) for i in range(5)],  # R 542, F 5, M 1250
        ],
    )
    result = compute_snapshot(engine, settings, AS_OF, "rfm11")
    snap = snapshot(engine)
    assert list(snap.index) == ["a", "b", "c", "d", "e"]
    assert snap["recency_days"].tolist() == [0, 5, 20, 90, 542]
    assert snap["frequency"].tolist() == [1, 2, 3, 4, 5]
    assert snap["monetary"].tolist() == pytest.approx([500.0, 100.0, 30.0, 4.0, 1250.0])
    assert snap["r_score"].tolist() == [5, 4, 3, 2, 1]
    assert snap["f_score"].tolist() == [1, 2, 3, 4, 5]
    assert snap["m_score"].tolist() == [4, 3, 2, 1, 5]
    # R5 F1 New, R4 F2 Potential Loyalists, R3 F3 Need Attention, R2 F4 At Risk, R1 F5 Can't Lose Them
    assert snap["segment"].tolist() == [
        "New Customers",
        "Potential Loyalists",
        "Need Attention",
        "At Risk",
        "Can't Lose Them",
    ]
    assert result.customers == 5 and result.warnings == []
    cuts = run_row(engine)["cutpoints"]
    assert cuts["f"]["thresholds"] == [1, 2, 3, 4]
    assert cuts["r"]["thresholds"] == [542, 90, 20, 5]  # recency: cut-points on the descending order
    assert cuts["m"]["thresholds"] == [4, 30, 100, 500]


def test_every_rfm11_cell(engine: Engine, settings: Settings) -> None:
    from tests.segments.test_schemes import RFM11_GRID

    add_orders(engine, grid_orders(AS_OF))
    compute_snapshot(engine, settings, AS_OF, "rfm11")
    snap = snapshot(engine)
    assert len(snap) == 25
    for (r, f), segment in RFM11_GRID.items():
        row = snap.loc[f"g{r}{f}"]
        assert (row.r_score, row.f_score) == (r, f)
        assert row.segment == segment, (r, f)


def test_ties_get_equal_scores_and_collapsed_bins_are_recorded(engine: Engine, settings: Settings) -> None:
    # 10 customers: 7 bought once, 2 twice, 1 three times; identical twins x1/x2
    rows = [(f"one{i}", at("2024-06-01") - timedelta(days=i), 20.0) for i in range(5)]
    rows += [("x1", at("2024-05-01"), 20.0), ("x2", at("2024-05-01"), 20.0)]
    rows += [(c, at(d), 30.0) for c in ("two1", "two2") for d in ("2024-01-10", "2024-02-10")]
    rows += [("three", at(d), 50.0) for d in ("2024-01-01", "2024-03-01", "2024-06-29")]
    add_orders(engine, rows)
    result = compute_snapshot(engine, settings, AS_OF, "rfm11")
    snap = snapshot(engine)
    assert (
        snap.loc["x1", ["r_score", "f_score", "m_score", "segment"]].tolist()
        == snap.loc["x2", ["r_score", "f_score", "m_score", "segment"]].tolist()
    )
    # F cut-points 1, 1, 1, 2: F=1 -> 1, F=2 -> 4 (reaches the 4th quintile), F=3 -> 5; 2 and 3 skipped
    cuts = run_row(engine)["cutpoints"]["f"]
    assert cuts["thresholds"] == [1, 1, 1, 2]
    assert cuts["empty_scores"] == [2, 3]
    assert snap.groupby("frequency")["f_score"].unique().map(list).to_dict() == {1: [1], 2: [4], 3: [5]}
    assert any("frequency: score(s) 2, 3 of 1..5 are empty" in w for w in result.warnings)
    assert any("Need Attention" in w and "cannot get any customer" in w for w in result.warnings)
    assert run_row(engine)["warnings"] == result.warnings


def test_scores_monotonic_in_each_metric(engine: Engine, settings: Settings) -> None:
    rng = random.Random(3)
    add_orders(
        engine,
        [
            (
                f"c{rng.randint(1, 40)}",
                at("2024-01-01") + timedelta(days=rng.randint(0, 181)),
                rng.choice([5.0, 10.0, 99.0]),
            )
            for _ in range(150)
        ],
    )
    compute_snapshot(engine, settings, AS_OF, "quartile9")
    snap = snapshot(engine, "quartile9")
    for metric, score, lower in (
        ("recency_days", "r_score", True),
        ("frequency", "f_score", False),
        ("monetary", "m_score", False),
    ):
        ordered = snap.sort_values(metric, ascending=not lower)[score].tolist()
        assert ordered == sorted(ordered), metric


def test_as_of_is_a_whole_day(engine: Engine, settings: Settings) -> None:
    add_orders(
        engine,
        [
            ("late", at("2024-06-30", 23, 59, 59), 10.0),
            ("late", at("2024-07-01", 0, 0, 0), 999.0),  # the next day: invisible
            ("next", at("2024-07-01", 0, 0, 0), 50.0),
            ("early", at("2024-06-01"), 10.0),
        ],
    )
    compute_snapshot(engine, settings, AS_OF, "seed5")
    snap = snapshot(engine, "seed5")
    assert sorted(snap.index) == ["early", "late"]
    assert snap.loc["late", "recency_days"] == 0
    assert snap.loc["late", "frequency"] == 1
    assert snap.loc["late", "monetary"] == pytest.approx(10.0)


def test_lookback_window_edge(engine: Engine, settings: Settings) -> None:
    # lookback 10 days ending 2024-06-30: 06-21 00:00 is the first counting moment
    add_orders(
        engine,
        [
            ("in", at("2024-06-21", 0, 0, 0), 10.0),
            ("out", at("2024-06-20", 23, 59, 59), 10.0),
            ("both", at("2024-06-20", 12), 10.0),
            ("both", at("2024-06-25", 12), 20.0),
        ],
    )
    result = compute_snapshot(engine, settings, AS_OF, "seed5", lookback_days=10)
    snap = snapshot(engine, "seed5")
    assert sorted(snap.index) == ["both", "in"]
    assert snap.loc["in", "recency_days"] == 9
    assert snap.loc["both", "frequency"] == 1 and snap.loc["both", "monetary"] == pytest.approx(20.0)
    assert result.lookback_days == 10 and run_row(engine, "seed5")["lookback_days"] == 10
    # the settings default applies without the flag; None there means all history
    unbounded = settings.model_copy(update={"lookback_days": None})
    compute_snapshot(engine, unbounded, AS_OF, "seed5")
    assert sorted(snapshot(engine, "seed5").index) == ["both", "in", "out"]


def test_excluded_statuses(engine: Engine, settings: Settings) -> None:
    add_orders(
        engine,
        [
            ("a", at("2024-06-01"), 10.0, "Completed"),
            ("a", at("2024-06-02"), 500.0, "Cancelled"),
            ("a", at("2024-06-29"), 70.0, "Returned"),
            ("a", at("2024-06-03"), 5.0, None),  # no status: counts
            ("gone", at("2024-06-01"), 10.0, "Cancelled"),
        ],
    )
    compute_snapshot(engine, settings, AS_OF, "seed5")
    snap = snapshot(engine, "seed5")
    assert list(snap.index) == ["a"]
    assert snap.loc["a", "frequency"] == 2
    assert snap.loc["a", "monetary"] == pytest.approx(15.0)
    assert snap.loc["a", "recency_days"] == 27
    # a status moved out of the excluded list must be placed in the counted one (unknown statuses block)
    only_cancelled = settings.model_copy(
        update={"excluded_statuses": ["Cancelled"], "counted_statuses": ["completed", "returned"]}
    )
    compute_snapshot(engine, only_cancelled, AS_OF, "seed5")
    snap = snapshot(engine, "seed5")
    assert snap.loc["a", "frequency"] == 3 and snap.loc["a", "recency_days"] == 1


def test_mean_split_vip_fm(engine: Engine, settings: Settings) -> None:
    # F mean 2, M mean 100: v3 above both, v2 M above only, v1 F above only, v0 neither (equal to mean = below)
    add_orders(
        engine,
        [
            *[("v3", at("2024-06-01") + timedelta(days=i), 60.0) for i in range(3)],  # F3 M180
            ("v2", at("2024-06-01"), 150.0),  # F1 M150
            *[("v1", at("2024-06-01") + timedelta(days=i), 10.0) for i in range(3)],  # F3 M30
            ("v0", at("2024-06-01"), 30.0),
            ("v0", at("2024-06-02"), 10.0),  # F2 (= mean) M40
        ],
    )
    compute_snapshot(engine, settings, AS_OF, "vip_fm")
    snap = snapshot(engine, "vip_fm")
    assert snap["segment"].to_dict() == {"v0": "VIP0", "v1": "VIP1", "v2": "VIP2", "v3": "VIP3"}
    assert set(snap["r_score"]) == {0}  # not scored by this scheme
    cuts = run_row(engine, "vip_fm")["cutpoints"]
    assert cuts["f"]["thresholds"] == [2.25] and cuts["m"]["thresholds"] == pytest.approx([100.0])


def test_value_tier_tertiles(engine: Engine, settings: Settings) -> None:
    add_orders(engine, [(f"c{i}", at("2024-06-01"), float(i * 10)) for i in range(1, 10)])
    compute_snapshot(engine, settings, AS_OF, "value_tier")
    snap = snapshot(engine, "value_tier")
    assert snap["segment"].to_dict() == {
        **{f"c{i}": "Low" for i in (1, 2, 3)},
        **{f"c{i}": "Mid" for i in (4, 5, 6)},
        **{f"c{i}": "High" for i in (7, 8, 9)},
    }
    assert set(snap["f_score"]) == {0} and set(snap["r_score"]) == {0}


def test_contact_bands_from_contact_events(engine: Engine, settings: Settings) -> None:
    events = [("one", at("2024-06-01"))]
    events += [("two", at("2024-05-01")), ("two", at("2024-06-10"))]
    events += [("three", at("2024-05-01"))] * 3
    events += [("four", at("2024-04-01"))] * 4 + [("five", at("2024-06-30", 23))] * 5
    events += [("later", at("2024-07-01"))]
    add_events(engine, events)
    compute_snapshot(engine, settings, AS_OF, "contact_bands")
    snap = snapshot(engine, "contact_bands")
    assert snap["segment"].to_dict() == {
        "one": "1 contact",
        "two": "2-3 contacts",
        "three": "2-3 contacts",
        "four": "4+ contacts",
        "five": "4+ contacts",
    }
    assert snap.loc["two", "recency_days"] == 20
    assert set(snap["monetary"]) == {0.0} and set(snap["m_score"]) == {0}


# --- property check against an independent pandas computation ------------------------------------


def pandas_reference(
    orders: pd.DataFrame, scheme_name: str, as_of: date, lookback: int, excluded: list[str]
) -> pd.DataFrame:
    """RFM as the docs describe it, computed in pandas from the raw orders."""
    scheme = load_scheme(scheme_name)
    end = pd.Timestamp(as_of) + pd.Timedelta(days=1)
    o = orders[(orders.ordered_at < end) & (orders.ordered_at >= end - pd.Timedelta(days=lookback))]
    o = o[~o.status.str.strip().str.lower().isin([e.lower() for e in excluded])]
    g = o.groupby("customer_id").agg(
        last=("ordered_at", "max"), frequency=("order_id", "nunique"), monetary=("amount", "sum")
    )
    g["recency_days"] = (pd.Timestamp(as_of) - g["last"].dt.normalize()).dt.days
    cols = {"r": "recency_days", "f": "frequency", "m": "monetary"}
    for m in ("r", "f", "m"):
        bins = scheme.scores.get(m)
        x = g[cols[m]].to_numpy(dtype=float)
        if bins is None:
            g[f"{m}_score"] = 0
            continue
        lower = m in LOWER_IS_BETTER
        if bins.method == "quantile":
            ordered = np.sort(x)[::-1] if lower else np.sort(x)
            n = len(ordered)
            cuts = [ordered[max(-(-k * n // bins.n), 1) - 1] for k in range(1, bins.n)]  # position ceil(kN/n)
            passed = [sum(c > v for c in cuts) if lower else sum(c < v for c in cuts) for v in x]
        elif bins.method == "mean":
            mean = x.mean()
            passed = [int(v < mean) if lower else int(v > mean) for v in x]
        else:
            passed = [sum(e > v for e in bins.edges) if lower else sum(e <= v for e in bins.edges) for v in x]
        g[f"{m}_score"] = [1 + p for p in passed]
    g["segment"] = [
        scheme.assign({m: int(row[f"{m}_score"]) for m in scheme.scores}) for _, row in g.iterrows()
    ]
    return g


@pytest.mark.parametrize("seed", [1, 2])
def test_matches_independent_pandas_computation(engine: Engine, settings: Settings, seed: int) -> None:
    rng = random.Random(seed)
    rows = []
    start = datetime(2023, 3, 1)
    for i in range(600):
        cust = f"c{int(rng.paretovariate(1.2)) % 150:03d}"
        ts = start + timedelta(minutes=rng.randint(0, 500 * 24 * 60))
        amount = rng.choice([9.99, 19.99, 49.0, round(rng.uniform(1, 300), 2)])
        status = rng.choice(["Completed"] * 8 + ["Cancelled", "Returned", None])
        rows.append((cust, ts, amount, status, f"o{seed}-{i}"))
    add_orders(engine, rows)
    orders = pd.DataFrame(rows, columns=["customer_id", "ordered_at", "amount", "status", "order_id"])
    for scheme in ("rfm11", "seed5", "quartile9", "vip_fm", "value_tier"):
        for lookback in (365, 90):
            compute_snapshot(engine, settings, AS_OF, scheme, lookback_days=lookback)
            got = snapshot(engine, scheme)
            want = pandas_reference(orders, scheme, AS_OF, lookback, settings.excluded_statuses)
            assert sorted(got.index) == sorted(want.index), (scheme, lookback)
            want = want.loc[got.index]
            for col in ("recency_days", "frequency", "r_score", "f_score", "m_score", "segment"):
                assert got[col].tolist() == want[col].tolist(), (scheme, lookback, col)
            assert got["monetary"].tolist() == pytest.approx(want["monetary"].tolist())
