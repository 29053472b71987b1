"""Benchmark: K-Means clustering at warehouse scale, and the CLV fit + backtest on the demo data.

Two parts, each in its own process so each reports its own peak RSS:

* ``kmeans``: synthetic RFM for N customers (default 1,000,000; ``--customers 13000000`` for the full
  run) → :func:`segments.kmeans.fit_clusters` with the shipped scheme's settings (k chosen by silhouette on
  fixed-seed samples, then the final fit on every customer: Lloyd below 50M customers, MiniBatch above).
  Baseline in the same run: the other algorithm's final fit alone, with the chosen k on the same data
  (skip it with ``--no-baseline``).
* ``clv``: the demo data set (default 5,000 customers / 40,000 orders; ``--customers/--orders`` to scale)
  ingested into DuckDB → ``fit_clv`` (fit on the windows before T, backtest on (T, T+h]) at two cut-offs,
  the model next to both naive baselines; then a ``clv_tier`` snapshot.

    python bench/bench_models.py kmeans [--customers 13000000] [--no-baseline]
    python bench/bench_models.py clv [--customers 5000 --orders 40000] [--horizon-days 90]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import numpy as np


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def synthetic_rfm(n: int, seed: int = 11) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Skewed RFM like a real shop's: most customers bought once, long ago, a little."""
    rng = np.random.default_rng(seed)
    frequency = rng.geometric(0.45, n).astype(np.float64)
    recency = np.minimum(rng.exponential(220.0, n) / np.sqrt(frequency), 729).round()
    monetary = frequency * rng.gamma(2.0, 35.0, n)
    return recency, frequency, monetary


def bench_kmeans(n: int, baseline: bool) -> None:
    from threadpoolctl import threadpool_limits

    from activation.settings import Settings
    from segments.kmeans import KMeansConfig, fit_clusters, standardise, transform
    from segments.schemes import load_scheme

    cfg = KMeansConfig.from_mapping(load_scheme("kmeans", Settings()).params)
    t0 = time.perf_counter()
    r, f, m = synthetic_rfm(n)
    print(
        f"synthetic RFM for {n:,} customers: {time.perf_counter() - t0:.1f} s, peak RSS {peak_rss_gb():.2f} GB"
    )
    t0, c0 = time.perf_counter(), time.process_time()
    model = fit_clusters(r, f, m, cfg)
    took, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(
        f"project fit_clusters ({model.algorithm}, k={model.k} by silhouette {model.silhouette}): {took:.1f} s wall, "
        f"{cpu:.1f} s CPU, peak RSS {peak_rss_gb():.2f} GB"
    )
    for c in model.candidates:
        print(
            f"  k={c['k']}: silhouette {c['silhouette']:.4f}, inertia {c['inertia']:,.0f} (on the selection sample)"
        )
    for row in model.profile():
        print(
            f"  {row['cluster']} {row['name']:<16} {row['customers']:>11,}  R {row['recency_days']:>7.1f} d  "
            f"F {row['frequency']:>6.2f}  M {row['monetary']:>9.2f}"
        )
    if baseline:
        from sklearn.cluster import KMeans, MiniBatchKMeans

        z, _, _ = standardise(transform(r, f, m))
        if model.algorithm == "MiniBatchKMeans":
            name, est = (
                "full-batch KMeans (Lloyd, 4 inits)",
                KMeans(n_clusters=model.k, n_init=4, random_state=cfg.seed),
            )
        else:
            name = f"MiniBatchKMeans (batch {cfg.batch_size:,})"
            est = MiniBatchKMeans(
                n_clusters=model.k,
                batch_size=cfg.batch_size,
                n_init=4,
                random_state=cfg.seed,
                compute_labels=False,
            )
        t0, c0 = time.perf_counter(), time.process_time()
        with threadpool_limits(1 if n < 2_000_000 else None):
            est.fit(z)
        base, base_cpu = time.perf_counter() - t0, time.process_time() - c0
        inertia = -float(est.score(z))
        mine = float(((z - model.centroids_z[model.labels]) ** 2).sum())
        print(
            f"baseline: the final fit alone with {name}, k={model.k}: {base:.1f} s wall, {base_cpu:.1f} s CPU; "
            f"inertia {inertia:,.0f} vs project {mine:,.0f} ({mine / inertia - 1:+.2%}); peak RSS {peak_rss_gb():.2f} GB"
        )


def bench_clv(customers: int, orders: int, horizon: int) -> None:
    from activation.settings import Settings
    from activation.warehouse import get_engine
    from segments.clv import fit_clv
    from segments.demo_data import generate
    from segments.ingest import ingest_file
    from segments.snapshots import compute_snapshot

    tmp = Path(tempfile.mkdtemp(prefix="bench-models-"))
    settings = Settings(data_dir=tmp, warehouse_url=f"duckdb:///{tmp / 'warehouse.duckdb'}")
    engine = get_engine(settings)
    t0 = time.perf_counter()
    files = generate(tmp / "demo", customers=customers, orders=orders, seed=7)
    ingest_file(engine, settings, files.orders, "parquet", mapping_path=files.mapping)
    print(
        f"demo data {customers:,} customers / {orders:,} orders ({files.first_date} .. {files.last_date}) "
        f"generated + ingested in {time.perf_counter() - t0:.1f} s"
    )
    header = f"{'predictor':<30} {'MAE':>9} {'RMSE':>9} {'Spearman':>9} {'top-10% capture':>16}"
    for back in (horizon, 2 * horizon):
        train_until = files.last_date - timedelta(days=back)
        result = fit_clv(engine, settings, train_until, horizon)
        mt = result.metrics
        print(
            f"\nclv fit --train-until {train_until} --horizon-days {horizon}: {result.seconds:.1f} s "
            f"({mt['train']['rows']:,} training rows, {mt['test_customers']:,} backtest customers), "
            f"peak RSS {peak_rss_gb():.2f} GB; beats both baselines: {result.beats_baselines}"
        )
        print(header)
        for key in ("model", "last_period_spend", "rfm11_segment_mean"):
            s = mt[key]
            print(
                f"{key:<30} {s['mae']:>9.2f} {s['rmse']:>9.2f} {s['spearman']:>9.4f} "
                f"{s['top_decile_capture']:>16.1%}"
            )
    t0 = time.perf_counter()
    snap = compute_snapshot(engine, settings, files.last_date, "clv_tier")
    print(f"\nclv_tier snapshot as of {files.last_date}: {snap.segments} in {time.perf_counter() - t0:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="part", required=True)
    km = sub.add_parser("kmeans")
    km.add_argument("--customers", type=int, default=1_000_000)
    km.add_argument("--no-baseline", action="store_true")
    cl = sub.add_parser("clv")
    cl.add_argument("--customers", type=int, default=5_000)
    cl.add_argument("--orders", type=int, default=40_000)
    cl.add_argument("--horizon-days", type=int, default=90)
    args = parser.parse_args()
    if args.part == "kmeans":
        bench_kmeans(args.customers, not args.no_baseline)
    else:
        bench_clv(args.customers, args.orders, args.horizon_days)


if __name__ == "__main__":
    main()
