"""Benchmark: K-Means clustering at warehouse scale, and the CLV fit + backtest on the demo data.

Two parts, each in its own process so each reports its own peak RSS:

* ``kmeans``: synthetic RFM for N customers (default 1,000,000; ``--customers 13000000`` for the full
  run) → :func:`segments.kmeans.fit_clusters` with the shipped scheme's settings (k chosen by silhouette on
  fixed-seed samples, then the final fit on every customer: Lloyd below 50M customers, MiniBatch above).
  Baseline in the same run: the other algorithm's final fit alone, with the chosen k on the same data
  (skip it with ``--no-baseline``).
* ``clv``: three data sets, (a) the demo generator (default 5,000 customers / 40,000 orders), (b) orders
  drawn from a BG/NBD + Gamma-Gamma process with known parameters (default 20,000 customers) and (c) the
  public CDNOW transaction log that ships with lifetimes (23,570 customers, 1997-01 .. 1998-06), each
  ingested into DuckDB; time splits with the cut-off 90 and 273 days before the last order (3- and 9-month
  horizons). Side by side on the same backtest customers: the project's model (``clv fit``), its
  BG/NBD + Gamma-Gamma alone, lifetimes 0.11.3's BG/NBD + Gamma-Gamma on the same summary, last period's
  spend and 0 for everyone. On (b) the fitted parameters next to the truth; then the BTYD fit alone on
  ``--scale-customers`` (default 1,000,000) simulated customers.

    python bench/bench_models.py kmeans [--customers 13000000] [--no-baseline]
    python bench/bench_models.py clv [--customers 5000 --orders 40000] [--sim-customers 20000]
    python bench/bench_models.py clv-scale [--customers 1000000] [--horizon-days 90] [--profile]
"""

from __future__ import annotations

import argparse
import atexit
import os
import resource
import shutil
import tempfile
import time
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


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


#: The BG/NBD + Gamma-Gamma process of data set (b), in days.
TRUE_BGNBD = {"r": 0.6, "alpha": 40.0, "a": 0.8, "b": 2.5}
TRUE_GAMMA_GAMMA = {"p": 4.0, "q": 3.5, "v": 60.0}
SIM_DAYS = 3 * 365
SIM_START = datetime(2023, 1, 1)
SIM_MAPPING = "kind: orders\ncolumns:\n" + "".join(
    f"  {c}: {c}\n" for c in ("order_id", "customer_id", "ordered_at", "amount", "status")
)
PREDICTORS = ("model", "btyd", "lifetimes", "last_period_spend", "all_zero")


def simulated_orders(customers: int, seed: int = 5) -> pd.DataFrame:
    """Orders from a BG/NBD + Gamma-Gamma process with known parameters: customers join uniformly over
    three years (first order on joining), then repeat per :data:`TRUE_BGNBD`, values per
    :data:`TRUE_GAMMA_GAMMA`."""
    from segments.clv import btyd

    rng = np.random.default_rng(seed)
    joined = rng.uniform(0, SIM_DAYS, customers)
    customer, when, nu = btyd.simulate(TRUE_BGNBD, TRUE_GAMMA_GAMMA, SIM_DAYS - joined, seed + 1)
    who = np.concatenate([np.arange(customers), customer])
    day = np.concatenate([joined, joined[customer] + when])
    amount = rng.gamma(TRUE_GAMMA_GAMMA["p"], 1.0, len(who)) / nu[who]
    return pd.DataFrame(
        {
            "order_id": [f"s{i:09d}" for i in range(len(who))],
            "customer_id": [f"c{c:08d}" for c in who],
            "ordered_at": pd.Timestamp(SIM_START) + pd.to_timedelta(day, unit="D"),
            "amount": np.round(amount, 2),
            "status": "Completed",
        }
    )


def _warehouse(name: str) -> tuple[Any, Any, Path]:
    from activation.settings import Settings
    from activation.warehouse import get_engine

    tmp = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    atexit.register(shutil.rmtree, tmp, True)  # the warehouse and generated files go when the run ends
    settings = Settings(data_dir=tmp, warehouse_url=f"duckdb:///{tmp / 'warehouse.duckdb'}")
    return settings, get_engine(settings), tmp


def load_demo(customers: int, orders: int) -> tuple[Any, Any, str]:
    from segments.demo_data import generate
    from segments.ingest import ingest_file

    settings, engine, tmp = _warehouse("demo")
    files = generate(tmp / "demo", customers=customers, orders=orders, seed=7)
    ingest_file(engine, settings, files.orders, "parquet", mapping_path=files.mapping)
    return settings, engine, f"(a) demo generator, {customers:,} customers / {orders:,} orders"


def load_simulated(customers: int) -> tuple[Any, Any, str]:
    from segments.ingest import ingest_file

    settings, engine, tmp = _warehouse("sim")
    orders = simulated_orders(customers)
    orders.to_parquet(tmp / "orders.parquet", index=False)
    (tmp / "mapping.yaml").write_text(SIM_MAPPING)
    ingest_file(engine, settings, tmp / "orders.parquet", "parquet", mapping_path=tmp / "mapping.yaml")
    return (
        settings,
        engine,
        f"(b) BG/NBD + Gamma-Gamma simulation, {customers:,} customers / {len(orders):,} orders",
    )


def load_cdnow() -> tuple[Any, Any, str]:
    """CDNOW's full transaction log as it ships with lifetimes (23,570 customers who first bought in
    1997 Q1, every purchase to 1998-06-30; Fader & Hardie's data set), ingested as a user would
    (``activation ingest CDNOW_master.txt --format cdnow``: each line one order)."""
    import lifetimes
    from sqlalchemy import func, select

    from activation.tables import orders as orders_table
    from segments.ingest import ingest_file

    settings, engine, _ = _warehouse("cdnow")
    ingest_file(engine, settings, Path(lifetimes.__file__).parent / "datasets" / "CDNOW_master.txt", "cdnow")
    with engine.connect() as conn:
        n, customers = conn.execute(
            select(func.count(), func.count(func.distinct(orders_table.c.customer_id)))
        ).one()
    return settings, engine, f"(c) CDNOW (public), {customers:,} customers / {n:,} orders"


def lifetimes_peer(features: pd.DataFrame, horizon: int) -> tuple[np.ndarray, float, dict[str, float]]:
    """lifetimes 0.11.3's BG/NBD + Gamma-Gamma on the same per-customer summary as of the cut-off (days):
    expected spend over the horizon, fit seconds, fitted BG/NBD parameters."""
    from lifetimes import BetaGeoFitter, GammaGammaFitter

    from segments.clv.features import btyd_inputs

    x, t_x, big_t, m = btyd_inputs(features)
    t0 = time.perf_counter()
    bg = BetaGeoFitter().fit(x, t_x, big_t)
    # every customer's x + 1 orders of mean m, as the project fits it; lifetimes refuses m <= 0 (CDNOW has
    # customers whose orders were all $0): the fit leaves them out, as the project's does
    paid = m > 0
    gg = GammaGammaFitter().fit(x[paid] + 1, m[paid])
    took = time.perf_counter() - t0
    orders = np.asarray(bg.conditional_expected_number_of_purchases_up_to_time(horizon, x, t_x, big_t))
    bad = ~np.isfinite(orders)
    if bad.any():
        # lifetimes' closed form (scipy's hyp2f1) returns NaN for some customers when the fitted ``a`` is
        # small; those rows get the same expectation computed by the project from lifetimes' parameters
        from segments.clv import btyd

        params = {k: float(v) for k, v in bg.params_.items()}
        orders[bad] = btyd.expected_purchases(params, horizon, x[bad], t_x[bad], big_t[bad])
        print(f"  lifetimes: NaN expected purchases for {int(bad.sum()):,} of {len(x):,} customers, "
              "filled from its parameters by the project's expectation")  # fmt: skip
    value = gg.conditional_expected_average_profit(x + 1, m)
    return np.asarray(orders * value, dtype=np.float64), took, {k: float(v) for k, v in bg.params_.items()}


def bench_split(settings: Any, engine: Any, last: date, horizon: int) -> dict[str, Any]:
    """One time split: ``clv fit`` with the cut-off ``horizon`` days before the last order, and lifetimes
    on the same customers; every predictor scored on the same backtest."""
    from segments.clv import fit_clv
    from segments.clv.features import load_features
    from segments.clv.metrics import evaluate

    train_until = last - timedelta(days=horizon)
    result = fit_clv(engine, settings, train_until, horizon)
    mt = dict(result.metrics)
    test = load_features(engine, settings, train_until, mt["train"]["window_days"], horizon)
    peer, peer_seconds, peer_params = lifetimes_peer(test, horizon)
    mt["lifetimes"] = evaluate(test["target"].to_numpy(dtype=np.float64), peer)
    return {
        "train_until": train_until,
        "result": result,
        "metrics": mt,
        "peer_seconds": peer_seconds,
        "peer_params": peer_params,
    }


def print_split(split: dict[str, Any], horizon: int) -> None:
    mt, result = split["metrics"], split["result"]
    print(
        f"\n  T = {split['train_until']}, h = {horizon} days: clv fit {result.seconds:.1f} s "
        f"({mt['train']['rows']:,} training rows in {mt['train']['window_days']}-day windows, chose "
        f"{mt['choice']!r}; {mt['test_customers']:,} backtest customers); lifetimes fit {split['peer_seconds']:.2f} s; "
        f"peak RSS {peak_rss_gb():.2f} GB"
    )
    cv = mt.get("cross_validation")
    if cv:
        shares = cv["confidence_vs_btyd"]
        print(
            f"  validation windows as of {', '.join(cv['validation_as_of'])} (pooled): "
            + ", ".join(
                f"{c} RMSE {s['rmse']:.2f}"
                + (f" (beats btyd in {shares[c]:.0%} of resamples)" if c in shares else "")
                for c, s in cv["scores"].items()
            )
        )
        for fold in cv.get("folds", []):
            print(
                f"    window as of {fold['as_of']} ({fold['customers']:,} customers): "
                + ", ".join(f"{c} {fold[c]:.2f}" for c in cv["scores"])
            )
    print(
        f"  {'predictor':<20} {'MAE':>9} {'RMSE':>9} {'Spearman':>9} {'top-10%':>8} {'pred/actual':>12}"
        f" {'buyer AUC':>10} {'Spearman, buyers':>17}"
    )
    for key in PREDICTORS:
        s = mt[key]
        print(
            f"  {key:<20} {s['mae']:>9.2f} {s['rmse']:>9.2f} {s['spearman']:>9.4f} "
            f"{s['top_decile_capture']:>8.1%} {s['total_ratio']:>12.3f} {s['buyer_auc']:>10.4f}"
            f" {s['buyers_spearman']:>17.4f}"
        )


def recovery(settings: Any, engine: Any, last: date) -> None:
    """The project's BG/NBD + Gamma-Gamma fitted on every customer as of the last order vs the truth."""
    from segments.clv.features import load_features
    from segments.clv.model import fit_btyd

    feats = load_features(engine, settings, last, 90)
    t0 = time.perf_counter()
    fitted = fit_btyd(feats)
    took = time.perf_counter() - t0
    print(f"\n  parameter recovery as of {last} ({len(feats):,} customers, fit {took:.2f} s):")
    for part, truth in (("bgnbd", TRUE_BGNBD), ("gamma_gamma", TRUE_GAMMA_GAMMA)):
        fit = fitted[part]
        for name, true in truth.items():
            est, se = fit["params"][name], fit["standard_errors"][name]
            print(
                f"    {name:<6} true {true:>8.3f}  fitted {est:>8.3f} ± {se:.3f}  ({(est - true) / se:+.2f} SE)"
            )


def bench_btyd_scale(customers: int) -> None:
    """BG/NBD + Gamma-Gamma fit time alone on ``customers`` simulated summaries (days)."""
    from segments.clv import btyd

    rng = np.random.default_rng(9)
    ages = np.floor(rng.uniform(1, SIM_DAYS, customers))
    customer, when, _ = btyd.simulate(TRUE_BGNBD, TRUE_GAMMA_GAMMA, ages, 10)
    x = np.bincount(customer, minlength=customers).astype(np.float64)
    t_x = np.zeros(customers)
    np.maximum.at(t_x, customer, np.floor(when))  # day resolution, as the warehouse's dates
    m = rng.gamma(4.0, 15.0, customers)
    t0, c0 = time.perf_counter(), time.process_time()
    fit = btyd.fit_bgnbd(x, t_x, ages)
    t1, c1 = time.perf_counter(), time.process_time()
    btyd.fit_gamma_gamma(x + 1, np.round(m, 2))
    t2, c2 = time.perf_counter(), time.process_time()
    print(
        f"\nBTYD fit alone on {customers:,} customers: BG/NBD {t1 - t0:.2f} s wall / {c1 - c0:.2f} s CPU "
        f"({'converged' if fit.converged else 'NOT converged'}), Gamma-Gamma {t2 - t1:.2f} s wall / "
        f"{c2 - c1:.2f} s CPU; peak RSS {peak_rss_gb():.2f} GB; load average {os.getloadavg()[0]:.1f} "
        f"on {os.cpu_count()} cores"
    )


def bench_clv(customers: int, orders: int, sim_customers: int, scale_customers: int) -> None:
    loaders = ((load_demo, (customers, orders)), (load_simulated, (sim_customers,)), (load_cdnow, ()))
    for loader, args in loaders:
        t0 = time.perf_counter()
        settings, engine, title = loader(*args)
        from segments.clv.features import data_range

        span = data_range(engine, settings)
        assert span is not None
        print(f"\n{title} ({span[0]} .. {span[1]}), loaded in {time.perf_counter() - t0:.1f} s")
        for horizon in (90, 273):
            print_split(bench_split(settings, engine, span[1], horizon), horizon)
        if loader is load_simulated:
            recovery(settings, engine, span[1])
    bench_btyd_scale(scale_customers)


def bench_clv_scale(customers: int, horizon: int, profile: bool) -> None:
    """The whole ``clv fit`` (SQL features, BTYD fits, regressor, backtest, storage) on ``customers``
    simulated customers, cut-off ``horizon`` days before the last order; with ``profile``, the 15 costliest
    functions by cumulative time (cProfile)."""
    import cProfile
    import pstats

    from segments.clv import fit_clv
    from segments.clv.features import data_range

    t0 = time.perf_counter()
    settings, engine, title = load_simulated(customers)
    span = data_range(engine, settings)
    assert span is not None
    print(f"{title}, loaded in {time.perf_counter() - t0:.1f} s")
    prof = cProfile.Profile() if profile else None
    t0, c0 = time.perf_counter(), time.process_time()
    if prof is not None:
        prof.enable()
    result = fit_clv(engine, settings, span[1] - timedelta(days=horizon), horizon)
    if prof is not None:
        prof.disable()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    mt = result.metrics
    print(
        f"clv fit, h = {horizon} days: {wall:.1f} s wall / {cpu:.1f} s CPU ({mt['train']['rows']:,} training "
        f"rows, {mt['train'].get('regressor_rows', mt['train']['rows']):,} used by the regressor, chose "
        f"{mt['choice']!r}); peak RSS {peak_rss_gb():.2f} GB; load average {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} cores"
    )
    if prof is not None:
        pstats.Stats(prof).sort_stats("cumulative").print_stats(25)


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
    cl.add_argument("--sim-customers", type=int, default=20_000)
    cl.add_argument("--scale-customers", type=int, default=1_000_000)
    sc = sub.add_parser("clv-scale")
    sc.add_argument("--customers", type=int, default=1_000_000)
    sc.add_argument("--horizon-days", type=int, default=90)
    sc.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    if args.part == "clv-scale":
        bench_clv_scale(args.customers, args.horizon_days, args.profile)
    elif args.part == "kmeans":
        bench_kmeans(args.customers, not args.no_baseline)
    else:
        bench_clv(args.customers, args.orders, args.sim_customers, args.scale_customers)


if __name__ == "__main__":
    main()
