"""Reading the audience: the campaigns of the plan, their reachable treated members (holdouts are never
tagged, listed or sent anything; suppressed, unsubscribed, email-less, invalid and duplicate emails are
skipped with the reason), and each member's desired state as a hash.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from json.encoder import encode_basestring_ascii as _enc
from operator import attrgetter
from typing import Any

from sqlalchemy import Select, null, select
from sqlalchemy.engine import Engine

from activation.chunks import chunked
from activation.emails import is_valid_email
from activation.errors import NotFoundError
from activation.settings import Settings
from activation.tables import campaign_members, campaigns, source_table
from connectors import state as st
from connectors.base import (
    AudienceMember,
    CampaignSpec,
    Destination,
    email_hash,
    normalize_email,
    state_hash,
)
from connectors.content import campaign_values
from connectors.result import SegmentChange

# --- the plan ----------------------------------------------------------------------------------------


def planned_as_of(engine: Engine, scheme: str, as_of: date | None) -> date:
    """``as_of`` once it is known to have a plan for ``scheme``; without one, the latest planned date.

    Raises:
        NotFoundError: no plan for ``as_of`` (or none at all) in ``scheme``; a typo would otherwise read as
            an empty audience and remove every tag under ``--force``.
    """
    with engine.connect() as conn:
        planned: list[date] = list(
            conn.execute(
                select(campaigns.c.as_of)
                .where(campaigns.c.scheme == scheme)
                .distinct()
                .order_by(campaigns.c.as_of)
            )
            .scalars()
            .all()
        )
    if as_of is None:
        if not planned:
            raise NotFoundError(
                f"no campaign plan for scheme {scheme!r}",
                fix=f"run `activation plan --scheme {scheme}` first",
            )
        return planned[-1]
    if as_of not in planned:
        known = ", ".join(d.isoformat() for d in planned[-4:]) or "none"
        raise NotFoundError(
            f"no campaign plan for scheme {scheme!r} as of {as_of.isoformat()} (planned: {known})",
            fix=f"run `activation plan --as-of {as_of.isoformat()} --scheme {scheme}` first, or pick a planned date",
        )
    return as_of


def load_campaigns(engine: Engine, as_of: date, scheme: str, destination: str) -> list[CampaignSpec]:
    """The latest version of each segment's campaign that lists ``destination`` (an empty list = all)."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(campaigns)
            .where(campaigns.c.as_of == as_of, campaigns.c.scheme == scheme)
            .order_by(campaigns.c.segment, campaigns.c.version.desc())
        ).all()
    out: dict[str, CampaignSpec | None] = {}
    for r in rows:
        if r.segment in out:
            continue
        dests = _json(r.destinations, [])
        if dests and destination not in dests:
            out[r.segment] = None  # latest version excludes us: skip older ones too
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
    names = {
        "customer_id": src.customer_id,
        "email": src.email,
        "first_name": src.first_name,
        "unsubscribed": src.unsubscribed,
    }
    t = source_table(src.table, *[c for c in names.values() if c])
    cols = {k: (t.c[v] if v else None) for k, v in names.items()}
    return t, cols


# --- the members --------------------------------------------------------------------------------------


@dataclass
class Audience:
    """Who each campaign reaches, and who it leaves out and why."""

    audiences: dict[str, list[AudienceMember]]  # campaign_id -> reachable treated members, by customer id
    segments: dict[str, SegmentChange]
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (campaign_id, customer_id, reason)
    emails: dict[str, str] = field(default_factory=dict)  # customer_id -> normalized email (for tag removals)

    def skip(self, member: AudienceMember, reason: str) -> None:
        self.segments[member.segment].skips[reason] += 1
        self.skipped.append((member.campaign_id, member.customer_id, reason))


def read_suppressions(engine: Engine, destination: Destination, *, read_back: bool) -> dict[str, str]:
    """email sha256 -> reason, for everyone who must not be contacted; ``read_back``: first add those the
    destination holds as unsubscribed or cleaned since its last successful sync."""
    if read_back:
        events = list(destination.read_suppressions(st.last_success(engine, destination.name)))
        if events:
            st.add_suppressions(engine, [(e.email, e.reason) for e in events], destination.name)
    return st.load_suppressions(engine)


def _members_query(settings: Settings, campaign_ids: Sequence[str]) -> Select[tuple[Any, ...]]:
    """(campaign id, customer id, group, coupon, email, first name, unsubscribed) of every member of the
    campaigns, by customer id; a customers column the settings do not name reads NULL."""
    cust, cc = _customers_table(settings)
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
    return (
        select(*cols)
        .select_from(campaign_members.outerjoin(cust, cc["customer_id"] == campaign_members.c.customer_id))
        .where(campaign_members.c.campaign_id.in_(list(campaign_ids)))
        .order_by(campaign_members.c.customer_id)
    )


def read_audience(
    engine: Engine, settings: Settings, camps: Sequence[CampaignSpec], suppressed: dict[str, str]
) -> Audience:
    """The reachable treated members of each campaign, and why the others are skipped.

    One pass over the rows (fetched in large partitions, unpacked as tuples): millions of members must
    not cost tens of seconds of Python before the first API call.
    """
    by_id = {c.campaign_id: c for c in camps}
    values = {c.campaign_id: campaign_values(c) for c in camps}
    audience = Audience(
        {c.campaign_id: [] for c in camps},
        {c.segment: SegmentChange(segment=c.segment, campaign_id=c.campaign_id) for c in camps},
    )
    segments, skipped, emails = audience.segments, audience.skipped, audience.emails
    seen_customers: set[str] = set()
    owner: dict[str, AudienceMember] = {}  # email -> the member holding it (the lowest customer id)
    duplicates: list[AudienceMember] = []
    with engine.connect() as conn:
        for part in conn.execute(_members_query(settings, list(by_id))).partitions(50_000):
            for camp_id, raw_cid, group, coupon, raw_email, first, unsub in part:
                camp = by_id[camp_id]
                cid = str(raw_cid)
                email = normalize_email(raw_email)
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
                elif not is_valid_email(email):
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
                fields = {**base, "FNAME": first_name, "COUPON": (coupon or "") if has_coupon else ""}
                m = AudienceMember(cid, email, first_name, camp_id, camp.segment, coupon, fields, eh)
                held = owner.get(email)
                if held is None:
                    owner[email] = m
                elif cid < held.customer_id:  # the lowest customer id keeps a shared address
                    owner[email] = m
                    duplicates.append(held)
                else:
                    duplicates.append(m)
    _keep(audience, camps, owner.values(), duplicates)
    return audience


def _keep(
    audience: Audience,
    camps: Sequence[CampaignSpec],
    owners: Iterable[AudienceMember],
    duplicates: Sequence[AudienceMember],
) -> None:
    """Skip the members whose address another member keeps; the others join their campaign's audience."""
    for m in duplicates:
        audience.skip(m, "duplicate_email")
    for m in owners:
        audience.audiences[m.campaign_id].append(m)
    for camp in camps:
        members = audience.audiences[camp.campaign_id]
        members.sort(key=attrgetter("customer_id"))  # nearly sorted already: linear
        audience.segments[camp.segment].members = len(members)


def missing_emails(engine: Engine, settings: Settings, customer_ids: Sequence[str]) -> dict[str, str]:
    cust, cc = _customers_table(settings)
    if cc["email"] is None or not customer_ids:
        return {}
    out: dict[str, str] = {}
    with engine.connect() as conn:
        for part in chunked(customer_ids, 5000):
            chunk = list(part)
            for cid, email in conn.execute(
                select(cc["customer_id"], cc["email"]).where(cc["customer_id"].in_(chunk))
            ):
                if email:
                    out[str(cid)] = normalize_email(email)
    return out


# --- the desired state ---------------------------------------------------------------------------------


def member_hasher(sample: AudienceMember, extra: str) -> Callable[[AudienceMember], str]:
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
