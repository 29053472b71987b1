"""Holdouts sized by power (``holdout: {mde, power}`` in the policy): the share plan computes achieves the
stated power in simulated campaigns, with the binomial variance at a base rate and with the CUPED variance of
a previous campaign; plan states the MDE of every segment's holdout; a share of 1 is refused."""

from __future__ import annotations

import math
from datetime import date, datetime

import numpy as np
import pytest
from sqlalchemy import insert, select

from activation.tables import campaign_members, campaign_outcomes, campaigns
from campaigns.holdout import (
    SegmentHistory,
    _cuped_sd,
    conversion_mde,
    mean_mde,
    segment_history,
    size_holdout,
)
from campaigns.plan import plan_campaigns
from campaigns.policy import HoldoutTarget
from outcomes.stats import cuped_diff_intervals, newcombe_diff_intervals
from tests.campaign_helpers import AS_OF, insert_snapshot, private_templates
from tests.cli_helpers import run_cli

SIMS = 4_000


def test_the_computed_share_is_the_smallest_that_reaches_the_target_and_is_capped():
    target = HoldoutTarget(mde=0.02, power=0.8, base_rate=0.05)
    sized = size_holdout(40_000, target, None, 0.1)
    h = round(40_000 * sized.share)
    assert conversion_mde(40_000 - h, h, 0.05) <= 0.02
    h_less = round(40_000 * (sized.share - 0.001))
    assert conversion_mde(40_000 - h_less, h_less, 0.05) > 0.02
    assert not sized.capped and "binomial at base rate 5.0%" in sized.method
    small = size_holdout(2_000, target, None, 0.1)  # 2 pp is out of reach of 2,000 members
    assert small.capped and small.share == target.max_share == 0.3
    # a revenue target without earlier outcomes or revenue_sd keeps the fixed share and says so
    rev = size_holdout(10_000, HoldoutTarget(revenue_mde=5.0), None, 0.1)
    assert rev.share == 0.1 and "no revenue variance" in rev.method
    with pytest.raises(ValueError, match="exactly one of mde"):
        HoldoutTarget(mde=0.02, revenue_mde=5.0)


def test_binomial_sizing_achieves_the_stated_power_in_simulation():
    """Plant the target lift into campaigns split at the computed share: the report's Newcombe interval
    excludes 0 in ~80 % of them (Monte Carlo sd 0.6 pp at 4,000 campaigns)."""
    rng = np.random.default_rng(15)
    for n, base, mde in ((40_000, 0.05, 0.02), (8_000, 0.10, 0.05)):
        sized = size_holdout(n, HoldoutTarget(mde=mde, power=0.8, base_rate=base), None, 0.1)
        h = round(n * sized.share)
        t = n - h
        x1 = rng.binomial(t, base + mde, SIMS)
        x2 = rng.binomial(h, base, SIMS)
        _d, low, _high = newcombe_diff_intervals(x1, t, x2, h)
        power = float(np.mean(low > 0))
        assert 0.77 <= power <= 0.85, (n, base, mde, sized.share, power)


def _revenue(rng: np.random.Generator, n: int, sims: int, lift: float) -> tuple[np.ndarray, np.ndarray]:
    """Zero-inflated revenue per member driven by a pre-period covariate, plus two noise covariates."""
    x = np.stack(
        [rng.normal(0, 1, (sims, n)), rng.normal(0, 1, (sims, n)), rng.normal(0, 1, (sims, n))], axis=-1
    )
    buys = rng.random((sims, n)) < 1 / (1 + np.exp(-(-1.5 + 1.2 * x[..., 0])))
    y = np.where(buys, rng.gamma(2.0, 20.0 * np.exp(0.3 * x[..., 0]), (sims, n)), 0.0) + lift
    return y, x


def _sums(y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, ...]:
    """The sufficient statistics the report's CUPED interval takes, per simulated campaign."""
    return (
        np.full(y.shape[0], y.shape[1], float),
        y.sum(1),
        (y * y).sum(1),
        x.sum(1),
        np.einsum("sn,snk->sk", y, x),
        np.einsum("snk,snj->skj", x, x),
    )


def test_cuped_sizing_from_a_previous_campaign_achieves_the_stated_power_in_simulation():
    """The residual variance of a previous campaign (same population, no effect) sizes the holdout for a
    revenue MDE; campaigns with that lift planted, analysed with the report's CUPED interval, detect it
    in ~80 %."""
    rng = np.random.default_rng(7)
    n, wanted = 6_000, 6.0
    y0, x0 = _revenue(rng, 20_000, 1, 0.0)
    groups = rng.random(20_000) < 0.1
    sd, reduction = _cuped_sd(y0[0], x0[0], groups)
    assert reduction > 0.1  # the covariate explains part of the revenue
    history = SegmentHistory(date(2025, 9, 30), 20_000, 0.2, 0.4, sd, 0.1, reduction)
    sized = size_holdout(n, HoldoutTarget(revenue_mde=wanted, power=0.8), history, 0.1)
    assert not sized.capped and "CUPED variance of the 2025-09-30 outcomes" in sized.method
    h = round(n * sized.share)
    assert mean_mde(n - h, h, sd, covariates=3) <= wanted
    hits = total = 0
    for _ in range(SIMS // 250):
        y, x = _revenue(rng, n, 250, 0.0)
        y[:, h:] += wanted  # members h.. are treated
        _d, low, _high, _red = cuped_diff_intervals(*_sums(y[:, h:], x[:, h:]), *_sums(y[:, :h], x[:, :h]))
        hits += int(np.sum(low > 0))
        total += 250
    power = hits / total
    assert 0.76 <= power <= 0.85, (sized.share, power)


def _policy_with(s, **segments: str) -> None:
    text = s.policy_file.read_text()
    for segment, entry in segments.items():
        head = f"    {segment}:\n"
        assert head in text
        text = text.replace(head, head + f"      {entry}\n", 1)
    s.policy_file.write_text(text)


def test_plan_sizes_holdouts_from_the_target_and_states_every_mde(settings, engine, tmp_path, monkeypatch):
    s = private_templates(settings, tmp_path, monkeypatch)
    insert_snapshot(engine, 44_000)  # 4,000 per segment
    _policy_with(s, **{"At Risk": "holdout: {mde: 0.05, power: 0.8, base_rate: 0.1}"})
    result = plan_campaigns(engine, s, AS_OF, "rfm11")
    by = {sp.segment: sp for sp in result.segments}
    risk = by["At Risk"]
    want = size_holdout(4_000, HoldoutTarget(mde=0.05, power=0.8, base_rate=0.1), None, 0.1)
    assert risk.holdout_share == want.share and 0.05 < want.share < 0.3
    with engine.connect() as conn:
        stored = conn.execute(
            select(campaigns.c.holdout_share).where(campaigns.c.campaign_id == risk.campaign_id)
        ).scalar()
    assert stored == want.share
    assert risk.holdout == pytest.approx(4_000 * want.share, abs=4 * math.sqrt(4_000 * want.share))
    assert risk.mde_metric == "conversion" and risk.holdout_mde is not None
    assert risk.holdout_mde == pytest.approx(0.05, abs=0.01)  # the holdout it got, not the one asked for
    assert "binomial at base rate 10.0%" in risk.holdout_method and "sized for 0.05" in risk.holdout_method
    champions = by["Champions"]  # a fixed share: its MDE at the default base rate
    assert champions.holdout_share == 0.1 and "fixed share" in champions.holdout_method
    assert champions.holdout_mde == pytest.approx(conversion_mde(champions.treated, champions.holdout, 0.05))
    assert by["Lost"].holdout_mde is None

    out = run_cli("plan", "--as-of", AS_OF.isoformat())
    assert out.exit_code == 0, out.output
    assert (
        "MDE" in out.output
        and "sized for 0.05" in out.output
        and "pp" in out.output
        and "(10%)" in out.output
    )


def test_the_next_quarter_uses_the_cuped_variance_of_the_previous_outcomes(
    settings, engine, tmp_path, monkeypatch
):
    s = private_templates(settings, tmp_path, monkeypatch)
    _policy_with(s, **{"At Risk": "holdout: {mde: 0.05, power: 0.8}"})
    insert_snapshot(engine, 22_000)
    first = {sp.segment: sp for sp in plan_campaigns(engine, s, AS_OF, "rfm11").segments}["At Risk"]
    assert first.holdout_method.startswith("binomial")
    with engine.connect() as conn:
        members = conn.execute(
            select(campaign_members.c.customer_id).where(campaign_members.c.campaign_id == first.campaign_id)
        ).scalars().all()  # fmt: skip
    buyers = members[::5]  # a 20 % conversion recorded by the ledger
    with engine.begin() as conn:
        conn.execute(
            insert(campaign_outcomes),
            [
                {"campaign_id": first.campaign_id, "customer_id": c, "event": "converted",
                 "occurred_at": datetime(2026, 1, 5), "revenue": 50.0, "orders": 1, "source": "orders"}
                for c in buyers
            ],
        )  # fmt: skip
    nxt = date(2026, 3, 31)
    insert_snapshot(engine, 22_000, as_of=nxt)
    with engine.connect() as conn:
        history = segment_history(conn, "rfm11", "At Risk", nxt)
    assert (
        history is not None and history.as_of == AS_OF and history.base_rate == pytest.approx(0.2, abs=0.03)
    )
    second = {sp.segment: sp for sp in plan_campaigns(engine, s, nxt, "rfm11").segments}["At Risk"]
    assert "CUPED variance of the 2025-12-31 outcomes" in second.holdout_method
    assert second.holdout_share == size_holdout(2_000, HoldoutTarget(mde=0.05), history, 0.1).share


def test_a_holdout_share_of_one_is_refused_with_the_fix(settings, engine, tmp_path, monkeypatch):
    s = private_templates(settings, tmp_path, monkeypatch)
    insert_snapshot(engine, 500)
    _policy_with(s, **{"At Risk": "holdout_share: 1.0"})
    out = run_cli("plan", "--as-of", AS_OF.isoformat())
    assert out.exit_code == 2
    assert "holdout_share" in out.output and "treats nobody" in out.output
    with engine.connect() as conn:
        assert conn.execute(select(campaigns.c.campaign_id)).first() is None
    _policy_with(s, Champions="holdout: {mde: 0.02, holdout_share: 0.1}")
    s.policy_file.write_text(s.policy_file.read_text().replace("      holdout_share: 1.0\n", ""))
    bad = run_cli("plan", "--as-of", AS_OF.isoformat())
    assert bad.exit_code == 2 and "holdout" in bad.output and "docs/roi.md" in bad.output
