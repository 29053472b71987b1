"""The ROI report: CSV verified against pandas on DuckDB and PostgreSQL, HTML that opens offline with its
charts, bad input, and the CLI."""

from __future__ import annotations

import math
import re
from datetime import timedelta
from html.parser import HTMLParser

import pandas as pd
import pytest
from sqlalchemy import delete, func, select

from activation.tables import campaign_members, orders, rfm_snapshots, snapshot_runs
from outcomes.report import write_roi_report
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
            assert (
                g["incremental_conversion_ci_low"]
                < g["incremental_conversion"]
                < g["incremental_conversion_ci_high"]
            )
        assert g["offer_cost"] == pytest.approx(e["discount_redeemed"], abs=1e-6)
    assert got.loc["New Customers", "status"] == "n/a (no holdout)"
    assert math.isnan(got.loc["New Customers", "incremental_conversion"]) and math.isnan(
        got.loc["New Customers", "roi"]
    )
    assert got.loc["Lost", "treated"] == 0

    html = out.read_text(encoding="utf-8")
    _assert_offline(html)
    page = _parse(html)
    assert page.svgs >= 4  # conversion, revenue, segment sizes, migration heatmap
    assert {"roi", "breakdown"} <= set(page.tables)
    text = " ".join(page.text)
    for needle in ("no treatment effect by construction", "baseline conversion per segment", "n/a (no holdout)",
                   "Newcombe", "randomisation (pooled t)", "CUPED", "Deng", "Attribution", "Migration", f"{PREV_AS_OF.isoformat()} → {AS_OF.isoformat()}",
                   "Segment sizes over snapshots", "Shanghai", "inconclusive"):  # fmt: skip
        assert needle in text, needle
    assert "CI excludes 0" in text


def test_breakdown_falls_back_to_the_customers_table(engine, settings):
    """Orders without city/country: the customers' own values are used; categories stay with the orders."""
    from sqlalchemy import select, update

    from activation.tables import campaigns, customers, orders
    from outcomes.report import breakdowns

    build(engine)
    with engine.begin() as conn:
        conn.execute(update(orders).values(city=None, country=None))
        conn.execute(update(customers).values(city="Chengdu", country="CN"))
        conn.execute(update(customers).where(customers.c.customer_id.in_(
            select(campaign_members.c.customer_id).where(campaign_members.c.campaign_id.in_(
                select(campaigns.c.campaign_id).where(campaigns.c.segment == "Champions")))
        )).values(city="Hangzhou"))  # fmt: skip
    got = breakdowns(engine, settings, AS_OF, SCHEME)
    assert {v for v, _, _ in got["city"]["Champions"]} == {"Hangzhou"}
    assert {v for v, _, _ in got["city"]["At Risk"]} == {"Chengdu"}
    assert {v for seg in got["country"].values() for v, _, _ in seg} == {"CN"}
    # the revenue per city is the segment's order revenue in the lookback, whatever the city came from
    champions_revenue = sum(r for _, r, _ in got["city"]["Champions"])
    assert champions_revenue == pytest.approx(sum(r for _, r, _ in got["country"]["Champions"]))
    with engine.begin() as conn:
        conn.execute(update(customers).values(city=None, country=None))
    assert "city" not in breakdowns(engine, settings, AS_OF, SCHEME)


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
        conn.execute(delete(snapshot_runs).where(snapshot_runs.c.as_of == PREV_AS_OF))
    paths = write_roi_report(duck_engine, duck_settings, AS_OF, SCHEME, tmp_path / "r.html")
    page = _parse(paths.html.read_text())
    assert page.svgs == 3
    assert "is the first rfm11 snapshot" in " ".join(page.text)


def test_html_escapes_segment_names(duck_engine, duck_settings, tmp_path):
    from sqlalchemy import update

    from activation.tables import campaigns

    build(duck_engine)
    with duck_engine.begin() as conn:
        conn.execute(
            update(campaigns).where(campaigns.c.segment == "Lost").values(segment="<b>Lost & Found</b>")
        )
    html = write_roi_report(duck_engine, duck_settings, AS_OF, SCHEME, tmp_path / "r.html").html.read_text()
    assert "<b>Lost" not in html and "&lt;b&gt;Lost &amp; Found&lt;/b&gt;" in html


def test_cli_report_roi(duck_engine, duck_settings, tmp_path):
    build(duck_engine)
    out = tmp_path / "reports" / "report.html"
    res = run_cli("report", "roi", "--as-of", AS_OF.isoformat(), "--scheme", SCHEME, "--out", str(out))
    assert res.exit_code == 0, res.output
    assert out.exists() and (tmp_path / "reports" / "report.csv").exists()
    assert "report.csv" in res.stdout
    week = run_cli(
        "report", "roi", "--as-of", AS_OF.isoformat(), "--window-days", "7", "--out", str(tmp_path / "w.html")
    )
    assert week.exit_code == 0, week.output
    assert "attribution window <b>7 days</b>" in (tmp_path / "w.html").read_text()
    late = run_cli(
        "report",
        "roi",
        "--as-of",
        AS_OF.isoformat(),
        "--window-days",
        "200",
        "--out",
        str(tmp_path / "l.html"),
    )
    assert late.exit_code == 0 and "outcomes incomplete" in late.stderr
    other = (AS_OF + timedelta(days=1)).isoformat()
    missing = run_cli(
        "report", "roi", "--as-of", other, "--scheme", SCHEME, "--out", str(tmp_path / "m.html")
    )
    assert missing.exit_code == 2
    assert f"no campaign for as_of {other} and scheme 'rfm11'" in missing.stderr
    assert f"activation plan --as-of {other} --scheme rfm11" in missing.stderr
    assert not (tmp_path / "m.html").exists() and not (tmp_path / "m.csv").exists()


# --------------------------------------------------------------------------- end to end, through the real plan


def _members_and_start(engine, as_of):
    from sqlalchemy import select

    from activation.tables import campaign_members, campaigns

    with engine.connect() as conn:
        camps = pd.DataFrame(
            conn.execute(select(campaigns).where(campaigns.c.as_of == as_of)).mappings().all()
        )
        members = pd.DataFrame(conn.execute(select(campaign_members)).mappings().all())
    members = members.merge(camps[["campaign_id", "segment"]], on="campaign_id")
    return members, camps


def _check_csv_against_pandas(engine, csv_path, as_of, start):
    members, camps = _members_and_start(engine, as_of)
    percent = {
        r["segment"]: float(__import__("json").loads(r["offer"]).get("percent", 0))
        for _, r in camps.iterrows()
    }
    exp = expected_per_segment(
        expected_per_member(members, read_orders(engine), start=start, percent=percent)
    )
    got = pd.read_csv(csv_path).set_index("segment")
    assert list(got.columns[: len(REQUIRED) - 1]) == REQUIRED[1:]
    assert set(got.index) == set(exp.index)
    for seg, e in exp.iterrows():
        g = got.loc[seg]
        assert (g["treated"], g["holdout"]) == (e["treated"], e["holdout"]), seg
        for col in ("treated_conversion_rate", "holdout_conversion_rate", "treated_revenue_per_member",
                    "holdout_revenue_per_member"):  # fmt: skip
            if math.isnan(e[col]):
                assert math.isnan(g[col]), (seg, col)
            else:
                assert g[col] == pytest.approx(e[col], rel=1e-9), (seg, col)
    return got


def _cdnow_file(path, customers=900, seed=5):
    import random
    from datetime import date

    rng = random.Random(seed)
    lines = []
    for c in range(1, customers + 1):
        day = date(1997, 1, 1) + timedelta(days=rng.randint(0, 80))
        while day < date(1998, 6, 30):
            lines.append(f"{c:05d} {day:%Y%m%d} {rng.randint(1, 5)} {rng.uniform(5, 120):.2f}")
            day += timedelta(days=int(rng.expovariate(1 / (30 + 200 * (c % 3)))) + 1)
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.slow
def test_backtest_on_transaction_only_data_through_plan(settings, engine, tmp_path):
    """CDNOW-like file (no emails): ingest → two snapshots → plan → collect → report; everyone planned
    counts as reached and the CSV matches pandas on the warehouse tables."""
    from datetime import date

    from campaigns.plan import plan_campaigns
    from outcomes.ledger import collect_outcomes
    from segments.ingest import ingest_file
    from segments.snapshots import compute_snapshot

    ingest_file(engine, settings, _cdnow_file(tmp_path / "CDNOW_master.txt"), "cdnow")
    as_of = date(1997, 12, 31)
    for day in (date(1997, 9, 30), as_of):
        compute_snapshot(engine, settings, day, "rfm11")
    plan_campaigns(engine, settings, as_of, "rfm11")
    res = collect_outcomes(engine, settings, as_of, "rfm11")
    assert res.backtest and res.converted_added > 0 and not res.incomplete
    paths = write_roi_report(engine, settings, as_of, "rfm11", tmp_path / "report.html")
    got = _check_csv_against_pandas(engine, paths.csv, as_of, datetime_end_of(as_of))
    assert got["treated"].sum() > 0 and got["holdout"].sum() > 0
    html = paths.html.read_text()
    _assert_offline(html)
    assert "no treatment effect by construction" in html and _parse(html).svgs >= 4
    assert "1997-09-30 → 1997-12-31" in html
    # like the summary cards, the table claims no profit or ROI for a backtest (the CSV keeps the numbers)
    table = html[html.index('<table id="roi">') : html.index("</table>", html.index('<table id="roi">'))]
    rows = [r for r in table.split("<tr>")[2:] if "n/a (no" not in r]
    assert rows and all(r.count("n/a (backtest)") == 2 for r in rows), rows[0]
    assert "Conversion CI excludes 0" in table
    # the shipped policy suppresses Lost: said, with its size, rather than silently missing
    assert "segments of the snapshot without a campaign" in html and "Lost (" in html


def datetime_end_of(day):
    from datetime import datetime, time

    return datetime.combine(day, time(23, 59, 59, 999999))


@pytest.mark.slow
def test_demo_data_plan_outbox_sync_collect_report(duck_settings, duck_engine, tmp_path):
    """Demo data with emails: plan → outbox sync (sets the send time) → collect (the outbox reports no
    events) → report; still a backtest, and the window starts at the outbox's send time."""
    from datetime import timedelta as td

    from campaigns.plan import plan_campaigns
    from connectors.registry import get_destination
    from outcomes.ledger import collect_outcomes
    from segments.demo_data import generate
    from segments.ingest import ingest_file
    from segments.snapshots import compute_snapshot, last_quarter_end
    from tests.fakes.destinations import sync_named

    s, engine = duck_settings, duck_engine
    files = generate(tmp_path / "demo", customers=800, orders=6000, seed=3)
    ingest_file(engine, s, files.orders, "parquet", mapping_path=files.mapping)
    as_of = last_quarter_end(files.last_date - td(days=180))
    for day in (last_quarter_end(as_of), as_of):
        compute_snapshot(engine, s, day, "rfm11")
    plan_campaigns(engine, s, as_of, "rfm11")
    sync_named(engine, s, "outbox", as_of, "rfm11", send=True)
    _, camps = _members_and_start(engine, as_of)
    sends = set(camps["send_time"].dropna())
    assert len(sends) == 1
    res = collect_outcomes(engine, s, as_of, "rfm11", destination=get_destination("outbox", s))
    assert res.backtest and sum(res.events_added.values()) == 0
    paths = write_roi_report(engine, s, as_of, "rfm11", tmp_path / "r" / "report.html")
    _check_csv_against_pandas(engine, paths.csv, as_of, pd.Timestamp(sends.pop()).to_pydatetime())
    html = paths.html.read_text()
    _assert_offline(html)
    assert "breakdown" in {t for t in _parse(html).tables} or "Top" not in html


def test_mailchimp_sync_then_collect_events_and_report(settings, engine, tmp_path):
    """plan rows → real sync to the Mailchimp-speaking fake (sets the send time) → collect email events and
    conversions → the report shows engagement and is not a backtest."""
    from datetime import timedelta as td

    from pydantic import SecretStr
    from sqlalchemy import select

    from activation.settings import MailchimpSettings
    from activation.tables import campaigns, orders, suppressions
    from connectors.mailchimp import MailchimpDestination
    from connectors.sync import SyncOptions, sync_audience
    from outcomes.ledger import collect_outcomes, email_hash
    from outcomes.roi import compute_roi
    from tests.fakes.destinations import FAST_RETRY
    from tests.fakes.mailchimp import FakeMailchimp
    from tests.fakes.plan_data import AS_OF as MC_AS_OF
    from tests.fakes.plan_data import SCHEME as MC_SCHEME
    from tests.fakes.plan_data import SimpleContent, insert_plan, make_assignment

    with FakeMailchimp() as mc:
        settings.mailchimp = MailchimpSettings(
            api_key=SecretStr(mc.api_key), list_id=mc.list_id, base_url=mc.base_url
        )
        assignment = make_assignment(240)
        holdouts = {c for i, c in enumerate(sorted(assignment)) if i % 4 == 0}
        plan = insert_plan(engine, assignment, holdouts=holdouts)
        dest = MailchimpDestination(settings.mailchimp, settings.brand, retry=FAST_RETRY)
        sync_audience(engine, settings, dest,
                      SyncOptions(MC_AS_OF, MC_SCHEME, content=SimpleContent(), send=True))  # fmt: skip
        with engine.connect() as conn:
            sends = {r.send_time for r in conn.execute(select(campaigns.c.send_time))}
        assert None not in sends and len(sends) == 3  # one per campaign, set by the destination
        send = max(sends)
        treated = sorted(c for ids in plan.treated.values() for c in ids)
        buyers_t, buyers_h = treated[:30], sorted(holdouts)[:6]
        rows = [{"order_id": f"t{i}", "customer_id": c, "ordered_at": send + td(days=2), "amount": 100.0,
                 "status": "Completed", "coupon_code": f"C-{c}-1" if i % 2 == 0 else None}
                for i, c in enumerate(buyers_t)]  # fmt: skip
        rows += [{"order_id": f"h{i}", "customer_id": c, "ordered_at": send + td(days=3), "amount": 80.0,
                  "status": "Completed", "coupon_code": None} for i, c in enumerate(buyers_h)]  # fmt: skip
        rows.append({"order_id": "late", "customer_id": treated[-1], "ordered_at": send + td(days=45), "amount": 1.0,
                     "status": "Completed", "coupon_code": None})  # fmt: skip
        with engine.begin() as conn:
            conn.execute(orders.insert(), rows)
        mc.unsubscribe(f"{treated[1]}@example.com")

        res = collect_outcomes(engine, settings, MC_AS_OF, MC_SCHEME,
                               destination=MailchimpDestination(settings.mailchimp, retry=FAST_RETRY))  # fmt: skip
        assert not res.backtest and not res.incomplete
        assert res.events_added["sent"] == len(treated)
        assert res.events_added["unsubscribed"] == 1 and res.events_added["opened"] > 0
        assert res.converted_added == len(buyers_t) + len(buyers_h)
        with engine.connect() as conn:
            sup = {(h, r) for h, r in conn.execute(select(suppressions.c.email_hash, suppressions.c.reason))}
        assert (email_hash(f"{treated[1]}@example.com"), "unsubscribed") in sup
        again = collect_outcomes(engine, settings, MC_AS_OF, MC_SCHEME,
                                 destination=MailchimpDestination(settings.mailchimp, retry=FAST_RETRY))  # fmt: skip
        assert sum(again.events_added.values()) == 0 and again.converted_added == 0

        df = compute_roi(engine, settings, MC_AS_OF, MC_SCHEME)
        assert not df.attrs["backtest"]
        assert int(df["sent"].sum()) == len(treated) and int(df["unsubscribed"].sum()) == 1
        assert df["open_rate"].notna().all()
        assert int(df["coupons_redeemed"].sum()) == 15
        assert df["discount_redeemed"].sum() == pytest.approx(15 * 100.0 * 0.15)
        assert df["treated_conversions"].sum() == len(buyers_t) and df["holdout_conversions"].sum() == len(
            buyers_h
        )

        paths = write_roi_report(engine, settings, MC_AS_OF, MC_SCHEME, tmp_path / "mc.html")
        html = paths.html.read_text()
        _assert_offline(html)
        page = _parse(html)
        assert "engagement" in page.tables and "no treatment effect by construction" not in html


@pytest.mark.slow
def test_the_demo_recovers_its_planted_effect(duck_settings, duck_engine, tmp_path):
    """The demo's shop with its planted lifts (win-back +15 and +12 pp, VIP +0): the report's conversion
    intervals cover every planted lift and exclude 0 (after Holm) where one is planted (each lift is about
    the MDE of its segment's holdout: ~80 % power, this seed detects both), and the revenue interval covers
    the planted revenue (lift × the planted orders' mean amount)."""
    from campaigns.plan import plan_campaigns
    from flows.demo import backtest_as_of, plant_effects, prepare_demo_data
    from outcomes.ledger import collect_outcomes
    from outcomes.roi import compute_roi
    from segments.demo_data import DEFAULT_PLANTED, PLANTED_SOURCE

    s, engine = duck_settings, duck_engine
    _dir, last = prepare_demo_data(s, customers=None, orders_n=None, seed=7)
    as_of = backtest_as_of(last)
    effects = {e.segment: e for e in plant_effects(s, as_of, "rfm11", DEFAULT_PLANTED, 7)}
    assert set(effects) == set(DEFAULT_PLANTED) and effects["Champions"].orders == 0
    again = {e.segment: e for e in plant_effects(s, as_of, "rfm11", DEFAULT_PLANTED, 7)}
    assert again == effects  # planting again replaces, it does not add
    with engine.connect() as conn:
        planted_rows = conn.execute(
            select(func.count()).select_from(orders).where(orders.c.source == PLANTED_SOURCE)
        ).scalar()
    assert planted_rows == sum(e.orders for e in effects.values()) > 100
    plan_campaigns(engine, s, as_of, "rfm11")
    collect_outcomes(engine, s, as_of, "rfm11")
    df = compute_roi(engine, s, as_of, "rfm11").set_index("segment")
    for segment, effect in effects.items():
        row = df.loc[segment]
        assert row["status"] == "ok", (segment, row["status"])
        low, high = row["incremental_conversion_ci_low"], row["incremental_conversion_ci_high"]
        assert low <= effect.uplift <= high, (segment, effect.uplift, low, high)
        revenue = effect.uplift * effect.mean_amount
        r_low, r_high = (
            row["incremental_revenue_per_member_ci_low"],
            row["incremental_revenue_per_member_ci_high"],
        )
        assert r_low <= revenue <= r_high, (segment, revenue, r_low, r_high)
        if effect.uplift > 0:  # each planted lift is above its MDE
            assert effect.uplift >= 0.9 * row["conversion_mde"], (segment, row["conversion_mde"])
            assert low > 0 and bool(row["conversion_significant_holm"]), segment
            # the planted orders redeem the win-back coupon: a finite ROI whose interval covers the truth
            # (margin × lift × mean amount − lift × redeem rate × the offer's discount) / that cost
            cost = effect.uplift * effect.redeem_rate * effect.discount / max(effect.redeemed, 1)
            truth = (s.gross_margin * revenue - cost) / cost
            assert row["coupons_redeemed"] > 0 and math.isfinite(row["roi"]), segment
            assert row["roi_ci_low"] <= truth <= row["roi_ci_high"], (segment, truth, row["roi"])
        else:
            assert not row["conversion_significant_holm"]

    paths = write_roi_report(engine, s, as_of, "rfm11", tmp_path / "demo.html")
    html = paths.html.read_text()
    page = _parse(html)
    assert {"roi", "timing", "breakdown"} <= set(page.tables)
    assert f"{planted_rows} orders in the window were added for treated members only" in html
    assert "no treatment effect by construction" not in html.split("With a planted effect")[0]
    assert "Migration 2025-03-31 → 2025-06-30" in html  # the demo segments the quarter before too
    start = html.index('<table id="migration-lift">')
    lift = html[start : html.index("</table>", start)]
    assert "2025-09-30" in html and all(seg in lift for seg in effects)
    assert re.search(r"[+-]\d+\.\d\d pp \[[+-]\d+\.\d\d, [+-]\d+\.\d\d\]", lift)
    timing = html[
        html.index('<table id="timing">') : html.index("</table>", html.index('<table id="timing">'))
    ]
    assert re.search(r"\d\d:00 \(\d+%\)", timing) and re.search(
        r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun) \(\d+%\)", timing
    )


_MEASURE = """<script>
const out = [];
document.querySelectorAll('table').forEach(t => out.push(t.id + ':' + t.scrollWidth + ':' + t.parentElement.clientWidth));
document.body.setAttribute('data-widths', out.join(','));
</script></body>"""


def test_every_column_is_visible_at_1280_px(engine, settings, tmp_path):
    """The ROI table's columns (ROI, status, CI flags, method) fit a 1280 px window without a horizontal
    scrollbar: measured in headless Chromium when it is installed, else the layout rules are checked."""
    import shutil
    import subprocess

    build(engine)
    html = write_roi_report(engine, settings, AS_OF, SCHEME, tmp_path / "r.html").html.read_text()
    assert "main { max-width: 1400px" in html and "table#roi { font-size: .76rem; }" in html
    header = html[html.index('<table id="roi">') : html.index("</thead>")]
    assert len(re.findall(r"<th[ >]", header)) == 14 and "ROI</th>" in header and "Status</th>" in header
    assert "after Holm" in header and "CI method" in header and "share; conversion MDE" in header
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        return
    probe = tmp_path / "probe.html"
    probe.write_text(html.replace("</body>", _MEASURE))
    out = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,1000", "--dump-dom",
         probe.as_uri()],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    found = re.search(r'data-widths="([^"]*)"', out.stdout)
    assert found, out.stderr[-2000:]
    widths = {t: (int(w), int(c)) for t, w, c in (x.split(":") for x in found.group(1).split(","))}
    assert "roi" in widths
    for table_id, (width, room) in widths.items():
        assert width <= room, f"table {table_id} is {width} px wide in {room} px at 1280 px"
