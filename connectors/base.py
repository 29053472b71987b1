"""The one small interface every destination implements, and the plain data it exchanges with the sync.

The sync (:mod:`connectors.sync`) reads the campaign plan from the warehouse, diffs it against
``sync_state`` and hands a :class:`SyncPlan` of *changes* to a :class:`Destination`:

* ``plan(sync_plan)`` — how many API calls (or files) applying it would take, per segment; no I/O.
* ``apply(sync_plan, journal)`` — write the changes in the destination's own batch sizes and report each
  confirmed batch to the :class:`Journal`, which commits ``sync_state`` and ``sync_log`` right away (so a
  sync killed half-way resumes where it stopped); then create, send or schedule one campaign per segment.
* ``read_outcomes(engine, campaign_ids, since)`` — per-member events (sent, opened, clicked, unsubscribed, bounced).
* ``read_suppressions(since)`` — contacts the destination knows as unsubscribed or cleaned.

Batching, retries and concurrency live inside each destination: the sync never knows an API's limits.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from json.encoder import encode_basestring_ascii as _enc  # what json.dumps uses for str (ensure_ascii)
from typing import Any, Literal, Protocol, runtime_checkable

from activation.emails import RenderedEmail

# re-exported: the sync, the destinations and the tests import them from here
from activation.emails import email_hash as email_hash
from activation.emails import normalize_email as normalize_email
from campaigns.render import MERGE_FIELDS

#: how a destination answered one member's change; also the ``status`` of every ``sync_log`` row
MemberStatus = Literal["ok", "skipped", "failed"]
#: a sync as ``sync_runs`` records it (``running`` until it ends; ``partial``: some members failed) and, for a
#: run that records nothing, as its result reads (``planned``: a dry run; ``unchanged``: nothing to write)
SyncStatus = Literal["planned", "unchanged", "running", "succeeded", "partial", "failed"]
#: a campaign as ``destination_campaigns`` records it (``created``: made, its content not yet set)
CampaignStatus = Literal["created", "draft", "scheduled", "sent"]
#: what a member's change does: a new contact, a changed one, or one to untag
ChangeKind = Literal["add", "update", "remove"]


def merge_fields() -> dict[str, str]:
    """Per-member merge fields every destination receives (tag -> label), as :mod:`campaigns.render`
    defines them: Mailchimp merge fields, HubSpot contact properties."""
    return {tag: str(spec.get("name", tag)) for tag, spec in MERGE_FIELDS.items()}


def merge_field_defaults() -> dict[str, str]:
    """What a merge tag reads when a member has no value (tag -> default, e.g. FNAME -> 'there'), as
    :mod:`campaigns.render` uses it for the same member, so mail from a destination reads like the outbox."""
    return {tag: str(spec.get("default") or "") for tag, spec in MERGE_FIELDS.items()}


def state_hash(email: str, tags: Sequence[str], fields: Mapping[str, str], extra: str = "") -> str:
    """What a destination last received for one member, as a short stable hash.

    The sha256 of ``json.dumps([email, sorted(tags), sorted(fields.items()), extra], separators=(",", ":"))``;
    for string values the JSON is assembled directly (the same bytes, a fraction of the cost: it runs once
    per member per sync).
    """
    try:
        tag_list = ",".join([_enc(t) for t in sorted(tags)])
        field_list = ",".join([f"[{_enc(k)},{_enc(v)}]" for k, v in sorted(fields.items())])
        payload = f"[{_enc(normalize_email(email))},[{tag_list}],[{field_list}],{_enc(extra)}]"
    except TypeError:  # a value that is not a string: let json render it
        payload = json.dumps(
            [normalize_email(email), sorted(tags), sorted(fields.items()), extra], separators=(",", ":")
        )
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


Content = RenderedEmail  # one rendered email, as the content provider hands it to a destination


@dataclass(frozen=True)
class CampaignSpec:
    """One campaign of the plan (a row of ``campaigns``), as destinations see it."""

    campaign_id: str
    campaign_key: str
    version: int
    as_of: date
    scheme: str
    segment: str
    subject: str
    offer_type: str
    offer: dict[str, Any]
    row: Any = field(default=None, compare=False, repr=False)  # the raw row, for the content provider


@dataclass(frozen=True)
class AudienceMember:
    """A treated member of a campaign that is allowed to receive it (email valid, not suppressed)."""

    customer_id: str
    email: str
    first_name: str
    campaign_id: str
    segment: str
    coupon_code: str | None
    fields: dict[str, str]
    email_sha256: str | None = field(default=None, compare=False, repr=False)  # when already computed


@dataclass
class MemberChange:
    """What must change for one member in one destination.

    ``upsert``: the contact's fields must be written; ``tag_add`` / ``tag_remove``: segment tags (static
    segment, list) to add or remove. ``new_hash`` / ``new_tags`` become its ``sync_state`` once confirmed.
    """

    customer_id: str
    email: str
    kind: ChangeKind
    member: AudienceMember | None
    upsert: bool
    tag_add: str | None
    tag_remove: str | None
    new_hash: str
    new_tags: list[str]
    old_campaign_id: str | None = None

    @property
    def campaign_id(self) -> str | None:
        return self.member.campaign_id if self.member else self.old_campaign_id

    @property
    def segment(self) -> str | None:
        return self.member.segment if self.member else self.tag_remove


@dataclass
class MemberResult:
    """The outcome of one member's change: ``ok``, ``skipped`` (per-member refusal) or ``failed``."""

    change: MemberChange
    status: MemberStatus
    operation: str
    error: str | None = None
    suppress_reason: str | None = None  # e.g. 'unsubscribed' when the destination refused for consent


@dataclass(frozen=True)
class RemoteCampaign:
    """A campaign as recorded in ``destination_campaigns``."""

    campaign_id: str
    remote_id: str | None
    status: CampaignStatus
    sent_at: datetime | None = None


@dataclass(frozen=True)
class OutcomeEvent:
    """One per-member event read back from a destination (email kept only in memory, never stored)."""

    campaign_id: str
    customer_id: str | None
    event: str  # sent | opened | clicked | unsubscribed | bounced
    occurred_at: datetime | None
    email: str | None = None


@dataclass(frozen=True)
class SuppressionEvent:
    email: str
    reason: str  # unsubscribed | cleaned | bounced | complained


class ContentProvider(Protocol):
    """Where message content comes from (default: :mod:`campaigns.render`)."""

    def for_campaign(self, campaign: CampaignSpec) -> Content:
        """Merge-tag mode: one render for the whole segment."""
        ...

    def for_member(self, campaign: CampaignSpec, member: AudienceMember) -> Content:
        """Per-member mode: one render per recipient."""
        ...

    def preflight(self, campaign: CampaignSpec) -> None:
        """Raise (a ``TemplateError``) when ``campaign``'s content cannot be rendered as planned or lacks what
        every email must carry; called for every campaign before a sync sends or writes anything."""
        ...


@dataclass
class CallStats:
    """Calls a destination made (API requests or files written), thread-safe."""

    reads: int = 0
    writes: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, *, write: bool) -> None:
        with self._lock:
            if write:
                self.writes += 1
            else:
                self.reads += 1


@dataclass
class SyncPlan:
    """Everything a destination needs for one sync: the campaigns, their full audiences and the changes."""

    as_of: date
    scheme: str
    campaigns: list[CampaignSpec]
    audiences: dict[str, list[AudienceMember]]  # campaign_id -> members to reach
    changes: list[MemberChange]
    content: ContentProvider | None = None
    send: bool = False
    schedule_at: datetime | None = None

    def campaign(self, campaign_id: str) -> CampaignSpec | None:
        return next((c for c in self.campaigns if c.campaign_id == campaign_id), None)


class Journal(Protocol):
    """How a destination reports progress; implemented by the sync (commits to the warehouse)."""

    def confirmed(self, results: Sequence[MemberResult]) -> None:
        """A batch was confirmed by the destination: commit its state and log now."""
        ...

    def remote_campaign(self, campaign_id: str) -> RemoteCampaign | None: ...

    def record_campaign(
        self, campaign_id: str, remote_id: str | None, status: CampaignStatus, sent_at: datetime | None
    ) -> None: ...

    def campaign_sent_before(self, campaign: CampaignSpec) -> bool:
        """True when any version of this campaign was already sent or scheduled here."""
        ...

    def log(
        self, campaign_id: str | None, operation: str, status: MemberStatus, error: str | None = None
    ) -> None: ...


@runtime_checkable
class Destination(Protocol):
    """A place audiences and campaigns go. See the module docstring for the life cycle."""

    name: str
    stats: CallStats
    #: when true, a member's state also depends on the campaign (the outbox writes one file per campaign)
    state_includes_campaign: bool

    def plan(self, plan: SyncPlan) -> dict[str, int]:
        """Estimated calls per segment (key ``""`` for set-up calls), without any I/O."""
        ...

    def apply(self, plan: SyncPlan, journal: Journal) -> None:
        """Write the changes (committing each confirmed batch to ``journal``), then publish campaigns.

        Raises:
            FatalDestinationError: before any write when credentials or the list are wrong; mid-way when
                the destination stops accepting calls (confirmed batches stay committed).
        """
        ...

    def read_outcomes(
        self, engine: Any, campaign_ids: Sequence[str], since: datetime | None = None
    ) -> Iterator[OutcomeEvent]:
        """Per-member events of these campaigns (plan ids; remote ids come from ``destination_campaigns``
        in ``engine``), with the customer id resolved through ``sync_state`` when known."""
        ...

    def read_suppressions(self, since: datetime | None) -> Iterator[SuppressionEvent]:
        """Contacts the destination holds as unsubscribed / cleaned (changed since ``since``)."""
        ...

    def close(self) -> None: ...
