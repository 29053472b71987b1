"""``activation sync``: push the campaign plan to a destination (or print what it would do).

Settings, the warehouse, the sync and rich's progress bar are imported by the command, so
``activation --help`` does not load them.
"""

from __future__ import annotations

from contextlib import closing
from typing import TYPE_CHECKING

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from activation import console
from activation.dates import parse_date, parse_datetime
from activation.display import add_columns, print_table
from activation.errors import ConfigError
from activation.interrupt import on_interrupt

if TYPE_CHECKING:  # the sync engine (SQLAlchemy) is imported by the command, not by --help
    from connectors.result import SyncResult


def register(app: typer.Typer) -> None:
    """Add this package's commands to ``app``."""
    app.command("sync")(sync_command)


def sync_command(
    destination: str = typer.Option("outbox", "--destination", "-d", help="outbox | mailchimp | hubspot"),
    as_of: str | None = typer.Option(None, "--as-of", help="Plan date YYYY-MM-DD (default: latest planned)."),
    scheme: str | None = typer.Option(None, "--scheme", help="Segmentation scheme (default from settings)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan per segment; write nothing."),
    send: bool = typer.Option(False, "--send", help="Send each campaign after syncing (default: drafts)."),
    schedule_at: str | None = typer.Option(
        None,
        "--schedule-at",
        help="Schedule each campaign: an ISO date-time, UTC unless it has an offset (2025-07-02T09:00+02:00).",
    ),
    force: bool = typer.Option(False, "--force", help="Override the guardrails."),
    as_json: bool = typer.Option(
        False, "--json", help="Print one JSON document (docs/json.md); progress and logs go to stderr."
    ),
) -> None:
    """Sync audiences (tags, merge fields, lists) and campaigns to a destination, incrementally."""
    from activation.settings import get_settings
    from activation.warehouse import get_engine
    from connectors.registry import NAMES, check_destination, get_destination
    from connectors.sync import SyncOptions, sync_audience

    day, when = parse_date(as_of, "--as-of"), parse_datetime(schedule_at, "--schedule-at")
    if destination not in NAMES:
        raise ConfigError(f"unknown destination {destination!r}", fix=f"use one of: {', '.join(NAMES)}")
    settings = get_settings()
    check_destination(destination, settings)
    engine = get_engine(settings, create=False)
    progress = _SyncProgress(destination, console.err if as_json else console.out)
    if not dry_run:
        on_interrupt(progress.interrupted)
    options = SyncOptions(
        day,
        scheme,
        dry_run=dry_run,
        send=send,
        schedule_at=when,
        force=force,
        on_total=progress.total,
        on_progress=progress.advance,
    )
    with progress.bar, closing(get_destination(destination, settings)) as dest:
        result = sync_audience(engine, settings, dest, options)
    if as_json:
        console.print_json("sync", result.summary())
    else:
        print_result(console.out, result)


class _SyncProgress:
    """The progress bar of a sync and what Ctrl-C leaves behind: the members confirmed so far."""

    def __init__(self, destination: str, out: Console) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.destination = destination
        self.confirmed = 0
        self.bar = Progress(
            TextColumn(f"syncing to {destination}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=out,
            transient=True,
        )
        self.task = self.bar.add_task("sync", total=None)

    def total(self, n: int) -> None:
        self.bar.update(self.task, total=n)

    def advance(self, n: int) -> None:
        self.confirmed += n
        self.bar.advance(self.task, n)

    def interrupted(self) -> str:
        if not self.confirmed:
            return f"interrupted; nothing was synced to {self.destination}; run the same command again"
        return (
            f"interrupted; {self.confirmed:,} member(s) were synced to {self.destination} and are recorded; "
            "run the same command again to finish: it writes only what is left"
        )


def print_result(out: Console, result: SyncResult) -> None:
    """A per-segment table of the plan (dry run) or of what was done, then totals.

    Readable at 80 columns: no vertical rules, short headers (``before``: members at the last completed
    sync, the guardrails' baseline; ``same``: unchanged; ``tags``: tags added and removed; ``skips``:
    the reasons are listed under the table), no number or name ever cut. The ``calls`` column is the plan's estimate, with the destination's set-up calls on a
    row of their own, so it adds up to the total printed under it.
    """
    title = "dry run (nothing written)" if result.dry_run else f"sync {result.status}"
    t = Table(
        title=f"{result.destination} · {result.scheme} · {result.as_of} — {title}",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        show_edge=False,
        padding=(0, 1, 0, 0),
    )
    headers = ("segment", "members", "before", "holdout", "add", "update", "same", "tags", "skips", "calls")
    rows, reasons = [], []
    for s in sorted(result.segments.values(), key=lambda s: s.segment):
        if s.skips:
            reasons.append(
                f"{s.segment}: "
                + ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in sorted(s.skips.items()))
            )
        tags = (
            " ".join(
                p
                for p in (
                    f"+{s.tag_adds:,}" if s.tag_adds else "",
                    f"−{s.tag_removes:,}" if s.tag_removes else "",
                )
                if p
            )
            or "-"
        )
        rows.append(
            [
                s.segment,
                f"{s.members:,}",
                f"{s.previous:,}",
                f"{s.holdout:,}",
                f"{s.adds:,}",
                f"{s.updates:,}",
                f"{s.unchanged:,}",
                tags,
                f"{sum(s.skips.values()):,}",
                f"{s.api_calls:,}",
            ]
        )
    if result.setup_calls:
        rows.append(["(set-up)", "", "", "", "", "", "", "", "", f"{result.setup_calls:,}"])
    add_columns(t, headers, rows, wrap=(0, 7))
    for row in rows:
        t.add_row(*row)
    print_table(out, t)
    if reasons:
        out.print("skipped: " + "; ".join(reasons), highlight=False)
    if result.dry_run:
        out.print(f"API calls (estimated): {result.planned_calls:,}")
    elif result.status == "unchanged":
        out.print(
            f"nothing changed since the last sync to {result.destination}: no write, no run recorded "
            f"(calls {result.api_calls:,}: the suppressions read back)"
            if result.api_calls
            else f"nothing changed since the last sync to {result.destination}: no write, no run recorded",
            highlight=False,
        )
    else:
        out.print(
            f"members ok {result.ok:,} · skipped {result.skipped:,} · failed {result.failed:,} · "
            f"calls {result.api_calls:,} ({result.write_calls:,} writes; {result.planned_calls:,} estimated) · "
            f"{result.seconds:.1f}s",
            highlight=False,
        )
        for cid, status in sorted(result.campaigns.items()):
            out.print(f"campaign {cid}: {status}", highlight=False)
    for v in result.guardrail_violations:
        out.print(f"[yellow]guardrail:[/] {v}")
    for b in result.blockers:
        out.print(f"[red]a sync would stop here:[/] {b}", highlight=False, soft_wrap=True)
