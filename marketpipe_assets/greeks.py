"""Black-Scholes prices and greeks in bulk (numpy arrays in, arrays out; no per-row loops).

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


def black_scholes(spot, strike, years, sigma, is_call, rate: float = RISK_FREE_RATE) -> dict:
    """Price, delta, gamma, theta (per day) and vega (per vol point) of each option."""
    s, k, t, v = (np.asarray(x, dtype=np.float64) for x in (spot, strike, years, sigma))
    call = np.asarray(is_call, dtype=bool)
    ok = (t > 0) & (v > 0) & (s > 0) & (k > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        t, v = np.where(ok, t, np.nan), np.where(ok, v, np.nan)
        root_t = np.sqrt(t)
        d1 = (np.log(s / k) + (rate + 0.5 * v * v) * t) / (v * root_t)
        d2 = d1 - v * root_t
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
