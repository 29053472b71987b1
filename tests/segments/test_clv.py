"""Predicted CLV: features in SQL, JSON model, backtest vs naive baselines, the clv_tier scheme."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import func, select

from activation.errors import InputError, NotFoundError
from activation.tables import clv_models, rfm_snapshots, snapshot_runs
from activation.tables import orders as orders_table
from segments.clv import (
    FEATURES,
    btyd,
    data_range,
    evaluate,
    fit_clv,
    latest_model,
    load_features,
    predict_customers,
    season,
    tiers,
)
from segments.clv import features as clv_features
from segments.clv import fit as clv_fit
from segments.clv import model as clv_model
from segments.clv.features import load_feature_sets
from segments.clv.metrics import rfm11_segments
from segments.kmeans import quantile_scores
from segments.schemes import load_scheme
from segments.snapshots import compute_snapshot
from tests.cli_helpers import run_cli
from tests.model_data import latent_orders, load_orders

TRAIN_UNTIL = date(2023, 9, 30)
AS_OF = date(2023, 12, 31)


def _count(engine, table):
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar_one()


# --- BG/NBD + Gamma-Gamma -------------------------------------------------------------------------


#: lifetimes 0.11.3 (2020) sets a pandas option that pandas 3 deprecates when it is imported, and uses
#: APIs newer numpy and scipy warn about; it is the reference, not the project's code.
LIFETIMES_WARNINGS = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::pandas.errors.Pandas4Warning"
)


def _cdnow():
    """The CDNOW sample summary (2,357 customers, weeks) that lifetimes ships and both papers use."""
    from lifetimes.datasets import load_cdnow_summary_data_with_monetary_value

    d = load_cdnow_summary_data_with_monetary_value()
    return tuple(d[c].to_numpy(dtype=float) for c in ("frequency", "recency", "T", "monetary_value"))


def _sig3(value: float) -> str:
    return f"{value:.3g}"


@LIFETIMES_WARNINGS
def test_bgnbd_and_gamma_gamma_match_lifetimes_and_the_papers_on_cdnow():
    from lifetimes import BetaGeoFitter, GammaGammaFitter

    x, t_x, big_t, m = _cdnow()
    bg = btyd.fit_bgnbd(x, t_x, big_t)
    ref = BetaGeoFitter().fit(x, t_x, big_t)
    for name in btyd.BGNBD_PARAMS:
        assert _sig3(bg.params[name]) == _sig3(ref.params_[name]), name
        assert _sig3(bg.standard_errors[name]) == _sig3(ref.standard_errors_[name]), name
    # Fader, Hardie & Lee (2005), table 1
    assert {k: round(v, 3) for k, v in bg.params.items()} == {
        "r": 0.243,
        "alpha": 4.414,
        "a": 0.793,
        "b": 2.426,
    }
    assert bg.log_likelihood == pytest.approx(-9582.4, abs=0.05)
    gg = btyd.fit_gamma_gamma(x, m)
    ref_gg = GammaGammaFitter().fit(x[x > 0], m[x > 0])
    ref_gg_errors = ref_gg._compute_standard_errors()  # lifetimes 0.11.3 exposes them only this way
    for name in btyd.GAMMA_GAMMA_PARAMS:
        assert _sig3(gg.params[name]) == _sig3(ref_gg.params_[name]), name
        assert _sig3(gg.standard_errors[name]) == _sig3(ref_gg_errors[name]), name
    # Fader & Hardie (2013): p = 6.25, q = 3.74, gamma = 15.44
    assert (_sig3(gg.params["p"]), _sig3(gg.params["q"]), round(gg.params["v"], 1)) == ("6.25", "3.74", 15.4)
    ours = btyd.expected_purchases(bg.params, 39.0, x, t_x, big_t)
    theirs = ref.conditional_expected_number_of_purchases_up_to_time(39, x, t_x, big_t)
    assert np.allclose(ours, theirs, rtol=1e-3)
    assert np.allclose(
        btyd.p_alive(bg.params, x, t_x, big_t), ref.conditional_probability_alive(x, t_x, big_t), rtol=1e-3
    )
    value = btyd.expected_order_value(gg.params, x, m)
    assert np.allclose(value, ref_gg.conditional_expected_average_profit(x, m), rtol=1e-3)


def test_expected_purchases_where_the_series_diverges_equals_the_integral():
    """a + b + x <= 1 (seen on real data): the closed form's series does not converge; the quadrature
    fallback must give E[X(t)] = E_p[(1 - (1 + p t / (alpha + T))^-(r + x)) / p] * P(alive)."""
    from scipy.integrate import quad
    from scipy.stats import beta

    params = {"r": 0.42, "alpha": 23.8, "a": 0.036, "b": 0.80}
    x, t_x, big_t = np.array([0.0, 0.0, 2.0]), np.array([0.0, 0.0, 40.0]), np.array([5.0, 190.0, 100.0])
    got = btyd.expected_purchases(params, 90.0, x, t_x, big_t)
    alive = btyd.p_alive(params, x, t_x, big_t)
    for i in range(3):
        k, s = 90.0 / (params["alpha"] + big_t[i]), params["r"] + x[i]
        pdf = beta(params["a"], params["b"] + x[i]).pdf

        def integrand(p, k=k, s=s, pdf=pdf):
            return -np.expm1(-s * np.log1p(p * k)) / p * pdf(p)

        want, _ = quad(integrand, 0, 1, limit=200)
        assert got[i] == pytest.approx(want * alive[i], rel=1e-6)


TRUE_BGNBD = {"r": 0.6, "alpha": 40.0, "a": 0.8, "b": 2.5}
TRUE_GAMMA_GAMMA = {"p": 4.0, "q": 3.5, "v": 60.0}


def _simulated_fits(customers: int, seed: int) -> tuple[btyd.Fit, btyd.Fit]:
    """BG/NBD and Gamma-Gamma fitted on ``customers`` drawn from :data:`TRUE_BGNBD` and
    :data:`TRUE_GAMMA_GAMMA` (exact times in days, ages 60..730), each with x + 1 orders of Gamma(p, nu)."""
    rng = np.random.default_rng(seed)
    ages = rng.uniform(60, 730, customers)
    customer, when, nu = btyd.simulate(TRUE_BGNBD, TRUE_GAMMA_GAMMA, ages, seed=seed + 1000)
    x = np.bincount(customer, minlength=customers).astype(float)
    t_x = np.zeros(customers)
    np.maximum.at(t_x, customer, when)
    orders = (x + 1).astype(int)
    who = np.repeat(np.arange(customers), orders)
    values = rng.gamma(TRUE_GAMMA_GAMMA["p"], 1.0, len(who)) / nu[who]
    mean_value = np.bincount(who, weights=values, minlength=customers) / orders
    return btyd.fit_bgnbd(x, t_x, ages), btyd.fit_gamma_gamma(orders.astype(float), mean_value)


def _z_scores(fits: tuple[btyd.Fit, btyd.Fit]) -> dict[str, float]:
    """(fitted − true) / standard error for each of the seven parameters."""
    out = {}
    for fit, truth in zip(fits, (TRUE_BGNBD, TRUE_GAMMA_GAMMA), strict=True):
        out |= {k: (fit.params[k] - v) / fit.standard_errors[k] for k, v in truth.items()}
    return out


def test_fit_recovers_the_parameters_of_simulated_customers_within_three_standard_errors():
    """4,000 customers: every fitted parameter is within 3 standard errors of the truth, and the standard
    errors are small enough to mean it."""
    fits = _simulated_fits(4000, seed=3)
    for fit, truth in zip(fits, (TRUE_BGNBD, TRUE_GAMMA_GAMMA), strict=True):
        for name, true in truth.items():
            se = fit.standard_errors[name]
            assert abs(fit.params[name] - true) < 3 * se and se < 0.3 * true, (name, fit)


def test_the_standard_errors_give_intervals_with_their_nominal_coverage():
    """Over 14 independent simulated data sets of 1,500 customers, the ±1.96 SE intervals of the seven
    parameters (98 intervals) cover the truth about 95 % of the time, and the errors are centred: a
    correct MLE with correct standard errors does this; standard errors half their true size would cover
    about 68 %, a biased fit would shift the mean z-score. (One data set landing 1-3 SE away on a parameter
    is what sampling does: 1 SE holds only ~68 % of the time.)"""
    z = pd.DataFrame([_z_scores(_simulated_fits(1500, seed)) for seed in range(100, 114)])
    covered = float((z.abs() < 1.96).to_numpy().mean())
    assert 0.85 <= covered <= 1.0, (covered, z.round(2))
    assert (z.mean().abs() < 1.0).all(), z.mean()  # the mean of 14 z-scores has SE ~0.27
    assert (z.std() < 1.6).all(), z.std()  # ~1 when the standard errors are right


# --- pure parts ----------------------------------------------------------------------------------


def test_bgnbd_stays_finite_where_the_data_do_not_identify_it():
    """43 customers of a demo's first week, 2 with one repeat order: the unbounded fit sent alpha to 0
    and divided by it (ZeroDivisionError in `clv fit`); bounded, it ends at finite parameters with finite
    expectations (`clv fit` refuses such a window anyway: fewer than 50 repeat buyers)."""
    counts = {0.0: 12, 1.0: 3, 2.0: 4, 3.0: 7, 4.0: 7, 5.0: 8}  # one-order customers by age in days
    big_t = np.array([age for age, n in counts.items() for _ in range(n)] + [0.0, 5.0])
    x = np.r_[np.zeros(len(big_t) - 2), 1.0, 1.0]
    t_x = np.r_[np.zeros(len(big_t) - 2), 0.0, 3.0]
    fit = btyd.fit_bgnbd(x, t_x, big_t)
    assert all(np.isfinite(v) and v > 0 for v in fit.params.values()), fit.params
    assert np.isfinite(btyd.expected_purchases(fit.params, 90.0, x, t_x, big_t)).all()


def test_a_window_without_finite_expectations_is_refused_with_the_fix():
    frame = pd.DataFrame({"btyd_orders": [0.5, np.nan, 1.0], "btyd_spend": [10.0, np.nan, np.inf]})
    with pytest.raises(InputError, match="2 of its 3 customers") as err:
        clv_fit._require_finite(frame, date(2023, 1, 8), date(2023, 2, 1))
    assert "training window as of 2023-01-08" in str(err.value) and "later --train-until" in err.value.fix
    clv_fit._require_finite(frame.iloc[:1], date(2023, 1, 8), date(2023, 2, 1))  # all finite: passes


def test_metrics_on_a_known_example():
    actual = np.array([0, 0, 0, 0, 0, 0, 0, 0, 10, 90.0])
    m = evaluate(actual, np.array([0, 0, 0, 0, 0, 0, 0, 0, 5, 100.0]))
    assert m["mae"] == 1.5 and m["rmse"] == pytest.approx(np.sqrt(12.5), abs=1e-4)
    assert m["top_decile_capture"] == 0.9 and m["spearman"] > 0.9 and m["total_ratio"] == 1.05
    assert m["buyer_auc"] == 1.0 and m["buyers_spearman"] == 1.0
    flat = evaluate(actual, np.ones(10))
    assert flat["spearman"] == 0.0 and flat["buyer_auc"] == 0.5 and flat["buyers_spearman"] == 0.0


def test_a_tie_with_a_baseline_is_not_a_win():
    """The model that is BTYD scores exactly as BTYD: `same`, and `beats` is false (it printed "beats
    BG/NBD + Gamma-Gamma: yes" for every fit that kept BTYD)."""
    from segments.clv.metrics import beats, compare

    base = {"rmse": 10.0, "spearman": 0.5, "top_decile_capture": 0.4}
    assert compare(base, dict(base)) == "same" and not beats(base, dict(base))
    assert compare({**base, "rmse": 9.0}, base) == "better" and beats({**base, "rmse": 9.0}, base)
    assert compare({**base, "spearman": 0.4}, base) == "worse"
    assert compare({**base, "rmse": 9.0, "spearman": 0.4}, base) == "mixed"


def test_buyer_auc_and_buyers_spearman_separate_what_spearman_mixes():
    """A predictor of exactly 0 for most customers (like last period's spend) matches the actuals' tie at
    0 and wins Spearman over everyone against the true expectation, which tells buyers apart better and
    orders them better: the two reported scores say so. The AUC agrees with the pairwise definition."""
    from scipy.stats import rankdata, spearmanr

    from segments.clv.metrics import _auc

    rng = np.random.default_rng(3)
    n = 4000
    rate = rng.gamma(0.3, 0.5, n)  # ~12 % buy in the period, as on CDNOW's last quarter
    buys = rng.random(n) < 1 - np.exp(-rate)
    actual = np.where(buys, rng.gamma(2.0, 20.0, n) * (1 + rate), 0.0)
    graded = rate * 40  # the expectation given the rate
    # half the buyers and 6 % of the others spent last period, amounts unrelated to what they spend next
    recent = np.where(buys & (rng.random(n) < 0.5) | (rng.random(n) < 0.06), rng.gamma(2.0, 20.0, n), 0.0)
    g, r = evaluate(actual, graded), evaluate(actual, recent)
    assert r["spearman"] > g["spearman"]
    assert g["buyer_auc"] > r["buyer_auc"] + 0.1 and g["buyers_spearman"] > r["buyers_spearman"] + 0.2
    score, pos = rng.integers(0, 5, 300).astype(float), rng.random(300) < 0.3
    pairs = (score[pos][:, None] > score[~pos][None, :]) + 0.5 * (score[pos][:, None] == score[~pos][None, :])
    assert _auc(rankdata(score), pos) == pytest.approx(pairs.mean(), abs=1e-12)
    assert g["spearman"] == round(spearmanr(graded, actual).statistic, 4)  # the same rho as scipy's


def test_tiers_are_tertiles_and_ties_share_a_tier():
    tier, cuts = tiers(np.array([1.0, 1, 1, 2, 3, 4, 5, 6, 7]))
    assert tier.tolist() == ["Low"] * 3 + ["Mid"] * 3 + ["High"] * 3
    tier, _ = tiers(np.array([0.0] * 6 + [5, 6, 7]))
    assert set(tier[:6]) == {"Low"}


# --- features in the warehouse -------------------------------------------------------------------


def test_feature_sql_by_hand(settings, engine):
    orders = pd.DataFrame(
        [
            ("a1", "A", datetime(2023, 1, 1, 9), 10.0, "Completed"),
            ("a2", "A", datetime(2023, 3, 1, 23, 59), 30.0, "Completed"),
            ("a3", "A", datetime(2023, 3, 31, 12), 50.0, "Completed"),  # on as_of: counts
            ("a4", "A", datetime(2023, 4, 1, 0, 0), 70.0, "Completed"),  # the day after: target
            ("a5", "A", datetime(2023, 4, 20), 5.0, "Cancelled"),  # excluded everywhere
            ("b1", "B", datetime(2022, 12, 1), 20.0, "Completed"),
            ("c1", "C", datetime(2023, 4, 2), 99.0, "Completed"),  # only after as_of: not a row
        ],
        columns=["order_id", "customer_id", "ordered_at", "amount", "status"],
    )
    load_orders(engine, orders)
    f = load_features(engine, settings, date(2023, 3, 31), 30, 30).set_index("customer_id")
    assert list(f.index) == ["A", "B"]
    a, b = f.loc["A"], f.loc["B"]
    assert (a.recency_days, a.frequency, a.monetary, a.tenure_days) == (0, 3, 90, 89)
    assert a.mean_gap_days == pytest.approx(89 / 2) and a.avg_order == 30 and a.max_order == 50
    # last 30 days = 2023-03-02 .. 03-31; the 30 days before = 2023-01-31 .. 03-01 (a2 at 23:59 counts there)
    assert (a.spend_last, a.orders_last, a.spend_prev, a.target, a.target_orders) == (50, 1, 30, 70, 1)
    assert a.recency_over_gap == 0
    assert (b.recency_days, b.frequency, b.tenure_days, b.target) == (120, 1, 120, 0)
    assert np.isnan(b.mean_gap_days) and np.isnan(b.recency_over_gap)
    assert set(FEATURES) <= set(f.columns)


# --- seasonality and the choice -------------------------------------------------------------------


def _daily(days: int, seed: int, season_by_month: np.ndarray | None) -> pd.Series:
    """Daily spend of a growing shop (+60 % over the span) with Poisson-like noise, modulated by month."""
    index = pd.date_range("2022-01-01", periods=days, freq="D")
    level = 20_000.0 * (1.0 + 0.6 * np.arange(days) / days)
    if season_by_month is not None:
        level = level * season_by_month[index.month - 1]
    rng = np.random.default_rng(seed)
    return pd.Series(rng.gamma(200.0, level / 200.0), index=index)


def test_the_seasonal_index_recovers_a_planted_season_and_is_flat_without_one():
    planted = np.array([0.8, 0.75, 0.85, 0.9, 0.95, 0.9, 0.85, 0.9, 0.95, 1.05, 1.45, 1.6])
    planted = planted / planted.mean()
    got = season.profile(_daily(3 * 365, 1, planted), date(2024, 12, 30))
    assert got is not None and got.shape == (365,) and abs(got.mean() - 1) < 1e-9
    mid_month = pd.to_datetime([f"2001-{month:02d}-15" for month in range(1, 13)])
    assert np.allclose(got[season.day_of_year(mid_month)], planted, atol=0.08), got[
        season.day_of_year(mid_month)
    ]
    flat = season.profile(_daily(3 * 365, 2, None), date(2024, 12, 30))
    assert flat is not None and np.abs(flat - 1).max() < 0.05
    assert season.profile(_daily(3 * 365, 1, planted), date(2023, 12, 29)) is None  # under two years


def test_seasonal_time_is_days_when_the_index_is_flat():
    feats = pd.DataFrame(
        {"frequency": [1.0, 3.0], "tenure_days": [40.0, 400.0], "recency_days": [40.0, 10.0]}
    )
    feats["avg_order"] = [10.0, 20.0]
    x, t_x, big_t, m, horizon = season.warped_inputs(feats, date(2024, 3, 1), np.ones(365), 90)
    assert horizon == 90 and list(t_x) == [0.0, 390.0] and list(big_t) == [40.0, 400.0] and list(x) == [0, 2]
    peak = np.where(np.arange(365) >= 334, 2.0, 1.0)  # December counts double
    _, t_x, big_t, _, horizon = season.warped_inputs(feats, date(2024, 11, 30), peak, 31)
    assert horizon == 62 and list(big_t) == [40.0, 431.0] and list(t_x) == [0.0, 421.0]


def test_paired_confidence_separates_a_real_gain_from_noise():
    rng = np.random.default_rng(3)
    y = rng.gamma(0.3, 100.0, 5000)
    base = y + rng.normal(0, 50, 5000)
    better, same, twin = y + rng.normal(0, 30, 5000), base, base + rng.normal(0, 1, 5000)
    shares = clv_fit.paired_confidence(y, base, better, same, twin)  # twin: within noise of base
    assert shares[:2] == [1.0, 0.0] and 0.0 < shares[2] < clv_fit.CHOICE_CONFIDENCE, shares


def test_paired_confidence_resamples_customers_not_rows():
    """One customer scored in many validation windows is one piece of evidence: a lead that comes from one
    customer's 300 rows is certain when rows are resampled, and only as likely as drawing that customer
    (1 - 1/e of resamples) when whole customers are."""
    y = np.zeros(1300)
    base = np.where(np.arange(1300) < 300, 1.0, 0.0)  # wrong on customer 0's rows only
    other = np.zeros(1300)
    groups = np.concatenate([np.zeros(300, int), np.arange(1, 1001)])
    assert clv_fit.paired_confidence(y, base, other) == [1.0]
    [share] = clv_fit.paired_confidence(y, base, other, groups=groups)
    assert 0.5 < share < 0.75, share


def test_expected_purchases_per_distinct_history_equal_those_per_customer():
    """Customers sharing (x, T) share the expectation if alive, computed once per pair: the same numbers as
    row by row, on the closed form, its Euler transformation and the quadrature (a + b + x <= 1)."""
    rng = np.random.default_rng(2)
    x = np.minimum(rng.geometric(0.3, 20000) - 1, 150).astype(float)
    big_t = np.floor(rng.uniform(1, 900, 20000))
    t_x = np.floor(big_t * rng.random(20000)) * (x > 0)
    for params in (
        {"r": 0.6, "alpha": 40.0, "a": 0.8, "b": 2.5},
        {"r": 0.46, "alpha": 32.0, "a": 0.03, "b": 0.95},
    ):
        per_pair = btyd.expected_purchases(params, 90.0, x, t_x, big_t)
        alone = np.array([btyd.expected_purchases(params, 90.0, x[i : i + 1], t_x[i : i + 1], big_t[i : i + 1])[0]
                          for i in range(0, 20000, 97)])  # fmt: skip
        np.testing.assert_allclose(per_pair[::97], alone, rtol=1e-12)
        assert np.all(np.isfinite(per_pair)) and np.all(per_pair >= 0)


def test_coarsened_features_keep_their_order_and_missing_values_in_at_most_255_values():
    rng = np.random.default_rng(5)
    x = np.column_stack([rng.gamma(2, 10, 3000), rng.integers(0, 7, 3000).astype(float)])
    x[rng.random(3000) < 0.1, 0] = np.nan
    c = clv_model.coarsen(x)
    known = ~np.isnan(x[:, 0])
    assert np.array_equal(np.isnan(c[:, 0]), ~known) and np.array_equal(c[:, 1], x[:, 1])
    assert len(np.unique(c[known, 0])) <= clv_model.MAX_BINS < len(np.unique(x[known, 0]))
    order = np.argsort(x[known, 0], kind="stable")
    assert np.all(np.diff(c[known, 0][order]) >= 0)  # monotone: the ranking the trees split on is kept
    gap = np.abs(c[known, 0] - x[known, 0])
    assert np.percentile(gap, 99) < 0.1 * np.nanstd(x[:, 0])  # the top bin aside, values stay close
    # each value is its bin's median, the bins cut at the unweighted quantiles (with ties: repeated values)
    values = np.concatenate([np.round(x[known, 0]), np.arange(300.0)])
    cuts = np.linspace(0, 100, clv_model.MAX_BINS + 1)[1:-1]
    edges = np.unique(np.percentile(values, cuts, method="averaged_inverted_cdf"))
    codes = np.searchsorted(edges, values, side="left")
    medians = pd.Series(values).groupby(codes).median().reindex(codes).to_numpy()
    np.testing.assert_array_equal(clv_model.coarsen(values[:, None])[:, 0], medians)
    # the regressor bins the coarsened values as they are: no weighted quantiles
    est = clv_model.fit_gbm(x, rng.poisson(1.0, 3000).astype(float), rng.gamma(1.0, 1.0, 3000))
    assert len(est._bin_mapper.bin_thresholds_[0]) == len(np.unique(c[known, 0])) - 1


def _btyd_orders(customers: int, days: int, seed: int) -> pd.DataFrame:
    """Orders drawn from BG/NBD + Gamma-Gamma itself: customers join uniformly over ``days``."""
    rng = np.random.default_rng(seed)
    joined = np.floor(rng.uniform(0, days, customers))
    bg, gg = {"r": 0.6, "alpha": 40.0, "a": 0.8, "b": 2.5}, {"p": 4.0, "q": 3.5, "v": 60.0}
    customer, when, nu = btyd.simulate(bg, gg, days - joined, seed + 1)
    who = np.concatenate([np.arange(customers), customer])
    day = np.concatenate([joined, joined[customer] + when])
    return pd.DataFrame(
        {
            "order_id": [f"o{i:07d}" for i in range(len(who))],
            "customer_id": [f"c{c:06d}" for c in who],
            "ordered_at": [datetime(2021, 1, 1) + pd.Timedelta(days=float(d)) for d in day],
            "amount": np.round(rng.gamma(gg["p"], 1.0, len(who)) / nu[who], 2),
            "status": "Completed",
        }
    )


def test_on_data_drawn_from_btyd_the_choice_keeps_btyd(duck_settings, duck_engine):
    """Nothing beats the true model in expectation: the other predictors (the seasonal one included: three
    years of orders give it an index) lead only by noise on the validation window, and BTYD is kept."""
    load_orders(duck_engine, _btyd_orders(6000, 3 * 365, seed=4))
    result = fit_clv(duck_engine, duck_settings, date(2023, 10, 2), 90)
    cv = result.metrics["cross_validation"]
    assert cv["seasonal_base"] and set(cv["confidence_vs_btyd"]) == {"seasonal", "gbm", "blend"}
    # validated on the three latest windows, each predicted from what was known as of its date
    assert (
        cv["validation_as_of"]
        == result.metrics["train"]["features_as_of"][:3]
        == [f["as_of"] for f in cv["folds"]]
    )
    assert all(f["customers"] > 1000 for f in cv["folds"]), cv["folds"]
    assert result.metrics["choice"] == "btyd", cv
    assert max(cv["confidence_vs_btyd"].values()) < clv_fit.CHOICE_CONFIDENCE, cv
    assert result.metrics["model"] == result.metrics["btyd"]


def test_feature_sets_of_several_dates_equal_one_statement_per_date(settings, engine, monkeypatch):
    """Four dates (with and without a target) at once give each date's frame as it is alone: the same
    customers (those with an order on or before that date), the same values; on DuckDB, where the orders
    are read into NumPy, the same as the SQL statement other warehouses run."""
    orders = latent_orders(400, seed=8)
    orders.loc[orders.index % 17 == 0, "status"] = "Cancelled"  # excluded from every date
    load_orders(engine, orders)
    dates = [
        (date(2023, 9, 30), 90),
        (date(2023, 7, 2), 60),
        (date(2023, 1, 3), 60),
        (date(2022, 2, 1), None),
    ]
    together = load_feature_sets(engine, settings, 60, dates)
    for (as_of, target_days), frame in zip(dates, together, strict=True):
        pd.testing.assert_frame_equal(frame, load_features(engine, settings, as_of, 60, target_days))
    assert 0 < len(together[3]) < len(together[2]) < len(together[1]) < len(together[0]) < 400
    assert "target" not in together[3] and together[1]["target"].sum() > 0
    monkeypatch.setattr(clv_features.dialect, "is_duckdb", lambda conn: False)
    for frame, by_sql in zip(together, load_feature_sets(engine, settings, 60, dates), strict=True):
        pd.testing.assert_frame_equal(frame, by_sql)


def test_rfm11_segments_assign_every_customer_by_its_scores(duck_settings):
    settings = duck_settings
    """The segment of each row is the scheme's rule for that row's quintile scores (assigned once per
    distinct combination)."""
    rng = np.random.default_rng(4)
    n = 3000
    feats = pd.DataFrame(
        {
            "recency_days": rng.integers(0, 400, n).astype(float),
            "frequency": rng.geometric(0.4, n).astype(float),
            "monetary": rng.gamma(2, 50, n),
        },
        index=np.arange(n) * 3,
    )
    got = rfm11_segments(settings, feats)
    scheme = load_scheme("rfm11", settings)
    r, _ = quantile_scores(feats["recency_days"].to_numpy(), 5, higher_is_better=False)
    f, _ = quantile_scores(feats["frequency"].to_numpy(), 5)
    m, _ = quantile_scores(feats["monetary"].to_numpy(), 5)
    want = [scheme.assign({"r": int(a), "f": int(b), "m": int(c)}) for a, b, c in zip(r, f, m, strict=True)]
    assert got.tolist() == want and (got.index == feats.index).all()
    assert got.nunique() >= 5


# --- fit, backtest, tiers ------------------------------------------------------------------------


def test_model_beats_the_naive_baselines_stays_level_with_btyd_and_drives_clv_tier(
    duck_settings, duck_engine
):
    """Better than last period's spend and the rfm11 mean on RMSE and capture; within 1 % of BTYD's RMSE
    (the choice is made on earlier windows, so on the backtest it can lose a little); the total within
    15 %; P(buy) calibrated; the stored model drives equal tertiles."""
    settings, engine = duck_settings, duck_engine
    load_orders(engine, latent_orders(6000, seed=1))
    result = fit_clv(engine, settings, TRAIN_UNTIL, 90)
    m = result.metrics
    for base in ("last_period_spend", "rfm11_segment_mean"):
        assert m["model"]["rmse"] < m[base]["rmse"], (base, m)
        assert m["model"]["top_decile_capture"] > m[base]["top_decile_capture"], (base, m)
    assert m["model"]["rmse"] <= m["btyd"]["rmse"] * 1.01, m  # chosen on an earlier window, so not always
    assert abs(m["model"]["total_ratio"] - 1) < 0.15, m
    assert m["train"]["features_as_of"][0] == "2023-07-02" and len(m["train"]["features_as_of"]) == 4
    assert m["backtest"]["period"] == ["2023-09-30", "2023-12-29"]
    assert m["choice"] == m["cross_validation"]["chosen"] in clv_model.CHOICES
    assert len(m["calibration"]["by_spend_decile"]) == 10
    top = m["calibration"]["by_spend_decile"][-1]
    assert top["actual_spend"] > 3 * m["calibration"]["by_spend_decile"][0]["actual_spend"]
    for row in m["calibration"]["p_buy"]:  # P(buy) is calibrated within 0.1 in every decile
        assert abs(row["predicted"] - row["actual"]) < 0.1, m["calibration"]["p_buy"]

    stored = latest_model(engine, AS_OF)
    assert stored.model_id == "clv_20230930_90d" and stored.metrics == json.loads(json.dumps(m))
    assert stored.params["features"] == [*FEATURES, *clv_model.BTYD_FEATURES]
    assert set(stored.params["btyd"]["bgnbd"]["params"]) == {"r", "alpha", "a", "b"}

    snap = compute_snapshot(engine, settings, AS_OF, "clv_tier")
    assert set(snap.segments) == {"High", "Mid", "Low"}
    assert all(abs(n - snap.customers / 3) < snap.customers * 0.05 for n in snap.segments.values())
    info = snap.cutpoints["model"]
    assert info["model_id"] == "clv_20230930_90d" and info["horizon_days"] == 90
    assert info["expected_mean"]["High"] > info["expected_mean"]["Mid"] > info["expected_mean"]["Low"]
    with engine.connect() as conn:
        before = conn.execute(select(rfm_snapshots).order_by(rfm_snapshots.c.customer_id)).all()
    compute_snapshot(engine, settings, AS_OF, "clv_tier")
    with engine.connect() as conn:
        assert conn.execute(select(rfm_snapshots).order_by(rfm_snapshots.c.customer_id)).all() == before


def test_model_beats_the_naive_baselines_on_the_demo_data(duck_settings, duck_engine, tmp_path):
    """On `activation demo-data` with its defaults, at the cut-offs in docs/benchmarks.md."""
    from segments.demo_data import generate
    from segments.ingest import ingest_file

    files = generate(tmp_path / "demo", customers=5000, orders=40000, seed=7)
    ingest_file(duck_engine, duck_settings, files.orders, "parquet", mapping_path=files.mapping)
    for train_until in (date(2025, 10, 2), date(2025, 7, 4)):
        m = fit_clv(duck_engine, duck_settings, train_until, 90).metrics
        for base in ("last_period_spend", "rfm11_segment_mean"):
            assert m["model"]["rmse"] < m[base]["rmse"], (train_until, base, m)
            assert m["model"]["top_decile_capture"] > m[base]["top_decile_capture"], (train_until, base, m)
        # three years of a seasonal shop: the seasonal predictor is validated, and a model built on it is
        # stored with its index and predicts after loading what it predicted when fitted
        assert m["cross_validation"]["seasonal_base"], m["cross_validation"]
        stored = latest_model(duck_engine, train_until)
        if m["choice"] != "btyd":
            assert len(stored.params["season"]["index"]) == 365, stored.params["season"]
            assert stored.load().seasonal
        preds = predict_customers(duck_engine, duck_settings, stored, train_until)
        assert preds["predicted_spend"].sum() == pytest.approx(m["expected_total"], rel=1e-3)


def test_a_large_backtest_is_scored_on_a_fixed_sample_and_says_so(duck_settings, duck_engine, monkeypatch):
    """Above MAX_BACKTEST_CUSTOMERS the backtest and calibration score a fixed-seed sample of that many
    customers (recorded with the population size); at or below it, every customer."""
    load_orders(duck_engine, latent_orders(900, seed=4))
    full = fit_clv(duck_engine, duck_settings, TRAIN_UNTIL, 60).metrics
    assert full["backtest"]["customers"] == full["test_customers"] > 300 and not full["backtest"]["sampled"]
    monkeypatch.setattr(clv_fit, "MAX_BACKTEST_CUSTOMERS", 300)
    sampled = fit_clv(duck_engine, duck_settings, TRAIN_UNTIL, 60).metrics
    assert sampled["backtest"]["customers"] == 300 and sampled["backtest"]["sampled"]
    assert sampled["test_customers"] == full["test_customers"]
    assert sum(row["customers"] for row in sampled["calibration"]["by_spend_decile"]) == 300
    assert sampled["model"] != full["model"] and sampled["choice"] == full["choice"]
    assert fit_clv(duck_engine, duck_settings, TRAIN_UNTIL, 60).metrics == sampled  # the same sample again


def test_the_regressor_rows_are_built_alone_as_the_full_stack_would_give_them(
    duck_settings, duck_engine, monkeypatch
):
    """Above MAX_REGRESSOR_ROWS only the sampled rows of the stacked windows are built (their BTYD
    expectations included), and they are exactly those rows of the full stack."""
    load_orders(duck_engine, latent_orders(600, seed=9))
    window, dates = clv_fit.plan_windows(data_range(duck_engine, duck_settings), TRAIN_UNTIL, 90)
    with ThreadPoolExecutor(max_workers=2) as pool:
        windows, _, _ = clv_fit.load_windows(pool, duck_engine, duck_settings, TRAIN_UNTIL, 90, window, dates)
    full_x = np.vstack([w.x for w in windows])
    full_y = np.concatenate([w.target for w in windows])
    scaled = [w.offset * (w.target.sum() / max(float(w.offset.sum()), clv_model.MIN_OFFSET)) for w in windows]
    full_offset = np.concatenate(scaled)
    monkeypatch.setattr(clv_model, "MAX_REGRESSOR_ROWS", 500)
    rows = clv_model.regressor_rows(len(full_x))
    x, y, offset = clv_fit._stacked(windows)
    assert len(rows) == len(x) == 500 < len(full_x)
    np.testing.assert_array_equal(x, full_x[rows])
    np.testing.assert_array_equal(y, full_y[rows])
    np.testing.assert_array_equal(offset, full_offset[rows])


def test_any_horizon_up_to_the_remaining_span(duck_settings, duck_engine):
    """273 days from 2023-03-31 on two years of orders: the training windows are shorter than the horizon
    (there are not 2 x 273 days before the cut-off), and the prediction still covers 273 days."""
    load_orders(duck_engine, latent_orders(1500, seed=6))
    long = fit_clv(duck_engine, duck_settings, date(2023, 3, 31), 273).metrics
    assert long["backtest"]["period"] == ["2023-03-31", "2023-12-29"]
    assert long["train"]["window_days"] == 227
    assert long["model"]["rmse"] < long["last_period_spend"]["rmse"] and long["model"]["spearman"] > 0.3
    assert abs(long["model"]["total_ratio"] - 1) < 0.25, long["model"]
    short = fit_clv(duck_engine, duck_settings, date(2023, 3, 31), 90).metrics
    assert short["train"]["window_days"] == 90 and long["expected_total"] > 2 * short["expected_total"]


def test_fit_and_tier_on_both_warehouses(settings, engine):
    load_orders(engine, latent_orders(700, seed=2))
    first = fit_clv(engine, settings, TRAIN_UNTIL, 60)
    second = fit_clv(engine, settings, TRAIN_UNTIL, 60)  # same cut-off and horizon: replaced, same model
    assert _count(engine, clv_models) == 1
    assert {k: v for k, v in first.metrics.items()} == second.metrics
    snap = compute_snapshot(engine, settings, AS_OF, "clv_tier")
    assert sum(snap.segments.values()) == snap.customers and set(snap.segments) == {"High", "Mid", "Low"}
    assert min(snap.segments.values()) > 0.25 * snap.customers, snap.segments  # tertiles of the spend


def test_horizon_past_the_data_end_writes_nothing(settings, engine):
    load_orders(engine, latent_orders(300, seed=3))
    with pytest.raises(InputError, match="past the last order") as err:
        fit_clv(engine, settings, date(2023, 11, 30), 90)
    assert "--train-until 2023-10-0" in err.value.fix
    assert _count(engine, clv_models) == 0


def test_clv_tier_without_a_model_names_the_command_and_writes_nothing(settings, engine):
    load_orders(engine, latent_orders(300, seed=3))
    with pytest.raises(NotFoundError, match="no CLV model") as err:
        compute_snapshot(engine, settings, AS_OF, "clv_tier")
    assert "activation clv fit" in err.value.fix
    assert _count(engine, rfm_snapshots) == 0 and _count(engine, snapshot_runs) == 0


def _store_model_row(engine, kind, params, train_until=TRAIN_UNTIL, horizon_days=90):
    with engine.begin() as conn:
        conn.execute(
            clv_models.insert().values(
                model_id=f"clv_{train_until:%Y%m%d}_{horizon_days}d",
                train_until=train_until,
                horizon_days=horizon_days,
                kind=kind,
                params=json.dumps(params),
                metrics="{}",
                created_at=datetime(2024, 1, 1),
            )
        )


def test_a_model_trained_after_as_of_is_not_used(duck_settings, duck_engine):
    load_orders(duck_engine, latent_orders(300, seed=5))
    _store_model_row(duck_engine, clv_model.MODEL_KIND, {"format": clv_model.FORMAT})
    with pytest.raises(NotFoundError, match="on or before 2023-06-30"):
        compute_snapshot(duck_engine, duck_settings, date(2023, 6, 30), "clv_tier")


def test_cli_clv_fit_show_export_and_errors(duck_settings, duck_engine, tmp_path):
    load_orders(duck_engine, latent_orders(800, seed=4))
    res = run_cli("segment", "--as-of", "2023-12-31", "--scheme", "clv_tier")
    assert res.exit_code == 2 and "no CLV model" in res.stderr and "activation clv fit" in res.stderr
    res = run_cli("clv", "show")
    assert res.exit_code == 2 and "activation clv fit" in res.stderr
    out = tmp_path / "exports" / "clv.csv"
    res = run_cli("clv", "export", "--as-of", "2023-12-31", "--out", str(out))
    assert res.exit_code == 2 and "activation clv fit" in res.stderr and not out.parent.exists()
    # a cut-off weeks after the first order: too few repeat buyers for BG/NBD, refused before any fit
    res = run_cli("clv", "fit", "--train-until", "2022-01-20", "--horizon-days", "60")
    assert res.exit_code == 2 and "with a repeat order" in res.stderr and "later --train-until" in res.stderr
    assert _count(duck_engine, clv_models) == 0
    res = run_cli("clv", "fit", "--train-until", "2023-09-30", "--horizon-days", "60")
    assert res.exit_code == 0, res.output
    for text in (
        "baseline: last period's spend",
        "BG/NBD + Gamma-Gamma",
        "top-decile capture",
        "calibration",
    ):
        assert text in res.output, res.output
    assert "clv_20230930_60d" in res.output and "P(alive)" in res.output
    assert "against BG/NBD + Gamma-Gamma:" in res.output and "beats all three:" in res.output
    p_buy = latest_model(duck_engine).metrics["calibration"]["p_buy"]
    assert len(p_buy) == 10 and "share who bought" in res.output
    for row in p_buy:  # every decile's row of the P(buying) table is printed
        assert f"{row['predicted']:.3f}" in res.output and f"{row['actual']:.3f}" in res.output
    res = run_cli("clv", "show")
    assert res.exit_code == 0 and "clv_20230930_60d" in res.output and "alpha=" in res.output
    res = run_cli("segment", "--as-of", "2023-12-31", "--scheme", "clv_tier")
    assert res.exit_code == 0, res.output
    assert "clv_tier: model clv_20230930_60d" in res.output and "High" in res.output
    res = run_cli("clv", "fit", "--train-until", "2023-12-01", "--horizon-days", "90")
    assert res.exit_code == 2 and "past the last order" in res.stderr and "fix:" in res.stderr
    res = run_cli("clv", "fit", "--train-until", "30/09/2023")
    assert res.exit_code == 2 and "YYYY-MM-DD" in res.stderr
    res = run_cli("clv", "fit", "--train-until", "2023-09-30", "--horizon-days", "0")
    assert res.exit_code == 2 and "--horizon-days" in res.stderr

    # export: the numbers clv_tier ranked on, one row per customer known at the date, both formats
    res = run_cli("clv", "export", "--as-of", "2023-12-31", "--out", str(out))
    assert res.exit_code == 0, res.output
    csv = pd.read_csv(out, dtype={"customer_id": str})
    assert list(csv.columns) == ["customer_id", "predicted_orders", "predicted_spend", "p_alive"]
    about = json.loads((tmp_path / "exports" / "clv.csv.json").read_text())
    assert about["model_id"] == "clv_20230930_60d" and about["horizon_days"] == 60
    with duck_engine.connect() as conn:
        known = conn.execute(select(func.count(func.distinct(orders_table.c.customer_id)))).scalar_one()
        snap = pd.read_sql(
            select(rfm_snapshots.c.customer_id, rfm_snapshots.c.segment).where(
                rfm_snapshots.c.scheme == "clv_tier"
            ),
            conn,
        )
    assert len(csv) == about["customers"] == known and csv["customer_id"].is_unique
    assert csv["p_alive"].between(0, 1).all() and (csv["predicted_spend"] >= 0).all()
    ranked = snap.merge(csv, on="customer_id", how="left")
    assert ranked["predicted_spend"].notna().all()
    assert tiers(ranked["predicted_spend"].to_numpy())[0].tolist() == ranked["segment"].tolist()
    parquet = tmp_path / "clv.parquet"
    assert run_cli("clv", "export", "--as-of", "2023-12-31", "--out", str(parquet)).exit_code == 0
    pq = pd.read_parquet(parquet)
    assert pq["customer_id"].tolist() == csv["customer_id"].tolist()
    assert np.allclose(pq["predicted_spend"], csv["predicted_spend"])
    for bad, message in ((tmp_path / "clv.xlsx", ".csv or .parquet"), (tmp_path, "is a folder")):
        res = run_cli("clv", "export", "--as-of", "2023-12-31", "--out", str(bad))
        assert res.exit_code == 2 and message in res.stderr, res.stderr
    assert not (tmp_path / "clv.xlsx").exists() and not (tmp_path / "clv.xlsx.json").exists()
    res = run_cli("clv", "export", "--as-of", "2023-06-30", "--out", str(tmp_path / "early.csv"))
    assert res.exit_code == 2 and "on or before 2023-06-30" in res.stderr
    assert not (tmp_path / "early.csv").exists()


def test_export_mid_data_with_a_chosen_model_and_a_late_date(duck_settings, duck_engine, tmp_path):
    """At a date inside the data the export has the customers with a counting order by then (not a
    customer whose only order was cancelled, nor one who arrived later); --model picks an older fit, a
    model trained after --as-of is refused; a date long after the last order is written with a warning."""
    orders = latent_orders(800, seed=4)
    cancelled = pd.DataFrame(
        [("x-1", "c-cancelled", datetime(2023, 5, 2), 40.0, "cancelled")], columns=orders.columns
    )
    load_orders(duck_engine, pd.concat([orders, cancelled], ignore_index=True))
    fit_clv(duck_engine, duck_settings, date(2023, 3, 31), 90)
    fit_clv(duck_engine, duck_settings, date(2023, 6, 30), 60)
    out = tmp_path / "clv.csv"
    res = run_cli("clv", "export", "--as-of", "2023-07-31", "--out", str(out))
    assert res.exit_code == 0 and not res.stderr, res.output
    csv = pd.read_csv(out, dtype={"customer_id": str})
    known = orders.loc[orders["ordered_at"] < datetime(2023, 8, 1), "customer_id"].unique()
    assert sorted(csv["customer_id"]) == sorted(known) and len(known) < orders["customer_id"].nunique()
    about = json.loads((tmp_path / "clv.csv.json").read_text())
    assert (about["model_id"], about["horizon_days"], about["warnings"]) == ("clv_20230630_60d", 60, [])

    res = run_cli("clv", "export", "--as-of", "2023-07-31", "--out", str(out), "--model", "clv_20230331_90d")
    assert res.exit_code == 0, res.output
    about = json.loads((tmp_path / "clv.csv.json").read_text())
    assert (about["model_id"], about["horizon_days"]) == ("clv_20230331_90d", 90)
    assert len(pd.read_csv(out)) == len(known)

    early = tmp_path / "early.csv"
    for args, message in (
        (("--as-of", "2023-05-31", "--model", "clv_20230630_60d"), "after --as-of 2023-05-31"),
        (("--as-of", "2023-07-31", "--model", "clv_nope"), "no such CLV model"),
    ):
        res = run_cli("clv", "export", "--out", str(early), *args)
        assert res.exit_code == 2 and message in res.stderr and "clv_20230331_90d" in res.stderr, res.stderr
    (tmp_path / "folder.csv.json").mkdir()
    res = run_cli("clv", "export", "--as-of", "2023-07-31", "--out", str(tmp_path / "folder.csv"))
    assert res.exit_code == 2 and "remove or rename the folder" in res.stderr
    assert not early.exists() and not (tmp_path / "folder.csv").exists()

    late = tmp_path / "late.csv"
    res = run_cli("clv", "export", "--as-of", "2024-06-30", "--out", str(late))
    assert res.exit_code == 0 and "days after the newest order" in res.stderr, res.stderr
    assert json.loads((tmp_path / "late.csv.json").read_text())["warnings"]


def test_the_regressor_is_stored_with_skops_and_untrusted_contents_are_refused():
    """No private attributes and no pickle: the stored regressor predicts exactly as the fitted one; one
    written by another scikit-learn minor version, or holding a type outside the allowed list, is refused
    with the refit command."""
    import base64
    import zipfile
    from fractions import Fraction

    import skops.io as sio

    rng = np.random.default_rng(0)
    x = rng.gamma(2, 10, size=(800, 4))
    x[rng.random(800) < 0.2, 2] = np.nan  # missing values take the learned side
    y = rng.poisson(np.exp(0.02 * x[:, 0] - 0.01 * np.nan_to_num(x[:, 2])))
    est = clv_model.fit_gbm(x, y.astype(float), np.ones(len(y)))
    stored = json.loads(json.dumps(clv_model.dump_gbm(est)))
    loaded = clv_model.load_gbm(stored, "clv_x", "activation clv fit …")
    assert np.array_equal(loaded.predict(x), est.predict(x))
    with pytest.raises(NotFoundError, match="scikit-learn 1.3.2") as err:
        clv_model.load_gbm({**stored, "scikit_learn": "1.3.2"}, "clv_x", "activation clv fit …")
    assert "activation clv fit" in err.value.fix
    evil = base64.b64encode(sio.dumps(Fraction(1, 3), compression=zipfile.ZIP_DEFLATED)).decode()
    with pytest.raises(NotFoundError, match="fractions.Fraction"):
        clv_model.load_gbm({**stored, "skops": evil}, "clv_x", "activation clv fit …")


def test_a_model_from_an_earlier_release_is_refused_with_the_refit_command(duck_settings, duck_engine):
    load_orders(duck_engine, latent_orders(400, seed=8))
    old = {"kind": "hgb_two_part", "features": list(FEATURES), "threshold": 0.3, "spend": {}, "purchase": {}}
    _store_model_row(duck_engine, "hgb_two_part", old)
    refit = "activation clv fit --train-until 2023-09-30 --horizon-days 90"
    for args in (
        ("segment", "--as-of", "2023-12-31", "--scheme", "clv_tier"),
        ("clv", "show"),
        ("clv", "export", "--as-of", "2023-12-31", "--out", str(duck_settings.data_dir / "clv.csv")),
    ):
        res = run_cli(*args)
        assert res.exit_code == 2 and "earlier release" in res.stderr and refit in res.stderr, res.stderr
    assert _count(duck_engine, rfm_snapshots) == 0 and not (duck_settings.data_dir / "clv.csv").exists()


# --- both model schemes through the whole cycle --------------------------------------------------


def test_kmeans_and_clv_tier_flow_through_plan_sync_and_roi(duck_settings, duck_engine, tmp_path):
    """Demo data → kmeans and clv_tier snapshots → plan (shipped policy) → outbox sync → outcomes → ROI,
    with no code of the cycle knowing the schemes are model-based."""
    from campaigns.plan import current_campaigns, plan_campaigns
    from connectors.registry import get_destination
    from outcomes.ledger import collect_outcomes
    from outcomes.roi import compute_roi
    from segments.demo_data import generate
    from segments.ingest import ingest_file
    from tests.fakes.destinations import sync_named

    s, engine = duck_settings, duck_engine
    files = generate(tmp_path / "demo", customers=1500, orders=12000, seed=3)
    ingest_file(engine, s, files.orders, "parquet", mapping_path=files.mapping)
    as_of = date(2025, 6, 30)  # half a year of real orders after it: a backtest
    fit_clv(engine, s, date(2025, 3, 31), 90)
    for scheme in ("kmeans", "clv_tier"):
        snap = compute_snapshot(engine, s, as_of, scheme)
        plan = plan_campaigns(engine, s, as_of, scheme)
        planned = {sp.segment for sp in plan.segments if sp.status == "created"}
        assert planned and planned <= {seg for seg, n in snap.segments.items() if n}
        camps = current_campaigns(engine, as_of, scheme)
        assert {c.segment for c in camps} == planned
        templates = {c.segment: c.template for c in camps}
        if scheme == "clv_tier":
            assert templates == {"High": "vip_early_access", "Mid": "nurture", "Low": "newsletter"}
        else:
            assert "Top Customers" not in templates or templates["Top Customers"] == "vip_early_access"
        # one outbox audience: switching it from kmeans to clv_tier trips the shrink guardrail, by design
        sync_named(engine, s, "outbox", as_of, scheme, send=True, force=scheme == "clv_tier")
        collect_outcomes(engine, s, as_of, scheme, destination=get_destination("outbox", s))
        roi = compute_roi(engine, s, as_of, scheme)
        assert set(roi["segment"]) >= planned
        assert (roi.set_index("segment").loc[sorted(planned), "treated"] > 0).all()
