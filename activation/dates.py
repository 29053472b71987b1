"""The one parser of the date and date-time options (``--as-of``, ``--from``, ``--to``, ``--train-until``,
``--schedule-at``) and of the flows' ``as_of`` parameter, and its one error.

A date is written ``YYYY-MM-DD``, the way every help text and the deployment parameters' schema ask for it
(``20250630`` and ``2025-6-30`` are refused rather than read one way here and another there). A date-time is
ISO 8601 (``2025-07-02T09:00``, with an offset or ``Z`` when it is not UTC).
"""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import overload

from activation.errors import InputError

DATE_PATTERN = r"^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])$"
"""What a date option looks like, also the JSON-schema pattern of the flows' ``as_of`` parameter."""

_DATE_SHAPE = re.compile(r"\d{4}-\d{2}-\d{2}")


class DateOptionError(InputError):
    """A date or date-time option is not one; the message names the option and the value, the fix the form."""


@overload
def parse_date(value: str | date, option: str) -> date: ...
@overload
def parse_date(value: None, option: str) -> None: ...
def parse_date(value: str | date | None, option: str) -> date | None:
    """``value`` of ``option`` (e.g. ``"--as-of"``) as a date; ``None`` stays ``None``.

    Raises:
        DateOptionError: ``value`` is not a YYYY-MM-DD date.
    """
    if value is None or isinstance(value, date):
        return value
    text = str(value).strip()
    why = ""
    if _DATE_SHAPE.fullmatch(text):
        try:
            return date.fromisoformat(text)
        except ValueError as exc:
            why = f" ({exc})"  # e.g. "day is out of range for month"
    raise DateOptionError(
        f"{option} {value!r} is not a date{why}",
        fix=f"write {option} as YYYY-MM-DD, e.g. {option} 2025-06-30",
    )


@overload
def parse_datetime(value: str | datetime, option: str) -> datetime: ...
@overload
def parse_datetime(value: None, option: str) -> None: ...
def parse_datetime(value: str | datetime | None, option: str) -> datetime | None:
    """``value`` of ``option`` (e.g. ``"--schedule-at"``) as a date-time, naive when it has no offset (the
    caller says which zone that means); ``None`` stays ``None``.

    Raises:
        DateOptionError: ``value`` is not an ISO 8601 date-time.
    """
    if value is None or isinstance(value, datetime):
        return value
    try:
        return datetime.fromisoformat(str(value).strip())
    except ValueError:
        raise DateOptionError(
            f"{option} {value!r} is not a date-time",
            fix=f"write it in ISO 8601, e.g. {option} 2025-07-02T09:00 (UTC) or {option} 2025-07-02T09:00+02:00",
        ) from None
