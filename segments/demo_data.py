"""A deterministic synthetic shop: customers, orders and support tickets with real purchase behaviour.

The buying process is BG/NBD-like, so recency and frequency carry signal about the future:

* customers arrive over the whole span (more of them later: the shop grows, with a Q4 bump);
* each customer has a latent purchase rate (gamma distributed: most buy rarely, a few often), a dropout
  probability after every purchase (beta distributed: many never come back, some stay for years) and a
  spending level (gamma);
* purchases follow the customer's rate modulated by seasonality (Q4 peak, Black Friday, December) until the
  customer drops out, so at any date there are new, active, lapsing and lost customers.

Orders carry statuses (about 2.5 % Cancelled and 2.5 % Returned), coupon codes (welcome, seasonal),
country/city of the customer and a category (mostly the customer's favourite). Customers have a first name, an
email on reserved domains (example.com / .org / .net, RFC 2606), about 3 % are unsubscribed, a few emails are
invalid and a couple are shared by two customers. Support tickets (CSV) are more frequent for customers who buy
more or return orders.

The same arguments always give byte-identical files (no dependence on today's date). Customers are generated
in fixed-size blocks and streamed to Parquet, so 70M order rows never sit in memory at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from sqlalchemy import delete, func, insert, select, true
from sqlalchemy.engine import Connection, Engine

from activation.errors import ConfigError
from activation.files import output_dir
from activation.settings import Settings
from activation.split import campaign_key, in_global_control, member_group
from activation.tables import orders as orders_table
from activation.tables import rfm_snapshots

END_DATE = date(2025, 12, 31)
SPAN_DAYS = 3 * 365 + 1  # 2023-01-01 .. 2025-12-31
#: How long after arriving a customer's candidate purchases are spread (see :func:`_repeat_purchases`).
LIFETIME_DAYS = 3 * 365
BLOCK = 200_000  # customers per block; fixed, so the output does not depend on memory

# month -> relative demand (Q4 peak)
_SEASON = np.array([0.80, 0.75, 0.85, 0.90, 0.95, 0.90, 0.85, 0.90, 0.95, 1.05, 1.45, 1.60])
_STATUSES = pa.array(["Completed", "Cancelled", "Returned"])
_STATUS_P = [0.95, 0.025, 0.025]
_COUPONS = pa.array(["WELCOME10", "BLACKFRIDAY25", "HOLIDAY15", "SAVE10"])
_CATEGORIES = pa.array(["Apparel", "Home", "Electronics", "Beauty", "Books", "Toys", "Garden", "Sports"])
_CATEGORY_P = np.array([0.22, 0.18, 0.12, 0.14, 0.1, 0.08, 0.06, 0.1])
_PLACES = [
    ("United States", "New York", 0.12),
    ("United States", "Los Angeles", 0.08),
    ("United States", "Chicago", 0.06),
    ("United States", "Austin", 0.04),
    ("United Kingdom", "London", 0.12),
    ("United Kingdom", "Manchester", 0.05),
    ("Germany", "Berlin", 0.07),
    ("Germany", "Munich", 0.04),
    ("France", "Paris", 0.07),
    ("France", "Lyon", 0.03),
    ("Canada", "Toronto", 0.06),
    ("Australia", "Sydney", 0.05),
    ("Netherlands", "Amsterdam", 0.05),
    ("Spain", "Madrid", 0.04),
    ("Ireland", "Dublin", 0.02),
]
_FIRST_NAMES = (
    "Olivia Liam Emma Noah Amelia Oliver Ava Elijah Sophia James Isabella William Mia Benjamin Charlotte Lucas "
    "Harper Henry Evelyn Theodore Luna Jack Camila Levi Gianna Alexander Elizabeth Jackson Eleanor Mateo Ella "
    "Daniel Abigail Michael Sofia Mason Avery Sebastian Scarlett Ethan Emily Logan Aria Owen Penelope Samuel "
    "Chloe Jacob Layla Asher Mila Aiden Nora John Hazel Joseph Madison Wyatt Ellie David Lily Leo Nova Hannah "
    "Zoe Amir Priya Wei Yuki Fatima Omar Ines Lars Sven Chiara Marco Aoife Sean Ana Jose Lea Felix Ingrid"
).split()
_LAST_NAMES = (
    "smith jones brown taylor wilson davies evans thomas johnson roberts walker wright robinson thompson white "
    "hughes edwards green hall wood harris lewis martin jackson clarke clark turner hill scott cooper morris "
    "ward moore king watson baker harrison morgan patel young allen mitchell"
).split()
_DOMAINS = ["example.com", "example.org", "example.net"]

# the columns of a planted order (the demo orders have these and the customer's email, name, consent)
_PLANTED_COLUMNS = ("order_id", "customer_id", "ordered_at", "amount", "status", "coupon_code", "country",
                    "city", "category")  # fmt: skip


def _orders_mapping(comment: str, columns: tuple[str, ...], source: str) -> str:
    """A column mapping of ``kind: orders`` that maps each column to itself."""
    body = "".join(f"  {c}: {c}\n" for c in columns)
    return f"{comment}kind: orders\ncolumns:\n{body}source: {source}\n"


ORDERS_MAPPING = _orders_mapping(
    "# Column mapping for: activation ingest orders.parquet --format parquet --mapping mapping.yaml\n",
    (*_PLANTED_COLUMNS, "email", "first_name", "unsubscribed"),
    "demo",
)

PLANTED_MAPPING = _orders_mapping(
    "# Column mapping for: activation ingest planted_orders.parquet --format parquet --mapping planted_mapping.yaml\n"
    "# (the orders `activation demo-data --plant` added for treated members; the source marks them as planted)\n",
    _PLANTED_COLUMNS,
    "demo planted uplift",
)

TICKETS_MAPPING = """\
# Column mapping for: activation ingest tickets.csv --format csv --mapping tickets_mapping.yaml
kind: events
columns:
  event_id: ticket_id
  customer_id: customer_id
  occurred_at: opened_at
  event_type: type
source: demo
"""


@dataclass
class DemoDataFiles:
    """Paths and counts of one generated data set."""

    out_dir: Path
    orders: Path
    mapping: Path
    tickets: Path
    tickets_mapping: Path
    customers_count: int
    orders_count: int
    tickets_count: int
    first_date: date
    last_date: date

    @property
    def planted(self) -> Path:
        """The planted orders of ``demo-data --plant`` (absent without it)."""
        return self.out_dir / "planted_orders.parquet"

    @property
    def planted_mapping(self) -> Path:
        return self.out_dir / "planted_mapping.yaml"

    def describe(self) -> list[tuple[Path, str]]:
        """(path, what it holds) for printing."""
        return [
            (
                self.orders,
                f"{self.orders_count:,} orders of {self.customers_count:,} customers, "
                f"{self.first_date} .. {self.last_date}",
            ),
            (self.mapping, "column mapping for the orders file (kind: orders)"),
            (self.tickets, f"{self.tickets_count:,} support tickets"),
            (self.tickets_mapping, "column mapping for the tickets file (kind: events)"),
        ]


DEFAULT_CUSTOMERS = 5_000
DEFAULT_ORDERS = 40_000


def generate(
    out_dir: Path | str,
    customers: int = DEFAULT_CUSTOMERS,
    orders: int = DEFAULT_ORDERS,
    seed: int = 7,
    *,
    end: date = END_DATE,
    span_days: int = SPAN_DAYS,
) -> DemoDataFiles:
    """Write ``orders.parquet``, ``mapping.yaml``, ``tickets.csv`` and ``tickets_mapping.yaml`` to ``out_dir``.

    Exactly ``orders`` order rows for exactly ``customers`` customers (each buys at least once), ending at
    ``end``; the same arguments always give byte-identical files.

    Raises:
        ConfigError: fewer orders than customers, or non-positive sizes.
    """
    _check_sizes(customers, orders, span_days)
    out = output_dir(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = end - timedelta(days=span_days - 1)
    files = DemoDataFiles(
        out_dir=out,
        orders=out / "orders.parquet",
        mapping=out / "mapping.yaml",
        tickets=out / "tickets.csv",
        tickets_mapping=out / "tickets_mapping.yaml",
        customers_count=customers,
        orders_count=0,
        tickets_count=0,
        first_date=end,
        last_date=start,
    )
    sinks = _BlockSinks(files.orders.with_suffix(".parquet.tmp"), files.tickets.with_suffix(".csv.tmp"))
    try:
        _stream_blocks(files, sinks, orders, seed, start, end, span_days)
    except BaseException:  # interrupted or failed: no half-written temporary file stays behind
        sinks.close()
        sinks.orders_path.unlink(missing_ok=True)
        sinks.tickets_path.unlink(missing_ok=True)
        raise
    sinks.close()
    sinks.orders_path.replace(files.orders)
    sinks.tickets_path.replace(files.tickets)
    files.mapping.write_text(ORDERS_MAPPING)
    files.tickets_mapping.write_text(TICKETS_MAPPING)
    return files


def _check_sizes(customers: int, orders: int, span_days: int) -> None:
    """Raise ConfigError unless the sizes make a data set where every customer buys at least once."""
    if customers < 1 or orders < 1 or span_days < 30:
        raise ConfigError(
            f"demo data needs at least 1 customer, 1 order and 30 days (got {customers}, {orders}, {span_days})",
            fix="pass positive --customers and --orders",
        )
    if orders < customers:
        raise ConfigError(
            f"--orders {orders:,} is less than --customers {customers:,}; every customer buys at least once",
            fix=f"pass --orders {customers:,} or more (e.g. {customers * 8:,})",
        )


@dataclass
class _BlockSinks:
    """The temporary orders (Parquet) and tickets (CSV) files, opened with the schema of the first block."""

    orders_path: Path
    tickets_path: Path
    orders: pq.ParquetWriter | None = None
    tickets: pacsv.CSVWriter | None = None

    def write(self, block: pa.Table, tickets: pa.Table) -> None:
        if self.orders is None:
            self.orders = pq.ParquetWriter(self.orders_path, block.schema, compression="zstd")
        self.orders.write_table(block, row_group_size=1_000_000)
        if self.tickets is None:
            self.tickets = pacsv.CSVWriter(self.tickets_path, tickets.schema)
        self.tickets.write_table(tickets)

    def close(self) -> None:
        for writer in (self.orders, self.tickets):
            if writer is not None:
                writer.close()


def _stream_blocks(
    files: DemoDataFiles,
    sinks: _BlockSinks,
    orders: int,
    seed: int,
    start: date,
    end: date,
    span_days: int,
) -> None:
    """Simulate the customers block by block, write each block's orders and tickets and count them in ``files``."""
    customers = files.customers_count
    season = _daily_season(start, span_days)
    id_width = max(6, len(str(customers)))
    scale = 1.0
    for b in range(math.ceil(customers / BLOCK)):
        first = b * BLOCK
        n = min(BLOCK, customers - first)
        # spread the order total over blocks exactly, proportionally to their customers
        target = orders * (first + n) // customers - orders * first // customers
        rng = np.random.default_rng([seed, b])
        block, scale = _simulate_block(
            rng, first, n, target, season, start, scale, id_width, files.orders_count
        )
        tickets = _tickets(rng, block, end, files.tickets_count)
        sinks.write(block, tickets)
        files.orders_count += block.num_rows
        lo, hi = pc.min_max(block["ordered_at"]).values()
        files.first_date = min(files.first_date, lo.as_py().date())
        files.last_date = max(files.last_date, hi.as_py().date())
        files.tickets_count += tickets.num_rows


def _daily_season(start: date, days: int) -> np.ndarray:
    """Relative demand per day: monthly seasonality plus a Black Friday week."""
    out = np.empty(days)
    for i in range(days):
        d = start + timedelta(days=i)
        out[i] = _SEASON[d.month - 1] * (1.6 if d.month == 11 and 22 <= d.day <= 30 else 1.0)
    return out


def _customers(rng: np.random.Generator, first: int, n: int, id_width: int) -> dict[str, pa.Array]:
    """Per-customer attributes of one block."""
    idx = np.arange(first, first + n)
    ids = [f"C{i:0{id_width}d}" for i in idx]
    fn = rng.integers(0, len(_FIRST_NAMES), n)
    ln = rng.integers(0, len(_LAST_NAMES), n)
    dom = rng.choice(len(_DOMAINS), n, p=[0.6, 0.3, 0.1])
    names = [_FIRST_NAMES[k] for k in fn]
    emails = [f"{names[k].lower()}.{_LAST_NAMES[ln[k]]}{idx[k]}@{_DOMAINS[dom[k]]}" for k in range(n)]
    # a few broken addresses: no @, no domain dot, a space
    bad = np.flatnonzero(rng.random(n) < 0.004)
    for j, k in enumerate(bad):
        e = emails[k]
        emails[k] = [e.replace("@", "."), e.split("@")[0] + "@example", e.replace(".", " ", 1)][j % 3]
    # a couple of addresses shared by two customers (households, shared inboxes)
    if n >= 4:
        pairs = max(2, n // 2500)
        picks = rng.choice(n, size=min(2 * pairs, n - n % 2), replace=False)
        for a, c in zip(picks[0::2], picks[1::2], strict=True):
            emails[max(a, c)] = emails[min(a, c)]
    place_p = np.array([p for *_, p in _PLACES])
    place = rng.choice(len(_PLACES), n, p=place_p / place_p.sum())
    return {
        "customer_id": pa.array(ids, pa.string()),
        "email": pa.array(emails, pa.string()),
        "first_name": pa.array(names, pa.string()),
        "country": pa.array([_PLACES[k][0] for k in place], pa.string()),
        "city": pa.array([_PLACES[k][1] for k in place], pa.string()),
        "unsubscribed": pa.array(rng.random(n) < 0.03),
        "favourite": pa.array(rng.choice(len(_CATEGORY_P), n, p=_CATEGORY_P)),
    }


def _simulate_block(
    rng: np.random.Generator,
    first: int,
    n: int,
    target: int,
    season: np.ndarray,
    start: date,
    scale: float,
    id_width: int,
    order_offset: int,
) -> tuple[pa.Table, float]:
    """Exactly ``target`` orders for customers ``first .. first+n``; returns the table and the rate scale used."""
    days = len(season)
    attrs = _customers(rng, first, n, id_width)
    # arrivals: the shop grows over the span, with the seasonal bump
    w = season * (1.0 + np.linspace(0, 0.6, days))
    arrival = np.searchsorted(np.cumsum(w) / w.sum(), rng.random(n)) + rng.random(n)
    arrival = np.minimum(arrival, days - 1e-6)
    rate = rng.gamma(0.35, 1.0, n) / 45.0  # purchases per day before scaling: mostly rare, a few frequent
    dropout = rng.beta(1.0, 1.6, n)  # chance of leaving after each purchase
    spend = rng.gamma(2.5, 24.0, n)  # mean order value per customer
    sub_seed = int(rng.integers(2**32))
    fitted = _fit_repeat_purchases(sub_seed, arrival, rate, dropout, scale, season, target - n)
    if fitted is None:  # pragma: no cover - only reachable with absurd orders/customers ratios
        raise ConfigError(
            f"cannot place {target:,} orders on {n:,} customers within {days} days",
            fix="ask for fewer orders per customer",
        )
    rep_cust, rep_t, scale = fitted
    cust = np.concatenate([np.arange(n), rep_cust])
    t = np.concatenate([arrival, rep_t])
    is_first = np.concatenate([np.ones(n, bool), np.zeros(rep_cust.size, bool)])
    order = np.lexsort((cust, t))
    table = _orders_table(rng, attrs, spend, cust[order], t[order], is_first[order], start, order_offset)
    return table, scale


def _fit_repeat_purchases(
    sub_seed: int,
    arrival: np.ndarray,
    rate: np.ndarray,
    dropout: np.ndarray,
    scale: float,
    season: np.ndarray,
    need: int,
) -> tuple[np.ndarray, np.ndarray, float] | None:
    """Exactly ``need`` repeat purchases (customer index, day) and the rate scale that gave them: the scale
    is refitted until the simulation gives enough, then the surplus is thinned uniformly; None when 30
    attempts do not get there."""
    for attempt in range(30):
        cust, t = _repeat_purchases(
            np.random.default_rng([sub_seed, attempt]), arrival, rate, dropout, scale, season
        )
        got = cust.size
        if need == 0:
            return cust[:0], t[:0], scale
        # far too many: refit the scale rather than thin most purchases away (keeps the shape)
        if got > 1.5 * need and attempt < 8:
            scale *= max(0.2, need / got)
            continue
        if got >= need:
            # uniform thinning to the exact total
            prio = np.random.default_rng([sub_seed, attempt, 1]).random(got)
            keep = np.zeros(got, bool)
            keep[np.argpartition(prio, need - 1)[:need]] = True
            return cust[keep], t[keep], scale
        scale *= min(4.0, max(1.1, 1.1 * need / max(got, 1)))
    return None


def _orders_table(
    rng: np.random.Generator,
    attrs: Mapping[str, pa.Array],
    spend: np.ndarray,
    cust: np.ndarray,
    t: np.ndarray,
    is_first: np.ndarray,
    start: date,
    order_offset: int,
) -> pa.Table:
    """The order rows of purchases (customer index, day as float, first purchase?) sorted by time: shop
    hours, amounts around the customer's spending level, statuses, coupons and categories."""
    m = cust.size
    day = t.astype(np.int64)
    # shop hours: most orders in the afternoon and evening
    seconds = day * 86_400 + np.clip(rng.normal(15.5, 4.0, m), 0, 23.99) * 3600
    base = int((datetime(start.year, start.month, start.day) - datetime(1970, 1, 1)).total_seconds())
    ordered_at = pa.array((base + seconds.astype(np.int64)) * 1_000_000, pa.timestamp("us"))
    amount = np.maximum(1.0, np.round(rng.gamma(4.0, spend[cust] / 4.0), 2))
    status = rng.choice(3, m, p=_STATUS_P)
    coupon = _coupons(rng, day, is_first, start)
    favourite = np.asarray(attrs["favourite"])[cust]
    category = np.where(rng.random(m) < 0.65, favourite, rng.choice(len(_CATEGORY_P), m, p=_CATEGORY_P))
    seq = pa.array(np.arange(order_offset + 1, order_offset + m + 1)).cast(pa.string())
    take = pa.array(cust)
    return pa.table(
        {
            "order_id": pc.binary_join_element_wise("O", pc.utf8_lpad(seq, 9, "0"), ""),
            "customer_id": attrs["customer_id"].take(take),
            "ordered_at": ordered_at,
            "amount": pa.array(amount, pa.float64()),
            "status": _STATUSES.take(pa.array(status)),
            "coupon_code": _COUPONS.take(pa.array(coupon, mask=coupon < 0)),
            "country": attrs["country"].take(take),
            "city": attrs["city"].take(take),
            "category": _CATEGORIES.take(pa.array(category)),
            "email": attrs["email"].take(take),
            "first_name": attrs["first_name"].take(take),
            "unsubscribed": attrs["unsubscribed"].take(take),
        }
    )


def _coupons(rng: np.random.Generator, day: np.ndarray, is_first: np.ndarray, start: date) -> np.ndarray:
    """Index into ``_COUPONS`` per order, -1 for none: welcome on first orders, Black Friday, December."""
    dates = [start + timedelta(days=int(d)) for d in range(int(day.max()) + 1)]
    month = np.array([d.month for d in dates])[day]
    dom = np.array([d.day for d in dates])[day]
    u = rng.random(day.size)
    coupon = np.full(day.size, -1)
    coupon[is_first & (u < 0.15)] = 0
    coupon[~is_first & (month == 11) & (dom >= 22) & (u < 0.30)] = 1
    coupon[~is_first & (month == 12) & (u < 0.15)] = 2
    coupon[~is_first & (coupon < 0) & (u > 0.96)] = 3
    return coupon


def _repeat_purchases(
    rng: np.random.Generator,
    arrival: np.ndarray,
    rate: np.ndarray,
    dropout: np.ndarray,
    scale: float,
    season: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Repeat purchases (customer index, day as float), BG/NBD-like: Poisson purchases thinned by seasonality,
    until the customer drops out (geometric number of repeats). ``scale`` raises rates and lowers dropout.

    A customer's candidate purchases are spread over :data:`LIFETIME_DAYS` from their arrival (at most
    ``2·allowed + 10`` of them, so a frequent buyer who will leave soon spreads few purchases over a long
    time); those past the end of the data are not seen. The span is the customer's, not the data's: where
    the data ends changes only what is seen, never when a customer buys."""
    n, days, smax = arrival.size, season.size, season.max()
    lam = np.minimum(rate * scale, 0.25)
    p = np.clip(dropout / math.sqrt(max(scale, 1e-9)), 0.002, 0.99)
    allowed = rng.geometric(p) - 1
    cand = np.minimum(rng.poisson(lam * smax * LIFETIME_DAYS), 2 * allowed + 10)
    cust = np.repeat(np.arange(n), cand)
    t = arrival[cust] + rng.random(cust.size) * LIFETIME_DAYS
    u = rng.random(cust.size)
    seen = t < days
    keep = seen & (u < season[np.where(seen, t, 0).astype(np.int64)] / smax)
    cust, t = cust[keep], t[keep]
    order = np.argsort(cust * float(days) + t, kind="stable")
    cust, t = cust[order], t[order]
    rank = np.arange(cust.size) - np.searchsorted(cust, np.arange(n))[cust]
    alive = rank < allowed[cust]
    return cust[alive], t[alive]


def _tickets(rng: np.random.Generator, block: pa.Table, end: date, offset: int) -> pa.Table:
    """Support tickets: more for customers with more orders and with returns."""
    cust = pc.dictionary_encode(block["customer_id"]).combine_chunks()
    codes = np.asarray(cust.indices)
    k = len(cust.dictionary)
    n_orders = np.bincount(codes, minlength=k)
    returned = np.asarray(pc.equal(block["status"], "Returned").combine_chunks().fill_null(False))
    n_returns = np.bincount(codes, weights=returned.astype(float), minlength=k)
    counts = rng.poisson(0.12 + 0.08 * np.minimum(n_orders, 30) + 0.8 * n_returns)
    ts = np.asarray(block["ordered_at"].combine_chunks().cast(pa.int64()))
    first = np.full(k, np.iinfo(np.int64).max)
    last = np.zeros(k, np.int64)
    np.minimum.at(first, codes, ts)
    np.maximum.at(last, codes, ts)
    end_us = (
        int((datetime(end.year, end.month, end.day, 23, 59, 59) - datetime(1970, 1, 1)).total_seconds())
        * 1_000_000
    )
    who = np.repeat(np.arange(k), counts)
    lo = first[who]
    hi = np.minimum(last[who] + 60 * 86_400 * 1_000_000, end_us)
    at = lo + (rng.random(who.size) * (hi - lo)).astype(np.int64)
    order = np.lexsort((who, at))
    who, at = who[order], at[order]
    seq = pa.array(np.arange(offset + 1, offset + who.size + 1)).cast(pa.string())
    channel = pa.array(["email", "chat", "phone"]).take(
        pa.array(rng.choice(3, who.size, p=[0.5, 0.35, 0.15]))
    )
    return pa.table(
        {
            "ticket_id": pc.binary_join_element_wise("T", pc.utf8_lpad(seq, 9, "0"), ""),
            "customer_id": cust.dictionary.take(pa.array(who)),
            "opened_at": pa.array(at // 1_000_000, pa.timestamp("s")),
            "type": pa.array(["support_ticket"] * who.size, pa.string()),
            "channel": channel,
        }
    )


# --------------------------------------------------------------------------- a planted effect, to recover

#: the ``source`` of the orders a planted effect adds (replaced, not added again, when planted again)
PLANTED_SOURCE = "demo planted uplift"
#: the demo's planted conversion lifts (absolute) per rfm11 segment: the win-back offers work, the VIP
#: early access does nothing; segments not listed get no effect. Each lift is about 1.4x its segment's
#: minimum detectable effect in the demo (holdouts of ~150-175: MDEs of ~10 and ~8.5 pp), so the report
#: finds each after Holm's correction over ten segments in ~85 % of draws (at 1x the MDE: about half)
DEFAULT_PLANTED: dict[str, float] = {"At Risk": 0.15, "Hibernating": 0.12, "Champions": 0.0}
#: the share of planted orders that redeem the member's coupon (where the segment's offer has one): the
#: offer is what brought these orders, so most of them use it; the others forgot or paid in full
PLANT_REDEEM_RATE = 0.7


def parse_plant(text: str, option: str = "--plant") -> dict[str, float]:
    """``"At Risk=+0.10,Hibernating=0.08"`` → ``{"At Risk": 0.1, "Hibernating": 0.08}``: absolute conversion
    lifts from 0 up to (not including) 1, per segment name.

    Raises:
        ConfigError: an entry without ``=``, a lift that is not a number in [0, 1), a segment named twice.
    """
    out: dict[str, float] = {}
    example = f'{option} "At Risk=+0.10,Hibernating=+0.08" (segment=absolute conversion lift, 0 <= lift < 1)'
    for part in (p.strip() for p in text.split(",")):
        name, eq, value = part.partition("=")
        name = name.strip()
        try:
            lift = float(value.strip()) if eq and name else math.nan
        except ValueError:
            lift = math.nan
        if not 0 <= lift < 1 or name in out:
            why = (
                f"{name} is named twice"
                if name in out
                else f"{part!r} is not segment=lift with 0 <= lift < 1"
            )
            raise ConfigError(f"{option} {text!r}: {why}", fix=f"write it as {example}")
        out[name] = lift
    return out


@dataclass(frozen=True)
class PlantCoupon:
    """The coupon a segment's treated members got, as the planted orders redeem it."""

    codes: Callable[[list[str]], Mapping[str, str]]  # treated customer ids -> their personal codes
    discount: Callable[[float], float]  # the offer's cost model: order amount -> discount
    redeem_rate: float = PLANT_REDEEM_RATE


@dataclass(frozen=True)
class PlantTarget:
    """One segment's planted lift and the split that decides who is treated."""

    lift: float  # absolute conversion lift of the treated members
    holdout_share: float  # the campaign's holdout share (``activation.split.member_group``)
    coupon: PlantCoupon | None = None  # None: the planted orders carry no coupon
    global_control_share: float = 0.0  # the policy's global control group: never treated, never planted


@dataclass(frozen=True)
class PlantedEffect:
    """What :func:`plant_uplift` added for one segment."""

    segment: str
    uplift: float  # the planted absolute conversion lift of the treated members
    treated: int
    base_rate: float  # the segment's conversion in the window without the effect
    orders: int  # orders added
    mean_amount: float  # the added orders' mean amount (expected revenue per treated member: uplift × this)
    redeemed: int = 0  # of the added orders, those carrying the member's coupon
    discount: float = 0.0  # the redeemed orders' discounts (the offer's cost model)
    redeem_rate: float = 0.0  # the chance a planted order redeems the coupon (0 without one)


def plant_uplift(
    engine: Engine,
    settings: Settings,
    as_of: date,
    scheme: str,
    targets: Mapping[str, PlantTarget],
    *,
    window_days: int | None = None,
    seed: int = 7,
) -> list[PlantedEffect]:
    """Plant a known conversion lift into the orders that follow ``as_of``: in each segment of the ``as_of``
    snapshot named in ``targets``, a treated member (the campaign's own split, ``activation.split``) who
    placed no qualifying order in the attribution window ``(end of as_of, + window]`` gets one with
    probability ``lift / (1 − base rate)``, so the treated conversion rises by ``lift`` in expectation and
    the holdout is untouched. The order copies the place and category of the member's last order; its amount
    is drawn like the member's own orders (gamma around their mean order value); with a coupon, it carries
    the member's code with probability ``redeem_rate``.

    Planting again replaces the earlier planted orders (same seed, same orders).

    Raises:
        ConfigError: a lift outside [0, 1), or a segment the snapshot does not have.
    """
    window = window_days or settings.attribution_window_days
    start = datetime.combine(as_of, datetime.max.time())
    end = start + timedelta(days=window)
    with engine.begin() as conn:
        conn.execute(delete(orders_table).where(orders_table.c.source == PLANTED_SOURCE))
        snap = _planting_snapshot(conn, as_of, scheme, {k: t.lift for k, t in targets.items()})
        bought = _window_buyers(conn, start, end, list(settings.excluded_statuses))
        last = _orders_before(conn, start)
        effects: list[PlantedEffect] = []
        rows: list[dict[str, Any]] = []
        for segment in sorted(targets):
            members = snap[snap["segment"] == segment]["customer_id"].astype(str).sort_values().tolist()
            key = campaign_key(scheme, as_of, segment)
            plan = _PlantPlan(segment, targets[segment], key, start, window, seed)
            effects.append(_plant_segment(plan, members, bought, last, rows))
        if rows:
            conn.execute(insert(orders_table), rows)
    return effects


def write_planted_orders(engine: Engine, files: DemoDataFiles) -> int:
    """Write the warehouse's planted orders to ``files.planted`` (+ its mapping); remove both when there
    are none. Returns the number of orders written."""
    o = orders_table.c
    with engine.connect() as conn:
        rows = conn.execute(
            select(*(o[c] for c in _PLANTED_COLUMNS)).where(o.source == PLANTED_SOURCE).order_by(o.order_id)
        ).all()
    if not rows:
        files.planted.unlink(missing_ok=True)
        files.planted_mapping.unlink(missing_ok=True)
        return 0
    frame = pd.DataFrame(rows, columns=list(_PLANTED_COLUMNS))
    frame["ordered_at"] = pd.to_datetime(frame["ordered_at"]).astype("datetime64[us]")
    tmp = files.planted.with_suffix(".parquet.tmp")
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp, compression="zstd")
    tmp.replace(files.planted)
    files.planted_mapping.write_text(PLANTED_MAPPING)
    return len(rows)


def _planting_snapshot(
    conn: Connection, as_of: date, scheme: str, uplift: Mapping[str, float]
) -> pd.DataFrame:
    """(customer_id, segment) of the snapshot's members in the segments named in ``uplift``.

    Raises:
        ConfigError: a lift outside [0, 1), or a segment the snapshot does not have.
    """
    s = rfm_snapshots.c
    snap = pd.DataFrame(
        conn.execute(
            select(s.customer_id, s.segment).where(
                s.as_of == as_of, s.scheme == scheme, s.segment.in_(sorted(uplift))
            )
        ).all(),
        columns=["customer_id", "segment"],
    )
    missing = sorted(set(uplift) - set(snap["segment"]))
    bad = sorted(k for k, v in uplift.items() if not 0 <= v < 1)
    if missing or bad:
        raise ConfigError(
            f"cannot plant an uplift in {', '.join(missing + bad)} of the {scheme} snapshot of {as_of}",
            fix="name segments of the snapshot, with lifts from 0 up to (not including) 1",
        )
    return snap


def _window_buyers(conn: Connection, start: datetime, end: datetime, excluded: list[str]) -> set[str]:
    """Customers with a qualifying order (status not excluded) in ``(start, end]``."""
    o = orders_table.c
    qualifying = (o.status.is_(None)) | (o.status.not_in(excluded)) if excluded else true()
    return {
        str(c)
        for (c,) in conn.execute(
            select(o.customer_id)
            .where(o.ordered_at > start, o.ordered_at <= end, qualifying)
            .group_by(o.customer_id)
        )
    }


def _orders_before(conn: Connection, start: datetime) -> pd.DataFrame:
    """Per customer (the index) with orders up to ``start``: the last order time, the mean amount and a
    place and category."""
    o = orders_table.c
    return pd.DataFrame(
        conn.execute(
            select(
                o.customer_id,
                func.max(o.ordered_at),
                func.avg(o.amount),
                func.max(o.country),
                func.max(o.city),
                func.max(o.category),
            )
            .where(o.ordered_at <= start)
            .group_by(o.customer_id)
        ).all(),
        columns=["customer_id", "last", "mean_amount", "country", "city", "category"],
    ).set_index("customer_id")


@dataclass(frozen=True)
class _PlantPlan:
    """One segment's planted lift and the attribution window its orders fall in."""

    segment: str
    target: PlantTarget
    key: str  # the campaign key: the split's hash key
    start: datetime  # the end of the as_of day; orders go in (start, start + window days)
    window: int
    seed: int


def _plant_segment(
    plan: _PlantPlan, members: list[str], bought: set[str], last: pd.DataFrame, rows: list[dict[str, Any]]
) -> PlantedEffect:
    """Append the segment's planted orders to ``rows`` (numbered on from what is there) and say what they are."""
    base = sum(m in bought for m in members) / len(members)
    rng = np.random.default_rng([plan.seed, *plan.segment.encode()])
    lift, coupon = plan.target.lift, plan.target.coupon
    chance = lift / (1 - base) if base < 1 else 0.0
    share, control = plan.target.holdout_share, plan.target.global_control_share
    mine = [
        m
        for m in members
        if member_group(plan.key, m, share) == "treatment" and not in_global_control(m, control)
    ]
    draws, when, redeem = rng.random(len(mine)), rng.random(len(mine)), rng.random(len(mine))
    buyers = [i for i, m in enumerate(mine) if m not in bought and draws[i] < chance]
    codes = coupon.codes([mine[i] for i in buyers]) if coupon is not None and buyers else {}
    amounts: list[float] = []
    discount = 0.0
    for i in buyers:
        m = mine[i]
        info = last.loc[m] if m in last.index else None
        mean = float(info["mean_amount"]) if info is not None else 50.0
        amount = max(1.0, round(float(rng.gamma(4.0, mean / 4.0)), 2))
        code = codes.get(m) if coupon is not None and redeem[i] < coupon.redeem_rate else None
        if code is not None and coupon is not None:
            discount += coupon.discount(amount)
        amounts.append(amount)
        rows.append(
            {
                "order_id": f"P{len(rows) + 1:08d}",
                "customer_id": m,
                "ordered_at": plan.start + timedelta(seconds=1 + when[i] * (plan.window * 86_400 - 2)),
                "amount": amount,
                "status": "Completed",
                "coupon_code": code,
                "country": None if info is None else info["country"],
                "city": None if info is None else info["city"],
                "category": None if info is None else info["category"],
                "source": PLANTED_SOURCE,
            }
        )
    mean_amount = float(np.mean(amounts)) if amounts else 0.0
    redeemed = sum(1 for r in rows[len(rows) - len(amounts) :] if r["coupon_code"] is not None)
    rate = coupon.redeem_rate if coupon is not None else 0.0
    return PlantedEffect(
        plan.segment, lift, len(mine), base, len(amounts), mean_amount, redeemed, discount, rate
    )
