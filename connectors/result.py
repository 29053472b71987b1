"""What a sync does (or, in a dry run, would do) to each segment, and what it did in the end."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from connectors.base import CampaignStatus, SyncStatus

_COUNTS = (
    "segment",
    "campaign_id",
    "members",
    "previous",
    "holdout",
    "adds",
    "updates",
    "unchanged",
    "tag_adds",
    "tag_removes",
    "api_calls",
)


@dataclass
class SegmentChange:
    """What a sync does (or, in a dry run, would do) to one segment."""

    segment: str
    campaign_id: str | None = None
    members: int = 0  # reachable treated members now
    previous: int = 0  # members at the last sync that ran to its end (the guardrails' baseline)
    holdout: int = 0
    adds: int = 0
    updates: int = 0
    unchanged: int = 0
    tag_adds: int = 0
    tag_removes: int = 0
    skips: Counter[str] = field(default_factory=Counter)
    api_calls: int = 0

    def as_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in _COUNTS}
        d["skips"] = dict(self.skips)
        return d


def segment_of(segments: dict[str, SegmentChange], segment: str) -> SegmentChange:
    """``segments[segment]``, added when the plan has no campaign for it (a segment only left behind)."""
    return segments.setdefault(segment, SegmentChange(segment=segment))


@dataclass
class SyncResult:
    """The outcome of :func:`connectors.sync.sync_audience` (a plan when ``dry_run``)."""

    sync_id: str | None
    destination: str
    as_of: date
    scheme: str
    dry_run: bool
    segments: dict[str, SegmentChange]
    api_calls: int  # estimated in a dry run, counted otherwise
    planned_calls: int = 0  # the plan's estimate (also after a real sync)
    setup_calls: int = 0  # the part of the estimate that belongs to no segment (set-up reads and writes)
    write_calls: int = 0
    read_calls: int = 0
    guardrail_violations: list[str] = field(default_factory=list)
    blockers: list[str] = field(default_factory=list)  # dry run: content problems a real sync stops on
    status: SyncStatus = "planned"
    ok: int = 0
    skipped: int = 0
    failed: int = 0
    campaigns: dict[str, CampaignStatus] = field(default_factory=dict)  # campaign_id -> status
    seconds: float = 0.0
    apply_seconds: float = 0.0  # time spent writing to the destination (the API-bound part)

    @property
    def skips(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for s in self.segments.values():
            total.update(s.skips)
        return total

    def summary(self) -> dict[str, Any]:
        return {
            "destination": self.destination,
            "as_of": self.as_of.isoformat(),
            "scheme": self.scheme,
            "dry_run": self.dry_run,
            "status": self.status,
            "api_calls": self.api_calls,
            "write_calls": self.write_calls,
            "read_calls": self.read_calls,
            "seconds": round(self.seconds, 3),
            "apply_seconds": round(self.apply_seconds, 3),
            "ok": self.ok,
            "skipped": self.skipped,
            "failed": self.failed,
            "campaigns": self.campaigns,
            "guardrail_violations": self.guardrail_violations,
            "blockers": self.blockers,
            "segments": {k: v.as_dict() for k, v in self.segments.items()},
        }
