"""Benchmark: ``demo-data`` generation and ``ingest`` into DuckDB and PostgreSQL, next to their floors.

    python bench/bench_ingest.py                          # 2M order rows, ~370k customers
    python bench/bench_ingest.py --rows 10000000 --postgres-rows 2000000
    python bench/bench_ingest.py --postgres-url postgresql+psycopg://postgres@127.0.0.1:55432/postgres

Each contender runs in its own subprocess so its peak RSS is its own:

* ``generate``     — ``segments.demo_data.generate`` writing orders.parquet + tickets.csv;
* ``ingest-duck``  — ``ingest_file(..., "parquet", mapping)`` into a fresh DuckDB file (checks, staging,
  customers, de-duplication, one transaction);
* ``reingest-duck``— the same file again (every order found unchanged, nothing written);
* ``floor-duck``   — ``CREATE TABLE AS SELECT * FROM read_parquet(...)``: the least a load can do;
* ``ingest-pg``    — the same ingest into a fresh PostgreSQL database (staging in DuckDB, ``COPY``, merge);
* ``floor-pg``     — a bare ``COPY`` of the same rows (pre-rendered CSV) into an unindexed table.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PG_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:55432/postgres"


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _subset(src: Path, rows: int, dst: Path) -> Path:
    import duckdb

    duckdb.connect().execute(
        f"COPY (SELECT * FROM read_parquet('{src}') LIMIT {rows}) TO '{dst}' (FORMAT parquet)"
    )
    return dst


def phase(name: str, args: argparse.Namespace) -> dict:
    """Run one contender in this process and return its numbers."""
    sys.path.insert(0, str(REPO))
    work = Path(args.work)
    orders = work / "demo" / "orders.parquet"
    mapping = work / "demo" / "mapping.yaml"
    t0 = time.perf_counter()
    rows = args.rows
    if name == "generate":
        from segments.demo_data import generate

        generate(work / "demo", customers=args.customers, orders=args.rows, seed=7)
    elif name in ("ingest-duck", "reingest-duck"):
        from activation.settings import Settings
        from activation.warehouse import get_engine
        from segments.ingest import ingest_file

        settings = Settings(data_dir=work, warehouse_url=f"duckdb:///{work / 'ingest.duckdb'}")
        t0 = time.perf_counter()
        report = ingest_file(get_engine(settings), settings, orders, "parquet", mapping)
        assert report.orders == args.rows, report
    elif name == "floor-duck":
        import duckdb

        con = duckdb.connect(str(work / "floor.duckdb"))
        t0 = time.perf_counter()
        con.execute(f"CREATE OR REPLACE TABLE orders AS SELECT * FROM read_parquet('{orders}')")
        con.close()
    elif name == "ingest-pg":
        from activation.settings import Settings
        from activation.warehouse import get_engine
        from segments.ingest import ingest_file

        rows = args.postgres_rows
        src = _subset(orders, rows, work / "pg.parquet") if rows < args.rows else orders
        settings = Settings(data_dir=work, warehouse_url=args.pg_db)
        t0 = time.perf_counter()
        report = ingest_file(get_engine(settings), settings, src, "parquet", mapping)
        assert report.orders == rows, report
    elif name == "floor-pg":
        import duckdb
        import psycopg

        rows = args.postgres_rows
        csv = work / "pg.csv"
        duckdb.connect().execute(
            f"COPY (SELECT order_id, customer_id, ordered_at, amount, status FROM read_parquet('{orders}') "
            f"LIMIT {rows}) TO '{csv}' (FORMAT csv, HEADER false)"
        )
        dsn = args.pg_db.replace("postgresql+psycopg://", "postgresql://")
        t0 = time.perf_counter()
        with psycopg.connect(dsn) as conn, conn.cursor() as cur:
            cur.execute(
                "CREATE TABLE floor_orders (order_id text, customer_id text, ordered_at timestamp, "
                "amount double precision, status text)"
            )
            with cur.copy("COPY floor_orders FROM STDIN (FORMAT csv)") as copy, csv.open("rb") as fh:
                while chunk := fh.read(1 << 20):
                    copy.write(chunk)
    seconds = time.perf_counter() - t0
    return {"phase": name, "rows": rows, "seconds": seconds, "peak_mb": _peak_mb()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--customers", type=int, default=None, help="default: rows / 5.4 (the 70M/13M ratio)")
    ap.add_argument(
        "--postgres-rows", type=int, default=None, help="rows for the PostgreSQL phases (default: --rows)"
    )
    ap.add_argument(
        "--postgres-url", default=PG_DEFAULT, help="admin URL; a scratch database is created and dropped"
    )
    ap.add_argument("--no-postgres", action="store_true")
    ap.add_argument("--phase", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("--pg-db", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.customers = args.customers or max(1, int(args.rows / 5.4))
    args.postgres_rows = min(args.postgres_rows or args.rows, args.rows)
    if args.phase:
        print(json.dumps(phase(args.phase, args)))
        return

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    results = []
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        pg_db = None
        phases = ["generate", "ingest-duck", "reingest-duck", "floor-duck"]
        if not args.no_postgres:
            admin = create_engine(args.postgres_url, isolation_level="AUTOCOMMIT")
            name = f"bench_ingest_{uuid.uuid4().hex[:8]}"
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
            pg_db = make_url(args.postgres_url).set(database=name).render_as_string(hide_password=False)
            phases += ["ingest-pg", "floor-pg"]
        try:
            for name in phases:
                cmd = [
                    sys.executable,
                    __file__,
                    "--phase",
                    name,
                    "--work",
                    tmp,
                    "--rows",
                    str(args.rows),
                    "--customers",
                    str(args.customers),
                    "--postgres-rows",
                    str(args.postgres_rows),
                ]
                if pg_db:
                    cmd += ["--pg-db", pg_db]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode:
                    sys.exit(f"{name} failed:\n{proc.stderr}")
                result = json.loads(proc.stdout.strip().splitlines()[-1])
                results.append(result)
                rate = result["rows"] / result["seconds"] if result["seconds"] else 0
                print(
                    f"{name:14s} {result['rows']:>12,} rows {result['seconds']:8.1f} s {rate:>12,.0f} rows/s "
                    f"peak {result['peak_mb']:,.0f} MB",
                    flush=True,
                )
        finally:
            if pg_db:
                with admin.connect() as conn:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{make_url(pg_db).database}" WITH (FORCE)'))
                admin.dispose()
    by = {r["phase"]: r for r in results}
    print(f"duckdb ingest / floor: {by['ingest-duck']['seconds'] / by['floor-duck']['seconds']:.1f}x")
    if "ingest-pg" in by:
        print(f"postgres ingest / bare COPY: {by['ingest-pg']['seconds'] / by['floor-pg']['seconds']:.1f}x")


if __name__ == "__main__":
    main()
