"""One contract every destination passes (local outbox, Mailchimp and HubSpot against their fake servers):
holdouts untouched, only changes written, moves drop the old tag, dry runs silent, suppression wins,
a sync that dies half-way converges on rerun, bad emails skipped."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date

import pytest
from sqlalchemy import func, select

from activation.tables import sync_log, sync_state
from connectors.base import AudienceMember, CampaignSpec, Content
from connectors.errors import FatalDestinationError
from connectors.state import add_suppressions
from connectors.sync import SyncOptions, sync_audience
from tests.fakes.destinations import DestinationUnderTest, configure
from tests.fakes.plan_data import AS_OF, SCHEME, SimpleContent, insert_plan, make_assignment

C = SimpleContent()
N = 240


@pytest.fixture(params=["outbox", "mailchimp", "hubspot"])
def dut(request: pytest.FixtureRequest, duck_settings) -> Iterator[DestinationUnderTest]:
    d = configure(request.param, duck_settings)
    yield d
    d.close()
    if d.server is not None:
        d.server.stop()


def _sync(engine, dut: DestinationUnderTest, as_of: date = AS_OF, **kw):
    dest = dut._dest or dut.make()
    return sync_audience(
        engine, dut.settings, dest, SyncOptions(as_of, SCHEME, content=kw.pop("content", C), **kw)
    )


def _expected(plan) -> dict[str, set[str]]:
    return {seg: {f"{c}@example.com" for c in ids} for seg, ids in plan.treated.items()}


def test_holdouts_never_tagged_listed_or_sent(duck_engine, dut):
    holdouts = {f"c{i:05d}" for i in range(0, N, 7)}
    plan = insert_plan(duck_engine, make_assignment(N), holdouts=holdouts)
    res = _sync(duck_engine, dut, send=True)
    assert res.failed == 0 and res.ok == N - len(holdouts)
    held = {f"{c}@example.com" for c in holdouts}
    for seg, emails in _expected(plan).items():
        assert dut.audience(seg) == emails
        assert not dut.audience(seg) & held
    assert not dut.contacts() & held
    for emails in dut.delivered().values():
        assert not emails & held
    if dut.name != "hubspot":
        assert dut.delivered() == _expected(plan)


def test_last_quarters_members_drawn_as_holdouts_lose_the_tag_and_get_nothing(duck_engine, dut):
    """Tags and lists are per segment, not per quarter: a member treated last quarter who is a holdout of the
    same segment this quarter must leave its audience, or this quarter's campaign would reach them."""
    first = make_assignment(N)
    insert_plan(duck_engine, first)
    _sync(duck_engine, dut, send=True)
    q2 = date(2024, 6, 30)
    holdouts = {f"c{i:05d}" for i in range(0, N, 5)}
    plan2 = insert_plan(duck_engine, first, holdouts=holdouts, as_of=q2, replace_customers=False)
    res = _sync(duck_engine, dut, as_of=q2, send=True)
    assert res.failed == 0
    held = {f"{c}@example.com" for c in holdouts}
    for seg, emails in _expected(plan2).items():
        assert dut.audience(seg, q2) == emails
        assert not dut.audience(seg, q2) & held
    if dut.name == "mailchimp":
        reached = set().union(*(e for title, e in dut.server.sent_to().items() if q2.isoformat() in title))
        assert reached and not reached & held
    elif dut.name == "outbox":
        messages = list((dut._outbox() / q2.isoformat()).rglob("*.eml"))
        assert messages and not {m.stem for m in messages} & holdouts


def test_rerun_with_nothing_changed_writes_nothing(duck_engine, dut):
    insert_plan(duck_engine, make_assignment(N))
    _sync(duck_engine, dut, send=True)
    before = dut.writes()
    res = _sync(duck_engine, dut, send=True)
    assert dut.writes() == before
    assert res.write_calls == 0 and res.ok == 0


def test_moving_customers_lose_their_old_tag(duck_engine, dut):
    first = make_assignment(N)
    insert_plan(duck_engine, first)
    _sync(duck_engine, dut)
    # next quarter: every 4th customer moves to the next segment
    segs = ("Champions", "Loyal", "At Risk")
    moved = {cid: (segs[(segs.index(s) + 1) % 3] if int(cid[1:]) % 4 == 0 else s) for cid, s in first.items()}
    q2 = date(2024, 6, 30)
    plan2 = insert_plan(duck_engine, moved, as_of=q2, replace_customers=False)
    before = dut.writes()
    res = _sync(duck_engine, dut, as_of=q2)
    assert res.failed == 0
    for seg, emails in _expected(plan2).items():
        assert dut.audience(seg, q2) == emails
    assert dut.writes() > before


def test_dry_run_sends_no_request_and_writes_no_row(duck_engine, dut):
    insert_plan(duck_engine, make_assignment(30), emails={"c00001": "broken@", "c00002": None})
    dest = dut.make()
    res = sync_audience(duck_engine, dut.settings, dest, SyncOptions.preview(AS_OF, SCHEME, content=C))
    assert dut.requests() == 0
    with duck_engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(sync_state)).scalar_one() == 0
        assert conn.execute(select(func.count()).select_from(sync_log)).scalar_one() == 0
    assert res.skips == {"invalid_email": 1, "no_email": 1}
    assert sum(s.adds for s in res.segments.values()) == 28 and res.api_calls > 0


def test_suppression_overrides_every_segment(duck_engine, dut):
    insert_plan(duck_engine, make_assignment(30))
    add_suppressions(duck_engine, [("c00004@example.com", "complained")], "manual")
    _sync(duck_engine, dut)
    assert "c00004@example.com" not in set().union(
        *(dut.audience(s) for s in ("Champions", "Loyal", "At Risk"))
    )
    add_suppressions(duck_engine, [("c00005@example.com", "erasure")], "manual")
    res = _sync(duck_engine, dut)
    assert res.skips["erasure"] == 1
    assert "c00005@example.com" not in set().union(
        *(dut.audience(s) for s in ("Champions", "Loyal", "At Risk"))
    )


class _ExplodingContent(SimpleContent):
    """Renders ``n`` messages, then fails like a crash would (the outbox's mid-way fault)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def for_member(self, campaign: CampaignSpec, member: AudienceMember) -> Content:
        self.n -= 1
        if self.n < 0:
            raise FatalDestinationError("disk full (fault injected)")
        return super().for_member(campaign, member)


def test_sync_failing_half_way_converges_on_rerun(duck_engine, dut):
    plan = insert_plan(duck_engine, make_assignment(N), holdouts={"c00003"})
    kw = {}
    if dut.server is not None:
        dut.server.faults.fatal_after_writes = 4
    else:
        kw["content"] = _ExplodingContent(100)
    with pytest.raises(FatalDestinationError):
        _sync(duck_engine, dut, send=True, **kw)
    partial = sum(len(dut.audience(s)) for s in plan.treated)
    assert partial < N - 1
    if dut.server is not None:
        dut.server.faults.fatal_after_writes = None
    res = _sync(duck_engine, dut, send=True)
    assert res.failed == 0
    for seg, emails in _expected(plan).items():
        assert dut.audience(seg) == emails
    if dut.name != "hubspot":
        assert dut.delivered() == _expected(plan)
    if dut.name == "mailchimp":
        assert len(dut.server.campaigns) == 3  # no duplicate campaign
    before = dut.writes()
    _sync(duck_engine, dut, send=True)
    assert dut.writes() == before


def test_bad_and_duplicate_emails_are_skipped_and_logged(duck_engine, dut):
    emails = {"c00001": "no-at-sign", "c00002": None, "c00004": "C00005@EXAMPLE.com", "c00007": "x@-bad-.com"}
    insert_plan(duck_engine, make_assignment(12), emails=emails)
    res = _sync(duck_engine, dut)
    assert res.skips == {"invalid_email": 2, "no_email": 1, "duplicate_email": 1}
    assert len(dut.contacts()) == 8
    with duck_engine.connect() as conn:
        reasons = conn.execute(
            select(sync_log.c.customer_id, sync_log.c.error).where(sync_log.c.operation == "skip")
        ).all()
    assert sorted(reasons) == [
        ("c00001", "invalid_email"),
        ("c00002", "no_email"),
        ("c00005", "duplicate_email"),
        ("c00007", "invalid_email"),
    ]
