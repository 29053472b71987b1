"""The ``as_of`` of a run: default, parsing, and the refusal of dates in the future."""

from __future__ import annotations

from datetime import date

from activation.errors import InputError
from activation.settings import Settings, today_in


def last_quarter_end(today: date) -> date:
    """The last day of the last full quarter before ``today`` (2026-05-10 -> 2026-03-31)."""
    from segments.snapshots import last_quarter_end as shared

    return shared(today)


def parse_as_of(value: date | str | None) -> date | None:
    """Accept a date, an ISO string or nothing."""
    if value is None or isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value).strip())
    except ValueError as exc:
        raise InputError(f"--as-of {value!r} is not a date", fix="write it as YYYY-MM-DD") from exc


def resolve_as_of(value: date | str | None, settings: Settings, today: date | None = None) -> date:
    """``value`` as a date, defaulting to the end of the last full quarter; never in the future.

    Raises:
        InputError: the value is not a date or lies after today.
    """
    today = today or today_in(settings)
    as_of = parse_as_of(value)
    if as_of is None:
        return last_quarter_end(today)
    if as_of > today:
        raise InputError(
            f"as_of {as_of.isoformat()} is in the future (today is {today.isoformat()}); "
            "segments and outcomes need orders that already happened",
            fix="pass a date on or before today, or leave --as-of out for the end of the last full quarter",
        )
    return as_of


def period_label(as_of: date) -> str:
    """A short label for keys: ``2025q4`` for a quarter end, else ``2025-11-14``."""
    if last_quarter_end(date.fromordinal(as_of.toordinal() + 1)) == as_of:
        return f"{as_of.year}q{(as_of.month - 1) // 3 + 1}"
    return as_of.isoformat()
