"""Segmentation schemes as data: score bins per metric plus ordered rules (first match wins).

A scheme is a YAML file in ``segments/schemes/`` (shipped) or in ``settings.schemes_dir`` (the user's,
which win on a name clash)::

    name: seed5
    kind: rules                 # rules (pushed down as SQL) or a registered model-based assigner
    source: orders              # orders | contact_events
    scores:                     # the metrics this scheme scores; unscored metrics get score 0
      r: {method: quantile, bins: 5}
      f: {method: quantile, bins: 5}
      m: {method: quantile, bins: 5}
    rules:                      # a score (4) or an inclusive range ([4, 5]) per metric
      - {segment: Champions, when: {r: [4, 5], f: [4, 5], m: [4, 5]}}
    default: Others             # when no rule matches
    exhaustive_grid: [r, f]     # optional: every cell of this grid must match exactly one rule

Model-based schemes (``kind`` other than ``rules``) list their ``segments`` and ``params``; their
metrics and scores are computed by the same SQL, then the assigner registered for the kind picks each
customer's segment (see :func:`register_assigner`).
"""

from __future__ import annotations

import hashlib
import importlib
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from activation.errors import ConfigError
from activation.settings import Settings
from activation.yamlfile import read_yaml, validate

if TYPE_CHECKING:
    import pandas as pd
    from sqlalchemy.engine import Engine

SHIPPED_DIR = Path(__file__).resolve().parent / "schemes"
METRICS: tuple[str, ...] = ("r", "f", "m")
METRIC_NAMES = {"r": "recency", "f": "frequency", "m": "monetary"}
# Recency is better when lower; frequency and monetary when higher.
LOWER_IS_BETTER = frozenset({"r"})


class Bins(BaseModel):
    """How one metric is turned into a score 1..n.

    * ``quantile``: ``bins`` quantile cut-points of the customer distribution (``percentile_disc``).
    * ``mean``: 2 bins split at the average.
    * ``fixed``: ``edges`` are where bins 2..n start on the metric's own scale.
    """

    model_config = ConfigDict(extra="forbid")

    method: Literal["quantile", "mean", "fixed"] = "quantile"
    bins: int | None = Field(default=None, ge=2, le=10)
    edges: list[float] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Bins:
        if self.method == "quantile":
            if self.edges is not None:
                raise ValueError("quantile bins take `bins: N`, not `edges`")
            if self.bins is None:
                self.bins = 5
        elif self.method == "mean":
            if self.edges is not None or self.bins not in (None, 2):
                raise ValueError("mean bins split at the average into exactly 2 bins; remove bins/edges")
            self.bins = 2
        else:
            if not self.edges:
                raise ValueError("fixed bins need `edges: [e1, e2, ...]` (where bins 2..n start)")
            if any(b <= a for a, b in itertools.pairwise(self.edges)):
                raise ValueError("fixed edges must be strictly increasing")
            if self.bins is not None and self.bins != len(self.edges) + 1:
                raise ValueError(f"{len(self.edges)} edges make {len(self.edges) + 1} bins, not {self.bins}")
            self.bins = len(self.edges) + 1
        return self

    @property
    def n(self) -> int:
        assert self.bins is not None
        return self.bins


class Rule(BaseModel):
    """``segment`` applies when every metric's score is within ``when`` (a score or ``[lo, hi]``)."""

    model_config = ConfigDict(extra="forbid")

    segment: str = Field(min_length=1)
    when: dict[str, tuple[int, int]] = Field(default_factory=dict)

    @field_validator("when", mode="before")
    @classmethod
    def _ranges(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            return v
        out: dict[str, Any] = {}
        for key, val in v.items():
            if isinstance(val, bool):
                raise ValueError(f"{key}: expected a score or [lo, hi], got {val!r}")
            if isinstance(val, int):
                out[key] = (val, val)
            elif isinstance(val, list | tuple) and len(val) == 2:
                out[key] = tuple(val)
            else:
                raise ValueError(f"{key}: expected a score (4) or an inclusive range ([4, 5]), got {val!r}")
        return out

    def matches(self, scores: dict[str, int]) -> bool:
        return all(lo <= scores[m] <= hi for m, (lo, hi) in self.when.items())


class Scheme(BaseModel):
    """A validated scheme. ``segment_names`` lists its segments in rule order, default last."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    kind: str = "rules"
    source: Literal["orders", "contact_events"] = "orders"
    scores: dict[str, Bins]
    rules: list[Rule] = Field(default_factory=list)
    default: str | None = None
    exhaustive_grid: list[str] | None = None
    segments: list[str] | None = None
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("scores")
    @classmethod
    def _known_metrics(cls, v: dict[str, Bins]) -> dict[str, Bins]:
        unknown = sorted(set(v) - set(METRICS))
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}; score r (recency), f (frequency), m (monetary)")
        if not v:
            raise ValueError("score at least one metric")
        return v

    @model_validator(mode="after")
    def _rules_fit_bins(self) -> Scheme:
        if self.kind == "rules":
            if not self.rules:
                raise ValueError("a rules scheme needs at least one rule")
            if self.segments is not None:
                raise ValueError(
                    "`segments` is for model-based kinds; a rules scheme names segments in its rules"
                )
        elif not self.segments:
            raise ValueError(
                f"a `{self.kind}` scheme must list its `segments` (policies are written against them)"
            )
        for i, rule in enumerate(self.rules, 1):
            for metric, (lo, hi) in rule.when.items():
                if metric not in self.scores:
                    raise ValueError(
                        f"rule {i} ({rule.segment}) names metric {metric!r}, which this scheme does not score; "
                        f"scored metrics: {sorted(self.scores)}"
                    )
                n = self.scores[metric].n
                if not (1 <= lo <= hi <= n):
                    raise ValueError(
                        f"rule {i} ({rule.segment}): {metric} range [{lo}, {hi}] is outside the scores 1..{n}"
                    )
        if self.exhaustive_grid is not None:
            self._check_grid()
        elif self.kind == "rules" and self.default is None:
            raise ValueError(
                "set `default:` (the segment when no rule matches) or declare an `exhaustive_grid`"
            )
        return self

    def _check_grid(self) -> None:
        grid = list(self.exhaustive_grid or [])
        for metric in grid:
            if metric not in self.scores:
                raise ValueError(f"exhaustive_grid names {metric!r}, which this scheme does not score")
        gaps, overlaps = [], []
        for cell in itertools.product(*(range(1, self.scores[m].n + 1) for m in grid)):
            scores = dict(zip(grid, cell, strict=True))
            hits = [r.segment for r in self.rules if set(r.when) <= set(grid) and r.matches(scores)]
            label = " ".join(f"{m.upper()}{s}" for m, s in scores.items())
            if not hits:
                gaps.append(label)
            elif len(hits) > 1:
                overlaps.append(f"{label} ({', '.join(hits)})")
        if gaps or overlaps:
            parts = []
            if gaps:
                parts.append(f"cells in no segment: {', '.join(gaps)}")
            if overlaps:
                parts.append(f"cells in more than one segment: {'; '.join(overlaps)}")
            raise ValueError("exhaustive_grid " + "; ".join(parts))

    @property
    def segment_names(self) -> list[str]:
        """Every segment this scheme can assign, in rule order (default last)."""
        if self.kind != "rules":
            return list(self.segments or [])
        names = list(dict.fromkeys(r.segment for r in self.rules))
        if self.default is not None and self.default not in names:
            names.append(self.default)
        return names

    @property
    def is_rules(self) -> bool:
        return self.kind == "rules"

    @property
    def scheme_hash(self) -> str:
        """A short hash of the scheme's content: a snapshot records which definition made it."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def assign(self, scores: dict[str, int]) -> str | None:
        """The segment of one score combination (first matching rule, else the default)."""
        for rule in self.rules:
            if rule.matches(scores):
                return rule.segment
        return self.default


# --- model-based schemes -------------------------------------------------------------------------


@dataclass
class AssignContext:
    """What a model-based assigner gets besides the metrics: it may add ``notes`` (recorded as warnings
    of the run) and ``info`` (recorded with the cut-points)."""

    engine: Engine
    settings: Settings
    scheme: Scheme
    as_of: date
    notes: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


# metrics: one row per customer with customer_id, recency_days, frequency, monetary, r_score, f_score,
# m_score; returns the segment per row (same index), each one of scheme.segment_names.
Assigner = Callable[[AssignContext, "pd.DataFrame"], "pd.Series"]
_ASSIGNERS: dict[str, Assigner] = {}
# Kinds shipped with the project register themselves when their module is imported.
_BUILTIN_KIND_MODULES = {"kmeans": "segments.kmeans", "clv_tier": "segments.clv"}


def register_assigner(kind: str, assigner: Assigner) -> None:
    """Make ``kind: <kind>`` schemes assign segments with ``assigner`` (for model-based schemes)."""
    if kind == "rules":
        raise ValueError("`rules` is built in and pushed down as SQL")
    _ASSIGNERS[kind] = assigner


def get_assigner(kind: str) -> Assigner:
    """The assigner registered for a model-based ``kind``."""
    if kind not in _ASSIGNERS and kind in _BUILTIN_KIND_MODULES:
        importlib.import_module(_BUILTIN_KIND_MODULES[kind])
    try:
        return _ASSIGNERS[kind]
    except KeyError:
        raise ConfigError(
            f"no assigner registered for scheme kind {kind!r}",
            fix=f"use kind: rules or one of {sorted(_ASSIGNERS)} (register_assigner adds one)",
        ) from None


def known_kinds() -> list[str]:
    return ["rules", *sorted(set(_ASSIGNERS) | set(_BUILTIN_KIND_MODULES))]


# --- loading -------------------------------------------------------------------------------------


def _scheme_dirs(settings: Settings | None) -> list[Path]:
    dirs = []
    if settings is not None and settings.schemes_dir is not None:
        dirs.append(Path(settings.schemes_dir))
    dirs.append(SHIPPED_DIR)
    return dirs


def _scheme_files(settings: Settings | None) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder in reversed(_scheme_dirs(settings)):
        if folder.is_dir():
            for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
                found[path.stem] = path
    return found


def list_schemes(settings: Settings | None = None) -> list[str]:
    """Names of every available scheme (shipped and the user's ``schemes_dir``)."""
    return sorted(_scheme_files(settings))


SCHEME_FIX = (
    "see docs/segmentation.md for the scheme format (keys: name, kind, source, scores, rules, "
    "default, exhaustive_grid, segments, params)"
)


def parse_scheme(path: Path) -> Scheme:
    """Read and validate one scheme file.

    Raises:
        ConfigError: the file is not valid YAML or not a valid scheme (names the file, line and fix).
    """
    doc = read_yaml(
        path, what="scheme file", fix="fix the YAML syntax (indentation, colons, quotes) at that line"
    )
    raw = doc.data
    if not isinstance(raw, dict):
        raise ConfigError(
            f"scheme file {path} must be a YAML mapping", fix="start with `name: ...`, `scores: ...`"
        )
    raw.setdefault("name", path.stem)
    if raw["name"] != path.stem:
        raise ConfigError(
            f"scheme file {path} declares name {raw['name']!r}",
            fix=f"rename the file or set name: {path.stem}",
        )
    scheme = validate(doc, Scheme, what="scheme file", fix=SCHEME_FIX)
    if not scheme.is_rules:
        get_assigner(scheme.kind)
    return scheme


def load_scheme(name: str, settings: Settings | None = None) -> Scheme:
    """The scheme called ``name`` (the user's ``schemes_dir`` first, then the shipped ones).

    Raises:
        ConfigError: no such scheme, or its file is invalid.
    """
    files = _scheme_files(settings)
    path = files.get(name)
    if path is None:
        raise ConfigError(
            f"unknown scheme {name!r}",
            fix=f"use one of {', '.join(sorted(files))}, or add {name}.yaml to ACTIVATION_SCHEMES_DIR",
        )
    return parse_scheme(path)


def reachable_segments(scheme: Scheme, empty: dict[str, list[int]]) -> list[str]:
    """Segments some non-empty score combination reaches under first-match-wins (rules schemes)."""
    metrics = sorted(scheme.scores)
    ranges = [[s for s in range(1, scheme.scores[m].n + 1) if s not in empty.get(m, [])] for m in metrics]
    reached: set[str] = set()
    for cell in itertools.product(*ranges):
        seg = scheme.assign(dict(zip(metrics, cell, strict=True)))
        if seg is not None:
            reached.add(seg)
    return [s for s in scheme.segment_names if s in reached]
