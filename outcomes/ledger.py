"""The outcome ledger: what happened to every member of a campaign.

``campaign_outcomes`` holds one row per member per event (primary key campaign, customer, event):

* ``sent`` / ``opened`` / ``clicked`` / ``unsubscribed`` / ``bounced`` — read from a destination's
  ``read_outcomes`` (Mailchimp reports and email activity; the local outbox reports nothing).
* ``converted`` — from warehouse orders, computed in the warehouse by one ``INSERT … SELECT``.

Attribution rule: a member converts when they place at least one order whose status is not excluded
(``settings.excluded_statuses``) in ``(send_time, send_time + window]``. ``send_time`` is
``campaigns.send_time``; when it is empty (a backtest, or the local outbox) it is the end of the
``as_of`` day, so orders dated ``as_of + 1 … as_of + window`` count. Holdout members get the same window
from the same send time. Revenue is the sum of those orders' amounts; a coupon is redeemed when an order
carries the member's own coupon code, and the discount is the offer's percent of that order's amount.
Coupon codes that are not the member's own are ignored for redemption and counted.

Collecting again is safe: events are inserted once (insert-ignore on the primary key); a ``converted``
row is updated in place when later orders inside the window change its revenue, orders, coupon or
discount, and deleted when its orders no longer qualify (e.g. cancelled since). Unsubscribes and bounces
also go to ``suppressions`` (sha256 of the lower-cased, stripped email). Everything of one collection is
written in one transaction.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from pydantic import ValidationError
from sqlalchemy import (
    DateTime,
    String,
    and_,
    case,
    cast,
    column,
    delete,
    exists,
    func,
    literal,
    null,
    or_,
    select,
    table,
    text,
    true,
    values,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql import Select

from activation import statuses
from activation.chunks import chunked
from activation.clock import end_of_day, utcnow
from activation.dialect import CreateTempTableAs, insert_ignore, prefer_hash_joins
from activation.emails import email_hash
from activation.errors import ConfigError, NotFoundError, WarehouseError
from activation.settings import Settings
from activation.tables import (
    Double,
    campaign_members,
    campaign_outcomes,
    campaigns,
    destination_campaigns,
    split_table_name,
    suppressions,
)
from activation.warehouse import has_table, transaction
from campaigns.offers import parse_offer
from campaigns.plan import current_campaigns
from connectors.base import Destination, OutcomeEvent

log = logging.getLogger(__name__)

EMAIL_EVENTS = ("sent", "opened", "clicked", "unsubscribed", "bounced")
EVENTS = (*EMAIL_EVENTS, "converted")
_SUPPRESS_REASON = {"unsubscribed": "unsubscribed", "bounced": "bounced"}
COUPON_OFFERS_PERCENT_KEYS = ("percent", "percent_off", "discount_percent")


# --------------------------------------------------------------------------- campaigns and windows


@dataclass(frozen=True)
class CampaignWindow:
    """One campaign and its attribution window ``(start, end]``."""

    campaign_id: str
    campaign_key: str
    version: int
    segment: str
    offer_type: str
    discount_rate: float  # fraction of a redeemed coupon order's amount given away
    discount_cap: float | None  # at most this much per order (offer's max_discount)
    send_time: datetime | None
    start: datetime
    end: datetime

    @property
    def is_backtest_send(self) -> bool:
        return self.send_time is None


def discount_model(offer_type: str, offer_json: str | None) -> tuple[float, float | None]:
    """``(rate, cap)`` of a redeemed coupon: the discount on one order is ``min(rate × amount, cap)``.

    Read through the offer model (:func:`campaigns.offers.parse_offer`, whose ``discount_for`` is the
    cost model: percent of the order amount, capped at ``max_discount``); when the stored JSON does not
    parse as an offer, its ``percent`` field is used. Offers without a coupon cost 0.
    """
    try:
        offer = json.loads(offer_json) if offer_json else {}
    except (TypeError, ValueError):
        offer = {}
    if not isinstance(offer, dict):
        offer = {}
    try:
        model = parse_offer(offer if offer else {"type": offer_type})
    except ValidationError:  # not one of the policy's offer types (e.g. a custom one): read its percent below
        pass
    else:
        if not model.has_coupon:
            return (0.0, None)
        cap = getattr(model, "max_discount", None)
        percent = getattr(model, "percent", None)
        if cap is None or percent is None:
            return (float(model.discount_for(100.0)) / 100.0, None)
        return (float(percent) / 100.0, float(cap))
    for key in COUPON_OFFERS_PERCENT_KEYS:
        value = offer.get(key)
        if value is not None:
            try:
                pct = float(value)
            except (TypeError, ValueError):
                continue
            cap = offer.get("max_discount")
            return (min(max(pct, 0.0), 100.0) / 100.0, float(cap) if cap is not None else None)
    return (0.0, None)


def latest_campaign_as_of(bind: Engine | Connection, scheme: str) -> date | None:
    """The most recent as_of that has campaigns for ``scheme``."""
    stmt = select(func.max(campaigns.c.as_of)).where(campaigns.c.scheme == scheme)
    if isinstance(bind, Connection):
        value = bind.execute(stmt).scalar()
    else:
        with bind.connect() as conn:
            value = conn.execute(stmt).scalar()
    if isinstance(value, datetime):
        return value.date()
    return value


def campaign_windows(
    bind: Engine | Connection, settings: Settings, as_of: date, scheme: str, window_days: int | None = None
) -> list[CampaignWindow]:
    """The current campaigns of ``as_of`` + ``scheme`` with their attribution windows.

    Raises:
        NotFoundError: no campaign was planned for that as_of and scheme.
        ConfigError: the window is not a positive number of days.
    """
    window = resolve_window(settings, window_days)
    rows = current_campaigns(bind, as_of, scheme)
    if not rows:
        raise NotFoundError(
            f"no campaign for as_of {as_of.isoformat()} and scheme {scheme!r}",
            fix=f"run `activation plan --as-of {as_of.isoformat()} --scheme {scheme}` first "
            "(outcomes and ROI are measured per planned campaign)",
        )
    out = []
    for row in rows:
        send = row.send_time
        rate, cap = discount_model(row.offer_type, row.offer)
        start = send if send is not None else end_of_day(as_of)
        out.append(
            CampaignWindow(
                campaign_id=row.campaign_id,
                campaign_key=row.campaign_key,
                version=row.version,
                segment=row.segment,
                offer_type=row.offer_type,
                discount_rate=rate,
                discount_cap=cap,
                send_time=send,
                start=start,
                end=start + timedelta(days=window),
            )
        )
    return out


def resolve_window(settings: Settings, window_days: int | None) -> int:
    window = settings.attribution_window_days if window_days is None else window_days
    if window is None or int(window) < 1:
        raise ConfigError(
            f"attribution window must be at least 1 day, got {window_days!r}",
            fix="pass --window-days N with N >= 1 (or set ACTIVATION_ATTRIBUTION_WINDOW_DAYS)",
        )
    return int(window)


# --------------------------------------------------------------------------- the orders source


def orders_source(settings: Settings, extra_columns: Iterable[str] = ()) -> Any:
    """The configured orders table or view, with the project's column names (a subquery).

    Columns: ``order_id, customer_id, ordered_at, amount, status, coupon_code`` plus ``extra_columns``
    (taken by their own names, e.g. ``country``).
    """
    src = settings.orders
    schema, name = split_table_name(src.table)
    mapped = {
        "order_id": src.order_id,
        "customer_id": src.customer_id,
        "ordered_at": src.ordered_at,
        "amount": src.amount,
        "status": src.status,
        "coupon_code": src.coupon_code,
    }
    names = [c for c in mapped.values() if c] + [c for c in extra_columns if c not in mapped.values()]
    tbl = table(name, *[column(c) for c in dict.fromkeys(names)], schema=schema)
    cols = []
    for label, col in mapped.items():
        if col:
            expr: Any = tbl.c[col]
            if label in ("customer_id", "order_id", "coupon_code", "status"):
                expr = expr.cast(String)  # user tables may key customers by integer
            cols.append(expr.label(label))
        else:
            cols.append(null().cast(String).label(label))
    cols += [tbl.c[c].label(c) for c in extra_columns]
    return select(*cols).subquery("src_orders")


def valid_status(settings: Settings, status_col: Any) -> Any:
    """Orders whose status is not excluded (a missing status counts as valid)."""
    if not settings.orders.status or not settings.excluded_statuses:
        return true()
    return statuses.counts(status_col, settings.excluded_statuses, settings.counted_statuses)


def check_orders_source(bind: Engine | Connection, settings: Settings) -> None:
    if not has_table(bind, settings.orders.table):
        raise WarehouseError(
            f"orders table {settings.orders.table!r} not found in the warehouse",
            fix="run `activation ingest` first or point ACTIVATION_ORDERS__TABLE at your orders table/view",
        )


def orders_end(bind: Engine | Connection, settings: Settings) -> datetime | None:
    """Timestamp of the latest order in the warehouse (any status): the end of the known data."""
    o = orders_source(settings)
    stmt = select(func.max(o.c.ordered_at))
    if isinstance(bind, Connection):
        value = bind.execute(stmt).scalar()
    else:
        with bind.connect() as conn:
            value = conn.execute(stmt).scalar()
    if isinstance(value, date) and not isinstance(value, datetime):
        value = datetime.combine(value, time())
    return value


def incomplete_warning(windows: list[CampaignWindow], data_end: datetime | None) -> str | None:
    """A warning when some window ends after the last day with orders."""
    if not windows:
        return None
    window_end = max(w.end for w in windows)
    if data_end is None:
        return "outcomes incomplete: the warehouse has no orders at all"
    if data_end.date() < window_end.date():
        return (
            f"outcomes incomplete: the attribution window ends {window_end.date().isoformat()} but the "
            f"latest order in the warehouse is from {data_end.date().isoformat()}; "
            "conversions after that date are not counted yet — collect again later"
        )
    return None


# --------------------------------------------------------------------------- attribution SQL


def windows_values(windows: Sequence[CampaignWindow]) -> Any:
    """The campaigns' windows as an inline ``VALUES`` table (campaign_id, start_at, end_at, rate, cap)."""
    return (
        values(
            column("campaign_id", String),
            column("start_at", DateTime),
            column("end_at", DateTime),
            column("rate", Double),
            column("cap", Double),
            name="windows",
        )
        .data([(w.campaign_id, w.start, w.end, float(w.discount_rate), w.discount_cap) for w in windows])
        .alias("windows")
    )


ATTRIBUTION_COLUMNS = (
    "campaign_id",
    "customer_id",
    "member_group",
    "revenue",
    "orders",
    "first_order_at",
    "coupon_code",
    "discount",
    "unknown_coupon_orders",
)


def attribution_select(settings: Settings, windows: Sequence[CampaignWindow]) -> Select[Any]:
    """Per converted member of the campaigns: revenue, orders, first order, coupon redeemed, discount.

    One row per (campaign, member) with at least one qualifying order in the campaign's
    ``(start, end]``; columns ``campaign_id, customer_id, member_group, revenue, orders, first_order_at,
    coupon_code, discount, unknown_coupon_orders``. One statement for every campaign (one scan of the
    orders), built as readable CTE steps and run in the warehouse.
    """
    o = orders_source(settings)
    win = windows_values(windows)
    members = (
        select(
            campaign_members.c.campaign_id,
            campaign_members.c.customer_id,
            campaign_members.c.member_group,
            campaign_members.c.coupon_code.label("member_coupon"),
            cast(win.c.start_at, DateTime).label("start_at"),
            cast(win.c.end_at, DateTime).label("end_at"),
            cast(win.c.rate, Double).label("rate"),
            cast(win.c.cap, Double).label("cap"),
        )
        .join(win, win.c.campaign_id == campaign_members.c.campaign_id)
        .cte("members")
    )
    window_orders = (
        select(
            members.c.campaign_id,
            members.c.customer_id,
            members.c.member_group,
            members.c.member_coupon,
            members.c.rate,
            members.c.cap,
            o.c.order_id,
            o.c.amount,
            o.c.ordered_at,
            o.c.coupon_code,
        )
        .join(o, o.c.customer_id == members.c.customer_id)
        .where(
            o.c.ordered_at > members.c.start_at,
            o.c.ordered_at <= members.c.end_at,
            valid_status(settings, o.c.status),
        )
        .cte("window_orders")
    )
    wo = window_orders.c
    redeemed = and_(
        wo.member_group == "treatment",
        wo.member_coupon.is_not(None),
        wo.coupon_code == wo.member_coupon,
    )
    pct_discount = func.greatest(wo.amount, 0.0) * wo.rate
    per_order_discount = func.least(pct_discount, func.coalesce(wo.cap, pct_discount))
    unknown = and_(wo.coupon_code.is_not(None), wo.coupon_code != "", ~redeemed)
    return select(
        wo.campaign_id,
        wo.customer_id,
        wo.member_group,
        func.sum(wo.amount).label("revenue"),
        func.count(wo.order_id.distinct()).label("orders"),
        func.min(wo.ordered_at).label("first_order_at"),
        func.max(case((redeemed, wo.coupon_code), else_=None)).label("coupon_code"),
        func.sum(case((redeemed, per_order_discount), else_=0.0)).label("discount"),
        func.count(case((unknown, wo.order_id), else_=None).distinct()).label("unknown_coupon_orders"),
    ).group_by(wo.campaign_id, wo.customer_id, wo.member_group)


def materialise_attribution(conn: Connection, settings: Settings, windows: Sequence[CampaignWindow]) -> Any:
    """:func:`attribution_select` written to a temporary table (read several times, computed once).

    Also keeps PostgreSQL on hash joins for the transaction: right after a load the planner has no
    statistics and would otherwise pick nested loops over millions of orders.
    """
    prefer_hash_joins(conn)
    name = f"tmp_attribution_{uuid.uuid4().hex[:12]}"
    conn.execute(CreateTempTableAs(name, attribution_select(settings, windows)))
    return table(name, *[column(c) for c in ATTRIBUTION_COLUMNS])


def drop_attribution(conn: Connection, attr: Any) -> None:
    conn.execute(text(f"DROP TABLE {conn.dialect.identifier_preparer.quote(attr.name)}"))


# --------------------------------------------------------------------------- destination events


def usable_event(event: OutcomeEvent) -> OutcomeEvent | None:
    """``event`` with its time in naive UTC (what the warehouse stores), or None when it is not an email
    event of the ledger or names nobody to attribute it to."""
    if event.event not in EMAIL_EVENTS or (event.customer_id is None and event.email is None):
        return None
    when = event.occurred_at
    if when is not None and when.tzinfo is not None:
        return replace(event, occurred_at=when.astimezone(UTC).replace(tzinfo=None))
    return event


def _read_destination(
    destination: Destination | Iterable[OutcomeEvent] | None, engine: Engine, windows: list[CampaignWindow]
) -> tuple[str, Iterable[OutcomeEvent]]:
    """(source name, events) from a destination or from events already read."""
    if destination is None:
        return "none", ()
    if isinstance(destination, Iterable):
        return "destination", destination
    since = min(w.start for w in windows)
    return destination.name, destination.read_outcomes(engine, [w.campaign_id for w in windows], since)


def _customer_emails(conn: Connection, settings: Settings, customer_ids: set[str]) -> dict[str, str]:
    src = settings.customers
    if not src.email or not customer_ids or not has_table(conn, src.table):
        return {}
    schema, name = split_table_name(src.table)
    tbl = table(name, column(src.customer_id), column(src.email), schema=schema)
    ids = sorted(customer_ids)
    out: dict[str, str] = {}
    for chunk in chunked(ids, 5000):
        stmt = select(tbl.c[src.customer_id].cast(String), tbl.c[src.email]).where(
            tbl.c[src.customer_id].cast(String).in_(chunk)
        )
        out.update({str(c): e for c, e in conn.execute(stmt) if e})
    return out


def _customers_by_email(conn: Connection, settings: Settings, emails: set[str]) -> dict[str, str]:
    src = settings.customers
    if not src.email or not emails or not has_table(conn, src.table):
        return {}
    schema, name = split_table_name(src.table)
    tbl = table(name, column(src.customer_id), column(src.email), schema=schema)
    wanted = sorted({e.strip().lower() for e in emails})
    out: dict[str, str] = {}
    for chunk in chunked(wanted, 5000):
        stmt = select(func.lower(func.trim(tbl.c[src.email])), tbl.c[src.customer_id].cast(String)).where(
            func.lower(func.trim(tbl.c[src.email])).in_(chunk)
        )
        out.update({e: str(c) for e, c in conn.execute(stmt)})
    return out


# --------------------------------------------------------------------------- collect


@dataclass
class CollectResult:
    """What one collection wrote."""

    as_of: date
    scheme: str
    window_days: int
    campaigns: int
    members: int
    backtest: bool
    converted_added: int = 0
    converted_updated: int = 0
    converted_removed: int = 0
    events_added: dict[str, int] = field(default_factory=dict)
    events_skipped: int = 0
    suppressions_added: int = 0
    unknown_coupon_orders: int = 0
    data_end: datetime | None = None
    incomplete: bool = False
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        events = ", ".join(f"{k} {v}" for k, v in self.events_added.items() if v) or "none"
        lines = [
            f"outcomes for {self.scheme} as_of {self.as_of.isoformat()} (window {self.window_days} days"
            f"{', backtest' if self.backtest else ''}): {self.campaigns} campaigns, {self.members} members",
            f"  converted: +{self.converted_added} new, {self.converted_updated} updated, "
            f"{self.converted_removed} removed",
            f"  email events added: {events}; suppressions added: {self.suppressions_added}",
        ]
        if self.events_skipped:
            lines.append(f"  events skipped (unknown campaign, member or event): {self.events_skipped}")
        if self.unknown_coupon_orders:
            lines.append(
                f"  orders with coupon codes that are not the member's own (ignored for redemption): "
                f"{self.unknown_coupon_orders}"
            )
        return "\n".join(lines)


def is_backtest(bind: Connection, campaign_ids: list[str]) -> bool:
    """True when no real destination sent or scheduled these campaigns and no ``sent`` event exists:
    every planned member then counts as reached, and treated vs holdout shows baseline conversion."""
    if not campaign_ids:
        return True
    real = bind.execute(
        select(func.count())
        .select_from(destination_campaigns)
        .where(
            destination_campaigns.c.campaign_id.in_(campaign_ids),
            destination_campaigns.c.destination != "outbox",
            destination_campaigns.c.status.in_(["sent", "scheduled"]),
        )
    ).scalar()
    if real:
        return False
    sent = bind.execute(
        select(func.count())
        .select_from(campaign_outcomes)
        .where(campaign_outcomes.c.campaign_id.in_(campaign_ids), campaign_outcomes.c.event == "sent")
    ).scalar()
    return not sent


def _member_count(conn: Connection, campaign_ids: list[str]) -> int:
    """Members (treated and holdout) of the campaigns."""
    query = select(func.count()).select_from(campaign_members)
    return int(conn.execute(query.where(campaign_members.c.campaign_id.in_(campaign_ids))).scalar() or 0)


def collect_outcomes(
    engine: Engine,
    settings: Settings,
    as_of: date | None,
    scheme: str | None,
    window_days: int | None = None,
    destination: Destination | Iterable[OutcomeEvent] | None = None,
) -> CollectResult:
    """Record email events and conversions of the current campaigns of ``as_of`` + ``scheme``.

    Args:
        engine: the warehouse.
        settings: project settings (window, excluded statuses, orders source).
        as_of: the campaigns' as_of; None = the latest as_of with campaigns for the scheme.
        scheme: segmentation scheme; None = ``settings.default_scheme``.
        window_days: attribution window; None = ``settings.attribution_window_days``.
        destination: the destination whose ``read_outcomes`` reports the email events, or events
            already read from one; None for warehouse-only collection (backtest, local outbox). Events
            that are not email events of the ledger, or name no customer and no email, are skipped and
            counted.

    Returns:
        A :class:`CollectResult` with counts of what was added, updated and removed.

    Raises:
        NotFoundError: no campaign for that as_of and scheme.
        WarehouseError: the orders table is missing.
    """
    scheme = scheme or settings.default_scheme
    window = resolve_window(settings, window_days)
    if as_of is None:
        as_of = latest_campaign_as_of(engine, scheme)
        if as_of is None:
            raise NotFoundError(
                f"no campaign for scheme {scheme!r} at any as_of",
                fix=f"run `activation plan --as-of YYYY-MM-DD --scheme {scheme}` first",
            )
    check_orders_source(engine, settings)
    windows = campaign_windows(engine, settings, as_of, scheme, window)
    source, raw_events = _read_destination(destination, engine, windows)
    read = list(raw_events)
    events = [e for e in (usable_event(r) for r in read) if e is not None]
    ids = [w.campaign_id for w in windows]
    data_end = orders_end(engine, settings)

    with transaction(engine) as conn:
        result = CollectResult(
            as_of=as_of,
            scheme=scheme,
            window_days=window,
            campaigns=len(windows),
            members=_member_count(conn, ids),
            backtest=False,
            data_end=data_end,
            events_added={e: 0 for e in EMAIL_EVENTS},
            events_skipped=len(read) - len(events),
        )
        if events:
            _record_events(conn, settings, events, ids, source, result)
        _record_conversions(conn, settings, windows, result)
        result.backtest = is_backtest(conn, ids)

    warning = incomplete_warning(windows, data_end)
    if warning:
        result.incomplete = True
        result.warnings.append(warning)
        log.warning(warning)
    if result.unknown_coupon_orders:
        result.notes.append(
            f"{result.unknown_coupon_orders} orders in the window carry coupon codes that are not the "
            "member's own; they count as revenue but not as redemptions"
        )
    return result


def _record_conversions(
    conn: Connection, settings: Settings, windows: Sequence[CampaignWindow], result: CollectResult
) -> None:
    """Upsert ``converted`` rows of every campaign and delete those whose orders no longer qualify."""
    ids = [w.campaign_id for w in windows]
    # materialised once: counted, upserted and used for the clean-up below
    attr = materialise_attribution(conn, settings, windows)
    _count_conversion_changes(conn, attr, ids, result)
    _upsert_conversions(conn, attr)
    result.converted_removed += _delete_lapsed_conversions(conn, attr, ids)
    drop_attribution(conn, attr)


def _count_conversion_changes(conn: Connection, attr: Any, ids: list[str], result: CollectResult) -> None:
    """Count into ``result`` the conversions of ``attr`` that are new or differ from the ledger's, and the
    orders with coupon codes that are not the member's own."""
    co = campaign_outcomes.c
    existing = (
        select(
            co.campaign_id, co.customer_id, co.revenue, co.orders, co.coupon_code, co.discount, co.occurred_at
        )
        .where(co.campaign_id.in_(ids), co.event == "converted")
        .subquery("existing")
    )
    changed = and_(
        existing.c.customer_id.is_not(None),
        or_(
            existing.c.revenue.is_distinct_from(attr.c.revenue),
            existing.c.orders.is_distinct_from(attr.c.orders),
            existing.c.coupon_code.is_distinct_from(attr.c.coupon_code),
            existing.c.discount.is_distinct_from(attr.c.discount),
            existing.c.occurred_at.is_distinct_from(attr.c.first_order_at),
        ),
    )
    counts = conn.execute(
        select(
            func.count().label("n"),
            func.count(existing.c.customer_id).label("present"),
            func.coalesce(func.sum(case((changed, 1), else_=0)), 0).label("changed"),
            func.coalesce(func.sum(attr.c.unknown_coupon_orders), 0).label("unknown"),
        ).select_from(
            attr.outerjoin(
                existing,
                and_(
                    existing.c.campaign_id == attr.c.campaign_id, existing.c.customer_id == attr.c.customer_id
                ),
            )
        )
    ).one()
    result.converted_added += int(counts.n) - int(counts.present)
    result.converted_updated += int(counts.changed or 0)
    result.unknown_coupon_orders += int(counts.unknown or 0)


def _upsert_conversions(conn: Connection, attr: Any) -> None:
    """Insert the ``converted`` rows of ``attr``, updating the revenue, orders and coupon of those present."""
    co = campaign_outcomes.c
    ins = postgresql.insert(campaign_outcomes).from_select(
        [
            "campaign_id",
            "customer_id",
            "event",
            "occurred_at",
            "revenue",
            "orders",
            "coupon_code",
            "discount",
            "source",
        ],
        select(
            attr.c.campaign_id,
            attr.c.customer_id,
            literal("converted", String),
            attr.c.first_order_at,
            attr.c.revenue,
            attr.c.orders,
            attr.c.coupon_code,
            attr.c.discount,
            literal("warehouse", String),
        ),
    )
    ins = ins.on_conflict_do_update(
        index_elements=[co.campaign_id, co.customer_id, co.event],
        set_={
            "occurred_at": ins.excluded.occurred_at,
            "revenue": ins.excluded.revenue,
            "orders": ins.excluded.orders,
            "coupon_code": ins.excluded.coupon_code,
            "discount": ins.excluded.discount,
        },
    )
    conn.execute(ins)


def _delete_lapsed_conversions(conn: Connection, attr: Any, ids: list[str]) -> int:
    """Delete the ``converted`` rows of the campaigns that ``attr`` no longer has; how many went."""
    co = campaign_outcomes.c
    still = attr.alias("still")
    removed = conn.execute(
        delete(campaign_outcomes).where(
            co.campaign_id.in_(ids),
            co.event == "converted",
            ~exists(
                select(literal(1)).where(
                    still.c.campaign_id == co.campaign_id, still.c.customer_id == co.customer_id
                )
            ),
        )
    ).rowcount
    return max(int(removed or 0), 0)


def _record_events(
    conn: Connection,
    settings: Settings,
    events: list[OutcomeEvent],
    campaign_ids: list[str],
    source: str,
    result: CollectResult,
) -> None:
    """Insert the email events of campaign members not in the ledger yet and suppress unsubscribes and
    bounces; events of other campaigns or of non-members are skipped and counted."""
    wanted = set(campaign_ids)
    by_email = _customers_by_email(
        conn, settings, {e.email for e in events if e.customer_id is None and e.email}
    )
    members = _campaign_members(conn, campaign_ids)
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    suppress: dict[tuple[str, str], str | None] = {}
    for e in events:
        customer = e.customer_id or (by_email.get(e.email.strip().lower()) if e.email else None)
        if e.campaign_id not in wanted or customer is None or (e.campaign_id, customer) not in members:
            result.events_skipped += 1
            continue
        key = (e.campaign_id, customer, e.event)
        prev = rows.get(key)
        if prev is None or (
            e.occurred_at is not None and (prev["occurred_at"] is None or e.occurred_at < prev["occurred_at"])
        ):
            rows[key] = {
                "campaign_id": e.campaign_id,
                "customer_id": customer,
                "event": e.event,
                "occurred_at": e.occurred_at,
                "source": source,
            }
        if e.event in _SUPPRESS_REASON:
            suppress.setdefault((customer, _SUPPRESS_REASON[e.event]), e.email)
    if rows:
        _insert_new_events(conn, rows, result)
    if suppress:
        result.suppressions_added += _add_suppressions(conn, settings, suppress)


def _campaign_members(conn: Connection, campaign_ids: list[str]) -> set[tuple[str, str]]:
    """(campaign_id, customer_id) of every member of the campaigns."""
    members: set[tuple[str, str]] = set()
    for part in chunked(campaign_ids, 500):
        members.update(
            (c, m)
            for c, m in conn.execute(
                select(campaign_members.c.campaign_id, campaign_members.c.customer_id).where(
                    campaign_members.c.campaign_id.in_(part)
                )
            )
        )
    return members


def _insert_new_events(
    conn: Connection, rows: dict[tuple[str, str, str], dict[str, Any]], result: CollectResult
) -> None:
    """Insert the event rows (keyed by campaign, customer, event) the ledger does not have; count them."""
    existing = {
        (c, m, ev)
        for c, m, ev in conn.execute(
            select(
                campaign_outcomes.c.campaign_id,
                campaign_outcomes.c.customer_id,
                campaign_outcomes.c.event,
            ).where(
                campaign_outcomes.c.campaign_id.in_(sorted({k[0] for k in rows})),
                campaign_outcomes.c.event.in_(EMAIL_EVENTS),
            )
        )
    }
    new = [r for k, r in rows.items() if k not in existing]
    if new:
        conn.execute(insert_ignore(campaign_outcomes), new)
    for r in new:
        result.events_added[r["event"]] = result.events_added.get(r["event"], 0) + 1


def _add_suppressions(
    conn: Connection, settings: Settings, suppress: dict[tuple[str, str], str | None]
) -> int:
    """Add the email hashes of (customer, reason) → the event's email (None: the customer's own address) to
    ``suppressions`` unless already there; how many were added. Customers with no known address are left out."""
    emails = _customer_emails(conn, settings, {c for (c, _), email in suppress.items() if email is None})
    now = utcnow().replace(microsecond=0)
    hashes: dict[tuple[str, str], dict[str, Any]] = {}
    for (customer, reason), email in suppress.items():
        address = email or emails.get(customer)
        if not address:
            continue
        h = email_hash(address)
        hashes[(h, reason)] = {"email_hash": h, "reason": reason, "source": "outcomes", "created_at": now}
    if not hashes:
        return 0
    have = {
        (h, r)
        for h, r in conn.execute(
            select(suppressions.c.email_hash, suppressions.c.reason).where(
                suppressions.c.email_hash.in_(sorted({k[0] for k in hashes}))
            )
        )
    }
    new = [v for k, v in hashes.items() if k not in have]
    if new:
        conn.execute(insert_ignore(suppressions), new)
    return len(new)
