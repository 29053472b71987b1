"""Small order fixtures for the segmentation tests, written through SQLAlchemy (DuckDB and PostgreSQL)."""

from __future__ import annotations

import itertools
from datetime import date, datetime, time, timedelta

from sqlalchemy import insert
from sqlalchemy.engine import Engine

from activation.tables import contact_events, customers, orders

_ids = itertools.count(1)


def at(day: date | str, hh: int = 12, mm: int = 0, ss: int = 0) -> datetime:
    d = date.fromisoformat(day) if isinstance(day, str) else day
    return datetime.combine(d, time(hh, mm, ss))


def add_orders(engine: Engine, rows: list[tuple]) -> None:
    """rows: (customer_id, ordered_at, amount[, status[, order_id]])."""
    records = []
    for row in rows:
        cust, ts, amount = row[0], row[1], row[2]
        status = row[3] if len(row) > 3 else "Completed"
        oid = row[4] if len(row) > 4 else f"o{next(_ids)}"
        records.append(
            {"order_id": oid, "customer_id": cust, "ordered_at": ts, "amount": amount, "status": status}
        )
    with engine.begin() as conn:
        conn.execute(insert(orders), records)


def add_customers(engine: Engine, ids: list[str]) -> None:
    with engine.begin() as conn:
        conn.execute(insert(customers), [{"customer_id": c, "unsubscribed": False} for c in ids])


def add_events(engine: Engine, rows: list[tuple[str, datetime]]) -> None:
    with engine.begin() as conn:
        conn.execute(
            insert(contact_events),
            [
                {"event_id": f"e{next(_ids)}", "customer_id": c, "event_type": "ticket", "occurred_at": t}
                for c, t in rows
            ],
        )


def grid_orders(as_of: date) -> list[tuple]:
    """25 customers ``g<R><F>`` whose quintile scores are exactly R (recency) and F (frequency):
    recency (5 - R) * 10 days, F orders of 10.0 each."""
    rows = []
    for r in range(1, 6):
        for f in range(1, 6):
            day = as_of - timedelta(days=(5 - r) * 10)
            rows += [(f"g{r}{f}", at(day), 10.0)] * f
    return rows
