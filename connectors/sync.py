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
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from json.encoder import encode_basestring_ascii as _enc
from operator import attrgetter
from typing import Any, Concatenate, ParamSpec

from sqlalchemy import func, null, select
from sqlalchemy.engine import Engine
from sqlalchemy.sql import column, table

from activation.dialect import exclusive
from activation.emails import EMAIL_RE
from activation.errors import GuardrailError, InputError, NotFoundError, TemplateError
from activation.settings import Settings
from activation.tables import campaign_members, campaigns
from connectors import state as st
from connectors.base import (
    AudienceMember,
    CampaignSpec,
    ContentProvider,
    Destination,
    MemberChange,
    OutcomeEvent,
    SyncPlan,
    email_hash,
    normalize_email,
    state_hash,
)
from connectors.content import RenderContent, campaign_values
from connectors.journal import CallCount, WarehouseJournal, finish, log_skips
from connectors.result import SegmentChange, SyncResult

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


@dataclass
class _Source:
    audiences: dict[str, list[AudienceMember]]
    segments: dict[str, SegmentChange]
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
    segments = {c.segment: SegmentChange(segment=c.segment, campaign_id=c.campaign_id) for c in camps}
    values = {c.campaign_id: campaign_values(c) for c in camps}
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


# --- the sync ----------------------------------------------------------------------------------------


def guardrails(segments: dict[str, SegmentChange], max_share: float, first_sync: bool) -> list[str]:
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
    calls = CallCount.start(dest.stats)
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
            src.segments.setdefault(seg, SegmentChange(segment=seg)).previous = n
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
                src.segments.setdefault(c.tag_remove, SegmentChange(segment=c.tag_remove)).tag_removes += 1
        plan = SyncPlan(as_of, scheme, camps, src.audiences, changes, provider, send, schedule_at)
        gc.freeze()
        froze = True
        if gc_was_enabled:
            gc.enable()
        estimate = dest.plan(plan)
        for seg, n in estimate.items():
            if seg:
                src.segments.setdefault(seg, SegmentChange(segment=seg)).api_calls = n
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
            result.read_calls = calls.reads()  # the suppressions read back
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
            if src.skipped and calls.writes() > 0:
                # skips belong to a sync that wrote something; one stopped before any write (wrong
                # credentials, missing list) leaves only its failed run behind
                log_skips(engine, destination, sync_id, src.skipped)
            error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            finish(engine, result, journal, calls, t0, error=error)
            raise
        if src.skipped:
            log_skips(engine, destination, sync_id, src.skipped)
        result.status = "succeeded" if journal.counts["failed"] == 0 else "partial"
        finish(engine, result, journal, calls, t0)
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
