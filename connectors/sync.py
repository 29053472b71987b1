"""``sync_audience``: lock → read the audience → diff against ``sync_state`` → guardrails → apply → finish.

The plan is read from the warehouse (:mod:`connectors.audience`), diffed against what the destination last
received (:mod:`connectors.diff`), so only changes are written and a rerun with nothing changed writes
nothing; what the destination confirms is committed as it goes (:mod:`connectors.journal`).
"""

from __future__ import annotations

import gc
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import UTC, date, datetime

from sqlalchemy.engine import Engine

from activation.dialect import exclusive
from activation.errors import InputError
from activation.settings import Settings
from connectors import state as st
from connectors.audience import Audience, load_campaigns, planned_as_of, read_audience, read_suppressions
from connectors.base import ContentProvider, Destination, SyncPlan
from connectors.content import RenderContent, preflight
from connectors.diff import diff_audience, guardrails, nothing_to_do, stop_on_guardrails
from connectors.journal import CallCount, WarehouseJournal, finish, log_skips
from connectors.result import SyncResult, segment_of


def check_schedule_at(schedule_at: datetime | None) -> None:
    """Refuse a send time that has passed (a naive time is UTC) before anything is synced: the destination
    would refuse it only after the audiences were written."""
    if schedule_at is None:
        return
    when = schedule_at if schedule_at.tzinfo else schedule_at.replace(tzinfo=UTC)
    if when <= datetime.now(UTC):
        raise InputError(
            f"--schedule-at {when.isoformat()} is in the past",
            fix="give a future time (UTC unless it has an offset, e.g. 2025-07-02T09:00+02:00), or --send to send now",
        )


@dataclass(frozen=True)
class SyncOptions:
    """How one sync runs; the defaults make drafts of the latest plan of the default scheme."""

    as_of: date | None = None  # the plan's date (default: the latest planned for the scheme)
    scheme: str | None = None  # default: ``settings.default_scheme``
    dry_run: bool = False  # compute and return the plan: no request to the destination, no warehouse write
    send: bool = False  # send each campaign once its audience is synced (default: drafts)
    schedule_at: datetime | None = None  # schedule each campaign for then instead
    force: bool = False  # override the guardrails
    content: ContentProvider | None = None  # message content; default :mod:`campaigns.render`
    on_progress: Callable[[int], None] | None = None  # called with each number of members confirmed
    on_total: Callable[[int], None] | None = None  # called once with the number of members to change

    @classmethod
    def preview(
        cls, as_of: date | None = None, scheme: str | None = None, *, content: ContentProvider | None = None
    ) -> SyncOptions:
        """A dry run: what the sync would do per segment and which guardrails it trips."""
        return cls(as_of, scheme, dry_run=True, content=content)

    @classmethod
    def publish(
        cls,
        as_of: date | None = None,
        scheme: str | None = None,
        *,
        schedule_at: datetime | None = None,
        force: bool = False,
        content: ContentProvider | None = None,
    ) -> SyncOptions:
        """Sync, then send each campaign (or schedule it for ``schedule_at``)."""
        return cls(
            as_of, scheme, send=schedule_at is None, schedule_at=schedule_at, force=force, content=content
        )


def sync_audience(
    engine: Engine, settings: Settings, destination: Destination, options: SyncOptions = SyncOptions()
) -> SyncResult:
    """Bring ``destination`` in line with the campaign plan of ``options.as_of``/``options.scheme``; write
    only changes.

    Args:
        destination: a built destination (:func:`connectors.registry.get_destination`); the caller closes it.
            Its ``name`` is the one in ``sync_state``.
        options: what to sync and how (:class:`SyncOptions`).

    Returns:
        The per-segment plan and, unless ``options.dry_run``, what was done.

    Raises:
        NotFoundError: no plan for ``as_of``/``scheme``.
        GuardrailError: the source is empty or a segment swings too much (before any write; ``force``).
        FatalDestinationError: wrong credentials / list (before any write) or the destination failed mid-way.
        ConflictError: another sync to ``destination`` is running (nothing done; a dry run does not wait).
    """
    o = options
    with _one_sync_at_a_time(engine, destination.name, dry_run=o.dry_run):
        t0 = time.perf_counter()
        check_schedule_at(o.schedule_at)
        scheme = o.scheme or settings.default_scheme
        as_of = planned_as_of(engine, scheme, o.as_of)
        camps = load_campaigns(engine, as_of, scheme, destination.name)
        content = o.content or RenderContent(settings)
        blockers = preflight(content, camps, dry_run=o.dry_run)
        check = getattr(destination, "check_schedule", None)  # the destination's own rules, before any call
        if check is not None:
            check(o.schedule_at)
        calls = CallCount.start(destination.stats)
        suppressed = read_suppressions(engine, destination, read_back=not o.dry_run)
        with _collector_paused() as freeze:
            audience = read_audience(engine, settings, camps, suppressed)
            changes, first_sync = diff_audience(engine, settings, destination, scheme, audience)
            plan = SyncPlan(as_of, scheme, camps, audience.audiences, changes, content, o.send, o.schedule_at)
            freeze()
            result = _planned(settings, destination, plan, audience, first_sync, blockers, o.dry_run)
            if o.dry_run:
                result.seconds = time.perf_counter() - t0
                return result
            stop_on_guardrails(result, force=o.force)
            if nothing_to_do(engine, destination.name, plan):
                return _unchanged(result, calls, t0)
            return _apply(engine, destination, plan, audience, result, calls, t0, o)


def _one_sync_at_a_time(engine: Engine, destination: str, *, dry_run: bool) -> AbstractContextManager[object]:
    """One sync per destination at a time: two would both create (and, with ``send``, send) the same
    campaigns. A second one fails at once with ``ConflictError``; a dry run is never held up."""
    if dry_run:
        return nullcontext()
    return exclusive(engine, f"sync:{destination}", f"another sync to {destination}")


@contextmanager
def _collector_paused() -> Iterator[Callable[[], None]]:
    """The cyclic garbage collector paused; the callable it yields freezes what exists and resumes it.

    The plan is millions of small objects kept for the whole sync: the collector would walk them again and
    again while they are built (a third of the time at 1M members) and on every later collection. Paused
    while building; then frozen (out of its sight) until the sync ends.
    """
    was_enabled, froze = gc.isenabled(), False

    def freeze() -> None:
        nonlocal froze
        gc.freeze()
        froze = True
        if was_enabled:
            gc.enable()

    gc.disable()
    try:
        yield freeze
    finally:
        if froze:
            gc.unfreeze()
        if was_enabled:
            gc.enable()


def _planned(
    settings: Settings,
    destination: Destination,
    plan: SyncPlan,
    audience: Audience,
    first_sync: bool,
    blockers: list[str],
    dry_run: bool,
) -> SyncResult:
    """The plan as a result: the destination's estimate of calls per segment and the guardrails' verdict."""
    estimate = destination.plan(plan)
    for seg, n in estimate.items():
        if seg:
            segment_of(audience.segments, seg).api_calls = n
    violations = guardrails(audience.segments, settings.guardrail_max_change_share, first_sync=first_sync)
    return SyncResult(
        None,
        destination.name,
        plan.as_of,
        plan.scheme,
        dry_run,
        audience.segments,
        sum(estimate.values()),
        planned_calls=sum(estimate.values()),
        setup_calls=estimate.get("", 0),
        guardrail_violations=violations,
        blockers=blockers,
    )


def _unchanged(result: SyncResult, calls: CallCount, t0: float) -> SyncResult:
    """A rerun with nothing changed writes nothing: no call, no run, no second copy of the same skips."""
    result.status = "unchanged"
    for sp in result.segments.values():
        sp.api_calls = 0  # the estimate assumed campaigns to publish; none is
    result.planned_calls = result.setup_calls = 0
    result.read_calls = calls.reads()  # the suppressions read back
    result.api_calls = result.read_calls
    result.skipped = sum(result.skips.values())
    result.seconds = time.perf_counter() - t0
    return result


def _apply(
    engine: Engine,
    destination: Destination,
    plan: SyncPlan,
    audience: Audience,
    result: SyncResult,
    calls: CallCount,
    t0: float,
    options: SyncOptions,
) -> SyncResult:
    """Record a run, hand the plan to the destination with a journal, log the skips and end the run."""
    name = result.destination
    result.sync_id = sync_id = uuid.uuid4().hex
    st.start_run(engine, sync_id, name, plan.as_of, plan.scheme)
    journal = WarehouseJournal(engine, name, sync_id, plan, options.on_progress)
    if options.on_total:
        options.on_total(len(plan.changes))
    t_apply = time.perf_counter()
    try:
        try:
            destination.apply(plan, journal)
        finally:
            result.apply_seconds = time.perf_counter() - t_apply
            journal.close()
    except BaseException as exc:
        result.status = "failed"
        if audience.skipped and calls.writes() > 0:
            # skips belong to a sync that wrote something; one stopped before any write (wrong
            # credentials, missing list) leaves only its failed run behind
            log_skips(engine, name, sync_id, audience.skipped)
        error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        finish(engine, result, journal, calls, t0, error=error)
        raise
    if audience.skipped:
        log_skips(engine, name, sync_id, audience.skipped)
    result.status = "succeeded" if journal.counts["failed"] == 0 else "partial"
    finish(engine, result, journal, calls, t0)
    return result
