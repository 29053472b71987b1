"""What the studio shows around the emails: every scheme with its latest snapshot and segment sizes, and
sample members of each segment — read from the warehouse, which the studio never writes to.

The warehouse is opened read-only (:func:`activation.warehouse.make_engine` with ``read_only=True``) and
read once, when the studio starts (:func:`load_catalog`); the engine is disposed of then, so a DuckDB file is
let go and `activation segment` or a flow can write it while the studio runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.engine import Engine

from activation.settings import Settings
from activation.tables import customers, rfm_snapshots
from activation.warehouse import duckdb_file, has_table, make_engine
from campaigns.policy import scheme_segments
from campaigns.preview import MADE_UP_MEMBER
from segments.schemes import list_schemes
from segments.snapshots import latest_snapshot_as_of, segment_summary

#: Members offered per segment (the first ones by customer id), besides one without a first name.
SAMPLES = 5
#: How far down the segment a member without a first name is looked for.
NAMELESS_AMONG = 1000


@dataclass(frozen=True)
class Member:
    """A member the studio renders a segment's email for."""

    customer_id: str
    first_name: str | None
    email: str | None
    note: str = ""  # why this member is offered ("no first name", "made-up")

    @property
    def label(self) -> str:
        name = self.first_name or "no first name"
        return f"{self.customer_id} ({name}){' — ' + self.note if self.note else ''}"

    def as_row(self) -> dict[str, Any]:
        return {"customer_id": self.customer_id, "first_name": self.first_name, "email": self.email}


@dataclass
class SchemeInfo:
    """A scheme, its latest snapshot and each segment's size in it (0 without a snapshot)."""

    name: str
    as_of: date | None
    segments: list[str]
    sizes: dict[str, int] = field(default_factory=dict)

    @property
    def customers(self) -> int:
        return sum(self.sizes.values())


def read_only_engine(settings: Settings) -> Engine | None:
    """The state store opened read-only, or None when it is a DuckDB file that does not exist yet."""
    url = settings.resolved_state_url
    file = duckdb_file(url)
    if file is not None and not file.is_file():
        return None
    return make_engine(url, read_only=True)


def load_schemes(engine: Engine | None, settings: Settings) -> list[SchemeInfo]:
    """Every scheme (the default first), with its latest snapshot's segment sizes."""
    names = sorted(list_schemes(settings), key=lambda n: (n != settings.default_scheme, n))
    has_runs = engine is not None and has_table(engine, "snapshot_runs")
    out = []
    for name in names:
        segments = scheme_segments(name, settings) or []
        as_of = latest_snapshot_as_of(engine, name) if engine is not None and has_runs else None
        info = SchemeInfo(name, as_of, segments, dict.fromkeys(segments, 0))
        if engine is not None and as_of is not None:
            summary = segment_summary(engine, as_of, name, settings)
            info.sizes.update({str(r.segment): int(r.customers) for r in summary.itertuples()})
        out.append(info)
    return out


def load_catalog(
    engine: Engine | None, settings: Settings
) -> tuple[list[SchemeInfo], dict[tuple[str, str], list[Member]]]:
    """Every scheme with its segment sizes and every segment's sample members, read in one go; the engine
    is disposed of afterwards (a DuckDB file is not held)."""
    try:
        schemes = load_schemes(engine, settings)
        members = {
            (s.name, seg): sample_members(settings, engine, s, seg) for s in schemes for seg in s.segments
        }
    finally:
        if engine is not None:
            engine.dispose()
    return schemes, members


def _first_members(engine: Engine, scheme: str, as_of: date, segment: str, limit: int) -> Any:
    """The first ``limit`` members of the segment by customer id, with first name and email when the
    warehouse has customers (the top of the snapshot is taken before the join: no scan of all customers)."""
    s = rfm_snapshots.c
    where = (s.as_of == as_of) & (s.scheme == scheme) & (s.segment == segment)
    first = select(s.customer_id).where(where).order_by(s.customer_id).limit(limit).subquery()
    if not has_table(engine, "customers"):
        return select(first.c.customer_id).order_by(first.c.customer_id)
    joined = first.outerjoin(customers, customers.c.customer_id == first.c.customer_id)
    return (
        select(first.c.customer_id, customers.c.first_name, customers.c.email)
        .select_from(joined)
        .order_by(first.c.customer_id)
    )


def sample_members(
    settings: Settings, engine: Engine | None, scheme: SchemeInfo, segment: str
) -> list[Member]:
    """The first members of ``segment`` (by customer id) and one without a first name: a real one when
    one of its first :data:`NAMELESS_AMONG` members has none, else the first member again as if their first
    name were unknown."""
    if engine is None or scheme.as_of is None or not scheme.sizes.get(segment):
        made_up = Member(**MADE_UP_MEMBER, note="made-up, no snapshot yet")  # type: ignore[arg-type]
        return [made_up, Member(made_up.customer_id, None, made_up.email, "made-up, no first name")]
    first = _first_members(engine, scheme.name, scheme.as_of, segment, SAMPLES)
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(first)]
        members = [Member(str(r["customer_id"]), r.get("first_name"), r.get("email")) for r in rows]
        if all(m.first_name and m.first_name.strip() for m in members) and has_table(conn, "customers"):
            blank = or_(customers.c.first_name.is_(None), func.trim(customers.c.first_name) == "")
            among = _first_members(engine, scheme.name, scheme.as_of, segment, NAMELESS_AMONG)
            row = conn.execute(among.where(blank).limit(1)).first()
            if row is not None:
                members.append(Member(str(row.customer_id), None, row.email, "no first name"))
    if all(m.first_name for m in members):
        first = members[0]
        members.append(Member(first.customer_id, None, first.email, "as if without a first name"))
    return members
