"""The journal: commits what destinations confirm (``sync_state``, ``sync_log``, consent refusals, campaign
records) while a sync runs, and ends the run in ``sync_runs``."""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, update
from sqlalchemy.engine import Engine

from activation.chunks import chunked
from activation.clock import utcnow
from activation.tables import campaigns
from connectors import state as st
from connectors.base import (
    CallStats,
    CampaignSpec,
    CampaignStatus,
    MemberResult,
    MemberStatus,
    RemoteCampaign,
    SyncPlan,
    email_hash,
)
from connectors.result import SyncResult


@dataclass(frozen=True)
class CallCount:
    """The calls a destination makes from now on (its :class:`~connectors.base.CallStats` keep counting)."""

    stats: CallStats
    reads0: int
    writes0: int

    @classmethod
    def start(cls, stats: CallStats) -> CallCount:
        return cls(stats, stats.reads, stats.writes)

    def reads(self) -> int:
        return self.stats.reads - self.reads0

    def writes(self) -> int:
        return self.stats.writes - self.writes0


_FLUSH = object()  # queue marker: commit what is queued now


@dataclass
class _Confirmed:
    """One confirmed batch, queued for the writer (its sync log rows column-wise)."""

    states: list[st.StateRow]
    campaign_ids: list[str | None]
    customer_ids: list[str]
    operations: list[str]
    statuses: list[MemberStatus]
    errors: list[str | None]
    refusals: list[tuple[str, str]]


class WarehouseJournal:
    """Commits what destinations confirm: state + log + consent refusals, and campaign records.

    Writes go through one background thread, so API calls never wait for the warehouse. The thread
    gathers what is queued (lingering up to ``linger`` seconds for more, up to ``max_rows`` members) and
    commits it in one transaction with one bulk statement per table: a sync of a million members makes a
    few dozen statements rather than thousands of 500-row ones (each costs milliseconds in DuckDB, more as
    ``sync_state`` grows). ``flush()`` and ``close()`` commit at once; what was confirmed but not yet
    committed when a process dies is simply redone (every write is idempotent).
    """

    linger = 0.25
    max_rows = 50_000

    def __init__(
        self,
        engine: Engine,
        destination: str,
        sync_id: str,
        plan: SyncPlan,
        on_progress: Callable[[int], None] | None = None,
    ) -> None:
        self.engine = engine
        self.destination = destination
        self.sync_id = sync_id
        self.plan = plan
        self.on_progress = on_progress
        self.counts: Counter[str] = Counter()
        self._remote = st.load_remote_campaigns(engine, destination)
        self._queue: queue.Queue[Any] = queue.Queue()
        self._error: BaseException | None = None
        self._writer = threading.Thread(target=self._write_loop, name="sync-journal", daemon=True)
        self._writer.start()

    # --- the writer thread --------------------------------------------------------------------------

    def _gather(self) -> list[Any]:
        """The next items to commit: everything queued, lingering briefly for more."""
        items = [self._queue.get()]
        rows = len(items[0][0].states) if isinstance(items[0], tuple) and items[0][0] else 0
        deadline = time.monotonic() + self.linger
        while items[-1] is not None and items[-1] is not _FLUSH and rows < self.max_rows:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
            items.append(item)
            if isinstance(item, tuple) and item[0] is not None:
                rows += len(item[0].states)
        return items

    def _write_loop(self) -> None:
        stop = False
        while not stop:
            items = self._gather()
            stop = items[-1] is None
            work = [i for i in items if isinstance(i, tuple)]
            try:
                if work and self._error is None:
                    batches = [b for b, _, _ in work if b is not None]
                    with self.engine.begin() as conn:
                        if batches:
                            # one row per member (the last word wins), one timestamp per commit
                            states = {r.customer_id: r for b in batches for r in b.states}
                            st.save_state(conn, self.destination, list(states.values()))
                            st.write_log_columns(
                                conn,
                                {
                                    "sync_id": self.sync_id,
                                    "destination": self.destination,
                                    "campaign_id": [x for b in batches for x in b.campaign_ids],
                                    "customer_id": [x for b in batches for x in b.customer_ids],
                                    "operation": [x for b in batches for x in b.operations],
                                    "status": [x for b in batches for x in b.statuses],
                                    "error": [x for b in batches for x in b.errors],
                                    "logged_at": utcnow(),
                                },
                                sum(len(b.customer_ids) for b in batches),
                            )
                            refusals = [r for b in batches for r in b.refusals]
                            if refusals:
                                st.add_suppressions(conn, refusals, self.destination)
                        for _, fn, _ in work:
                            if fn is not None:
                                fn(conn)
                    if self.on_progress:
                        n = sum(k for _, _, k in work)
                        if n:
                            self.on_progress(n)
            except BaseException as exc:
                self._error = exc
            finally:
                for _ in items:
                    self._queue.task_done()

    def _enqueue(
        self, fn: Callable[[Any], None] | None, members: int = 0, batch: _Confirmed | None = None
    ) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put((batch, fn, members))

    def flush(self) -> None:
        """Wait until everything queued is committed."""
        self._queue.put(_FLUSH)
        self._queue.join()
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        if self._writer.is_alive():
            self._queue.put(None)
            self._writer.join()
        if self._error is not None:
            raise self._error

    # --- Journal ------------------------------------------------------------------------------------

    def confirmed(self, results: Sequence[MemberResult]) -> None:
        if not results:
            return
        states: list[st.StateRow] = []
        refusals: list[tuple[str, str]] = []
        counts = self.counts
        for r in results:
            c = r.change
            m = c.member
            counts[r.status] += 1
            eh = (m.email_sha256 if m is not None else None) or (email_hash(c.email) if c.email else None)
            if r.status == "ok":
                states.append(
                    st.StateRow(c.customer_id, eh, m.campaign_id if m else None, c.new_tags, c.new_hash)
                )
            elif r.status == "skipped":
                # a per-member refusal is final for this content: do not retry it until the member changes
                states.append(st.StateRow(c.customer_id, eh, c.campaign_id, [], c.new_hash))
                if r.suppress_reason and c.email:
                    refusals.append((c.email, r.suppress_reason))
        batch = _Confirmed(
            states,
            [r.change.campaign_id for r in results],
            [r.change.customer_id for r in results],
            [r.operation for r in results],
            [r.status for r in results],
            [r.error for r in results],
            refusals,
        )
        self._enqueue(None, len(results), batch)

    def remote_campaign(self, campaign_id: str) -> RemoteCampaign | None:
        return self._remote.get(campaign_id)

    def campaign_sent_before(self, campaign: CampaignSpec) -> bool:
        return campaign.campaign_key in st.sent_campaign_keys(
            self.engine, self._remote, [campaign.campaign_key]
        )

    def record_campaign(
        self, campaign_id: str, remote_id: str | None, status: CampaignStatus, sent_at: datetime | None
    ) -> None:
        rc = RemoteCampaign(campaign_id, remote_id, status, sent_at)
        self._remote[campaign_id] = rc

        def write(conn: Any) -> None:
            st.save_remote_campaign(conn, self.destination, rc)
            if sent_at is not None and status in ("sent", "scheduled"):
                conn.execute(
                    update(campaigns)
                    .where(and_(campaigns.c.campaign_id == campaign_id, campaigns.c.send_time.is_(None)))
                    .values(send_time=sent_at)
                )

        self._enqueue(write)
        if status in ("sent", "scheduled"):
            self.flush()  # a send must be on record before anything else happens

    def log(
        self, campaign_id: str | None, operation: str, status: MemberStatus, error: str | None = None
    ) -> None:
        row = {
            "sync_id": self.sync_id,
            "destination": self.destination,
            "campaign_id": campaign_id,
            "customer_id": None,
            "operation": operation,
            "status": status,
            "error": error,
            "logged_at": utcnow(),
        }
        self._enqueue(lambda conn: st.write_log(conn, [row]))

    def campaign_statuses(self) -> dict[str, CampaignStatus]:
        """campaign id -> its status at the destination, for the plan's campaigns."""
        planned = {c.campaign_id for c in self.plan.campaigns}
        return {cid: rc.status for cid, rc in self._remote.items() if cid in planned}


def log_skips(engine: Engine, destination: str, sync_id: str, skipped: list[tuple[str, str, str]]) -> None:
    """One ``skip`` row in ``sync_log`` per member the sync left out, with the reason (``no_email`` …)."""
    now = utcnow()
    rows = [
        {
            "sync_id": sync_id,
            "destination": destination,
            "campaign_id": camp,
            "customer_id": cid,
            "operation": "skip",
            "status": "skipped",
            "error": reason,
            "logged_at": now,
        }
        for camp, cid, reason in skipped
    ]
    with engine.begin() as conn:
        for part in chunked(rows, 50_000):
            st.write_log(conn, part)


def finish(
    engine: Engine,
    result: SyncResult,
    journal: WarehouseJournal,
    calls: CallCount,
    t0: float,
    error: str | None = None,
) -> None:
    """Fill ``result`` in from the journal's counts and the calls made, and end the run in ``sync_runs``."""
    result.write_calls, result.read_calls = calls.writes(), calls.reads()
    result.api_calls = result.write_calls + result.read_calls
    result.ok = journal.counts["ok"]
    result.skipped = journal.counts["skipped"] + sum(result.skips.values())
    result.failed = journal.counts["failed"]
    result.campaigns = journal.campaign_statuses()
    result.seconds = time.perf_counter() - t0
    summary = result.summary()
    if error:
        summary["error"] = error
    st.finish_run(engine, result.sync_id or "", result.status, summary)
