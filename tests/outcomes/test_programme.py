"""The programme against the global control group: the plan leaves the group out of every audience in every
quarter, and the report's interval of the programme's lift holds its level (simulated, the truth known) and
recovers a planted programme effect (through the real plan and warehouse)."""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import select

from activation.split import GLOBAL_CONTROL, in_global_control
from activation.tables import campaign_members, campaigns, global_control_members
from campaigns.plan import plan_campaigns
from outcomes.programme import programme_lift, summarise
from tests.campaign_helpers import private_templates

SIMS = 1000  # SE of a 95 % coverage: 0.69 pp; the 93–97 % band is ±2.9 SE
QUARTERS = [date(2025, 3, 31), date(2025, 6, 30), date(2025, 9, 30)]


def _programme(rng: np.random.Generator, n: int, share: float, lift: float) -> tuple[pd.DataFrame, float]:
    """One simulated programme over three quarters: customers with a persistent buying propensity (so a
    customer's quarters are correlated, which is why the unit is the customer), zero-inflated lognormal
    revenue, a stable global control of ``share``, a 10 % campaign holdout drawn afresh every quarter, and
    treated customers converting ``lift`` (absolute) more often. Returns the rows and the true revenue lift
    per customer and quarter."""
    control = rng.random(n) < share
    propensity = 1 / (1 + np.exp(-(-2.6 + 0.9 * rng.standard_normal(n))))
    spend = np.exp(3.5 + 0.5 * rng.standard_normal(n))
    frames = []
    for _q in QUARTERS:
        in_q = rng.random(n) < 0.7  # a customer is in a planned segment in some quarters only
        treated = in_q & ~control & (rng.random(n) >= 0.1)
        who = in_q & (treated | control)
        p = np.minimum(propensity + lift * treated, 1.0)
        buys = rng.random(n) < p
        revenue = np.where(buys, spend * rng.lognormal(0.0, 1.0, n), 0.0)
        frames.append(
            pd.DataFrame(
                {
                    "customer_id": np.arange(n)[who],
                    "treated": treated[who].astype(int),
                    "revenue": revenue[who],
                    "converted": buys[who].astype(float),
                }
            )  # fmt: skip
        )
    true_revenue = lift * float(np.mean(spend)) * float(np.exp(0.5))
    return pd.concat(frames, ignore_index=True), true_revenue


def _coverage(lift: float, seed: int) -> tuple[float, float, float]:
    """Coverage of the true conversion and revenue lift, and the power of the conversion interval."""
    rng = np.random.default_rng(seed)
    conv = rev = power = 0
    for _ in range(SIMS):
        rows, true_rev = _programme(rng, 2_000, 0.1, lift)
        p = summarise(rows, QUARTERS)
        d, lo, hi = p.conversion_diff
        conv += lo <= lift <= hi
        power += lo > 0
        _d, rlo, rhi = p.revenue_diff
        rev += rlo <= true_rev <= rhi
    return conv / SIMS, rev / SIMS, power / SIMS


def test_the_programme_interval_holds_its_level_under_the_null():
    conv, rev, power = _coverage(0.0, seed=20261202)
    assert 0.93 <= conv <= 0.97 and 0.93 <= rev <= 0.97, (conv, rev)
    assert power < 0.05


def test_the_programme_interval_recovers_a_planted_effect():
    conv, rev, power = _coverage(0.04, seed=7)
    assert 0.93 <= conv <= 0.985 and 0.93 <= rev <= 0.985, (conv, rev)
    assert power > 0.5, power


@pytest.mark.slow
def test_plan_leaves_the_global_control_out_and_the_report_recovers_the_programme(
    settings, engine, tmp_path, monkeypatch
):
    """A 20 % global control in the policy: in both quarters no campaign has one of its customers, the plan
    records them (``global_control_members`` and the exclusion counts), membership is the Python twin's; a
    +12 pp lift planted for every treated customer is recovered by the programme row, a plain backtest's
    interval covers 0."""
    from flows.demo import plant_effects, prepare_demo_data
    from outcomes.ledger import collect_outcomes
    from outcomes.report import write_roi_report

    s = private_templates(settings, tmp_path, monkeypatch)
    s.policy_file.write_text(
        s.policy_file.read_text().replace("version: 1\n", "version: 1\nglobal_control: {share: 0.2}\n", 1)
    )
    prepare_demo_data(s, customers=6_000, orders_n=48_000, seed=3)
    first, second = date(2025, 3, 31), date(2025, 6, 30)
    plant_effects(s, first, "rfm11", {}, 3)  # segments 2024-12-31 and 2025-03-31, plants nothing
    plan_campaigns(engine, s, first, "rfm11")
    segments = ["At Risk", "Hibernating", "About To Sleep", "Need Attention", "Promising", "Potential Loyalists",
                "New Customers", "Loyal Customers", "Champions", "Can't Lose Them"]  # fmt: skip
    effects = plant_effects(s, second, "rfm11", dict.fromkeys(segments, 0.12), 3)
    assert sum(e.orders for e in effects) > 100
    plan_campaigns(engine, s, second, "rfm11")
    with engine.connect() as conn:
        control = {(str(c), q) for c, q in conn.execute(select(global_control_members.c.customer_id,
                                                                 global_control_members.c.as_of))}  # fmt: skip
        members = {
            (str(c), q)
            for c, q in conn.execute(
                select(campaign_members.c.customer_id, campaigns.c.as_of).join(
                    campaigns, campaigns.c.campaign_id == campaign_members.c.campaign_id
                )
            )
        }
        excluded = [str(e) for (e,) in conn.execute(select(campaigns.c.excluded))]
    assert control and not control & members
    assert {q for _c, q in control} == {first, second}
    assert all(in_global_control(c, 0.2) for c, _q in control)
    assert not any(in_global_control(c, 0.2) for c, _q in members)
    recorded = sum(int(__import__("json").loads(e).get(GLOBAL_CONTROL, 0)) for e in excluded)
    assert recorded == len(control)
    for q in (first, second):
        collect_outcomes(engine, s, q, "rfm11")
    before = programme_lift(engine, s, first, "rfm11")
    assert before is not None and before.quarters == [first]
    _d, lo, hi = before.conversion_diff
    assert lo <= 0 <= hi, before  # nothing planted in the first quarter
    after = programme_lift(engine, s, second, "rfm11")
    assert after is not None and after.quarters == [first, second]
    _d, lo, hi = after.conversion_diff
    # per customer the mean over their quarters: a customer treated in both has half the lift, one treated
    # in the second only the whole of it; the truth lies between 0.06 and 0.12 and is far from 0
    assert lo > 0 and lo <= 0.12 and hi >= 0.06, after
    html = write_roi_report(engine, s, second, "rfm11", tmp_path / "r.html").html.read_text()
    assert "The programme vs the global control group" in html and "Covers 2 quarter(s)" in html
