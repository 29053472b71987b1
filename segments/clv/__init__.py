"""Predicted customer value (CLV): per-customer expected orders, spend and P(alive) over a horizon.

* :mod:`~segments.clv.features` — features as of a date, one SQL statement in the warehouse;
* :mod:`~segments.clv.btyd` — BG/NBD + Gamma-Gamma on :mod:`scipy.optimize`;
* :mod:`~segments.clv.season` — the shop's seasonal index and BG/NBD inputs in seasonal time;
* :mod:`~segments.clv.model` — the predictors (BTYD in days or seasonal time, gradient boosting correcting
  it, the blend of both) and storage;
* :mod:`~segments.clv.fit` — ``clv fit``: windows, time-based choice, backtest, the stored model;
* :mod:`~segments.clv.metrics` — backtest metrics and calibration;
* :mod:`~segments.clv.store`, :mod:`~segments.clv.export`, :mod:`~segments.clv.scheme` — using a stored
  model: predictions, ``clv export``, the ``clv_tier`` scheme kind (registered on import).
"""

from __future__ import annotations

from segments.clv.export import ExportResult, export_predictions
from segments.clv.features import FEATURES, data_range, load_features
from segments.clv.fit import ClvFitResult, fit_clv, model_id_for
from segments.clv.metrics import calibration, evaluate
from segments.clv.scheme import assign_clv_tier
from segments.clv.store import TIERS, StoredModel, latest_model, predict_customers, tiers

__all__ = [
    "FEATURES",
    "TIERS",
    "ClvFitResult",
    "ExportResult",
    "StoredModel",
    "assign_clv_tier",
    "calibration",
    "data_range",
    "evaluate",
    "export_predictions",
    "fit_clv",
    "latest_model",
    "load_features",
    "model_id_for",
    "predict_customers",
    "tiers",
]
