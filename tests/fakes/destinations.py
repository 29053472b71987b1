"""Each destination with a way to look inside it (the fake server's state, or the outbox folder), so one
contract suite can check all of them the same way."""

from __future__ import annotations

import email
import re
from contextlib import closing
from dataclasses import dataclass, field
from datetime import date
from email import policy
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from sqlalchemy.engine import Engine

from activation.settings import HubSpotSettings, MailchimpSettings, Settings
from connectors.base import Destination
from connectors.http import RetryPolicy
from connectors.hubspot import HubSpotDestination, list_name
from connectors.mailchimp import MailchimpDestination
from connectors.outbox import OutboxDestination
from connectors.registry import get_destination
from connectors.result import SyncResult
from connectors.sync import SyncOptions, sync_audience
from tests.fakes.hubspot import FakeHubSpot
from tests.fakes.mailchimp import FakeMailchimp

FAST_RETRY = RetryPolicy(max_retries=8, base_delay=0.01, max_delay=0.2)


def sync_named(
    engine: Engine,
    settings: Settings,
    name: str,
    as_of: date | None = None,
    scheme: str | None = None,
    **options: Any,
) -> SyncResult:
    """A sync to the destination ``name`` as ``activation sync`` builds it from ``settings`` (closed after)."""
    with closing(get_destination(name, settings)) as dest:
        return sync_audience(engine, settings, dest, SyncOptions(as_of, scheme, **options))


@dataclass
class DestinationUnderTest:
    """A destination plus read access to what it holds."""

    name: str
    settings: Settings
    server: Any = None
    _dest: Destination | None = field(default=None, repr=False)

    def make(self, **overrides: Any) -> Destination:
        if self.name == "outbox":
            d: Destination = OutboxDestination(self.settings)
        elif self.name == "mailchimp":
            d = MailchimpDestination(
                self.settings.mailchimp.model_copy(update=overrides), self.settings.brand, retry=FAST_RETRY
            )
        else:
            d = HubSpotDestination(self.settings.hubspot.model_copy(update=overrides), retry=FAST_RETRY)
        self.close()
        self._dest = d
        return d

    def close(self) -> None:
        """Close the destination made last (its HTTP connections), if any."""
        if self._dest is not None:
            self._dest.close()

    def writes(self) -> int:
        if self.server is not None:
            return self.server.write_calls
        return self._dest.stats.writes if self._dest else 0

    def requests(self) -> int:
        if self.server is not None:
            return self.server.calls
        return self._dest.stats.writes + self._dest.stats.reads if self._dest else 0

    def audience(self, segment: str, as_of: Any = None) -> set[str]:
        """Emails the destination currently targets for ``segment`` (tag, list, or the audience file of
        the ``as_of`` quarter in the outbox)."""
        if self.name == "mailchimp":
            return self.server.segment_members(segment)
        if self.name == "hubspot":
            return self.server.list_emails(list_name(segment))
        out: set[str] = set()
        root = self._outbox() / as_of.isoformat() if as_of else self._outbox()
        for csv in root.rglob("audience.csv"):
            rows = csv.read_text().splitlines()[1:]
            out |= {r.split(",")[1] for r in rows if r.split(",")[3] == segment}
        return out

    def contacts(self) -> set[str]:
        if self.name == "mailchimp":
            return set(self.server.members)
        if self.name == "hubspot":
            return set(self.server.by_email)
        return {addr for msg in self.messages() for addr in [msg["To"].addresses[0].addr_spec]}

    def messages(self) -> list[Any]:
        return [
            email.message_from_bytes(p.read_bytes(), policy=policy.default)
            for p in sorted(self._outbox().rglob("*.eml"))
        ]

    def delivered(self) -> dict[str, set[str]]:
        """segment -> emails that received (or, for drafts in the outbox, would receive) its message."""
        if self.name == "mailchimp":
            out: dict[str, set[str]] = {}
            for title, emails in self.server.sent_to().items():
                seg = re.match(r"\S+ \S+ (.+) \[", title).group(1)  # type: ignore[union-attr]
                out.setdefault(seg, set()).update(emails)
            return out
        if self.name == "hubspot":
            return {}
        out = {}
        for csv in self._outbox().rglob("audience.csv"):
            rows = [r.split(",") for r in csv.read_text().splitlines()[1:]]
            folder = csv.parent
            for r in rows:
                if (folder / f"{r[0]}.eml").exists():
                    out.setdefault(r[3], set()).add(r[1])
        return out

    def _outbox(self) -> Path:
        return Path(self.settings.resolved_outbox_dir)


def configure(name: str, settings: Settings) -> DestinationUnderTest:
    """Start the fake for ``name`` (if any) and point ``settings`` at it."""
    if name == "mailchimp":
        server = FakeMailchimp().start()
        settings.mailchimp = MailchimpSettings(
            api_key=SecretStr(server.api_key), list_id=server.list_id, base_url=server.base_url
        )
        return DestinationUnderTest(name, settings, server)
    if name == "hubspot":
        server = FakeHubSpot().start()
        settings.hubspot = HubSpotSettings(token=SecretStr(server.token), base_url=server.url)
        return DestinationUnderTest(name, settings, server)
    return DestinationUnderTest(name, settings)
