"""The CLV model: BG/NBD + Gamma-Gamma expectations, in days or in seasonal time, and gradient boosting
that corrects them.

Four predictors of the spend in the next ``h`` days, all from features as of the prediction date:

* ``btyd``: E[orders in h days] (BG/NBD) × E[order value] (Gamma-Gamma), stationary;
* ``seasonal``: the same with BG/NBD fitted and evaluated in the shop's seasonal time
  (:mod:`segments.clv.season`): recency, age and horizon measured in demand units instead of days;
* ``gbm``: a Poisson ``HistGradientBoostingRegressor`` on the RFM features plus the BTYD expectations over
  the training windows' length ``L`` (expected orders, expected spend, P(alive)), fitted on the spend over
  ``L`` days relative to the BTYD expectation (an offset), so it learns a per-customer multiplicative
  correction; it multiplies the base expectation over the horizon (the seasonal one when the model has a
  seasonal index, else the stationary one);
* ``blend``: the mean of ``gbm`` and its base.

Storage: the BTYD parameters are plain JSON; the regressor is written with ``skops.io`` (a documented,
non-pickle format whose loader only builds allowed types) and base64 inside the model's JSON, with the
scikit-learn and skops versions it was written by. A model written by another scikit-learn minor version,
or in the format of earlier releases, is refused with the fix: re-run ``activation clv fit``.
"""

from __future__ import annotations

import base64
import zipfile
from dataclasses import dataclass
from datetime import date
from importlib.metadata import version
from typing import Any

import numpy as np
import pandas as pd
import skops.io as sio
from numpy.typing import NDArray
from sklearn.ensemble import HistGradientBoostingRegressor
from threadpoolctl import threadpool_limits

from activation.errors import NotFoundError
from segments.clv import btyd, season
from segments.clv.features import FEATURES, btyd_inputs

Array = NDArray[np.float64]
MODEL_KIND = "btyd_gbm"
FORMAT = 3
CHOICES: tuple[str, ...] = ("btyd", "seasonal", "gbm", "blend")
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


def fit_btyd(features: pd.DataFrame, at_most: int = MAX_BTYD_CUSTOMERS) -> dict[str, Any]:
    """BG/NBD on the purchase histories and Gamma-Gamma on every customer's orders (their count and mean
    value: the first order is counted too, since the warehouse's mean is over all of them), on at most
    ``at_most`` customers (a fixed-seed uniform sample above that)."""
    x, t_x, big_t, m = btyd_inputs(features)
    rows = sample_rows(len(x), at_most)
    x, t_x, big_t, m = x[rows], t_x[rows], big_t[rows], m[rows]
    return {
        "bgnbd": btyd.fit_bgnbd(x, t_x, big_t).to_json(),
        "gamma_gamma": btyd.fit_gamma_gamma(x + 1.0, m).to_json(),  # m is the mean of all x + 1 orders
    }


def btyd_expectations(params: dict[str, Any], features: pd.DataFrame, days: int) -> pd.DataFrame:
    """Per customer: expected orders and spend in the next ``days``, P(alive), P(buying at all)."""
    x, t_x, big_t, m = btyd_inputs(features)
    return _expectations(params, (x, t_x, big_t, m), float(days), features.index)


def _expectations(
    params: dict[str, Any], inputs: tuple[Array, Array, Array, Array], days: float, index: pd.Index
) -> pd.DataFrame:
    x, t_x, big_t, m = inputs
    bg, gg = params["bgnbd"]["params"], params["gamma_gamma"]["params"]
    orders = btyd.expected_purchases(bg, days, x, t_x, big_t)
    return pd.DataFrame(
        {
            "btyd_orders": orders,
            "btyd_spend": orders * btyd.expected_order_value(gg, x + 1.0, m),
            "p_alive": btyd.p_alive(bg, x, t_x, big_t),
            "p_buy": btyd.p_purchase(bg, days, x, t_x, big_t),
        },
        index=index,
    )


def fit_seasonal(
    features: pd.DataFrame, as_of: date, index: Array, gamma_gamma: dict[str, Any]
) -> dict[str, Any]:
    """BG/NBD in seasonal time (:mod:`segments.clv.season`) on the customers :func:`fit_btyd` uses, with
    its Gamma-Gamma fit (order values do not depend on the clock)."""
    x, t_x, big_t, _, _ = season.warped_inputs(features, as_of, index, 0)
    rows = sample_rows(len(x), MAX_BTYD_CUSTOMERS)
    return {"bgnbd": btyd.fit_bgnbd(x[rows], t_x[rows], big_t[rows]).to_json(), "gamma_gamma": gamma_gamma}


def seasonal_expectations(
    params: dict[str, Any], features: pd.DataFrame, as_of: date, index: Array, days: int
) -> pd.DataFrame:
    """:func:`btyd_expectations` of BG/NBD in seasonal time: the next ``days`` after ``as_of`` as long as
    the shop's demand in them makes them."""
    x, t_x, big_t, m, horizon = season.warped_inputs(features, as_of, index, days)
    return _expectations(params, (x, t_x, big_t, m), horizon, features.index)


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


#: The regressor's bins per feature (scikit-learn's default and maximum, 255).
MAX_BINS = 255


def coarsen(x: Array) -> Array:
    """Each column with more than :data:`MAX_BINS` distinct values snapped to the median of its bin, the
    bins cut at the column's unweighted quantiles (where scikit-learn would cut them without weights), so
    the regressor bins on those values directly: with sample weights it would compute weighted quantiles
    instead, one slow pass per threshold (24 of 26 seconds of a fit on 100,000 rows). Missing stays missing."""
    out = np.array(x, dtype=np.float64, copy=True)
    cuts = np.linspace(0, 100, MAX_BINS + 1)[1:-1]
    for j in range(out.shape[1]):
        col = out[:, j]
        known = ~np.isnan(col)
        values = np.sort(col[known])
        if len(values) == 0 or np.count_nonzero(np.diff(values)) + 1 <= MAX_BINS:
            continue
        edges = np.unique(np.percentile(values, cuts, method="averaged_inverted_cdf"))
        # bins are runs of the sorted values; each run's median (the mean of its two middle values when
        # its length is even, as pandas takes it)
        # bin k holds the values v with edges[k-1] < v <= edges[k] (``codes`` below)
        bounds = np.concatenate([[0], np.searchsorted(values, edges, side="right"), [len(values)]])
        lo, hi = bounds[:-1], bounds[1:]
        used = hi > lo
        medians = np.zeros(len(lo))
        medians[used] = (values[(lo + hi - 1)[used] // 2] + values[(lo + hi)[used] // 2]) / 2.0
        col[known] = medians[np.searchsorted(edges, col[known], side="left")]
    return out


def fit_gbm(x: Array, target: Array, offset: Array) -> HistGradientBoostingRegressor:
    """The Poisson regressor of the spend relative to ``offset`` (a BTYD expectation over the same days), on
    :func:`regressor_rows`: fitted on ``target / offset`` with weight ``offset``, which is the Poisson
    likelihood of ``target`` with mean ``offset × f(x)``, so it learns a multiplicative correction of BTYD
    (1 where the features say nothing BTYD did not); the features :func:`coarsen`-ed. Single-threaded: at
    that size OpenMP costs more than it saves, above all on a shared machine."""
    rows = regressor_rows(len(x))
    base = np.maximum(offset[rows], MIN_OFFSET)
    with threadpool_limits(1):
        return HistGradientBoostingRegressor(**HYPERPARAMETERS).fit(
            coarsen(x[rows]), target[rows] / base, sample_weight=base
        )


def gbm_spend(est: HistGradientBoostingRegressor, x: Array, base: Array) -> Array:
    """The regressor's expected spend over the horizon: its correction times the ``base`` expectation
    (single-threaded up to the validation sample's size: OpenMP only pays off above it)."""
    with threadpool_limits(1 if len(x) <= MAX_VALIDATION_ROWS else None):
        raw = np.asarray(est.predict(x), dtype=np.float64)
    return np.asarray(raw * base, dtype=np.float64)


def combine(choice: str, gbm: Array, base: Array) -> Array:
    """The expected spend of ``choice`` (``gbm`` or ``blend``) from the regressor's (:func:`gbm_spend`) and
    the base expectation it corrects."""
    return gbm if choice == "gbm" else (gbm + base) / 2.0


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
    """A fitted model ready to predict: its choice, BTYD parameters, regressor and feature window, and for
    the ``seasonal`` choice the seasonal index and BG/NBD fitted in seasonal time."""

    choice: str
    btyd_params: dict[str, Any]
    gbm: HistGradientBoostingRegressor | None
    window_days: int
    season_index: Array | None = None
    seasonal_params: dict[str, Any] | None = None

    @property
    def seasonal(self) -> bool:
        return self.season_index is not None and self.seasonal_params is not None

    def base(self, features: pd.DataFrame, horizon_days: int, as_of: date) -> pd.DataFrame:
        """The BTYD expectations the model starts from: in seasonal time when it has a seasonal index."""
        if self.season_index is not None and self.seasonal_params is not None:
            return seasonal_expectations(
                self.seasonal_params, features, as_of, self.season_index, horizon_days
            )
        return btyd_expectations(self.btyd_params, features, horizon_days)

    def predict(self, features: pd.DataFrame, horizon_days: int, as_of: date) -> pd.DataFrame:
        """``predicted_orders``, ``predicted_spend``, ``p_alive`` and ``p_buy`` per row of ``features``
        (built as of ``as_of`` with this model's ``window_days``) over the next ``horizon_days``, and
        ``btyd_spend``, the stationary BG/NBD + Gamma-Gamma expected spend."""
        plain = btyd_expectations(self.btyd_params, features, horizon_days)
        base = self.base(features, horizon_days, as_of) if self.seasonal else plain
        spend = base["btyd_spend"].to_numpy()
        if self.choice in ("gbm", "blend") and self.gbm is not None:
            at_window = btyd_expectations(self.btyd_params, features, self.window_days)
            spend = combine(self.choice, gbm_spend(self.gbm, design(features, at_window), spend), spend)
        return pd.DataFrame(
            {
                "predicted_orders": base["btyd_orders"].to_numpy(),
                "predicted_spend": spend,
                "p_alive": base["p_alive"].to_numpy(),
                "p_buy": base["p_buy"].to_numpy(),
                "btyd_spend": plain["btyd_spend"].to_numpy(),
            },
            index=features.index,
        )
