"""Insert a small campaign plan (``campaigns`` + ``campaign_members`` + ``customers``) directly, the way
``activation plan`` leaves it, plus a simple content provider: sync tests do not depend on rendering."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import delete, insert
from sqlalchemy.engine import Engine

from activation.errors import TemplateError
from activation.tables import campaign_members, campaigns, customers
from connectors.base import AudienceMember, CampaignSpec, Content

AS_OF = date(2024, 3, 31)
SCHEME = "seed5"
SEGMENTS = ("Champions", "Loyal", "At Risk")


class SimpleContent:
    """Merge tags for campaigns, plain substitution per member."""

    def for_campaign(self, campaign: CampaignSpec) -> Content:
        return Content(
            f"{campaign.subject}",
            f"<p>Hi *|FNAME|*, code *|COUPON|* ({campaign.segment})</p><a href='*|UNSUB|*'>unsubscribe</a>",
            "Hi *|FNAME|*, code *|COUPON|*\nUnsubscribe: *|UNSUB|*",
        )

    def for_member(self, campaign: CampaignSpec, member: AudienceMember) -> Content:
        return Content(
            campaign.subject,
            f"<p>Hi {member.first_name}, code {member.coupon_code or ''}</p>",
            f"Hi {member.first_name}, code {member.coupon_code or ''}",
        )

    def preflight(self, campaign: CampaignSpec) -> None:
        """The merge-tag content must carry the unsubscribe tag (the sync's pre-flight contract)."""
        content = self.for_campaign(campaign)
        if "*|UNSUB|*" not in content.html or "*|UNSUB|*" not in content.text:
            raise TemplateError(f"no unsubscribe link in the content of {campaign.campaign_id}")


@dataclass
class Plan:
    campaign_ids: dict[str, str]  # segment -> campaign id
    treated: dict[str, list[str]]  # segment -> customer ids
    holdout: dict[str, list[str]]


def campaign_id(segment: str, version: int = 1, as_of: date = AS_OF) -> str:
    return f"{SCHEME}-{as_of.isoformat()}-{segment.lower().replace(' ', '-')}-v{version}"


def insert_plan(
    engine: Engine,
    assignment: dict[str, str],
    *,
    holdouts: set[str] = frozenset(),  # type: ignore[assignment]
    emails: dict[str, str | None] | None = None,
    as_of: date = AS_OF,
    version: int = 1,
    replace_customers: bool = True,
) -> Plan:
    """``assignment``: customer id -> segment. Emails default to ``<id>@example.com``."""
    emails = emails or {}
    segs = sorted(set(assignment.values()))
    ids = {s: campaign_id(s, version, as_of) for s in segs}
    now = datetime(2024, 4, 1)
    treated: dict[str, list[str]] = {s: [] for s in segs}
    held: dict[str, list[str]] = {s: [] for s in segs}
    for cid, seg in assignment.items():
        (held if cid in holdouts else treated)[seg].append(cid)
    with engine.begin() as conn:
        if replace_customers:
            conn.execute(delete(customers))
            conn.execute(
                insert(customers),
                [
                    {
                        "customer_id": cid,
                        "email": emails.get(cid, f"{cid}@example.com"),
                        "first_name": f"Name{cid}",
                        "unsubscribed": False,
                    }
                    for cid in assignment
                ],
            )
        for s in segs:
            conn.execute(
                insert(campaigns).values(
                    campaign_id=ids[s],
                    campaign_key=f"{SCHEME}/{as_of}/{s}",
                    version=version,
                    as_of=as_of,
                    scheme=SCHEME,
                    segment=s,
                    template=s.lower(),
                    subject=f"Hello {s}",
                    offer_type="winback_coupon",
                    offer=json.dumps({"type": "winback_coupon", "percent": 15, "expiry_days": 30}),
                    holdout_share=0.1,
                    template_hash="t",
                    policy_hash="p",
                    destinations=json.dumps(["outbox", "mailchimp", "hubspot"]),
                    treated=len(treated[s]),
                    holdout=len(held[s]),
                    excluded="{}",
                    created_at=now,
                )
            )
        rows = [
            {
                "campaign_id": ids[seg],
                "customer_id": cid,
                "member_group": "holdout" if cid in holdouts else "treatment",
                "coupon_code": None if cid in holdouts else f"C-{cid}-{version}",
            }
            for cid, seg in assignment.items()
        ]
        if rows:
            conn.execute(insert(campaign_members), rows)
    return Plan(ids, treated, held)


def make_assignment(n: int, segments: tuple[str, ...] = SEGMENTS) -> dict[str, str]:
    return {f"c{i:05d}": segments[i % len(segments)] for i in range(n)}
