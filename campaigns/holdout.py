"""Holdouts sized by power, and the minimum detectable effect (MDE) of the holdout a segment has.

A policy's ``holdout: {mde: 0.02, power: 0.8}`` (or ``revenue_mde``) asks for the smallest holdout share
whose report interval excludes 0 with that power when the true lift is the MDE, at 95 %. The variance comes
from the segment's previous campaign when its outcomes are recorded — the **CUPED** residual variance of
conversion and revenue per member after the members' pre-period recency, ln(1 + frequency) and
ln(1 + monetary) (Deng, Xu, Kohavi & Walker 2013; the same covariates as the report) — else from the
binomial variance at the target's ``base_rate``. With CUPED variance the MDE is the normal-theory
``(t₁₋α/₂ + z_power) · σ_resid · √(1/n₁ + 1/n₂)``; at a base rate it is the fixed point of the report's
Newcombe interval (:func:`conversion_mde`), which is exact for small and unbalanced groups. The share is
capped at the target's ``max_share`` (default 0.3, never above 0.5, where the difference of two means has
its smallest variance); a target the cap cannot reach says so.

The report uses :func:`conversion_mde` for the MDE of every row, so plan and report state the same number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats as _st
from sqlalchemy import and_, cast, func, select
from sqlalchemy.engine import Connection

from activation.tables import Double, campaign_members, campaign_outcomes, campaigns, rfm_snapshots
from campaigns.policy import HoldoutTarget

Floats = NDArray[np.float64]
CONFIDENCE = 0.95
#: a previous campaign gives the variance only with at least this many converters (else the base rate)
MIN_HISTORY_BUYERS = 20
#: the conversion rate an MDE is stated at when there is neither a target nor earlier outcomes
DEFAULT_BASE_RATE = 0.05

Metric = Literal["conversion", "revenue"]


def _z(confidence: float) -> float:
    return float(_st.norm.ppf(0.5 + confidence / 2))


def wilson_intervals(x: ArrayLike, n: ArrayLike, confidence: float = CONFIDENCE) -> tuple[Floats, Floats]:
    """Wilson score intervals for ``x / n`` on arrays (``n`` > 0)."""
    x, n = np.asarray(x, float), np.asarray(n, float)
    z = _z(confidence)
    p = x / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (np.maximum(0.0, centre - half), np.minimum(1.0, centre + half))


def _wilson_at(rate: float, n: int, confidence: float) -> tuple[float, float]:
    low, high = wilson_intervals(rate * n, n, confidence)
    return float(low), float(high)


def conversion_mde(
    n1: int, n2: int, rate: float, confidence: float = CONFIDENCE, power: float = 0.8
) -> float:
    """The smallest true lift ``d`` of the treated conversion (group 1) over a baseline ``rate``
    (group 2) that the report's Newcombe interval excludes 0 for with ``power``: ``d`` = the Newcombe
    lower half-width at the expected counts + z_power × the standard deviation of the observed
    difference under that lift (fixed point). It accounts for the Wilson intervals' asymmetry, which
    the textbook ``(z₁₋α/₂ + z_power)·√(p(1−p)(1/n₁+1/n₂))`` ignores (that one overstates the power of
    a small holdout with few buyers: 62–73 % instead of 80 %, ``tests/test_calibration.py``).
    ``nan`` for an empty group or a rate of 0 or 1."""
    if n1 <= 0 or n2 <= 0 or not 0 < rate < 1:
        return math.nan
    zb = float(_st.norm.ppf(power))
    _l2, u2 = _wilson_at(rate, n2, confidence)
    d = 0.0
    for _ in range(100):
        p1 = min(rate + d, 1.0)
        l1, _u1 = _wilson_at(p1, n1, confidence)
        nxt = math.sqrt((p1 - l1) ** 2 + (u2 - rate) ** 2) + zb * math.sqrt(
            rate * (1 - rate) / n2 + p1 * (1 - p1) / n1
        )
        if abs(nxt - d) < 1e-10:
            break
        d = nxt
    return d if rate + d <= 1 else math.nan


def mean_mde(
    n1: int, n2: int, sd: float, confidence: float = CONFIDENCE, power: float = 0.8, covariates: int = 0
) -> float:
    """MDE of a difference of means with per-member standard deviation ``sd`` (the raw one for the
    randomisation interval, the residual one for CUPED with ``covariates``):
    ``(t₁₋α/₂,ν + z_power) · sd · √(1/n₁ + 1/n₂)``, ν = n₁ + n₂ − 2 − covariates."""
    dof = n1 + n2 - 2 - covariates
    if n1 <= 0 or n2 <= 0 or dof < 1 or not sd > 0:
        return math.nan
    t = float(_st.t.ppf(0.5 + confidence / 2, dof))
    return (t + float(_st.norm.ppf(power))) * sd * math.sqrt(1 / n1 + 1 / n2)


@dataclass(frozen=True)
class SegmentHistory:
    """What the segment's previous campaign's outcomes say about its variance."""

    as_of: date
    members: int
    base_rate: float  # the holdout's conversion (the whole campaign's when the holdout is empty)
    conversion_sd: float  # CUPED residual standard deviation of conversion (0/1) per member
    revenue_sd: float  # CUPED residual standard deviation of revenue per member
    conversion_reduction: float  # variance reduction of CUPED (1 − residual / raw variance)
    revenue_reduction: float

    def describe(self, metric: Metric) -> str:
        reduction = self.conversion_reduction if metric == "conversion" else self.revenue_reduction
        return f"CUPED variance of the {self.as_of.isoformat()} outcomes ({reduction:.0%} reduction)"


COVARIATES = 3  # recency_days, ln(1 + frequency), ln(1 + monetary): the report's CUPED covariates


def segment_history(conn: Connection, scheme: str, segment: str, before: date) -> SegmentHistory | None:
    """The variance of the segment's latest campaign before ``before`` whose outcomes are recorded (at
    least :data:`MIN_HISTORY_BUYERS` converters); None when there is none."""
    c = campaigns.c
    prev = conn.execute(
        select(c.campaign_id, c.as_of)
        .where(c.scheme == scheme, c.segment == segment, c.as_of < before, c.treated + c.holdout > 0)
        .order_by(c.as_of.desc(), c.version.desc())
        .limit(1)
    ).first()
    if prev is None:
        return None
    cid, as_of = str(prev[0]), prev[1]
    m, o, s = campaign_members.c, campaign_outcomes.c, rfm_snapshots.c
    rows = conn.execute(
        select(
            m.member_group,
            o.revenue,
            func.coalesce(cast(s.recency_days, Double), 0.0),
            func.ln(1.0 + func.coalesce(cast(s.frequency, Double), 0.0)),
            func.ln(1.0 + func.greatest(func.coalesce(cast(s.monetary, Double), 0.0), 0.0)),
        )
        .select_from(
            campaign_members.outerjoin(
                campaign_outcomes,
                and_(o.campaign_id == m.campaign_id, o.customer_id == m.customer_id, o.event == "converted"),
            ).outerjoin(
                rfm_snapshots,
                and_(s.customer_id == m.customer_id, s.as_of == as_of, s.scheme == scheme),
            )
        )
        .where(m.campaign_id == cid)
    ).all()
    if not rows:
        return None
    holdout = np.array([r[0] == "holdout" for r in rows])
    converted = np.array([r[1] is not None for r in rows], dtype=float)
    if converted.sum() < MIN_HISTORY_BUYERS:
        return None
    revenue = np.array([float(r[1] or 0.0) for r in rows])
    x = np.array([[float(v) for v in r[2:]] for r in rows])
    base = float(converted[holdout].mean()) if holdout.any() else float(converted.mean())
    conv_sd, conv_red = _cuped_sd(converted, x, holdout)
    rev_sd, rev_red = _cuped_sd(revenue, x, holdout)
    if not 0 < base < 1:
        base = float(converted.mean())
    return SegmentHistory(
        as_of if isinstance(as_of, date) else date.fromisoformat(str(as_of)),
        len(rows),
        base,
        conv_sd,
        rev_sd,
        conv_red,
        rev_red,
    )


def _cuped_sd(y: Floats, x: Floats, holdout: NDArray[np.bool_]) -> tuple[float, float]:
    """Residual standard deviation of ``y`` after the within-group regression on ``x``, and the variance
    reduction (the report's CUPED: θ pooled within groups)."""
    yc, xc = y.copy(), x.copy()
    for g in (holdout, ~holdout):
        if g.any():
            yc[g] -= yc[g].mean()
            xc[g] -= xc[g].mean(axis=0)
    groups = int(holdout.any()) + int((~holdout).any())
    dof_raw = len(y) - groups
    theta, *_ = np.linalg.lstsq(xc, yc, rcond=None)
    resid = yc - xc @ theta
    dof = max(dof_raw - x.shape[1], 1)
    raw = float(yc @ yc) / max(dof_raw, 1)
    res = float(resid @ resid) / dof
    return math.sqrt(res), (1 - res / raw) if raw > 0 else 0.0


@dataclass(frozen=True)
class HoldoutSizing:
    share: float
    metric: Metric
    target: float | None  # the MDE asked for (None: a fixed share)
    method: str  # where the variance came from
    capped: bool = False


def mde_for(
    metric: Metric,
    treated: int,
    holdout: int,
    history: SegmentHistory | None,
    power: float = 0.8,
    base_rate: float = DEFAULT_BASE_RATE,
    revenue_sd: float | None = None,
) -> tuple[float, str]:
    """(MDE, method) of ``treated`` vs ``holdout`` members: CUPED variance of ``history`` when given,
    else the binomial variance at ``base_rate`` (conversion) or ``revenue_sd`` (revenue)."""
    if history is not None:
        sd = history.conversion_sd if metric == "conversion" else history.revenue_sd
        return mean_mde(treated, holdout, sd, power=power, covariates=COVARIATES), history.describe(metric)
    if metric == "conversion":
        return conversion_mde(
            treated, holdout, base_rate, power=power
        ), f"binomial at base rate {base_rate:.1%}"
    if revenue_sd is None:
        return math.nan, "no earlier outcomes and no revenue_sd: no revenue variance"
    return mean_mde(treated, holdout, revenue_sd, power=power), f"revenue sd {revenue_sd:g} (policy)"


def size_holdout(
    eligible: int, target: HoldoutTarget, history: SegmentHistory | None, fallback_share: float
) -> HoldoutSizing:
    """The smallest share (to 0.1 %) whose MDE is at most the target's, capped at ``max_share``.

    A revenue target with neither earlier outcomes nor ``revenue_sd`` keeps ``fallback_share`` (the
    fixed share the policy would use) and says so."""
    metric: Metric = "conversion" if target.mde is not None else "revenue"
    wanted = float(target.mde if target.mde is not None else target.revenue_mde or 0.0)

    def mde_at(share: float) -> tuple[float, str]:
        h = max(int(round(eligible * share)), 1)
        return mde_for(metric, eligible - h, h, history, target.power, target.base_rate, target.revenue_sd)

    top, method = mde_at(target.max_share)
    if math.isnan(top):
        return HoldoutSizing(fallback_share, metric, wanted, method + f"; fixed share {fallback_share:g}")
    if top > wanted:
        return HoldoutSizing(target.max_share, metric, wanted, method, capped=True)
    lo, hi = 0, int(round(target.max_share * 1000))  # in tenths of a percent
    while hi - lo > 1:
        mid = (lo + hi) // 2
        value, _ = mde_at(mid / 1000)
        if not math.isnan(value) and value <= wanted:
            hi = mid
        else:
            lo = mid
    return HoldoutSizing(hi / 1000, metric, wanted, method)
