"""The CLV model: BG/NBD + Gamma-Gamma expectations, and gradient boosting that uses them.

Three predictors of the spend in the next ``h`` days, all from features as of the prediction date:

* ``btyd``: E[orders in h days] (BG/NBD) × E[order value] (Gamma-Gamma);
* ``gbm``: a Poisson ``HistGradientBoostingRegressor`` on the RFM features plus the BTYD expectations over
  the training windows' length ``L`` (expected orders, expected spend, P(alive)), its target the spend over
  ``L`` days; for a horizon longer than ``L`` it is scaled per customer by the BTYD ratio
  E[spend in h] / E[spend in L], so it carries to any horizon the way BG/NBD does;
* ``blend``: the mean of the two.

Storage: the BTYD parameters are plain JSON; the regressor is written with ``skops.io`` (a documented,
non-pickle format whose loader only builds allowed types) and base64 inside the model's JSON, with the
scikit-learn and skops versions it was written by. A model written by another scikit-learn minor version,
or in the format of earlier releases, is refused with the fix: re-run ``activation clv fit``.
"""

from __future__ import annotations

import base64
import zipfile
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

import numpy as np
import pandas as pd
import skops.io as sio
from numpy.typing import NDArray
from sklearn.ensemble import HistGradientBoostingRegressor
from threadpoolctl import threadpool_limits

from activation.errors import NotFoundError
from segments.clv import btyd
from segments.clv.features import FEATURES, btyd_inputs

Array = NDArray[np.float64]
MODEL_KIND = "btyd_gbm"
FORMAT = 2
CHOICES: tuple[str, ...] = ("btyd", "gbm", "blend")
BTYD_FEATURES: tuple[str, ...] = ("btyd_orders", "btyd_spend", "p_alive")
SEED = 20240614
HYPERPARAMETERS: dict[str, Any] = {
    "loss": "poisson",
    "learning_rate": 0.03,
    "max_iter": 300,
    "max_leaf_nodes": 15,
    "min_samples_leaf": 80,
    "l2_regularization": 1.0,
    "early_stopping": True,
    "validation_fraction": 0.1,
    "n_iter_no_change": 20,
    "random_state": SEED,
}
#: The regressor is trained on at most this many rows of the stacked windows (a fixed-seed uniform sample,
#: so the Poisson mean stays unbiased): its cost grows with the rows, its accuracy barely past ~10^5.
MAX_REGRESSOR_ROWS = 100_000
#: BG/NBD and Gamma-Gamma are fitted on at most this many customers (a fixed-seed uniform sample): at
#: 250,000 the standard errors are already a small fraction of how much the parameters move between windows.
MAX_BTYD_CUSTOMERS = 250_000
#: The choice between the predictors is scored on at most this many customers of the validation window.
MAX_VALIDATION_ROWS = 200_000
#: The only type a stored regressor may contain beyond the ones skops trusts by default.
TRUSTED_TYPES: list[str] = ["sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"]
#: The smallest BTYD expectation used as an offset (currency units): keeps the ratio finite.
MIN_OFFSET = 1e-3


def fit_btyd(features: pd.DataFrame) -> dict[str, Any]:
    """BG/NBD on the purchase histories and Gamma-Gamma on every customer's orders (their count and mean
    value: the first order is counted too, since the warehouse's mean is over all of them), on at most
    :data:`MAX_BTYD_CUSTOMERS` customers (a fixed-seed uniform sample above that)."""
    x, t_x, big_t, m = btyd_inputs(features)
    rows = sample_rows(len(x), MAX_BTYD_CUSTOMERS)
    x, t_x, big_t, m = x[rows], t_x[rows], big_t[rows], m[rows]
    return {
        "bgnbd": btyd.fit_bgnbd(x, t_x, big_t).to_json(),
        "gamma_gamma": btyd.fit_gamma_gamma(x + 1.0, m).to_json(),  # m is the mean of all x + 1 orders
    }


def btyd_expectations(params: dict[str, Any], features: pd.DataFrame, days: int) -> pd.DataFrame:
    """Per customer: expected orders and spend in the next ``days``, P(alive), P(buying at all)."""
    x, t_x, big_t, m = btyd_inputs(features)
    bg, gg = params["bgnbd"]["params"], params["gamma_gamma"]["params"]
    orders = btyd.expected_purchases(bg, float(days), x, t_x, big_t)
    return pd.DataFrame(
        {
            "btyd_orders": orders,
            "btyd_spend": orders * btyd.expected_order_value(gg, x + 1.0, m),
            "p_alive": btyd.p_alive(bg, x, t_x, big_t),
            "p_buy": btyd.p_purchase(bg, float(days), x, t_x, big_t),
        },
        index=features.index,
    )


def design(features: pd.DataFrame, expectations: pd.DataFrame) -> Array:
    """The regressor's input matrix: :data:`FEATURES` then :data:`BTYD_FEATURES`."""
    cols = [features[list(FEATURES)], expectations[list(BTYD_FEATURES)]]
    return np.asarray(pd.concat(cols, axis=1).to_numpy(dtype=np.float64))


def sample_rows(n: int, at_most: int) -> NDArray[np.intp]:
    """All ``n`` row numbers up to ``at_most``, else a fixed-seed uniform sample of that many, in order."""
    if n <= at_most:
        return np.arange(n)
    return np.sort(np.random.default_rng(SEED).choice(n, at_most, replace=False))


def regressor_rows(n: int) -> NDArray[np.intp]:
    """The rows (of ``n`` stacked training rows) the regressor is trained on."""
    return sample_rows(n, MAX_REGRESSOR_ROWS)


def fit_gbm(x: Array, target: Array) -> HistGradientBoostingRegressor:
    """The Poisson regressor of the spend over the training windows' length, on :func:`regressor_rows`
    (single-threaded: at that size OpenMP costs more than it saves, above all on a shared machine)."""
    rows = regressor_rows(len(x))
    with threadpool_limits(1):
        return HistGradientBoostingRegressor(**HYPERPARAMETERS).fit(x[rows], target[rows])


def gbm_spend(est: HistGradientBoostingRegressor, x: Array, btyd_horizon: Array, btyd_window: Array) -> Array:
    """The regressor's expected spend over the horizon: its prediction over the windows' length, scaled per
    customer by the BTYD ratio E[spend in h] / E[spend in L]."""
    with threadpool_limits(1 if len(x) < 200_000 else None):
        raw = np.asarray(est.predict(x), dtype=np.float64)
    return np.asarray(raw * (btyd_horizon / np.maximum(btyd_window, MIN_OFFSET)), dtype=np.float64)


def combine(choice: str, gbm: Array, btyd_horizon: Array) -> Array:
    """The expected spend of ``choice`` from the regressor's (:func:`gbm_spend`) and BTYD's."""
    if choice == "btyd":
        return np.asarray(btyd_horizon, dtype=np.float64)
    return gbm if choice == "gbm" else (gbm + btyd_horizon) / 2.0


def predict_spend(
    choice: str, est: HistGradientBoostingRegressor | None, x: Array, btyd_horizon: Array, btyd_window: Array
) -> Array:
    """Expected spend of ``choice`` over the horizon; ``btyd_horizon`` and ``btyd_window`` are the BTYD
    expected spend over the horizon and over the training windows' length (equal when they are)."""
    if choice == "btyd" or est is None:
        return np.asarray(btyd_horizon, dtype=np.float64)
    return combine(choice, gbm_spend(est, x, btyd_horizon, btyd_window), btyd_horizon)


# --- storage -------------------------------------------------------------------------------------


def dump_gbm(est: HistGradientBoostingRegressor) -> dict[str, str]:
    """The regressor as skops bytes (deflated, base64) with the versions that wrote it."""
    raw = sio.dumps(est, compression=zipfile.ZIP_DEFLATED)
    return {
        "skops": base64.b64encode(raw).decode("ascii"),
        "scikit_learn": version("scikit-learn"),
        "skops_version": version("skops"),
    }


def _minor(v: str) -> str:
    return ".".join(v.split(".")[:2])


def load_gbm(stored: dict[str, str], model_id: str, refit: str) -> HistGradientBoostingRegressor:
    """The regressor written by :func:`dump_gbm`.

    Raises:
        NotFoundError: it was written by another scikit-learn minor version, or holds a type that is not
            allowed (``fix`` says to re-run ``refit``).
    """
    installed = version("scikit-learn")
    if _minor(stored["scikit_learn"]) != _minor(installed):
        raise NotFoundError(
            f"CLV model {model_id} was written by scikit-learn {stored['scikit_learn']}; this install has "
            f"{installed}, which may read it differently",
            fix=f"fit it again with this install: {refit}",
        )
    raw = base64.b64decode(stored["skops"])
    unknown = sorted(set(sio.get_untrusted_types(data=raw)) - set(TRUSTED_TYPES))
    if unknown:
        raise NotFoundError(
            f"CLV model {model_id} contains types this version does not load: {', '.join(unknown)}",
            fix=f"fit it again with this install: {refit}",
        )
    est = sio.loads(raw, trusted=TRUSTED_TYPES)
    if not isinstance(est, HistGradientBoostingRegressor):
        raise NotFoundError(f"CLV model {model_id} is not a gradient-boosting regressor", fix=refit)
    return est


def check_format(params: dict[str, Any], kind: str, model_id: str, refit: str) -> None:
    """Refuse a model stored in the format of an earlier release (JSON trees read from private attributes).

    Raises:
        NotFoundError: ``fix`` says to re-run ``refit``.
    """
    if kind != MODEL_KIND or params.get("format") != FORMAT:
        raise NotFoundError(
            f"CLV model {model_id} was stored by an earlier release (kind {kind!r}), in a format this "
            "release no longer reads",
            fix=f"fit it again: {refit}",
        )


@dataclass
class ProjectModel:
    """A fitted model ready to predict: its choice, BTYD parameters, regressor and feature window."""

    choice: str
    btyd_params: dict[str, Any]
    gbm: HistGradientBoostingRegressor | None
    window_days: int

    def predict(self, features: pd.DataFrame, horizon_days: int) -> pd.DataFrame:
        """``predicted_orders``, ``predicted_spend``, ``p_alive`` and ``p_buy`` per row of ``features``
        (built with this model's ``window_days``) over the next ``horizon_days``."""
        at_window = btyd_expectations(self.btyd_params, features, self.window_days)
        at_horizon = (
            at_window
            if horizon_days == self.window_days
            else btyd_expectations(self.btyd_params, features, horizon_days)
        )
        spend = predict_spend(
            self.choice,
            self.gbm,
            design(features, at_window),
            at_horizon["btyd_spend"].to_numpy(),
            at_window["btyd_spend"].to_numpy(),
        )
        return pd.DataFrame(
            {
                "predicted_orders": at_horizon["btyd_orders"].to_numpy(),
                "predicted_spend": spend,
                "p_alive": at_horizon["p_alive"].to_numpy(),
                "p_buy": at_horizon["p_buy"].to_numpy(),
                "btyd_spend": at_horizon["btyd_spend"].to_numpy(),
            },
            index=features.index,
        )
