"""``activation demo-data --plant``: a known effect planted in the generated files, recovered by the whole cycle
(ingest, segment, plan, sync to the outbox, outcomes collect, report roi), coupon cost and ROI included."""

from __future__ import annotations

import math
import re

import pandas as pd
import pytest

from tests.campaign_helpers import private_templates
from tests.cli_helpers import run_cli

AS_OF = "2025-06-30"
PLANT = "At Risk=+0.12,Hibernating=+0.10,Champions=0"
PERCENT = {"At Risk": 0.20, "Hibernating": 0.15}  # the packaged policy's win-back offers


def _planted(stdout: str) -> dict[str, dict[str, float]]:
    """What the command says it planted, per segment."""
    found = re.findall(
        r"planted (.+?): ([+-][\d.]+) pp conversion for ([\d,]+) treated \(([\d,]+) orders, mean ([\d.]+); "
        r"([\d,]+) redeem the coupon, discount ([\d.]+)\)",
        stdout,
    )
    num = lambda v: float(v.replace(",", ""))  # noqa: E731
    return {
        seg: {
            "lift": num(lift) / 100,
            "treated": num(t),
            "orders": num(o),
            "mean": num(m),
            "redeemed": num(r),
        }
        for seg, lift, t, o, m, r, _d in found
    }


def _ok(result) -> None:
    assert result.exit_code == 0, result.output


@pytest.mark.slow
def test_demo_data_plant_is_recovered_by_the_cycle(settings, engine, tmp_path, monkeypatch):
    """Half the win-back segments held out (policy), so a 8,000-customer shop has the power: the report's
    conversion and revenue intervals cover the planted lift (and its revenue, lift × the planted orders' mean
    amount) and exclude 0 where one is planted; the planted orders redeem the coupon, so the ROI is finite
    and its interval covers the truth from the generator's parameters (margin, lift, redeem rate, percent)."""
    s = private_templates(settings, tmp_path, monkeypatch)
    policy = s.policy_file.read_text()
    for segment in PERCENT:
        head = f"    {segment}:\n"
        policy = policy.replace(head, head + "      holdout_share: 0.5\n", 1)
    s.policy_file.write_text(policy)
    out = tmp_path / "data"
    made = run_cli(
        "demo-data", "--out", str(out), "--customers", "8000", "--orders", "64000", "--plant", PLANT
    )
    _ok(made)
    planted = _planted(made.stdout)
    assert set(planted) == {"At Risk", "Hibernating", "Champions"}
    assert planted["Champions"]["orders"] == 0 and planted["At Risk"]["redeemed"] > 0
    _ok(
        run_cli(
            "ingest",
            str(out / "orders.parquet"),
            "--format",
            "parquet",
            "--mapping",
            str(out / "mapping.yaml"),
        )
    )
    _ok(run_cli("ingest", str(out / "planted_orders.parquet"), "--format", "parquet",
                "--mapping", str(out / "planted_mapping.yaml")))  # fmt: skip
    for args in (
        ("segment", "--as-of", AS_OF),
        ("plan", "--as-of", AS_OF),
        ("sync", "--destination", "outbox", "--send", "--as-of", AS_OF),
        ("outcomes", "collect", "--as-of", AS_OF),
        ("report", "roi", "--as-of", AS_OF, "--out", str(tmp_path / "roi.html")),
    ):
        _ok(run_cli(*args))
    df = pd.read_csv(tmp_path / "roi.csv").set_index("segment")
    margin = s.gross_margin
    for segment, p in planted.items():
        row = df.loc[segment]
        low, high = row["incremental_conversion_ci_low"], row["incremental_conversion_ci_high"]
        assert low <= p["lift"] <= high, (segment, p, low, high)
        revenue = p["lift"] * p["mean"]
        r_low, r_high = (
            row["incremental_revenue_per_member_ci_low"],
            row["incremental_revenue_per_member_ci_high"],
        )
        assert r_low <= revenue <= r_high, (segment, revenue, r_low, r_high)
        if p["lift"] == 0:
            assert not row["conversion_significant_holm"] and row["coupons_redeemed"] == 0
            continue
        assert row["status"] == "ok" and low > 0 and bool(row["conversion_significant_holm"]), segment
        # the cost is what the planted orders redeemed (less those of unsubscribed customers, whom the plan
        # excludes: their orders count in no group)
        assert 0.9 * p["redeemed"] <= row["coupons_redeemed"] <= p["redeemed"]
        cost = p["lift"] * 0.7 * PERCENT[segment] * p["mean"]  # per treated member, expected
        truth = (margin * revenue - cost) / cost
        assert math.isfinite(row["roi"]) and row["roi_ci_low"] <= truth <= row["roi_ci_high"], (
            segment, truth, row["roi"], row["roi_ci_low"], row["roi_ci_high"])  # fmt: skip
    html = (tmp_path / "roi.html").read_text()
    assert "n/a (backtest)" not in html and "With a planted effect" in html
