"""Confidence intervals used by the ROI report.

* :func:`wilson_interval` — score interval for one proportion (Wilson 1927).
* :func:`newcombe_diff_interval` — difference of two independent proportions, Newcombe's hybrid score
  interval built from the two Wilson intervals (Newcombe 1998, *Statistics in Medicine* 17:873–890,
  method 10). It stays inside [-1, 1], behaves at 0 and 1 conversions, and is what the report uses for
  incremental conversion.
* :func:`welch_diff_interval` — difference of two means with unequal variances (Welch's t with
  Welch–Satterthwaite degrees of freedom), from sufficient statistics (n, sum, sum of squares), so the
  per-member revenue (zeros included) can be aggregated in the warehouse.

Every function returns ``(nan, nan)`` when the interval is undefined (an empty group).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats as _st


def _z(confidence: float) -> float:
    return float(_st.norm.ppf(0.5 + confidence / 2))


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for ``successes / n``."""
    if n <= 0:
        return (math.nan, math.nan)
    z = _z(confidence)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def newcombe_diff_interval(
    x1: int, n1: int, x2: int, n2: int, confidence: float = 0.95
) -> tuple[float, float, float]:
    """Difference ``x1/n1 - x2/n2`` and its hybrid score interval (Newcombe's method 10).

    Returns ``(difference, low, high)``; all ``nan`` when either group is empty.
    """
    if n1 <= 0 or n2 <= 0:
        return (math.nan, math.nan, math.nan)
    p1, p2 = x1 / n1, x2 / n2
    l1, u1 = wilson_interval(x1, n1, confidence)
    l2, u2 = wilson_interval(x2, n2, confidence)
    d = p1 - p2
    low = d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return (d, low, high)


@dataclass(frozen=True)
class MeanStats:
    """Sufficient statistics of one group's per-member values."""

    n: int
    total: float
    total_sq: float

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n > 0 else math.nan

    @property
    def variance(self) -> float:
        """Sample variance (n - 1 in the denominator); 0 for a single member."""
        if self.n <= 1:
            return 0.0 if self.n == 1 else math.nan
        var = (self.total_sq - self.total * self.total / self.n) / (self.n - 1)
        return max(var, 0.0)  # rounding of sum-of-squares can go slightly negative


def mean_interval(s: MeanStats, confidence: float = 0.95) -> tuple[float, float]:
    """t interval of one group's mean (used for the error bars of the revenue chart)."""
    if s.n <= 1:
        return (math.nan, math.nan)
    half = float(_st.t.ppf(0.5 + confidence / 2, s.n - 1)) * math.sqrt(s.variance / s.n)
    return (s.mean - half, s.mean + half)


def welch_diff_interval(a: MeanStats, b: MeanStats, confidence: float = 0.95) -> tuple[float, float, float]:
    """Difference of means ``a - b`` and its Welch t interval.

    Returns ``(difference, low, high)``. With both variances zero the interval collapses to the
    difference; with a group of fewer than two members the bounds are ``nan``.
    """
    if a.n <= 0 or b.n <= 0:
        return (math.nan, math.nan, math.nan)
    d = a.mean - b.mean
    if a.n < 2 or b.n < 2:
        return (d, math.nan, math.nan)
    va, vb = a.variance / a.n, b.variance / b.n
    se2 = va + vb
    if se2 == 0:
        return (d, d, d)
    df = se2 * se2 / (va * va / (a.n - 1) + vb * vb / (b.n - 1))
    half = float(_st.t.ppf(0.5 + confidence / 2, df)) * math.sqrt(se2)
    return (d, d - half, d + half)
