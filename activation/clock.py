"""Time as the warehouse stores it: naive UTC, and the day boundaries attribution is measured from."""

from __future__ import annotations

from datetime import UTC, date, datetime, time


def utcnow() -> datetime:
    """Now in UTC without a time zone (the warehouse's columns are naive UTC)."""
    return datetime.now(UTC).replace(tzinfo=None)


def end_of_day(day: date) -> datetime:
    """The last instant of ``day`` (23:59:59.999999): the send time of a backtest.

    An attribution window ``(end_of_day(as_of), end_of_day(as_of) + N days]`` then holds the whole of
    every day after ``as_of`` up to and including its last one, and nothing of ``as_of`` itself.
    """
    return datetime.combine(day, time.max)
