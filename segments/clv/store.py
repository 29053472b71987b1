"""Stored CLV models: the latest one for a date, and its predictions for every customer known then."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import select
from sqlalchemy.engine import Engine

from activation import tables as t
from activation.errors import NotFoundError
from activation.settings import Settings
from segments.clv import model as m
from segments.clv import season
from segments.clv.features import load_features
from segments.kmeans import quantile_scores

TIERS: tuple[str, ...] = ("Low", "Mid", "High")
#: The columns of a prediction, in the order ``clv export`` writes them.
PREDICTION_COLUMNS: tuple[str, ...] = ("customer_id", "predicted_orders", "predicted_spend", "p_alive")


@dataclass
class StoredModel:
    model_id: str
    train_until: date
    horizon_days: int
    kind: str
    params: dict[str, Any]
    metrics: dict[str, Any]

    @property
    def refit_command(self) -> str:
        return f"activation clv fit --train-until {self.train_until} --horizon-days {self.horizon_days}"

    def load(self) -> m.ProjectModel:
        """The model ready to predict.

        Raises:
            NotFoundError: it was stored by an earlier release or another scikit-learn (fix: refit).
        """
        m.check_format(self.params, self.kind, self.model_id, self.refit_command)
        stored = self.params["gbm"]
        gbm = None if stored is None else m.load_gbm(stored, self.model_id, self.refit_command)
        seasonal = self.params.get("season")
        return m.ProjectModel(
            self.params["choice"],
            self.params["btyd"],
            gbm,
            int(self.params["window_days"]),
            None if seasonal is None else season.from_json(seasonal["index"]),
            None if seasonal is None else seasonal["btyd"],
        )


def latest_model(engine: Engine, as_of: date | None = None, model_id: str | None = None) -> StoredModel:
    """The most recent model trained on or before ``as_of`` (latest cut-off, then latest fit); with
    ``model_id``, that model, which must be trained on or before ``as_of``.

    Raises:
        NotFoundError: there is none — run ``activation clv fit`` first; or no model ``model_id``, or
            one trained after ``as_of`` (it would predict from orders after it).
    """
    c = t.clv_models.c
    q = select(t.clv_models)
    if model_id is not None:
        q = q.where(c.model_id == model_id)
    if as_of is not None:
        q = q.where(c.train_until <= as_of)
    q = q.order_by(c.train_until.desc(), c.created_at.desc(), c.model_id.desc()).limit(1)
    with engine.connect() as conn:
        row = conn.execute(q).mappings().first()
    if row is None and model_id is not None:
        raise _unusable_model(engine, model_id, as_of)
    if row is None:
        when = f" trained on or before {as_of}" if as_of is not None else ""
        raise NotFoundError(
            f"no CLV model{when} in the warehouse; the clv_tier scheme and clv export need one",
            fix="fit one first: activation clv fit --train-until YYYY-MM-DD --horizon-days N "
            "(with the cut-off on or before the --as-of)",
        )
    return StoredModel(
        model_id=row["model_id"],
        train_until=pd.Timestamp(row["train_until"]).date(),
        horizon_days=int(row["horizon_days"]),
        kind=str(row["kind"]),
        params=json.loads(row["params"]),
        metrics=json.loads(row["metrics"]),
    )


def _unusable_model(engine: Engine, model_id: str, as_of: date | None) -> NotFoundError:
    """Why ``--model model_id`` cannot be used at ``as_of`` (unknown, or trained after it), naming the
    latest stored models that can."""
    c = t.clv_models.c
    with engine.connect() as conn:
        stored = conn.execute(select(c.model_id, c.train_until).order_by(c.train_until, c.model_id)).all()
    known = {str(i): pd.Timestamp(u).date() for i, u in stored}
    usable = [i for i, u in known.items() if as_of is None or u <= as_of]
    ids = ", ".join(usable[-8:]) or "none yet"  # the latest cut-offs
    if len(usable) > 8:
        ids = f"… {len(usable) - 8} earlier, {ids}"
    if model_id in known:
        return NotFoundError(
            f"--model {model_id} was trained until {known[model_id]}, after --as-of {as_of}: it would "
            "predict from orders after that date",
            fix=f"use --as-of {known[model_id]} or later, or a model trained by {as_of} (stored: {ids})",
        )
    return NotFoundError(
        f"--model {model_id}: no such CLV model in the warehouse",
        fix=f"use one of the stored models ({ids}), or fit one: activation clv fit --train-until …",
    )


def predict_customers(engine: Engine, settings: Settings, model: StoredModel, as_of: date) -> pd.DataFrame:
    """:data:`PREDICTION_COLUMNS` and ``p_buy`` over ``(as_of, as_of + horizon]`` for every customer with an
    order on or before ``as_of`` (sorted by customer_id)."""
    fitted = model.load()
    feats = load_features(engine, settings, as_of, fitted.window_days)
    pred = fitted.predict(feats, model.horizon_days, as_of)
    pred.insert(0, "customer_id", feats["customer_id"])
    return pred[[*PREDICTION_COLUMNS, "p_buy"]].reset_index(drop=True)


def tiers(predicted: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """Low / Mid / High at the tertiles of the predicted value; equal predictions share a tier."""
    scores, cuts = quantile_scores(np.round(np.asarray(predicted, dtype=np.float64), 6), 3)
    return np.asarray(TIERS, dtype=object)[scores - 1], cuts
