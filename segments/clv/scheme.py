"""The ``clv_tier`` scheme kind: Low / Mid / High expected spend of every customer of a snapshot."""

from __future__ import annotations

import numpy as np
import pandas as pd

from segments.clv.store import TIERS, latest_model, predict_customers, tiers
from segments.schemes import AssignContext, register_assigner


def assign_clv_tier(ctx: AssignContext, metrics: pd.DataFrame) -> pd.Series:
    """Assigner of ``kind: clv_tier`` schemes: tertiles of the latest model's expected spend (the
    ``predicted_spend`` that ``clv export`` writes), with the model recorded in ``ctx.info``.

    Raises:
        NotFoundError: no usable CLV model trained on or before the snapshot's ``as_of`` (nothing is written).
    """
    model = latest_model(ctx.engine, ctx.as_of)
    preds = predict_customers(ctx.engine, ctx.settings, model, ctx.as_of)
    merged = metrics[["customer_id"]].astype({"customer_id": str}).merge(preds, on="customer_id", how="left")
    missing = int(merged["predicted_spend"].isna().sum())
    if missing:
        ctx.notes.append(f"{missing} customer(s) had no CLV features and were scored 0")
    predicted = merged["predicted_spend"].fillna(0.0).to_numpy(dtype=np.float64)
    tier, cuts = tiers(predicted)
    ctx.info.update(
        {
            "kind": "clv_tier",
            "model_id": model.model_id,
            "choice": model.params["choice"],
            "train_until": model.train_until.isoformat(),
            "horizon_days": model.horizon_days,
            "tier_cutpoints": [round(c, 6) for c in cuts],
            "expected_mean": {
                name: round(float(predicted[tier == name].mean()), 4) if (tier == name).any() else None
                for name in TIERS
            },
            "backtest": {k: model.metrics.get(k) for k in ("model", "btyd", "last_period_spend")},
        }
    )
    return pd.Series(tier, index=metrics.index, name="segment")


register_assigner("clv_tier", assign_clv_tier)
