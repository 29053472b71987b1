"""ROI per segment: the interval methods against published values and scipy, and the ROI table against
an independent pandas computation on DuckDB and PostgreSQL."""

from __future__ import annotations

import math
from datetime import datetime

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st
from sqlalchemy import select, update

from activation.errors import NotFoundError
from activation.tables import campaigns, destination_campaigns, rfm_snapshots
from outcomes.ledger import collect_outcomes
from outcomes.roi import CSV_COLUMNS, MIN_BUYERS, compute_roi, roi_markdown, roi_report_markdown, row_status
from outcomes.stats import (
    MeanStats,
    cuped_diff_intervals,
    holm_adjust,
    newcombe_diff_interval,
    randomisation_diff_interval,
    randomisation_p_value,
    two_proportion_p_value,
    welch_diff_interval,
    wilson_interval,
)
from tests.outcomes_fixtures import (
    AS_OF,
    PERCENT,
    SCHEME,
    build,
    expected_per_member,
    expected_per_segment,
    read_orders,
)

# Newcombe (1998), "Interval estimation for the difference between independent proportions: comparison of
# eleven methods", Statistics in Medicine 17:873-890, Table II, method 10 (hybrid score, no continuity
# correction), to 4 decimals.
NEWCOMBE_TABLE_II = [
    ((56, 70, 48, 80), (0.0524, 0.3339)),
    ((9, 10, 3, 10), (0.1705, 0.8090)),
    ((6, 7, 2, 7), (0.0582, 0.8062)),
    ((5, 56, 0, 29), (-0.0381, 0.1926)),
    ((0, 10, 0, 20), (-0.1611, 0.2775)),
    ((0, 10, 0, 10), (-0.2775, 0.2775)),
    ((10, 10, 0, 20), (0.6791, 1.0000)),
    ((10, 10, 0, 10), (0.6075, 1.0000)),
]


@pytest.mark.parametrize(("counts", "published"), NEWCOMBE_TABLE_II)
def test_newcombe_hybrid_score_interval_matches_the_published_table(counts, published):
    d, lo, hi = newcombe_diff_interval(*counts)
    assert d == pytest.approx(counts[0] / counts[1] - counts[2] / counts[3])
    assert round(lo, 4) == pytest.approx(published[0], abs=1e-4)
    assert round(hi, 4) == pytest.approx(published[1], abs=1e-4)


def test_wilson_interval_matches_the_published_example():
    # Newcombe (1998), "Two-sided confidence intervals for the single proportion", Stat Med 17:857-872:
    # 81/263 -> 0.2553 to 0.3662 (score method); 0/20 -> 0 to 0.1611
    lo, hi = wilson_interval(81, 263)
    assert (round(lo, 4), round(hi, 4)) == (0.2553, 0.3662)
    lo, hi = wilson_interval(0, 20)
    assert lo == 0 and round(hi, 4) == 0.1611
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    assert all(math.isnan(v) for v in newcombe_diff_interval(3, 10, 0, 0))


def test_welch_interval_matches_scipy():
    rng = np.random.default_rng(3)
    a = np.where(rng.random(400) < 0.3, rng.gamma(2.0, 60.0, 400), 0.0)
    b = np.where(rng.random(150) < 0.2, rng.gamma(2.0, 50.0, 150), 0.0)
    d, lo, hi = welch_diff_interval(
        MeanStats(len(a), float(a.sum()), float((a * a).sum())),
        MeanStats(len(b), float(b.sum()), float((b * b).sum())),
    )
    ref = st.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert d == pytest.approx(a.mean() - b.mean())
    assert lo == pytest.approx(ref.low, rel=1e-9) and hi == pytest.approx(ref.high, rel=1e-9)
    # degenerate groups
    assert welch_diff_interval(MeanStats(3, 0, 0), MeanStats(4, 0, 0)) == (0.0, 0.0, 0.0)
    d1, l1, h1 = welch_diff_interval(MeanStats(1, 5, 25), MeanStats(4, 4, 4))
    assert d1 == 4.0 and math.isnan(l1) and math.isnan(h1)


def test_roi_table_matches_pandas(engine, settings):
    fx = build(engine)
    df = compute_roi(engine, settings, AS_OF, SCHEME).set_index("segment")
    exp = expected_per_segment(expected_per_member(fx.members, read_orders(engine), percent=PERCENT))
    assert set(CSV_COLUMNS) <= set(df.reset_index().columns)
    for seg, e in exp.iterrows():
        r = df.loc[seg]
        assert r["treated"] == e["treated"] and r["holdout"] == e["holdout"]
        for col in ("treated_conversion_rate", "holdout_conversion_rate", "treated_revenue_per_member",
                    "holdout_revenue_per_member"):  # fmt: skip
            if math.isnan(e[col]):
                assert math.isnan(r[col])
            else:
                assert r[col] == pytest.approx(e[col], rel=1e-9, abs=1e-12), (seg, col)
        assert r["discount_redeemed"] == pytest.approx(e["discount_redeemed"], abs=1e-6)
        assert r["offer_cost"] == pytest.approx(e["discount_redeemed"], abs=1e-6)  # cost_per_send = 0
    risk = df.loc["At Risk"]
    d, lo, hi = newcombe_diff_interval(
        int(risk["treated_conversions"]),
        int(risk["treated"]),
        int(risk["holdout_conversions"]),
        int(risk["holdout"]),
    )
    assert (risk["incremental_conversion"], risk["incremental_conversion_ci_low"], risk["incremental_conversion_ci_high"]) == (
        pytest.approx(d), pytest.approx(lo), pytest.approx(hi))  # fmt: skip
    assert risk["status"] == "ok"
    assert risk["coupons_redeemed"] > 0
    assert df.attrs["backtest"] is True and df.attrs["window_days"] == 30


def test_roi_does_not_depend_on_collect_and_agrees_with_the_ledger(engine, settings):
    build(engine)
    before = compute_roi(engine, settings, AS_OF, SCHEME)
    collect_outcomes(engine, settings, AS_OF, SCHEME)
    after = compute_roi(engine, settings, AS_OF, SCHEME)
    cols = [
        "treated_conversions",
        "holdout_conversions",
        "treated_revenue",
        "holdout_revenue",
        "discount_redeemed",
    ]
    assert np.allclose(before[cols].to_numpy(float), after[cols].to_numpy(float))


def test_no_holdout_zero_members_and_small_groups(engine, settings):
    build(engine)
    df = compute_roi(engine, settings, AS_OF, SCHEME).set_index("segment")
    new = df.loc["New Customers"]
    assert new["status"] == "n/a (no holdout)" and new["holdout"] == 0
    for col in ("incremental_conversion", "incremental_conversion_ci_low", "incremental_revenue_per_member",
                "incremental_profit", "roi", "holdout_conversion_rate"):  # fmt: skip
        assert math.isnan(new[col]), col
    assert new["treated_conversion_rate"] > 0  # still reported
    lost = df.loc["Lost"]
    assert lost["status"] == "n/a (no members)" and lost["treated"] == 0 and lost["offer_cost"] == 0
    assert math.isnan(lost["treated_conversion_rate"])
    hib = df.loc["Hibernating"]
    assert hib["status"].startswith(f"inconclusive (group < {settings.min_group_size}")
    assert not math.isnan(hib["incremental_conversion_ci_low"])
    notes = " ".join(df.attrs["notes"])
    assert "'New Customers' has no holdout" in notes and "'Lost' has no members" in notes
    assert "'Hibernating'" in notes and "inconclusive" in notes


def test_offer_cost_profit_and_roi_follow_their_definitions(engine, settings):
    build(engine)
    settings = settings.model_copy(update={"cost_per_send": 0.05, "gross_margin": 0.3})
    df = compute_roi(engine, settings, AS_OF, SCHEME).set_index("segment")
    for seg in ("At Risk", "Champions"):
        r = df.loc[seg]
        assert r["send_cost"] == pytest.approx(0.05 * r["treated"])
        assert r["offer_cost"] == pytest.approx(r["discount_redeemed"] + 0.05 * r["treated"])
        inc = r["treated_revenue_per_member"] - r["holdout_revenue_per_member"]
        assert r["incremental_revenue_per_member"] == pytest.approx(inc)
        assert r["incremental_profit"] == pytest.approx(inc * r["treated"] * 0.3 - r["offer_cost"])
        assert r["roi"] == pytest.approx(r["incremental_profit"] / r["offer_cost"])
    assert df.loc["Champions", "discount_redeemed"] == 0  # early access has no coupon
    free = compute_roi(engine, settings.model_copy(update={"cost_per_send": 0.0}), AS_OF, SCHEME).set_index(
        "segment"
    )
    assert math.isnan(free.loc["Champions", "roi"])  # no cost: ROI is n/a, profit still shown
    assert not math.isnan(free.loc["Champions", "incremental_profit"])


def test_window_override_and_send_time(engine, settings):
    fx = build(engine)
    short = compute_roi(engine, settings, AS_OF, SCHEME, window_days=7).set_index("segment")
    exp = expected_per_segment(
        expected_per_member(fx.members, read_orders(engine), window_days=7, percent=PERCENT)
    )
    assert short.loc["At Risk", "treated_conversion_rate"] == pytest.approx(
        exp.loc["At Risk", "treated_conversion_rate"]
    )
    assert short.attrs["window_days"] == 7
    send = datetime(2024, 4, 3, 12, 0)
    with engine.begin() as conn:
        conn.execute(update(campaigns).values(send_time=send))
        conn.execute(destination_campaigns.insert().values(
            destination="mailchimp", campaign_id=fx.campaign_ids["At Risk"], remote_id="r1", status="sent",
            sent_at=send, updated_at=send))  # fmt: skip
    real = compute_roi(engine, settings, AS_OF, SCHEME).set_index("segment")
    exp2 = expected_per_segment(
        expected_per_member(fx.members, read_orders(engine), start=send, percent=PERCENT)
    )
    assert real.loc["Champions", "holdout_revenue_per_member"] == pytest.approx(
        exp2.loc["Champions", "holdout_revenue_per_member"]
    )
    assert real.attrs["backtest"] is False


def test_markdown_for_the_artifact(engine, settings):
    build(engine)
    md = roi_report_markdown(engine, settings, AS_OF, SCHEME)
    assert md.startswith("## Segment ROI")
    assert "Backtest" in md and "no treatment effect by construction" in md
    assert "| New Customers |" in md and "n/a (no holdout)" in md
    assert md.count("\n|") >= 2 + 5
    assert (
        "Newcombe" in md
        and "randomisation" in md
        and "| Newcombe hybrid score / randomisation (pooled t) |" in md
    )
    assert roi_markdown(compute_roi(engine, settings, AS_OF, SCHEME)) == md.replace(md, roi_markdown(
        compute_roi(engine, settings, AS_OF, SCHEME)))  # fmt: skip


def test_no_campaign_raises(engine, settings):
    build(engine)
    with pytest.raises(NotFoundError, match="no campaign for as_of 2019-01-01"):
        compute_roi(engine, settings, datetime(2019, 1, 1).date(), SCHEME)


def test_randomisation_interval_is_the_pooled_t_interval_of_scipy():
    rng = np.random.default_rng(5)
    a = np.where(rng.random(900) < 0.06, rng.lognormal(3.5, 1.3, 900), 0.0)
    b = np.where(rng.random(100) < 0.06, rng.lognormal(3.5, 1.3, 100), 0.0)
    d, lo, hi = randomisation_diff_interval(
        MeanStats(len(a), float(a.sum()), float((a * a).sum())),
        MeanStats(len(b), float(b.sum()), float((b * b).sum())),
    )
    ref = st.ttest_ind(a, b, equal_var=True).confidence_interval(0.95)
    assert d == pytest.approx(a.mean() - b.mean())
    assert lo == pytest.approx(ref.low, rel=1e-9) and hi == pytest.approx(ref.high, rel=1e-9)
    # an all-zero holdout does not collapse the interval to the treated group's spread
    zero = MeanStats(100, 0.0, 0.0)
    _, wl, wh = welch_diff_interval(MeanStats(len(a), float(a.sum()), float((a * a).sum())), zero)
    _, rl, rh = randomisation_diff_interval(MeanStats(len(a), float(a.sum()), float((a * a).sum())), zero)
    assert rh - rl > wh - wl
    assert all(math.isnan(v) for v in randomisation_diff_interval(MeanStats(0, 0, 0), zero))


def test_status_names_why_a_row_is_inconclusive(settings):
    assert row_status(settings, 900, 100, 60, 7) == "ok"
    assert row_status(settings, 900, 100, 60, 0) == "inconclusive (no buyer in the holdout group)"
    assert row_status(settings, 900, 100, 0, 60) == "inconclusive (no buyer in the treated group)"
    few = row_status(settings, 900, 100, 20, 2)
    assert few == f"inconclusive (2.2 buyers expected in the smaller group < {MIN_BUYERS})"
    assert row_status(settings, 90, 10, 50, 5) == "inconclusive (group < 100)"
    assert row_status(settings, 0, 0, 0, 0) == "n/a (no members)"
    assert row_status(settings, 10, 0, 1, 0) == "n/a (no holdout)"


def test_cuped_interval_is_the_ancova_treatment_coefficient():
    """CUPED with θ fitted within groups is OLS of y on (1, treated, x): same estimate, same standard
    error, n − 2 − k degrees of freedom."""
    rng = np.random.default_rng(11)
    n = 1200
    x = np.column_stack([rng.exponential(100, n), np.log1p(rng.geometric(0.4, n)), rng.normal(4, 1, n)])
    treated = rng.random(n) < 0.8
    y = (
        np.where(rng.random(n) < 0.1 + 0.02 * x[:, 1], np.exp(1 + 0.5 * x[:, 2] + rng.normal(0, 1, n)), 0.0)
        + 3 * treated
    )

    def sums(mask):
        xm, ym = x[mask], y[mask]
        return mask.sum(), ym.sum(), (ym * ym).sum(), xm.sum(0), (xm * ym[:, None]).sum(0), xm.T @ xm

    d, lo, hi, red = cuped_diff_intervals(*sums(treated), *sums(~treated))
    design = np.column_stack([np.ones(n), treated, x])
    beta, rss, *_ = np.linalg.lstsq(design, y, rcond=None)
    dof = n - 2 - x.shape[1]
    se = math.sqrt(rss[0] / dof * np.linalg.inv(design.T @ design)[1, 1])
    q = st.t.ppf(0.975, dof)
    assert float(d) == pytest.approx(beta[1], rel=1e-9)
    assert float(lo) == pytest.approx(beta[1] - q * se, rel=1e-8) and float(hi) == pytest.approx(
        beta[1] + q * se, rel=1e-8
    )
    within = sum(((y[m] - y[m].mean()) ** 2).sum() for m in (treated, ~treated)) / (n - 2)
    assert float(red) == pytest.approx(1 - rss[0] / dof / within, rel=1e-9)
    assert 0 < float(red) < 1


def test_cuped_columns_match_ols_on_the_members_and_their_snapshot(engine, settings):
    """The warehouse's covariate sums give the same CUPED lift as an OLS on per-member data computed in
    pandas from the members, their orders and their snapshot row."""
    fx = build(engine)
    df = compute_roi(engine, settings, AS_OF, SCHEME).set_index("segment")
    per = expected_per_member(fx.members, read_orders(engine), percent=PERCENT)
    with engine.connect() as conn:
        snap = pd.read_sql(select(rfm_snapshots).where(rfm_snapshots.c.as_of == AS_OF), conn)
    per = per.merge(snap[["customer_id", "recency_days", "frequency", "monetary"]], on="customer_id")
    seg = per[per["segment"] == "At Risk"]
    treated = (seg["member_group"] == "treatment").to_numpy(float)
    x = np.column_stack([seg["recency_days"], np.log1p(seg["frequency"]), np.log1p(seg["monetary"])]).astype(
        float
    )
    y = seg["revenue"].fillna(0.0).to_numpy(float)
    design = np.column_stack([np.ones(len(y)), treated, x])
    beta, *_ = np.linalg.lstsq(design, y, rcond=None)
    row = df.loc["At Risk"]
    assert row["cuped_incremental_revenue_per_member"] == pytest.approx(beta[1], rel=1e-6)
    assert (
        row["cuped_incremental_revenue_per_member_ci_low"]
        < beta[1]
        < row["cuped_incremental_revenue_per_member_ci_high"]
    )
    assert row["cuped_incremental_profit"] == pytest.approx(
        beta[1] * row["treated"] * settings.gross_margin - row["offer_cost"], rel=1e-6
    )
    assert -1 < row["cuped_revenue_variance_reduction"] < 1


def test_holm_adjustment_matches_the_worked_definition():
    # Holm (1979): sorted p (0.01, 0.02, 0.03, 0.04) with m = 4 -> 0.04, 0.06, 0.06, 0.06 (running max)
    assert holm_adjust([0.03, 0.01, math.nan, 0.04, 0.02]) == pytest.approx(
        [0.06, 0.04, math.nan, 0.06, 0.06], nan_ok=True
    )
    assert holm_adjust([0.5, 0.9]) == [1.0, 1.0]
    # the p-values are the tests the intervals invert: at the 5 % boundary they agree
    rng = np.random.default_rng(2)
    a = np.where(rng.random(800) < 0.1, rng.lognormal(3, 1, 800), 0.0)
    b = np.where(rng.random(200) < 0.1, rng.lognormal(3, 1, 200), 0.0) + 0.0
    sa = MeanStats(800, float(a.sum()), float((a * a).sum()))
    sb = MeanStats(200, float(b.sum()), float((b * b).sum()))
    assert randomisation_p_value(sa, sb) == pytest.approx(st.ttest_ind(a, b, equal_var=True).pvalue, rel=1e-9)
    conv = st.chi2_contingency([[30, 70], [12, 88]], correction=False).pvalue
    assert two_proportion_p_value(30, 100, 12, 100) == pytest.approx(conv, rel=1e-9)


def test_report_rows_carry_holm_adjusted_significance(engine, settings):
    build(engine)
    df = compute_roi(engine, settings, AS_OF, SCHEME)
    lifted = df[df["conversion_p_value"].notna()]
    m = len(lifted)
    assert m >= 2
    smallest = lifted["conversion_p_value"].idxmin()
    assert df.loc[smallest, "conversion_p_holm"] == pytest.approx(
        min(1.0, m * df.loc[smallest, "conversion_p_value"])
    )
    assert (lifted["conversion_p_holm"] >= lifted["conversion_p_value"] - 1e-15).all()
    assert not df.loc[df["status"] != "ok", "conversion_significant_holm"].any()
    assert "Holm" in roi_markdown(df)
