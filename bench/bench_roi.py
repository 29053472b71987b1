"""Benchmark: outcome collection and the ROI report against a pandas baseline.

    python bench/bench_roi.py                                   # 200k customers, 1.5M orders, DuckDB
    python bench/bench_roi.py --url postgresql+psycopg://user@host:5432/db   # an EMPTY database

Builds the demo data set, ingests it, computes two rfm11 snapshots and plans the campaigns (untimed), then
times:

* ``collect``        — ``collect_outcomes`` on an empty ledger (attribution in the warehouse, one transaction);
* ``collect again``  — the same with nothing new (what a daily run costs);
* ``compute_roi``    — the ROI table alone;
* ``report``         — ``write_roi_report`` (ROI + snapshots + migration + breakdowns, HTML + CSV);
* ``pandas``         — baseline: read the members and the orders of the window into pandas and compute
  conversion and revenue per member per segment and group; its time includes the reads.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from datetime import timedelta
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--customers", type=int, default=200_000)
    ap.add_argument("--orders", type=int, default=1_500_000)
    ap.add_argument("--url", default=None, help="warehouse URL (default: a temporary DuckDB file)")
    args = ap.parse_args()

    import pandas as pd
    from sqlalchemy import select, text

    from activation.settings import Settings
    from activation.tables import campaign_members, campaigns
    from activation.warehouse import dispose_engines, get_engine
    from campaigns.plan import plan_campaigns
    from outcomes.ledger import campaign_windows, collect_outcomes
    from outcomes.report import write_roi_report
    from outcomes.roi import compute_roi
    from segments.demo_data import generate
    from segments.ingest import ingest_file
    from segments.snapshots import compute_snapshot, last_quarter_end

    tmp = Path(tempfile.mkdtemp(prefix="bench-roi-"))
    try:
        url = args.url or f"duckdb:///{tmp / 'warehouse.duckdb'}"
        settings = Settings(data_dir=tmp, warehouse_url=url, coupon_secret="bench-only")
        engine = get_engine(settings)
        files = generate(tmp / "demo", customers=args.customers, orders=args.orders, seed=3)
        ingest_file(engine, settings, files.orders, "parquet", mapping_path=files.mapping)
        as_of = last_quarter_end(files.last_date - timedelta(days=180))
        for day in (last_quarter_end(as_of), as_of):
            compute_snapshot(engine, settings, day, "rfm11")
        plan_campaigns(engine, settings, as_of, "rfm11")
        with engine.connect() as conn:
            members = conn.execute(text("select count(*) from campaign_members")).scalar()

        timings: dict[str, float] = {}

        def timed(name: str, fn):  # type: ignore[no-untyped-def]
            started = time.perf_counter()
            out = fn()
            timings[name] = time.perf_counter() - started
            return out

        first = timed("collect", lambda: collect_outcomes(engine, settings, as_of, "rfm11"))
        again = timed("collect again", lambda: collect_outcomes(engine, settings, as_of, "rfm11"))
        roi = timed("compute_roi", lambda: compute_roi(engine, settings, as_of, "rfm11"))
        timed("report", lambda: write_roi_report(engine, settings, as_of, "rfm11", tmp / "report.html"))

        def baseline() -> pd.DataFrame:
            windows = campaign_windows(engine, settings, as_of, "rfm11")
            start, end = min(w.start for w in windows), max(w.end for w in windows)
            with engine.connect() as conn:
                m = pd.read_sql(
                    select(
                        campaign_members.c.customer_id, campaign_members.c.member_group, campaigns.c.segment
                    )
                    .join(campaigns, campaigns.c.campaign_id == campaign_members.c.campaign_id)
                    .where(campaigns.c.campaign_id.in_([w.campaign_id for w in windows])),
                    conn,
                )
                o = pd.read_sql(
                    text(
                        "select customer_id, amount, status from orders where ordered_at > :s and ordered_at <= :e"
                    ),
                    conn,
                    params={"s": start, "e": end},
                )
            o = o[~o["status"].str.strip().str.lower().isin([s.lower() for s in settings.excluded_statuses])]
            per = o.groupby("customer_id")["amount"].sum()
            m["revenue"] = m["customer_id"].map(per).fillna(0.0)
            m["converted"] = m["revenue"].gt(0) | m["customer_id"].isin(per.index)
            return m.groupby(["segment", "member_group"]).agg(
                rate=("converted", "mean"), rpm=("revenue", "mean")
            )

        base = timed("pandas", baseline)
        t = roi.set_index("segment")
        for seg, group in base.index:
            col = "treated" if group == "treatment" else "holdout"
            assert abs(t.loc[seg, f"{col}_conversion_rate"] - base.loc[(seg, group), "rate"]) < 1e-9, seg
    finally:
        dispose_engines()
        shutil.rmtree(tmp, ignore_errors=True)

    print(
        f"warehouse {url.split(':')[0]}: {args.orders:,} order rows, {members:,} campaign members, "
        f"{len(roi)} campaigns; {first.converted_added:,} conversions (re-collect added {again.converted_added})"
    )
    for name, secs in timings.items():
        print(f"  {name:<14} {secs:7.2f} s")


if __name__ == "__main__":
    main()
