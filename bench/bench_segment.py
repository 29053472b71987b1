"""Benchmark: the project's segment computation against a bare DuckDB GROUP BY (the floor) and pandas.

    python bench/bench_segment.py                       # ~2M order rows, 400k customers
    python bench/bench_segment.py --rows 70000000 --customers 13000000
    python bench/bench_segment.py --rows 5000000 --customers 1000000 --repeat 2 --skip pandas   # ~2 minutes
    python bench/bench_segment.py --engine spark --orders 1e6      # DuckDB beside Spark local[1] and local[2]
    python bench/bench_segment.py --engine spark --orders 1e7,7e7  # the full sizes (see bench/spark_segment.py)

Generates the orders directly in a DuckDB file (skewed purchase counts: most customers buy once), then
measures each contender in its own subprocess so its peak RSS is its own:

* ``segment``   — ``compute_snapshot(..., "rfm11", run_checks=False)``: metrics, quantile cut-points,
  scores, segments, written to ``rfm_snapshots`` in one transaction;
* ``checks``    — ``run_checks`` (the data checks ``activation segment`` runs first);
* ``activation``— ``compute_snapshot(..., "rfm11")`` with the checks, i.e. what ``activation segment`` does:
  the data checks, then the snapshot (its relationship check runs on the snapshot's own metrics), on orders
  as ingest leaves them (their ids fingerprinted as unique, so the checks skip the ``GROUP BY order_id``);
* ``activation-unverified`` — the same on orders written behind ingest's back (no fingerprint: the checks
  group by order id); ``checks`` runs in that state too.
* ``floor``     — ``CREATE TEMP TABLE AS SELECT customer_id, max, count, sum … GROUP BY customer_id`` with
  the same filters: the least any RFM computation has to do;
* ``pandas``    — read the orders into pandas (without order ids), groupby + ``qcut(rank(method="first"))``
  quintiles; its time includes the read.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

AS_OF = date(2024, 12, 31)
# the least any RFM computation has to do: the segment's window (2023-01-02 <= ordered_at < 2025-01-01, a
# 730-day lookback to AS_OF) and statuses, one GROUP BY customer
FLOOR_SQL = (
    "SELECT customer_id, max(ordered_at) AS last_at, count(*) AS n, sum(amount) AS total FROM orders "
    "WHERE ordered_at < DATE '2025-01-01' AND ordered_at >= DATE '2023-01-02' "
    "AND (status IS NULL OR status NOT IN ('Cancelled', 'Returned')) GROUP BY customer_id"
)
REPO = Path(__file__).resolve().parent.parent


def orders_select(rows: int, customers: int) -> str:
    """DuckDB SQL of ``rows`` orders for about ``customers`` customers: customer ``c<i>`` for the first
    ``customers`` orders, then a skewed draw so a few customers buy often and most buy once or twice."""
    return f"""
        SELECT
            'o' || i::VARCHAR AS order_id,
            'c' || (CASE WHEN i < {customers} THEN i
                         ELSE floor(pow(random(), 3) * {customers})::BIGINT END)::VARCHAR AS customer_id,
            TIMESTAMP '2023-01-01' + to_seconds(floor(random() * 730 * 86400)::BIGINT) AS ordered_at,
            round(5 + random() * random() * 400, 2)::DOUBLE AS amount,
            CASE WHEN random() < 0.04 THEN 'Cancelled' WHEN random() < 0.02 THEN 'Returned'
                 ELSE 'Completed' END AS status,
            NULL::VARCHAR AS coupon_code, NULL::VARCHAR AS country, NULL::VARCHAR AS city,
            NULL::VARCHAR AS category, 'bench' AS source
        FROM range({rows}) t(i)
        """


def generate(path: Path, rows: int, customers: int, seed: float = 0.42) -> None:
    """Write ``rows`` orders for about ``customers`` customers into ``path`` (DuckDB)."""
    import duckdb

    con = duckdb.connect(str(path))
    con.execute("SELECT setseed(?)", [seed])
    con.execute(f"CREATE OR REPLACE TABLE orders AS {orders_select(rows, customers)}")
    con.execute("CHECKPOINT")
    con.close()


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_one(kind: str, db: Path, memory_limit: str | None = None) -> dict:
    """Run one contender in this process; return seconds and peak RSS."""
    # DuckDB settings ride on the warehouse URL (duckdb-engine passes query parameters as config)
    url = f"duckdb:///{db}" + (f"?memory_limit={memory_limit}" if memory_limit else "")
    if kind == "pandas":
        import duckdb
        import pandas as pd

        t0 = time.perf_counter()
        con = duckdb.connect(str(db), read_only=True)
        # order_id is not loaded: one row per order, so frequency is the group size (the kinder baseline)
        df = con.execute("SELECT customer_id, ordered_at, amount, status FROM orders").df()
        con.close()
        t_load = time.perf_counter() - t0
        end = pd.Timestamp(AS_OF) + pd.Timedelta(days=1)
        df = df[(df.ordered_at < end) & (df.ordered_at >= end - pd.Timedelta(days=730))]
        df = df[~df.status.isin(["Cancelled", "Returned"])]
        g = df.groupby("customer_id").agg(
            last=("ordered_at", "max"), frequency=("ordered_at", "size"), monetary=("amount", "sum")
        )
        g["recency_days"] = (pd.Timestamp(AS_OF) - g["last"].dt.normalize()).dt.days
        g["r"] = pd.qcut(g.recency_days.rank(method="first", ascending=False), 5, labels=False) + 1
        g["f"] = pd.qcut(g.frequency.rank(method="first"), 5, labels=False) + 1
        g["m"] = pd.qcut(g.monetary.rank(method="first"), 5, labels=False) + 1
        n = len(g)
        return {
            "seconds": time.perf_counter() - t0,
            "load_seconds": t_load,
            "customers": n,
            "rss_mb": _peak_rss_mb(),
        }

    from sqlalchemy import text

    from activation.settings import Settings
    from activation.warehouse import get_engine

    settings = Settings(data_dir=Path(tempfile.mkdtemp()), warehouse_url=url, lookback_days=730)
    engine = get_engine(settings)
    if kind == "segment":
        from segments.snapshots import compute_snapshot

        t0 = time.perf_counter()
        result = compute_snapshot(engine, settings, AS_OF, "rfm11", run_checks=False)
        secs = time.perf_counter() - t0
        return {
            "seconds": secs,
            "customers": result.customers,
            "rss_mb": _peak_rss_mb(),
            "warnings": result.warnings,
        }
    if kind in ("activation", "activation-unverified", "checks"):
        from segments import checks

        # not timed: the state ingest leaves (the ids vouched for) or a table written some other way
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM verified_sources"))
            if kind == "activation":
                key, fingerprint, _ = checks.ids_fingerprint(conn, "orders", "order_id") or ("", "", 0)
                checks.store_fingerprint(conn, key, fingerprint)
    if kind in ("activation", "activation-unverified"):
        from segments.snapshots import compute_snapshot

        t0 = time.perf_counter()
        result = compute_snapshot(engine, settings, AS_OF, "rfm11")
        return {"seconds": time.perf_counter() - t0, "customers": result.customers, "rss_mb": _peak_rss_mb()}
    if kind == "checks":
        from segments.checks import run_checks

        t0 = time.perf_counter()
        run_checks(engine, settings)
        return {"seconds": time.perf_counter() - t0, "rss_mb": _peak_rss_mb()}
    if kind == "floor":
        t0 = time.perf_counter()
        with engine.begin() as conn:
            conn.execute(text(f"CREATE TEMP TABLE floor AS {FLOOR_SQL}"))
            n = conn.execute(text("SELECT count(*) FROM floor")).scalar_one()
        return {"seconds": time.perf_counter() - t0, "customers": n, "rss_mb": _peak_rss_mb()}
    raise SystemExit(f"unknown contender {kind}")


def measure(kind: str, db: Path, memory_limit: str | None = None) -> dict:
    extra = ["--memory-limit", memory_limit] if memory_limit else []
    proc = subprocess.run(
        [sys.executable, __file__, "--one", kind, "--db", str(db), *extra],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    if proc.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _counts(text: str) -> list[int]:
    """``"1e7,7e7"`` -> [10000000, 70000000]."""
    try:
        return [int(float(part)) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected counts like 1e6 or 10000000,70000000, got {text!r}"
        ) from None


def _arguments() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", choices=("duckdb", "spark"), default="duckdb")
    ap.add_argument(
        "--rows",
        "--orders",
        type=_counts,
        default=None,
        help="orders to generate (1e6 works); with --engine spark a comma list of sizes (default 1e7,7e7)",
    )
    ap.add_argument(
        "--customers",
        type=_counts,
        default=None,
        help="customers per size (default 400k with --engine duckdb; 13/70 of the orders with --engine spark)",
    )
    ap.add_argument("--db", type=Path, default=None, help="DuckDB file to use (kept; reused when it exists)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per contender; the best time is reported")
    ap.add_argument("--skip", default="", help="comma-separated contenders to skip (e.g. pandas)")
    ap.add_argument(
        "--memory-limit", default=None, help="DuckDB memory_limit for floor, segment and checks (e.g. 2GB)"
    )
    spark = ap.add_argument_group("--engine spark")
    spark.add_argument(
        "--cores", type=_counts, default=[1, 2], help="Spark local[N] core counts (default 1,2)"
    )
    spark.add_argument("--spark-memory", default="6g", help="spark.driver.memory of the local server")
    spark.add_argument(
        "--spark-conf", action="append", default=[], metavar="KEY=VALUE", help="more server settings"
    )
    spark.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="where the generated Parquet and DuckDB files are kept and reused (default: the temp dir)",
    )
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.engine == "spark":
        args.rows = args.rows or [10_000_000, 70_000_000]
        args.customers = args.customers or [round(r * 13 / 70) for r in args.rows]
        if len(args.customers) != len(args.rows):
            ap.error("--customers needs one count per size of --orders")
        args.sizes = list(zip(args.rows, args.customers, strict=True))
        return args
    if args.rows and len(args.rows) > 1 or args.customers and len(args.customers) > 1:
        ap.error("several sizes are for --engine spark; give one --rows and --customers")
    args.rows = args.rows[0] if args.rows else 2_000_000
    args.customers = args.customers[0] if args.customers else 400_000
    return args


def main() -> None:
    args = _arguments()
    if args.one:
        print(json.dumps(run_one(args.one, args.db, args.memory_limit)))
        return
    if args.engine == "spark":
        import spark_segment

        spark_segment.run(args)
        return

    db = args.db or Path(tempfile.mkdtemp(prefix="bench-segment-")) / "bench.duckdb"
    if not db.exists():
        t0 = time.perf_counter()
        generate(db, args.rows, args.customers)
        print(f"generated {args.rows:,} orders in {time.perf_counter() - t0:.1f}s -> {db}", flush=True)
    import duckdb

    with duckdb.connect(str(db), read_only=True) as con:
        rows, customers = con.execute("SELECT count(*), count(DISTINCT customer_id) FROM orders").fetchone()
    print(f"{rows:,} orders, {customers:,} customers in {db}", flush=True)
    skip = {s for s in args.skip.split(",") if s}
    results: dict[str, dict] = {}
    # The machine is shared: run the contenders in turn, args.repeat times, and keep each one's best time
    # (its peak RSS is the largest seen).
    for _ in range(args.repeat):
        for kind in ("floor", "segment", "checks", "activation", "activation-unverified", "pandas"):
            if kind in skip:
                continue
            r = measure(kind, db, None if kind == "pandas" else args.memory_limit)
            print(f"{kind:22s} {r['seconds']:8.2f} s   peak RSS {r['rss_mb']:8.0f} MB", flush=True)
            best = results.get(kind)
            if best is None or r["seconds"] < best["seconds"]:
                r["rss_mb"] = max(r["rss_mb"], best["rss_mb"]) if best else r["rss_mb"]
                results[kind] = r
            else:
                best["rss_mb"] = max(best["rss_mb"], r["rss_mb"])
    print(f"best of {args.repeat}:")
    for kind, r in results.items():
        print(f"{kind:22s} {r['seconds']:8.2f} s   peak RSS {r['rss_mb']:8.0f} MB   {r.get('customers', '')}")
    floor = results.get("floor", {}).get("seconds")
    seg = results.get("segment", {}).get("seconds")
    if floor and seg:
        print(f"segment / floor  = {seg / floor:.2f}x (target <= 1.5x)")
    for kind in ("activation", "activation-unverified"):
        act = results.get(kind, {}).get("seconds")
        if floor and act:
            print(f"{kind} (checks + snapshot) / floor = {act / floor:.2f}x (target <= 2x)")
    if seg and "pandas" in results:
        print(f"pandas / segment = {results['pandas']['seconds'] / seg:.1f}x faster (target >= 6x)")
    for w in results.get("segment", {}).get("warnings", []):
        print(f"segment warning: {w}")
    print(
        json.dumps(
            {
                "rows": rows,
                "customers": customers,
                "memory_limit": args.memory_limit,
                "results": results,
            }
        )
    )


if __name__ == "__main__":
    main()
