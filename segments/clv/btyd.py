"""BG/NBD purchase counts and P(alive), Gamma-Gamma spend per order: the published likelihoods on
:func:`scipy.optimize.minimize`.

* BG/NBD — Fader, Hardie & Lee (2005), "Counting your customers the easy way: an alternative to the
  Pareto/NBD model", Marketing Science 24(2). While alive a customer buys at a Poisson rate λ ~ Gamma(r, α);
  after every repeat purchase they leave with probability p ~ Beta(a, b). Per customer: ``x`` repeat
  purchases, ``t_x`` the time of the last one and ``T`` the age, both counted from the first purchase.
* Gamma-Gamma — Fader & Hardie (2013), "The Gamma-Gamma model of monetary value". Order values of a
  customer are Gamma(p, ν) with ν ~ Gamma(q, γ) across customers (independent of the purchase process),
  fitted on the customers with at least one repeat purchase, ``x`` orders of mean value ``m`` each.

Both fits maximise the log-likelihood with analytic gradients in log-parameters (L-BFGS-B), on the distinct
input rows weighted by their count, so a million customers with day-resolution dates cost a fraction of a
second per evaluation. Standard errors come from the inverse of the observed information (the Hessian of
the negative log-likelihood at the optimum, by central differences of the analytic gradient).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import minimize
from scipy.special import betaln, digamma, expit, gammaln, hyp2f1, roots_jacobi
from threadpoolctl import threadpool_limits

Array = NDArray[np.float64]
#: A negative log-likelihood and its gradient, both in the natural parameters.
Objective = Callable[[Array], tuple[float, Array]]

BGNBD_PARAMS: tuple[str, ...] = ("r", "alpha", "a", "b")
GAMMA_GAMMA_PARAMS: tuple[str, ...] = ("p", "q", "v")
#: Gauss-Jacobi nodes for :func:`_expected_by_quadrature` (its integrand is smooth: 48 give ~1e-12).
QUADRATURE_NODES = 48


@dataclass(frozen=True)
class Fit:
    """Fitted parameters (by name), their standard errors, the log-likelihood and the customers used."""

    params: dict[str, float]
    standard_errors: dict[str, float]
    log_likelihood: float
    customers: int
    converged: bool

    def to_json(self) -> dict[str, object]:
        return {
            "params": self.params,
            "standard_errors": self.standard_errors,
            "log_likelihood": self.log_likelihood,
            "customers": self.customers,
            "converged": self.converged,
        }


def _distinct(*columns: Array) -> tuple[list[Array], Array]:
    """The distinct rows of the columns and how often each occurs (codes per column combined into one
    integer key: a 1-d sort, far faster than ``np.unique(axis=0)`` on a million rows)."""
    key = np.zeros(len(columns[0]), dtype=np.int64)
    levels = []
    for col in columns:
        values, codes = np.unique(np.asarray(col, dtype=np.float64), return_inverse=True)
        key = key * len(values) + codes
        levels.append((values, codes))
    _, first, counts = np.unique(key, return_index=True, return_counts=True)
    return [values[codes[first]] for values, codes in levels], counts.astype(np.float64)


#: Every parameter is fitted within 1e-10 .. 1e10 (in logs).
LOG_BOUND = float(np.log(1e10))


def _maximise(objective: Objective, start: Array, names: tuple[str, ...], customers: int) -> Fit:
    """Minimise ``objective`` over positive parameters (in log space); standard errors from its Hessian."""

    def in_logs(theta: Array) -> tuple[float, Array]:
        params = np.exp(theta)
        value, grad = objective(params)
        return value, grad * params

    # single-threaded BLAS: the objectives' dot products are over ~10^5 rows, where threads only add
    # synchronisation (4x slower on a loaded 2-core machine)
    with threadpool_limits(1):
        options = {"maxiter": 2000}
        try:
            with np.errstate(divide="ignore", over="ignore", invalid="ignore"):  # checked just below
                res = minimize(in_logs, np.log(start), jac=True, method="L-BFGS-B", options=options)
            escaped = not (np.isfinite(res.fun) and (np.abs(res.x) <= LOG_BOUND).all())
        except ZeroDivisionError:
            escaped = True
        if escaped:
            # data that do not identify a parameter (no one drops out, say) send it off towards 0 or
            # infinity, where the objective overflows: fitted again within the bounds, it ends there
            bounds = [(-LOG_BOUND, LOG_BOUND)] * len(start)
            res = minimize(
                in_logs, np.log(start), jac=True, method="L-BFGS-B", bounds=bounds, options=options
            )
        best = np.exp(res.x)
        hessian = np.empty((len(best), len(best)))
        for j in range(len(best)):
            step = 1e-5 * best[j]
            up, down = best.copy(), best.copy()
            up[j] += step
            down[j] -= step
            hessian[:, j] = (objective(up)[1] - objective(down)[1]) / (2 * step)
    hessian = (hessian + hessian.T) / 2
    try:
        errors = np.sqrt(np.clip(np.diag(np.linalg.inv(hessian)), 0.0, None))
    except np.linalg.LinAlgError:
        errors = np.full(len(best), np.nan)
    return Fit(
        params={n: float(v) for n, v in zip(names, best, strict=True)},
        standard_errors={n: float(v) for n, v in zip(names, errors, strict=True)},
        log_likelihood=-float(res.fun),
        customers=customers,
        converged=bool(res.success),
    )


# --- BG/NBD --------------------------------------------------------------------------------------


def _by_level(column: Array, weight: Array) -> tuple[Array, NDArray[np.intp], Array]:
    """The distinct values of ``column``, each row's index into them, and the total weight per value: a
    term that depends on this column alone is computed once per value, and its sum is a dot product."""
    values, index = np.unique(column, return_inverse=True)
    totals = np.bincount(index, weights=weight, minlength=len(values)).astype(np.float64)
    return values, index, totals


def _bgnbd_objective(x: Array, t_x: Array, big_t: Array, weight: Array) -> Objective:
    """Customers without a repeat purchase contribute −r·log(α + T) (their age alone): summed per distinct
    age. The others have two ways to have produced their history (alive at T, or left after the last
    purchase), combined per row with a logistic weight."""
    zero = x == 0
    uT0, _, w0 = _by_level(big_t[zero], weight[zero])
    x, t_x, big_t, weight = x[~zero], t_x[~zero], big_t[~zero], weight[~zero]
    ux, ix, wx = _by_level(x, weight)
    ut, it, _ = _by_level(t_x, weight)
    uT, iT, _ = _by_level(big_t, weight)
    all_x = np.concatenate([[0.0], ux])
    all_w = np.concatenate([[w0.sum()], wx])
    row_x = ux[ix]

    def objective(params: Array) -> tuple[float, Array]:
        r, alpha, a, b = (float(v) for v in params)
        # the terms of x alone, once per distinct x (x = 0 first)
        per_x = gammaln(r + all_x) - gammaln(r) + r * np.log(alpha) + betaln(a, b + all_x) - betaln(a, b)
        d_ab = digamma(a + b) - digamma(a + b + all_x)
        d_b = d_ab + digamma(b + all_x) - digamma(b)
        d_r = digamma(r + all_x) - digamma(r) + np.log(alpha)
        # x = 0: the age alone
        log_T0 = np.log(alpha + uT0)
        # x > 0: alive (a3) or gone after the last purchase (a4), per row
        log_T, log_t = np.log(alpha + uT)[iT], np.log(alpha + ut)[it]
        rx = r + row_x
        gap = (np.log(a) - np.log(b + ux - 1.0))[ix] - rx * (log_t - log_T)  # a4 - a3
        gone = expit(gap) * weight
        alive = weight - gone
        ll = per_x @ all_w - r * (w0 @ log_T0) - (rx * weight) @ log_T + weight @ np.logaddexp(0.0, gap)
        grad = np.array(
            [
                d_r @ all_w - w0 @ log_T0 - alive @ log_T - gone @ log_t,
                r / alpha * all_w.sum()
                - r * (w0 @ (1.0 / (alpha + uT0)))
                - (alive * rx) @ (1.0 / (alpha + uT))[iT]
                - (gone * rx) @ (1.0 / (alpha + ut))[it],
                d_ab @ all_w + gone.sum() / a,
                d_b @ all_w - gone @ (1.0 / (b + ux - 1.0))[ix],
            ]
        )
        return -float(ll), -grad

    return objective


def fit_bgnbd(x: Array, t_x: Array, big_t: Array) -> Fit:
    """Maximum-likelihood BG/NBD parameters ``r, alpha, a, b`` for repeat purchases ``x``, time of the last
    purchase ``t_x`` and age ``T`` (same time unit; ``0 <= t_x <= T``)."""
    (ux, ut, uT), weight = _distinct(x, t_x, big_t)
    start = np.array([1.0, max(float(np.mean(big_t)), 1e-3), 1.0, 1.0])
    return _maximise(_bgnbd_objective(ux, ut, uT, weight), start, BGNBD_PARAMS, len(np.asarray(x)))


def _bgnbd_args(fit: dict[str, float]) -> tuple[float, float, float, float]:
    return fit["r"], fit["alpha"], fit["a"], fit["b"]


def p_alive(params: dict[str, float], x: Array, t_x: Array, big_t: Array) -> Array:
    """P(still a customer at ``T``) given the history (BG/NBD): 1 for a customer with no repeat purchase."""
    r, alpha, a, b = _bgnbd_args(params)
    x = np.asarray(x, dtype=np.float64)
    shift = np.where(x > 0, x - 1.0, 0.0)
    ratio = np.exp((r + x) * (np.log(alpha + big_t) - np.log(alpha + t_x)))
    return np.asarray(1.0 / (1.0 + np.where(x > 0, a / (b + shift) * ratio, 0.0)), dtype=np.float64)


def _expected_by_quadrature(params: dict[str, float], t: float, x: Array, big_t: Array) -> Array:
    """E[purchases in t | alive] as the integral over the posterior of the dropout probability p,
    E_p[(1 − (1 + p·t / (α + T))^−(r + x)) / p] with p ~ Beta(a, b + x), by Gauss-Jacobi quadrature: what
    the closed form sums as a hypergeometric series, for the rows where that series does not converge
    (a + b + x ≤ 1) or overflows."""
    r, alpha, a, b = _bgnbd_args(params)
    out = np.empty(len(x))
    for xv in np.unique(x):
        rows = x == xv
        u, w = roots_jacobi(QUADRATURE_NODES, b + xv - 1.0, a - 1.0)  # weight (1 - u)^(b+x-1) (1 + u)^(a-1)
        p = (1.0 + u) / 2.0
        k = t / (alpha + big_t[rows])
        f = -np.expm1(-(r + xv) * np.log1p(np.outer(k, p))) / p
        out[rows] = (f @ w) / w.sum()
    return out


def expected_purchases(params: dict[str, float], t: float, x: Array, t_x: Array, big_t: Array) -> Array:
    """E[purchases in (T, T + t] | x, t_x, T] (Fader, Hardie & Lee 2005, eq. 10)."""
    x = np.asarray(x, dtype=np.float64)
    big_t = np.asarray(big_t, dtype=np.float64)
    # the expectation if alive depends on (x, T) only, and customers share few of those pairs (days and
    # small counts): computed once per distinct pair
    pairs, inverse = np.unique(x + 1j * big_t, return_inverse=True)
    if 2 * len(pairs) < len(x):
        if_alive = _expected_if_alive(params, t, pairs.real.copy(), pairs.imag.copy())[inverse.reshape(-1)]
    else:
        if_alive = _expected_if_alive(params, t, x, big_t)
    return np.asarray(if_alive * p_alive(params, x, t_x, big_t), dtype=np.float64)


def _expected_if_alive(params: dict[str, float], t: float, x: Array, big_t: Array) -> Array:
    """E[purchases in (T, T + t] | alive at T, x, T]: eq. 10 without its P(alive) factor."""
    r, alpha, a, b = _bgnbd_args(params)
    z = t / (alpha + big_t + t)
    c = a + b + x - 1.0
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        hyp = np.log(hyp2f1(r + x, b + x, c, z))
        # the Euler transformation where the series does not settle (large x)
        odd = ~np.isfinite(hyp)
        hyp[odd] = np.log(hyp2f1(c - r - x, c - b - x, c, z)[odd]) + (c - r - x - b - x)[odd] * np.log1p(
            -z[odd]
        )
        first = c / (a - 1.0)
        second = 1.0 - np.exp(hyp + (r + x) * (np.log(alpha + big_t) - np.log(alpha + big_t + t)))
        if_alive = first * second
    bad = ~np.isfinite(if_alive) | (c <= 0) | (if_alive < 0)
    if bad.any():
        if_alive[bad] = _expected_by_quadrature(params, t, x[bad], big_t[bad])
    return np.asarray(if_alive, dtype=np.float64)


def p_purchase(params: dict[str, float], t: float, x: Array, t_x: Array, big_t: Array) -> Array:
    """P(at least one purchase in (T, T + t]): alive, and the Poisson process fires (posterior of λ)."""
    r, alpha, _, _ = _bgnbd_args(params)
    x = np.asarray(x, dtype=np.float64)
    big_t = np.asarray(big_t, dtype=np.float64)
    none_if_alive = np.exp((r + x) * (np.log(alpha + big_t) - np.log(alpha + big_t + t)))
    return np.asarray(p_alive(params, x, t_x, big_t) * (1.0 - none_if_alive), dtype=np.float64)


# --- Gamma-Gamma ---------------------------------------------------------------------------------


def _gamma_gamma_objective(x: Array, m: Array, weight: Array) -> Objective:
    ux, ix, wx = _by_level(x, weight)
    log_ux = np.log(ux)
    row_x, xm, log_m = ux[ix], x * m, np.log(m)
    wlog_m = weight @ (row_x * log_m)

    def objective(params: Array) -> tuple[float, Array]:
        p, q, v = (float(t) for t in params)
        px = p * ux
        # the terms of x alone, once per distinct x
        per_x = gammaln(px + q) - gammaln(px) - gammaln(q) + q * np.log(v) + px * log_ux
        psi = digamma(px + q)
        # the terms of each row
        log_total = np.log(xm + v)
        shape = (p * row_x + q) * weight
        ll = per_x @ wx + p * wlog_m - weight @ log_m - shape @ log_total
        grad = np.array(
            [
                (ux * (psi - digamma(px) + log_ux)) @ wx + wlog_m - (weight * row_x) @ log_total,
                (psi - digamma(q) + np.log(v)) @ wx - weight @ log_total,
                q / v * wx.sum() - shape @ (1.0 / (xm + v)),
            ]
        )
        return -float(ll), -grad

    return objective


def fit_gamma_gamma(x: Array, m: Array) -> Fit:
    """Maximum-likelihood Gamma-Gamma parameters ``p, q, v`` from customers with ``x > 0`` orders of mean
    value ``m > 0`` (rows with ``x == 0`` or ``m <= 0`` are left out)."""
    x = np.asarray(x, dtype=np.float64)
    m = np.asarray(m, dtype=np.float64)
    keep = (x > 0) & (m > 0)
    (ux, um), weight = _distinct(x[keep], m[keep])
    start = np.array([1.0, 2.0, max(float(np.mean(m[keep])) if keep.any() else 1.0, 1e-3)])
    return _maximise(_gamma_gamma_objective(ux, um, weight), start, GAMMA_GAMMA_PARAMS, int(keep.sum()))


def expected_order_value(params: dict[str, float], x: Array, m: Array) -> Array:
    """E[value of an order | x orders of mean m] (Fader & Hardie 2013, eq. 5); the population mean
    ``p·v / (q − 1)`` for a customer without one."""
    p, q, v = params["p"], params["q"], params["v"]
    x = np.asarray(x, dtype=np.float64)
    m = np.where(x > 0, np.asarray(m, dtype=np.float64), 0.0)
    return np.asarray((p * (v + x * m)) / (p * x + q - 1.0), dtype=np.float64)


# --- simulation (for tests and the benchmark) ----------------------------------------------------


def simulate(
    bgnbd: dict[str, float], gamma_gamma: dict[str, float], ages: Array, seed: int
) -> tuple[NDArray[np.int64], Array, Array]:
    """Repeat purchases drawn from BG/NBD with ``bgnbd`` (first purchase at time 0, each customer observed
    for their age) and each customer's order-value rate from Gamma-Gamma with ``gamma_gamma``.

    Returns ``(customer, time, nu)``: customer index and time of every repeat purchase (ordered by
    customer, then time), and per customer the Gamma rate of their order values (an order is Gamma(p, nu)).
    """
    rng = np.random.default_rng(seed)
    r, alpha, a, b = _bgnbd_args(bgnbd)
    ages = np.asarray(ages, dtype=np.float64)
    n = len(ages)
    lam = rng.gamma(r, 1.0 / alpha, n)
    drop = rng.beta(a, b, n)
    nu = rng.gamma(gamma_gamma["q"], 1.0 / gamma_gamma["v"], n)
    who: list[NDArray[np.int64]] = []
    when: list[Array] = []
    active = np.arange(n)
    now = np.zeros(n)
    while len(active):  # one purchase per still-active customer per pass
        now[active] += rng.exponential(1.0, len(active)) / lam[active]
        active = active[now[active] <= ages[active]]
        who.append(active)
        when.append(now[active].copy())
        active = active[rng.random(len(active)) >= drop[active]]
    customer = np.concatenate(who) if who else np.zeros(0, dtype=np.int64)
    time = np.concatenate(when) if when else np.zeros(0)
    order = np.lexsort((time, customer))
    return customer[order], time[order], np.asarray(nu, dtype=np.float64)
