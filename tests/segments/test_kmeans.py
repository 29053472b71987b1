"""The kmeans scheme: named, canonically ordered, deterministic clusters stored as an ordinary snapshot."""

from __future__ import annotations

import json
from datetime import date

import numpy as np
import pytest
from sqlalchemy import func, select

from activation.errors import ConfigError, InputError
from activation.tables import rfm_snapshots, snapshot_runs
from segments.kmeans import (
    PROTOTYPES,
    KMeansConfig,
    canonical_order,
    fit_clusters,
    name_clusters,
    quantile_scores,
)
from segments.schemes import load_scheme
from segments.snapshots import compute_snapshot
from tests.cli_helpers import run_cli
from tests.model_data import latent_orders, load_orders

AS_OF = date(2023, 12, 31)


def _blobs(n_each: int = 300, seed: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Four customer groups shaped like the four analysis clusters (recency days, orders, spend)."""
    rng = np.random.default_rng(seed)
    groups = [(10, 12, 1500), (400, 8, 900), (15, 1, 60), (500, 1, 20)]
    r, f, m = [], [], []
    for rd, fq, mv in groups:
        r.append(np.clip(rng.normal(rd, rd * 0.1 + 1, n_each), 0, None).round())
        f.append(np.clip(rng.normal(fq, fq * 0.1, n_each), 1, None).round())
        m.append(np.clip(rng.normal(mv, mv * 0.1, n_each), 1, None))
    return np.concatenate(r), np.concatenate(f), np.concatenate(m)


def test_four_shaped_groups_get_the_four_analysis_names():
    r, f, m = _blobs()
    model = fit_clusters(r, f, m, KMeansConfig(k=4))
    by_name = {row["name"]: row for row in model.profile()}
    assert set(by_name) == {"Top Customers", "At-Risk", "Potential Loyal", "Inactive"}
    assert by_name["Top Customers"]["recency_days"] < 20 and by_name["Top Customers"]["monetary"] > 1000
    assert by_name["At-Risk"]["recency_days"] > 300 and by_name["At-Risk"]["frequency"] > 5
    assert by_name["Inactive"]["monetary"] < 40
    assert model.sizes == [300, 300, 300, 300]
    # canonical ids: the most valuable centroid (-r + f + m in z-units) first
    value = -model.centroids_z[:, 0] + model.centroids_z[:, 1] + model.centroids_z[:, 2]
    assert list(value) == sorted(value, reverse=True)
    assert model.names[0] == "Top Customers"


def test_same_data_in_any_row_order_gives_identical_clusters():
    r, f, m = _blobs(seed=5)
    a = fit_clusters(r, f, m, KMeansConfig(k=4))
    b = fit_clusters(r, f, m, KMeansConfig(k=4))
    assert a.names == b.names and np.array_equal(a.labels, b.labels)
    assert np.allclose(a.centroids_z, b.centroids_z)
    # canonical order does not depend on how the fitted estimator numbered its clusters
    perm = np.array([2, 0, 3, 1])
    assert np.array_equal(canonical_order(a.centroids_z[perm]), np.argsort(perm))


def test_names_are_unique_for_every_k():
    rng = np.random.default_rng(0)
    for k in range(2, len(PROTOTYPES) + 1):
        names = name_clusters(rng.normal(size=(k, 3)))
        assert len(set(names)) == k
        assert set(names) <= {n for n, _ in PROTOTYPES}


def test_k_chosen_by_silhouette_with_inertia_reported():
    r, f, m = _blobs(n_each=200)
    model = fit_clusters(r, f, m, KMeansConfig(k_range=(2, 5), n_init=2))
    ks = [c["k"] for c in model.candidates]
    assert ks == [2, 3, 4, 5]
    best = max(model.candidates, key=lambda c: c["silhouette"])
    assert model.k == best["k"] and model.silhouette == best["silhouette"]
    inertia = [c["inertia"] for c in model.candidates]
    assert inertia == sorted(inertia, reverse=True)


def test_minibatch_above_the_threshold():
    r, f, m = _blobs(n_each=500)
    model = fit_clusters(r, f, m, KMeansConfig(k=4, minibatch_threshold=1000, batch_size=512))
    assert model.algorithm == "MiniBatchKMeans"
    assert {row["name"] for row in model.profile()} == {
        "Top Customers",
        "At-Risk",
        "Potential Loyal",
        "Inactive",
    }


def test_quantile_scores_tie_and_mirror_rules():
    scores, cuts = quantile_scores(np.array([1, 1, 1, 1, 2, 3, 4, 5, 6, 7.0]), 5)
    assert len(cuts) == 4 and scores[:4].tolist() == [1, 1, 1, 1]
    assert np.all(np.diff(scores) >= 0)
    rec, _ = quantile_scores(np.array([0, 5, 10, 50, 300.0]), 5, higher_is_better=False)
    assert rec.tolist() == [5, 4, 3, 2, 1]


def test_as_many_customers_as_clusters_is_too_few():
    # k clusters of k customers put each customer alone: no silhouette, nothing learned
    r, f, m = np.array([1.0, 50, 300]), np.array([5.0, 2, 1]), np.array([500.0, 100, 10])
    for cfg in (KMeansConfig(k=3), KMeansConfig()):  # fixed k, and the shipped range 3..6
        with pytest.raises(InputError, match="3 customer\\(s\\) .* too few for k=3") as err:
            fit_clusters(r, f, m, cfg)
        assert "smaller k" in err.value.fix


def test_range_reaching_the_number_of_customers_skips_that_k():
    # 4 distinct customers, k_range 3..6: k=4 would give every customer its own cluster
    r, f, m = np.array([1.0, 50, 300, 20]), np.array([5.0, 2, 1, 8]), np.array([500.0, 100, 10, 900])
    model = fit_clusters(r, f, m, KMeansConfig(n_init=1))
    assert model.k == 3 and [c["k"] for c in model.candidates] == [3, 4]
    assert sum(model.sizes) == 4


@pytest.mark.parametrize(
    "params, match",
    [({"k": 1}, "between 2 and"), ({"k_range": [3, 12]}, "between 2 and"), ({"colour": 1}, "unknown option")],
)
def test_bad_kmeans_params(params, match):
    with pytest.raises(ConfigError, match=match) as err:
        KMeansConfig.from_mapping(params)
    assert err.value.fix


# --- in the warehouse ----------------------------------------------------------------------------


def _snapshot_rows(engine, scheme="kmeans"):
    with engine.connect() as conn:
        return conn.execute(
            select(rfm_snapshots)
            .where(rfm_snapshots.c.scheme == scheme)
            .order_by(rfm_snapshots.c.customer_id)
        ).all()


def _counts(engine):
    with engine.connect() as conn:
        return (
            conn.execute(select(func.count()).select_from(rfm_snapshots)).scalar_one(),
            conn.execute(select(func.count()).select_from(snapshot_runs)).scalar_one(),
        )


def test_kmeans_snapshot_is_deterministic_and_records_the_model(settings, engine):
    load_orders(engine, latent_orders(1200, seed=4))
    first = compute_snapshot(engine, settings, AS_OF, "kmeans")
    rows = _snapshot_rows(engine)
    second = compute_snapshot(engine, settings, AS_OF, "kmeans")
    assert _snapshot_rows(engine) == rows
    assert first.segments == second.segments
    model = first.cutpoints["model"]
    assert model == second.cutpoints["model"]
    assert 3 <= model["k"] <= 6 and [c["k"] for c in model["candidates"]] == [3, 4, 5, 6]
    assert model["silhouette"] == max(c["silhouette"] for c in model["candidates"])
    names = [c["name"] for c in model["clusters"]]
    assert len(set(names)) == model["k"]
    assert set(names) <= set(load_scheme("kmeans", settings).segment_names)
    assert sum(c["customers"] for c in model["clusters"]) == len(rows) == first.customers
    # scores are the quintile scores of rfm11 (same SQL), the segment is the cluster
    assert {r.r_score for r in rows} <= {1, 2, 3, 4, 5}
    assert {r.segment for r in rows} == set(names)
    with engine.connect() as conn:
        stored = json.loads(conn.execute(select(snapshot_runs.c.cutpoints)).scalar_one())
    assert stored["model"]["clusters"] == model["clusters"]


def _kmeans_scheme_dir(tmp_path, monkeypatch, settings, k):
    folder = tmp_path / "schemes"
    folder.mkdir()
    text = load_scheme("kmeans", settings).model_dump_json(exclude={"description"})
    raw = json.loads(text)
    raw["params"] = {"k": k}
    (folder / "kmeans.yaml").write_text(json.dumps(raw))  # JSON is YAML
    monkeypatch.setenv("ACTIVATION_SCHEMES_DIR", str(folder))
    return settings.model_copy(update={"schemes_dir": folder})


def test_too_few_customers_for_k_writes_nothing(settings, engine, tmp_path, monkeypatch):
    s = _kmeans_scheme_dir(tmp_path, monkeypatch, settings, k=4)
    load_orders(engine, latent_orders(3, seed=1))
    with pytest.raises(InputError, match="too few for k=4") as err:
        compute_snapshot(engine, s, AS_OF, "kmeans")
    assert "smaller k" in err.value.fix
    assert _counts(engine) == (0, 0)


def test_identical_features_write_nothing(settings, engine):
    orders = latent_orders(40, seed=2)
    orders["ordered_at"] = orders["ordered_at"].min()
    orders = orders.drop_duplicates("customer_id").assign(amount=10.0)
    load_orders(engine, orders)
    with pytest.raises(InputError, match="identical recency, frequency and monetary") as err:
        compute_snapshot(engine, settings, AS_OF, "kmeans")
    assert err.value.fix
    assert _counts(engine) == (0, 0)


def test_cli_segment_kmeans_prints_profile_and_k(duck_settings, duck_engine):
    load_orders(duck_engine, latent_orders(800, seed=6))
    res = run_cli("segment", "--as-of", str(AS_OF), "--scheme", "kmeans")
    assert res.exit_code == 0, res.output
    assert "chosen by silhouette" in res.output and "<- chosen" in res.output and "centroid z" in res.output
    assert "Top Customers" in res.output or "Inactive" in res.output
