"""Predicted customer value in the next period (CLV), fitted on an earlier period, checked on a later one.

The model follows the "9 + 3 months" split of the analysis this project grew from, generalised to any
horizon ``h`` and training cut-off ``T``:

* **features as of a date t** come from orders on or before t, computed in the warehouse by one SQL
  statement (one row per customer): recency, frequency, monetary, tenure, mean days between orders,
  average and largest order, spend and orders in the last ``h`` days, spend in the ``h`` days before that,
  and recency over the mean gap (how overdue the next order is).
* **fit**: features as of ``T − h`` → target = spend in ``(T − h, T]``. Nothing after ``T`` is seen.
* **backtest**: features as of ``T`` → predicted spend in ``(T, T + h]``, compared with what happened,
  next to two naive baselines: last period's spend (spend in ``(T − h, T]``) and the mean of the
  training target per ``rfm11`` segment. Metrics: MAE, RMSE, Spearman rank correlation and top-decile
  capture (share of the period's actual revenue made by the 10% of customers ranked highest).

The model has two parts, both scikit-learn gradient-boosted trees on the same features: a
``HistGradientBoostingRegressor`` with a Poisson loss for the expected spend (the target is non-negative,
mostly zero and heavy-tailed; the log link keeps it positive) and a ``HistGradientBoostingClassifier`` for
the probability of buying at all. The point prediction is the expected spend, or 0 when the purchase
probability is below :data:`BUY_THRESHOLD` (see :func:`predict_value`). Both are stored in
``clv_models.params`` as plain JSON — baseline, link and every tree's split features, thresholds, children
and leaf values — and predictions are made from that JSON by :func:`predict_from_params`, so a stored
model is inspectable and loading one never unpickles anything.

The ``clv_tier`` scheme scores the customers of a snapshot with the latest model trained on or before the
snapshot's ``as_of`` and splits the expected spend into Low / Mid / High at its tertiles (equal values
always share a tier).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import and_, case, func, literal_column, select
from sqlalchemy.engine import Engine
from sqlalchemy.sql import Select

from activation import statuses
from activation import tables as t
from activation.clock import utcnow
from activation.errors import ConfigError, InputError, NotFoundError
from activation.settings import Settings
from activation.warehouse import transaction
from segments.schemes import register_assigner

FEATURES: tuple[str, ...] = (
    "recency_days",
    "frequency",
    "monetary",
    "tenure_days",
    "mean_gap_days",
    "avg_order",
    "max_order",
    "spend_last",
    "orders_last",
    "spend_prev",
    "recency_over_gap",
    "spend_30d",
    "orders_30d",
    "spend_last_year",
)
MODEL_KIND = "hgb_two_part"
SEED = 20240614
HYPERPARAMETERS: dict[str, Any] = {
    "learning_rate": 0.03,
    "max_iter": 300,
    "max_leaf_nodes": 15,
    "min_samples_leaf": 80,
    "l2_regularization": 1.0,
    "early_stopping": False,
    "random_state": SEED,
}
#: Below this purchase probability the point prediction is 0 (see :func:`predict_value`).
BUY_THRESHOLD = 0.3
MIN_TRAIN_CUSTOMERS = 50
#: Training windows stacked (features as of T−h, T−2h, …, each with the spend of the h days after it),
#: as far as the data reaches; every target ends on or before T.
TRAIN_WINDOWS = 4
TIERS: tuple[str, ...] = ("Low", "Mid", "High")


# --- features (SQL, pushed down) -----------------------------------------------------------------


def _orders(settings: Settings) -> Any:
    src = settings.orders
    cols = [src.order_id, src.customer_id, src.ordered_at, src.amount] + ([src.status] if src.status else [])
    return t.source_table(src.table, *cols)


def _day_start(d: date) -> datetime:
    return datetime(d.year, d.month, d.day)


def feature_query(settings: Settings, as_of: date, horizon_days: int, *, with_target: bool) -> Select[Any]:
    """One row per customer with an order on or before ``as_of``: the raw aggregates of :data:`FEATURES`
    (dates as timestamps; day differences are taken after), plus ``target`` = spend in
    ``(as_of, as_of + horizon]`` when ``with_target``."""
    src = settings.orders
    o = _orders(settings)
    cid, oid, ts, amount = o.c[src.customer_id], o.c[src.order_id], o.c[src.ordered_at], o.c[src.amount]
    end = _day_start(as_of + timedelta(days=1))  # orders on the as_of day count
    last_start = _day_start(as_of - timedelta(days=horizon_days - 1))
    prev_start = _day_start(as_of - timedelta(days=2 * horizon_days - 1))
    d30_start = _day_start(as_of - timedelta(days=29))
    # the same period a year earlier: (as_of - 365, as_of - 365 + h], never past as_of
    ly_start = _day_start(as_of - timedelta(days=364))
    ly_end = min(_day_start(as_of - timedelta(days=364 - horizon_days)), end)
    past = ts < end
    zero: Any = literal_column("0.0")
    cols = [
        cid.label("customer_id"),
        func.min(case((past, ts))).label("first_at"),
        func.max(case((past, ts))).label("last_at"),
        func.count(case((past, oid))).label("frequency"),
        func.coalesce(func.sum(case((past, amount), else_=zero)), zero).label("monetary"),
        func.max(case((past, amount))).label("max_order"),
        func.coalesce(func.sum(case((and_(past, ts >= last_start), amount), else_=zero)), zero).label(
            "spend_last"
        ),
        func.count(case((and_(past, ts >= last_start), oid))).label("orders_last"),
        func.coalesce(
            func.sum(case((and_(ts >= prev_start, ts < last_start), amount), else_=zero)), zero
        ).label("spend_prev"),
        func.coalesce(func.sum(case((and_(past, ts >= d30_start), amount), else_=zero)), zero).label(
            "spend_30d"
        ),
        func.count(case((and_(past, ts >= d30_start), oid))).label("orders_30d"),
        func.coalesce(func.sum(case((and_(ts >= ly_start, ts < ly_end), amount), else_=zero)), zero).label(
            "spend_last_year"
        ),
    ]
    where = [ts < (_day_start(as_of + timedelta(days=horizon_days + 1)) if with_target else end)]
    if with_target:
        cols.append(func.coalesce(func.sum(case((ts >= end, amount), else_=zero)), zero).label("target"))
    if src.status and settings.excluded_statuses:
        where.append(statuses.counts(o.c[src.status], settings.excluded_statuses))
    return select(*cols).where(*where).group_by(cid).having(func.count(case((past, oid))) > 0).order_by(cid)


def load_features(
    engine: Engine, settings: Settings, as_of: date, horizon_days: int, *, with_target: bool = False
) -> pd.DataFrame:
    """The per-customer feature frame as of ``as_of`` (sorted by customer_id)."""
    with engine.connect() as conn:
        raw = pd.read_sql(feature_query(settings, as_of, horizon_days, with_target=with_target), conn)
    return _derive(raw, as_of)


def _derive(raw: pd.DataFrame, as_of: date) -> pd.DataFrame:
    ref = pd.Timestamp(as_of)
    first = pd.to_datetime(raw["first_at"]).dt.normalize()
    last = pd.to_datetime(raw["last_at"]).dt.normalize()
    out = pd.DataFrame({"customer_id": raw["customer_id"].astype(str)})
    out["recency_days"] = (ref - last).dt.days.astype("float64")
    out["frequency"] = raw["frequency"].astype("float64")
    out["monetary"] = raw["monetary"].astype("float64")
    out["tenure_days"] = (ref - first).dt.days.astype("float64")
    span = (last - first).dt.days.astype("float64")
    out["mean_gap_days"] = np.where(out["frequency"] > 1, span / (out["frequency"] - 1).clip(lower=1), np.nan)
    out["avg_order"] = out["monetary"] / out["frequency"].clip(lower=1)
    out["max_order"] = raw["max_order"].astype("float64")
    out["spend_last"] = raw["spend_last"].astype("float64")
    out["orders_last"] = raw["orders_last"].astype("float64")
    out["spend_prev"] = raw["spend_prev"].astype("float64")
    for name in ("spend_30d", "orders_30d", "spend_last_year"):
        out[name] = raw[name].astype("float64")
    out["recency_over_gap"] = out["recency_days"] / out["mean_gap_days"].where(out["mean_gap_days"] > 0)
    if "target" in raw:
        out["target"] = raw["target"].astype("float64")
    return out.reset_index(drop=True)


def data_range(engine: Engine, settings: Settings) -> tuple[date, date] | None:
    """First and last order date among the orders segmentation counts (None when there are none)."""
    src = settings.orders
    o = _orders(settings)
    ts = o.c[src.ordered_at]
    q = select(func.min(ts), func.max(ts))
    if src.status and settings.excluded_statuses:
        q = q.where(statuses.counts(o.c[src.status], settings.excluded_statuses))
    with engine.connect() as conn:
        lo, hi = conn.execute(q).one()
    if lo is None:
        return None
    return pd.Timestamp(lo).date(), pd.Timestamp(hi).date()


# --- the model as JSON ---------------------------------------------------------------------------


def export_model(est: Any) -> dict[str, Any]:
    """A fitted ``HistGradientBoostingRegressor`` (or binary classifier) as plain JSON: baseline, link and
    every tree (split feature, threshold, side for missing values, children, leaf value)."""
    trees = []
    for (pred,) in est._predictors:
        nodes = pred.nodes
        if nodes["is_categorical"].any():  # never: no categorical features are declared
            raise ValueError("categorical splits are not exported")
        trees.append(
            {
                "feature": nodes["feature_idx"].astype(int).tolist(),
                "threshold": [float(v) for v in nodes["num_threshold"]],
                "missing_left": nodes["missing_go_to_left"].astype(int).tolist(),
                "left": nodes["left"].astype(int).tolist(),
                "right": nodes["right"].astype(int).tolist(),
                "leaf": nodes["is_leaf"].astype(int).tolist(),
                "value": [float(v) for v in nodes["value"]],
            }
        )
    return {
        "baseline": float(np.ravel(est._baseline_prediction)[0]),
        "link": {"poisson": "log", "log_loss": "logit"}.get(est.loss, "identity"),
        "trees": trees,
    }


def predict_from_params(model: dict[str, Any], x: np.ndarray) -> np.ndarray:
    """Predictions of an exported model for the feature matrix ``x`` (columns in ``model['features']``)."""
    n = len(x)
    raw = np.full(n, model["baseline"], dtype=np.float64)
    rows = np.arange(n)
    for tree in model["trees"]:
        feature = np.asarray(tree["feature"], dtype=np.int64)
        threshold = np.asarray(tree["threshold"], dtype=np.float64)
        missing_left = np.asarray(tree["missing_left"], dtype=bool)
        left = np.asarray(tree["left"], dtype=np.int64)
        right = np.asarray(tree["right"], dtype=np.int64)
        leaf = np.asarray(tree["leaf"], dtype=bool)
        value = np.asarray(tree["value"], dtype=np.float64)
        node = np.zeros(n, dtype=np.int64)
        active = ~leaf[node]
        while active.any():
            idx = rows[active]
            nd = node[idx]
            xv = x[idx, feature[nd]]
            go_left = np.where(np.isnan(xv), missing_left[nd], xv <= threshold[nd])
            node[idx] = np.where(go_left, left[nd], right[nd])
            active[idx] = ~leaf[node[idx]]
        raw += value[node]
    if model.get("link") == "log":
        return np.exp(raw)
    if model.get("link") == "logit":
        return 1.0 / (1.0 + np.exp(-raw))
    return raw


def predict_value(params: dict[str, Any], x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The two-part model: ``(predicted, expected, p_buy)`` per row of ``x``.

    ``expected`` is the expected spend over the horizon (Poisson regressor), ``p_buy`` the probability of
    buying at all (classifier); the point prediction is ``expected`` where ``p_buy >= threshold`` and 0
    otherwise — a customer unlikely to buy is predicted to spend nothing, as the outcome mostly is.
    """
    expected = predict_from_params(params["spend"], x)
    p_buy = predict_from_params(params["purchase"], x)
    return np.where(p_buy >= params["threshold"], expected, 0.0), expected, p_buy


# --- metrics -------------------------------------------------------------------------------------


def evaluate(actual: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """MAE, RMSE, Spearman rank correlation and top-decile capture of a prediction."""
    from scipy.stats import spearmanr

    actual = np.asarray(actual, dtype=np.float64)
    predicted = np.asarray(predicted, dtype=np.float64)
    err = predicted - actual
    n_top = max(1, int(np.ceil(len(actual) / 10)))
    order = np.argsort(-predicted, kind="stable")
    total = actual.sum()
    if np.ptp(predicted) == 0 or np.ptp(actual) == 0:
        rho = 0.0
    else:
        rho = float(spearmanr(predicted, actual).statistic)
    return {
        "mae": round(float(np.abs(err).mean()), 4),
        "rmse": round(float(np.sqrt((err**2).mean())), 4),
        "spearman": round(rho, 4),
        "top_decile_capture": round(float(actual[order[:n_top]].sum() / total) if total > 0 else 0.0, 4),
    }


def beats(model: dict[str, float], baseline: dict[str, float]) -> bool:
    """The model is better on every metric (lower MAE/RMSE, higher Spearman and capture)."""
    return (
        model["mae"] <= baseline["mae"]
        and model["rmse"] <= baseline["rmse"]
        and model["spearman"] >= baseline["spearman"]
        and model["top_decile_capture"] >= baseline["top_decile_capture"]
    )


def rfm11_segments(settings: Settings, features: pd.DataFrame) -> pd.Series:
    """The ``rfm11`` segment of each customer from quintile R and F scores of the features (for the
    segment-mean baseline; the rules come from the shipped scheme file)."""
    from segments.kmeans import quantile_scores
    from segments.schemes import load_scheme

    scheme = load_scheme("rfm11", settings)
    scores: dict[str, np.ndarray] = {}
    source = {"r": "recency_days", "f": "frequency", "m": "monetary"}
    for metric, bins in scheme.scores.items():
        if bins.method != "quantile":
            raise ConfigError(f"rfm11 scheme: the CLV baseline expects quantile scores for {metric}")
        scores[metric], _ = quantile_scores(
            features[source[metric]].to_numpy(), bins.n, higher_is_better=metric != "r"
        )
    combos = pd.DataFrame(scores)
    keys = combos.drop_duplicates()
    names = {
        tuple(row): scheme.assign(dict(zip(keys.columns, map(int, row), strict=True)))
        for row in keys.to_numpy()
    }
    return pd.Series([names[tuple(row)] for row in combos.to_numpy()], index=features.index)


# --- fit -----------------------------------------------------------------------------------------


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


def fit_clv(engine: Engine, settings: Settings, train_until: date, horizon_days: int) -> ClvFitResult:
    """Fit on features as of ``T − h`` → spend in ``(T − h, T]``; backtest on ``(T, T + h]``; store in
    ``clv_models`` (replacing a model with the same cut-off and horizon).

    Raises:
        InputError: the horizon is not positive, ``T + h`` is past the last order, or the training window
            has too few customers. Nothing is written.
    """
    import time

    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from threadpoolctl import threadpool_limits

    started = time.perf_counter()
    if horizon_days < 1:
        raise InputError(
            f"--horizon-days must be at least 1 (got {horizon_days})", fix="e.g. --horizon-days 90"
        )
    span = data_range(engine, settings)
    if span is None:
        raise InputError(
            "clv fit: the warehouse has no orders",
            fix="load orders first: activation ingest … or activation demo-data",
        )
    first, last = span
    test_end = train_until + timedelta(days=horizon_days)
    if test_end > last:
        latest = last - timedelta(days=horizon_days)
        raise InputError(
            f"clv fit: --train-until {train_until} + {horizon_days} days = {test_end} is past the last order "
            f"({last}); the backtest period would be incomplete",
            fix=f"use --train-until {latest} or earlier, or a shorter --horizon-days",
        )
    fit_as_of = train_until - timedelta(days=horizon_days)
    if fit_as_of < first:
        raise InputError(
            f"clv fit: the training features would be as of {fit_as_of}, before the first order ({first})",
            fix=f"use a --train-until after {first + timedelta(days=horizon_days)} or a shorter --horizon-days",
        )
    windows = [
        train_until - timedelta(days=horizon_days * j)
        for j in range(1, TRAIN_WINDOWS + 1)
        if j == 1 or train_until - timedelta(days=horizon_days * j) >= first + timedelta(days=horizon_days)
    ]
    parts = [load_features(engine, settings, w, horizon_days, with_target=True) for w in windows]
    train = parts[0]
    stacked = pd.concat(parts, ignore_index=True)
    test = load_features(engine, settings, train_until, horizon_days, with_target=True)
    if len(train) < MIN_TRAIN_CUSTOMERS:
        raise InputError(
            f"clv fit: only {len(train)} customers have orders on or before {fit_as_of}; at least "
            f"{MIN_TRAIN_CUSTOMERS} are needed to fit",
            fix="use a later --train-until or a shorter --horizon-days",
        )
    x_train = stacked[list(FEATURES)].to_numpy(dtype=np.float64)
    y_stacked = stacked["target"].to_numpy(dtype=np.float64)
    with threadpool_limits(1 if len(stacked) < 200_000 else None):  # OpenMP costs more than it saves here
        spend = HistGradientBoostingRegressor(loss="poisson", **HYPERPARAMETERS).fit(x_train, y_stacked)
        purchase = HistGradientBoostingClassifier(**HYPERPARAMETERS).fit(x_train, y_stacked > 0)
    y_train = train["target"].to_numpy(dtype=np.float64)
    params = {
        "kind": MODEL_KIND,
        "features": list(FEATURES),
        "hyperparameters": HYPERPARAMETERS,
        "threshold": BUY_THRESHOLD,
        "fit_as_of": [w.isoformat() for w in windows],
        "spend": export_model(spend),
        "purchase": export_model(purchase),
    }
    x_test = test[list(FEATURES)].to_numpy(dtype=np.float64)
    y_test = test["target"].to_numpy(dtype=np.float64)
    predicted, expected, _ = predict_value(params, x_test)

    train_segment = rfm11_segments(settings, train)
    seg_mean = train.groupby(train_segment)["target"].mean()
    test_segment = rfm11_segments(settings, test)
    baseline_segment = test_segment.map(seg_mean).fillna(float(y_train.mean())).to_numpy(dtype=np.float64)
    baseline_last = test["spend_last"].to_numpy(dtype=np.float64)

    scores = {
        "model": evaluate(y_test, predicted),
        "last_period_spend": evaluate(y_test, baseline_last),
        "rfm11_segment_mean": evaluate(y_test, baseline_segment),
    }
    metrics: dict[str, Any] = {
        "backtest": {
            "features_as_of": train_until.isoformat(),
            "period": [train_until.isoformat(), test_end.isoformat()],
        },
        "train": {
            "features_as_of": [w.isoformat() for w in windows],
            "rows": len(stacked),
            "customers": len(train),
            "target_mean": round(float(y_train.mean()), 4),
        },
        "test_customers": len(test),
        "actual_total": round(float(y_test.sum()), 2),
        "expected_total": round(float(expected.sum()), 2),
        **scores,
        "beats_baselines": beats(scores["model"], scores["last_period_spend"])
        and beats(scores["model"], scores["rfm11_segment_mean"]),
    }
    model_id = model_id_for(train_until, horizon_days)
    row = {
        "model_id": model_id,
        "train_until": train_until,
        "horizon_days": horizon_days,
        "kind": MODEL_KIND,
        "params": json.dumps(params, separators=(",", ":")),
        "metrics": json.dumps(metrics, sort_keys=True),
        "created_at": utcnow(),
    }
    with transaction(engine) as conn:
        conn.execute(t.clv_models.delete().where(t.clv_models.c.model_id == model_id))
        conn.execute(t.clv_models.insert().values(**row))
    return ClvFitResult(
        model_id=model_id,
        train_until=train_until,
        horizon_days=horizon_days,
        train_customers=len(train),
        test_customers=len(test),
        metrics=metrics,
        seconds=round(time.perf_counter() - started, 3),
    )


# --- using a stored model ------------------------------------------------------------------------


@dataclass
class StoredModel:
    model_id: str
    train_until: date
    horizon_days: int
    params: dict[str, Any]
    metrics: dict[str, Any]


def latest_model(engine: Engine, as_of: date | None = None) -> StoredModel:
    """The most recent model trained on or before ``as_of`` (latest cut-off, then latest fit).

    Raises:
        NotFoundError: there is none — run ``activation clv fit`` first.
    """
    m = t.clv_models
    q = select(m).where(m.c.kind == MODEL_KIND)
    if as_of is not None:
        q = q.where(m.c.train_until <= as_of)
    q = q.order_by(m.c.train_until.desc(), m.c.created_at.desc(), m.c.model_id.desc()).limit(1)
    with engine.connect() as conn:
        row = conn.execute(q).mappings().first()
    if row is None:
        when = f" trained on or before {as_of}" if as_of is not None else ""
        raise NotFoundError(
            f"no CLV model{when} in the warehouse; the clv_tier scheme needs one",
            fix="fit one first: activation clv fit --train-until YYYY-MM-DD --horizon-days N "
            "(with the cut-off on or before the snapshot's --as-of)",
        )
    return StoredModel(
        model_id=row["model_id"],
        train_until=pd.Timestamp(row["train_until"]).date(),
        horizon_days=int(row["horizon_days"]),
        params=json.loads(row["params"]),
        metrics=json.loads(row["metrics"]),
    )


def predict_customers(engine: Engine, settings: Settings, model: StoredModel, as_of: date) -> pd.DataFrame:
    """``customer_id``, ``predicted`` and ``expected`` spend in ``(as_of, as_of + horizon]`` and ``p_buy``
    for every customer with an order on or before ``as_of``."""
    feats = load_features(engine, settings, as_of, model.horizon_days)
    x = feats[list(model.params["features"])].to_numpy(dtype=np.float64)
    predicted, expected, p_buy = predict_value(model.params, x)
    return pd.DataFrame(
        {"customer_id": feats["customer_id"], "predicted": predicted, "expected": expected, "p_buy": p_buy}
    )


def tiers(predicted: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """Low / Mid / High at the tertiles of the predicted value; equal predictions share a tier."""
    from segments.kmeans import quantile_scores

    scores, cuts = quantile_scores(np.round(np.asarray(predicted, dtype=np.float64), 6), 3)
    return np.asarray(TIERS, dtype=object)[scores - 1], cuts


# --- the ``clv_tier`` scheme kind ------------------------------------------------------------------


def assign_clv_tier(ctx: Any, metrics: pd.DataFrame) -> pd.Series:
    """Assigner of ``kind: clv_tier`` schemes: Low / Mid / High expected spend of every customer (the
    model's expected value, before the purchase-probability cut, so tiers are tertiles).

    Raises:
        NotFoundError: no CLV model trained on or before the snapshot's ``as_of`` (nothing is written).
    """
    model = latest_model(ctx.engine, ctx.as_of)
    preds = predict_customers(ctx.engine, ctx.settings, model, ctx.as_of)
    merged = metrics[["customer_id"]].astype({"customer_id": str}).merge(preds, on="customer_id", how="left")
    missing = int(merged["expected"].isna().sum())
    if missing:
        ctx.notes.append(f"{missing} customer(s) had no CLV features and were scored 0")
    predicted = merged["expected"].fillna(0.0).to_numpy(dtype=np.float64)
    tier, cuts = tiers(predicted)
    ctx.info.update(
        {
            "kind": "clv_tier",
            "model_id": model.model_id,
            "train_until": model.train_until.isoformat(),
            "horizon_days": model.horizon_days,
            "tier_cutpoints": [round(c, 6) for c in cuts],
            "expected_mean": {
                name: round(float(predicted[tier == name].mean()), 4) if (tier == name).any() else None
                for name in TIERS
            },
            "backtest": {
                k: model.metrics.get(k) for k in ("model", "last_period_spend", "rfm11_segment_mean")
            },
        }
    )
    return pd.Series(tier, index=metrics.index, name="segment")


register_assigner("clv_tier", assign_clv_tier)
