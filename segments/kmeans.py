"""K-Means clusters on log-transformed RFM, named from their centroids.

The ``kmeans`` scheme groups customers by ``log1p(recency_days, frequency, monetary)``, standardised
(z-scores), with scikit-learn. Everything is seeded, so a rerun on the same data gives the same clusters,
the same cluster ids and the same names:

* **k** is fixed in the scheme YAML (``k: 4``) or chosen over ``k_range`` by the silhouette score. Candidate
  models are fitted on a fixed-seed sample (``select_sample`` rows) and scored on a smaller fixed-seed
  sub-sample (``silhouette_sample`` rows), so choosing k costs the same on 10 thousand or 13 million
  customers. Inertia of every candidate is reported too (the elbow).
* The final model is fitted on every customer: ``KMeans`` (Lloyd) below ``minibatch_threshold`` customers
  (default 50M), ``MiniBatchKMeans`` above it. With only three features a Lloyd pass is cheap and it
  converges in a few passes: at 13M customers it took 6x less CPU than MiniBatch, with a lower inertia,
  in 2 GB (docs/benchmarks.md). Lower the threshold in the scheme YAML to use MiniBatch sooner.
* **Canonical ids**: clusters are renumbered by their centroid, best first (value ``-r + f + m`` in
  z-units, descending), so id 0 is always the most valuable cluster.
* **Names** come from the centroids by one documented rule: each name has a prototype centroid in z-units
  (recency in days, so positive = long ago), and clusters get names by the assignment that minimises the
  total squared distance between centroids and prototypes (Hungarian algorithm). Names are unique by
  construction; k ≤ 4 uses the four names of the original analysis, larger k adds names in a fixed order.

This module is pure numpy/scikit-learn on per-customer metrics (three numbers a customer); the metrics
come from the warehouse by the segmentation engine's SQL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment

from activation.errors import ConfigError, InputError
from segments.schemes import register_assigner

SEED = 20240614

#: Name → prototype centroid in z-units of (log recency days, log frequency, log monetary).
#: Recency is in *days*: a positive z means "last bought long ago". The first four names are used for
#: k ≤ 4; each larger k adds the next name.
PROTOTYPES: tuple[tuple[str, tuple[float, float, float]], ...] = (
    ("Top Customers", (-0.8, 1.2, 1.2)),  # recent, frequent, high spend
    ("At-Risk", (1.0, 0.8, 0.8)),  # used to buy often and a lot, not lately
    ("Potential Loyal", (-0.8, -0.5, 0.0)),  # recent, few orders so far
    ("Inactive", (1.0, -0.6, -0.8)),  # long ago, once, little
    ("Loyal Customers", (0.0, 0.8, 0.6)),
    ("New Customers", (-1.3, -0.6, -0.6)),
    ("Big Spenders", (0.2, -0.3, 1.3)),
    ("Needs Attention", (0.0, 0.0, 0.0)),
)
MAX_K = len(PROTOTYPES)


@dataclass(frozen=True)
class KMeansConfig:
    """The ``kmeans`` block of a scheme YAML (every key optional)."""

    k: int | None = None
    k_range: tuple[int, int] = (3, 6)
    seed: int = SEED
    select_sample: int = 50_000
    silhouette_sample: int = 5_000
    minibatch_threshold: int = 50_000_000
    batch_size: int = 65_536
    n_init: int = 4
    chunk_size: int = 1_000_000

    @classmethod
    def from_mapping(cls, raw: dict[str, Any] | None) -> KMeansConfig:
        raw = dict(raw or {})
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(
                f"kmeans scheme: unknown option(s) {', '.join(unknown)}",
                fix=f"use only {', '.join(sorted(known))}",
            )
        if "k_range" in raw:
            kr = raw["k_range"]
            if not (isinstance(kr, list | tuple) and len(kr) == 2 and all(isinstance(v, int) for v in kr)):
                raise ConfigError(
                    "kmeans scheme: k_range must be two integers [min, max]", fix="e.g. k_range: [2, 6]"
                )
            raw["k_range"] = (int(kr[0]), int(kr[1]))
        cfg = cls(**raw)
        lo, hi = cfg.k_range
        ks = [cfg.k] if cfg.k is not None else [lo, hi]
        if any(not isinstance(v, int) or v < 2 or v > MAX_K for v in ks) or lo > hi:
            raise ConfigError(
                f"kmeans scheme: k must be between 2 and {MAX_K} (got k={cfg.k}, k_range={list(cfg.k_range)})",
                fix=f"set k (or k_range) within 2..{MAX_K}: there are {MAX_K} documented cluster names",
            )
        return cfg

    @property
    def candidates(self) -> list[int]:
        return [self.k] if self.k is not None else list(range(self.k_range[0], self.k_range[1] + 1))


@dataclass
class ClusterModel:
    """A fitted, canonically ordered and named clustering."""

    k: int
    labels: np.ndarray  # canonical cluster id per customer (int16)
    names: list[str]  # name per canonical cluster id
    centroids_z: np.ndarray  # k × 3, z-units of log1p features
    centroids: np.ndarray  # k × 3, back in original units (recency days, orders, spend)
    sizes: list[int]
    mean: np.ndarray
    std: np.ndarray
    silhouette: float | None
    algorithm: str
    candidates: list[dict[str, Any]] = field(default_factory=list)

    @property
    def segment(self) -> np.ndarray:
        """Cluster name per customer."""
        return np.take(np.asarray(self.names, dtype=object), self.labels)

    def profile(self) -> list[dict[str, Any]]:
        """One row per cluster: id, name, size, centroid in original units and in z-units."""
        rows = []
        for i in range(self.k):
            rows.append(
                {
                    "cluster": i,
                    "name": self.names[i],
                    "customers": self.sizes[i],
                    "recency_days": round(float(self.centroids[i, 0]), 2),
                    "frequency": round(float(self.centroids[i, 1]), 3),
                    "monetary": round(float(self.centroids[i, 2]), 2),
                    "z": [round(float(v), 4) for v in self.centroids_z[i]],
                }
            )
        return rows

    def describe(self) -> dict[str, Any]:
        """What ``snapshot_runs.cutpoints`` stores for a kmeans snapshot (JSON-ready)."""
        return {
            "kind": "kmeans",
            "k": self.k,
            "silhouette": None if self.silhouette is None else round(self.silhouette, 6),
            "algorithm": self.algorithm,
            "features": ["log1p(recency_days)", "log1p(frequency)", "log1p(monetary)"],
            "scaler": {"mean": _rounded(self.mean), "std": _rounded(self.std)},
            "clusters": self.profile(),
            "candidates": self.candidates,
        }


def _rounded(a: np.ndarray, nd: int = 6) -> list[float]:
    return [round(float(v), nd) for v in a]


def transform(recency_days: np.ndarray, frequency: np.ndarray, monetary: np.ndarray) -> np.ndarray:
    """``log1p`` of the three metrics as an n × 3 float64 matrix (negative spend clipped to 0)."""
    x = np.empty((len(recency_days), 3), dtype=np.float64)
    np.log1p(np.clip(np.asarray(recency_days, dtype=np.float64), 0, None), out=x[:, 0])
    np.log1p(np.clip(np.asarray(frequency, dtype=np.float64), 0, None), out=x[:, 1])
    np.log1p(np.clip(np.asarray(monetary, dtype=np.float64), 0, None), out=x[:, 2])
    return x


def standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Z-scores in place; a constant column gets std 1 (it carries no information, but must not divide by 0).

    Raises:
        InputError: every customer has the same three values — there is nothing to cluster.
    """
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    if np.all(std < 1e-12):
        raise InputError(
            "kmeans: every customer has identical recency, frequency and monetary values; there is nothing to cluster",
            fix="use a rule-based scheme (e.g. --scheme rfm11) or a longer lookback/as-of with more varied data",
        )
    std = np.where(std < 1e-12, 1.0, std)
    x -= mean
    x /= std
    return x, mean, std


def _estimator(k: int, n: int, cfg: KMeansConfig) -> Any:
    from sklearn.cluster import KMeans, MiniBatchKMeans

    if n > cfg.minibatch_threshold:
        return MiniBatchKMeans(
            n_clusters=k,
            random_state=cfg.seed,
            batch_size=cfg.batch_size,
            n_init=cfg.n_init,
            max_no_improvement=20,
            reassignment_ratio=0.01,
            compute_labels=False,  # labels come from predict, in chunks
        )
    return KMeans(n_clusters=k, random_state=cfg.seed, n_init=cfg.n_init)


def _sample_index(n: int, size: int, seed: int) -> np.ndarray:
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def choose_k(z: np.ndarray, cfg: KMeansConfig) -> tuple[int, list[dict[str, Any]]]:
    """Silhouette and inertia per candidate k, on fixed-seed samples; the best k (ties → smaller k)."""
    from sklearn.metrics import silhouette_score

    idx = _sample_index(len(z), cfg.select_sample, cfg.seed)
    sample = z[idx]
    sil_idx = _sample_index(len(sample), cfg.silhouette_sample, cfg.seed + 1)
    rows: list[dict[str, Any]] = []
    for k in cfg.candidates:
        est = _estimator(k, len(sample), cfg).fit(sample)
        labels = est.predict(sample[sil_idx])
        # the silhouette needs 2..n-1 clusters among the scored rows; a k that isolates every row scores -1
        score = (
            float(silhouette_score(sample[sil_idx], labels))
            if 1 < len(set(labels.tolist())) < len(labels)
            else -1.0
        )
        rows.append({"k": k, "silhouette": round(score, 6), "inertia": round(float(est.inertia_), 3)})
    best = max(rows, key=lambda r: (r["silhouette"], -r["k"]))
    return int(best["k"]), rows


def canonical_order(centroids_z: np.ndarray) -> np.ndarray:
    """Cluster order by centroid, best first: value ``-r + f + m`` descending, then r, f, m."""
    c = np.round(centroids_z, 9)
    value = -c[:, 0] + c[:, 1] + c[:, 2]
    return np.lexsort((c[:, 2], c[:, 1], c[:, 0], -value))


def name_clusters(centroids_z: np.ndarray) -> list[str]:
    """Unique names for canonically ordered centroids: the minimum-distance assignment to prototypes."""
    k = len(centroids_z)
    pool = PROTOTYPES[: max(4, k)]
    protos = np.array([p for _, p in pool])
    cost = ((centroids_z[:, None, :] - protos[None, :, :]) ** 2).sum(axis=2)
    rows, cols = linear_sum_assignment(np.round(cost, 9))
    names = [""] * k
    for r, c in zip(rows, cols, strict=True):
        names[r] = pool[c][0]
    return names


#: Below this many customers scikit-learn runs single-threaded: OpenMP start-up and barriers cost more
#: than they save on small data, and much more on a busy machine.
SINGLE_THREAD_BELOW = 2_000_000


def fit_clusters(
    recency_days: np.ndarray, frequency: np.ndarray, monetary: np.ndarray, cfg: KMeansConfig | None = None
) -> ClusterModel:
    """Cluster customers on standardised ``log1p`` RFM; canonical ids, named clusters.

    Raises:
        InputError: fewer customers than clusters (or than distinct points), or identical features.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1 if len(recency_days) < SINGLE_THREAD_BELOW else None):
        return _fit_clusters(recency_days, frequency, monetary, cfg)


def _fit_clusters(
    recency_days: np.ndarray, frequency: np.ndarray, monetary: np.ndarray, cfg: KMeansConfig | None
) -> ClusterModel:
    cfg = cfg or KMeansConfig()
    n = len(recency_days)
    need = cfg.k if cfg.k is not None else cfg.k_range[0]
    if n <= need:  # k clusters of k customers put each one alone: nothing is learned, no silhouette
        raise InputError(
            f"kmeans: {n} customer(s) in the snapshot, too few for k={need} clusters (it needs more customers "
            f"than clusters)",
            fix="use a longer --lookback-days or a later --as-of, or a smaller k in the kmeans scheme YAML",
        )
    z, mean, std = standardise(transform(recency_days, frequency, monetary))
    distinct = _distinct_points(z, need, cfg.seed)
    if distinct is not None and distinct < need:
        raise InputError(
            f"kmeans: only {distinct} distinct (recency, frequency, monetary) point(s), too few for k={need} clusters",
            fix="lower k in the kmeans scheme YAML, or segment a period with more varied customers",
        )
    candidates: list[dict[str, Any]] = []
    if cfg.k is not None:
        k = cfg.k
    else:
        if distinct is not None and distinct < cfg.k_range[1]:
            lo = cfg.k_range[0]
            cfg = KMeansConfig(**{**cfg.__dict__, "k_range": (lo, max(lo, distinct))})
        k, candidates = choose_k(z, cfg)
    est = _estimator(k, n, cfg).fit(z)
    raw_centres = np.asarray(est.cluster_centers_, dtype=np.float64)
    raw_labels = _predict_chunked(est, z, cfg.chunk_size)
    order = canonical_order(raw_centres)
    remap = np.empty(k, dtype=np.int16)
    remap[order] = np.arange(k, dtype=np.int16)
    labels = remap[raw_labels]
    centres_z = raw_centres[order]
    sizes = np.bincount(labels, minlength=k).tolist()
    centroids = np.expm1(centres_z * std + mean)
    sil = next((c["silhouette"] for c in candidates if c["k"] == k), None)
    if sil is None:
        sil = _silhouette(z, labels, cfg)
    return ClusterModel(
        k=k,
        labels=labels,
        names=name_clusters(centres_z),
        centroids_z=centres_z,
        centroids=centroids,
        sizes=[int(s) for s in sizes],
        mean=mean,
        std=std,
        silhouette=sil,
        algorithm=type(est).__name__,
        candidates=candidates,
    )


def _distinct_points(z: np.ndarray, enough: int, seed: int) -> int:
    """How many distinct feature points there are, counted exactly only when a sample has too few."""
    sample = z[_sample_index(len(z), 20_000, seed + 2)]
    found = len(np.unique(np.round(sample, 9), axis=0))
    if found >= max(enough, 8) or len(sample) == len(z):
        return found
    return len(np.unique(np.round(z, 9), axis=0))


def _predict_chunked(est: Any, z: np.ndarray, chunk: int) -> np.ndarray:
    out = np.empty(len(z), dtype=np.int16)
    for start in range(0, len(z), chunk):
        out[start : start + chunk] = est.predict(z[start : start + chunk])
    return out


def _silhouette(z: np.ndarray, labels: np.ndarray, cfg: KMeansConfig) -> float | None:
    from sklearn.metrics import silhouette_score

    idx = _sample_index(len(z), cfg.silhouette_sample, cfg.seed + 1)
    if not 1 < len(set(labels[idx].tolist())) < len(idx):
        return None
    return round(float(silhouette_score(z[idx], labels[idx])), 6)


def quantile_scores(
    values: np.ndarray, bins: int = 5, *, higher_is_better: bool = True
) -> tuple[np.ndarray, list[float]]:
    """Scores 1..bins from quantile cut-points (``percentile_disc``), mirroring the segmentation SQL:
    score = 1 + the number of cut-points strictly below the value (for lower-is-better metrics, cut-points on
    the descending order and 1 + the number strictly above). Equal values always get equal scores."""
    v = np.asarray(values, dtype=np.float64)
    if not len(v):
        return np.zeros(0, dtype=np.int16), []
    probs = [k / bins for k in range(1, bins)]
    if higher_is_better:
        cuts = np.quantile(v, probs, method="inverted_cdf")
        scores = 1 + np.searchsorted(cuts, v, side="left")
    else:
        cuts = -np.quantile(-v, probs, method="inverted_cdf")  # descending order
        asc = np.sort(cuts)
        scores = 1 + len(asc) - np.searchsorted(asc, v, side="right")
    return scores.astype(np.int16), [float(c) for c in cuts]


# --- the ``kmeans`` scheme kind --------------------------------------------------------------------


def assign_kmeans(ctx: Any, metrics: pd.DataFrame) -> pd.Series:
    """Assigner of ``kind: kmeans`` schemes: the cluster name of every customer.

    The scheme's ``params`` are a :class:`KMeansConfig`. Customers are clustered in ``customer_id`` order,
    so the result does not depend on the order the warehouse returns rows in. The model description
    (k, silhouette per candidate, inertia, centroids, names) goes to ``ctx.info``, which the snapshot
    records in ``snapshot_runs.cutpoints``.
    """
    cfg = KMeansConfig.from_mapping(ctx.scheme.params)
    ids = metrics["customer_id"].astype(str).to_numpy()
    order = np.argsort(ids, kind="stable")
    model = fit_clusters(
        metrics["recency_days"].to_numpy()[order],
        metrics["frequency"].to_numpy()[order],
        metrics["monetary"].to_numpy()[order],
        cfg,
    )
    segment = np.empty(len(ids), dtype=object)
    segment[order] = model.segment
    unknown = sorted(set(model.names) - set(ctx.scheme.segment_names))
    if unknown:
        raise ConfigError(
            f"scheme {ctx.scheme.name}: cluster name(s) {unknown} are missing from its `segments` list",
            fix=f"list every name the kmeans scheme can produce: {[n for n, _ in PROTOTYPES]}",
        )
    ctx.info.update(model.describe())
    return pd.Series(segment, index=metrics.index, name="segment")


register_assigner("kmeans", assign_kmeans)
