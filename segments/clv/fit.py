"""``clv fit``: training windows before the cut-off, the model chosen by time-based cross-validation, a
backtest on the period after the cut-off next to the baselines, and the stored model.

For a cut-off ``T`` and horizon ``h`` the training windows are ``L = min(h, (T − first order) / 2)`` days
long, so any horizon up to the data's remaining span works: features as of ``T − L`` → spend in
``(T − L, T]``, stacked with ``T − 2L``, ``T − 3L``, ``T − 4L`` as far as the data reaches. BG/NBD +
Gamma-Gamma is fitted afresh as of each window's date (it never sees the window's target). The choice
between ``btyd``, ``seasonal``, ``gbm`` and ``blend`` (see :mod:`segments.clv.model`) is made on the latest
three windows pooled (at most 200,000 customers in all), each predicted by the regressor trained on the
windows before it and the seasonal index from the orders up to its date: BTYD is kept unless another
predictor beats its squared error in at least 95 % of paired bootstrap resamples of the customers, and of
those that do the lowest RMSE wins. The regressor is then refitted on every window (at most 100,000 stacked
rows). Nothing after ``T`` is seen.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, timedelta
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingRegressor
from sqlalchemy.engine import Engine
from threadpoolctl import threadpool_limits

from activation import tables as t
from activation.clock import utcnow
from activation.errors import InputError
from activation.settings import Settings
from activation.warehouse import transaction
from segments.clv import model as m
from segments.clv import season
from segments.clv.features import FEATURES, data_range, iter_feature_sets
from segments.clv.metrics import beats, calibration, compare, evaluate_all, rfm11_segments

#: Customers with a repeat order needed in every window BG/NBD is fitted on: with fewer the dropout
#: process is not identified (fits run off to the parameters' bounds) and the expectations can be NaN.
MIN_REPEAT_CUSTOMERS = 20
#: Training windows stacked (features as of T−L, T−2L, …), as far as the data reaches.
TRAIN_WINDOWS = 4
#: The backtest and its calibration score at most this many customers (a fixed-seed uniform sample above
#: that, recorded in the metrics): enough for every metric's third decimal, a fifth of the cost at 1M.
MAX_BACKTEST_CUSTOMERS = 200_000
#: The baselines the model must beat (on RMSE, Spearman and top-decile capture) for ``beats_baselines``.
BASELINES: tuple[str, ...] = ("btyd", "last_period_spend", "rfm11_segment_mean")
#: A predictor other than BTYD is chosen only when it beats BTYD's squared error on the validation window in
#: at least this share of paired bootstrap resamples (a one-sided test at 5 %: a lead within noise keeps BTYD).
CHOICE_CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 200
#: The choice is validated on up to this many of the latest windows (each predicted from the ones before it).
VALIDATION_FOLDS = 3


@dataclass
class Window:
    """Features as of ``as_of`` with the spend over the ``days`` after it, and BG/NBD + Gamma-Gamma fitted
    as of then. The regressor's inputs (which need the BTYD expectations) are built on first use, so a
    large window is only ever built for the rows taken from it (:meth:`at`)."""

    as_of: date
    features: pd.DataFrame
    btyd_params: dict[str, Any]
    days: int

    def at(self, rows: np.ndarray) -> Window:
        """The window restricted to these row numbers (its expectations taken, when already computed)."""
        part = Window(
            self.as_of, self.features.iloc[rows].reset_index(drop=True), self.btyd_params, self.days
        )
        if "expectations" in self.__dict__:
            part.expectations = self.expectations.iloc[rows].reset_index(drop=True)
        return part

    @cached_property
    def expectations(self) -> pd.DataFrame:
        return m.btyd_expectations(self.btyd_params, self.features, self.days)

    @cached_property
    def x(self) -> np.ndarray:
        return m.design(self.features, self.expectations)

    @property
    def target(self) -> np.ndarray:
        return np.asarray(self.features["target"].to_numpy(dtype=np.float64))

    @property
    def offset(self) -> np.ndarray:
        return np.asarray(self.expectations["btyd_spend"].to_numpy(dtype=np.float64))


@dataclass
class ClvFitResult:
    model_id: str
    train_until: date
    horizon_days: int
    train_customers: int
    test_customers: int
    metrics: dict[str, Any]
    seconds: float

    @property
    def beats_baselines(self) -> bool:
        return bool(self.metrics["beats_baselines"])


def model_id_for(train_until: date, horizon_days: int) -> str:
    return f"clv_{train_until:%Y%m%d}_{horizon_days}d"


def plan_windows(
    span: tuple[date, date] | None, train_until: date, horizon_days: int
) -> tuple[int, list[date]]:
    """The training windows' length and their feature dates (latest first).

    Raises:
        InputError: no orders, a horizon below 1 day, ``T + h`` past the last order, or no history before T.
    """
    if horizon_days < 1:
        raise InputError(
            f"--horizon-days must be at least 1 (got {horizon_days})", fix="e.g. --horizon-days 90"
        )
    if span is None:
        raise InputError(
            "clv fit: the warehouse has no orders",
            fix="load orders first: activation ingest … or activation demo-data",
        )
    first, last = span
    test_end = train_until + timedelta(days=horizon_days)
    if test_end > last:
        raise InputError(
            f"clv fit: --train-until {train_until} + {horizon_days} days = {test_end} is past the last order "
            f"({last}); the backtest period would be incomplete",
            fix=f"use --train-until {last - timedelta(days=horizon_days)} or earlier, or a shorter --horizon-days",
        )
    window = min(horizon_days, (train_until - first).days // 2)
    if window < 1:
        raise InputError(
            f"clv fit: --train-until {train_until} leaves no order history to learn from (first order {first})",
            fix=f"use a --train-until after {first + timedelta(days=2)}",
        )
    dates = [train_until - timedelta(days=window * j) for j in range(1, TRAIN_WINDOWS + 1)]
    return window, [d for j, d in enumerate(dates) if j == 0 or d >= first + timedelta(days=window)]


def load_windows(
    pool: ThreadPoolExecutor,
    engine: Engine,
    settings: Settings,
    train_until: date,
    horizon_days: int,
    window: int,
    dates: list[date],
) -> tuple[list[Window], pd.DataFrame, Future[dict[str, Any]]]:
    """The training windows as of ``dates`` (BG/NBD + Gamma-Gamma fitted on each), the backtest's features
    as of ``train_until`` and BG/NBD + Gamma-Gamma being fitted on them, from one read of the orders. The
    fits (and each window's expectations, whose totals scale the regressor's offsets) are independent, so
    they run in ``pool``, each as soon as its features are ready (the result does not depend on it); the
    backtest's fit is only needed for the final model and is left running."""

    def fitted(as_of: date, features: pd.DataFrame) -> Window:
        w = Window(as_of, features, m.fit_btyd(features), window)
        _require_finite(w.expectations, as_of, train_until)  # every row's, computed here in the pool
        return w

    wanted = [(train_until, horizon_days), *((d, window) for d in dates)]
    frames: dict[int, pd.DataFrame] = {}
    jobs: dict[int, Future[Any]] = {}
    for k, frame in iter_feature_sets(engine, settings, window, wanted):
        _require_history(frame, wanted[k][0], train_until, horizon_days, window)
        frames[k] = frame
        jobs[k] = pool.submit(m.fit_btyd, frame) if k == 0 else pool.submit(fitted, dates[k - 1], frame)
    return [jobs[k].result() for k in range(1, len(wanted))], frames[0], jobs[0]


def _require_history(
    features: pd.DataFrame, as_of: date, train_until: date, horizon_days: int, window: int
) -> None:
    """Enough customers with a repeat order as of ``as_of`` for BG/NBD to be fitted there.

    Raises:
        InputError: the counts, the thresholds and what to change.
    """
    customers, repeat = len(features), int((features["frequency"] > 1).sum())
    if repeat >= MIN_REPEAT_CUSTOMERS:
        return
    fix = _LATER_CUTOFF
    if window == horizon_days:
        fix += " or a shorter --horizon-days (shorter windows, later dates)"
    raise InputError(
        f"clv fit --train-until {train_until}: {_which(as_of, train_until)} has {customers} customers, "
        f"{repeat} of them with a repeat order; BG/NBD needs at least {MIN_REPEAT_CUSTOMERS} customers with "
        "a repeat order in every window it is fitted on",
        fix=fix,
    )


def _require_finite(expectations: pd.DataFrame, as_of: date, train_until: date) -> None:
    """BG/NBD fitted as of ``as_of`` gives every customer a finite expectation.

    Raises:
        InputError: it does not (too little repeat buying for the model: its parameters ran to a bound).
    """
    bad = int((~np.isfinite(expectations.to_numpy(dtype=np.float64))).any(axis=1).sum())
    if bad:
        raise InputError(
            f"clv fit --train-until {train_until}: BG/NBD fitted on {_which(as_of, train_until)} gives no "
            f"finite expectation for {bad} of its {len(expectations)} customers: too little repeat buying "
            "there to fit it",
            fix=_LATER_CUTOFF,
        )


_LATER_CUTOFF = (
    "use a later --train-until (the training windows are half the history before it, up to the horizon)"
)


def _which(as_of: date, train_until: date) -> str:
    """The customers a fit as of ``as_of`` is on, as the errors name them."""
    return "the backtest's customers" if as_of == train_until else f"the training window as of {as_of}"


def _stacked(windows: list[Window]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The windows' design rows, targets and offsets, built only for the regressor's rows of the windows
    stacked (:func:`model.regressor_rows`); each window's offset (its BTYD expected spend) is scaled to
    that window's actual total, so the regressor learns who spends more or less than BTYD says, not how the
    shop's level moved between the windows (that is the base expectation's job)."""
    sizes = np.array([len(w.features) for w in windows])
    rows = m.regressor_rows(int(sizes.sum()))
    starts = np.concatenate([[0], np.cumsum(sizes)])
    parts = [
        w.at(rows[(rows >= lo) & (rows < hi)] - lo)
        for w, lo, hi in zip(windows, starts[:-1], starts[1:], strict=True)
    ]
    scales = [w.target.sum() / max(float(w.offset.sum()), m.MIN_OFFSET) for w in windows]
    return (
        np.vstack([p.x for p in parts]),
        np.concatenate([p.target for p in parts]),
        np.concatenate([p.offset * scale for p, scale in zip(parts, scales, strict=True)]),
    )


def paired_confidence(
    target: np.ndarray, base: np.ndarray, *others: np.ndarray, groups: np.ndarray | None = None
) -> list[float]:
    """Per predictor in ``others``: the share of :data:`BOOTSTRAP_RESAMPLES` paired bootstrap resamples (fixed
    seed, the same resamples for every predictor) in which it has a lower mean squared error than ``base``.
    Resampled are the ``groups`` (a customer scored in several validation windows is drawn with all of
    their rows, so rows of one customer do not count as independent evidence), or the rows without them."""
    gain = np.column_stack([(base - target) ** 2 - (o - target) ** 2 for o in others])
    counts = np.ones(len(gain))
    if groups is not None:
        codes = np.unique(groups, return_inverse=True)[1]
        counts = np.bincount(codes).astype(np.float64)
        gain = np.column_stack([np.bincount(codes, weights=g) for g in gain.T])
    rng = np.random.default_rng(m.SEED)
    wins = np.zeros(len(others))
    n = len(gain)
    for _ in range(BOOTSTRAP_RESAMPLES):
        # a resample as how often each row is drawn: the same draws as a gather, one pass instead of a copy
        drawn = np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)
        wins += drawn @ gain / (drawn @ counts) > 0.0
    return [float(w) / BOOTSTRAP_RESAMPLES for w in wins]


@dataclass
class Fold:
    """One validation window's customers (``rows`` of it), their spend and every predictor's expectation."""

    as_of: date
    customers: np.ndarray
    target: np.ndarray
    preds: dict[str, np.ndarray]


def _fold(windows: list[Window], j: int, daily: pd.Series, window_days: int, rows: np.ndarray) -> Fold:
    """Every predictor's expected spend on window ``j`` (its rows ``rows``), from what is known as of its
    date: the regressor trained on the windows before it, the seasonal index from the orders up to then.
    Without an index (under two years of orders) ``seasonal`` is BTYD itself, as the model would be; ``gbm``
    and ``blend`` correct ``seasonal``."""
    valid = windows[j]
    sample = valid.at(rows)
    btyd_spend = sample.offset
    index = season.profile(daily, valid.as_of)
    seasonal = btyd_spend
    if index is not None:
        params = m.fit_seasonal(valid.features, valid.as_of, index, valid.btyd_params["gamma_gamma"])
        seasonal = m.seasonal_expectations(params, sample.features, valid.as_of, index, window_days)[
            "btyd_spend"
        ].to_numpy()
    gbm = m.gbm_spend(m.fit_gbm(*_stacked(windows[j + 1 :])), sample.x, seasonal)
    preds = {"btyd": btyd_spend, "seasonal": seasonal}
    preds |= {choice: m.combine(choice, gbm, seasonal) for choice in ("gbm", "blend")}
    customers = sample.features["customer_id"].to_numpy()
    return Fold(valid.as_of, customers, sample.target, preds)


def choose(
    pool: ThreadPoolExecutor, windows: list[Window], daily: pd.Series, window_days: int
) -> tuple[str, dict[str, Any] | None, HistGradientBoostingRegressor]:
    """The predictor for the model, its validation scores, and the regressor refitted on every window.

    Validation (time-series cross-validation on expanding windows): each of the latest
    :data:`VALIDATION_FOLDS` windows that has an older one is predicted from the windows before it, at most
    :data:`~segments.clv.model.MAX_VALIDATION_ROWS` customers in all; the folds' rows are pooled, so one
    quarter's season does not decide alone. BTYD stays the choice unless another predictor has a lower
    squared error than it in at least :data:`CHOICE_CONFIDENCE` of paired bootstrap resamples of the
    validation customers; of those that do, the lowest pooled RMSE wins. ``seasonal`` is a candidate only
    when the latest window has a seasonal index. With one window there is nothing to validate on, and BTYD
    is kept."""
    if len(windows) < 2:
        return "btyd", None, m.fit_gbm(*_stacked(windows))
    count = min(VALIDATION_FOLDS, len(windows) - 1)
    per_fold = max(1, m.MAX_VALIDATION_ROWS // count)

    def fold(j: int) -> Fold:
        return _fold(windows, j, daily, window_days, m.sample_rows(len(windows[j].features), per_fold))

    # the final regressor and the folds are independent: run in the pool
    refit = pool.submit(lambda: m.fit_gbm(*_stacked(windows)))
    folds = list(pool.map(fold, range(count)))
    final = refit.result()
    seasonal_base = season.profile(daily, windows[0].as_of) is not None
    names = [c for c in m.CHOICES if seasonal_base or c != "seasonal"]
    target = np.concatenate([f.target for f in folds])
    preds = {c: np.concatenate([f.preds[c] for f in folds]) for c in names}
    scores = evaluate_all(target, preds, ranking=False)
    others = [c for c in names if c != "btyd"]
    groups = np.concatenate([f.customers for f in folds])
    shares = paired_confidence(target, preds["btyd"], *(preds[c] for c in others), groups=groups)
    confidence = dict(zip(others, shares, strict=True))
    eligible = ["btyd", *(c for c, share in confidence.items() if share >= CHOICE_CONFIDENCE)]
    best = min(eligible, key=lambda c: (scores[c]["rmse"], m.CHOICES.index(c)))
    cv = {
        "validation_as_of": [f.as_of.isoformat() for f in folds],
        "seasonal_base": seasonal_base,
        "scores": scores,
        "folds": [
            {"as_of": f.as_of.isoformat(), "customers": len(f.target)}
            | {c: round(float(np.sqrt(np.mean((f.preds[c] - f.target) ** 2))), 2) for c in names}
            for f in folds
        ],
        "confidence_vs_btyd": confidence,
        "chosen": best,
    }
    return best, cv, final


def _baselines(settings: Settings, train: Window, test: pd.DataFrame, scale: float) -> dict[str, np.ndarray]:
    """Last period's spend and the rfm11 segment mean, scaled from the window's length to the horizon."""
    seg_mean = train.features.groupby(rfm11_segments(settings, train.features))["target"].mean()
    fallback = float(train.target.mean())
    segment = rfm11_segments(settings, test).map(seg_mean).fillna(fallback).to_numpy(dtype=np.float64)
    return {
        "last_period_spend": test["spend_last"].to_numpy(dtype=np.float64) * scale,
        "rfm11_segment_mean": segment * scale,
        "all_zero": np.zeros(len(test)),
    }


def backtest(
    fitted: m.ProjectModel,
    test: pd.DataFrame,
    horizon_days: int,
    train_until: date,
    baselines: dict[str, np.ndarray],
) -> dict[str, Any]:
    """The model, BTYD alone and the naive ``baselines`` (:func:`_baselines`, of every test customer) on the
    period after the cut-off, and calibration, on at most :data:`MAX_BACKTEST_CUSTOMERS` of the test
    customers (``customers``; ``sampled`` when fewer than all of them)."""
    rows = m.sample_rows(len(test), MAX_BACKTEST_CUSTOMERS)
    test = test.iloc[rows].reset_index(drop=True)
    pred = fitted.predict(test, horizon_days, train_until)
    _require_finite(pred, train_until, train_until)  # on the backtest's rows, computed here anyway
    actual = test["target"].to_numpy(dtype=np.float64)
    spend = pred["predicted_spend"].to_numpy()
    predictions = {"model": spend, "btyd": pred["btyd_spend"].to_numpy()}
    predictions |= {name: p[rows] for name, p in baselines.items()}
    scores = evaluate_all(actual, predictions)
    return {
        **scores,
        "customers": len(rows),
        "sampled": len(rows) < len(baselines["all_zero"]),
        "actual_total": round(float(actual.sum()), 2),
        "expected_total": round(float(spend.sum()), 2),
        "beats_baselines": all(beats(scores["model"], scores[b]) for b in BASELINES),
        "against": {b: compare(scores["model"], scores[b]) for b in BASELINES},
        "calibration": calibration(
            spend,
            actual,
            pred["predicted_orders"].to_numpy(),
            test["target_orders"].to_numpy(dtype=np.float64),
            pred["p_buy"].to_numpy(),
        ),
    }


def _store(
    engine: Engine,
    model_id: str,
    train_until: date,
    horizon_days: int,
    params: dict[str, Any],
    metrics: dict[str, Any],
) -> None:
    row = {
        "model_id": model_id,
        "train_until": train_until,
        "horizon_days": horizon_days,
        "kind": m.MODEL_KIND,
        "params": json.dumps(params, separators=(",", ":")),
        "metrics": json.dumps(metrics, sort_keys=True),
        "created_at": utcnow(),
    }
    with transaction(engine) as conn:
        conn.execute(t.clv_models.delete().where(t.clv_models.c.model_id == model_id))
        conn.execute(t.clv_models.insert().values(**row))


def _final_model(
    choice: str,
    test: pd.DataFrame,
    params: dict[str, Any],
    daily: pd.Series,
    train_until: date,
    gbm: HistGradientBoostingRegressor | None,
    window: int,
    seasonal: bool,
) -> m.ProjectModel:
    """The model as of the cut-off: BTYD fitted on every customer then (``params``), and when ``seasonal``
    (the choice is ``seasonal``, or a regressor validated on the seasonal base) the index and BG/NBD in
    seasonal time as of then."""
    index = season.profile(daily, train_until) if seasonal else None
    if index is None:
        return m.ProjectModel("btyd" if choice == "seasonal" else choice, params, gbm, window)
    warped = m.fit_seasonal(test, train_until, index, params["gamma_gamma"])
    return m.ProjectModel(choice, params, gbm, window, index, warped)


def fit_clv(engine: Engine, settings: Settings, train_until: date, horizon_days: int) -> ClvFitResult:
    """Fit on the windows before ``T``, backtest on ``(T, T + h]``, store in ``clv_models`` (replacing a
    model with the same cut-off and horizon).

    Raises:
        InputError: see :func:`plan_windows`; or a window has too few customers or repeat buyers
            (:func:`_require_history`). Nothing is written.
    """
    started = time.perf_counter()
    window, dates = plan_windows(data_range(engine, settings), train_until, horizon_days)
    # the independent parts (BTYD fits, regressors, validation windows, baselines) run two at a time,
    # single-threaded: their arrays are ~10^5 rows, where BLAS and OpenMP threads cost more than they save
    with threadpool_limits(1), ThreadPoolExecutor(max_workers=2) as pool:
        windows, test, test_btyd = load_windows(
            pool, engine, settings, train_until, horizon_days, window, dates
        )
        daily = season.daily_spend(engine, settings, train_until)
        baselines = pool.submit(_baselines, settings, windows[0], test, horizon_days / window)
        choice, cv, regressor = choose(pool, windows, daily, window)
        gbm = regressor if choice in ("gbm", "blend") else None
        seasonal = choice != "btyd" and cv is not None and bool(cv["seasonal_base"])
        fitted = _final_model(choice, test, test_btyd.result(), daily, train_until, gbm, window, seasonal)
        scores = backtest(fitted, test, horizon_days, train_until, baselines.result())
    metrics: dict[str, Any] = {
        "backtest": {
            "features_as_of": train_until.isoformat(),
            "period": [train_until.isoformat(), (train_until + timedelta(days=horizon_days)).isoformat()],
            **{key: scores.pop(key) for key in ("customers", "sampled")},
        },
        "train": {
            "features_as_of": [d.isoformat() for d in dates],
            "window_days": window,
            "rows": sum(len(w.features) for w in windows),
            "regressor_rows": len(m.regressor_rows(sum(len(w.features) for w in windows))),
            "customers": len(windows[0].features),
        },
        "choice": choice,
        "cross_validation": cv,
        "test_customers": len(test),
        **scores,
    }
    params = {
        "format": m.FORMAT,
        "kind": m.MODEL_KIND,
        "choice": choice,
        "window_days": window,
        "features": [*FEATURES, *m.BTYD_FEATURES],
        "hyperparameters": m.HYPERPARAMETERS,
        "btyd": fitted.btyd_params,
        "gbm": None if gbm is None else m.dump_gbm(gbm),
        "season": None
        if fitted.seasonal_params is None
        else {"index": season.to_json(fitted.season_index), "btyd": fitted.seasonal_params},
    }
    model_id = model_id_for(train_until, horizon_days)
    _store(engine, model_id, train_until, horizon_days, params, metrics)
    return ClvFitResult(
        model_id,
        train_until,
        horizon_days,
        len(windows[0].features),
        len(test),
        metrics,
        round(time.perf_counter() - started, 3),
    )
