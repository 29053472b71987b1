"""The studio's state: the schemes and their segments, the policy, the `templates check` problems and the
last good render of every email shown, brought up to date when a template or the policy is saved.

Every method takes the one lock: renders share the renderer's caches, and a save must not interleave with
a render that would then mix the old and the new file.
"""

from __future__ import annotations

import threading
from datetime import date
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from activation.errors import NotFoundError
from activation.settings import Settings
from activation.split import campaign_key
from campaigns.lint import check_templates
from campaigns.policy import Policy, PolicyIssue, ResolvedPolicy, parse_policy
from campaigns.render import RenderError, render_member
from connectors.base import AudienceMember, CampaignSpec
from connectors.outbox import OutboxDestination
from studio.catalog import Member, SchemeInfo, load_catalog
from studio.render import Preview, campaign_and_member, render_preview

#: The outbox folder test sends go to, apart from the campaigns a sync writes.
TEST_FOLDER = "studio-tests"


def problem(issue: PolicyIssue | RenderError) -> dict[str, Any]:
    """A `templates check` problem or a failed render as the page shows it: where, what, and the fix."""
    if isinstance(issue, RenderError):
        issue = PolicyIssue(issue.file or "", issue.line, issue.detail, issue.fix)
    return {"where": issue.where, "message": issue.message, "fix": issue.fix or ""}


def holdout_label(resolved: ResolvedPolicy) -> str:
    """The holdout as the policy states it: a share, or the power target `plan` sizes the share from."""
    target = resolved.holdout_target
    if target is None:
        return f"{resolved.holdout_share * 100:g} %"
    lift = (
        f"a {target.mde * 100:g}-point conversion lift"
        if target.mde is not None
        else f"{target.revenue_mde:g} more revenue per member"
    )
    return f"sized by plan to detect {lift} at {target.power * 100:g} % power (at most {target.max_share * 100:g} %)"


class Studio:
    """Everything the pages ask for, computed from the settings' templates, policy and warehouse."""

    def __init__(self, settings: Settings, engine: Engine | None) -> None:
        self.settings = settings
        self.engine = engine
        self.version = 0
        self.closing = threading.Event()  # set when the server stops: the event streams and checks end
        self._check_wanted = threading.Event()
        self._checker = threading.Thread(target=self._check_when_asked, name="studio-check", daemon=True)
        self._lock = threading.RLock()
        schemes, self._members = load_catalog(engine, settings)
        self._schemes = {s.name: s for s in schemes}
        self._good: dict[tuple[str, str, int], Preview] = {}
        self._policy: Policy | None = None
        self.problems: list[dict[str, Any]] = []
        self.refresh()

    # -- reading ---------------------------------------------------------------------------------------

    def refresh(self) -> None:
        """After a save: read the policy (the pages re-render at once), then run `templates check` again
        (the pages update its problems when it is done)."""
        self.reread_policy()
        self.recheck()

    def saved(self) -> None:
        """A file was saved: read the policy now (the pages re-render at once) and ask for a `templates
        check` in the background, so neither the watcher nor a page's render waits for it (saves that
        come while one runs make one more check)."""
        self.reread_policy()
        self._check_wanted.set()
        if not self._checker.is_alive():
            self._checker.start()

    def _check_when_asked(self) -> None:
        while not self.closing.is_set():
            if self._check_wanted.wait(0.2):
                self._check_wanted.clear()
                self.recheck()

    def reread_policy(self) -> None:
        """Read the policy again (an invalid one leaves the last valid one in force); the pages re-render."""
        with self._lock:
            policy, _ = parse_policy(self.settings.policy_file)
            if policy is not None:
                self._policy = policy
            self.version += 1

    def recheck(self) -> None:
        """Run `templates check` again; the pages show its problems."""
        problems = [problem(i) for i in check_templates(self.settings)]
        with self._lock:
            self.problems = problems
            self.version += 1

    def scheme(self, name: str) -> SchemeInfo:
        found = self._schemes.get(name)
        if found is None:
            raise NotFoundError(f"no scheme {name!r}", fix=f"use one of: {', '.join(self._schemes)}")
        return found

    def resolved(self, scheme: str, segment: str) -> ResolvedPolicy:
        self.members(scheme, segment)  # the scheme and segment exist
        if self._policy is None:
            raise NotFoundError("the policy has never been valid", fix="correct the problems listed")
        return self._policy.for_segment(scheme, segment)

    def members(self, scheme: str, segment: str) -> list[Member]:
        """The segment's sample members (read when the studio started)."""
        found = self._members.get((scheme, segment))
        if found is None:
            segments = ", ".join(self.scheme(scheme).segments)
            raise NotFoundError(
                f"scheme {scheme!r} has no segment {segment!r}", fix=f"use one of: {segments}"
            )
        return found

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
                            holdout=holdout_label(r),
                            destinations=list(r.destinations),
                            suppressed=r.suppress,
                        )
                    segments.append(entry)
                as_of = info.as_of.isoformat() if info.as_of else None
                schemes.append(
                    {"name": info.name, "as_of": as_of, "customers": info.customers, "segments": segments}
                )
            return {"version": self.version, "schemes": schemes, "problems": self.problems}

    def _chosen(self, scheme: str, segment: str, member: int) -> tuple[ResolvedPolicy, list[Member], Member]:
        """The segment's policy, its sample members and the ``member``-th of them (clamped to the list)."""
        resolved = self.resolved(scheme, segment)
        members = self.members(scheme, segment)
        return resolved, members, members[min(max(member, 0), len(members) - 1)]

    def _as_of(self, scheme: str) -> date:
        return self.scheme(scheme).as_of or date.today()

    def preview(self, scheme: str, segment: str, member: int) -> dict[str, Any]:
        """The segment's email for its ``member``-th sample member; when the render fails, the error and
        the last good render (``stale``)."""
        with self._lock:
            resolved, members, chosen = self._chosen(scheme, segment, member)
            out: dict[str, Any] = {
                "version": self.version,
                "members": [m.label for m in members],
                "member": members.index(chosen),
                "suppressed": resolved.suppress,
                "template": resolved.template,
                "problems": self.problems,
                "error": None,
                "stale": False,
            }
            key = (scheme, segment, out["member"])
            try:
                preview = render_preview(self.settings, resolved, self._as_of(scheme), chosen)
                self._good[key] = preview
            except RenderError as exc:
                out["error"] = problem(exc)
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
            resolved, _, chosen = self._chosen(scheme, segment, member)
            as_of = self._as_of(scheme)
            campaign, row = campaign_and_member(self.settings, resolved, as_of, chosen)
            email = render_member(self.settings, campaign, row)
            spec = CampaignSpec(
                campaign_id=campaign["campaign_id"],
                campaign_key=campaign_key(scheme, as_of, segment),
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
