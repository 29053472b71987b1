"""What each destination last received (``sync_state``), who must never be contacted (``suppressions``),
and what every sync did (``sync_runs``, ``sync_log``, ``destination_campaigns``).

Writes come in batches of hundreds of rows per confirmed API call, so they go through one bulk path:
DuckDB gets the rows as a registered Arrow table (its ``executemany`` costs milliseconds per row); other
warehouses get SQLAlchemy's batched ``INSERT … ON CONFLICT``.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pyarrow as pa
from sqlalchemy import Table, select, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, Engine

from activation.clock import utcnow
from activation.dialect import is_duckdb
from activation.tables import campaigns, destination_campaigns, suppressions, sync_log, sync_runs, sync_state
from connectors.base import RemoteCampaign, email_hash

_tmp_names = itertools.count()


@dataclass(frozen=True)
class StateRow:
    customer_id: str
    email_hash: str | None
    campaign_id: str | None
    tags: list[str]
    state_hash: str


def _bulk_write(
    conn: Connection,
    table: Table,
    rows: Sequence[dict[str, Any]],
    *,
    conflict: Sequence[str] = (),
    update_cols: Sequence[str] = (),
) -> None:
    """Insert ``rows`` (all with the same keys); on a ``conflict`` key, update ``update_cols`` (or ignore)."""
    if not rows:
        return
    columns = {c: [r[c] for r in rows] for c in rows[0]}
    _bulk_write_columns(conn, table, columns, len(rows), conflict=conflict, update_cols=update_cols)


def _bulk_write_columns(
    conn: Connection,
    table: Table,
    columns: dict[str, Any],
    n: int,
    *,
    conflict: Sequence[str] = (),
    update_cols: Sequence[str] = (),
) -> None:
    """:func:`_bulk_write` of ``n`` rows given column-wise: each value is a list of ``n`` values or a
    single value shared by every row (a timestamp of the batch, the destination)."""
    if not n:
        return
    cols = list(columns)
    consts = {c: v for c, v in columns.items() if not isinstance(v, list)}
    if is_duckdb(conn):
        # a timestamp shared by the batch goes in as a SQL literal: building Arrow timestamp arrays costs a
        # second on first use, more than the whole batch
        literal = {c: v for c, v in consts.items() if isinstance(v, datetime)}
        data = pa.table(
            {
                c: pa.array(v if isinstance(v, list) else [v] * n, type=_arrow_type(table, c))
                for c, v in columns.items()
                if c not in literal
            }
        )
        raw: Any = conn.connection.driver_connection
        name = f"_rows_{next(_tmp_names)}"
        raw.register(name, data)
        try:
            col_list = ", ".join(f'"{c}"' for c in cols)
            select_list = ", ".join(
                f"TIMESTAMP '{literal[c].isoformat(sep=' ')}'" if c in literal else f'"{c}"' for c in cols
            )
            sql = f'INSERT INTO "{table.name}" ({col_list}) SELECT {select_list} FROM {name}'
            if conflict:
                target = ", ".join(f'"{c}"' for c in conflict)
                if update_cols:
                    sets = ", ".join(f'"{c}" = excluded."{c}"' for c in update_cols)
                    sql += f" ON CONFLICT ({target}) DO UPDATE SET {sets}"
                else:
                    sql += f" ON CONFLICT ({target}) DO NOTHING"
            raw.execute(sql)
        finally:
            raw.unregister(name)
        return
    stmt = postgresql.insert(table)
    if conflict:
        if update_cols:
            stmt = stmt.on_conflict_do_update(
                index_elements=list(conflict), set_={c: stmt.excluded[c] for c in update_cols}
            )
        else:
            stmt = stmt.on_conflict_do_nothing(index_elements=list(conflict))
    lists = [v if isinstance(v, list) else [v] * n for v in columns.values()]
    conn.execute(stmt, [dict(zip(cols, values, strict=True)) for values in zip(*lists, strict=True)])


def _arrow_type(table: Table, column: str) -> pa.DataType:
    python_type = table.c[column].type.python_type
    if python_type is datetime:
        return pa.timestamp("us")
    if python_type is int:
        return pa.int64()
    return pa.string()


# --- sync_state -------------------------------------------------------------------------------------


def load_state(engine: Engine, destination: str) -> dict[str, StateRow]:
    """Every member's last synced state for ``destination``, by customer id."""
    out: dict[str, StateRow] = {}
    q = select(
        sync_state.c.customer_id,
        sync_state.c.email_hash,
        sync_state.c.campaign_id,
        sync_state.c.tags,
        sync_state.c.state_hash,
    ).where(sync_state.c.destination == destination)
    parsed: dict[str, list[str]] = {}  # a handful of distinct tag lists among millions of rows
    with engine.connect() as conn:
        for part in conn.execute(q).partitions(50_000):
            for cid, eh, camp, tags, sh in part:
                tag_list = parsed.get(tags)
                if tag_list is None:
                    tag_list = parsed[tags] = json.loads(tags) if tags else []
                out[cid] = StateRow(cid, eh, camp, list(tag_list), sh)
    return out


def save_state(conn: Connection, destination: str, rows: Iterable[StateRow]) -> None:
    rows = list(rows)
    tags_json: dict[tuple[str, ...], str] = {}

    def tags_of(tags: list[str]) -> str:
        key = tuple(tags)
        text = tags_json.get(key)
        if text is None:
            text = tags_json[key] = json.dumps(tags)
        return text

    _bulk_write_columns(
        conn,
        sync_state,
        {
            "destination": destination,
            "customer_id": [r.customer_id for r in rows],
            "email_hash": [r.email_hash for r in rows],
            "campaign_id": [r.campaign_id for r in rows],
            "tags": [tags_of(r.tags) for r in rows],
            "state_hash": [r.state_hash for r in rows],
            "synced_at": utcnow(),
        },
        len(rows),
        conflict=("destination", "customer_id"),
        update_cols=("email_hash", "campaign_id", "tags", "state_hash", "synced_at"),
    )


# --- suppressions -----------------------------------------------------------------------------------


def load_suppressions(engine: Engine) -> dict[str, str]:
    """email sha256 -> reason (the first reason in a stable order when there are several)."""
    order = {"erasure": 0, "complained": 1, "unsubscribed": 2, "cleaned": 3, "bounced": 4}
    out: dict[str, str] = {}
    with engine.connect() as conn:
        for eh, reason in conn.execute(select(suppressions.c.email_hash, suppressions.c.reason)):
            if eh not in out or order.get(reason, 9) < order.get(out[eh], 9):
                out[eh] = reason
    return out


def add_suppressions(
    bind: Engine | Connection, entries: Iterable[tuple[str, str]], source: str, *, hashed: bool = False
) -> int:
    """Record (email or email hash, reason) pairs; existing ones are kept. Returns how many were given.

    Emails are stored only as sha256 hashes (erasure requests included).
    """
    now = utcnow()
    seen: set[tuple[str, str]] = set()
    rows = []
    for value, reason in entries:
        key = (value if hashed else email_hash(value), reason)
        if key not in seen:
            seen.add(key)
            rows.append({"email_hash": key[0], "reason": reason, "source": source, "created_at": now})
    if isinstance(bind, Engine):
        with bind.begin() as conn:
            _bulk_write(conn, suppressions, rows, conflict=("email_hash", "reason"))
    else:
        _bulk_write(bind, suppressions, rows, conflict=("email_hash", "reason"))
    return len(rows)


# --- sync_log / sync_runs ---------------------------------------------------------------------------


def write_log(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    _bulk_write(conn, sync_log, rows)


def write_log_columns(conn: Connection, columns: dict[str, Any], n: int) -> None:
    """``n`` sync log rows given column-wise (see :func:`_bulk_write_columns`)."""
    _bulk_write_columns(conn, sync_log, columns, n)


def start_run(engine: Engine, sync_id: str, destination: str, as_of: Any, scheme: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            sync_runs.insert().values(
                sync_id=sync_id,
                destination=destination,
                as_of=as_of,
                scheme=scheme,
                status="running",
                started_at=utcnow(),
            )
        )


def finish_run(engine: Engine, sync_id: str, status: str, summary: dict[str, Any]) -> None:
    with engine.begin() as conn:
        conn.execute(
            update(sync_runs)
            .where(sync_runs.c.sync_id == sync_id)
            .values(status=status, summary=json.dumps(summary, default=str), finished_at=utcnow())
        )


#: statuses of a sync that ran to its end (``partial``: some members failed, the rest was applied)
COMPLETED = ("succeeded", "partial")


def last_completed_members(engine: Engine, destination: str, scheme: str) -> dict[str, int] | None:
    """Reachable members per segment at the last sync to ``destination`` that ran to its end (from its
    summary): the last one for ``scheme``, or, before the first completed sync of ``scheme``, the last one of
    any scheme (the audience the destination holds came from it: switching schemes is a swing too). None
    when there was none. A sync that died half-way (``failed``, or still ``running`` because its process was
    killed) is never the baseline: its ``sync_state`` is a partial picture."""
    q = (
        select(sync_runs.c.summary)
        .where(sync_runs.c.destination == destination, sync_runs.c.status.in_(COMPLETED))
        .order_by(sync_runs.c.finished_at.desc(), sync_runs.c.started_at.desc())
        .limit(1)
    )
    with engine.connect() as conn:
        row = conn.execute(q.where(sync_runs.c.scheme == scheme)).first() or conn.execute(q).first()
    if row is None:
        return None
    try:
        segments = json.loads(row.summary or "{}").get("segments") or {}
    except ValueError:
        segments = {}
    return {str(seg): int(d.get("members") or 0) for seg, d in segments.items() if isinstance(d, dict)}


def last_success(engine: Engine, destination: str) -> datetime | None:
    """When the last successful sync to ``destination`` started."""
    with engine.connect() as conn:
        return conn.execute(
            select(sync_runs.c.started_at)
            .where(sync_runs.c.destination == destination, sync_runs.c.status == "succeeded")
            .order_by(sync_runs.c.started_at.desc())
            .limit(1)
        ).scalar()


# --- destination_campaigns --------------------------------------------------------------------------


def load_remote_campaigns(engine: Engine, destination: str) -> dict[str, RemoteCampaign]:
    q = select(
        destination_campaigns.c.campaign_id,
        destination_campaigns.c.remote_id,
        destination_campaigns.c.status,
        destination_campaigns.c.sent_at,
    ).where(destination_campaigns.c.destination == destination)
    with engine.connect() as conn:
        return {r[0]: RemoteCampaign(r[0], r[1], r[2], r[3]) for r in conn.execute(q)}


def sent_campaign_keys(
    engine: Engine, remote: Mapping[str, RemoteCampaign], keys: Collection[str]
) -> set[str]:
    """The campaign ``keys`` of which some version is sent or scheduled at the destination (``remote``: its
    ``destination_campaigns``): a campaign is sent at most once, whatever its version."""
    if not keys:
        return set()
    with engine.connect() as conn:
        rows = conn.execute(
            select(campaigns.c.campaign_id, campaigns.c.campaign_key).where(
                campaigns.c.campaign_key.in_(list(keys))
            )
        ).all()
    return {
        key for cid, key in rows if (rc := remote.get(cid)) is not None and rc.status in ("sent", "scheduled")
    }


def save_remote_campaign(bind: Engine | Connection, destination: str, rc: RemoteCampaign) -> None:
    stmt = postgresql.insert(destination_campaigns).values(
        destination=destination,
        campaign_id=rc.campaign_id,
        remote_id=rc.remote_id,
        status=rc.status,
        sent_at=rc.sent_at,
        updated_at=utcnow(),
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=["destination", "campaign_id"],
        set_={
            "remote_id": stmt.excluded.remote_id,
            "status": stmt.excluded.status,
            "sent_at": stmt.excluded.sent_at,
            "updated_at": stmt.excluded.updated_at,
        },
    )
    if isinstance(bind, Engine):
        with bind.begin() as conn:
            conn.execute(stmt)
    else:
        bind.execute(stmt)


def customer_resolver(engine: Engine, destination: str) -> Callable[[str], str | None]:
    """email -> customer id, through the email hashes in ``sync_state`` (no email is stored)."""
    by_hash = {s.email_hash: s.customer_id for s in load_state(engine, destination).values() if s.email_hash}
    return lambda email: by_hash.get(email_hash(email))
