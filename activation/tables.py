"""Table definitions of the warehouse, in one place (SQLAlchemy Core).

Ingested data: ``orders``, ``customers``, ``contact_events``.
Segmentation: ``rfm_snapshots`` (one row per customer per as_of+scheme), ``snapshot_runs``, ``verified_sources``.
Campaigns: ``campaigns`` (one per segment per as_of+scheme, versioned), ``campaign_members``.
Destinations: ``sync_state``, ``sync_runs``, ``sync_log``, ``suppressions``, ``destination_campaigns``.
Outcomes: ``campaign_outcomes``. Models: ``clv_models`` (predictions are stored as ``clv_tier`` snapshots in ``rfm_snapshots``).

``orders`` deliberately has no primary key: bulk loads of tens of millions of rows stay fast, ingest
de-duplicates by ``order_id`` itself and the data checks verify uniqueness before segmenting (users may
also point segmentation at their own table or view, see ``Settings.orders``); ``verified_sources`` lets them
skip that ``GROUP BY order_id`` while the ids are the ones last verified (or written by ingest).
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    Date,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Table,
    Text,
    column,
    table,
)
from sqlalchemy.sql.expression import TableClause

metadata = MetaData()

Double = Float(precision=53)

orders = Table(
    "orders",
    metadata,
    Column("order_id", String, nullable=False),
    Column("customer_id", String, nullable=False),
    Column("ordered_at", DateTime, nullable=False),
    Column("amount", Double, nullable=False),
    Column("status", String),
    Column("coupon_code", String),
    Column("country", String),
    Column("city", String),
    Column("category", String),
    Column("source", String),
)

customers = Table(
    "customers",
    metadata,
    Column("customer_id", String, primary_key=True),
    Column("email", String),
    Column("first_name", String),
    Column("country", String),
    Column("city", String),
    Column("unsubscribed", Boolean, nullable=False, default=False),
    Column("created_at", DateTime),
    Column("source", String),
)

contact_events = Table(
    "contact_events",
    metadata,
    Column("event_id", String),
    Column("customer_id", String, nullable=False),
    Column("event_type", String),
    Column("occurred_at", DateTime, nullable=False),
)

rfm_snapshots = Table(
    "rfm_snapshots",
    metadata,
    Column("as_of", Date, nullable=False),
    Column("scheme", String, nullable=False),
    Column("customer_id", String, nullable=False),
    Column("recency_days", Integer, nullable=False),
    Column("frequency", Integer, nullable=False),
    Column("monetary", Double, nullable=False),
    Column("r_score", SmallInteger, nullable=False),
    Column("f_score", SmallInteger, nullable=False),
    Column("m_score", SmallInteger, nullable=False),
    Column("segment", String, nullable=False),
)

snapshot_runs = Table(
    "snapshot_runs",
    metadata,
    Column("as_of", Date, nullable=False),
    Column("scheme", String, nullable=False),
    Column("scheme_hash", String, nullable=False),
    Column("lookback_days", Integer),
    Column("customers", Integer, nullable=False),
    Column("cutpoints", Text, nullable=False),  # JSON
    Column("warnings", Text, nullable=False),  # JSON list
    Column("created_at", DateTime, nullable=False),
    PrimaryKeyConstraint("as_of", "scheme"),
)

# the order ids of a source last known to be unique, as a multiset fingerprint (row count and the sum of
# their 64-bit hashes): while the ids are unchanged the data checks need not group by order id again
verified_sources = Table(
    "verified_sources",
    metadata,
    Column("source", String, primary_key=True),
    Column("fingerprint", String, nullable=False),
    Column("verified_at", DateTime, nullable=False),
)

campaigns = Table(
    "campaigns",
    metadata,
    Column("campaign_id", String, primary_key=True),
    Column("campaign_key", String, nullable=False),  # scheme/as_of/segment, stable across versions
    Column("version", Integer, nullable=False),
    Column("as_of", Date, nullable=False),
    Column("scheme", String, nullable=False),
    Column("segment", String, nullable=False),
    Column("template", String, nullable=False),
    Column("subject", Text, nullable=False),
    Column("offer_type", String, nullable=False),
    Column("offer", Text, nullable=False),  # JSON of the offer policy
    Column("holdout_share", Double, nullable=False),
    Column("template_hash", String, nullable=False),
    Column("policy_hash", String, nullable=False),
    Column("destinations", Text, nullable=False),  # JSON list
    Column("treated", Integer, nullable=False),
    Column("holdout", Integer, nullable=False),
    Column("excluded", Text, nullable=False),  # JSON {reason: count}
    Column("send_time", DateTime),
    Column("created_at", DateTime, nullable=False),
)

global_control_members = Table(
    "global_control_members",  # who the plan left out of every audience as the global control group
    metadata,
    Column("scheme", String, primary_key=True),
    Column("as_of", Date, primary_key=True),
    Column("customer_id", String, primary_key=True),
    Column("segment", String, nullable=False),
)

campaign_members = Table(
    "campaign_members",
    metadata,
    Column("campaign_id", String, nullable=False),
    Column("customer_id", String, nullable=False),
    Column("member_group", String, nullable=False),  # treatment | holdout
    Column("coupon_code", String),
    PrimaryKeyConstraint("campaign_id", "customer_id"),
)

suppressions = Table(
    "suppressions",
    metadata,
    Column("email_hash", String, nullable=False),  # sha256 of the lower-cased, stripped email
    Column("reason", String, nullable=False),  # unsubscribed | cleaned | bounced | complained | erasure
    Column("source", String, nullable=False),  # mailchimp | hubspot | outcomes | manual | ingest
    Column("created_at", DateTime, nullable=False),
    PrimaryKeyConstraint("email_hash", "reason"),
)

sync_state = Table(
    "sync_state",
    metadata,
    Column("destination", String, nullable=False),
    Column("customer_id", String, nullable=False),
    Column("email_hash", String),
    Column("campaign_id", String),
    Column("tags", Text, nullable=False),  # JSON list
    Column("state_hash", String, nullable=False),
    Column("synced_at", DateTime, nullable=False),
    PrimaryKeyConstraint("destination", "customer_id"),
)

sync_runs = Table(
    "sync_runs",
    metadata,
    Column("sync_id", String, primary_key=True),
    Column("destination", String, nullable=False),
    Column("as_of", Date),
    Column("scheme", String),
    Column("status", String, nullable=False),  # running | succeeded | failed | aborted
    Column("summary", Text),  # JSON
    Column("started_at", DateTime, nullable=False),
    Column("finished_at", DateTime),
)

sync_log = Table(
    "sync_log",
    metadata,
    Column("sync_id", String, nullable=False),
    Column("destination", String, nullable=False),
    Column("campaign_id", String),
    Column("customer_id", String),
    Column("operation", String, nullable=False),  # upsert | tag_add | tag_remove | send | skip | ...
    Column("status", String, nullable=False),  # ok | skipped | failed
    Column("error", Text),
    Column("logged_at", DateTime, nullable=False),
)

destination_campaigns = Table(
    "destination_campaigns",
    metadata,
    Column("destination", String, nullable=False),
    Column("campaign_id", String, nullable=False),
    Column("remote_id", String),
    Column("status", String, nullable=False),  # draft | scheduled | sent
    Column("sent_at", DateTime),
    Column("updated_at", DateTime, nullable=False),
    PrimaryKeyConstraint("destination", "campaign_id"),
)

campaign_outcomes = Table(
    "campaign_outcomes",
    metadata,
    Column("campaign_id", String, nullable=False),
    Column("customer_id", String, nullable=False),
    Column("event", String, nullable=False),  # sent|opened|clicked|unsubscribed|bounced|converted
    Column("occurred_at", DateTime),
    Column("revenue", Double),
    Column("orders", Integer),
    Column("coupon_code", String),
    Column("discount", Double),
    Column("source", String, nullable=False),
    PrimaryKeyConstraint("campaign_id", "customer_id", "event"),
)

clv_models = Table(
    "clv_models",
    metadata,
    Column("model_id", String, primary_key=True),
    Column("train_until", Date, nullable=False),
    Column("horizon_days", Integer, nullable=False),
    Column("kind", String, nullable=False),
    Column("params", Text, nullable=False),  # JSON / serialised model description
    Column("metrics", Text, nullable=False),  # JSON backtest metrics
    Column("created_at", DateTime, nullable=False),
)

# PostgreSQL only: DuckDB's ART index would cost more on every snapshot insert (13M rows) than it
# saves; its per-row-group min/max already prune a snapshot written as one contiguous batch.
Index("ix_rfm_snapshots_key", rfm_snapshots.c.as_of, rfm_snapshots.c.scheme, rfm_snapshots.c.segment).ddl_if(
    dialect="postgresql"
)
Index("ix_sync_log_sync", sync_log.c.sync_id)


def split_table_name(name: str) -> tuple[str | None, str]:
    """``(schema, table)`` of a possibly schema-qualified name: ``analytics.fct_orders`` -> ``("analytics",
    "fct_orders")``, ``orders`` -> ``(None, "orders")``. The table is what follows the last dot."""
    schema, _, tname = name.rpartition(".")
    return schema or None, tname


def source_table(name: str, *columns: str) -> TableClause:
    """A lightweight table for a possibly schema-qualified name (``analytics.fct_orders``) with ``columns``
    (empty names are skipped: optional columns the settings leave unset)."""
    schema, tname = split_table_name(name)
    return table(tname, *(column(c) for c in columns if c), schema=schema)
