"""Black-Scholes prices, greeks and implied volatility in bulk (numpy arrays in, arrays out; no
per-row loops).

European options, no dividends, continuous risk-free rate. Time is in years of 365 days.
Units: delta and gamma per 1.0 of underlying; theta per calendar day (the yearly theta / 365);
vega per volatility point (the change for +1 percentage point of volatility, vega / 100).
These are py_vollib's and most brokers' conventions. Inputs that cannot be priced (time <= 0,
volatility <= 0, a missing value, a non-positive price) give NaN.
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtr

RISK_FREE_RATE = 0.04
DAYS_PER_YEAR = 365.0
_SQRT_2PI = np.sqrt(2.0 * np.pi)
# The implied-volatility solver looks for sigma in (0, IV_SEARCH_MAX]: a price only a higher
# volatility reaches has no solution (NaN). 10 = 1000 %, twice the default rule's upper bound.
IV_SEARCH_MAX = 10.0
IV_TOLERANCE = 1e-12  # stop when a step or the bracket is this small, in volatility
IV_MAX_ITERATIONS = 100  # bisection alone halves (0, 10] below 1e-12 in 44 steps


def _d1_d2(s, k, t, v, rate):
    root_t = np.sqrt(t)
    d1 = (np.log(s / k) + (rate + 0.5 * v * v) * t) / (v * root_t)
    return d1, d1 - v * root_t, root_t


def black_scholes(spot, strike, years, sigma, is_call, rate: float = RISK_FREE_RATE) -> dict:
    """Price, delta, gamma, theta (per day) and vega (per vol point) of each option."""
    s, k, t, v = (np.asarray(x, dtype=np.float64) for x in (spot, strike, years, sigma))
    call = np.asarray(is_call, dtype=bool)
    ok = (t > 0) & (v > 0) & (s > 0) & (k > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        t, v = np.where(ok, t, np.nan), np.where(ok, v, np.nan)
        d1, d2, root_t = _d1_d2(s, k, t, v, rate)
        pdf = np.exp(-0.5 * d1 * d1) / _SQRT_2PI
        discount = k * np.exp(-rate * t)
        sign = np.where(call, 1.0, -1.0)
        nd1, nd2 = ndtr(sign * d1), ndtr(sign * d2)
        price = sign * (s * nd1 - discount * nd2)
        delta = np.where(call, ndtr(d1), ndtr(d1) - 1.0)
        gamma = pdf / (s * v * root_t)
        theta = (-s * pdf * v / (2.0 * root_t) - sign * rate * discount * nd2) / DAYS_PER_YEAR
        vega = s * pdf * root_t / 100.0
    return {"price": price, "delta": delta, "gamma": gamma, "theta": theta, "vega": vega}


def implied_volatility(
    price, spot, strike, years, is_call, rate: float = RISK_FREE_RATE
) -> np.ndarray:
    """The Black-Scholes volatility that reprices each option to `price`; NaN where none exists.

    No solution (NaN): a missing or non-positive input, time <= 0, a price at or below the
    intrinsic value S - K exp(-rT) (calls) / K exp(-rT) - S (puts), at or above the upper bound
    S (calls) / K exp(-rT) (puts), or one that needs a volatility above IV_SEARCH_MAX.

    Method: an in-the-money option is first turned into its out-of-the-money twin by put-call
    parity (the same volatility), so the solver only ever matches time value: matching a deep
    in-the-money price would difference two large numbers and lose the digits that carry the
    volatility. Then Newton's method on sigma from Manaster and Koehler's start
    sqrt(2 |ln(S/K) + rT| / T) (the inflection point of price in sigma, from which Newton
    converges monotonically), inside a bracket that every evaluation narrows; a step that leaves
    the bracket, or a vanishing vega, is replaced by bisection. Every iteration works on the
    still-unconverged rows at once.
    """
    inputs = (np.asarray(x, dtype=np.float64) for x in (price, spot, strike, years))
    *arrays, call = np.broadcast_arrays(*inputs, np.asarray(is_call, dtype=bool))
    shape = call.shape
    p, s, k, t, call = (a.ravel() for a in (*arrays, call))
    sigma = np.full(p.shape, np.nan)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        discount = k * np.exp(-rate * t)
        forward_itm = s > discount  # a call in the money against the discounted strike
        # The out-of-the-money twin: a put when the call is in the money, and vice versa.
        otm_call = ~forward_itm
        otm_price = np.where(call == otm_call, p, p - np.where(call, s - discount, discount - s))
        upper = np.where(otm_call, s, discount)
        valid = (t > 0) & (s > 0) & (k > 0) & (otm_price > 0) & (otm_price < upper)
    rows = np.flatnonzero(valid)
    sigma[rows] = _newton_bisection(
        otm_price[rows], s[rows], k[rows], t[rows], otm_call[rows], rate
    )
    return sigma.reshape(shape)


def _otm_price_vega(s, k, t, v, is_call, rate):
    d1, d2, root_t = _d1_d2(s, k, t, v, rate)
    sign = np.where(is_call, 1.0, -1.0)
    price = sign * (s * ndtr(sign * d1) - k * np.exp(-rate * t) * ndtr(sign * d2))
    vega = s * np.exp(-0.5 * d1 * d1) / _SQRT_2PI * root_t
    return price, vega


def _newton_bisection(target, s, k, t, is_call, rate) -> np.ndarray:
    """Safeguarded Newton for out-of-the-money options whose price lies in (0, upper bound)."""
    n = target.size
    low, high = np.zeros(n), np.full(n, IV_SEARCH_MAX)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        start = np.sqrt(2.0 * np.abs(np.log(s / k) + rate * t) / t)
    sigma = np.clip(np.nan_to_num(start, nan=0.5), 0.05, IV_SEARCH_MAX / 2)
    result = np.full(n, np.nan)
    active = np.arange(n)
    for _ in range(IV_MAX_ITERATIONS):
        if active.size == 0:
            break
        v = sigma[active]
        with np.errstate(divide="ignore", invalid="ignore", over="ignore", under="ignore"):
            price, vega = _otm_price_vega(s[active], k[active], t[active], v, is_call[active], rate)
            diff = price - target[active]
            # Price rises with sigma: the root lies above v when the price is too low.
            lo = np.where(diff < 0, v, low[active])
            hi = np.where(diff > 0, v, high[active])
            newton = v - diff / vega
        inside = np.isfinite(newton) & (newton > lo) & (newton < hi)
        step_to = np.where(inside, newton, 0.5 * (lo + hi))
        converged = (diff == 0) | (np.abs(step_to - v) < IV_TOLERANCE) | (hi - lo < IV_TOLERANCE)
        # A row still pinned to the top of the search range has no solution below it.
        unreachable = converged & (lo >= IV_SEARCH_MAX - 2 * IV_TOLERANCE)
        result[active[converged & ~unreachable]] = np.where(diff == 0, v, step_to)[
            converged & ~unreachable
        ]
        low[active], high[active], sigma[active] = lo, hi, step_to
        active = active[~converged]
    return result
