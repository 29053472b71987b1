"""The sync itself (plan → diff → guardrails → apply → log), exercised through the local outbox."""

from __future__ import annotations

import email
import json
from collections import Counter
from datetime import date, datetime, time, timedelta
from email import policy
from email.errors import HeaderParseError

import pytest
from sqlalchemy import func, insert, select, update

from activation.errors import GuardrailError
from activation.tables import (
    campaign_outcomes,
    campaigns,
    customers,
    orders,
    suppressions,
    sync_log,
    sync_runs,
    sync_state,
)
from connectors.base import email_hash
from connectors.errors import FatalDestinationError
from connectors.state import add_suppressions
from connectors.sync import SyncOptions, sync_audience
from tests.cli_helpers import run_cli
from tests.fakes.destinations import sync_named
from tests.fakes.plan_data import AS_OF, SCHEME, SimpleContent, insert_plan, make_assignment

C = SimpleContent()


def _count(engine, table) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar_one()


def _all_counts(engine) -> dict[str, int]:
    return {t.name: _count(engine, t) for t in (sync_state, sync_runs, sync_log, suppressions, campaigns)}


def test_outbox_writes_messages_and_audiences(engine, settings):
    plan = insert_plan(engine, make_assignment(12), holdouts={"c00000", "c00004"})
    res = sync_named(engine, settings, "outbox", AS_OF, SCHEME, content=C, send=True)
    assert res.status == "succeeded" and res.ok == 10 and res.failed == 0
    root = settings.resolved_outbox_dir / AS_OF.isoformat() / SCHEME
    for seg, cid in plan.campaign_ids.items():
        folder = root / cid
        emls = sorted(p.stem for p in folder.glob("*.eml"))
        assert emls == sorted(plan.treated[seg])
        audience = (folder / "audience.csv").read_text().splitlines()
        assert audience[0] == "customer_id,email,first_name,segment,coupon_code"
        assert sorted(line.split(",")[0] for line in audience[1:]) == sorted(plan.treated[seg])
        for h in plan.holdout[seg]:
            assert not (folder / f"{h}.eml").exists()
            assert h not in (folder / "audience.csv").read_text()
    msg = email.message_from_bytes(
        (root / plan.campaign_ids["Loyal"] / "c00001.eml").read_bytes(), policy=policy.default
    )
    assert msg["From"] == "Northwind Goods <hello@example.com>"
    assert msg["List-Unsubscribe"].startswith("<https://shop.example.com/unsubscribe?")
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert msg.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
    assert "C-c00001-1" in msg.get_body(("html",)).get_content()
    # sending marks the attribution start at the end of the as_of day
    with engine.connect() as conn:
        times = conn.execute(select(campaigns.c.send_time)).scalars().all()
    assert all(t is not None and t.date() == AS_OF and t.hour == 23 for t in times)
    # nothing changed: no file written, nothing sent twice
    again = sync_named(engine, settings, "outbox", AS_OF, SCHEME, content=C, send=True)
    assert again.write_calls == 0 and again.ok == 0


def test_an_outbox_send_attributes_the_whole_last_day_of_the_window_and_nothing_of_the_as_of_day(
    engine, settings
):
    """The outbox's send time is the last instant of the as_of day, the same end of day a backtest uses:
    an order half a second before midnight on the window's last day counts, one half a second before
    midnight on the as_of day does not (a send time of 23:59:59 would get both wrong)."""
    from outcomes.ledger import collect_outcomes

    plan = insert_plan(engine, make_assignment(8))
    sync_named(engine, settings, "outbox", AS_OF, SCHEME, content=C, send=True)
    window = settings.attribution_window_days
    last_day, as_of_day = (
        datetime.combine(d, time(23, 59, 59, 500_000)) for d in (AS_OF + timedelta(days=window), AS_OF)
    )
    seg = sorted(plan.treated)[0]
    late_buyer, early_buyer = plan.treated[seg][0], plan.treated[seg][-1]
    assert late_buyer != early_buyer
    with engine.begin() as conn:
        conn.execute(
            insert(orders),
            [
                {"order_id": "o-last", "customer_id": late_buyer, "ordered_at": last_day, "amount": 10.0},
                {"order_id": "o-asof", "customer_id": early_buyer, "ordered_at": as_of_day, "amount": 10.0},
            ],
        )
    collect_outcomes(engine, settings, AS_OF, SCHEME)
    with engine.connect() as conn:
        converted = set(
            conn.execute(
                select(campaign_outcomes.c.customer_id).where(campaign_outcomes.c.event == "converted")
            ).scalars()
        )
    assert converted == {late_buyer}


def test_dry_run_writes_nothing(engine, settings):
    insert_plan(
        engine, make_assignment(9), holdouts={"c00002"}, emails={"c00003": "not-an-email", "c00004": None}
    )
    before = _all_counts(engine)
    res = sync_named(engine, settings, "outbox", AS_OF, SCHEME, content=C, dry_run=True)
    assert _all_counts(engine) == before
    assert not settings.resolved_outbox_dir.exists()
    assert res.skips == {"invalid_email": 1, "no_email": 1}
    assert sum(s.adds for s in res.segments.values()) == 6
    assert res.api_calls == 6 + 3  # one message per member + one audience file per segment


def test_suppression_and_unsubscribed_override_every_segment(engine, settings):
    insert_plan(engine, make_assignment(9))
    add_suppressions(engine, [("C00001@Example.com ", "erasure")], "manual")
    with engine.begin() as conn:
        conn.execute(update(customers).where(customers.c.customer_id == "c00002").values(unsubscribed=True))
    with engine.connect() as conn:
        stored = conn.execute(select(suppressions.c.email_hash)).scalars().all()
    assert stored == [email_hash("c00001@example.com")]  # only a hash is kept
    res = sync_named(engine, settings, "outbox", AS_OF, SCHEME, content=C)
    assert res.skips == {"erasure": 1, "unsubscribed": 1}
    files = {p.stem for p in settings.resolved_outbox_dir.rglob("*.eml")}
    assert "c00001" not in files and "c00002" not in files and len(files) == 7
    # suppressing someone already synced removes them on the next sync
    add_suppressions(engine, [("c00003@example.com", "unsubscribed")], "manual")
    res = sync_named(engine, settings, "outbox", AS_OF, SCHEME, content=C)
    assert "c00003" not in {p.stem for p in settings.resolved_outbox_dir.rglob("*.eml")}
    with engine.connect() as conn:
        tags = conn.execute(
            select(sync_state.c.tags).where(sync_state.c.customer_id == "c00003")
        ).scalar_one()
    assert tags == "[]"


def test_guardrails_stop_before_any_write(engine, settings):
    insert_plan(engine, make_assignment(30))
    # empty source: a plan nobody in it can be reached from
    with engine.begin() as conn:
        conn.execute(update(customers).values(unsubscribed=True))
    with pytest.raises(GuardrailError, match="empty"):
        sync_named(engine, settings, "outbox", AS_OF, SCHEME, content=C)
    with engine.begin() as conn:
        conn.execute(update(customers).values(unsubscribed=False))
    sync_named(engine, settings, "outbox", AS_OF, SCHEME, content=C)
    # a new plan version where "Loyal" shrinks from 10 to 2 members
    small = {cid: seg for cid, seg in make_assignment(30).items() if seg != "Loyal" or cid < "c00006"}
    with engine.begin() as conn:
        conn.execute(campaigns.delete())
        from activation.tables import campaign_members

        conn.execute(campaign_members.delete())
    insert_plan(engine, small, version=2, replace_customers=False)
    before = _all_counts(engine)
    with pytest.raises(GuardrailError, match="'Loyal' shrinks from 10 to 2"):
        sync_named(engine, settings, "outbox", AS_OF, SCHEME, content=C)
    assert _all_counts(engine) == before
    dry = sync_named(engine, settings, "outbox", AS_OF, SCHEME, content=C, dry_run=True)
    assert dry.guardrail_violations and dry.segments["Loyal"].tag_removes == 8
    res = sync_named(engine, settings, "outbox", AS_OF, SCHEME, content=C, force=True)
    assert res.status == "succeeded"


class _DiesAfter(SimpleContent):
    """Renders ``n`` messages, then fails the way a crash half-way through a sync would."""

    def __init__(self, n: int) -> None:
        self.n = n

    def for_member(self, campaign, member):
        self.n -= 1
        if self.n < 0:
            raise FatalDestinationError("disk full (fault injected)")
        return super().for_member(campaign, member)


def _tags(engine) -> Counter[str]:
    with engine.connect() as conn:
        return Counter(t for (tags,) in conn.execute(select(sync_state.c.tags)) for t in json.loads(tags))


def test_guardrail_baseline_is_the_last_completed_sync_not_a_half_way_state(engine, settings):
    """A sync that dies half-way leaves ``sync_state`` skewed (some members already moved, others not);
    its rerun must be compared with the last sync that ran to its end, not with that partial picture."""
    settings.guardrail_max_change_share = 0.3
    q1 = make_assignment(1000)  # 334 Champions, 333 Loyal, 333 At Risk
    insert_plan(engine, q1)
    assert sync_named(engine, settings, "outbox", AS_OF, SCHEME, content=C).status == "succeeded"
    # next quarter every customer moves one segment on: the sizes stay the same, so the guardrail passes…
    segs = ("Champions", "Loyal", "At Risk")
    q2_as_of = date(2024, 6, 30)
    insert_plan(
        engine,
        {c: segs[(segs.index(s) + 1) % 3] for c, s in q1.items()},
        as_of=q2_as_of,
        replace_customers=False,
    )
    # …but the sync dies after its first confirmed batch of 500 messages
    with pytest.raises(FatalDestinationError):
        sync_named(engine, settings, "outbox", q2_as_of, SCHEME, content=_DiesAfter(700))
    with engine.connect() as conn:
        statuses = sorted(conn.execute(select(sync_runs.c.status)).scalars())
    assert statuses == ["failed", "succeeded"]
    half_way = _tags(engine)
    assert half_way == {"At Risk": 499, "Champions": 501}  # Loyal's members all moved on, At Risk half-way
    # the rerun of the same plan: the baseline is Q1's completed sync (334/333/333), not 499/501/0
    dry = sync_named(engine, settings, "outbox", q2_as_of, SCHEME, content=C, dry_run=True)
    assert dry.guardrail_violations == []
    assert {s: p.previous for s, p in dry.segments.items()} == {
        "Champions": 334,
        "Loyal": 333,
        "At Risk": 333,
    }
    res = sync_named(engine, settings, "outbox", q2_as_of, SCHEME, content=C)
    assert res.status == "succeeded" and res.failed == 0
    assert _tags(engine) == {"Champions": 333, "Loyal": 334, "At Risk": 333}


def test_guardrail_still_stops_a_real_shrink_after_a_completed_sync(engine, settings):
    q1 = make_assignment(1000)
    insert_plan(engine, q1)
    sync_named(engine, settings, "outbox", AS_OF, SCHEME, content=C)
    # next quarter 60 % of Loyal (200 of 333) drop out of the plan
    loyal = sorted(c for c, s in q1.items() if s == "Loyal")
    q2 = {c: s for c, s in q1.items() if c not in set(loyal[:200])}
    q2_as_of = date(2024, 6, 30)
    insert_plan(engine, q2, as_of=q2_as_of, replace_customers=False)
    before = _all_counts(engine)
    with pytest.raises(GuardrailError, match=r"'Loyal' shrinks from 333 to 133 members \(60% > 50%\)"):
        sync_named(engine, settings, "outbox", q2_as_of, SCHEME, content=C)
    assert _all_counts(engine) == before
    # a failed attempt does not become the baseline either: the same stop on the next try
    with pytest.raises(GuardrailError, match="'Loyal' shrinks from 333 to 133"):
        sync_named(engine, settings, "outbox", q2_as_of, SCHEME, content=C)
    res = sync_named(engine, settings, "outbox", q2_as_of, SCHEME, content=C, force=True)
    assert res.status == "succeeded" and _tags(engine)["Loyal"] == 133
    # after the forced sync completed, it is the baseline: an unchanged rerun passes
    assert sync_named(engine, settings, "outbox", q2_as_of, SCHEME, content=C).write_calls == 0


def test_guardrail_switching_a_destination_to_another_scheme_is_a_swing(duck_engine, duck_settings):
    """Before a scheme's first completed sync, the baseline is the destination's last completed sync of any
    scheme: replacing its whole audience with another scheme's segments stops until forced."""
    engine, settings = duck_engine, duck_settings
    insert_plan(engine, make_assignment(300))
    assert sync_named(engine, settings, "outbox", AS_OF, SCHEME, content=C).status == "succeeded"
    q2 = date(2024, 6, 30)
    insert_plan(engine, make_assignment(300, ("High", "Mid", "Low")), as_of=q2, replace_customers=False)
    with engine.begin() as conn:
        conn.execute(update(campaigns).where(campaigns.c.as_of == q2).values(scheme="tiers"))
    with pytest.raises(GuardrailError, match="'Champions' shrinks from 100 to 0 members"):
        sync_named(engine, settings, "outbox", q2, "tiers", content=C)
    res = sync_named(engine, settings, "outbox", q2, "tiers", content=C, force=True)
    assert res.status == "succeeded" and _tags(engine) == {"High": 100, "Mid": 100, "Low": 100}
    # from now on "tiers" is compared with its own last sync
    assert sync_named(engine, settings, "outbox", q2, "tiers", content=C).guardrail_violations == []


def test_sync_log_and_runs(engine, settings):
    insert_plan(engine, make_assignment(6), emails={"c00005": None})
    res = sync_named(engine, settings, "outbox", AS_OF, SCHEME, content=C)
    with engine.connect() as conn:
        ops = conn.execute(
            select(sync_log.c.customer_id, sync_log.c.operation, sync_log.c.status, sync_log.c.error).where(
                sync_log.c.customer_id.is_not(None)
            )
        ).all()
        run = conn.execute(select(sync_runs.c.status, sync_runs.c.summary)).one()
    assert len(ops) == 6
    assert ("c00005", "skip", "skipped", "no_email") in ops
    assert run.status == "succeeded" and res.sync_id


def test_a_second_sync_to_the_same_destination_is_refused_while_one_runs(engine, settings):
    """Two syncs at once (a schedule and a manual run) would both create and send the same campaigns: the
    second stops at once with nothing done; a dry run and another destination are not held up."""
    import threading

    from activation.errors import ConflictError

    insert_plan(engine, make_assignment(30))
    started, release = threading.Event(), threading.Event()

    class Blocking(SimpleContent):
        def for_member(self, campaign, member):
            started.set()
            assert release.wait(30)
            return super().for_member(campaign, member)

    results: list = []
    first = threading.Thread(
        target=lambda: results.append(
            sync_named(engine, settings, "outbox", AS_OF, SCHEME, content=Blocking())
        )
    )
    first.start()
    try:
        assert started.wait(30)
        with pytest.raises(ConflictError, match="another sync to outbox is already running") as err:
            sync_named(engine, settings, "outbox", AS_OF, SCHEME, content=C)
        assert "wait for it to finish" in (err.value.fix or "")
        assert sync_named(engine, settings, "outbox", AS_OF, SCHEME, content=C, dry_run=True).dry_run
        with engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(sync_runs)).scalar() == 1  # only the first
    finally:
        release.set()
        first.join(60)
    assert results and results[0].failed == 0
    again = sync_named(engine, settings, "outbox", AS_OF, SCHEME, content=C)  # free again: nothing to do
    assert again.write_calls == 0


def test_a_sync_held_by_another_process_on_postgresql_is_refused(engine, settings):
    if engine.dialect.name == "duckdb":
        pytest.skip("a DuckDB file admits one writing process; the lock between processes is PostgreSQL's")
    from sqlalchemy import create_engine, text

    from activation.errors import ConflictError

    insert_plan(engine, make_assignment(5))
    other = create_engine(engine.url)  # another process's session, as far as the server is concerned
    try:
        with other.connect() as conn:
            assert conn.execute(
                text("SELECT pg_try_advisory_lock(hashtextextended('sync:outbox', 1))")
            ).scalar()
            with pytest.raises(ConflictError):
                sync_named(engine, settings, "outbox", AS_OF, SCHEME, content=C)
            assert sync_named(engine, settings, "hubspot", AS_OF, SCHEME, content=C, dry_run=True).dry_run
        other.dispose()  # the other process ends: the server releases its lock
        with engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(sync_runs)).scalar() == 0
        assert sync_named(engine, settings, "outbox", AS_OF, SCHEME, content=C).failed == 0
    finally:
        other.dispose()


def test_cli_sync_dry_run_and_real(duck_engine, duck_settings):
    insert_plan(duck_engine, make_assignment(9), emails={"c00003": "x@"})
    out = run_cli("sync", "--destination", "outbox", "--scheme", SCHEME, "--dry-run")
    assert out.exit_code == 0, out.output
    assert "dry run" in out.stdout and "invalid email 1" in out.stdout
    assert not duck_settings.resolved_outbox_dir.exists()
    bad = run_cli("sync", "--destination", "carrier-pigeon")
    assert bad.exit_code == 2 and "unknown destination" in bad.stderr


def test_end_to_end_real_plan_to_outbox_and_mailchimp(engine, settings, tmp_path, monkeypatch):
    """``activation plan`` (real policy, templates, holdouts, coupons) → ``activation sync`` to the outbox
    (per-member render) and to Mailchimp (merge-tag render, sent), on both warehouses."""
    from campaigns.plan import plan_campaigns
    from tests.campaign_helpers import AS_OF as PLAN_AS_OF
    from tests.campaign_helpers import insert_customers, insert_snapshot, private_templates
    from tests.fakes.destinations import FAST_RETRY
    from tests.fakes.mailchimp import FakeMailchimp

    s = private_templates(settings, tmp_path, monkeypatch)
    insert_snapshot(engine, 400)
    insert_customers(engine, 400)
    plan_campaigns(engine, s, PLAN_AS_OF, "rfm11")
    with engine.connect() as conn:
        from activation.tables import campaign_members

        rows = conn.execute(
            select(campaign_members.c.customer_id, campaign_members.c.member_group, customers.c.email).join(
                customers, customers.c.customer_id == campaign_members.c.customer_id
            )
        ).all()
    treated = {r.email.lower() for r in rows if r.member_group == "treatment" and r.email}
    held = {r.email.lower() for r in rows if r.member_group == "holdout" and r.email}
    assert treated and held

    out = run_cli(
        "sync", "--destination", "outbox", "--as-of", PLAN_AS_OF.isoformat(), "--scheme", "rfm11", "--send"
    )
    assert out.exit_code == 0, out.output
    msgs = [
        email.message_from_bytes(p.read_bytes(), policy=policy.default)
        for p in s.resolved_outbox_dir.rglob("*.eml")
    ]
    to = {m["To"].addresses[0].addr_spec.lower() for m in msgs}
    assert to == treated and not to & held
    body = msgs[0].get_body(("html",)).get_content()
    assert "unsubscribe" in body.lower() and s.brand.postal_address.split(",")[0] in body

    with FakeMailchimp() as mc:
        from pydantic import SecretStr

        from activation.settings import MailchimpSettings
        from connectors.mailchimp import MailchimpDestination

        s.mailchimp = MailchimpSettings(
            api_key=SecretStr(mc.api_key), list_id=mc.list_id, base_url=mc.base_url
        )
        dest = MailchimpDestination(s.mailchimp, s.brand, retry=FAST_RETRY)
        res = sync_audience(engine, s, dest, SyncOptions(PLAN_AS_OF, "rfm11", send=True))
        assert res.failed == 0
        sent = set().union(*mc.sent_to().values())
        assert sent == treated and not sent & held
        html = next(iter(mc.campaigns.values()))["content"]["html"]
        assert "*|UNSUB|*" in html and "*|FNAME|*" in html


def test_compiled_member_hash_is_state_hash():
    """The per-campaign compiled hash (the sync's hot loop) gives exactly ``state_hash``, whatever the
    values: unicode, quotes, percent signs, control characters, a missing or extra field, a non-string."""
    from connectors.audience import member_hasher
    from connectors.base import AudienceMember, state_hash

    base = {"SEGMENT": "Loyal 100%", "OFFER": '15% "off"', "EXPIRES": "2024-04-30"}

    def member(cid: str, email: str, first: str, coupon: str, **over) -> AudienceMember:
        fields = {**base, "FNAME": first, "COUPON": coupon, **over}
        return AudienceMember(cid, email, first, "camp-1", "Loyal 100%", coupon, fields)

    members = [
        member("c1", "a@example.com", "Zoë", "C-1"),
        member("c2", " B@Example.com ", "O'Brien \\ %s %d", "C-%2"),
        member("c3", "c@example.com", "tab\there\u2028", ""),
        member("c4", "d@example.com", "€😀", "C-4", EXTRA="x"),
        member("c5", "e@example.com", "Eve", "C-5", FNAME=None),  # type: ignore[arg-type]
    ]
    for extra in ("", "camp-1", "100% camp"):
        hasher = member_hasher(members[0], extra)
        for m in members:
            assert hasher(m) == state_hash(m.email, [m.segment], m.fields, extra)


def _eml_reference(settings, camp, member, content) -> bytes:
    """How the outbox built a message with :mod:`email.mime` (the reference for the direct assembly)."""
    from email.header import Header
    from email.mime.multipart import MIMEMultipart
    from email.mime.text import MIMEText
    from email.policy import compat32
    from email.utils import format_datetime, formataddr
    from urllib.parse import urlencode

    from activation.clock import end_of_day
    from connectors.outbox import _safe

    brand = settings.brand
    msg = MIMEMultipart("alternative")
    msg["From"] = formataddr((brand.from_name, brand.from_email), charset="utf-8")
    msg["To"] = (
        formataddr((member.first_name, member.email), charset="utf-8") if member.first_name else member.email
    )
    if brand.reply_to:
        msg["Reply-To"] = brand.reply_to
    msg["Subject"] = Header(" ".join(str(content.subject).split()), "utf-8").encode()
    msg["Date"] = format_datetime(end_of_day(camp.as_of))
    domain = brand.from_email.rpartition("@")[2] or "localhost"
    msg["Message-ID"] = f"<{_safe(camp.campaign_id)}.{_safe(member.customer_id)}@{domain}>"
    query = urlencode({"u": email_hash(member.email)[:24], "c": camp.campaign_id})
    sep = "&" if "?" in brand.unsubscribe_url else "?"
    msg["List-Unsubscribe"] = (
        f"<{brand.unsubscribe_url}{sep}{query}>, <mailto:{brand.from_email}?subject=unsubscribe>"
    )
    msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    msg["X-Campaign-Id"] = camp.campaign_id
    msg.attach(MIMEText(content.text, "plain", "utf-8"))
    msg.attach(MIMEText(content.html, "html", "utf-8"))
    return msg.as_bytes(policy=compat32.clone(max_line_length=0))


@pytest.mark.parametrize("reply_to", [None, "Support Team <support@example.com>"])
def test_outbox_message_is_the_email_package_message(duck_settings, reply_to):
    """The outbox assembles each .eml directly; parsed, it is the message ``email.mime`` would build:
    same headers (decoded), same parts, same text, whatever the names and subjects contain."""
    from connectors.base import AudienceMember, CampaignSpec, Content
    from connectors.outbox import OutboxDestination

    settings = duck_settings
    settings.brand.reply_to = reply_to
    settings.brand.from_name = "Nörthwind Goods, Inc."
    settings.brand.unsubscribe_url = "https://shop.example.com/u?list=1"
    camp = CampaignSpec(
        "seed5-2024-03-31-loyal-v1", "k", 1, AS_OF, SCHEME, "Loyal", "s", "winback_coupon", {}
    )
    dest = OutboxDestination(settings)
    cases = [
        ("c1", "ann@example.com", "Ann", "Hello Ann", "Hi Ann", "<p>Hi Ann</p>"),
        ("c2", "bob@example.com", "", "Plain", "x", "<b>x</b>"),
        ("c3", "zoe@example.com", "Zoë O'Brien", "Déjà vu, Zoë — 15 % off 😀", "Grüße\nZeile 2", "<p>€</p>"),
        ("c4", "q@example.com", 'Q "the" Smith, Jr.', "A " + "very long subject " * 8, "t" * 300, "<p>h</p>"),
        ("c/5", "e@example.com", "Eve\r\nBcc: x@example.com", "Line\nbreak  in   subject", "", ""),
    ]
    for cid, addr, first, subject, text, html in cases:
        member = AudienceMember(cid, addr, first, camp.campaign_id, "Loyal", "C-1", {})
        content = Content(subject, html, text)
        new = email.message_from_bytes(dest._eml(camp, member, content), policy=policy.default)
        if "\n" in first:
            # email.mime refuses a name that would smuggle in a header (the sync died on it); the direct
            # assembly keeps the name on one line
            with pytest.raises(HeaderParseError):
                _eml_reference(settings, camp, member, content)
            assert "Bcc" not in new and new["To"].addresses[0].addr_spec == addr
            continue
        ref = email.message_from_bytes(_eml_reference(settings, camp, member, content), policy=policy.default)
        names = [k for k in ref.keys() if k != "Content-Type"]
        assert [k for k in new.keys() if k != "Content-Type"] == names
        for k in names:
            assert str(new[k]) == str(ref[k]), k
        assert new.get_content_type() == ref.get_content_type() == "multipart/alternative"
        new_parts, ref_parts = list(new.iter_parts()), list(ref.iter_parts())
        assert [p.get_content_type() for p in new_parts] == ["text/plain", "text/html"]
        for a, b in zip(new_parts, ref_parts, strict=True):
            assert a.get_content_charset() == b.get_content_charset() == "utf-8"
            assert a["Content-Transfer-Encoding"] == b["Content-Transfer-Encoding"]
            assert a.get_content() == b.get_content()


def test_retry_after_is_waited_in_full_and_a_wait_beyond_the_limit_stops_at_once():
    from connectors.errors import RateLimitedError, RetriesExhaustedError
    from connectors.http import RetryPolicy, call_with_retry

    policy = RetryPolicy(max_retries=3, base_delay=0.01, max_delay=0.2, max_retry_after=60)
    answers: list[object] = [RateLimitedError("429", retry_after=2.0, status=429), "ok"]

    def flaky() -> object:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    slept: list[float] = []
    assert call_with_retry(flaky, policy, what="ping", sleep=slept.append) == "ok"
    assert len(slept) == 1 and slept[0] >= 2.0  # the server's wait, not the back-off cap

    def limited() -> object:
        raise RateLimitedError("429 Too Many Requests", retry_after=3600, status=429)

    slept.clear()
    with pytest.raises(RetriesExhaustedError, match="asks to wait 3600 s") as err:
        call_with_retry(limited, policy, what="ping", sleep=slept.append)
    assert slept == [] and "rerun" in str(err.value.fix)


def test_sync_table_is_never_cut_on_a_narrow_terminal(duck_engine, duck_settings):
    import io

    from rich.console import Console

    from connectors.cli import print_result

    segments = ("Potential Loyalists", "Can't Lose Them", "About To Sleep")
    insert_plan(duck_engine, make_assignment(1200, segments), emails={"c00001": "broken@"})
    res = sync_named(
        duck_engine, duck_settings, "mailchimp", AS_OF, SCHEME, content=SimpleContent(), dry_run=True
    )
    out = io.StringIO()
    print_result(Console(file=out, width=80), res)
    text = out.getvalue()
    assert "…" not in text, text
    words = {w for name in segments for w in name.split()}  # a long name may wrap between its words
    for word in (*words, "members", "before", "holdout", "same", "invalid email 1", "API calls"):
        assert word in text, (word, text)


def test_an_as_of_without_a_plan_is_a_clear_error_not_an_empty_audience(duck_engine, duck_settings):
    from activation.errors import NotFoundError

    insert_plan(duck_engine, make_assignment(30))
    for dry_run in (True, False):
        with pytest.raises(
            NotFoundError, match=f"no campaign plan for scheme '{SCHEME}' as of 2019-12-31"
        ) as err:
            sync_named(
                duck_engine,
                duck_settings,
                "outbox",
                date(2019, 12, 31),
                SCHEME,
                content=SimpleContent(),
                dry_run=dry_run,
                force=True,
            )
        assert AS_OF.isoformat() in str(err.value)  # the plans there are
    with duck_engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(sync_runs)).scalar_one() == 0


def test_schedule_at_in_the_past_is_refused_before_anything_and_its_zone_is_explained(
    duck_engine, duck_settings
):
    from datetime import datetime

    from activation.errors import InputError

    insert_plan(duck_engine, make_assignment(12))
    with pytest.raises(InputError, match="--schedule-at 2020-01-01T09:00:00\\+00:00 is in the past"):
        sync_named(
            duck_engine,
            duck_settings,
            "outbox",
            AS_OF,
            SCHEME,
            content=C,
            schedule_at=datetime(2020, 1, 1, 9, 0),
        )
    with duck_engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(sync_runs)).scalar_one() == 0
    assert not list(duck_settings.resolved_outbox_dir.rglob("*"))
    help_text = " ".join(run_cli("sync", "--help").output.replace("│", " ").split())
    assert "UTC unless" in help_text
