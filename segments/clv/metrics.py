"""How a CLV prediction is scored on a backtest: MAE, RMSE, Spearman, top-decile capture and the total,
calibration by decile, and the ``rfm11`` segment of each customer (for the segment-mean baseline)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from scipy.stats import rankdata

from activation.errors import ConfigError
from activation.settings import Settings
from segments.kmeans import quantile_scores
from segments.schemes import load_scheme

Array = NDArray[np.float64]
#: The metrics that decide whether a model beats a baseline (lower RMSE, higher Spearman and capture).
#: MAE is reported but not compared: an expected value is not a median, and on a period where most
#: customers buy nothing "0 for everyone" wins on MAE by construction.
DECIDING = ("rmse", "spearman", "top_decile_capture")


def evaluate(actual: Array, predicted: Array, *, ranking: bool = True) -> dict[str, float]:
    """MAE, RMSE, Spearman rank correlation, top-decile capture (share of the actual total made by the
    10 % ranked highest) and total predicted / actual of a prediction; and two reported, not deciding,
    scores of the ranking: ``buyer_auc``, the chance that a customer who bought ranks above one who did
    not (ties count half), and ``buyers_spearman``, Spearman among the customers who bought.

    Over all customers, Spearman rewards a predictor that ties the customers who buy nothing: a
    prediction of exactly 0 for most of them (last period's spend) matches the actuals' tie at 0 and
    scores high whatever it does with the rest. The two reported scores split that into telling buyers
    from the others and ordering the buyers. ``ranking=False`` leaves those two out (the validation, which
    chooses on RMSE, does not need them)."""
    return evaluate_all(actual, {"": predicted}, ranking=ranking)[""]


def evaluate_all(
    actual: Array, predictions: dict[str, Array], *, ranking: bool = True
) -> dict[str, dict[str, float]]:
    """:func:`evaluate` of each prediction against the same ``actual``, whose ranks are computed once."""
    actual = np.asarray(actual, dtype=np.float64)
    bought = actual > 0
    rank_a = rankdata(actual)
    rank_ab = rankdata(actual[bought]) if ranking else rank_a
    return {
        name: _scores(actual, np.asarray(p, dtype=np.float64), rank_a, bought, rank_ab, ranking)
        for name, p in predictions.items()
    }


def _scores(
    actual: Array,
    predicted: Array,
    rank_a: Array,
    bought: NDArray[np.bool_],
    rank_ab: Array,
    ranking: bool,
) -> dict[str, float]:
    err = predicted - actual
    n_top = max(1, int(np.ceil(len(actual) / 10)))
    order = np.argsort(-predicted, kind="stable")
    total = float(actual.sum())
    rank_p = rankdata(predicted)  # average ranks, once: Spearman's and the AUC's
    scores = {
        "mae": round(float(np.abs(err).mean()), 4),
        "rmse": round(float(np.sqrt((err**2).mean())), 4),
        "spearman": round(_spearman(predicted, actual, rank_p, rank_a), 4),
        "top_decile_capture": round(float(actual[order[:n_top]].sum()) / total if total > 0 else 0.0, 4),
        "total_ratio": round(float(predicted.sum()) / total if total > 0 else 0.0, 4),
    }
    if ranking:
        scores["buyer_auc"] = round(_auc(rank_p, bought), 4)
        scores["buyers_spearman"] = round(_spearman(predicted[bought], actual[bought], None, rank_ab), 4)
    return scores


def _spearman(predicted: Array, actual: Array, rank_p: Array | None, rank_a: Array) -> float:
    """Spearman's rho (Pearson's r of the average ranks, as ``scipy.stats.spearmanr``); 0 where either
    side is constant (or has fewer than two values). ``rank_p``: the ranks of ``predicted`` if known;
    ``rank_a``: those of ``actual``."""
    if len(actual) < 2 or np.ptp(predicted) == 0 or np.ptp(actual) == 0:
        return 0.0
    ranks = rankdata(predicted) if rank_p is None else rank_p
    return float(np.corrcoef(ranks, rank_a)[0, 1])


def _auc(ranks: Array, positive: NDArray[np.bool_]) -> float:
    """Area under the ROC curve of the scores with these average ranks, for ``positive`` (Mann-Whitney,
    ties half); 0.5 without both classes."""
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return 0.5
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def compare(model: dict[str, float], baseline: dict[str, float]) -> str:
    """``better`` (at least as good on every metric of :data:`DECIDING` and better on one), ``same`` (equal
    on all three: the chosen model is the baseline, or predicts like it), ``worse`` (at most as good on
    every one) or ``mixed``."""
    # signed so that positive is better for the model
    gains = [
        baseline["rmse"] - model["rmse"],
        model["spearman"] - baseline["spearman"],
        model["top_decile_capture"] - baseline["top_decile_capture"],
    ]
    if all(g == 0 for g in gains):
        return "same"
    if all(g >= 0 for g in gains):
        return "better"
    return "worse" if all(g <= 0 for g in gains) else "mixed"


def beats(model: dict[str, float], baseline: dict[str, float]) -> bool:
    """The model is :func:`compare`'s ``better``: a tie is not a win."""
    return compare(model, baseline) == "better"


def _deciles(score: Array) -> NDArray[np.int64]:
    """Decile 1..10 of each value (10 = highest); equal values share a decile."""
    scores, _ = quantile_scores(np.round(np.asarray(score, dtype=np.float64), 9), 10)
    return np.asarray(scores, dtype=np.int64)


def calibration(
    predicted_spend: Array,
    actual_spend: Array,
    predicted_orders: Array,
    actual_orders: Array,
    p_buy: Array,
) -> dict[str, list[dict[str, float]]]:
    """Calibration tables on a backtest.

    ``by_spend_decile``: per decile of predicted spend, the mean predicted and actual spend and orders.
    ``p_buy``: per decile of the BG/NBD probability of buying at all in the period (P(alive) × P(the
    purchase process fires)), its mean next to the share who did buy — the observable side of P(alive).
    """
    frame = pd.DataFrame(
        {
            "ps": predicted_spend,
            "as": actual_spend,
            "po": predicted_orders,
            "ao": actual_orders,
            "pb": p_buy,
            "bought": (np.asarray(actual_orders) > 0).astype(np.float64),
        }
    )
    spend = frame.groupby(_deciles(frame["ps"].to_numpy()))
    buy = frame.groupby(_deciles(frame["pb"].to_numpy()))
    return {
        "by_spend_decile": [
            {
                "decile": int(k),
                "customers": len(g),
                "predicted_spend": round(float(g["ps"].mean()), 4),
                "actual_spend": round(float(g["as"].mean()), 4),
                "predicted_orders": round(float(g["po"].mean()), 4),
                "actual_orders": round(float(g["ao"].mean()), 4),
            }
            for k, g in spend
        ],
        "p_buy": [
            {
                "decile": int(k),
                "customers": len(g),
                "predicted": round(float(g["pb"].mean()), 4),
                "actual": round(float(g["bought"].mean()), 4),
            }
            for k, g in buy
        ],
    }


def rfm11_segments(settings: Settings, features: pd.DataFrame) -> pd.Series:
    """The ``rfm11`` segment of each customer from quintile R and F scores of the features (for the
    segment-mean baseline; the rules come from the shipped scheme file)."""
    scheme = load_scheme("rfm11", settings)
    scores: dict[str, Any] = {}
    source = {"r": "recency_days", "f": "frequency", "m": "monetary"}
    for metric, bins in scheme.scores.items():
        if bins.method != "quantile":
            raise ConfigError(f"rfm11 scheme: the CLV baseline expects quantile scores for {metric}")
        scores[metric], _ = quantile_scores(
            features[source[metric]].to_numpy(), bins.n, higher_is_better=metric != "r"
        )
    # each distinct score combination is assigned once (at most bins^3 of them), as one integer key per row
    key = np.zeros(len(features), dtype=np.int64)
    for v in scores.values():
        key = key * (max(b.n for b in scheme.scores.values()) + 1) + np.asarray(v, dtype=np.int64)
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    names = np.array([scheme.assign({k: int(v[i]) for k, v in scores.items()}) for i in first], dtype=object)
    return pd.Series(names[inverse.reshape(-1)], index=features.index)
