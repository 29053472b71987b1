"""The ROI report: CSV verified against pandas on DuckDB and PostgreSQL, HTML that opens offline with its
charts, bad input, and the CLI."""

from __future__ import annotations

import math
import re
from datetime import timedelta
from html.parser import HTMLParser

import pandas as pd
import pytest
from sqlalchemy import delete

from activation.tables import rfm_snapshots
from campaigns.report import write_roi_report
from tests.cli_helpers import run_cli
from tests.outcomes_fixtures import (
    AS_OF,
    PERCENT,
    PREV_AS_OF,
    SCHEME,
    build,
    expected_per_member,
    expected_per_segment,
    read_orders,
)

REQUIRED = (
    "segment,treated,holdout,treated_conversion_rate,holdout_conversion_rate,incremental_conversion,"
    "incremental_conversion_ci_low,incremental_conversion_ci_high,treated_revenue_per_member,"
    "holdout_revenue_per_member,offer_cost,roi"
).split(",")


class _Page(HTMLParser):
    """Collects tags, attributes, svg charts and table ids; fails on anything that needs the network."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.svgs = 0
        self.tables: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "svg":
            self.svgs += 1
        if tag == "table":
            self.tables.append(a.get("id", ""))

    def handle_data(self, data):
        self.text.append(data)


def _parse(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    page.close()
    return page


def _assert_offline(html: str) -> None:
    page = _parse(html)
    for tag, attrs in page.tags:
        assert tag not in {"script", "link", "iframe", "img", "object", "embed"}, tag
        for name, value in attrs.items():
            if value and re.match(r"\s*(https?:)?//", value):
                assert tag == "a" and name == "href", f"<{tag} {name}={value}> loads from the network"
    assert "url(http" not in html and "@import" not in html


def test_csv_matches_pandas_and_html_opens_offline(engine, settings, tmp_path):
    fx = build(engine)
    out = tmp_path / "out" / "report.html"
    paths = write_roi_report(engine, settings, AS_OF, SCHEME, out)
    assert paths.html == out and paths.csv == tmp_path / "out" / "report.csv"
    csv = pd.read_csv(paths.csv, keep_default_na=True)
    assert list(csv.columns[: len(REQUIRED)]) == REQUIRED
    assert sorted(csv["segment"]) == sorted(["At Risk", "Champions", "New Customers", "Hibernating", "Lost"])
    exp = expected_per_segment(expected_per_member(fx.members, read_orders(engine), percent=PERCENT))
    got = csv.set_index("segment")
    for seg, e in exp.iterrows():
        g = got.loc[seg]
        assert (g["treated"], g["holdout"]) == (e["treated"], e["holdout"])
        for col in ("treated_conversion_rate", "holdout_conversion_rate", "treated_revenue_per_member",
                    "holdout_revenue_per_member"):  # fmt: skip
            if math.isnan(e[col]):
                assert math.isnan(g[col]), (seg, col)
            else:
                assert g[col] == pytest.approx(e[col], rel=1e-9), (seg, col)
        if e["holdout"]:
            assert g["incremental_conversion"] == pytest.approx(
                e["treated_conversion_rate"] - e["holdout_conversion_rate"]
            )
            assert g["incremental_conversion_ci_low"] < g["incremental_conversion"] < g["incremental_conversion_ci_high"]
        assert g["offer_cost"] == pytest.approx(e["discount_redeemed"], abs=1e-6)
    assert got.loc["New Customers", "status"] == "n/a (no holdout)"
    assert math.isnan(got.loc["New Customers", "incremental_conversion"]) and math.isnan(got.loc["New Customers", "roi"])
    assert got.loc["Lost", "treated"] == 0

    html = out.read_text(encoding="utf-8")
    _assert_offline(html)
    page = _parse(html)
    assert page.svgs >= 4  # conversion, revenue, segment sizes, migration heatmap
    assert {"roi", "breakdown"} <= set(page.tables)
    text = " ".join(page.text)
    for needle in ("no treatment effect by construction", "baseline conversion per segment", "n/a (no holdout)",
                   "Newcombe", "Welch", "Attribution", "Migration", f"{PREV_AS_OF.isoformat()} → {AS_OF.isoformat()}",
                   "Segment sizes over snapshots", "Shanghai", "inconclusive"):  # fmt: skip
        assert needle in text, needle
    assert "CI excludes 0" in text


def test_window_past_the_data_end_and_unknown_coupons_in_the_report(engine, settings, tmp_path):
    build(engine)
    paths = write_roi_report(engine, settings, AS_OF, SCHEME, tmp_path / "late.html", window_days=90)
    assert any("outcomes incomplete" in w for w in paths.warnings)
    text = " ".join(_parse(paths.html.read_text()).text)
    assert "outcomes incomplete" in text
    assert "2 orders in the attribution window carry a coupon code that is not the member's own" in text


def test_first_snapshot_has_no_migration_matrix(duck_engine, duck_settings, tmp_path):
    build(duck_engine)
    with duck_engine.begin() as conn:
        conn.execute(delete(rfm_snapshots).where(rfm_snapshots.c.as_of == PREV_AS_OF))
    paths = write_roi_report(duck_engine, duck_settings, AS_OF, SCHEME, tmp_path / "r.html")
    page = _parse(paths.html.read_text())
    assert page.svgs == 3
    assert "is the first rfm11 snapshot" in " ".join(page.text)


def test_html_escapes_segment_names(duck_engine, duck_settings, tmp_path):
    from sqlalchemy import update

    from activation.tables import campaigns

    build(duck_engine)
    with duck_engine.begin() as conn:
        conn.execute(update(campaigns).where(campaigns.c.segment == "Lost").values(segment="<b>Lost & Found</b>"))
    html = write_roi_report(duck_engine, duck_settings, AS_OF, SCHEME, tmp_path / "r.html").html.read_text()
    assert "<b>Lost" not in html and "&lt;b&gt;Lost &amp; Found&lt;/b&gt;" in html


def test_cli_report_roi(duck_engine, duck_settings, tmp_path):
    build(duck_engine)
    out = tmp_path / "reports" / "report.html"
    res = run_cli("report", "roi", "--as-of", AS_OF.isoformat(), "--scheme", SCHEME, "--out", str(out))
    assert res.exit_code == 0, res.output
    assert out.exists() and (tmp_path / "reports" / "report.csv").exists()
    assert "report.csv" in res.stdout
    week = run_cli("report", "roi", "--as-of", AS_OF.isoformat(), "--window-days", "7", "--out", str(tmp_path / "w.html"))
    assert week.exit_code == 0, week.output
    assert "attribution window <b>7 days</b>" in (tmp_path / "w.html").read_text()
    late = run_cli("report", "roi", "--as-of", AS_OF.isoformat(), "--window-days", "200", "--out", str(tmp_path / "l.html"))
    assert late.exit_code == 0 and "outcomes incomplete" in late.stderr
    other = (AS_OF + timedelta(days=1)).isoformat()
    missing = run_cli("report", "roi", "--as-of", other, "--scheme", SCHEME, "--out", str(tmp_path / "m.html"))
    assert missing.exit_code == 2
    assert f"no campaign for as_of {other} and scheme 'rfm11'" in missing.stderr
    assert f"activation plan --as-of {other} --scheme rfm11" in missing.stderr
    assert not (tmp_path / "m.html").exists() and not (tmp_path / "m.csv").exists()
