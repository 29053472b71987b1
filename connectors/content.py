"""What members receive: the default content provider (:mod:`campaigns.render`) and the campaign-wide merge
values every member's fields start from."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from activation.errors import TemplateError
from activation.settings import Settings
from campaigns import render
from connectors.base import AudienceMember, CampaignSpec, Content, ContentProvider


class RenderContent:
    """Default content provider: :mod:`campaigns.render`.

    Per-member mode checks that the campaign's template is still the one it was planned with on the first
    member of each campaign, not on every member (that check reads the template files' stamps).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._checked: dict[str, Any] = {}  # campaign id -> its row, template already checked

    def for_campaign(self, campaign: CampaignSpec) -> Content:
        return render.render_merge_tags(self.settings, campaign.row)

    def preflight(self, campaign: CampaignSpec) -> None:
        """Render the campaign in both modes, per member for a sample member (the template must be the one
        it was planned with) and require the unsubscribe link and postal address in each; raises
        ``RenderError``."""
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
        # the renderer reads the member's customer_id, email, first_name and coupon_code as attributes
        row = self._checked.get(campaign.campaign_id)
        if row is not None:
            return render.render_member(self.settings, row, member)
        email = render.render_member(self.settings, campaign.row, member)
        self._checked[campaign.campaign_id] = {**_row_dict(campaign.row), "template_hash": None}
        return email


def _row_dict(row: Any) -> dict[str, Any]:
    if hasattr(row, "_mapping"):
        return dict(row._mapping)
    return dict(row)


def campaign_values(campaign: CampaignSpec) -> tuple[dict[str, str], bool]:
    """The campaign-wide merge values (segment, offer, expiry) and whether its offer has coupons, as
    :func:`campaigns.render.merge_values` computes them (computed once per campaign, not per member)."""
    row: Any = (
        campaign.row
        if campaign.row is not None
        else {**campaign.__dict__, "offer": json.dumps(campaign.offer)}
    )
    values = render.merge_values(row, {"first_name": "", "coupon_code": "X"})
    has_coupon = values.get("COUPON") == "X"
    return {k: str(v) for k, v in values.items()}, has_coupon


def preflight(content: ContentProvider, camps: Sequence[CampaignSpec], *, dry_run: bool) -> list[str]:
    """Check everything a sync will render before its first request and first write, for every destination:
    a template edited after planning, or one without the unsubscribe link or the postal address, stops the
    sync here (``TemplateError``); a dry run returns what would stop it instead."""
    blockers: list[str] = []
    for camp in camps:
        try:
            content.preflight(camp)
        except TemplateError as exc:
            if dry_run:
                blockers.append(str(exc).splitlines()[0])
            else:
                raise
    return blockers
