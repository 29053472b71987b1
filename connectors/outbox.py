"""The local outbox: the default destination, no credentials, the whole cycle on a laptop.

Layout under ``settings.resolved_outbox_dir``::

    <as_of>/<scheme>/<campaign_id>/audience.csv        who the campaign reaches (treated, reachable)
    <as_of>/<scheme>/<campaign_id>/<customer_id>.eml   one rendered message per member (HTML + text)

Every file is written atomically (temporary file + rename), so a killed sync never leaves half a file;
like the API destinations it is incremental (only changed members' messages are rewritten) and
"sending" only marks the campaign as sent at the end of the ``as_of`` day (a backtest simulation).
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from email.header import Header
from email.utils import format_datetime, formataddr
from pathlib import Path
from typing import Any

from activation.clock import end_of_day
from activation.emails import unsubscribe_url
from activation.errors import ConfigError
from activation.files import atomic_write, csv_writer
from activation.settings import Settings
from connectors.base import (
    AudienceMember,
    CallStats,
    CampaignSpec,
    Journal,
    MemberChange,
    MemberResult,
    OutcomeEvent,
    SuppressionEvent,
    SyncPlan,
)

_SAFE = re.compile(r"[^A-Za-z0-9._-]")
BATCH = 500


def _safe(name: str) -> str:
    return _SAFE.sub("_", name)[:120] or "_"


class OutboxDestination:
    """Writes audience files and per-member ``.eml`` messages into a folder."""

    name = "outbox"
    state_includes_campaign = True

    def __init__(self, settings: Settings, root: Path | None = None) -> None:
        self.settings = settings
        self.root = Path(root or settings.resolved_outbox_dir)
        self.stats = CallStats()
        self._made: set[Path] = set()  # campaign folders created during this apply
        self._headers: dict[str, _CampaignHeaders] = {}

    def campaign_dir(self, campaign: CampaignSpec) -> Path:
        return self.root / campaign.as_of.isoformat() / _safe(campaign.scheme) / _safe(campaign.campaign_id)

    def _folder(self, campaign: CampaignSpec) -> Path:
        """The campaign's folder, created once per apply (not once per message)."""
        folder = self.campaign_dir(campaign)
        if folder not in self._made:
            folder.mkdir(parents=True, exist_ok=True)
            self._made.add(folder)
        return folder

    # --- protocol ---------------------------------------------------------------------------------

    def plan(self, plan: SyncPlan) -> dict[str, int]:
        out: dict[str, int] = {}
        touched: set[str] = set()
        for c in plan.changes:
            if c.member is not None:
                out[c.member.segment] = out.get(c.member.segment, 0) + 1
                touched.add(c.member.campaign_id)
            elif c.tag_remove and plan.campaign(c.old_campaign_id or ""):
                out[c.tag_remove] = out.get(c.tag_remove, 0) + 1
                touched.add(c.old_campaign_id or "")
        for camp in plan.campaigns:
            if camp.campaign_id in touched or not (self.campaign_dir(camp) / "audience.csv").exists():
                out[camp.segment] = out.get(camp.segment, 0) + 1
        return out

    def apply(self, plan: SyncPlan, journal: Journal) -> None:
        if plan.content is None:
            raise ConfigError("the outbox needs a content provider to render messages")
        self.root.mkdir(parents=True, exist_ok=True)
        self._made.clear()
        touched: set[str] = set()
        batch: list[MemberResult] = []
        for change in plan.changes:
            batch.append(self._apply_one(plan, change, touched))
            if len(batch) >= BATCH:
                journal.confirmed(batch)
                batch = []
        journal.confirmed(batch)
        for camp in plan.campaigns:
            path = self.campaign_dir(camp) / "audience.csv"
            if camp.campaign_id in touched or not path.exists():
                atomic_write(path, self._audience_csv(plan.audiences.get(camp.campaign_id, [])))
                self.stats.add(write=True)
        self._publish(plan, journal)

    def _apply_one(self, plan: SyncPlan, change: MemberChange, touched: set[str]) -> MemberResult:
        m = change.member
        old = plan.campaign(change.old_campaign_id or "")
        if old is not None and (m is None or old.campaign_id != m.campaign_id):
            stale = self.campaign_dir(old) / f"{_safe(change.customer_id)}.eml"
            if stale.exists():
                stale.unlink()
                self.stats.add(write=True)
            touched.add(old.campaign_id)
        if m is None:
            return MemberResult(change, "ok", "remove")
        camp = plan.campaign(m.campaign_id)
        assert camp is not None and plan.content is not None
        content = plan.content.for_member(camp, m)
        path = self._folder(camp) / f"{_safe(m.customer_id)}.eml"
        atomic_write(path, self._eml(camp, m, content), mkdir=False)
        self.stats.add(write=True)
        touched.add(camp.campaign_id)
        return MemberResult(change, "ok", change.kind)

    def _publish(self, plan: SyncPlan, journal: Journal) -> None:
        for camp in plan.campaigns:
            rc = journal.remote_campaign(camp.campaign_id)
            remote_id = str(self.campaign_dir(camp).relative_to(self.root))
            if rc is not None and rc.status in ("sent", "scheduled"):
                continue
            if plan.send or plan.schedule_at:
                if journal.campaign_sent_before(camp):
                    journal.log(
                        camp.campaign_id,
                        "send",
                        "skipped",
                        "an earlier version of this campaign was already sent",
                    )
                    continue
                journal.record_campaign(camp.campaign_id, remote_id, "sent", end_of_day(camp.as_of))
                journal.log(camp.campaign_id, "send", "ok")
            elif rc is None:
                journal.record_campaign(camp.campaign_id, remote_id, "draft", None)

    def read_outcomes(
        self, engine: Any, campaign_ids: Sequence[str], since: datetime | None = None
    ) -> Iterator[OutcomeEvent]:
        """The outbox sends nothing, so it observes nothing: outcomes come from the warehouse alone."""
        return iter(())

    def read_suppressions(self, since: datetime | None) -> Iterator[SuppressionEvent]:
        return iter(())

    def close(self) -> None:
        pass

    # --- files ------------------------------------------------------------------------------------

    def write_message(self, camp: CampaignSpec, member: AudienceMember, content: Any) -> Path:
        """Write one member's message where and as :meth:`apply` would (``content`` has subject, html and
        text); returns its path. A test send writes one message alone this way."""
        path = self.campaign_dir(camp) / f"{_safe(member.customer_id)}.eml"
        atomic_write(path, self._eml(camp, member, content))
        return path

    @staticmethod
    def _audience_csv(members: Sequence[AudienceMember]) -> bytes:
        buf = io.StringIO()
        w = csv_writer(buf, lineterminator="\n")
        w.writerow(["customer_id", "email", "first_name", "segment", "coupon_code"])
        for m in members:
            w.writerow([m.customer_id, m.email, m.first_name, m.segment, m.coupon_code or ""])
        return buf.getvalue().encode()

    def _eml(self, camp: CampaignSpec, member: AudienceMember, content: Any) -> bytes:
        """One message as RFC 5322 bytes: ``multipart/alternative`` with a text and an HTML part (UTF-8,
        base64), ``List-Unsubscribe`` (+ one-click POST) headers.

        Assembled directly rather than through :mod:`email`'s generator (which cost more than rendering the
        templates): the campaign's fixed headers are built once, the rest per member. Parsing it with
        :mod:`email` gives the same message the ``email.mime`` classes would build.
        """
        h = self._headers.get(camp.campaign_id)
        if h is None:
            h = self._headers[camp.campaign_id] = _CampaignHeaders.of(self.settings, camp)
        msg_id = f"<{_safe(camp.campaign_id)}.{_safe(member.customer_id)}@{h.domain}>"
        to = (
            formataddr((member.first_name, member.email), charset="utf-8")
            if member.first_name
            else member.email
        )
        boundary = "===============" + hashlib.sha256(msg_id.encode()).hexdigest()[:19] + "=="
        head = (
            f'Content-Type: multipart/alternative; boundary="{boundary}"\n'
            "MIME-Version: 1.0\n"
            f"{h.from_line}"
            f"To: {_one_line(to)}\n"
            f"{h.reply_to_line}"
            f"Subject: {h.subject(content.subject)}\n"
            f"{h.date_line}"
            f"Message-ID: {msg_id}\n"
            f"List-Unsubscribe: <{unsubscribe_url(h.unsubscribe, member.email, camp.campaign_id)}>, "
            f"<mailto:{h.from_email}?subject=unsubscribe>\n"
            "List-Unsubscribe-Post: List-Unsubscribe=One-Click\n"
            f"X-Campaign-Id: {_one_line(camp.campaign_id)}\n"
            "\n"
        )
        return b"".join(
            (
                head.encode(),
                _part(boundary, "plain", content.text),
                _part(boundary, "html", content.html),
                f"--{boundary}--\n".encode(),
            )
        )


_BREAKS = re.compile(r"[\r\n]+[ \t]*")


def _one_line(value: str) -> str:
    """A header value on one line: no line break in a name can start another header."""
    return _BREAKS.sub(" ", str(value))


def _part(boundary: str, subtype: str, body: str) -> bytes:
    return (
        f'--{boundary}\nContent-Type: text/{subtype}; charset="utf-8"\nMIME-Version: 1.0\n'
        "Content-Transfer-Encoding: base64\n\n"
    ).encode() + base64.encodebytes(body.encode("utf-8"))


@dataclass(frozen=True)
class _CampaignHeaders:
    """The headers every message of one campaign shares, built once."""

    from_line: str
    reply_to_line: str
    date_line: str
    domain: str
    from_email: str
    unsubscribe: str  # the brand's unsubscribe URL (the member's token is added per message)
    subjects: dict[str, str]

    @classmethod
    def of(cls, settings: Settings, camp: CampaignSpec) -> _CampaignHeaders:
        brand = settings.brand
        return cls(
            from_line=f"From: {_one_line(formataddr((brand.from_name, brand.from_email), charset='utf-8'))}\n",
            reply_to_line=f"Reply-To: {_one_line(brand.reply_to)}\n" if brand.reply_to else "",
            date_line=f"Date: {format_datetime(end_of_day(camp.as_of))}\n",
            domain=brand.from_email.rpartition("@")[2] or "localhost",
            from_email=brand.from_email,
            unsubscribe=brand.unsubscribe_url,
            subjects={},
        )

    def subject(self, subject: str) -> str:
        """The encoded Subject value (RFC 2047, UTF-8), cached: most members of a campaign share it."""
        encoded = self.subjects.get(subject)
        if encoded is None:
            if len(self.subjects) > 1000:
                self.subjects.clear()
            encoded = self.subjects[subject] = Header(" ".join(str(subject).split()), "utf-8").encode()
        return encoded
