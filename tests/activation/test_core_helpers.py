"""The small shared helpers of ``activation``: table names, chunks, time."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from activation.chunks import chunked
from activation.clock import end_of_day, utcnow
from activation.tables import source_table, split_table_name


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("orders", (None, "orders")),
        ("analytics.fct_orders", ("analytics", "fct_orders")),
        ("warehouse.analytics.fct_orders", ("warehouse.analytics", "fct_orders")),
    ],
)
def test_split_table_name_takes_the_table_after_the_last_dot(name, expected):
    assert split_table_name(name) == expected


def test_source_table_is_schema_qualified_and_skips_unset_columns():
    t = source_table("analytics.fct_orders", "order_id", "", "amount")
    assert (t.schema, t.name, [c.name for c in t.c]) == ("analytics", "fct_orders", ["order_id", "amount"])
    assert source_table("orders").schema is None


def test_chunked_covers_every_item_once_in_order():
    items = list(range(11))
    parts = chunked(items, 4)
    assert [list(p) for p in parts] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]
    assert chunked([], 4) == []
    with pytest.raises(ValueError, match="at least 1"):
        chunked(items, 0)


def test_end_of_day_is_the_last_instant_of_the_day():
    day = date(2024, 6, 30)
    last = end_of_day(day)
    assert last.date() == day and (last + timedelta(microseconds=1)) == datetime(2024, 7, 1)


def test_utcnow_is_naive_utc():
    now = utcnow()
    assert now.tzinfo is None
    assert abs(now - datetime.now(UTC).replace(tzinfo=None)) < timedelta(seconds=5)
