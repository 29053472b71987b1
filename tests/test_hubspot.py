"""HubSpot: the httpx adapter and the destination against the fake HubSpot server (real HTTP on 127.0.0.1):
batch upsert by email with RFM contact properties, one static list per segment, holdouts, a wrong token,
faults, rate limits, per-contact refusals, reruns and a process killed mid-sync."""

from __future__ import annotations

import json
import logging
import re
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from pydantic import SecretStr, ValidationError
from sqlalchemy import select, update

from activation.errors import ConfigError
from activation.settings import HubSpotSettings
from activation.tables import (
    campaign_members,
    campaigns,
    customers,
    destination_campaigns,
    sync_log,
    sync_runs,
    sync_state,
)
from activation.warehouse import dispose_engines, get_engine
from connectors.errors import AuthError, BadRequestError
from connectors.http import RetryPolicy
from connectors.hubspot import HubSpotApi, HubSpotDestination, RejectedInputsError, list_name
from connectors.sync import sync_audience
from tests.fakes.destinations import FAST_RETRY
from tests.fakes.hubspot import FakeHubSpot
from tests.fakes.plan_data import AS_OF, SCHEME, SEGMENTS, SimpleContent, insert_plan, make_assignment
from tests.fakes.processes import count as _count
from tests.fakes.processes import kill_mid_sync

C = SimpleContent()
UPSERT = "/crm/v3/objects/contacts/batch/upsert"
ADD = re.compile(r"/crm/v3/lists/(\d+)/memberships/add")
REMOVE = re.compile(r"/crm/v3/lists/(\d+)/memberships/remove")
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
        return sync_audience(
            engine, settings, "hubspot", AS_OF, SCHEME, content=C, destination_obj=dest, **kw
        )
    finally:
        dest.close()


def _calls(hs: FakeHubSpot, path: str | re.Pattern[str], status: int | None = 200) -> list:
    def match(p: str) -> bool:
        return p == path if isinstance(path, str) else path.fullmatch(p) is not None

    return [
        c for c in hs.log if match(c.path) and c.method != "GET" and (status is None or c.status == status)
    ]


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
    assert hs.calls == 0 and again.write_calls == 0 and again.ok == 0 and again.status == "succeeded"


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
    # the leaver costs one batch read and one remove
    upserts = _calls(hs, UPSERT)
    assert sorted(len(c.body["inputs"]) for c in upserts) == [25, 25, 25]
    assert len(_calls(hs, ADD)) == 3 and len(_calls(hs, REMOVE)) == 4
    assert [c.body["inputs"] for c in _calls(hs, "/crm/v3/objects/contacts/batch/read")] == [
        [{"id": f"{leaver}@example.com"}]
    ]
    assert not _calls(hs, "/crm/v3/lists") and not _calls(hs, "/crm/v3/properties/contacts")
    assert hs.write_calls == 3 + 3 + 4 + 1


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
    # nothing written anywhere: no contact, list or property; no state, no log; the run is on record as failed
    assert hs.write_calls == 0 and hs.by_email == {} and hs.lists == {}
    assert not {"rfm_segment", "rfm_offer", "rfm_coupon"} & set(hs.properties)
    assert _count(duck_engine, sync_state) == 0 and _count(duck_engine, sync_log) == 0
    (run,) = _rows(duck_engine, sync_runs)
    summary = json.loads(run.summary)
    assert run.status == "failed" and "rejected the token" in summary["error"] and wrong not in run.summary
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
    dry = sync_audience(duck_engine, duck_settings, "hubspot", AS_OF, SCHEME, content=C, dry_run=True)
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
    assert hs.calls == 0


@pytest.mark.parametrize("retry_after", [True, False], ids=["retry-after", "ratelimit-headers-only"])
def test_rate_limit_429s_are_waited_out(duck_engine, duck_settings, hs, retry_after):
    _configure(duck_settings, hs)
    plan = insert_plan(duck_engine, make_assignment(1000))
    hs.rate_limit, hs.rate_interval, hs.rate_retry_after = 12, 1.0, retry_after
    t0 = time.perf_counter()
    res = _sync(duck_engine, duck_settings, retry=RetryPolicy(max_retries=8, base_delay=0.01, max_delay=2.0))
    wall = time.perf_counter() - t0
    assert (res.ok, res.failed) == (1000, 0)
    for seg, ids in plan.treated.items():
        assert hs.list_emails(list_name(seg)) == _emails(ids)
    accepted = [c for c in hs.log if c.status != 429]
    assert len(accepted) == 1 + 3 + 3 + 3 + 12 + 12  # properties, 3 created, 3 lists found + created, 12 + 12
    assert hs.rate_limited > 0 and wall >= 1.5  # 34 calls at 12 a second: the limit held
    # the wait was honoured (server hint or the window length), not hammered with short backoffs
    windows = -(-len(accepted) // 12)
    assert hs.rate_limited <= duck_settings.hubspot.max_connections * (windows + 1)


def test_server_concurrency_limit_below_ours_is_retried(duck_engine, duck_settings, hs):
    _configure(duck_settings, hs, max_connections=8)
    plan = insert_plan(duck_engine, make_assignment(2400))
    hs.max_in_flight = 3
    hs.faults.latency = 0.02
    res = _sync(duck_engine, duck_settings)
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
    assert "someone@shop.comx is invalid" in log["c00001"] and "a..b@example.com is invalid" in log["c00013"]
    assert log["c00005"] == "duplicate_email"
    # rerun: a refusal is final for this content, so nothing is sent; it is counted and logged as refused
    hs.reset_log()
    again = _sync(duck_engine, duck_settings)
    assert hs.calls == 0 and again.skips["refused"] == 2
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
from connectors.sync import sync_audience
from tests.fakes.plan_data import AS_OF, SCHEME, SimpleContent
s = get_settings()
d = HubSpotDestination(s.hubspot, retry=RetryPolicy(base_delay=0.01))
sync_audience(get_engine(s), s, "hubspot", AS_OF, SCHEME, content=SimpleContent(), destination_obj=d)
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
        for k, v in {"TOKEN": hs.token, "BASE_URL": hs.url, "MAX_CONNECTIONS": "2"}.items():
            monkeypatch.setenv(f"ACTIVATION_HUBSPOT__{k}", v)
        # 3 properties + 3 lists are created, then 4 member writes go through; every later write hangs
        hs.faults.hang_after_writes = 6 + 4
        run, partial = kill_mid_sync(engine, _CHILD)
        hs.faults.hang_after_writes = None
        assert run == "running" and 0 < partial <= 200  # killed after two upserts and their list adds
        hs.reset_log()
        res = _sync(engine, settings)  # no force: the half-way state is no guardrail baseline
        assert (res.ok, res.failed) == (2999 - partial, 0)
        # nobody committed is written again; nobody lost; no duplicate contact or membership
        assert sum(len(c.body["inputs"]) for c in _calls(hs, UPSERT)) == 2999 - partial
        assert len(hs.by_email) == 2999 and len(hs.lists) == 3
        for seg, ids in plan.treated.items():
            assert hs.list_emails(list_name(seg)) == _emails(ids)
        hs.reset_log()
        _sync(engine, settings)
        assert hs.calls == 0
    finally:
        dispose_engines()
        drop_postgres_database(url)
