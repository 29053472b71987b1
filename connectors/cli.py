"""``activation sync``: push the campaign plan to a destination (or print what it would do)."""

from __future__ import annotations

from datetime import date, datetime

import typer


def _parse_date(value: str | None, flag: str) -> date | None:
    from activation.errors import ConfigError

    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise ConfigError(
            f"{flag} must be a date YYYY-MM-DD, got {value!r}", fix=f"write it as e.g. {flag} 2025-06-30"
        ) from exc


def _parse_datetime(value: str | None) -> datetime | None:
    from activation.errors import ConfigError

    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError as exc:
        raise ConfigError(
            f"--schedule-at must be an ISO date-time (2024-04-02T09:00), got {value!r}",
            fix="write e.g. --schedule-at 2025-07-02T09:00 (UTC) or 2025-07-02T09:00+02:00",
        ) from exc


def register(app: typer.Typer) -> None:
    """Add this package's commands to ``app``."""

    @app.command("sync")
    def sync_cmd(
        destination: str = typer.Option("outbox", "--destination", "-d", help="outbox | mailchimp | hubspot"),
        as_of: str | None = typer.Option(
            None, "--as-of", help="Plan date YYYY-MM-DD (default: latest planned)."
        ),
        scheme: str | None = typer.Option(
            None, "--scheme", help="Segmentation scheme (default from settings)."
        ),
        dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan per segment; write nothing."),
        send: bool = typer.Option(
            False, "--send", help="Send each campaign after syncing (default: drafts)."
        ),
        schedule_at: str | None = typer.Option(
            None, "--schedule-at",
            help="Schedule each campaign: an ISO date-time, UTC unless it has an offset (2025-07-02T09:00+02:00).",
        ),
        force: bool = typer.Option(False, "--force", help="Override the guardrails."),
    ) -> None:
        """Sync audiences (tags, merge fields, lists) and campaigns to a destination, incrementally."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        import activation.cli as cli
        from activation.interrupt import on_interrupt
        from activation.settings import get_settings
        from activation.warehouse import get_engine
        from connectors.registry import NAMES
        from connectors.sync import sync_audience

        if destination not in NAMES:
            from activation.errors import ConfigError

            raise ConfigError(f"unknown destination {destination!r}", fix=f"use one of: {', '.join(NAMES)}")
        settings = get_settings()
        engine = get_engine(settings, create=False)
        progress = Progress(
            TextColumn(f"syncing to {destination}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=cli.console,
            transient=True,
        )
        task = progress.add_task("sync", total=None)
        confirmed = [0]

        def advance(n: int) -> None:
            confirmed[0] += n
            progress.advance(task, n)

        def interrupted() -> str:
            if not confirmed[0]:
                return f"interrupted; nothing was synced to {destination}; run the same command again"
            return (
                f"interrupted; {confirmed[0]:,} member(s) were synced to {destination} and are recorded; "
                "run the same command again to finish: it writes only what is left"
            )

        if not dry_run:
            on_interrupt(interrupted)
        with progress:
            result = sync_audience(
                engine,
                settings,
                destination,
                _parse_date(as_of, "--as-of"),
                scheme,
                dry_run=dry_run,
                send=send,
                schedule_at=_parse_datetime(schedule_at),
                force=force,
                on_total=lambda n: progress.update(task, total=n),
                on_progress=advance,
            )
        print_result(cli.console, result)


def print_result(console: object, result: object) -> None:
    """A per-segment table of the plan (dry run) or of what was done, then totals."""
    from rich.table import Table

    from connectors.sync import SyncResult

    assert isinstance(result, SyncResult)
    title = "dry run (nothing written)" if result.dry_run else f"sync {result.status}"
    t = Table(title=f"{result.destination} · {result.scheme} · {result.as_of} — {title}")
    headers = (
        "segment", "members", "previous", "holdout", "adds", "updates", "unchanged", "tag +", "tag −", "skips",
        "API calls",
    )
    rows = []
    for s in sorted(result.segments.values(), key=lambda s: s.segment):
        skips = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sorted(s.skips.items())) or "-"
        rows.append([
            s.segment, str(s.members), str(s.previous), str(s.holdout), str(s.adds), str(s.updates),
            str(s.unchanged), str(s.tag_adds), str(s.tag_removes), skips, str(s.api_calls),
        ])
    # no segment name, number or header word is ever cut to '…' on a narrow terminal (a log, a cron mail):
    # the table is printed wider instead
    for i, col in enumerate(headers):
        widest = max([len(r[i]) for r in rows] + [len(w) for w in col.split()], default=1)
        t.add_column(col, justify="left" if col in ("segment", "skips") else "right", min_width=widest)
    for row in rows:
        t.add_row(*row)
    from rich.measure import Measurement

    needed = Measurement.get(console, console.options, t).minimum  # type: ignore[attr-defined,arg-type]
    console.print(t, width=max(console.width, needed), crop=False)  # type: ignore[attr-defined]
    if result.dry_run:
        console.print(f"API calls (estimated): {result.api_calls}")  # type: ignore[attr-defined]
    else:
        console.print(  # type: ignore[attr-defined]
            f"members ok {result.ok} · skipped {result.skipped} · failed {result.failed} · "
            f"calls {result.api_calls} ({result.write_calls} writes) · {result.seconds:.1f}s"
        )
        for cid, status in sorted(result.campaigns.items()):
            console.print(f"campaign {cid}: {status}")  # type: ignore[attr-defined]
    for v in result.guardrail_violations:
        console.print(f"[yellow]guardrail:[/] {v}")  # type: ignore[attr-defined]
    for b in result.blockers:
        console.print(f"[red]a sync would stop here:[/] {b}", highlight=False, soft_wrap=True)  # type: ignore[attr-defined]
