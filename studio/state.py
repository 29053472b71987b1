"""The studio's state: the schemes and their segments, the policy, the `templates check` problems and the
last good render of every email shown, brought up to date when a template or the policy is saved.

Every method takes the one lock: renders share the renderer's caches, and a save must not interleave with
a render that would then mix the old and the new file.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from activation.errors import NotFoundError
from activation.settings import Settings
from campaigns.lint import check_templates
from campaigns.policy import Policy, PolicyIssue, ResolvedPolicy, parse_policy
from campaigns.render import RenderError
from connectors.base import AudienceMember, CampaignSpec
from connectors.outbox import OutboxDestination
from studio.catalog import Member, SchemeInfo, load_schemes, sample_members
from studio.render import Preview, campaign_and_member, render_preview

#: The outbox folder test sends go to, apart from the campaigns a sync writes.
TEST_FOLDER = "studio-tests"


@dataclass(frozen=True)
class Problem:
    """A `templates check` problem or a failed render: where, what, and the fix."""

    file: str
    line: int | None
    message: str
    fix: str

    @classmethod
    def of(cls, issue: PolicyIssue | RenderError) -> Problem:
        if isinstance(issue, RenderError):
            return cls(issue.file or "", issue.line, issue.detail, issue.fix or "")
        return cls(issue.file, issue.line, issue.message, issue.fix or "")

    def as_dict(self) -> dict[str, Any]:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return {"where": where, "message": self.message, "fix": self.fix}


class Studio:
    """Everything the pages ask for, computed from the settings' templates, policy and warehouse."""

    def __init__(self, settings: Settings, engine: Engine | None) -> None:
        self.settings = settings
        self.engine = engine
        self.version = 0
        self.closing = threading.Event()  # set when the server stops: the event streams end
        self._lock = threading.RLock()
        self._schemes = {s.name: s for s in load_schemes(engine, settings)}
        self._members: dict[tuple[str, str], list[Member]] = {}
        self._good: dict[tuple[str, str, int], Preview] = {}
        self._policy: Policy | None = None
        self.problems: list[Problem] = []
        self.refresh()

    # -- reading ---------------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Read the policy and run `templates check` again (after a save); the pages re-render."""
        with self._lock:
            policy, _ = parse_policy(self.settings.policy_file)
            if policy is not None:
                self._policy = policy
            self.problems = [Problem.of(i) for i in check_templates(self.settings)]
            self.version += 1

    def scheme(self, name: str) -> SchemeInfo:
        found = self._schemes.get(name)
        if found is None:
            raise NotFoundError(f"no scheme {name!r}", fix=f"use one of: {', '.join(self._schemes)}")
        return found

    def resolved(self, scheme: str, segment: str) -> ResolvedPolicy:
        info = self.scheme(scheme)
        if segment not in info.segments:
            raise NotFoundError(
                f"scheme {scheme!r} has no segment {segment!r}", fix=f"use one of: {', '.join(info.segments)}"
            )
        if self._policy is None:
            raise NotFoundError("the policy has never been valid", fix="correct the problems listed")
        return self._policy.for_segment(scheme, segment)

    def members(self, scheme: str, segment: str) -> list[Member]:
        with self._lock:
            key = (scheme, segment)
            if key not in self._members:
                self._members[key] = sample_members(self.settings, self.engine, self.scheme(scheme), segment)
            return self._members[key]

    def catalog(self) -> dict[str, Any]:
        """Every scheme and segment: size at the latest snapshot, template, offer, holdout, destinations."""
        with self._lock:
            schemes = []
            for info in self._schemes.values():
                segments = []
                for seg in info.segments:
                    entry: dict[str, Any] = {"name": seg, "size": info.sizes.get(seg, 0)}
                    if self._policy is not None:
                        r = self._policy.for_segment(info.name, seg)
                        entry.update(
                            template=r.template,
                            offer=r.offer.describe(),
                            holdout=r.holdout_share,
                            destinations=list(r.destinations),
                            suppressed=r.suppress,
                        )
                    segments.append(entry)
                as_of = info.as_of.isoformat() if info.as_of else None
                schemes.append(
                    {"name": info.name, "as_of": as_of, "customers": info.customers, "segments": segments}
                )
            return {"version": self.version, "schemes": schemes, "problems": self._problems()}

    def _problems(self) -> list[dict[str, Any]]:
        return [p.as_dict() for p in self.problems]

    def _as_of(self, scheme: str) -> date:
        return self.scheme(scheme).as_of or date.today()

    def preview(self, scheme: str, segment: str, member: int) -> dict[str, Any]:
        """The segment's email for its ``member``-th sample member; when the render fails, the error and
        the last good render (``stale``)."""
        with self._lock:
            resolved = self.resolved(scheme, segment)
            members = self.members(scheme, segment)
            chosen = members[min(max(member, 0), len(members) - 1)]
            out: dict[str, Any] = {
                "version": self.version,
                "members": [m.label for m in members],
                "member": members.index(chosen),
                "suppressed": resolved.suppress,
                "template": resolved.template,
                "problems": self._problems(),
                "error": None,
                "stale": False,
            }
            key = (scheme, segment, out["member"])
            try:
                preview, _ = render_preview(self.settings, resolved, self._as_of(scheme), chosen)
                self._good[key] = preview
            except RenderError as exc:
                out["error"] = Problem.of(exc).as_dict()
                out["stale"] = key in self._good
            good = self._good.get(key)
            out["email"] = good.as_dict() if good is not None else None
            return out

    # -- the one write: a test message into the local outbox -------------------------------------------

    def send_test(self, scheme: str, segment: str, member: int) -> Path:
        """Write the member's email as a ``.eml`` under the outbox's test folder; nothing else is sent.

        Raises:
            RenderError: the template fails now (no half-right message is written).
        """
        with self._lock:
            resolved = self.resolved(scheme, segment)
            members = self.members(scheme, segment)
            chosen = members[min(max(member, 0), len(members) - 1)]
            as_of = self._as_of(scheme)
            _, email = render_preview(self.settings, resolved, as_of, chosen)
            campaign, row = campaign_and_member(self.settings, resolved, as_of, chosen)
            spec = CampaignSpec(
                campaign_id=campaign["campaign_id"],
                campaign_key=campaign["campaign_id"].rsplit("-v", 1)[0],
                version=1,
                as_of=as_of,
                scheme=scheme,
                segment=segment,
                subject=resolved.subject,
                offer_type=resolved.offer.type,
                offer=resolved.offer.model_dump(mode="json"),
            )
            audience = AudienceMember(
                customer_id=chosen.customer_id,
                email=chosen.email or self.settings.brand.from_email,
                first_name=chosen.first_name or "",
                campaign_id=spec.campaign_id,
                segment=segment,
                coupon_code=row["coupon_code"],
                fields={},
            )
            outbox = OutboxDestination(self.settings, self.settings.resolved_outbox_dir / TEST_FOLDER)
            return outbox.write_message(spec, audience, email)
