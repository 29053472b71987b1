"""``bench_segment.py --engine spark``: the segment step on DuckDB and on Spark ``local[N]``, side by side.

For each size the orders are generated once (DuckDB SQL straight into a Parquet file, reused when it is
already there) and loaded unchanged into a DuckDB file (the DuckDB contenders) and as a Spark table over
the Parquet file (``CREATE TABLE orders USING parquet LOCATION …``). Per core count a fresh Spark Connect
server is started (and stopped before the next), and on it, per size:

* ``floor``    — the bare ``GROUP BY customer_id`` aggregate with the segment's filters, executed in full
  and thrown away (``write.format("noop")``): the least any RFM computation on that Spark has to do;
* ``segment``  — the project's own compute path, Spark warehouse + DuckDB state store
  (see :func:`segment_on_spark`);
* ``transfer`` — the scored rows, already computed and cached on Spark, fetched as Arrow and bulk-inserted
  into ``rfm_snapshots`` of a fresh DuckDB state store: fetch and insert timed apart, rows/s.
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


def transfer(spark: Any, scored: Any, state_path: Path) -> dict[str, Any]:
    """Fetch the (cached) scored rows as Arrow and bulk-insert them into ``rfm_snapshots`` of a fresh
    DuckDB state store, as the Spark path does after computing them."""
    fresh_state(state_path)
    t0 = time.perf_counter()
    arrow = scored.toArrow()
    fetched = time.perf_counter() - t0
    _insert_arrow(state_path, arrow)
    inserted = time.perf_counter() - t0 - fetched
    rows = arrow.num_rows
    total = fetched + inserted
    return {
        "seconds": total,
        "fetch_seconds": fetched,
        "insert_seconds": inserted,
        "rows": rows,
        "arrow_mb": arrow.nbytes / 2**20,
        "rows_per_s": rows / total if total else 0.0,
    }


# the rows of rfm_snapshots, made from the floor: the transfer's stand-in while no scored rows come from
# the project's Spark path (same columns and types, one row per scored customer)
STAND_IN_SCORED_SQL = (
    f"SELECT DATE '{AS_OF}' AS as_of, 'rfm11' AS scheme, customer_id, "
    f"CAST(datediff(DATE '{AS_OF}', CAST(last_at AS DATE)) AS INT) AS recency_days, "
    "CAST(n AS INT) AS frequency, CAST(total AS DOUBLE) AS monetary, CAST(1 + n % 5 AS SMALLINT) AS r_score, "
    "CAST(1 + n % 3 AS SMALLINT) AS f_score, CAST(1 + n % 4 AS SMALLINT) AS m_score, "
    "CASE WHEN n > 2 THEN 'Champions' ELSE 'Hibernating' END AS segment "
    f"FROM ({FLOOR_SQL}) f"
)


def project_spark_path() -> str | None:
    """Why the project's Spark compute path cannot run here, or None when it can."""
    try:
        import databricks.sqlalchemy  # noqa: F401  (the dialect the Spark path compiles with)

        from activation import spark  # noqa: F401
    except ImportError as exc:
        return f"the project's Spark path is not available ({exc})"
    return None


def segment_on_spark(server: SparkServer, state_path: Path) -> dict[str, Any]:
    """``compute_snapshot(..., "rfm11", run_checks=False)`` with the Spark server as the warehouse and a
    DuckDB file as the state store: metrics cached in Spark, cut-points read, scored rows fetched as Arrow
    and bulk-loaded into ``rfm_snapshots`` in the state store's transaction."""
    from activation.warehouse import dispose_engines, get_engine
    from segments.snapshots import compute_snapshot

    settings = _settings(state_path, server.url)
    engine = get_engine(settings)
    t0 = time.perf_counter()
    result = compute_snapshot(engine, settings, AS_OF, "rfm11", run_checks=False)
    secs = time.perf_counter() - t0
    dispose_engines()
    return {"seconds": secs, "customers": result.customers, "segments": result.segments}


def _settings(state_path: Path, warehouse_url: str | None = None) -> Any:
    from activation.settings import Settings

    return Settings(
        data_dir=state_path.parent,
        warehouse_url=warehouse_url,
        state_url=f"duckdb:///{state_path}" if warehouse_url else None,
        lookback_days=LOOKBACK_DAYS,
    )


def _insert_arrow(state_path: Path, arrow: Any) -> None:
    """The scored rows into ``rfm_snapshots`` of the DuckDB state store (an Arrow scan, one statement)."""
    import duckdb

    con = duckdb.connect(str(state_path))
    con.execute("SET enable_progress_bar = false")
    con.register("scored_rows", arrow)
    cols = ", ".join(arrow.column_names)
    con.execute(f"INSERT INTO rfm_snapshots ({cols}) SELECT {cols} FROM scored_rows")
    con.execute("CHECKPOINT")
    con.close()


def segment_direct(spark: Any, state_path: Path) -> dict[str, Any]:
    """rfm11 through the project's own segmentation SQL (``segments.rfm``), compiled with the Databricks
    dialect, run on Spark: the metrics cached (``CACHE TABLE … AS``), the quantile cut-points in one
    ``percentile_disc(array(…)) WITHIN GROUP`` per metric (the statement ``rfm.cutpoints_select`` builds
    does not compile for Spark yet), the scored rows fetched as Arrow and inserted into the DuckDB state store."""
    from databricks.sqlalchemy.base import DatabricksDialect
    from sqlalchemy import column, table

    from segments import rfm
    from segments.schemes import LOWER_IS_BETTER, load_scheme

    dialect = DatabricksDialect()

    def sql(q: Any) -> str:
        return str(q.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))

    settings = _settings(state_path)
    scheme = load_scheme("rfm11", settings)
    window = rfm.Window.of(AS_OF, LOOKBACK_DAYS)
    metrics = table(
        "bench_metrics", *(column(c) for c in ("customer_id", "recency_days", "frequency", "monetary"))
    )
    t0 = time.perf_counter()
    spark.sql(f"CACHE TABLE bench_metrics AS {sql(rfm.metrics_select(settings, scheme, window))}")
    t_metrics = time.perf_counter() - t0
    cols = ["count(*) AS customers"]
    for m, bins in sorted(scheme.scores.items()):
        x = rfm.METRIC_COLUMNS[m]
        ps = ", ".join(repr(p) for p in rfm.cutpoint_probabilities(bins))
        order = f"{x} DESC" if m in LOWER_IS_BETTER else x
        cols += [
            f"percentile_disc(array({ps})) WITHIN GROUP (ORDER BY {order}) AS {m}_cuts",
            f"avg({x}) AS {m}_mean",
        ]
    stats = spark.sql(f"SELECT {', '.join(cols)} FROM bench_metrics").collect()[0].asDict()
    cuts = {m: rfm.thresholds(m, bins, stats) for m, bins in scheme.scores.items()}
    t_cuts = time.perf_counter() - t0 - t_metrics
    scored_sql = sql(rfm.scored_select(metrics, scheme, cuts, AS_OF))
    t1 = time.perf_counter()
    arrow = spark.sql(scored_sql).toArrow()
    t_fetch = time.perf_counter() - t1
    _insert_arrow(state_path, arrow)
    secs = time.perf_counter() - t0
    spark.sql(f"CACHE TABLE bench_scored AS {scored_sql}")  # for the transfer measured apart (not timed)
    return {
        "seconds": secs,
        "customers": int(stats["customers"]),
        "metrics_seconds": t_metrics,
        "cutpoints_seconds": t_cuts,
        "fetch_seconds": t_fetch,
        "insert_seconds": secs - t_metrics - t_cuts - t_fetch,
        "path": "direct: segments.rfm SQL compiled for Spark by the benchmark",
    }


def _segment(spark: Any, server: SparkServer, state_path: Path, missing: str | None) -> dict[str, Any]:
    """The project's compute path when it is there and runs; else :func:`segment_direct`, saying why."""
    if missing is None:
        try:
            return segment_on_spark(server, state_path)
        except Exception as exc:  # the path is there but cannot run this yet: measure the SQL directly
            missing = f"compute_snapshot on Spark failed: {str(exc).splitlines()[0][:200]}"
        fresh_state(state_path)
    result = segment_direct(spark, state_path)
    result["why_direct"] = missing
    return result


def scored_on_spark(spark: Any) -> tuple[Any, str]:
    """The scored rows, computed and cached on Spark (not timed): what the transfer moves."""
    if spark.catalog.tableExists("bench_scored"):
        return spark.table("bench_scored"), "the segment's scored rows (rfm11), cached on Spark"
    spark.sql(f"CACHE TABLE bench_scored AS {STAND_IN_SCORED_SQL}")
    return spark.table("bench_scored"), "stand-in rows from the floor (same columns as rfm_snapshots)"


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
    server: SparkServer, parquet: Path, repeat: int, state_path: Path, warm_up: bool, direct: bool
) -> dict[str, Any]:
    spark = server.session()
    out: dict[str, Any] = {"first_scan_s": load_orders(spark, parquet)}
    if warm_up:  # the JVM's first aggregate (class loading, JIT) is not what is measured: warm it on a sample
        t0 = time.perf_counter()
        spark.sql(FLOOR_SQL.replace("FROM orders", "FROM orders TABLESAMPLE (10 PERCENT)")).write.format(
            "noop"
        ).mode("overwrite").save()
        out["warm_up_s"] = time.perf_counter() - t0
    missing = project_spark_path()
    floors, segments = [], []
    for _ in range(repeat):
        floors.append(_timed(lambda: spark_floor(spark)))
        print(
            f"  spark[{server.cores}] floor    {floors[-1]['seconds']:8.2f} s  load {floors[-1]['load']}",
            flush=True,
        )
        fresh_state(state_path)
        for view in ("bench_scored", "bench_metrics"):
            spark.sql(f"UNCACHE TABLE IF EXISTS {view}")
            spark.sql(f"DROP VIEW IF EXISTS {view}")
        segments.append(
            _timed(lambda: _segment(spark, server, state_path, missing if not direct else "--direct"))
        )
        print(
            f"  spark[{server.cores}] segment  {segments[-1]['seconds']:8.2f} s  load {segments[-1]['load']}  "
            + ", ".join(f"{k} {v:.2f}" for k, v in segments[-1].items() if k.endswith("_seconds")),
            flush=True,
        )
    out["floor"] = _best(floors)
    out["segment"] = _best(segments)
    out["segment_path"] = segments[0].get(
        "path", "the project's compute_snapshot (Spark warehouse, DuckDB state)"
    )
    if segments[0].get("why_direct"):
        out["segment_path"] += f" ({segments[0]['why_direct']})"
    scored, what = scored_on_spark(spark)
    out["transfer"] = _timed(lambda: transfer(spark, scored, state_path))
    out["transfer"]["what"] = what
    for view in ("bench_scored", "bench_metrics"):
        spark.sql(f"UNCACHE TABLE IF EXISTS {view}")
        spark.sql(f"DROP VIEW IF EXISTS {view}")
    t = out["transfer"]
    print(
        f"  spark[{server.cores}] transfer {t['seconds']:8.2f} s  ({t['rows']:,} rows, fetch {t['fetch_seconds']:.2f} s"
        f" + insert {t['insert_seconds']:.2f} s, {t['rows_per_s']:,.0f} rows/s)  load {t['load']}",
        flush=True,
    )
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
        segs[cores] = _seconds(sp.get("segment"))
        name = f"spark local[{cores}]"
        print(f"{name + ' floor':28s} {floors[cores] or 0:9.2f}  runs {sp['floor']['runs']}")
        print(f"{'':28s} segment path: {sp['segment_path']}")
        if "metrics_seconds" in sp["segment"]:
            g = sp["segment"]
            print(
                f"{'':28s} metrics cached {g['metrics_seconds']:.2f} s, cut-points {g['cutpoints_seconds']:.2f} s, "
                f"scored rows fetched {g['fetch_seconds']:.2f} s, inserted {g['insert_seconds']:.2f} s"
            )
        if segs[cores] is not None:
            print(
                f"{name + ' segment':28s} {segs[cores]:9.2f}  {_ratio(segs[cores], floors[cores])} "
                f"of its floor (target <= 2x); runs {sp['segment']['runs']}"
            )
        else:
            print(f"{name + ' segment':28s} {'-':>9s}  ({sp.get('segment_missing')})")
        t = sp["transfer"]
        at_13m = 13_000_000 / t["rows_per_s"] if t["rows_per_s"] else float("nan")
        print(
            f"{name + ' transfer':28s} {t['seconds']:9.2f}  {t['rows']:,} rows at {t['rows_per_s']:,.0f} rows/s "
            f"(fetch {t['fetch_seconds']:.2f} s + DuckDB insert {t['insert_seconds']:.2f} s, "
            f"Arrow {t['arrow_mb']:.0f} MB); 13M rows at that rate: {at_13m:.1f} s (target <= 60 s)"
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
                results[label]["spark"][cores] = spark_side(
                    server, parquet, args.repeat, state_path, i == 0, args.direct
                )
    state_path.unlink(missing_ok=True)
    env["load_at_end"] = [round(x, 1) for x in os.getloadavg()]
    print("\n" + ", ".join(f"{k} {v}" for k, v in env.items()))
    for label, res in results.items():
        report_size(label, res)
    print(json.dumps({"environment": env, "results": results}, default=str))
    sys.stdout.flush()
