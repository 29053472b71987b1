"""``bench_segment.py --engine spark``: the segment step on DuckDB and on Spark ``local[N]``, side by side.

For each size the orders are generated once (DuckDB SQL straight into a Parquet file, reused when it is
already there) and loaded unchanged into a DuckDB file (the DuckDB contenders) and as a Spark table over
the Parquet file (``CREATE TABLE orders USING parquet LOCATION …``). Per core count a fresh Spark Connect
server is started (and stopped before the next), and on it, per size:

* ``floor``    — the bare ``GROUP BY customer_id`` aggregate with the segment's filters, executed in full
  and thrown away (``write.format("noop")``): the least any RFM computation on that Spark has to do;
* ``segment``  — the project's own compute path, ``compute_snapshot`` with the Spark server as the
  warehouse and a DuckDB file as the state store (see :func:`segment_on_spark`), with its steps' seconds
  (metrics cached, cut-points, scored rows fetched as Arrow, their insert);
* ``transfer`` — of those steps, the scored rows' Arrow fetch and their bulk insert into ``rfm_snapshots``
  of the DuckDB state store (rows/s, and 13M rows at that rate).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench_segment import AS_OF, FLOOR_SQL, measure, orders_select

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root: tests.spark_server
from tests.spark_server import SparkServer

LOOKBACK_DAYS = 730

# --- data ------------------------------------------------------------------------------------------


def parquet_of(data_dir: Path, rows: int, customers: int) -> Path:
    """The Parquet file of ``rows`` orders for ``customers`` customers, generated on first use."""
    path = data_dir / f"orders_{rows}_{customers}" / "parquet" / "orders.parquet"
    if path.exists():
        return path
    import duckdb

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    t0 = time.perf_counter()
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    con.execute("SELECT setseed(0.42)")
    con.execute(
        f"COPY ({orders_select(rows, customers)}) TO '{partial}' (FORMAT parquet, ROW_GROUP_SIZE 1000000)"
    )
    con.close()
    partial.rename(path)
    print(f"generated {rows:,} orders in {time.perf_counter() - t0:.1f} s -> {path}", flush=True)
    return path


def duckdb_of(parquet: Path) -> Path:
    """A DuckDB warehouse file holding the same orders (``CREATE TABLE orders AS`` the Parquet file)."""
    import duckdb

    db = parquet.parent.parent / "warehouse.duckdb"
    if not db.exists():
        partial = db.with_suffix(".partial")
        con = duckdb.connect(str(partial))
        con.execute("SET enable_progress_bar = false")
        con.execute(f"CREATE TABLE orders AS SELECT * FROM read_parquet('{parquet}')")
        con.execute("CHECKPOINT")
        con.close()
        partial.rename(db)
    return db


def describe_data(parquet: Path) -> dict[str, Any]:
    """Orders, customers, and customers with a counting order in the window (the rows a snapshot scores)."""
    import duckdb

    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    con.execute(f"CREATE VIEW orders AS SELECT * FROM read_parquet('{parquet}')")
    rows, customers = con.execute("SELECT count(*), count(DISTINCT customer_id) FROM orders").fetchone()
    scored = con.execute(f"SELECT count(*) FROM ({FLOOR_SQL})").fetchone()[0]
    con.close()
    return {
        "orders": rows,
        "customers": customers,
        "scored_customers": scored,
        "parquet_mb": round(parquet.stat().st_size / 2**20),
    }


# --- on Spark ---------------------------------------------------------------------------------------


def load_orders(spark: Any, parquet: Path) -> float:
    """(Re)define ``orders`` as a Spark table over the Parquet file; returns seconds to first full scan."""
    spark.sql("DROP TABLE IF EXISTS orders")
    spark.sql(f"CREATE TABLE orders USING parquet LOCATION '{parquet.parent}'")
    t0 = time.perf_counter()
    spark.sql("SELECT count(*), max(ordered_at), sum(amount) FROM orders").collect()
    return time.perf_counter() - t0


def spark_floor(spark: Any) -> dict[str, Any]:
    t0 = time.perf_counter()
    spark.sql(FLOOR_SQL).write.format("noop").mode("overwrite").save()
    return {"seconds": time.perf_counter() - t0}


def fresh_state(path: Path) -> str:
    """A new DuckDB state store with the project's schema; returns its URL."""
    from activation.warehouse import ensure_schema, make_engine

    path.unlink(missing_ok=True)
    url = f"duckdb:///{path}"
    engine = make_engine(url)
    ensure_schema(engine)
    engine.dispose()
    return url


def segment_on_spark(server: SparkServer, state_path: Path, table: str = "orders") -> dict[str, Any]:
    """``compute_snapshot(..., "rfm11", run_checks=False)`` with the Spark server as the warehouse and a
    DuckDB file as the state store: metrics cached in Spark, cut-points read, scored rows fetched as Arrow
    and bulk-loaded into ``rfm_snapshots`` in the state store's transaction."""
    from activation.warehouse import dispose_engines, get_engine
    from segments.snapshots import compute_snapshot

    settings = _settings(state_path, server.url, table)
    engine = get_engine(settings)
    t0 = time.perf_counter()
    result = compute_snapshot(engine, settings, AS_OF, "rfm11", run_checks=False)
    secs = time.perf_counter() - t0
    dispose_engines()
    steps = result.steps
    moved = steps["fetch"] + steps["insert"]
    return {
        "seconds": secs,
        "customers": result.customers,
        "segments": result.segments,
        "steps": steps,
        "transfer": {
            "seconds": moved,
            "fetch_seconds": steps["fetch"],
            "insert_seconds": steps["insert"],
            "rows": result.customers,
            "rows_per_s": result.customers / moved if moved else 0.0,
        },
    }


def _settings(state_path: Path, warehouse_url: str, table: str) -> Any:
    from activation.settings import OrdersSource, Settings

    return Settings(
        data_dir=state_path.parent,
        warehouse_url=warehouse_url,
        state_url=f"duckdb:///{state_path}",
        lookback_days=LOOKBACK_DAYS,
        orders=OrdersSource(table=table),
    )


def _best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    best = dict(min(runs, key=lambda r: r["seconds"]))
    best["runs"] = [round(r["seconds"], 2) for r in runs]
    return best


def _timed(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    load0 = os.getloadavg()[0]
    r = fn()
    r["load"] = [round(load0, 1), round(os.getloadavg()[0], 1)]
    return r


def duckdb_side(db: Path, repeat: int, memory_limit: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in ("floor", "segment"):
        runs = []
        for _ in range(repeat):
            runs.append(_timed(lambda kind=kind: measure(kind, db, memory_limit)))
            print(f"  duckdb {kind:8s} {runs[-1]['seconds']:8.2f} s  load {runs[-1]['load']}", flush=True)
        out[kind] = _best(runs)
    return out


def spark_side(
    server: SparkServer, parquet: Path, repeat: int, state_path: Path, warm_up: bool
) -> dict[str, Any]:
    spark = server.session()
    out: dict[str, Any] = {"first_scan_s": load_orders(spark, parquet)}
    if warm_up:  # the JVM's first run (class loading, JIT, code generation) is not what is measured: both
        # contenders run once on a 10 % sample first
        t0 = time.perf_counter()
        spark.sql("DROP TABLE IF EXISTS orders_warm_up")
        spark.sql(
            "CREATE TABLE orders_warm_up USING parquet AS SELECT * FROM orders TABLESAMPLE (10 PERCENT)"
        )
        spark.sql(FLOOR_SQL.replace("FROM orders", "FROM orders_warm_up")).write.format("noop").mode(
            "overwrite"
        ).save()
        fresh_state(state_path)
        segment_on_spark(server, state_path, "orders_warm_up")
        spark.sql("DROP TABLE orders_warm_up")
        out["warm_up_s"] = time.perf_counter() - t0
    floors, segments = [], []
    for _ in range(repeat):
        floors.append(_timed(lambda: spark_floor(spark)))
        print(
            f"  spark[{server.cores}] floor    {floors[-1]['seconds']:8.2f} s  load {floors[-1]['load']}",
            flush=True,
        )
        fresh_state(state_path)
        segments.append(_timed(lambda: segment_on_spark(server, state_path)))
        print(
            f"  spark[{server.cores}] segment  {segments[-1]['seconds']:8.2f} s  load {segments[-1]['load']}  "
            + ", ".join(f"{k} {v:.2f}" for k, v in segments[-1]["steps"].items()),
            flush=True,
        )
    out["floor"] = _best(floors)
    out["segment"] = _best(segments)
    return out


def environment(memory: str) -> dict[str, Any]:
    import duckdb
    import pyspark

    java = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr.splitlines()
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "duckdb": duckdb.__version__,
        "pyspark": pyspark.__version__,
        "java": java[0] if java else "?",
        "python": platform.python_version(),
        "machine_cores": os.cpu_count(),
        "machine_memory_gb": round(mem_gb, 1),
        "spark_driver_memory": memory,
        "load_at_start": [round(x, 1) for x in os.getloadavg()],
    }


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def _seconds(r: dict[str, Any] | None) -> float | None:
    return r["seconds"] if r else None


def report_size(label: str, res: dict[str, Any]) -> None:
    d = res["data"]
    print(
        f"\n== {label}: {d['orders']:,} orders, {d['customers']:,} customers, {d['scored_customers']:,} scored "
        f"(Parquet {d['parquet_mb']} MB)"
    )
    duck = res["duckdb"]
    print(f"{'':28s} {'seconds':>9s}  ratio")
    print(f"{'duckdb floor':28s} {duck['floor']['seconds']:9.2f}  runs {duck['floor']['runs']}")
    print(
        f"{'duckdb segment':28s} {duck['segment']['seconds']:9.2f}  "
        f"{_ratio(duck['segment']['seconds'], duck['floor']['seconds'])} of the DuckDB floor"
    )
    segs: dict[int, float | None] = {}
    floors: dict[int, float | None] = {}
    for cores, sp in sorted(res["spark"].items()):
        floors[cores] = _seconds(sp["floor"])
        segs[cores] = _seconds(sp["segment"])
        name = f"spark local[{cores}]"
        print(f"{name + ' floor':28s} {floors[cores] or 0:9.2f}  runs {sp['floor']['runs']}")
        g = sp["segment"]
        steps = ", ".join(f"{k} {v:.2f} s" for k, v in g["steps"].items())
        print(
            f"{name + ' segment':28s} {segs[cores]:9.2f}  {_ratio(segs[cores], floors[cores])} of its floor "
            f"(target <= 2x); runs {g['runs']}; steps: {steps}"
        )
        t = g["transfer"]
        at_13m = 13_000_000 / t["rows_per_s"] if t["rows_per_s"] else float("nan")
        print(
            f"{name + ' transfer':28s} {t['seconds']:9.2f}  {t['rows']:,} scored rows at {t['rows_per_s']:,.0f} rows/s "
            f"(Arrow fetch {t['fetch_seconds']:.2f} s + DuckDB insert {t['insert_seconds']:.2f} s); "
            f"13M rows at that rate: {at_13m:.1f} s (target <= 60 s)"
        )
    if 1 in floors and 2 in floors:
        print(
            f"local[2] / local[1]: floor {_ratio(floors[2], floors[1])}, segment {_ratio(segs[2], segs[1])} (target <= 0.65x)"
        )


def run(args: Any) -> None:
    """Generate each size once, measure DuckDB, then Spark per core count (one server each)."""
    data_dir = args.data_dir or Path(tempfile.gettempdir()) / "bench-segment-data"
    env = environment(args.spark_memory)
    conf = dict(kv.split("=", 1) for kv in args.spark_conf)
    results: dict[str, Any] = {}
    files: dict[str, Path] = {}
    for rows, customers in args.sizes:
        label = f"{rows:,} orders"
        files[label] = parquet_of(data_dir, rows, customers)
        data = describe_data(files[label])
        print(f"{label}: {data}", flush=True)
        results[label] = {
            "data": data,
            "duckdb": duckdb_side(duckdb_of(files[label]), args.repeat, args.memory_limit),
            "spark": {},
        }
    state_path = data_dir / "state.duckdb"
    for cores in args.cores:
        with SparkServer(cores, args.spark_memory, conf) as server:
            env[f"spark_local[{cores}]_start_s"] = round(server.started_s, 1)
            env["spark"] = server.session().version
            env["spark_conf"] = conf
            print(
                f"Spark {env['spark']} local[{cores}] up in {server.started_s:.1f} s at {server.url}",
                flush=True,
            )
            for i, (label, parquet) in enumerate(files.items()):
                results[label]["spark"][cores] = spark_side(server, parquet, args.repeat, state_path, i == 0)
    state_path.unlink(missing_ok=True)
    env["load_at_end"] = [round(x, 1) for x in os.getloadavg()]
    print("\n" + ", ".join(f"{k} {v}" for k, v in env.items()))
    for label, res in results.items():
        report_size(label, res)
    print(json.dumps({"environment": env, "results": results}, default=str))
    sys.stdout.flush()
