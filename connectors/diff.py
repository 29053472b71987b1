"""Diffing and guardrails: the changes that bring what a destination last received (``sync_state``) to the
audience, counted per segment, and the reasons to stop before the first write."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from sqlalchemy.engine import Engine

from activation.errors import GuardrailError
from activation.settings import Settings
from connectors import state as st
from connectors.audience import Audience, member_hasher, missing_emails
from connectors.base import AudienceMember, ChangeKind, Destination, MemberChange, SyncPlan, email_hash
from connectors.result import SegmentChange, SyncResult, segment_of


def diff_audience(
    engine: Engine, settings: Settings, destination: Destination, scheme: str, audience: Audience
) -> tuple[list[MemberChange], bool]:
    """The changes ``destination`` needs, counted into ``audience.segments`` with each segment's baseline
    (its members at the last completed sync); also whether this is the first sync (no baseline yet).
    Members refused before with exactly this content are skipped (``refused``)."""
    state = st.load_state(engine, destination.name)
    baseline = st.last_completed_members(engine, destination.name, scheme)
    for seg, n in (baseline or {}).items():
        segment_of(audience.segments, seg).previous = n
    need_email = [cid for cid, s in state.items() if cid not in audience.emails and s.tags]
    audience.emails.update(missing_emails(engine, settings, need_email))
    changes, unchanged, refused = diff(
        audience.audiences, state, audience.emails, include_campaign=destination.state_includes_campaign
    )
    for seg, n in unchanged.items():
        audience.segments[seg].unchanged = n
    for m in refused:
        audience.skip(m, "refused")
    count_changes(audience.segments, changes)
    return changes, baseline is None


def count_changes(segments: dict[str, SegmentChange], changes: Sequence[MemberChange]) -> None:
    """Add each change to its segment's counts (adds, updates, tags added and removed)."""
    for c in changes:
        if c.member is not None:
            sp = segments[c.member.segment]
            sp.adds += c.kind == "add"
            sp.updates += c.kind == "update"
            sp.tag_adds += c.tag_add is not None
        if c.tag_remove is not None:
            segment_of(segments, c.tag_remove).tag_removes += 1


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
        hasher = member_hasher(members[0], extra)
        for m in members:
            desired.add(m.customer_id)
            h = hasher(m)
            s = state.get(m.customer_id)
            if s is not None and s.state_hash == h:
                if s.tags == [m.segment]:
                    unchanged[m.segment] += 1
                    continue
                if not s.tags:
                    refused.append(m)
                    continue
            kind: ChangeKind = "add"
            tag_add: str | None = m.segment
            tag_remove: str | None = None
            if s is not None and s.tags:
                kind = "update"
                tag_add = m.segment if m.segment not in s.tags else None
                if s.email_hash in (None, email_hash(m.email)):  # the same person: the old tag goes
                    tag_remove = next((t for t in s.tags if t != m.segment), None)
            old_campaign = s.campaign_id if s is not None else None
            changes.append(
                MemberChange(
                    m.customer_id, m.email, kind, m, True, tag_add, tag_remove, h, [m.segment], old_campaign
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


def stop_on_guardrails(result: SyncResult, *, force: bool) -> None:
    """Raise ``GuardrailError`` for the plan's guardrail violations unless ``force``."""
    if result.guardrail_violations and not force:
        violations = "; ".join(result.guardrail_violations)
        raise GuardrailError(
            f"sync to {result.destination} stopped before any write: {violations}",
            fix="check the plan with --dry-run; rerun with --force if the change is intended",
        )


def nothing_to_do(engine: Engine, destination: str, plan: SyncPlan) -> bool:
    """No member changes and every campaign with an audience is already where it was asked to be at the
    destination (a draft, or sent/scheduled when ``send``; an earlier version already sent counts as sent)."""
    if plan.changes:
        return False
    send = plan.send or plan.schedule_at is not None
    remote = st.load_remote_campaigns(engine, destination)
    wanted = [c for c in plan.campaigns if plan.audiences.get(c.campaign_id)]
    sent_keys = st.sent_campaign_keys(engine, remote, {c.campaign_key for c in wanted}) if send else set()
    for camp in wanted:
        rc = remote.get(camp.campaign_id)
        if send:
            if camp.campaign_key not in sent_keys:
                return False
        elif rc is None or rc.status == "created":
            return False
    return True
