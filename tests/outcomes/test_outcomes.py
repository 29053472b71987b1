"""The outcome ledger: conversions from warehouse orders, email events from a destination, idempotence,
suppressions, windows and bad input — on DuckDB and PostgreSQL."""

from __future__ import annotations

import hashlib
from datetime import datetime, time, timedelta, timezone

import pandas as pd
import pytest
from sqlalchemy import func, select, update

from activation.clock import end_of_day
from activation.errors import NotFoundError
from activation.tables import campaign_outcomes, campaigns, orders, suppressions
from connectors.base import OutcomeEvent
from outcomes import ledger as outcomes_mod
from outcomes.ledger import collect_outcomes, discount_model, usable_event
from tests.cli_helpers import run_cli
from tests.outcomes_fixtures import AS_OF, PERCENT, SCHEME, SEND, build, expected_per_member, read_orders


def _ledger(engine, event: str | None = None) -> pd.DataFrame:
    stmt = select(campaign_outcomes)
    if event:
        stmt = stmt.where(campaign_outcomes.c.event == event)
    with engine.connect() as conn:
        return pd.DataFrame(
            conn.execute(stmt).mappings().all(), columns=[c.name for c in campaign_outcomes.c]
        )


def test_converted_rows_match_an_independent_pandas_computation(engine, settings):
    fx = build(engine)
    result = collect_outcomes(engine, settings, AS_OF, SCHEME)
    expected = expected_per_member(fx.members, read_orders(engine), percent=PERCENT)
    expected = expected[expected["converted"]].set_index("customer_id")
    got = _ledger(engine, "converted").set_index("customer_id")

    assert result.campaigns == 5
    assert result.members == len(fx.members)
    assert result.backtest is True
    assert result.converted_added == len(expected) == len(got)
    assert set(got.index) == set(expected.index)
    joined = got.merge(expected, how="left", left_index=True, right_index=True, suffixes=("", "_exp"))
    assert (joined["revenue"] - joined["revenue_exp"]).abs().max() < 1e-6
    assert (joined["orders"] == joined["orders_exp"]).all()
    assert (joined["discount"] - joined["discount_exp"]).abs().max() < 1e-6
    assert (joined["coupon_code"].notna() == joined["redeemed"]).all()
    assert set(got["source"]) == {"warehouse"}
    # first qualifying order is the event time, always strictly after the send
    assert (pd.to_datetime(got["occurred_at"]) > pd.Timestamp(SEND)).all()


def test_collecting_twice_adds_nothing_twice(engine, settings):
    build(engine)
    first = collect_outcomes(engine, settings, AS_OF, SCHEME)
    before = _ledger(engine).sort_values(["campaign_id", "customer_id", "event"]).reset_index(drop=True)
    second = collect_outcomes(engine, settings, AS_OF, SCHEME)
    after = _ledger(engine).sort_values(["campaign_id", "customer_id", "event"]).reset_index(drop=True)
    assert first.converted_added > 0
    assert (second.converted_added, second.converted_updated, second.converted_removed) == (0, 0, 0)
    pd.testing.assert_frame_equal(before, after)


def test_later_orders_update_revenue_and_cancellations_remove_the_conversion(engine, settings):
    fx = build(engine)
    collect_outcomes(engine, settings, AS_OF, SCHEME)
    conv = _ledger(engine, "converted").set_index("customer_id")
    buyer = conv.index[0]
    never = sorted(set(fx.members["customer_id"]) - set(conv.index))[0]
    with engine.begin() as conn:
        conn.execute(orders.insert(), [
            {"order_id": "late-1", "customer_id": buyer, "ordered_at": SEND + timedelta(days=20), "amount": 11.0,
             "status": "Completed"},
            {"order_id": "late-2", "customer_id": never, "ordered_at": SEND + timedelta(days=29), "amount": 7.5,
             "status": "Completed"},
            {"order_id": "too-late", "customer_id": never, "ordered_at": SEND + timedelta(days=31), "amount": 1000.0,
             "status": "Completed"},
        ])  # fmt: skip
    res = collect_outcomes(engine, settings, AS_OF, SCHEME)
    again = _ledger(engine, "converted").set_index("customer_id")
    assert res.converted_added == 1 and res.converted_updated == 1
    assert again.loc[buyer, "revenue"] == pytest.approx(conv.loc[buyer, "revenue"] + 11.0)
    assert again.loc[buyer, "orders"] == conv.loc[buyer, "orders"] + 1
    assert again.loc[never, "revenue"] == pytest.approx(7.5)

    with engine.begin() as conn:
        conn.execute(update(orders).where(orders.c.order_id == "late-2").values(status="Cancelled"))
    res = collect_outcomes(engine, settings, AS_OF, SCHEME)
    assert res.converted_removed == 1
    assert never not in set(_ledger(engine, "converted")["customer_id"])


def test_window_boundaries_and_window_override(engine, settings):
    fx = build(engine)
    risk = fx.members[fx.members["segment"] == "At Risk"]
    t0 = risk[risk["member_group"] == "treatment"]["customer_id"].iloc[0]
    collect_outcomes(engine, settings, AS_OF, SCHEME)
    o = read_orders(engine)
    mine = o[(o["customer_id"] == t0)]
    conv = _ledger(engine, "converted").set_index("customer_id")
    # the 500.00 order on the as_of day is before the send; the order dated as_of + 30 counts
    expected = mine[(pd.to_datetime(mine["ordered_at"]) > pd.Timestamp(SEND))
                    & (pd.to_datetime(mine["ordered_at"]) <= pd.Timestamp(SEND + timedelta(days=30)))
                    & ~mine["status"].isin(["Cancelled", "Returned"])]  # fmt: skip
    assert 500.0 not in set(expected["amount"]) and 40.0 in set(expected["amount"])
    assert conv.loc[t0, "revenue"] == pytest.approx(expected["amount"].sum())

    short = collect_outcomes(engine, settings, AS_OF, SCHEME, window_days=7)
    assert short.window_days == 7
    exp7 = expected_per_member(fx.members, o, window_days=7, percent=PERCENT)
    got7 = _ledger(engine, "converted")
    assert set(got7["customer_id"]) == set(exp7[exp7["converted"]]["customer_id"])
    assert short.converted_removed > 0


def test_send_time_starts_the_window_for_treated_and_holdout(engine, settings):
    fx = build(engine)
    send = datetime(2024, 4, 10, 9, 30)
    with engine.begin() as conn:
        conn.execute(update(campaigns).values(send_time=send))
    collect_outcomes(engine, settings, AS_OF, SCHEME)
    exp = expected_per_member(fx.members, read_orders(engine), start=send, percent=PERCENT)
    got = _ledger(engine, "converted")
    assert set(got["customer_id"]) == set(exp[exp["converted"]]["customer_id"])
    members = fx.members.set_index("customer_id")
    assert {"treatment", "holdout"} <= set(members.loc[list(got["customer_id"]), "member_group"])


class _FakeDestination:
    """A destination as the connectors expose it: ``read_outcomes`` yields per-member events."""

    name = "mailchimp"

    def __init__(self, events):
        self.events = events
        self.asked: dict = {}

    def read_outcomes(self, engine, campaign_ids, since=None):
        self.asked = {"campaign_ids": list(campaign_ids), "since": since}
        return iter(self.events)


def test_destination_events_are_recorded_once_and_feed_suppressions(engine, settings):
    fx = build(engine)
    risk = fx.members[(fx.members["segment"] == "At Risk") & (fx.members["member_group"] == "treatment")]
    a, b, c = risk["customer_id"].iloc[:3]
    n_b = int(b[1:])
    cid = fx.campaign_ids["At Risk"]
    at = SEND + timedelta(hours=3)
    events = [
        OutcomeEvent(cid, a, "sent", at),
        OutcomeEvent(cid, a, "opened", at + timedelta(hours=2)),
        OutcomeEvent(cid, a, "opened", at + timedelta(hours=1)),
        OutcomeEvent(cid, a, "clicked", datetime(2024, 4, 1, 7, tzinfo=timezone(timedelta(hours=2)))),
        OutcomeEvent(cid, None, "unsubscribed", at, f"user{n_b}@example.com"),
        OutcomeEvent(cid, c, "bounced", at),
        OutcomeEvent("some-other-campaign", a, "opened", at),
        OutcomeEvent(cid, "not-a-member", "opened", at),
        OutcomeEvent(cid, a, "forwarded", at),
        OutcomeEvent(cid, None, "opened", at),  # nobody to attribute it to
    ]
    dest = _FakeDestination(events)
    res = collect_outcomes(engine, settings, AS_OF, SCHEME, destination=dest)
    assert dest.asked["campaign_ids"] == sorted(dest.asked["campaign_ids"]) or dest.asked["campaign_ids"]
    assert cid in dest.asked["campaign_ids"]
    assert res.events_added == {"sent": 1, "opened": 1, "clicked": 1, "unsubscribed": 1, "bounced": 1}
    assert res.events_skipped == 4  # other campaign, not a member, not an email event, nobody
    assert res.suppressions_added == 2
    assert res.backtest is False  # a destination reported sends
    led = _ledger(engine)
    opened = led[(led["event"] == "opened")].iloc[0]
    assert pd.Timestamp(opened["occurred_at"]) == pd.Timestamp(at + timedelta(hours=1))  # earliest kept
    clicked = led[(led["event"] == "clicked")].iloc[0]
    assert pd.Timestamp(clicked["occurred_at"]) == pd.Timestamp("2024-04-01 05:00:00")  # UTC, naive
    assert set(led[led["event"] == "unsubscribed"]["customer_id"]) == {b}
    assert set(led[led["event"].isin(["opened", "sent"])]["source"]) == {"mailchimp"}

    with engine.connect() as conn:
        sup = {(h, r) for h, r in conn.execute(select(suppressions.c.email_hash, suppressions.c.reason))}
    n_c = int(c[1:])
    assert (hashlib.sha256(f"user{n_b}@example.com".encode()).hexdigest(), "unsubscribed") in sup
    assert (hashlib.sha256(f"user{n_c}@example.com".encode()).hexdigest(), "bounced") in sup

    again = collect_outcomes(engine, settings, AS_OF, SCHEME, destination=list(events))
    assert sum(again.events_added.values()) == 0 and again.suppressions_added == 0
    assert len(_ledger(engine)) == len(led)


def test_no_campaign_for_that_as_of_names_it_and_the_fix(engine, settings):
    build(engine)
    other = AS_OF - timedelta(days=1)
    with pytest.raises(NotFoundError) as err:
        collect_outcomes(engine, settings, other, SCHEME)
    assert other.isoformat() in err.value.message and SCHEME in err.value.message
    assert "activation plan" in (err.value.fix or "")
    with pytest.raises(NotFoundError):
        collect_outcomes(engine, settings, AS_OF, "seed5")
    assert _ledger(engine).empty


def test_window_past_the_data_end_warns_outcomes_incomplete(engine, settings):
    build(engine)
    res = collect_outcomes(engine, settings, AS_OF, SCHEME, window_days=120)
    assert res.incomplete
    assert any("outcomes incomplete" in w for w in res.warnings)
    assert res.data_end is not None and res.data_end.date().isoformat() in res.warnings[0]
    ok = collect_outcomes(engine, settings, AS_OF, SCHEME, window_days=30)
    assert not ok.incomplete and not ok.warnings


def test_unknown_coupon_codes_are_ignored_for_redemption_and_counted(engine, settings):
    fx = build(engine)
    res = collect_outcomes(engine, settings, AS_OF, SCHEME)
    # BOGUS-CODE on a treated member, someone else's code on a holdout member
    assert res.unknown_coupon_orders == 2
    assert any("not the member's own" in n for n in res.notes)
    conv = _ledger(engine, "converted").set_index("customer_id")
    risk = fx.members[fx.members["segment"] == "At Risk"]
    h0 = risk[risk["member_group"] == "holdout"]["customer_id"].iloc[0]
    assert pd.isna(conv.loc[h0, "coupon_code"]) and conv.loc[h0, "discount"] == 0
    assert "BOGUS-CODE" not in set(conv["coupon_code"].dropna())


def test_a_failure_half_way_writes_nothing(engine, settings, monkeypatch):
    build(engine)

    def boom(conn, ids):
        raise RuntimeError("warehouse went away")

    # fails after events and conversions were written inside the transaction
    monkeypatch.setattr(outcomes_mod, "is_backtest", boom)
    with pytest.raises(RuntimeError):
        collect_outcomes(engine, settings, AS_OF, SCHEME, destination=[
            OutcomeEvent("cmp-at-risk-v1", "c00001", "sent", None)])  # fmt: skip
    assert _ledger(engine).empty


def test_zero_member_campaign_and_default_as_of(engine, settings):
    build(engine)
    res = collect_outcomes(engine, settings, None, None)
    assert res.as_of == AS_OF and res.scheme == settings.default_scheme == SCHEME
    with engine.connect() as conn:
        n = conn.execute(
            select(func.count())
            .select_from(campaign_outcomes)
            .where(campaign_outcomes.c.campaign_id == "cmp-lost-v1")
        ).scalar()
    assert n == 0


def test_discount_model_reads_the_offer():
    assert discount_model(
        "winback_coupon", '{"type": "winback_coupon", "percent": 20, "expiry_days": 30}'
    ) == (0.2, None)
    assert discount_model(
        "winback_coupon", '{"type": "winback_coupon", "percent": 15, "max_discount": 25}'
    ) == (
        0.15,
        25,
    )
    assert discount_model("vip_early_access", '{"type": "vip_early_access"}') == (0.0, None)
    assert discount_model("custom", '{"type": "custom", "percent": 5}') == (0.05, None)
    assert discount_model("none", "not json") == (0.0, None)


def test_usable_event_is_an_email_event_in_naive_utc_naming_someone():
    aware = datetime(2024, 4, 2, 12, tzinfo=timezone(timedelta(hours=2)))
    e = usable_event(OutcomeEvent("c", "x", "clicked", aware))
    assert e is not None and e.event == "clicked" and e.occurred_at == datetime(2024, 4, 2, 10)
    assert usable_event(OutcomeEvent("c", None, "opened", None)) is None  # nobody to attribute it to
    assert usable_event(OutcomeEvent("c", "x", "forwarded", None)) is None  # not an event of the ledger
    assert usable_event(OutcomeEvent("c", None, "opened", None, "a@example.com")) is not None
    assert end_of_day(AS_OF) == datetime.combine(AS_OF, time(23, 59, 59, 999999))


def test_cli_outcomes_collect(duck_engine, duck_settings):
    build(duck_engine)
    ok = run_cli(
        "outcomes", "collect", "--as-of", AS_OF.isoformat(), "--scheme", SCHEME, "--window-days", "30"
    )
    assert ok.exit_code == 0, ok.output
    assert "converted: +" in ok.stdout and "5 campaigns" in ok.stdout
    again = run_cli("outcomes", "collect", "--as-of", AS_OF.isoformat(), "--scheme", SCHEME)
    assert again.exit_code == 0 and "converted: +0 new, 0 updated" in again.stdout
    late = run_cli("outcomes", "collect", "--as-of", AS_OF.isoformat(), "--window-days", "365")
    assert late.exit_code == 0 and "outcomes incomplete" in late.stderr
    missing = run_cli("outcomes", "collect", "--as-of", "2020-01-01", "--scheme", SCHEME)
    assert missing.exit_code == 2
    assert "no campaign for as_of 2020-01-01" in missing.stderr and "activation plan" in missing.stderr
    outbox = run_cli("outcomes", "collect", "--as-of", AS_OF.isoformat(), "--destination", "outbox")
    assert outbox.exit_code == 0, outbox.output
    assert "email events added: none" in outbox.stdout
    unknown = run_cli("outcomes", "collect", "--as-of", AS_OF.isoformat(), "--destination", "carrier-pigeon")
    assert unknown.exit_code == 2 and "carrier-pigeon" in unknown.stderr
    bad = run_cli("outcomes", "collect", "--as-of", "31/03/2024")
    assert bad.exit_code == 2 and "YYYY-MM-DD" in bad.output


def test_capped_coupon_discount_per_redeemed_order(engine, settings):
    fx = build(engine)
    cid = fx.campaign_ids["At Risk"]
    offer = '{"type": "winback_coupon", "percent": 50, "expiry_days": 30, "max_discount": 30}'
    with engine.begin() as conn:
        conn.execute(update(campaigns).where(campaigns.c.campaign_id == cid).values(offer=offer))
    collect_outcomes(engine, settings, AS_OF, SCHEME)
    o = read_orders(engine)
    o = o[(pd.to_datetime(o["ordered_at"]) > pd.Timestamp(SEND))
          & (pd.to_datetime(o["ordered_at"]) <= pd.Timestamp(SEND + timedelta(days=30)))
          & ~o["status"].isin(["Cancelled", "Returned"])]  # fmt: skip
    m = fx.members[(fx.members["campaign_id"] == cid) & fx.members["coupon_code"].notna()]
    red = o.merge(m, on="customer_id", suffixes=("", "_member"))
    red = red[red["coupon_code"] == red["coupon_code_member"]]
    expected = red.assign(d=(red["amount"] * 0.5).clip(upper=30)).groupby("customer_id")["d"].sum()
    got = _ledger(engine, "converted").set_index("customer_id")["discount"]
    assert len(expected) > 0 and (expected > 0).all()
    assert (red["amount"] * 0.5 > 30).any()  # the cap matters for some orders
    for cust, d in expected.items():
        assert got[cust] == pytest.approx(d)


def test_a_window_below_one_day_is_refused(duck_engine, duck_settings):
    from activation.errors import ConfigError

    build(duck_engine)
    with pytest.raises(ConfigError, match="at least 1 day") as err:
        collect_outcomes(duck_engine, duck_settings, AS_OF, SCHEME, window_days=0)
    assert "--window-days" in (err.value.fix or "")
    res = run_cli("outcomes", "collect", "--window-days", "0")
    assert res.exit_code == 2 and _ledger(duck_engine).empty
