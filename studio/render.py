"""One segment's email for one member, as the studio shows it: the same renderer, sandbox and limits as
`activation plan` and the outbox (:func:`campaigns.render.render_member` with its default limits), the
same campaign and coupon as `templates preview` (:mod:`campaigns.preview`)."""

from __future__ import annotations

import html as html_lib
import re
from dataclasses import asdict, dataclass, field
from datetime import date
from typing import Any

from activation.settings import Settings
from campaigns.plan import sample_campaign
from campaigns.policy import ResolvedPolicy
from campaigns.preview import sample_coupon
from campaigns.render import (
    build_context,
    compliance_problems,
    member_unsubscribe_url,
    render_member,
)
from studio.catalog import Member

# the base layout's hidden first block: what inboxes show after the subject
_PREHEADER = re.compile(r"<div[^>]*display:\s*none[^>]*>(.*?)</div>", re.S | re.I)
_TAGS = re.compile(r"<[^>]+>")


@dataclass(frozen=True)
class Preview:
    """What the member would receive."""

    subject: str
    preheader: str
    html: str
    text: str
    coupon_code: str
    expires_on: str
    offer: str
    problems: list[str] = field(default_factory=list)  # the law's footer missing (unsubscribe, address)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def preheader_of(html: str) -> str:
    """The preheader of a rendered email: the text of its first hidden block (empty without one)."""
    found = _PREHEADER.search(html)
    if found is None:
        return ""
    return " ".join(html_lib.unescape(_TAGS.sub("", found.group(1))).split())


def campaign_and_member(
    settings: Settings, resolved: ResolvedPolicy, as_of: date, member: Member
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The segment's campaign and the member with the coupon code they would get."""
    row = member.as_row()
    code = sample_coupon(settings, resolved.scheme, as_of, resolved.segment, resolved.offer, row)
    return sample_campaign(resolved, as_of), {**row, "coupon_code": code}


def render_preview(settings: Settings, resolved: ResolvedPolicy, as_of: date, member: Member) -> Preview:
    """Render the segment's email for ``member``.

    Raises:
        RenderError: the template fails (file and line named).
    """
    campaign, row = campaign_and_member(settings, resolved, as_of, member)
    email = render_member(settings, campaign, row)
    offer = build_context(settings, campaign, row)["offer"]
    unsubscribe = member_unsubscribe_url(settings, campaign, row)
    problems = [message for _, message, _ in compliance_problems(settings, email, unsubscribe)]
    return Preview(
        subject=email.subject,
        preheader=preheader_of(email.html),
        html=email.html,
        text=email.text,
        coupon_code=row["coupon_code"] or "",
        expires_on=str(offer.get("expires_on") or ""),
        offer=resolved.offer.describe(),
        problems=problems,
    )
