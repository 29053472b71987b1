"""The ``as_of`` of a run: the end of the last full quarter by default, never a day in the future."""

from __future__ import annotations

from datetime import date

from activation.dates import parse_date
from activation.errors import InputError
from activation.settings import Settings, today_in
from segments.snapshots import last_quarter_end


def resolve_as_of(value: date | str | None, settings: Settings, today: date | None = None) -> date:
    """``value`` as a date, defaulting to the end of the last full quarter; never in the future.

    Raises:
        DateOptionError: the value is not a YYYY-MM-DD date.
        InputError: the date lies after today.
    """
    today = today or today_in(settings)
    if value is None:
        return last_quarter_end(today)
    as_of = parse_date(value, "--as-of")
    if as_of > today:
        raise InputError(
            f"as_of {as_of.isoformat()} is in the future (today is {today.isoformat()}); "
            "segments and outcomes need orders that already happened",
            fix="pass a date on or before today, or leave --as-of out for the end of the last full quarter",
        )
    return as_of
