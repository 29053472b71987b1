"""Campaigns, members, customers, snapshots and orders for the outcome / ROI / report tests, written
straight into the warehouse tables (the tables are the contract), plus an independent pandas version of
the attribution rule to check the SQL against."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

import pandas as pd
from sqlalchemy import select
from sqlalchemy.engine import Engine

from activation.tables import campaign_members, campaigns, customers, orders, rfm_snapshots, snapshot_runs

AS_OF = date(2024, 3, 31)
PREV_AS_OF = date(2023, 12, 31)
SCHEME = "rfm11"
SEND = datetime.combine(AS_OF, time(23, 59, 59, 999999))  # backtest send time: end of the as_of day

# segment: (offer JSON, treated, holdout, treated buy prob, holdout buy prob)
SEGMENTS: dict[str, tuple[dict, int, int, float, float]] = {
    "At Risk": ({"type": "winback_coupon", "percent": 20, "expiry_days": 30}, 260, 240, 0.30, 0.18),
    "Champions": ({"type": "vip_early_access", "early_access_days": 2}, 180, 120, 0.55, 0.50),
    "New Customers": (
        {"type": "second_purchase_discount", "percent": 10, "expiry_days": 30},
        60,
        0,
        0.25,
        0.0,
    ),
    "Hibernating": ({"type": "none"}, 30, 8, 0.10, 0.10),
    "Lost": ({"type": "none"}, 0, 0, 0.0, 0.0),
}
CITIES = ["Shanghai", "Hangzhou", "Guangzhou", "Beijing", "Nanjing", "Wuhan"]
CATEGORIES = ["Food", "Beauty", "Apparel", "Electronics"]


@dataclass
class Fixture:
    campaign_ids: dict[str, str]  # segment -> campaign_id
    members: pd.DataFrame  # campaign_id, segment, customer_id, member_group, coupon_code
    orders: pd.DataFrame


def campaign_row(segment: str, offer: dict, treated: int, holdout: int, **extra: object) -> dict:
    cid = f"cmp-{segment.lower().replace(' ', '-')}-v1"
    row = {
        "campaign_id": cid,
        "campaign_key": f"{SCHEME}/{AS_OF.isoformat()}/{segment}",
        "version": 1,
        "as_of": AS_OF,
        "scheme": SCHEME,
        "segment": segment,
        "template": "generic",
        "subject": f"Hello {segment}",
        "offer_type": offer["type"],
        "offer": json.dumps(offer),
        "holdout_share": 0.1,
        "template_hash": "t" * 8,
        "policy_hash": "p" * 8,
        "destinations": "[]",
        "treated": treated,
        "holdout": holdout,
        "excluded": "{}",
        "send_time": None,
        "created_at": datetime(2024, 4, 1, 8, 0),
    }
    row.update(extra)
    return row


def build(engine: Engine, seed: int = 7, window_days: int = 30) -> Fixture:
    """Write the fixture; orders cover every attribution edge case the tests look at."""
    rng = random.Random(seed)
    camp_rows, member_rows, customer_rows, order_rows, snap_rows = [], [], [], [], []
    n = 0
    oid = 0
    end = SEND + timedelta(days=window_days)

    def order(
        cust: str, at: datetime, amount: float, status: str = "Completed", coupon: str | None = None
    ) -> None:
        nonlocal oid
        oid += 1
        order_rows.append(
            {
                "order_id": f"o{oid:06d}",
                "customer_id": cust,
                "ordered_at": at,
                "amount": round(amount, 2),
                "status": status,
                "coupon_code": coupon,
                "country": "CN",
                "city": rng.choice(CITIES),
                "category": rng.choice(CATEGORIES),
                "source": "test",
            }
        )

    prev_segments = list(SEGMENTS)
    for segment, (offer, treated, holdout, pt, ph) in SEGMENTS.items():
        row = campaign_row(segment, offer, treated, holdout)
        camp_rows.append(row)
        cid = row["campaign_id"]
        coupon_offer = "percent" in offer
        for group, count, p in (("treatment", treated, pt), ("holdout", holdout, ph)):
            for _ in range(count):
                n += 1
                cust = f"c{n:05d}"
                code = f"WB-{n:05d}X" if (coupon_offer and group == "treatment") else None
                member_rows.append(
                    {"campaign_id": cid, "customer_id": cust, "member_group": group, "coupon_code": code}
                )
                customer_rows.append(
                    {
                        "customer_id": cust,
                        "email": f"User{n}@Example.com ",
                        "first_name": f"U{n}",
                        "country": "CN",
                        "city": rng.choice(CITIES),
                        "unsubscribed": False,
                    }
                )
                snap_rows.append(_snap(AS_OF, cust, segment))
                snap_rows.append(_snap(PREV_AS_OF, cust, rng.choice(prev_segments)))
                # history before the send: never counts
                order(
                    cust,
                    datetime.combine(AS_OF, time(12)) - timedelta(days=rng.randint(0, 200)),
                    rng.uniform(5, 300),
                )
                if rng.random() < p:
                    k = 1 + (rng.random() < 0.3)
                    for _j in range(k):
                        at = SEND + timedelta(
                            days=rng.randint(1, window_days), hours=rng.choice([0, 0, 9, 15])
                        )
                        if at > end:
                            at = datetime.combine(end.date(), time())
                        coupon = code if (code and rng.random() < 0.6) else None
                        order(cust, at, rng.uniform(10, 400), coupon=coupon)
                # noise: cancelled and returned orders inside the window never count
                if rng.random() < 0.08:
                    order(cust, SEND + timedelta(days=3), 99.0, status=rng.choice(["Cancelled", "Returned"]))
                # just after the window: never counts
                if rng.random() < 0.08:
                    order(cust, datetime.combine(end.date() + timedelta(days=1), time()), 55.0)
    # edge cases on named customers of "At Risk"
    risk = [m for m in member_rows if m["campaign_id"] == "cmp-at-risk-v1"]
    t0 = next(m for m in risk if m["member_group"] == "treatment")
    t1 = [m for m in risk if m["member_group"] == "treatment"][1]
    h0 = next(m for m in risk if m["member_group"] == "holdout")
    order(t0["customer_id"], datetime.combine(AS_OF, time(23, 0)), 500.0)  # the as_of day itself: no
    order(
        t0["customer_id"], datetime.combine(AS_OF + timedelta(days=window_days), time()), 40.0
    )  # last day: yes
    order(t1["customer_id"], SEND + timedelta(days=2), 80.0, coupon="BOGUS-CODE")  # unknown coupon
    order(
        h0["customer_id"], SEND + timedelta(days=2), 60.0, coupon=t0["coupon_code"]
    )  # someone else's coupon
    order(t1["customer_id"], SEND + timedelta(days=4), 70.0, status=None)  # no status: counts

    with engine.begin() as conn:
        conn.execute(campaigns.insert(), camp_rows)
        if member_rows:
            conn.execute(campaign_members.insert(), member_rows)
        conn.execute(customers.insert(), customer_rows)
        conn.execute(orders.insert(), order_rows)
        conn.execute(rfm_snapshots.insert(), snap_rows)
        conn.execute(
            snapshot_runs.insert(),
            [
                {"as_of": day, "scheme": SCHEME, "scheme_hash": "fixture", "lookback_days": None,
                 "customers": sum(r["as_of"] == day for r in snap_rows), "cutpoints": "{}",
                 "warnings": "[]", "created_at": datetime(2024, 4, 1)}
                for day in sorted({r["as_of"] for r in snap_rows})
            ],
        )  # fmt: skip
    seg_of = {r["campaign_id"]: r["segment"] for r in camp_rows}
    members = pd.DataFrame(member_rows, columns=["campaign_id", "customer_id", "member_group", "coupon_code"])
    members["segment"] = members["campaign_id"].map(seg_of)
    return Fixture({r["segment"]: r["campaign_id"] for r in camp_rows}, members, pd.DataFrame(order_rows))


def _snap(as_of: date, cust: str, segment: str) -> dict:
    return {
        "as_of": as_of, "scheme": SCHEME, "customer_id": cust, "recency_days": 10, "frequency": 2,
        "monetary": 100.0, "r_score": 3, "f_score": 3, "m_score": 3, "segment": segment,
    }  # fmt: skip


def read_orders(engine: Engine) -> pd.DataFrame:
    with engine.connect() as conn:
        return pd.DataFrame(conn.execute(select(orders)).mappings().all())


def expected_per_member(
    members: pd.DataFrame,
    orders_df: pd.DataFrame,
    start: datetime = SEND,
    window_days: int = 30,
    excluded: tuple[str, ...] = ("Cancelled", "Returned"),
    percent: dict[str, float] | None = None,
) -> pd.DataFrame:
    """The attribution rule in plain pandas: per member revenue, orders, redeemed discount."""
    end = start + timedelta(days=window_days)
    o = orders_df.copy()
    o["ordered_at"] = pd.to_datetime(o["ordered_at"])
    o = o[(o["ordered_at"] > pd.Timestamp(start)) & (o["ordered_at"] <= pd.Timestamp(end))]
    o = o[o["status"].isna() | ~o["status"].isin(excluded)]
    m = members.merge(o, on="customer_id", how="left", suffixes=("", "_order"))
    m["own"] = (
        (m["member_group"] == "treatment")
        & m["coupon_code"].notna()
        & (m["coupon_code_order"] == m["coupon_code"])
    )
    pct = m["segment"].map(percent or {}).fillna(0.0)
    m["disc"] = m["amount"].where(m["own"], 0.0).fillna(0.0) * pct / 100.0
    per = (
        m.groupby(["segment", "campaign_id", "customer_id", "member_group"], dropna=False)
        .agg(revenue=("amount", lambda s: float(s.fillna(0).sum())), orders=("order_id", "nunique"),
             discount=("disc", "sum"), redeemed=("own", "any"))
        .reset_index()
    )  # fmt: skip
    per["converted"] = per["orders"] > 0
    return per


def expected_per_segment(per_member: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for seg, g in per_member.groupby("segment"):
        t = g[g["member_group"] == "treatment"]
        h = g[g["member_group"] == "holdout"]
        rows.append(
            {
                "segment": seg,
                "treated": len(t),
                "holdout": len(h),
                "treated_conversion_rate": t["converted"].mean() if len(t) else float("nan"),
                "holdout_conversion_rate": h["converted"].mean() if len(h) else float("nan"),
                "treated_revenue_per_member": t["revenue"].mean() if len(t) else float("nan"),
                "holdout_revenue_per_member": h["revenue"].mean() if len(h) else float("nan"),
                "discount_redeemed": t["discount"].sum(),
            }
        )
    return pd.DataFrame(rows).set_index("segment")


PERCENT = {seg: float(offer.get("percent", 0)) for seg, (offer, *_rest) in SEGMENTS.items()}
