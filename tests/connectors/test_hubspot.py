"""HubSpot: the httpx adapter and the destination against the fake HubSpot server (real HTTP on 127.0.0.1):
batch upsert by email with RFM contact properties, one static list per segment, holdouts, a wrong token,
faults, rate limits, per-contact refusals, reruns and a process killed mid-sync."""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from pydantic import SecretStr, ValidationError
from sqlalchemy import select, update

from activation.errors import ConfigError, NotFoundError
from activation.settings import HubSpotSettings, Settings
from activation.tables import (
    campaign_members,
    campaigns,
    customers,
    destination_campaigns,
    suppressions,
    sync_log,
    sync_runs,
    sync_state,
)
from activation.warehouse import dispose_engines, get_engine
from connectors.base import email_hash
from connectors.errors import AuthError, BadRequestError, FatalDestinationError
from connectors.http import RetryPolicy
from connectors.hubspot import HubSpotApi, HubSpotDestination, RejectedInputsError, list_name
from connectors.sync import SyncOptions, sync_audience
from outcomes.ledger import collect_outcomes
from tests.fakes.destinations import FAST_RETRY, sync_named
from tests.fakes.hubspot import FakeHubSpot
from tests.fakes.plan_data import AS_OF, SCHEME, SEGMENTS, SimpleContent, insert_plan, make_assignment
from tests.fakes.processes import count as _count
from tests.fakes.processes import kill_mid_sync
from tests.fakes.server import APPLIED_FAULT_KINDS, FAULT_KINDS

C = SimpleContent()
V = "2026-03"  # the default API version: dated paths (docs: api-reference/2026-03/overview)
UPSERT = f"/crm/objects/{V}/contacts/batch/upsert"
READ = f"/crm/objects/{V}/contacts/batch/read"
SEARCH = f"/crm/objects/{V}/contacts/search"
LISTS = f"/crm/lists/{V}"
PROPS = f"/crm/properties/{V}/contacts"
ADD = re.compile(rf"/crm/lists/{V}/(\d+)/memberships/add")
REMOVE = re.compile(rf"/crm/lists/{V}/(\d+)/memberships/remove")
OFFER = "15% off, valid 30 days"  # the plan_data offer as campaigns.render words it


@pytest.fixture
def hs() -> Iterator[FakeHubSpot]:
    with FakeHubSpot() as server:
        yield server  # type: ignore[misc]


def _configure(settings, hs: FakeHubSpot, **kw) -> HubSpotSettings:
    settings.hubspot = HubSpotSettings(token=SecretStr(hs.token), base_url=hs.url, **kw)
    return settings.hubspot


def _sync(engine, settings, *, retry: RetryPolicy = FAST_RETRY, **kw):
    dest = HubSpotDestination(settings.hubspot, retry=retry)
    try:
        return sync_audience(engine, settings, dest, SyncOptions(AS_OF, SCHEME, content=C, **kw))
    finally:
        dest.close()


def _calls(hs: FakeHubSpot, path: str | re.Pattern[str], status: int | None = 200) -> list:
    def match(p: str) -> bool:
        return p == path if isinstance(path, str) else path.fullmatch(p) is not None

    return [
        c for c in hs.log if match(c.path) and c.method != "GET" and (status is None or c.status == status)
    ]


def _only_consent_reads(hs: FakeHubSpot) -> bool:
    """Nothing but the consent read-back (the search for contacts unsubscribed from all email)."""
    return all(c.method == "POST" and c.path == SEARCH for c in hs.log) and hs.write_calls == 0


def _rows(engine, table) -> list:
    with engine.connect() as conn:
        return conn.execute(select(table)).all()


def _emails(ids) -> set[str]:
    return {f"{c}@example.com" for c in ids}


def _replan(engine, assignment: dict[str, str]) -> None:
    """A corrected plan for the same quarter (same campaign ids and coupons)."""
    with engine.begin() as conn:
        conn.execute(campaign_members.delete())
        conn.execute(campaigns.delete())
    insert_plan(engine, assignment, replace_customers=False)


def test_batch_upsert_with_rfm_properties_and_one_list_per_segment(engine, settings, hs):
    _configure(settings, hs)
    held = {"c00000", "c00010"}
    plan = insert_plan(engine, make_assignment(1050), holdouts=held)
    res = _sync(engine, settings, send=True)
    assert res.status == "succeeded" and (res.ok, res.skipped, res.failed) == (1048, 0, 0)
    # contacts: batch upsert by email, ≤ 100 inputs, one segment per call, exactly ⌈n/100⌉ calls per segment
    upserts = _calls(hs, UPSERT)
    batches = {seg: -(-len(ids) // 100) for seg, ids in plan.treated.items()}
    assert batches == {"At Risk": 4, "Champions": 4, "Loyal": 4}
    assert len(_calls(hs, UPSERT, None)) == len(upserts) == 12
    per_segment: Counter[str] = Counter()
    for call in upserts:
        inputs = call.body["inputs"]
        assert 1 <= len(inputs) <= 100
        assert all(i["idProperty"] == "email" and i["id"] == i["properties"]["email"] for i in inputs)
        (seg,) = {i["properties"]["rfm_segment"] for i in inputs}
        per_segment[seg] += len(inputs)
    assert per_segment == {seg: len(ids) for seg, ids in plan.treated.items()}
    assert hs.contact("c00001@example.com") == {
        "email": "c00001@example.com",
        "firstname": "Namec00001",
        "rfm_segment": "Loyal",
        "rfm_offer": OFFER,
        "rfm_coupon": "C-c00001-1",
    }
    assert {"rfm_segment", "rfm_offer", "rfm_coupon"} <= set(hs.properties)
    assert len(hs.by_email) == 1048
    # one static (MANUAL) list per segment, holding exactly its treated members
    assert sorted(x["name"] for x in hs.lists.values()) == ["RFM: At Risk", "RFM: Champions", "RFM: Loyal"]
    assert {x["processingType"] for x in hs.lists.values()} == {"MANUAL"}
    for seg, ids in plan.treated.items():
        assert hs.list_emails(list_name(seg)) == _emails(ids)
    adds = _calls(hs, ADD)
    assert len(adds) == 12 and all(len(c.body) <= 100 for c in adds)
    # holdouts: not a contact, in no list
    for h in _emails(held):
        assert hs.contact(h) is None and hs.lists_of(h) == set()
    assert _count(engine, sync_state) == 1048
    remote = {r.campaign_id: (r.remote_id, r.status) for r in _rows(engine, destination_campaigns)}
    lists = {x["name"]: x["listId"] for x in hs.lists.values()}
    assert remote == {cid: (lists[list_name(seg)], "draft") for seg, cid in plan.campaign_ids.items()}
    with engine.connect() as conn:
        sends = conn.execute(
            select(sync_log.c.status, sync_log.c.error).where(sync_log.c.operation == "send")
        ).all()
    assert len(sends) == 3 and {s.status for s in sends} == {"skipped"}  # HubSpot sends nothing
    # rerun with nothing changed: not a single request
    hs.reset_log()
    again = _sync(engine, settings, send=True)
    assert (
        _only_consent_reads(hs) and again.write_calls == 0 and again.ok == 0 and again.status == "succeeded"
    )


def test_moving_customers_leave_their_old_list(duck_engine, duck_settings, hs):
    _configure(duck_settings, hs)
    first = make_assignment(300)
    insert_plan(duck_engine, first)
    _sync(duck_engine, duck_settings)
    movers = {c: SEGMENTS[(SEGMENTS.index(s) + 1) % 3] for c, s in first.items() if int(c[1:]) % 4 == 0}
    leaver = "c00002"  # drops out of the plan: leaves its list, stays a contact
    second = {c: s for c, s in {**first, **movers}.items() if c != leaver}
    _replan(duck_engine, second)
    hs.reset_log()
    res = _sync(duck_engine, duck_settings)
    assert (res.ok, res.failed) == (len(movers) + 1, 0) == (76, 0)
    for c, seg in movers.items():
        assert hs.lists_of(f"{c}@example.com") == {list_name(seg)}
        assert hs.contact(f"{c}@example.com")["rfm_segment"] == seg
    assert hs.lists_of(f"{leaver}@example.com") == set() and hs.contact(f"{leaver}@example.com")
    for seg in SEGMENTS:
        assert hs.list_emails(list_name(seg)) == _emails(c for c, s in second.items() if s == seg)
    # only the movers are written: per segment one upsert (25 movers), one add, one remove from the old list;
    # the leaver costs one batch read and one remove; each upsert of existing contacts one consent read
    upserts = _calls(hs, UPSERT)
    assert sorted(len(c.body["inputs"]) for c in upserts) == [25, 25, 25]
    assert len(_calls(hs, ADD)) == 3 and len(_calls(hs, REMOVE)) == 4
    reads = _calls(hs, READ)
    assert [c.body["inputs"] for c in reads if c.body.get("idProperty") == "email"] == [
        [{"id": f"{leaver}@example.com"}]
    ]
    consent = [c.body for c in reads if "idProperty" not in c.body]
    assert sorted(len(b["inputs"]) for b in consent) == [25, 25, 25]
    assert all("hs_email_optout" in b["properties"] for b in consent)
    assert not _calls(hs, LISTS) and not _calls(hs, PROPS)
    assert hs.write_calls == 3 + 3 + 4


def test_wrong_token_is_a_clear_error_and_nothing_is_written(duck_engine, duck_settings, hs, caplog):
    caplog.set_level(logging.DEBUG)
    wrong = "pat-na1-ffffffff-ffff-ffff-ffff-ffffffffffff"
    _configure(duck_settings, hs).token = SecretStr(wrong)
    insert_plan(duck_engine, make_assignment(20), emails={"c00003": "broken@"})
    with pytest.raises(AuthError) as err:
        _sync(duck_engine, duck_settings)
    text = str(err.value)
    assert "HubSpot rejected the token (401)" in text and "ACTIVATION_HUBSPOT__TOKEN" in err.value.fix
    assert "scopes" in err.value.fix
    for where in (text, repr(err.value), caplog.text, repr(duck_settings.hubspot)):
        assert wrong not in where
    # nothing written anywhere: no contact, list or property; no state, no log. The first request (the consent
    # read-back) is refused, so, like a missing token, the sync stops before it records a run
    assert "during consent search" in text and all(c.path == SEARCH and c.status == 401 for c in hs.log)
    assert hs.write_calls == 0 and hs.by_email == {} and hs.lists == {}
    assert not {"rfm_segment", "rfm_offer", "rfm_coupon"} & set(hs.properties)
    assert _count(duck_engine, sync_state) == 0 and _count(duck_engine, sync_log) == 0
    assert _count(duck_engine, sync_runs) == 0
    # with the right token the same sync goes through, and the skip is logged once
    duck_settings.hubspot.token = SecretStr(hs.token)
    res = _sync(duck_engine, duck_settings)
    assert (res.ok, res.skipped) == (19, 1)
    with duck_engine.connect() as conn:
        skips = conn.execute(
            select(sync_log.c.customer_id, sync_log.c.error).where(sync_log.c.operation == "skip")
        ).all()
    assert skips == [("c00003", "invalid_email")]


def test_missing_token_names_the_setting(duck_engine, duck_settings, hs):
    duck_settings.hubspot = HubSpotSettings(base_url=hs.url)
    insert_plan(duck_engine, make_assignment(5))
    with pytest.raises(ConfigError, match="no HubSpot token") as err:
        _sync(duck_engine, duck_settings)
    assert "ACTIVATION_HUBSPOT__TOKEN" in (err.value.fix or "")
    assert hs.calls == 0 and _count(duck_engine, sync_state) == 0 and _count(duck_engine, sync_log) == 0
    assert _count(duck_engine, sync_runs) == 0  # a settings error stops before the sync records a run
    # a dry run needs no credentials
    dry = sync_named(duck_engine, duck_settings, "hubspot", AS_OF, SCHEME, content=C, dry_run=True)
    assert dry.api_calls > 0 and hs.calls == 0
    with pytest.raises(ValidationError):
        HubSpotSettings(batch_size=101)


def test_thirty_percent_of_calls_failing_still_syncs_everyone_once(duck_engine, duck_settings, hs):
    _configure(duck_settings, hs)
    plan = insert_plan(duck_engine, make_assignment(1500), holdouts={"c00007"})
    hs.faults.fail_rate = 0.3
    res = _sync(duck_engine, duck_settings, send=True)
    assert res.status == "succeeded" and (res.ok, res.failed) == (1499, 0)
    faults = [c.fault for c in hs.log if c.fault]
    assert len(faults) >= 0.15 * len(hs.log) and set(faults) >= {"429", "500", "503", "empty500", "drop"}
    for seg, ids in plan.treated.items():
        assert hs.list_emails(list_name(seg)) == _emails(ids)
    assert len(hs.by_email) == 1499 and len(hs.lists) == 3
    # no duplicates: every contact was upserted by exactly one successful call and added to its list once
    upserted = Counter(i["id"] for c in _calls(hs, UPSERT) for i in c.body["inputs"])
    assert set(upserted.values()) == {1} and len(upserted) == 1499
    added = Counter(rid for c in _calls(hs, ADD) for rid in c.body)
    assert set(added.values()) == {1} and len(added) == 1499
    assert _count(duck_engine, sync_state) == 1499
    hs.faults.fail_rate = 0
    hs.reset_log()
    _sync(duck_engine, duck_settings, send=True)
    assert _only_consent_reads(hs)


@pytest.mark.parametrize("retry_after", [True, False], ids=["retry-after", "ratelimit-headers-only"])
def test_rate_limit_429s_are_waited_out(duck_engine, duck_settings, hs, retry_after):
    _configure(duck_settings, hs)
    plan = insert_plan(duck_engine, make_assignment(1000))
    hs.rate_limit, hs.rate_interval, hs.rate_retry_after = 12, 1.0, retry_after
    hs.other_callers = 4  # another process of the same app uses part of every window: 429s happen
    t0 = time.perf_counter()
    res = _sync(duck_engine, duck_settings, retry=RetryPolicy(max_retries=8, base_delay=0.01, max_delay=2.0))
    wall = time.perf_counter() - t0
    assert (res.ok, res.failed) == (1000, 0)
    for seg, ids in plan.treated.items():
        assert hs.list_emails(list_name(seg)) == _emails(ids)
    accepted = [c for c in hs.log if c.status != 429]
    # consent search, properties (active, archived), 3 created, 3 lists found + created, 12 + 12
    assert len(accepted) == 1 + 2 + 3 + 3 + 3 + 12 + 12
    assert hs.rate_limited > 0 and wall >= 3  # 36 calls at 8 a second: the limit held
    # the wait was honoured (server hint or the window length), not hammered with short backoffs
    windows = -(-len(accepted) // 12)
    assert hs.rate_limited <= duck_settings.hubspot.max_connections * (windows + 1)


def test_server_concurrency_limit_below_ours_is_retried(duck_engine, duck_settings, hs):
    _configure(duck_settings, hs, max_connections=8)
    plan = insert_plan(duck_engine, make_assignment(2400))
    hs.max_in_flight = 3
    hs.faults.latency = 0.02
    # 8 workers for 3 slots: the retries need jitter wider than the 0.05 s Retry-After, or they collide again
    # and again on a busy machine (FAST_RETRY's 0.01 s did, once in a full run)
    res = _sync(duck_engine, duck_settings, retry=RetryPolicy(max_retries=12, base_delay=0.05, max_delay=0.5))
    assert hs.rejected_concurrency > 0 and res.failed == 0 and hs.peak_in_flight <= 8
    for seg, ids in plan.treated.items():
        assert hs.list_emails(list_name(seg)) == _emails(ids)


@pytest.mark.parametrize("mode", ["reject", "partial"])
def test_per_contact_refusals_are_skipped_recorded_and_not_retried(duck_engine, duck_settings, hs, mode):
    """Invalid and duplicate emails are skipped before any call; addresses only HubSpot refuses (unknown
    top-level domain, doubled dot) are skipped when it refuses them, whether it rejects the whole batch
    (400 naming them) or answers 207, and the rest of their batch is written."""
    _configure(duck_settings, hs)
    hs.batch_errors = mode
    emails = {
        "c00001": "someone@shop.comx",  # HubSpot: INVALID_EMAIL (not a known TLD)
        "c00013": "a..b@example.com",  # HubSpot: INVALID_EMAIL (doubled dot)
        "c00004": "C00005@EXAMPLE.com",  # the same person as c00005: duplicate across customers
        "c00007": "no-at-sign",
        "c00010": None,
    }
    plan = insert_plan(duck_engine, make_assignment(250), emails=emails)
    res = _sync(duck_engine, duck_settings)
    assert res.skips == {"invalid_email": 1, "no_email": 1, "duplicate_email": 1}
    assert (res.ok, res.skipped, res.failed) == (245, 5, 0) and res.status == "succeeded"
    refused = {"someone@shop.comx", "a..b@example.com"}
    assert not refused & set(hs.by_email) and len(hs.by_email) == 245
    skipped = {"c00001", "c00013", "c00005", "c00007", "c00010"}  # c00004 keeps the shared address
    for seg, ids in plan.treated.items():
        want = {(emails.get(c) or f"{c}@example.com").lower() for c in ids if c not in skipped}
        assert hs.list_emails(list_name(seg)) == want
    loyal = [
        c for c in _calls(hs, UPSERT, None) if c.body["inputs"][0]["properties"]["rfm_segment"] == "Loyal"
    ]
    if mode == "reject":  # the whole batch refused once, then resent without the two
        assert [c.status for c in loyal] == [400, 200]
        assert len(loyal[1].body["inputs"]) == len(loyal[0].body["inputs"]) - 2
    else:
        assert [c.status for c in loyal] == [207]
    with duck_engine.connect() as conn:
        log = dict(
            conn.execute(
                select(sync_log.c.customer_id, sync_log.c.error).where(sync_log.c.status == "skipped")
            ).all()
        )
    assert set(log) == skipped
    # HubSpot's messages name the addresses; the log keeps their hashes, as sync_state and suppressions do
    for cid, address in (("c00001", "someone@shop.comx"), ("c00013", "a..b@example.com")):
        assert f"sha256:{email_hash(address)} is invalid" in log[cid] and "@" not in log[cid]
    assert log["c00005"] == "duplicate_email"
    # rerun: a refusal is final for this content, so nothing is sent; it is counted and logged as refused
    hs.reset_log()
    again = _sync(duck_engine, duck_settings)
    assert _only_consent_reads(hs) and again.skips["refused"] == 2
    # once the address is corrected, only that contact is written
    with duck_engine.begin() as conn:
        conn.execute(
            update(customers).where(customers.c.customer_id == "c00001").values(email="c00001@example.com")
        )
    fixed = _sync(duck_engine, duck_settings)
    assert fixed.ok == 1 and [len(c.body["inputs"]) for c in _calls(hs, UPSERT)] == [1]
    assert hs.lists_of("c00001@example.com") == {"RFM: Loyal"}


def test_fake_enforces_hubspot_batch_rules(hs):
    api = HubSpotApi(HubSpotSettings(token=SecretStr(hs.token), base_url=hs.url), retry=FAST_RETRY)

    def upsert(ids: list[str]):
        inputs = [{"idProperty": "email", "id": e, "properties": {"email": e}} for e in ids]
        return api.call("upsert", "POST", UPSERT, json={"inputs": inputs}, write=True)

    with pytest.raises(BadRequestError, match="exceeds the limit of 100") as err:
        upsert([f"m{i}@example.com" for i in range(101)])
    assert not isinstance(err.value, RejectedInputsError)  # names no input: the sync must stop
    with pytest.raises(RejectedInputsError, match="Duplicate IDs") as dup:
        upsert(["a@example.com", "b@example.com", "a@example.com"])
    assert set(dup.value.reasons) == {"a@example.com"}
    with pytest.raises(RejectedInputsError) as bad:
        upsert(["ok@example.com", "x@example.invalidtld"])
    assert set(bad.value.reasons) == {"x@example.invalidtld"}
    assert "INVALID_EMAIL" in bad.value.reasons["x@example.invalidtld"]
    assert hs.by_email == {}  # a refused batch writes nothing
    assert upsert(["ok@example.com"])["results"][0]["new"] is True
    api.close()


_CHILD = """
from activation.settings import get_settings
from activation.warehouse import get_engine
from connectors.http import RetryPolicy
from connectors.hubspot import HubSpotDestination
from connectors.sync import SyncOptions, sync_audience
from tests.fakes.plan_data import AS_OF, SCHEME, SimpleContent
s = get_settings()
d = HubSpotDestination(s.hubspot, retry=RetryPolicy(base_delay=0.01))
sync_audience(get_engine(s), s, d, SyncOptions(AS_OF, SCHEME, content=SimpleContent()))
"""


@pytest.mark.slow
@pytest.mark.postgres
def test_process_killed_mid_sync_then_rerun_converges(tmp_path, hs, monkeypatch):
    from tests.conftest import _settings_for, drop_postgres_database, new_postgres_database

    url = new_postgres_database()  # the test watches the child's commits while it runs
    try:
        settings = _settings_for(url, tmp_path, monkeypatch)
        _configure(settings, hs, max_connections=2)
        engine = get_engine(settings)
        plan = insert_plan(engine, make_assignment(3000), holdouts={"c00009"})
        opted_out = _lived_in(hs)
        for k, v in {"TOKEN": hs.token, "BASE_URL": hs.url, "MAX_CONNECTIONS": "2"}.items():
            monkeypatch.setenv(f"ACTIVATION_HUBSPOT__{k}", v)
        # 3 properties + 3 lists are created, then 4 member writes go through; every later write hangs
        hs.faults.hang_paths = r"(?!.*/(search|batch/read)$).*"  # reads by POST do not count
        hs.faults.hang_after_writes = 6 + 4
        run, partial = kill_mid_sync(engine, _CHILD)
        hs.faults.hang_after_writes = None
        assert run == "running" and 0 < partial <= 200  # killed after two upserts and their list adds
        hs.reset_log()
        res = _sync(engine, settings)  # no force: the half-way state is no guardrail baseline
        assert res.failed == 0
        # nobody committed is written again; nobody lost; no duplicate contact, list or membership
        resent = sum(len(c.body["inputs"]) for c in _calls(hs, UPSERT))
        assert 2999 - partial - len(opted_out) <= resent <= 2999 - partial
        _assert_planned_audience(hs, engine, plan, opted_out)
        hs.reset_log()
        _sync(engine, settings)
        assert _only_consent_reads(hs)
    finally:
        dispose_engines()
        drop_postgres_database(url)


def _lived_in(hs: FakeHubSpot) -> set[str]:
    """A portal in use: contacts with names of their own, one who unsubscribed before the sync and one who
    unsubscribes between the sync's consent read-back and its write. Returns the opted-out addresses."""
    for i in (1, 4, 11, 20, 33):
        hs.add_contact(f"c{i:05d}@example.com", firstname=f"Own{i}", lastname=f"Last{i}")
    hs.opt_out("c00011@example.com")
    hs.opt_out_on_write = {"c00020@example.com"}
    return {"c00011@example.com", "c00020@example.com"}


def _assert_planned_audience(hs: FakeHubSpot, engine, plan, opted_out: set[str]) -> None:
    """Exactly the planned audience in one list per segment, no opt-out listed, what only HubSpot holds kept."""
    assert sorted(x["name"] for x in hs.lists.values()) == sorted(list_name(s) for s in plan.treated)
    for seg, ids in plan.treated.items():
        assert hs.list_emails(list_name(seg)) == _emails(ids) - opted_out
    assert all(hs.lists_of(e) == set() for e in opted_out)
    assert hs.contact("c00001@example.com")["lastname"] == "Last1"
    assert {email_hash(e) for e in opted_out} <= set(_suppressed(engine))


@pytest.mark.parametrize(
    "storm", ["faults-before", "lost-responses"], ids=["30pc-fault-storm", "lost-response-storm"]
)
def test_storms_end_with_exactly_the_planned_audience_in_one_rerun_at_most(
    duck_engine, duck_settings, hs, storm
):
    """30 % of calls fail (before the work, or after it with the answer lost), on a portal in use, with
    temporary per-contact errors and a lagging lists index on top."""
    _configure(duck_settings, hs)
    plan = insert_plan(duck_engine, make_assignment(1200), holdouts={"c00007", "c00030"})
    opted_out = _lived_in(hs)
    hs.internal_errors = {f"c{i:05d}@example.com": 1 for i in range(2, 1200, 97)}
    hs.membership_lag = 1
    hs.faults.fail_rate = 0.3
    hs.faults.kinds = FAULT_KINDS if storm == "faults-before" else APPLIED_FAULT_KINDS
    reruns = 0
    for _ in range(2):
        try:
            res = _sync(duck_engine, duck_settings)
        except FatalDestinationError:
            reruns += 1
            continue
        if res.failed == 0:
            break
        reruns += 1
    assert reruns <= 1 and res.failed == 0
    assert sum(1 for c in hs.log if c.fault) >= 0.1 * len(hs.log)  # the storm happened (30 % drawn)
    _assert_planned_audience(hs, duck_engine, plan, opted_out)
    hs.faults.fail_rate = 0
    hs.reset_log()
    _sync(duck_engine, duck_settings)
    assert hs.write_calls == 0


# --- defects the faithful fake revealed (each test failed before its fix) --------------------------------


def _skipped(engine) -> dict[str, str]:
    with engine.connect() as conn:
        return dict(
            conn.execute(
                select(sync_log.c.customer_id, sync_log.c.error).where(sync_log.c.status == "skipped")
            ).all()
        )


def _suppressed(engine) -> dict[str, str]:
    with engine.connect() as conn:
        return dict(conn.execute(select(suppressions.c.email_hash, suppressions.c.reason)).all())


@pytest.mark.parametrize("mode", ["unreadable-200", "207-internal-error", "records-missing"])
def test_temporary_outcomes_are_retried_not_stored_as_refusals(duck_engine, duck_settings, hs, mode):
    """A 200 whose body cannot be read, a 207 INTERNAL_ERROR for some inputs and recordIdsMissing on a list add
    (the lists index lagging the contacts store) are temporary: retried in the same sync, never refusals."""
    _configure(duck_settings, hs, api_version="v3")
    plan = insert_plan(duck_engine, make_assignment(240))
    if mode == "unreadable-200":
        hs.garbled = ["/crm/v3/objects/contacts/batch/upsert", "/crm/v3/objects/contacts/batch/upsert"]
    elif mode == "207-internal-error":
        hs.internal_errors = {f"c{i:05d}@example.com": 1 for i in range(0, 240, 9)}
    else:
        hs.membership_lag = 1
    res = _sync(duck_engine, duck_settings)
    assert (res.ok, res.skipped, res.failed) == (240, 0, 0) and res.status == "succeeded"
    assert _skipped(duck_engine) == {}
    for seg, ids in plan.treated.items():
        assert hs.list_emails(list_name(seg)) == _emails(ids)
    hs.reset_log()
    _sync(duck_engine, duck_settings)
    assert hs.write_calls == 0


def test_a_persistent_internal_error_is_failed_and_written_by_the_next_sync(duck_engine, duck_settings, hs):
    _configure(duck_settings, hs)
    plan = insert_plan(duck_engine, make_assignment(30))
    stuck = "c00004@example.com"
    hs.internal_errors = {stuck: 50}
    res = _sync(duck_engine, duck_settings, retry=RetryPolicy(max_retries=2, base_delay=0.01, max_delay=0.02))
    assert (res.ok, res.skipped, res.failed) == (29, 0, 1)
    assert hs.contact(stuck) is None
    hs.internal_errors = {}
    again = _sync(duck_engine, duck_settings)
    assert (again.ok, again.failed) == (1, 0)
    assert hs.lists_of(stuck) == {list_name(next(s for s, ids in plan.treated.items() if "c00004" in ids))}


def test_an_empty_first_name_never_erases_the_one_in_hubspot(duck_engine, duck_settings, hs):
    """HubSpot clears a property sent as "" (docs: batch/update-contacts)."""
    _configure(duck_settings, hs)
    hs.add_contact("c00001@example.com", firstname="Sean", lastname="Moore")
    insert_plan(duck_engine, make_assignment(12))
    with duck_engine.begin() as conn:
        conn.execute(
            update(customers).where(customers.c.customer_id.in_(["c00001", "c00002"])).values(first_name="")
        )
    res = _sync(duck_engine, duck_settings)
    assert res.failed == 0
    assert hs.contact("c00001@example.com")["firstname"] == "Sean"
    assert "firstname" not in hs.contact("c00002@example.com")
    sent = [i["properties"] for c in _calls(hs, UPSERT) for i in c.body["inputs"]]
    assert len(sent) == 12 and not [p for p in sent if p.get("firstname") == ""]


@pytest.mark.parametrize("kind", ["applied-503", "applied-empty500", "applied-drop"])
def test_a_list_created_but_answered_with_an_error_is_found_not_duplicated(
    duck_engine, duck_settings, hs, kind
):
    _configure(duck_settings, hs, api_version="v3")
    plan = insert_plan(duck_engine, make_assignment(60))
    # first the consent search and the property reads; the list calls: 3 lookups (404), then the first create
    hs.faults.only_paths = "/crm/v3/lists"
    hs.faults.script = ["", "", "", kind]
    res = _sync(duck_engine, duck_settings)
    assert res.status == "succeeded" and res.failed == 0
    assert sorted(x["name"] for x in hs.lists.values()) == sorted(list_name(s) for s in SEGMENTS)
    for seg, ids in plan.treated.items():
        assert hs.list_emails(list_name(seg)) == _emails(ids)
    creates = [c for c in hs.log if c.method == "POST" and c.path == "/crm/v3/lists"]
    assert len(creates) == 3 and [c.fault for c in creates].count(kind) == 1  # the lost one was not resent


@pytest.mark.parametrize("name", ["RFM: Champions", "rfm: champions"])
def test_a_dynamic_list_of_the_segment_name_stops_the_sync_before_any_write(
    duck_engine, duck_settings, hs, name
):
    """Memberships can be edited only on MANUAL/SNAPSHOT lists, and list names compare without case."""
    _configure(duck_settings, hs)
    hs.add_list(name, "DYNAMIC")
    insert_plan(duck_engine, make_assignment(30))
    with pytest.raises(FatalDestinationError) as err:
        _sync(duck_engine, duck_settings)
    assert "DYNAMIC" in str(err.value) and name in str(err.value) and "MANUAL" in (err.value.fix or "")
    assert hs.write_calls == 0 and hs.by_email == {} and len(hs.lists) == 1
    assert not {"rfm_segment", "rfm_offer", "rfm_coupon"} & set(hs.properties)
    assert _count(duck_engine, sync_state) == 0


@pytest.mark.parametrize("mode", ["reject", "partial"])
def test_refused_addresses_with_quotes_and_braces_are_matched_to_their_inputs(
    duck_engine, duck_settings, hs, mode
):
    """' { } are legal in an address (the project's validator accepts them); HubSpot refuses these two for
    their top-level domain, and the sync must still find which inputs it named."""
    _configure(duck_settings, hs)
    hs.batch_errors = mode
    odd = {"c00001": "sean.o'moore@shop.comx", "c00004": "{team}@shop.comx"}
    insert_plan(duck_engine, make_assignment(30), emails=odd)
    res = _sync(duck_engine, duck_settings)
    assert (res.ok, res.skipped, res.failed) == (28, 2, 0) and res.status == "succeeded"
    log = _skipped(duck_engine)
    assert set(log) == {"c00001", "c00004"}
    assert all("INVALID_EMAIL" in why and "@" not in why for why in log.values())


def test_unsubscribes_in_hubspot_reach_the_shared_suppression_list(duck_engine, duck_settings, hs):
    _configure(duck_settings, hs)
    plan = insert_plan(duck_engine, make_assignment(30))
    _sync(duck_engine, duck_settings)
    gone = "c00002@example.com"
    hs.opt_out(gone)
    dest = HubSpotDestination(duck_settings.hubspot, retry=FAST_RETRY)
    try:
        result = collect_outcomes(duck_engine, duck_settings, AS_OF, SCHEME, destination=dest)
    finally:
        dest.close()
    assert result.events_added["unsubscribed"] == 1 and result.suppressions_added == 1
    assert _suppressed(duck_engine) == {email_hash(gone): "unsubscribed"}
    assert [c.path for c in hs.log if c.path == SEARCH]
    # the next sync takes the contact out of its list
    res = _sync(duck_engine, duck_settings)
    assert res.failed == 0 and hs.lists_of(gone) == set()
    seg = next(s for s, ids in plan.treated.items() if "c00002" in ids)
    assert hs.list_emails(list_name(seg)) == _emails(plan.treated[seg]) - {gone}


def test_collect_outcomes_from_hubspot_without_a_token_or_a_sync_is_an_error(duck_engine, duck_settings, hs):
    insert_plan(duck_engine, make_assignment(6))
    duck_settings.hubspot = HubSpotSettings(base_url=hs.url)
    with pytest.raises(ConfigError, match="no HubSpot token"):
        collect_outcomes(
            duck_engine, duck_settings, AS_OF, SCHEME, destination=HubSpotDestination(duck_settings.hubspot)
        )
    _configure(duck_settings, hs)
    with pytest.raises(NotFoundError, match="synced to HubSpot") as err:
        collect_outcomes(
            duck_engine, duck_settings, AS_OF, SCHEME, destination=HubSpotDestination(duck_settings.hubspot)
        )
    assert "activation sync --destination hubspot" in (err.value.fix or "")


def test_opted_out_and_late_opted_out_contacts_are_never_listed(duck_engine, duck_settings, hs):
    """One contact unsubscribed before the sync (read back first), one between the read-back and its write."""
    _configure(duck_settings, hs)
    before, late = "c00001@example.com", "c00005@example.com"
    for email in (before, late, "c00007@example.com"):
        hs.add_contact(email, firstname="Own")
    hs.opt_out(before)
    hs.opt_out_on_write = {late}
    plan = insert_plan(duck_engine, make_assignment(30))
    res = _sync(duck_engine, duck_settings)
    assert res.failed == 0 and res.skips.get("unsubscribed", 0) + res.skipped >= 2
    for email in (before, late):
        assert hs.lists_of(email) == set()
    assert hs.lists_of("c00007@example.com")  # an existing contact who did not opt out is listed
    assert _suppressed(duck_engine) == {email_hash(before): "unsubscribed", email_hash(late): "unsubscribed"}
    for seg, ids in plan.treated.items():
        assert hs.list_emails(list_name(seg)) == _emails(ids) - {before, late}
    hs.reset_log()
    _sync(duck_engine, duck_settings)
    assert hs.write_calls == 0


def test_a_spent_daily_limit_stops_the_sync_at_once_with_the_reason(duck_engine, duck_settings, hs):
    _configure(duck_settings, hs)
    insert_plan(duck_engine, make_assignment(900))
    hs.daily_limit = 12  # a few calls, then the day's quota is gone
    with pytest.raises(FatalDestinationError) as err:
        _sync(duck_engine, duck_settings)
    assert "daily API limit of 12 requests is used up" in str(err.value)
    assert "midnight" in (err.value.fix or "")
    # not retried: at most one refused call per connection
    assert 1 <= hs.daily_limited <= duck_settings.hubspot.max_connections


def test_requests_are_paced_by_the_rate_limit_headers(duck_engine, duck_settings, hs):
    """X-HubSpot-RateLimit-Remaining tells the client to slow down before the window is full."""
    _configure(duck_settings, hs)
    plan = insert_plan(duck_engine, make_assignment(1500))
    hs.rate_limit, hs.rate_interval = 12, 1.0
    res = _sync(duck_engine, duck_settings, retry=RetryPolicy(max_retries=8, base_delay=0.01, max_delay=2.0))
    assert res.failed == 0
    for seg, ids in plan.treated.items():
        assert hs.list_emails(list_name(seg)) == _emails(ids)
    accepted = sum(1 for c in hs.log if c.status != 429)
    assert accepted > 3 * 12  # the limit mattered: the sync took more than three windows
    assert hs.rate_limited <= 2


@pytest.mark.parametrize("version", ["v3", "2026-03"])
def test_the_api_version_is_one_setting(duck_engine, duck_settings, hs, monkeypatch, version):
    monkeypatch.setenv("ACTIVATION_HUBSPOT__API_VERSION", version)
    assert Settings().hubspot.api_version == version
    _configure(duck_settings, hs, api_version=version)
    hs.versions = {version}  # the fake serves this version only
    first = make_assignment(60)
    insert_plan(duck_engine, first)
    res = _sync(duck_engine, duck_settings)
    assert res.failed == 0 and res.ok == 60
    moved = {c: SEGMENTS[(SEGMENTS.index(s) + 1) % 3] for c, s in first.items() if c != "c00003"}
    _replan(duck_engine, moved)
    res = _sync(duck_engine, duck_settings)
    assert res.failed == 0
    paths = {c.path for c in hs.log}
    prefixes = (
        ("/crm/v3/objects/contacts/", "/crm/v3/properties/contacts", "/crm/v3/lists")
        if version == "v3"
        else (
            f"/crm/objects/{version}/contacts/",
            f"/crm/properties/{version}/contacts",
            f"/crm/lists/{version}",
        )
    )
    assert paths and all(p.startswith(prefixes) for p in paths)
    assert all(c.status != 404 for c in hs.log if "/name/" not in c.path)
    with pytest.raises(ValidationError):
        HubSpotSettings(api_version="v4")


def test_errors_keep_hubspots_details_and_name_every_scope(duck_engine, duck_settings, hs):
    _configure(duck_settings, hs)
    hs.missing_scopes = {"crm.schemas.contacts.write"}
    insert_plan(duck_engine, make_assignment(10))
    with pytest.raises(AuthError) as err:
        _sync(duck_engine, duck_settings)
    text = str(err.value)
    assert "403" in text and "MISSING_SCOPES" in text and "correlationId" in text
    assert "rejected the token" not in text
    for scope in (
        "crm.schemas.contacts.write",
        "crm.schemas.contacts.read",
        "crm.objects.contacts.read",
        "crm.objects.contacts.write",
        "crm.lists.read",
        "crm.lists.write",
    ):
        assert scope in (err.value.fix or "")
    assert hs.by_email == {}


@pytest.mark.parametrize("existing", ["number", "archived"])
def test_an_existing_rfm_property_of_another_type_or_archived_stops_before_any_write(
    duck_engine, duck_settings, hs, existing
):
    _configure(duck_settings, hs)
    if existing == "number":
        hs.add_property("rfm_segment", "number")
    else:
        hs.add_property("rfm_offer", archived=True)
    insert_plan(duck_engine, make_assignment(10))
    with pytest.raises(ConfigError) as err:
        _sync(duck_engine, duck_settings)
    name = "rfm_segment" if existing == "number" else "rfm_offer"
    assert name in str(err.value) and (existing if existing == "archived" else "'number'") in str(err.value)
    assert err.value.fix
    assert hs.write_calls == 0 and hs.by_email == {} and hs.lists == {}


# --- the request contract: every body the adapter sends, against HubSpot's request models ----------------
#
# Transcribed (not imported: the SDK is no dependency) from HubSpot's generated Python SDK,
# HubSpot/hubspot-api-python @ a2a528a9 (2025-11-04), whose models are generated from HubSpot's OpenAPI specs:
# a field's JSON name is the model's ``attribute_map`` value, its type the ``openapi_types`` value, "required"
# the setters that refuse None, enumerations the setters' ``allowed_values``. Files:
#   hubspot/crm/contacts/models/batch_input_simple_public_object_batch_input_upsert.py,
#   …/simple_public_object_batch_input_upsert.py, …/batch_read_input_simple_public_object_id.py,
#   …/simple_public_object_id.py, …/public_object_search_request.py, …/filter_group.py, …/filter.py,
#   hubspot/crm/properties/models/property_create.py, hubspot/crm/lists/models/list_create_request.py,
#   hubspot/crm/lists/api/memberships_api.py (add/remove: ``request_body: list[str]``).
# Two entries come from the reference pages instead: ``sorts`` items (the SDK types them ``list[str]``, the
# search guide, docs: guides/api/crm/search, shows ``{"propertyName", "direction"}`` objects) and the list
# processing types (docs: guides/api/crm/lists/overview: MANUAL, DYNAMIC, SNAPSHOT).
MODELS: dict[str, dict[str, tuple[str, bool]]] = {
    "BatchInputSimplePublicObjectBatchInputUpsert": {
        "inputs": ("list[SimplePublicObjectBatchInputUpsert]", True)
    },
    "SimplePublicObjectBatchInputUpsert": {
        "idProperty": ("str", False),
        "objectWriteTraceId": ("str", False),
        "id": ("str", True),
        "properties": ("dict[str, str]", True),
    },
    "BatchReadInputSimplePublicObjectId": {
        "propertiesWithHistory": ("list[str]", True),
        "idProperty": ("str", False),
        "inputs": ("list[SimplePublicObjectId]", True),
        "properties": ("list[str]", True),
    },
    "SimplePublicObjectId": {"id": ("str", True)},
    "PublicObjectSearchRequest": {
        "query": ("str", False),
        "limit": ("int", False),
        "after": ("str", False),
        "sorts": ("list[Sort]", False),
        "properties": ("list[str]", False),
        "filterGroups": ("list[FilterGroup]", False),
    },
    "Sort": {"propertyName": ("str", True), "direction": ("str", False)},
    "FilterGroup": {"filters": ("list[Filter]", True)},
    "Filter": {
        "highValue": ("str", False),
        "propertyName": ("str", True),
        "values": ("list[str]", False),
        "value": ("str", False),
        "operator": ("str", True),
    },
    "PropertyCreate": {
        "hidden": ("bool", False),
        "displayOrder": ("int", False),
        "description": ("str", False),
        "label": ("str", True),
        "type": ("str", True),
        "formField": ("bool", False),
        "groupName": ("str", True),
        "referencedObjectType": ("str", False),
        "name": ("str", True),
        "options": ("list[OptionInput]", False),
        "calculationFormula": ("str", False),
        "hasUniqueValue": ("bool", False),
        "fieldType": ("str", True),
        "externalOptions": ("bool", False),
    },
    "ListCreateRequest": {
        "objectTypeId": ("str", True),
        "processingType": ("str", True),
        "customProperties": ("dict[str, str]", False),
        "listFolderId": ("int", False),
        "name": ("str", True),
        "filterBranch": ("object", False),
    },
}
ENUMS: dict[tuple[str, str], tuple[str, ...]] = {
    ("PropertyCreate", "type"): ("string", "number", "date", "datetime", "enumeration", "bool"),
    ("PropertyCreate", "fieldType"): (
        "textarea",
        "text",
        "date",
        "file",
        "number",
        "select",
        "radio",
        "checkbox",
        "booleancheckbox",
        "calculation_equation",
    ),
    ("Filter", "operator"): (
        "EQ",
        "NEQ",
        "LT",
        "LTE",
        "GT",
        "GTE",
        "BETWEEN",
        "IN",
        "NOT_IN",
        "HAS_PROPERTY",
        "NOT_HAS_PROPERTY",
        "CONTAINS_TOKEN",
        "NOT_CONTAINS_TOKEN",
    ),
    ("Sort", "direction"): ("ASCENDING", "DESCENDING"),
    ("ListCreateRequest", "processingType"): ("MANUAL", "DYNAMIC", "SNAPSHOT"),
}
_CRM = r"/crm/(?:v3/{api}|{api}/\d{{4}}-\d{{2}}(?:-beta)?)"
ENDPOINTS: list[tuple[str, re.Pattern[str], str | None]] = [
    (m, re.compile(_CRM.format(api=api) + rest), body)
    for m, api, rest, body in (
        ("POST", "objects", "/contacts/batch/upsert", "BatchInputSimplePublicObjectBatchInputUpsert"),
        ("POST", "objects", "/contacts/batch/read", "BatchReadInputSimplePublicObjectId"),
        ("POST", "objects", "/contacts/search", "PublicObjectSearchRequest"),
        ("GET", "properties", "/contacts", None),
        ("POST", "properties", "/contacts", "PropertyCreate"),
        ("GET", "lists", r"/object-type-id/0-1/name/.+", None),
        ("POST", "lists", "", "ListCreateRequest"),
        ("PUT", "lists", r"/\d+/memberships/(?:add|remove)", "list[str]"),
    )
]


def _shape_violations(kind: str, value: object, where: str) -> list[str]:
    """Where ``value`` does not have the shape ``kind`` (a model name or an openapi_types string)."""
    if kind.startswith("list["):
        if not isinstance(value, list):
            return [f"{where}: {type(value).__name__} where {kind} is declared"]
        return [
            v for i, item in enumerate(value) for v in _shape_violations(kind[5:-1], item, f"{where}[{i}]")
        ]
    if kind == "dict[str, str]":
        if not isinstance(value, dict):
            return [f"{where}: {type(value).__name__} where {kind} is declared"]
        return [
            f"{where}.{k}: {type(v).__name__} where str is declared"
            for k, v in value.items()
            if not isinstance(v, str)
        ]
    scalar = {"str": str, "int": int, "bool": bool, "object": dict}
    if kind in scalar:
        ok = isinstance(value, scalar[kind]) and not (kind == "int" and isinstance(value, bool))
        return [] if ok else [f"{where}: {type(value).__name__} where {kind} is declared"]
    model = MODELS.get(kind)
    if model is None:
        return [f"{where}: no transcribed model {kind}"]
    if not isinstance(value, dict):
        return [f"{where}: {type(value).__name__} where the object {kind} is declared"]
    out = [f"{where}.{k}: not a field of {kind}" for k in value if k not in model]
    for name, (ftype, required) in model.items():
        if value.get(name) is None:
            if required:
                out.append(f"{where}.{name}: required by {kind}, missing")
            continue
        out += _shape_violations(ftype, value[name], f"{where}.{name}")
        allowed = ENUMS.get((kind, name))
        if allowed and value[name] not in allowed:
            out.append(f"{where}.{name}: {value[name]!r} is not one of {kind}.{name}'s values")
    return out


def _request_violations(calls) -> list[str]:
    out = []
    for c in calls:
        spec = next(((m, body) for m, rx, body in ENDPOINTS if m == c.method and rx.fullmatch(c.path)), None)
        if spec is None:
            out.append(f"{c.method} {c.path}: an endpoint without a transcribed contract")
        elif spec[1] is None:
            out += [f"{c.method} {c.path}: a body where none is declared"] if c.body is not None else []
        else:
            out += _shape_violations(spec[1], c.body, f"{c.method} {c.path}")
    return out


@pytest.mark.parametrize("version", ["2026-03", "v3"])
def test_every_request_body_matches_hubspots_request_models(duck_engine, duck_settings, hs, version):
    """A real sync (first write, refusals, consent reads, moves, leavers) against the fake; every body sent is
    checked against the request models of HubSpot's API reference."""
    _configure(duck_settings, hs, api_version=version)
    hs.add_contact("c00001@example.com", firstname="Own")
    hs.batch_errors = "partial"
    first = make_assignment(150)
    insert_plan(duck_engine, first, emails={"c00008": "x@shop.comx"})
    assert _sync(duck_engine, duck_settings).failed == 0
    moved = {c: SEGMENTS[(SEGMENTS.index(s) + 1) % 3] for c, s in first.items() if c != "c00002"}
    _replan(duck_engine, moved)
    assert _sync(duck_engine, duck_settings).failed == 0
    seen = {
        (c.method, next((b for m, rx, b in ENDPOINTS if m == c.method and rx.fullmatch(c.path)), "?"))
        for c in hs.log
    }
    assert {b for _, b in seen} >= {
        "BatchInputSimplePublicObjectBatchInputUpsert",
        "BatchReadInputSimplePublicObjectId",
        "PublicObjectSearchRequest",
        "PropertyCreate",
        "ListCreateRequest",
        "list[str]",
        None,
    }
    assert _request_violations(hs.log) == []


def test_the_request_contract_catches_wrong_bodies():
    class Call:
        def __init__(self, method: str, path: str, body: object) -> None:
            self.method, self.path, self.body = method, path, body

    up = "/crm/objects/2026-03/contacts/batch/upsert"
    bad = [
        Call(
            "POST",
            up,
            {"inputs": [{"idProperty": "email", "id": "a@b.co", "properties": {"firstname": None}}]},
        ),
        Call(
            "POST", "/crm/v3/objects/contacts/batch/read", {"inputs": [{"id": "1"}], "properties": ["email"]}
        ),
        Call("PUT", "/crm/lists/2026-03/7/memberships/add", [7]),
        Call("POST", "/crm/v3/lists", {"name": "RFM: X", "objectTypeId": "0-1", "processingType": "STATIC"}),
        Call("POST", "/crm/v3/objects/contacts/search", {"properties": "email"}),
        Call("POST", "/contacts/v1/lists/7/add", {"vids": [1]}),
    ]
    assert _request_violations(bad) == [
        f"POST {up}.inputs[0].properties.firstname: NoneType where str is declared",
        "POST /crm/v3/objects/contacts/batch/read.propertiesWithHistory: required by "
        "BatchReadInputSimplePublicObjectId, missing",
        "PUT /crm/lists/2026-03/7/memberships/add[0]: int where str is declared",
        "POST /crm/v3/lists.processingType: 'STATIC' is not one of ListCreateRequest.processingType's values",
        "POST /crm/v3/objects/contacts/search.properties: str where list[str] is declared",
        "POST /contacts/v1/lists/7/add: an endpoint without a transcribed contract",
    ]


def test_cli_outcomes_collect_from_hubspot_is_never_silent(duck_engine, duck_settings, hs, monkeypatch):
    """``outcomes collect --destination hubspot`` without a token, or for campaigns never synced there,
    exits 2 with the fix; once synced it reads consent back (it made no request at all before)."""
    from tests.cli_helpers import run_cli
    from tests.outcomes_fixtures import AS_OF as O_AS_OF
    from tests.outcomes_fixtures import SCHEME as O_SCHEME
    from tests.outcomes_fixtures import build

    build(duck_engine)
    args = (
        "outcomes",
        "collect",
        "--as-of",
        O_AS_OF.isoformat(),
        "--scheme",
        O_SCHEME,
        "--destination",
        "hubspot",
    )
    monkeypatch.delenv("ACTIVATION_HUBSPOT__TOKEN", raising=False)
    no_token = run_cli(*args)
    assert no_token.exit_code == 2 and "ACTIVATION_HUBSPOT__TOKEN" in no_token.output, no_token.output
    for k, v in {"TOKEN": hs.token, "BASE_URL": hs.url}.items():
        monkeypatch.setenv(f"ACTIVATION_HUBSPOT__{k}", v)
    never_synced = run_cli(*args)
    assert never_synced.exit_code == 2, never_synced.output
    assert "activation sync --destination hubspot" in never_synced.output
    assert "Traceback" not in never_synced.output and hs.calls == 0


def test_the_consent_read_back_pages_past_the_search_window(hs, monkeypatch):
    """HubSpot's search pages with ``after`` and stops at 10,000 results a query; past that the read-back starts
    a new query above the last record id. (The window is shrunk to 300 on both sides to keep the test small.)"""
    import connectors.hubspot as connector
    import tests.fakes.hubspot as fake

    monkeypatch.setattr(fake, "SEARCH_TOTAL_LIMIT", 300)
    monkeypatch.setattr(connector, "SEARCH_WINDOW", 300)
    out = {f"gone{i}@example.com" for i in range(750)}
    for i in range(900):
        hs.add_contact(f"gone{i}@example.com" if i < 750 else f"kept{i}@example.com")
    for email in out:
        hs.opt_out(email)
    dest = HubSpotDestination(HubSpotSettings(token=SecretStr(hs.token), base_url=hs.url), retry=FAST_RETRY)
    try:
        events = list(dest.read_suppressions(None))
    finally:
        dest.close()
    assert sorted(e.email for e in events) == sorted(out) and {e.reason for e in events} == {"unsubscribed"}
    searches = [c for c in hs.log if c.path == SEARCH]
    assert all(c.status == 200 for c in searches)  # never past the window (400)
    assert any(c.body.get("after") for c in searches)  # after paging inside a query
