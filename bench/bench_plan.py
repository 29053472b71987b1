"""Benchmark: campaign planning (holdout split + coupons) and rendering.

Builds a snapshot of N members (default 1,000,000) over the 11 rfm11 segments, with customers (emails, some
unsubscribed) and a suppression list, directly in the warehouse; then measures in one run:

* ``plan_campaigns`` end to end (members/s), and the rerun that finds nothing to change;
* the coupon step alone (keyed HMAC + encoding + uniqueness in Python) as its baseline;
* the floor: one ``INSERT … SELECT`` of the snapshot into ``campaign_members`` with the md5 split, no coupons;
* rendering: merge-tag mode (once per segment) and per-member mode (renders/s).

    python bench/bench_plan.py [--members 1000000] [--url postgresql+psycopg://…] [--renders 20000]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from datetime import date
from pathlib import Path

from sqlalchemy import text

from activation import dialect
from activation.settings import Settings
from activation.warehouse import get_engine
from campaigns.coupons import assign_coupons
from campaigns.plan import current_campaigns, plan_campaigns, read_members
from campaigns.render import render_member, render_merge_tags
from segments.schemes import load_scheme

AS_OF = date(2025, 12, 31)
SEGMENTS = load_scheme("rfm11").segment_names  # the shipped scheme, in its order


def build(engine, n: int) -> None:
    seg_case = (
        "CASE "
        + " ".join(
            f"WHEN i % {len(SEGMENTS)} = {k} THEN '{s.replace(chr(39), chr(39) * 2)}'"
            for k, s in enumerate(SEGMENTS)
        )
        + " END"
    )
    if dialect.is_duckdb(engine):
        src = f"FROM range({n}) t(i)"
        cid = "'c' || lpad(CAST(i AS VARCHAR), 8, '0')"
    else:
        src = f"FROM generate_series(0, {n - 1}) t(i)"
        cid = "'c' || lpad(CAST(i AS VARCHAR), 8, '0')"
    with engine.begin() as conn:
        conn.execute(
            text(
                f"INSERT INTO rfm_snapshots SELECT DATE '{AS_OF}', 'rfm11', {cid}, i % 365, 1 + i % 9, 10.0 + i % 700,"
                f" 1 + i % 5, 1 + i % 5, 1 + i % 5, {seg_case} {src}"
            )
        )
        conn.execute(
            text(
                f"INSERT INTO customers (customer_id, email, first_name, unsubscribed) SELECT {cid},"
                f" CASE WHEN i % 10 = 0 THEN NULL ELSE 'user' || CAST(i AS VARCHAR) || '@example.com' END,"
                f" 'Name' || CAST(i AS VARCHAR), i % 40 = 1 {src}"
            )
        )
    # 1 % of emails suppressed (hash computed in the warehouse with the same helper the plan uses)
    from sqlalchemy import String, column, literal, select, table

    with engine.begin() as conn:
        c = table("customers", column("customer_id", String), column("email", String))
        h = dialect.sha256_hex(c.c.email, conn)
        q = select(h, literal("cleaned"), literal("bench"), literal(AS_OF)).where(
            c.c.email.is_not(None), c.c.customer_id.like("%37")
        )
        conn.execute(
            text(f"INSERT INTO suppressions {q.compile(conn, compile_kwargs={'literal_binds': True})}")
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--members", type=int, default=1_000_000)
    ap.add_argument("--url", default=None)
    ap.add_argument("--renders", type=int, default=20_000)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-plan-"))
    url = args.url or f"duckdb:///{tmp / 'bench.duckdb'}"
    settings = Settings(data_dir=tmp, warehouse_url=url, coupon_secret="bench-secret")
    engine = get_engine(settings)
    n = args.members
    t0 = time.perf_counter()
    build(engine, n)
    print(f"built snapshot of {n:,} members on {engine.dialect.name} in {time.perf_counter() - t0:.1f} s")

    t0 = time.perf_counter()
    result = plan_campaigns(engine, settings, AS_OF, "rfm11")
    plan_s = time.perf_counter() - t0
    planned = sum(
        s.treated + s.holdout + sum(s.excluded.values()) for s in result.segments if s.status == "created"
    )
    coupons = sum(s.treated for s in result.segments if s.status == "created" and "off" in s.offer)
    print(
        f"plan_campaigns: {plan_s:.2f} s for {planned:,} members of active segments "
        f"({planned / plan_s:,.0f} members/s), {coupons:,} coupons"
    )

    t0 = time.perf_counter()
    again = plan_campaigns(engine, settings, AS_OF, "rfm11")
    rerun_s = time.perf_counter() - t0
    assert all(s.status != "created" for s in again.segments)
    print(f"rerun (nothing to change): {rerun_s:.2f} s")

    ids = [f"c{i:08d}" for i in range(coupons)]
    t0 = time.perf_counter()
    assign_coupons(settings.coupon_key(), "rfm11/2025-12-31/bench", ids, "WB")
    coupon_s = time.perf_counter() - t0
    print(f"coupon step alone: {coupon_s:.2f} s for {coupons:,} codes ({coupons / coupon_s:,.0f} codes/s)")

    with engine.begin() as conn:
        bucket = dialect.hash_bucket(text("'k|' || customer_id"), conn)
        sql = (
            f"INSERT INTO campaign_members SELECT 'floor', customer_id, CASE WHEN "
            f"{bucket.compile(conn, compile_kwargs={'literal_binds': True})} < 429496730 THEN 'holdout' "
            f"ELSE 'treatment' END, NULL FROM rfm_snapshots WHERE scheme = 'rfm11'"
        )
        t0 = time.perf_counter()
        conn.execute(text(sql))
        floor_s = time.perf_counter() - t0
        conn.execute(text("DELETE FROM campaign_members WHERE campaign_id = 'floor'"))
    print(
        f"floor (one INSERT ... SELECT with the md5 split, all {n:,} rows, no coupons, no exclusions): "
        f"{floor_s:.2f} s"
    )

    camps = current_campaigns(engine, AS_OF, "rfm11")
    t0 = time.perf_counter()
    for c in camps:
        render_merge_tags(settings, c)
    merge_s = time.perf_counter() - t0
    print(f"merge-tag mode: {len(camps)} renders (one per segment) in {merge_s * 1000:.0f} ms")

    at_risk = next(c for c in camps if c.segment == "At Risk")
    members = read_members(engine, at_risk.campaign_id, group="treatment")[: args.renders]
    render_member(settings, at_risk, members[0])
    t0 = time.perf_counter()
    for m in members:
        render_member(settings, at_risk, m)
    render_s = time.perf_counter() - t0
    print(
        f"per-member mode: {len(members):,} renders in {render_s:.2f} s ({len(members) / render_s:,.0f} renders/s)"
    )
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
