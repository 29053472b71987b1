"""Schemes as data: the shipped YAML files, their rules, and every way a scheme file can be wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from activation.errors import ConfigError
from activation.settings import Settings
from segments.schemes import list_schemes, load_scheme, reachable_segments, register_assigner

RFM11_GRID = {
    # (R, F) -> segment, exactly as in the issue
    **{(5, f): "Champions" for f in (4, 5)},
    **{(r, f): "Loyal Customers" for r in (3, 4) for f in (4, 5)},
    **{(r, f): "Potential Loyalists" for r in (4, 5) for f in (2, 3)},
    (5, 1): "New Customers",
    (4, 1): "Promising",
    (3, 3): "Need Attention",
    **{(3, f): "About To Sleep" for f in (1, 2)},
    **{(r, f): "At Risk" for r in (1, 2) for f in (3, 4)},
    **{(r, 5): "Can't Lose Them" for r in (1, 2)},
    **{(2, f): "Hibernating" for f in (1, 2)},
    **{(1, f): "Lost" for f in (1, 2)},
}


def test_shipped_schemes_load() -> None:
    names = list_schemes()
    for expected in ("rfm11", "seed5", "quartile9", "vip_fm", "value_tier", "contact_bands"):
        assert expected in names
        load_scheme(expected)


def test_rfm11_every_cell_in_exactly_the_documented_segment() -> None:
    scheme = load_scheme("rfm11")
    assert len(RFM11_GRID) == 25
    for (r, f), segment in RFM11_GRID.items():
        for m in range(1, 6):
            assert scheme.assign({"r": r, "f": f, "m": m}) == segment, (r, f)
    assert scheme.segment_names == [
        "Champions",
        "Loyal Customers",
        "Potential Loyalists",
        "New Customers",
        "Promising",
        "Need Attention",
        "About To Sleep",
        "At Risk",
        "Can't Lose Them",
        "Hibernating",
        "Lost",
    ]


@pytest.mark.parametrize(
    ("scores", "segment"),
    [
        ({"r": 5, "f": 5, "m": 5}, "Champions"),
        ({"r": 4, "f": 4, "m": 3}, "Loyal"),  # M 3 is not a champion
        ({"r": 3, "f": 3, "m": 3}, "Loyal"),
        ({"r": 2, "f": 5, "m": 1}, "At Risk"),
        ({"r": 5, "f": 1, "m": 5}, "New"),
        ({"r": 3, "f": 2, "m": 5}, "Others"),
        ({"r": 1, "f": 1, "m": 1}, "Others"),
    ],
)
def test_seed5_first_match_wins(scores: dict, segment: str) -> None:
    assert load_scheme("seed5").assign(scores) == segment


def test_quartile9_names_and_rules() -> None:
    scheme = load_scheme("quartile9")
    assert len(scheme.segment_names) == 9
    assert scheme.assign({"r": 4, "f": 4, "m": 4}) == "Best Customers"
    assert scheme.assign({"r": 3, "f": 4, "m": 1}) == "Loyal Customers"
    assert scheme.assign({"r": 4, "f": 2, "m": 4}) == "Big Spenders"
    assert scheme.assign({"r": 2, "f": 3, "m": 2}) == "Almost Lost"
    assert scheme.assign({"r": 1, "f": 4, "m": 4}) == "Lost Customers"
    assert scheme.assign({"r": 4, "f": 1, "m": 2}) == "New Customers"
    assert scheme.assign({"r": 3, "f": 2, "m": 2}) == "Promising"
    assert scheme.assign({"r": 1, "f": 1, "m": 1}) == "Lost Cheap Customers"
    assert scheme.assign({"r": 2, "f": 1, "m": 3}) == "Hibernating"
    assert set(reachable_segments(scheme, {})) == set(scheme.segment_names)


def test_vip_fm_value_tier_contact_bands_rules() -> None:
    vip = load_scheme("vip_fm")
    assert vip.scores["f"].method == "mean" and vip.scores["m"].method == "mean"
    assert [vip.assign({"f": f, "m": m}) for f, m in ((2, 2), (1, 2), (2, 1), (1, 1))] == [
        "VIP3",
        "VIP2",
        "VIP1",
        "VIP0",
    ]
    tier = load_scheme("value_tier")
    assert [tier.assign({"m": m}) for m in (1, 2, 3)] == ["Low", "Mid", "High"]
    bands = load_scheme("contact_bands")
    assert bands.source == "contact_events"
    assert bands.scores["f"].edges == [2, 4]
    assert [bands.assign({"f": f}) for f in (1, 2, 3)] == ["1 contact", "2-3 contacts", "4+ contacts"]


def test_unreachable_segments_follow_empty_scores() -> None:
    scheme = load_scheme("rfm11")
    # F cut-points (1, 1, 1, 2): F scores 2 and 3 are empty, so the segments needing F2-3 cannot occur
    reached = reachable_segments(scheme, {"f": [2, 3]})
    assert set(scheme.segment_names) - set(reached) == {"Need Attention", "Potential Loyalists"}


def _user_scheme(tmp_path: Path, name: str, body: str) -> Settings:
    folder = tmp_path / "schemes"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.yaml").write_text(body)
    return Settings(data_dir=tmp_path, schemes_dir=folder)


GOOD = """\
scores:
  r: {method: quantile, bins: 3}
  m: {method: quantile, bins: 3}
rules:
  - {segment: Top, when: {r: 3, m: 3}}
default: Rest
"""


def test_user_scheme_from_schemes_dir(tmp_path: Path) -> None:
    settings = _user_scheme(tmp_path, "mine", GOOD)
    assert "mine" in list_schemes(settings)
    scheme = load_scheme("mine", settings)
    assert scheme.segment_names == ["Top", "Rest"]
    assert scheme.kind == "rules"


def test_unknown_scheme_lists_the_available_ones() -> None:
    with pytest.raises(ConfigError) as err:
        load_scheme("nope")
    assert "unknown scheme 'nope'" in err.value.message
    assert "rfm11" in (err.value.fix or "")


@pytest.mark.parametrize(
    ("body", "expected", "line"),
    [
        ("scores:\n  r: {method: quantile\n", "not valid YAML", 3),
        (
            "scores:\n  r: {method: quantile}\nrules:\n  - {segment: A, when: {r: 1}}\ndefault: B\ncolour: red\n",
            "unknown key 'colour'",
            6,
        ),
        (
            "scores:\n  r: {method: quantile, bins: 3}\nrules:\n  - {segment: A, when: {r: [2, 4]}}\ndefault: B\n",
            "outside the scores 1..3",
            None,
        ),
        (
            "scores:\n  r: {method: quantile}\nrules:\n  - {segment: A, when: {x: 1}}\ndefault: B\n",
            "names metric 'x'",
            None,
        ),
        (
            "scores:\n  r: {method: median}\nrules:\n  - {segment: A, when: {r: 1}}\ndefault: B\n",
            "scores.r.method",
            2,
        ),
        (
            "scores:\n  r: {method: quantile}\nrules:\n  - {segment: A, when: {r: 1}}\n",
            "set `default:`",
            None,
        ),
        (
            "scores:\n  f: {method: fixed, edges: [4, 2]}\nrules:\n  - {segment: A, when: {f: 1}}\ndefault: B\n",
            "strictly increasing",
            2,
        ),
        ("- just\n- a list\n", "must be a YAML mapping", None),
    ],
)
def test_malformed_scheme_names_file_line_and_fix(
    tmp_path: Path, body: str, expected: str, line: int | None
) -> None:
    settings = _user_scheme(tmp_path, "bad", body)
    with pytest.raises(ConfigError) as err:
        load_scheme("bad", settings)
    msg = err.value.message
    assert "bad.yaml" in msg
    assert expected in msg
    if line is not None:
        assert f"bad.yaml:{line}" in msg
    assert err.value.fix


def test_exhaustive_grid_reports_gaps_and_overlaps(tmp_path: Path) -> None:
    body = """\
scores:
  r: {method: quantile, bins: 2}
  f: {method: quantile, bins: 2}
exhaustive_grid: [r, f]
rules:
  - {segment: A, when: {r: 2}}
  - {segment: B, when: {r: 2, f: 2}}
  - {segment: C, when: {r: 1, f: 1}}
"""
    settings = _user_scheme(tmp_path, "grid", body)
    with pytest.raises(ConfigError) as err:
        load_scheme("grid", settings)
    assert "cells in no segment: R1 F2" in err.value.message
    assert "R2 F2 (A, B)" in err.value.message


def test_model_kind_needs_a_registered_assigner_and_its_segments(tmp_path: Path) -> None:
    body = "kind: magic\nscores:\n  m: {method: quantile}\nsegments: [X, Y]\n"
    settings = _user_scheme(tmp_path, "magic", body)
    with pytest.raises(ConfigError, match="no assigner registered for scheme kind 'magic'"):
        load_scheme("magic", settings)
    register_assigner("magic", lambda ctx, metrics: metrics["customer_id"].map(lambda _: "X"))
    assert load_scheme("magic", settings).segment_names == ["X", "Y"]
    settings = _user_scheme(tmp_path, "magic2", "kind: magic\nscores:\n  m: {method: quantile}\n")
    with pytest.raises(ConfigError, match="must list its `segments`"):
        load_scheme("magic2", settings)
