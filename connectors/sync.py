"""``sync_audience``: plan → diff against ``sync_state`` → guardrails → apply changes → sync log.

The plan is read from the warehouse (``campaigns`` + ``campaign_members`` + customers): the latest version
of each segment's campaign for ``as_of``/``scheme``, its *treated* members only (holdouts are never
tagged, listed or sent anything), minus suppressed, unsubscribed, email-less, invalid and duplicate
emails. Each remaining member's desired state (tags + merge fields) is hashed and compared with what the
destination last received, so only changes are written and a rerun with nothing changed writes nothing.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import json
import queue
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from json.encoder import encode_basestring_ascii as _enc
from operator import attrgetter
from typing import Any, Concatenate, ParamSpec

from sqlalchemy import and_, func, null, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.sql import column, table

from activation.dialect import exclusive
from activation.emails import EMAIL_RE
from activation.emails import is_valid_email as is_valid_email
from activation.errors import GuardrailError, InputError, NotFoundError, TemplateError
from activation.settings import Settings
from activation.tables import campaign_members, campaigns
from connectors import state as st
from connectors.base import (
    AudienceMember,
    CampaignSpec,
    Content,
    ContentProvider,
    Destination,
    MemberChange,
    MemberResult,
    OutcomeEvent,
    RemoteCampaign,
    SyncPlan,
    email_hash,
    normalize_email,
    state_hash,
)


@dataclass
class SegmentPlan:
    """What a sync does (or, in a dry run, would do) to one segment."""

    segment: str
    campaign_id: str | None = None
    members: int = 0  # reachable treated members now
    previous: int = 0  # members at the last sync that ran to its end (the guardrails' baseline)
    holdout: int = 0
    adds: int = 0
    updates: int = 0
    unchanged: int = 0
    tag_adds: int = 0
    tag_removes: int = 0
    skips: Counter[str] = field(default_factory=Counter)
    api_calls: int = 0

    def as_dict(self) -> dict[str, Any]:
        d = {
            k: getattr(self, k)
            for k in (
                "segment",
                "campaign_id",
                "members",
                "previous",
                "holdout",
                "adds",
                "updates",
                "unchanged",
                "tag_adds",
                "tag_removes",
                "api_calls",
            )
        }
        d["skips"] = dict(self.skips)
        return d


@dataclass
class SyncResult:
    """The outcome of :func:`sync_audience` (a plan when ``dry_run``)."""

    sync_id: str | None
    destination: str
    as_of: date
    scheme: str
    dry_run: bool
    segments: dict[str, SegmentPlan]
    api_calls: int  # estimated in a dry run, counted otherwise
    planned_calls: int = 0  # the plan's estimate (also after a real sync)
    setup_calls: int = 0  # the part of the estimate that belongs to no segment (set-up reads and writes)
    write_calls: int = 0
    read_calls: int = 0
    guardrail_violations: list[str] = field(default_factory=list)
    blockers: list[str] = field(default_factory=list)  # dry run: content problems a real sync stops on
    status: str = "planned"
    ok: int = 0
    skipped: int = 0
    failed: int = 0
    campaigns: dict[str, str] = field(default_factory=dict)  # campaign_id -> status
    seconds: float = 0.0
    apply_seconds: float = 0.0  # time spent writing to the destination (the API-bound part)

    @property
    def skips(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for s in self.segments.values():
            total.update(s.skips)
        return total

    def summary(self) -> dict[str, Any]:
        return {
            "destination": self.destination,
            "as_of": self.as_of.isoformat(),
            "scheme": self.scheme,
            "dry_run": self.dry_run,
            "status": self.status,
            "api_calls": self.api_calls,
            "write_calls": self.write_calls,
            "read_calls": self.read_calls,
            "seconds": round(self.seconds, 3),
            "apply_seconds": round(self.apply_seconds, 3),
            "ok": self.ok,
            "skipped": self.skipped,
            "failed": self.failed,
            "campaigns": self.campaigns,
            "guardrail_violations": self.guardrail_violations,
            "blockers": self.blockers,
            "segments": {k: v.as_dict() for k, v in self.segments.items()},
        }


# --- reading the plan --------------------------------------------------------------------------------


def latest_as_of(engine: Engine, scheme: str) -> date | None:
    with engine.connect() as conn:
        return conn.execute(select(func.max(campaigns.c.as_of)).where(campaigns.c.scheme == scheme)).scalar()


def check_schedule_at(schedule_at: datetime | None) -> None:
    """Refuse a send time that has passed (a naive time is UTC) before anything is synced: the destination
    would refuse it only after the audiences were written."""
    if schedule_at is None:
        return
    when = schedule_at if schedule_at.tzinfo else schedule_at.replace(tzinfo=UTC)
    if when <= datetime.now(UTC):
        raise InputError(
            f"--schedule-at {when.isoformat()} is in the past",
            fix="give a future time (UTC unless it has an offset, e.g. 2025-07-02T09:00+02:00), or --send to send now",
        )


def _check_planned(engine: Engine, as_of: date, scheme: str) -> None:
    """Refuse an ``as_of`` without any plan (a typo would otherwise read as an empty audience and remove
    every tag under ``--force``)."""
    with engine.connect() as conn:
        planned = (
            conn.execute(
                select(campaigns.c.as_of)
                .where(campaigns.c.scheme == scheme)
                .distinct()
                .order_by(campaigns.c.as_of)
            )
            .scalars()
            .all()
        )
    if as_of not in planned:
        known = ", ".join(d.isoformat() for d in planned[-4:]) or "none"
        raise NotFoundError(
            f"no campaign plan for scheme {scheme!r} as of {as_of.isoformat()} (planned: {known})",
            fix=f"run `activation plan --as-of {as_of.isoformat()} --scheme {scheme}` first, or pick a planned date",
        )


def load_campaigns(engine: Engine, as_of: date, scheme: str, destination: str) -> list[CampaignSpec]:
    """The latest version of each segment's campaign that lists ``destination`` (an empty list = all)."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(campaigns)
            .where(campaigns.c.as_of == as_of, campaigns.c.scheme == scheme)
            .order_by(campaigns.c.segment, campaigns.c.version.desc())
        ).all()
    out: dict[str, CampaignSpec] = {}
    for r in rows:
        if r.segment in out:
            continue
        dests = _json(r.destinations, [])
        if dests and destination not in dests:
            out[r.segment] = None  # type: ignore[assignment]  # latest version excludes us: skip older ones too
            continue
        out[r.segment] = CampaignSpec(
            campaign_id=r.campaign_id,
            campaign_key=r.campaign_key,
            version=r.version,
            as_of=r.as_of,
            scheme=r.scheme,
            segment=r.segment,
            subject=r.subject,
            offer_type=r.offer_type,
            offer=_json(r.offer, {}),
            row=r,
        )
    return [c for c in out.values() if c is not None]


def _json(value: Any, default: Any) -> Any:
    if value is None or value == "":
        return default
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return default
    return value


def _customers_table(settings: Settings) -> tuple[Any, dict[str, Any]]:
    src = settings.customers
    schema, _, name = src.table.rpartition(".")
    names = {
        "customer_id": src.customer_id,
        "email": src.email,
        "first_name": src.first_name,
        "unsubscribed": src.unsubscribed,
    }
    t = table(name, *[column(c) for c in names.values() if c], schema=schema or None)
    cols = {k: (t.c[v] if v else None) for k, v in names.items()}
    return t, cols


def merge_values(campaign: CampaignSpec, first_name: str | None, coupon: str | None) -> dict[str, str]:
    """The merge fields one member receives (see :func:`connectors.base.merge_fields`)."""
    base, has_coupon = _campaign_values(campaign)
    return {**base, "FNAME": (first_name or "").strip(), "COUPON": (coupon or "") if has_coupon else ""}


def _campaign_values(campaign: CampaignSpec) -> tuple[dict[str, str], bool]:
    """The campaign-wide merge values (segment, offer, expiry) and whether its offer has coupons, as
    :func:`campaigns.render.merge_values` computes them (computed once per campaign, not per member)."""
    key = campaign.campaign_id
    cached = _VALUES_CACHE.get(key)
    if cached is not None and cached[0] is campaign:
        return cached[1], cached[2]
    from campaigns.render import merge_values as render_values

    row = (
        campaign.row
        if campaign.row is not None
        else {**campaign.__dict__, "offer": json.dumps(campaign.offer)}
    )
    base = render_values(row, {"first_name": "", "coupon_code": "X"})
    has_coupon = base.get("COUPON") == "X"
    base = {k: str(v) for k, v in base.items()}
    _VALUES_CACHE[key] = (campaign, base, has_coupon)
    return base, has_coupon


_VALUES_CACHE: dict[str, tuple[CampaignSpec, dict[str, str], bool]] = {}


@dataclass
class _Source:
    audiences: dict[str, list[AudienceMember]]
    segments: dict[str, SegmentPlan]
    skipped: list[tuple[str, str, str]]  # (campaign_id, customer_id, reason)
    emails: dict[str, str]  # customer_id -> normalized email (every member read, for tag removals)


def _read_source(
    engine: Engine, settings: Settings, camps: Sequence[CampaignSpec], suppressed: dict[str, str]
) -> _Source:
    """The reachable treated members of each campaign, and why the others are skipped.

    One pass over the rows (fetched in large partitions, unpacked as tuples): millions of members must
    not cost tens of seconds of Python before the first API call.
    """
    cust, cc = _customers_table(settings)
    by_id = {c.campaign_id: c for c in camps}
    segments = {c.segment: SegmentPlan(segment=c.segment, campaign_id=c.campaign_id) for c in camps}
    values = {c.campaign_id: _campaign_values(c) for c in camps}
    cols = [
        campaign_members.c.campaign_id,
        campaign_members.c.customer_id,
        campaign_members.c.member_group,
        campaign_members.c.coupon_code,
        *[
            cc[k] if cc[k] is not None else null().label(f"_no_{k}")
            for k in ("email", "first_name", "unsubscribed")
        ],
    ]
    q = (
        select(*cols)
        .select_from(campaign_members.outerjoin(cust, cc["customer_id"] == campaign_members.c.customer_id))
        .where(campaign_members.c.campaign_id.in_(list(by_id)))
        .order_by(campaign_members.c.customer_id)
    )
    audiences: dict[str, list[AudienceMember]] = {c.campaign_id: [] for c in camps}
    emails: dict[str, str] = {}
    skipped: list[tuple[str, str, str]] = []
    seen_customers: set[str] = set()
    owner: dict[str, AudienceMember] = {}  # email -> the member holding it (the lowest customer id)
    duplicates: list[AudienceMember] = []
    valid = EMAIL_RE.match
    with engine.connect() as conn:
        result = conn.execute(q)
        for part in result.partitions(50_000):
            for camp_id, raw_cid, group, coupon, raw_email, first, unsub in part:
                camp = by_id[camp_id]
                cid = str(raw_cid)
                email = raw_email.strip().lower() if raw_email else ""
                if email:
                    emails[cid] = email
                if group != "treatment":
                    segments[camp.segment].holdout += 1
                    continue
                if cid in seen_customers:  # in two campaigns of one plan: the first wins
                    continue
                seen_customers.add(cid)
                eh: str | None = None
                reason: str | None = None
                if not email:
                    reason = "no_email"
                elif not (3 <= len(email) <= 254 and valid(email)):
                    reason = "invalid_email"
                else:
                    eh = email_hash(email) if suppressed else None
                    if eh is not None and eh in suppressed:
                        reason = suppressed[eh]
                    elif unsub:
                        reason = "unsubscribed"
                if reason:
                    segments[camp.segment].skips[reason] += 1
                    skipped.append((camp_id, cid, reason))
                    continue
                base, has_coupon = values[camp_id]
                first_name = first.strip() if first else ""
                m = AudienceMember(
                    cid,
                    email,
                    first_name,
                    camp_id,
                    camp.segment,
                    coupon,
                    {**base, "FNAME": first_name, "COUPON": (coupon or "") if has_coupon else ""},
                    eh,
                )
                held = owner.get(email)
                if held is None:
                    owner[email] = m
                elif cid < held.customer_id:  # the lowest customer id keeps a shared address
                    owner[email] = m
                    duplicates.append(held)
                else:
                    duplicates.append(m)
    for m in duplicates:
        segments[m.segment].skips["duplicate_email"] += 1
        skipped.append((m.campaign_id, m.customer_id, "duplicate_email"))
    for m in owner.values():
        audiences[m.campaign_id].append(m)
    for camp in camps:
        members = audiences[camp.campaign_id]
        members.sort(key=attrgetter("customer_id"))  # nearly sorted already: linear
        segments[camp.segment].members = len(members)
    return _Source(audiences, segments, skipped, emails)


def _missing_emails(engine: Engine, settings: Settings, customer_ids: Sequence[str]) -> dict[str, str]:
    cust, cc = _customers_table(settings)
    if cc["email"] is None or not customer_ids:
        return {}
    out: dict[str, str] = {}
    with engine.connect() as conn:
        for i in range(0, len(customer_ids), 5000):
            chunk = list(customer_ids[i : i + 5000])
            for cid, email in conn.execute(
                select(cc["customer_id"], cc["email"]).where(cc["customer_id"].in_(chunk))
            ):
                if email:
                    out[str(cid)] = normalize_email(email)
    return out


def _member_hasher(sample: AudienceMember, extra: str) -> Callable[[AudienceMember], str]:
    """:func:`connectors.base.state_hash` for the members of one campaign, compiled once: the tags, field
    names and ``extra`` are the campaign's, so only the field values are encoded per member (the same
    hash, at a fraction of the cost, for millions of members). Members whose fields do not have the
    campaign's shape (other names, a non-string value) go through ``state_hash`` itself."""
    keys = sorted(sample.fields)
    segment = sample.segment

    def lit(text: str) -> str:
        return text.replace("%", "%%")

    template = (
        f"[%s,[{lit(_enc(segment))}],["
        + ",".join(f"[{lit(_enc(k))},%s]" for k in keys)
        + f"],{lit(_enc(extra))}]"
    )
    n = len(keys)

    def member_hash(m: AudienceMember) -> str:
        f = m.fields
        try:
            if len(f) != n or m.segment != segment:
                raise KeyError(segment)
            payload = template % (_enc(m.email.strip().lower()), *[_enc(f[k]) for k in keys])
        except (KeyError, TypeError, AttributeError):
            return state_hash(m.email, [m.segment], f, extra)
        return hashlib.sha256(payload.encode()).hexdigest()[:32]

    return member_hash


def diff(
    audiences: dict[str, list[AudienceMember]],
    state: dict[str, st.StateRow],
    emails: dict[str, str],
    *,
    include_campaign: bool,
) -> tuple[list[MemberChange], Counter[str], list[AudienceMember]]:
    """Changes that bring ``state`` to ``audiences``; also how many members are unchanged per segment, and
    the members the destination refused at an earlier sync with exactly this content (a per-member refusal
    is final until the member's data changes: not retried)."""
    changes: list[MemberChange] = []
    unchanged: Counter[str] = Counter()
    refused: list[AudienceMember] = []
    desired: set[str] = set()
    for campaign_id, members in audiences.items():
        if not members:
            continue
        extra = campaign_id if include_campaign else ""
        hasher = _member_hasher(members[0], extra)
        for m in members:
            desired.add(m.customer_id)
            h = (
                hasher(m)
                if m.campaign_id == campaign_id
                else state_hash(m.email, [m.segment], m.fields, m.campaign_id if include_campaign else "")
            )
            s = state.get(m.customer_id)
            if s is not None and s.state_hash == h:
                if s.tags == [m.segment]:
                    unchanged[m.segment] += 1
                    continue
                if not s.tags:
                    refused.append(m)
                    continue
            if s is None or not s.tags:
                changes.append(
                    MemberChange(
                        m.customer_id,
                        m.email,
                        "add",
                        m,
                        True,
                        m.segment,
                        None,
                        h,
                        [m.segment],
                        s.campaign_id if s else None,
                    )
                )
                continue
            old_tag = next((t for t in s.tags if t != m.segment), None)
            same_person = s.email_hash in (None, email_hash(m.email))
            changes.append(
                MemberChange(
                    m.customer_id,
                    m.email,
                    "update",
                    m,
                    True,
                    m.segment if m.segment not in s.tags else None,
                    old_tag if same_person else None,
                    h,
                    [m.segment],
                    s.campaign_id,
                )
            )
    for cid, s in state.items():
        if cid in desired or not s.tags:
            continue
        changes.append(
            MemberChange(
                cid, emails.get(cid, ""), "remove", None, False, None, s.tags[0], "", [], s.campaign_id
            )
        )
    return changes, unchanged, refused


# --- the journal: commits what destinations confirm ----------------------------------------------------


_FLUSH = object()  # queue marker: commit what is queued now


@dataclass
class _Confirmed:
    """One confirmed batch, queued for the writer (its sync log rows column-wise)."""

    states: list[st.StateRow]
    campaign_ids: list[str | None]
    customer_ids: list[str]
    operations: list[str]
    statuses: list[str]
    errors: list[str | None]
    refusals: list[tuple[str, str]]


class WarehouseJournal:
    """Commits what destinations confirm: state + log + consent refusals, and campaign records.

    Writes go through one background thread, so API calls never wait for the warehouse. The thread
    gathers what is queued (lingering up to ``linger`` seconds for more, up to ``max_rows`` members) and
    commits it in one transaction with one bulk statement per table: a sync of a million members makes a
    few dozen statements rather than thousands of 500-row ones (each costs milliseconds in DuckDB, more as
    ``sync_state`` grows). ``flush()`` and ``close()`` commit at once; what was confirmed but not yet
    committed when a process dies is simply redone (every write is idempotent).
    """

    linger = 0.25
    max_rows = 50_000

    def __init__(
        self,
        engine: Engine,
        destination: str,
        sync_id: str,
        plan: SyncPlan,
        on_progress: Callable[[int], None] | None = None,
    ) -> None:
        self.engine = engine
        self.destination = destination
        self.sync_id = sync_id
        self.plan = plan
        self.on_progress = on_progress
        self.counts: Counter[str] = Counter()
        self._remote = st.load_remote_campaigns(engine, destination)
        self._queue: queue.Queue[Any] = queue.Queue()
        self._error: BaseException | None = None
        self._writer = threading.Thread(target=self._write_loop, name="sync-journal", daemon=True)
        self._writer.start()

    # --- the writer thread --------------------------------------------------------------------------

    def _gather(self) -> list[Any]:
        """The next items to commit: everything queued, lingering briefly for more."""
        import time

        items = [self._queue.get()]
        rows = len(items[0][0].states) if isinstance(items[0], tuple) and items[0][0] else 0
        deadline = time.monotonic() + self.linger
        while items[-1] is not None and items[-1] is not _FLUSH and rows < self.max_rows:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
            items.append(item)
            if isinstance(item, tuple) and item[0] is not None:
                rows += len(item[0].states)
        return items

    def _write_loop(self) -> None:
        stop = False
        while not stop:
            items = self._gather()
            stop = items[-1] is None
            work = [i for i in items if isinstance(i, tuple)]
            try:
                if work and self._error is None:
                    batches = [b for b, _, _ in work if b is not None]
                    with self.engine.begin() as conn:
                        if batches:
                            # one row per member (the last word wins), one timestamp per commit
                            states = {r.customer_id: r for b in batches for r in b.states}
                            st.save_state(conn, self.destination, list(states.values()))
                            st.write_log_columns(
                                conn,
                                {
                                    "sync_id": self.sync_id,
                                    "destination": self.destination,
                                    "campaign_id": [x for b in batches for x in b.campaign_ids],
                                    "customer_id": [x for b in batches for x in b.customer_ids],
                                    "operation": [x for b in batches for x in b.operations],
                                    "status": [x for b in batches for x in b.statuses],
                                    "error": [x for b in batches for x in b.errors],
                                    "logged_at": st.utcnow(),
                                },
                                sum(len(b.customer_ids) for b in batches),
                            )
                            refusals = [r for b in batches for r in b.refusals]
                            if refusals:
                                st.add_suppressions(conn, refusals, self.destination)
                        for _, fn, _ in work:
                            if fn is not None:
                                fn(conn)
                    if self.on_progress:
                        n = sum(k for _, _, k in work)
                        if n:
                            self.on_progress(n)
            except BaseException as exc:
                self._error = exc
            finally:
                for _ in items:
                    self._queue.task_done()

    def _enqueue(
        self, fn: Callable[[Any], None] | None, members: int = 0, batch: _Confirmed | None = None
    ) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put((batch, fn, members))

    def flush(self) -> None:
        """Wait until everything queued is committed."""
        self._queue.put(_FLUSH)
        self._queue.join()
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        if self._writer.is_alive():
            self._queue.put(None)
            self._writer.join()
        if self._error is not None:
            raise self._error

    # --- Journal ------------------------------------------------------------------------------------

    def confirmed(self, results: Sequence[MemberResult]) -> None:
        if not results:
            return
        states: list[st.StateRow] = []
        refusals: list[tuple[str, str]] = []
        counts = self.counts
        for r in results:
            c = r.change
            m = c.member
            counts[r.status] += 1
            eh = (m.email_sha256 if m is not None else None) or (email_hash(c.email) if c.email else None)
            if r.status == "ok":
                states.append(
                    st.StateRow(c.customer_id, eh, m.campaign_id if m else None, c.new_tags, c.new_hash)
                )
            elif r.status == "skipped":
                # a per-member refusal is final for this content: do not retry it until the member changes
                states.append(st.StateRow(c.customer_id, eh, c.campaign_id, [], c.new_hash))
                if r.suppress_reason and c.email:
                    refusals.append((c.email, r.suppress_reason))
        batch = _Confirmed(
            states,
            [r.change.campaign_id for r in results],
            [r.change.customer_id for r in results],
            [r.operation for r in results],
            [r.status for r in results],
            [r.error for r in results],
            refusals,
        )
        self._enqueue(None, len(results), batch)

    def remote_campaign(self, campaign_id: str) -> RemoteCampaign | None:
        return self._remote.get(campaign_id)

    def campaign_sent_before(self, campaign: CampaignSpec) -> bool:
        with self.engine.connect() as conn:
            ids = [
                r[0]
                for r in conn.execute(
                    select(campaigns.c.campaign_id).where(campaigns.c.campaign_key == campaign.campaign_key)
                )
            ]
        return any(
            (rc := self._remote.get(i)) is not None and rc.status in ("sent", "scheduled") for i in ids
        )

    def record_campaign(
        self, campaign_id: str, remote_id: str | None, status: str, sent_at: datetime | None
    ) -> None:
        rc = RemoteCampaign(campaign_id, remote_id, status, sent_at)
        self._remote[campaign_id] = rc

        def write(conn: Any) -> None:
            st.save_remote_campaign(conn, self.destination, rc)
            if sent_at is not None and status in ("sent", "scheduled"):
                conn.execute(
                    update(campaigns)
                    .where(and_(campaigns.c.campaign_id == campaign_id, campaigns.c.send_time.is_(None)))
                    .values(send_time=sent_at)
                )

        self._enqueue(write)
        if status in ("sent", "scheduled"):
            self.flush()  # a send must be on record before anything else happens

    def log(self, campaign_id: str | None, operation: str, status: str, error: str | None = None) -> None:
        row = {
            "sync_id": self.sync_id,
            "destination": self.destination,
            "campaign_id": campaign_id,
            "customer_id": None,
            "operation": operation,
            "status": status,
            "error": error,
            "logged_at": st.utcnow(),
        }
        self._enqueue(lambda conn: st.write_log(conn, [row]))


# --- content -------------------------------------------------------------------------------------------


class RenderContent:
    """Default content provider: :mod:`campaigns.render` (imported lazily).

    Per-member mode checks that the campaign's template is still the one it was planned with on the first
    member of each campaign, not on every member (that check reads the template files' stamps).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._checked: dict[str, Any] = {}  # campaign id -> its row, template already checked

    def for_campaign(self, campaign: CampaignSpec) -> Content:
        from campaigns import render

        r = render.render_merge_tags(self.settings, campaign.row)
        return Content(r.subject, r.html, r.text)

    def preflight(self, campaign: CampaignSpec) -> None:
        """Render the campaign in both modes, per member for a sample member (the template must be the one
        it was planned with) and require the unsubscribe link and postal address in each; raises
        ``RenderError``."""
        from campaigns import render

        row = campaign.row
        render.require_compliance(
            self.settings, row, render.render_merge_tags(self.settings, row), "*|UNSUB|*", "merge-tag"
        )
        render.require_compliance(
            self.settings,
            row,
            render.render_member(self.settings, row, render.SAMPLE_MEMBER),
            render.member_unsubscribe_url(self.settings, row, render.SAMPLE_MEMBER),
            "per-member",
        )

    def for_member(self, campaign: CampaignSpec, member: AudienceMember) -> Content:
        from campaigns import render

        row = self._checked.get(campaign.campaign_id)
        if row is None:
            r = render.render_member(self.settings, campaign.row, _member_view(member))
            self._checked[campaign.campaign_id] = {**_row_dict(campaign.row), "template_hash": None}
        else:
            r = render.render_member(self.settings, row, _member_view(member))
        return Content(r.subject, r.html, r.text)


def _row_dict(row: Any) -> dict[str, Any]:
    if hasattr(row, "_mapping"):
        return dict(row._mapping)
    return dict(row)


def _member_view(member: AudienceMember) -> dict[str, Any]:
    return {
        "customer_id": member.customer_id,
        "email": member.email,
        "first_name": member.first_name,
        "coupon_code": member.coupon_code,
        "segment": member.segment,
        "campaign_id": member.campaign_id,
    }


# --- the sync ----------------------------------------------------------------------------------------


def guardrails(segments: dict[str, SegmentPlan], max_share: float, first_sync: bool) -> list[str]:
    """Reasons to stop a sync before it writes anything (empty source, a segment swinging too much).

    A segment's swing is measured against ``previous``: its members at the last sync of this destination
    and scheme that ran to its end, never against the partial state a sync that died half-way left behind
    (its rerun would otherwise look like a swing). ``first_sync``: there is no such sync yet.
    """
    total = sum(s.members for s in segments.values())
    if total == 0:
        return ["the source is empty: no reachable treated member in any campaign"]
    out: list[str] = []
    if first_sync:
        return out
    for s in segments.values():
        if s.previous > 0:
            share = abs(s.members - s.previous) / s.previous
            if share > max_share:
                verb = "grows" if s.members > s.previous else "shrinks"
                out.append(
                    f"segment {s.segment!r} {verb} from {s.previous} to {s.members} members ({share:.0%} > {max_share:.0%})"
                )
    return out


P = ParamSpec("P")


def _one_sync_per_destination(
    fn: Callable[Concatenate[Engine, Settings, str, P], SyncResult],
) -> Callable[Concatenate[Engine, Settings, str, P], SyncResult]:
    """One sync per destination at a time: two would both create (and, with ``send``, send) the same
    campaigns. A second one fails at once with ``ConflictError``; a dry run is never held up."""

    @functools.wraps(fn)
    def wrapper(
        engine: Engine, settings: Settings, destination: str, /, *args: P.args, **kwargs: P.kwargs
    ) -> SyncResult:
        if kwargs.get("dry_run"):
            return fn(engine, settings, destination, *args, **kwargs)
        with exclusive(engine, f"sync:{destination}", f"another sync to {destination}"):
            return fn(engine, settings, destination, *args, **kwargs)

    return wrapper


@_one_sync_per_destination
def sync_audience(
    engine: Engine,
    settings: Settings,
    destination: str,
    as_of: date | None = None,
    scheme: str | None = None,
    *,
    dry_run: bool = False,
    send: bool = False,
    schedule_at: datetime | None = None,
    force: bool = False,
    destination_obj: Destination | None = None,
    content: ContentProvider | None = None,
    on_progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> SyncResult:
    """Bring ``destination`` in line with the campaign plan of ``as_of``/``scheme``; write only changes.

    Args:
        destination: ``outbox``, ``mailchimp`` or ``hubspot`` (the name in ``sync_state``).
        as_of: the plan's date (default: the latest planned for the scheme).
        scheme: default ``settings.default_scheme``.
        dry_run: compute and return the plan; no request to the destination, no warehouse write.
        send / schedule_at: send (or schedule) each campaign after its audience is synced; default: drafts.
        force: override the guardrails.
        destination_obj: an already built destination (tests, flows); default from the registry.
        content: message content provider; default :mod:`campaigns.render`.
        on_progress / on_total: progress callbacks (members confirmed / members to change).

    Returns:
        The per-segment plan and, unless ``dry_run``, what was done.

    Raises:
        NotFoundError: no plan for ``as_of``/``scheme``.
        GuardrailError: the source is empty or a segment swings too much (before any write; ``force``).
        FatalDestinationError: wrong credentials / list (before any write) or the destination failed mid-way.
        ConflictError: another sync to ``destination`` is running (nothing done; a dry run does not wait).
    """
    import time

    t0 = time.perf_counter()
    check_schedule_at(schedule_at)
    scheme = scheme or settings.default_scheme
    if as_of is None:
        as_of = latest_as_of(engine, scheme)
        if as_of is None:
            raise NotFoundError(
                f"no campaign plan for scheme {scheme!r}",
                fix=f"run `activation plan --scheme {scheme}` first",
            )
    else:
        _check_planned(engine, as_of, scheme)
    camps = load_campaigns(engine, as_of, scheme, destination)
    provider = content or RenderContent(settings)
    # everything the sync will render is checked before the first request and the first write, for every
    # destination: a template edited after planning, or one without the unsubscribe link or the postal
    # address, stops here (a dry run reports what would stop the sync instead)
    blockers: list[str] = []
    for camp in camps:
        try:
            provider.preflight(camp)
        except TemplateError as exc:
            if not dry_run:
                raise
            blockers.append(str(exc).splitlines()[0])
    dest = destination_obj
    if dest is None:
        from connectors.registry import get_destination

        dest = get_destination(destination, settings)
    check = getattr(dest, "check_schedule", None)  # a destination's own scheduling rules, before any call
    if check is not None:
        check(schedule_at)
    reads0, writes0 = dest.stats.reads, dest.stats.writes
    gc_was_enabled, froze = gc.isenabled(), False
    try:
        if not dry_run:
            since = st.last_success(engine, destination)
            events = list(dest.read_suppressions(since))
            if events:
                st.add_suppressions(engine, [(e.email, e.reason) for e in events], destination)
        suppressed = st.load_suppressions(engine)
        # the plan is millions of small objects kept for the whole sync: the cyclic collector would walk
        # them again and again while they are built (a third of the time at 1M members) and on every
        # later collection. Paused while building; then frozen (out of its sight) until the sync ends.
        gc.disable()
        src = _read_source(engine, settings, camps, suppressed)
        state = st.load_state(engine, destination)
        baseline = st.last_completed_members(engine, destination, scheme)
        for seg, n in (baseline or {}).items():
            src.segments.setdefault(seg, SegmentPlan(segment=seg)).previous = n
        need_email = [cid for cid, s in state.items() if cid not in src.emails and s.tags]
        src.emails.update(_missing_emails(engine, settings, need_email))
        changes, unchanged, refused = diff(
            src.audiences, state, src.emails, include_campaign=dest.state_includes_campaign
        )
        for seg, n in unchanged.items():
            src.segments[seg].unchanged = n
        for m in refused:
            src.segments[m.segment].skips["refused"] += 1
            src.skipped.append((m.campaign_id, m.customer_id, "refused"))
        for c in changes:
            if c.member is not None:
                sp = src.segments[c.member.segment]
                sp.adds += c.kind == "add"
                sp.updates += c.kind == "update"
                sp.tag_adds += c.tag_add is not None
            if c.tag_remove is not None:
                src.segments.setdefault(c.tag_remove, SegmentPlan(segment=c.tag_remove)).tag_removes += 1
        plan = SyncPlan(as_of, scheme, camps, src.audiences, changes, provider, send, schedule_at)
        gc.freeze()
        froze = True
        if gc_was_enabled:
            gc.enable()
        estimate = dest.plan(plan)
        for seg, n in estimate.items():
            if seg:
                src.segments.setdefault(seg, SegmentPlan(segment=seg)).api_calls = n
        violations = guardrails(
            src.segments, settings.guardrail_max_change_share, first_sync=baseline is None
        )
        result = SyncResult(
            None,
            destination,
            as_of,
            scheme,
            dry_run,
            src.segments,
            sum(estimate.values()),
            planned_calls=sum(estimate.values()),
            setup_calls=estimate.get("", 0),
            guardrail_violations=violations,
            blockers=blockers,
        )
        if dry_run:
            result.seconds = time.perf_counter() - t0
            return result
        if violations and not force:
            raise GuardrailError(
                "sync to " + destination + " stopped before any write: " + "; ".join(violations),
                fix="check the plan with --dry-run; rerun with --force if the change is intended",
            )
        if _nothing_to_do(
            engine, destination, camps, src.audiences, changes, send or schedule_at is not None
        ):
            # a rerun with nothing changed writes nothing: no call, no run, no second copy of the same skips
            result.status = "unchanged"
            for sp in result.segments.values():
                sp.api_calls = 0  # the estimate assumed campaigns to publish; none is
            result.planned_calls = result.setup_calls = 0
            result.read_calls = dest.stats.reads - reads0  # the suppressions read back
            result.api_calls = result.read_calls
            result.skipped = sum(result.skips.values())
            result.seconds = time.perf_counter() - t0
            return result
        sync_id = uuid.uuid4().hex
        result.sync_id = sync_id
        st.start_run(engine, sync_id, destination, as_of, scheme)
        journal = WarehouseJournal(engine, destination, sync_id, plan, on_progress)
        if on_total:
            on_total(len(changes))
        t_apply = time.perf_counter()
        try:
            try:
                dest.apply(plan, journal)
            finally:
                result.apply_seconds = time.perf_counter() - t_apply
                journal.close()
        except BaseException as exc:
            result.status = "failed"
            if src.skipped and dest.stats.writes > writes0:
                # skips belong to a sync that wrote something; one stopped before any write (wrong
                # credentials, missing list) leaves only its failed run behind
                _log_skips(engine, destination, sync_id, src.skipped)
            _finish(
                engine,
                result,
                journal,
                dest,
                reads0,
                writes0,
                t0,
                error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
            )
            raise
        if src.skipped:
            _log_skips(engine, destination, sync_id, src.skipped)
        result.status = "succeeded" if journal.counts["failed"] == 0 else "partial"
        _finish(engine, result, journal, dest, reads0, writes0, t0)
        return result
    finally:
        if froze:
            gc.unfreeze()
        if gc_was_enabled:
            gc.enable()
        if destination_obj is None:
            dest.close()


def _nothing_to_do(
    engine: Engine,
    destination: str,
    camps: Sequence[CampaignSpec],
    audiences: dict[str, list[AudienceMember]],
    changes: Sequence[MemberChange],
    send: bool,
) -> bool:
    """No member changes and every campaign with an audience is already where it was asked to be at the
    destination (a draft, or sent/scheduled when ``send``; an earlier version already sent counts as sent)."""
    if changes:
        return False
    remote = st.load_remote_campaigns(engine, destination)
    wanted = [c for c in camps if audiences.get(c.campaign_id)]
    sent_keys: set[str] = set()
    if send:
        keys = {c.campaign_key for c in wanted}
        with engine.connect() as conn:
            rows = (
                conn.execute(
                    select(campaigns.c.campaign_id, campaigns.c.campaign_key).where(
                        campaigns.c.campaign_key.in_(keys)
                    )
                ).all()
                if keys
                else []
            )
        sent_keys = {
            key
            for cid, key in rows
            if (rc := remote.get(cid)) is not None and rc.status in ("sent", "scheduled")
        }
    for camp in wanted:
        rc = remote.get(camp.campaign_id)
        if send:
            if camp.campaign_key not in sent_keys:
                return False
        elif rc is None or rc.status == "created":
            return False
    return True


def _log_skips(engine: Engine, destination: str, sync_id: str, skipped: list[tuple[str, str, str]]) -> None:
    now = st.utcnow()
    rows = [
        {
            "sync_id": sync_id,
            "destination": destination,
            "campaign_id": camp,
            "customer_id": cid,
            "operation": "skip",
            "status": "skipped",
            "error": reason,
            "logged_at": now,
        }
        for camp, cid, reason in skipped
    ]
    with engine.begin() as conn:
        for i in range(0, len(rows), 50_000):
            st.write_log(conn, rows[i : i + 50_000])


def _finish(
    engine: Engine,
    result: SyncResult,
    journal: WarehouseJournal,
    dest: Destination,
    reads0: int,
    writes0: int,
    t0: float,
    error: str | None = None,
) -> None:
    import time

    result.write_calls = dest.stats.writes - writes0
    result.read_calls = dest.stats.reads - reads0
    result.api_calls = result.write_calls + result.read_calls
    result.ok = journal.counts["ok"]
    result.skipped = journal.counts["skipped"] + sum(result.skips.values())
    result.failed = journal.counts["failed"]
    result.campaigns = {
        cid: rc.status
        for cid, rc in journal._remote.items()
        if any(c.campaign_id == cid for c in journal.plan.campaigns)
    }
    result.seconds = time.perf_counter() - t0
    summary = result.summary()
    if error:
        summary["error"] = error
    st.finish_run(engine, result.sync_id or "", result.status, summary)


def read_outcomes(
    engine: Engine,
    settings: Settings,
    destination: str,
    as_of: date,
    scheme: str | None = None,
    *,
    since: datetime | None = None,
    destination_obj: Destination | None = None,
) -> list[OutcomeEvent]:
    """Per-member events (sent, opened, clicked, unsubscribed, bounced) of every campaign of the plan.

    The local outbox returns no events.
    """
    scheme = scheme or settings.default_scheme
    with engine.connect() as conn:
        ids = [
            r[0]
            for r in conn.execute(
                select(campaigns.c.campaign_id).where(
                    campaigns.c.as_of == as_of, campaigns.c.scheme == scheme
                )
            )
        ]
    dest = destination_obj
    if dest is None:
        from connectors.registry import get_destination

        dest = get_destination(destination, settings)
    try:
        return list(dest.read_outcomes(engine, ids, since))
    finally:
        if destination_obj is None:
            dest.close()


def customer_resolver(engine: Engine, destination: str) -> Callable[[str], str | None]:
    """email -> customer id, through the email hashes in ``sync_state`` (no email is stored)."""
    by_hash = {
        s.email_hash: s.customer_id for s in st.load_state(engine, destination).values() if s.email_hash
    }
    return lambda email: by_hash.get(email_hash(email))
