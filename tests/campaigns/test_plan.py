"""Campaign planning on DuckDB and PostgreSQL: holdout split, coupons, exclusions, versions, atomicity."""

from __future__ import annotations

import csv
import json
import math
import re
from datetime import date
from pathlib import Path

import pytest
from sqlalchemy import select

from activation.errors import ConfigError, NotFoundError, TemplateError
from activation.split import member_group
from activation.tables import campaign_members, campaigns
from campaigns import coupons
from campaigns.plan import (
    EXPORT_COLUMNS,
    current_campaigns,
    export_campaigns,
    plan_campaigns,
    read_members,
)
from tests.campaign_helpers import (
    AS_OF,
    counts,
    insert_customers,
    insert_snapshot,
    private_templates,
    suppress,
)
from tests.cli_helpers import run_cli

N = 6_000
CODE_RE = re.compile(r"^[A-Z]{1,4}-[2-9A-HJ-NP-Z]{5}-[2-9A-HJ-NP-Z]{5}$")


@pytest.fixture
def planned(settings, engine, tmp_path, monkeypatch):
    s = private_templates(settings, tmp_path, monkeypatch)
    insert_snapshot(engine, N)
    insert_customers(engine, N)
    suppress(engine, list(range(2, N, 53)), "cleaned")
    suppress(engine, list(range(3, N, 97)), "complained")
    return s, engine, plan_campaigns(engine, s, AS_OF, "rfm11")


def _members(engine, campaign_id):
    with engine.connect() as conn:
        return conn.execute(
            select(campaign_members).where(campaign_members.c.campaign_id == campaign_id)
        ).all()


def test_one_campaign_per_active_segment_with_readable_ids(planned):
    s, engine, result = planned
    by_seg = {sp.segment: sp for sp in result.segments}
    assert by_seg["Lost"].status == "suppressed" and by_seg["Lost"].campaign_id is None
    created = [sp for sp in result.segments if sp.status == "created"]
    assert len(created) == 10
    assert by_seg["Champions"].campaign_id == "rfm11-2025q4-champions-v1"
    assert by_seg["Can't Lose Them"].campaign_id == "rfm11-2025q4-cant-lose-them-v1"
    rows = current_campaigns(engine, AS_OF, "rfm11")
    assert {r.segment for r in rows} == {sp.segment for sp in created}
    champions = next(r for r in rows if r.segment == "Champions")
    assert champions.offer_type == "vip_early_access" and len(champions.template_hash) == 64
    assert champions.destinations == ["outbox", "mailchimp", "hubspot"]


def test_holdout_share_within_binomial_tolerance_and_stable_hash(planned):
    s, engine, result = planned
    total_holdout = total = 0
    for camp in current_campaigns(engine, AS_OF, "rfm11"):
        members = _members(engine, camp.campaign_id)
        n = len(members)
        h = sum(1 for m in members if m.member_group == "holdout")
        p = camp.holdout_share
        assert abs(h - n * p) <= 4 * math.sqrt(n * p * (1 - p)) + 1, (camp.segment, h, n, p)
        assert h == camp.holdout and n - h == camp.treated
        for m in members[:200]:  # the warehouse split equals the documented md5 rule
            assert m.member_group == member_group(camp.campaign_key, m.customer_id, p)
        total_holdout += h
        total += n
    assert 0.08 < total_holdout / total < 0.14  # Can't Lose Them holds out 20 %, the rest 10 %


def test_coupons_unique_only_for_treated_members_of_coupon_offers(planned):
    s, engine, result = planned
    seen: set[str] = set()
    for camp in current_campaigns(engine, AS_OF, "rfm11"):
        offer = camp.offer_policy
        for m in _members(engine, camp.campaign_id):
            if m.member_group == "holdout" or not offer.has_coupon:
                assert m.coupon_code is None
            else:
                assert CODE_RE.match(m.coupon_code), m.coupon_code
                assert m.coupon_code.startswith(offer.coupon_prefix + "-")
                assert m.coupon_code not in seen
                seen.add(m.coupon_code)
    assert len(seen) > 1000
    assert all(not set(code[3:]) & set("01OI") for code in seen)


def test_exclusions_counted_by_reason_and_members_without_email_planned(planned):
    s, engine, result = planned
    total_excluded: dict[str, int] = {}
    for sp in result.segments:
        if sp.status == "created":
            for k, v in sp.excluded.items():
                total_excluded[k] = total_excluded.get(k, 0) + v
    assert set(total_excluded) == {"unsubscribed", "cleaned", "complained"}
    # customers i % 31 == 1 are unsubscribed (Lost is suppressed entirely, so not counted there)
    champions = next(sp for sp in result.segments if sp.segment == "Champions")
    members = {m.customer_id for m in _members(engine, champions.campaign_id)}
    assert "c000001" not in members  # unsubscribed
    assert "c000002" not in members  # cleaned (email hash in suppressions)
    assert "c000000" in members  # no email: planned anyway, the sync skips it
    assert "c000011" in members  # an ordinary member with an email
    with_email = read_members(engine, champions.campaign_id)
    assert any(m.email is None for m in with_email) and any(m.email for m in with_email)
    assert all(m.first_name for m in with_email)


def test_rerun_changes_nothing_and_export_is_identical(planned, tmp_path):
    s, engine, result = planned
    before = counts(engine)
    out1, out2 = tmp_path / "a.csv", tmp_path / "b.csv"
    n = export_campaigns(engine, AS_OF, "rfm11", out1)
    again = plan_campaigns(engine, s, AS_OF, "rfm11")
    assert {sp.status for sp in again.segments} == {"unchanged", "suppressed"}
    assert counts(engine) == before
    assert export_campaigns(engine, AS_OF, "rfm11", out2) == n
    assert out1.read_bytes() == out2.read_bytes()
    with out1.open() as fh:
        reader = csv.reader(fh)
        assert tuple(next(reader)) == EXPORT_COLUMNS
        rows = list(reader)
    assert len(rows) == n
    for row in rows:
        rec = dict(zip(EXPORT_COLUMNS, row, strict=True))
        assert rec["group"] in ("treatment", "holdout")
        if rec["group"] == "holdout":
            assert rec["coupon_code"] == ""
        assert re.match(r"^[a-z_]+@[0-9a-f]{12}$", rec["template_version"])


def test_template_change_makes_a_new_version_keeping_groups_and_coupons(planned):
    s, engine, result = planned
    at_risk_v1 = next(r for r in current_campaigns(engine, AS_OF, "rfm11") if r.segment == "At Risk")
    v1_members = {
        m.customer_id: (m.member_group, m.coupon_code) for m in _members(engine, at_risk_v1.campaign_id)
    }
    tpl = Path(s.templates_dir) / "winback.html"
    tpl.write_text(tpl.read_text().replace("We miss you", "We really miss you"))
    again = plan_campaigns(engine, s, AS_OF, "rfm11")
    statuses = {sp.segment: sp.status for sp in again.segments}
    assert statuses["At Risk"] == "created" and statuses["Champions"] == "unchanged"
    at_risk = next(sp for sp in again.segments if sp.segment == "At Risk")
    assert at_risk.campaign_id == "rfm11-2025q4-at-risk-v2"
    current = {r.segment: r for r in current_campaigns(engine, AS_OF, "rfm11")}
    assert current["At Risk"].version == 2 and current["At Risk"].template_hash != at_risk_v1.template_hash
    v2_members = {
        m.customer_id: (m.member_group, m.coupon_code) for m in _members(engine, at_risk.campaign_id)
    }
    assert v2_members == v1_members  # same groups, same coupons
    with engine.connect() as conn:  # history kept
        assert (
            conn.execute(
                select(campaigns.c.campaign_id).where(campaigns.c.campaign_id == at_risk_v1.campaign_id)
            ).scalar()
            is not None
        )


def test_policy_change_makes_a_new_version(planned):
    s, engine, result = planned
    p = Path(s.templates_dir) / "policy.yaml"
    p.write_text(p.read_text().replace("percent: 20, expiry_days: 30}", "percent: 30, expiry_days: 30}", 1))
    again = plan_campaigns(engine, s, AS_OF, "rfm11")
    at_risk = next(sp for sp in again.segments if sp.segment == "At Risk")
    assert at_risk.status == "created" and at_risk.campaign_id.endswith("-v2")
    row = next(r for r in current_campaigns(engine, AS_OF, "rfm11") if r.segment == "At Risk")
    assert json.loads(row.offer)["percent"] == 30
    assert row.offer_policy.discount_for(100.0) == pytest.approx(30.0)


BAD_POLICIES = {
    "malformed yaml": ("schemes:\n  rfm11:\n    Champions: {template: [oops\n", "not valid YAML"),
    "unknown offer type": (
        "schemes:\n  rfm11:\n    Champions:\n      offer: {type: free_money}\n",
        "unknown offer type 'free_money'",
    ),
    "percent over 100": (
        "schemes:\n  rfm11:\n    At Risk:\n      offer: {type: winback_coupon, percent: 150}\n",
        "percent",
    ),
    "percent negative": (
        "schemes:\n  rfm11:\n    At Risk:\n      offer: {type: winback_coupon, percent: -5}\n",
        "percent",
    ),
    "holdout over 1": ("schemes:\n  rfm11:\n    At Risk:\n      holdout_share: 1.5\n", "holdout_share"),
    "holdout negative": ("schemes:\n  rfm11:\n    At Risk:\n      holdout_share: -0.1\n", "holdout_share"),
    "unknown segment": (
        "schemes:\n  rfm11:\n    Champion:\n      template: newsletter\n",
        "no segment 'Champion'",
    ),
    "typo key": ("schemes:\n  rfm11:\n    At Risk:\n      holdout_shar: 0.2\n", "holdout_shar"),
}


@pytest.mark.parametrize("case", sorted(BAD_POLICIES))
def test_bad_policy_writes_nothing(case, settings, engine, tmp_path, monkeypatch):
    s = private_templates(settings, tmp_path, monkeypatch)
    insert_snapshot(engine, 500)
    text, needle = BAD_POLICIES[case]
    s.policy_file.write_text(text)
    with pytest.raises(ConfigError) as err:
        plan_campaigns(engine, s, AS_OF, "rfm11")
    assert needle in str(err.value)
    assert re.search(r"policy\.yaml:\d+: ", str(err.value)), str(err.value)
    assert counts(engine) == (0, 0)


BAD_TEMPLATES = {
    "syntax error": ("{% extends '_base.html' %}{% block body %}{% if %}{% endblock %}", "syntax error"),
    "sandbox escape": (
        "{% extends '_base.html' %}{% block body %}{{ ''.__class__.__mro__ }}{% endblock %}",
        "sandbox violation",
    ),
    "huge output": (
        "{% extends '_base.html' %}{% block body %}{% for i in range(9000) %}"
        "{% for j in range(100) %}xxxxxxxxxx{% endfor %}{% endfor %}{% endblock %}",
        "output larger",
    ),
    "endless loop": (
        "{% extends '_base.html' %}{% block body %}{% for i in range(10000) %}"
        "{% for j in range(10000) %}{% for k in range(10000) %}{% endfor %}{% endfor %}{% endfor %}"
        "{% endblock %}",
        "longer than",
    ),
    "undefined variable": (
        "{% extends '_base.html' %}{% block body %}{{ customer.password }}{% endblock %}",
        "undefined",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_TEMPLATES))
def test_bad_template_writes_nothing(case, duck_settings, duck_engine, tmp_path, monkeypatch):
    s = private_templates(duck_settings, tmp_path, monkeypatch)
    insert_snapshot(duck_engine, 500)
    body, needle = BAD_TEMPLATES[case]
    (Path(s.templates_dir) / "winback.html").write_text(body)
    with pytest.raises(TemplateError) as err:
        plan_campaigns(duck_engine, s, AS_OF, "rfm11")
    assert needle in str(err.value)
    assert "winback.html" in str(err.value)
    assert counts(duck_engine) == (0, 0)


def test_bad_subject_names_the_policy_line_and_writes_nothing(settings, engine, tmp_path, monkeypatch):
    s = private_templates(settings, tmp_path, monkeypatch)
    insert_snapshot(engine, 500)
    s.policy_file.write_text(
        "schemes:\n  rfm11:\n    At Risk:\n      template: winback\n"
        '      subject: "{{ frist_name }}, come back"\n'
    )
    with pytest.raises(TemplateError) as err:
        plan_campaigns(engine, s, AS_OF, "rfm11")
    assert f"{s.policy_file}:5: " in str(err.value), str(err.value)
    assert "frist_name" in str(err.value) and "At Risk" in str(err.value)
    assert counts(engine) == (0, 0)


def test_missing_template_writes_nothing(settings, engine, tmp_path, monkeypatch):
    s = private_templates(settings, tmp_path, monkeypatch)
    insert_snapshot(engine, 500)
    (Path(s.templates_dir) / "winback.txt").unlink()
    with pytest.raises(TemplateError) as err:
        plan_campaigns(engine, s, AS_OF, "rfm11")
    assert "winback" in str(err.value) and ".txt" in str(err.value)
    assert counts(engine) == (0, 0)


def test_failure_after_members_are_written_rolls_everything_back(
    duck_settings, duck_engine, tmp_path, monkeypatch
):
    s = private_templates(duck_settings, tmp_path, monkeypatch)
    insert_snapshot(duck_engine, 500)
    import campaigns.plan as plan_mod

    def boom(*args, **kwargs):
        raise RuntimeError("warehouse went away")

    monkeypatch.setattr(plan_mod, "_global_clashes", boom)  # runs after members and campaign rows are written
    with pytest.raises(RuntimeError):
        plan_campaigns(duck_engine, s, AS_OF, "rfm11")
    assert counts(duck_engine) == (0, 0)


def test_no_snapshot_is_a_clear_error(settings, engine):
    with pytest.raises(NotFoundError) as err:
        plan_campaigns(engine, settings, date(2024, 3, 31), "rfm11")
    assert "activation segment --as-of 2024-03-31" in str(err.value)


def test_migration_targeting(settings, engine, tmp_path, monkeypatch):
    s = private_templates(settings, tmp_path, monkeypatch)
    prev = date(2025, 9, 30)
    # previous quarter: even customers were Champions, odd ones At Risk; now everyone is At Risk
    insert_snapshot(engine, 400, as_of=prev, segment_of=lambda i: "Champions" if i % 2 == 0 else "At Risk")
    insert_snapshot(engine, 400, segment_of=lambda i: "At Risk")
    s.policy_file.write_text(
        "schemes:\n  rfm11:\n    At Risk:\n      template: winback\n"
        "      offer: {type: winback_coupon, percent: 20}\n      targeting: {left: [Champions]}\n"
    )
    result = plan_campaigns(engine, s, AS_OF, "rfm11")
    sp = result.segments[0]
    assert sp.excluded == {"not_targeted": 200}
    assert sp.treated + sp.holdout == 200
    members = {m.customer_id for m in _members(engine, sp.campaign_id)}
    assert all(int(c[1:]) % 2 == 0 for c in members)
    # entered_since_previous: only customers who were not At Risk before
    s.policy_file.write_text(
        "schemes:\n  rfm11:\n    At Risk:\n      template: winback\n"
        "      offer: {type: winback_coupon, percent: 20}\n      targeting: {entered_since_previous: true}\n"
    )
    result = plan_campaigns(engine, s, AS_OF, "rfm11")
    assert result.segments[0].campaign_id.endswith("-v2")
    assert result.segments[0].excluded == {"not_targeted": 200}


def test_coupon_collisions_resolved_deterministically(duck_settings, duck_engine, tmp_path, monkeypatch):
    s = private_templates(duck_settings, tmp_path, monkeypatch)
    monkeypatch.setattr(coupons, "CODE_CHARS", 2)  # 1,024 possible codes: collisions are certain
    insert_snapshot(duck_engine, 700, segment_of=lambda i: "At Risk" if i % 2 else "Hibernating")
    plan_campaigns(duck_engine, s, AS_OF, "rfm11")
    with duck_engine.connect() as conn:
        codes = [
            r[0]
            for r in conn.execute(
                select(campaign_members.c.coupon_code).where(campaign_members.c.coupon_code.is_not(None))
            )
        ]
    assert len(codes) > 550 and len(set(codes)) == len(codes)
    # same data and key elsewhere -> same codes (deterministic resolution)
    first = sorted(codes)
    with duck_engine.begin() as conn:
        conn.execute(campaign_members.delete())
        conn.execute(campaigns.delete())
    plan_campaigns(duck_engine, s, AS_OF, "rfm11")
    with duck_engine.connect() as conn:
        again = sorted(
            r[0]
            for r in conn.execute(
                select(campaign_members.c.coupon_code).where(campaign_members.c.coupon_code.is_not(None))
            )
        )
    assert again == first


def test_coupons_depend_on_the_secret(duck_settings, duck_engine, tmp_path, monkeypatch):
    key = b"a"
    a = coupons.coupon_codes(key, "rfm11/2025-12-31/At Risk", ["c1", "c2"], "WB")
    b = coupons.coupon_codes(b"b", "rfm11/2025-12-31/At Risk", ["c1", "c2"], "WB")
    assert a != b and all(CODE_RE.match(c) for c in a + b)


def test_cli_plan_and_export(settings, engine, tmp_path, monkeypatch):
    private_templates(settings, tmp_path, monkeypatch)
    insert_snapshot(engine, 600)
    res = run_cli("plan", "--as-of", AS_OF.isoformat(), "--scheme", "rfm11")
    assert res.exit_code == 0, res.output
    assert "rfm11-2025q4-champions-v1" in res.stdout and "suppressed" in res.stdout
    out = tmp_path / "export.csv"
    res = run_cli("campaigns", "export", "--as-of", AS_OF.isoformat(), "--scheme", "rfm11", "--out", str(out))
    assert res.exit_code == 0, res.output
    header = out.read_text().splitlines()[0]
    assert header == "campaign_id,segment,customer_id,group,offer,coupon_code,template_version"
    res = run_cli("plan", "--as-of", "2025-13-01")
    assert res.exit_code == 2 and "YYYY-MM-DD" in res.output


def test_suppressing_a_planned_segment_retires_its_campaign(planned):
    s, engine, result = planned
    p = Path(s.templates_dir) / "policy.yaml"
    p.write_text(p.read_text().replace("    Hibernating:\n", "    Hibernating:\n      suppress: true\n", 1))
    again = plan_campaigns(engine, s, AS_OF, "rfm11")
    assert next(sp for sp in again.segments if sp.segment == "Hibernating").status == "suppressed"
    assert "Hibernating" not in {r.segment for r in current_campaigns(engine, AS_OF, "rfm11")}
    with engine.connect() as conn:  # history kept: v1 with its members, v2 the member-less marker
        rows = conn.execute(
            select(campaigns.c.campaign_id, campaigns.c.offer_type)
            .where(campaigns.c.segment == "Hibernating")
            .order_by(campaigns.c.version)
        ).all()
    assert [r[0] for r in rows] == ["rfm11-2025q4-hibernating-v1", "rfm11-2025q4-hibernating-v2"]
    assert rows[1][1] == "suppressed"
    assert plan_campaigns(engine, s, AS_OF, "rfm11") and counts(engine)[0] == 11  # rerun: nothing new
    p.write_text(p.read_text().replace("    Hibernating:\n      suppress: true\n", "    Hibernating:\n", 1))
    back = plan_campaigns(engine, s, AS_OF, "rfm11")
    assert next(sp for sp in back.segments if sp.segment == "Hibernating").campaign_id.endswith("-v3")


def test_stored_offer_carries_label_and_expiry_for_destinations(planned):
    s, engine, result = planned
    row = next(r for r in current_campaigns(engine, AS_OF, "rfm11") if r.segment == "At Risk")
    stored = json.loads(row.offer)
    assert stored["label"] == "20% off, valid 30 days" and stored["expires_on"] == "2026-01-30"
    assert row.offer_policy.percent == 20  # the annotations are ignored when parsing
    from campaigns.render import merge_values

    assert merge_values(row, {"first_name": "Ann", "coupon_code": "WB-X"})["OFFER"] == stored["label"]


def test_concurrent_plans_and_snapshots_run_one_after_the_other(settings, engine, tmp_path, monkeypatch):
    """A scheduled run and a manual run at the same moment: both succeed, nothing is doubled, and the
    second sees the first's campaigns as unchanged. (DuckDB admits one writing process; the interleaving
    matters on PostgreSQL.)"""
    if engine.dialect.name == "duckdb":
        pytest.skip("one DuckDB file has one writing process; concurrency is PostgreSQL's case")
    import threading

    from sqlalchemy import func

    from activation.tables import rfm_snapshots, snapshot_runs
    from segments.snapshots import compute_snapshot
    from tests.rfm_fixtures import add_orders, grid_orders

    s = private_templates(settings, tmp_path, monkeypatch)
    add_orders(engine, grid_orders(AS_OF))
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []
    results: list = []

    def run(fn):
        try:
            barrier.wait()
            results.append(fn())
        except BaseException as exc:
            errors.append(exc)

    def twice(fn):
        threads = [threading.Thread(target=run, args=(fn,)) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)

    twice(lambda: compute_snapshot(engine, s, AS_OF, "rfm11", run_checks=False))
    assert not errors, errors
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(snapshot_runs)).scalar() == 1
        rows = conn.execute(select(func.count(), func.count(rfm_snapshots.c.customer_id.distinct()))).one()
    assert rows[0] == rows[1] == 25

    results.clear()
    twice(lambda: plan_campaigns(engine, s, AS_OF, "rfm11"))
    assert not errors, errors
    statuses = sorted(sorted({sp.status for sp in r.segments} - {"suppressed"}) for r in results)
    assert statuses == [["created"], ["unchanged"]]
    with engine.connect() as conn:
        versions = conn.execute(select(func.max(campaigns.c.version))).scalar()
        dup = conn.execute(
            select(func.count()).select_from(
                select(campaign_members.c.customer_id)
                .group_by(campaign_members.c.customer_id)
                .having(func.count() > 1)
                .subquery()
            )
        ).scalar()
    assert versions == 1 and dup == 0
