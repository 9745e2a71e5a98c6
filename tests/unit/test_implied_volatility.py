"""The bulk implied-volatility solver against py_vollib (Jäckel's "Let's be rational"), the round
trip price -> IV -> price, greeks from the solved IV, and every case without a solution."""

import warnings

import numpy as np
import pytest

from checks.greeks import IV_SEARCH_MAX, black_scholes, implied_volatility

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from py_vollib.black_scholes.greeks import analytical as ref_greeks
    from py_vollib.black_scholes.implied_volatility import implied_volatility as ref_iv

RATE = 0.045
IV_TOLERANCE = 1e-6  # absolute, in volatility (1e-4 of a vol point)
PRICE_TOLERANCE = 1e-8  # absolute, in dollars, for the round trip
GREEK_TOLERANCE = 1e-7  # absolute, in each greek's unit (theta per day, vega per vol point)
# Below a thousandth of a dollar of time value a double cannot tell volatilities apart (a deep
# in-the-money call worth 170.00 carries its volatility in the 16th digit): no listed quote
# is that close to intrinsic, and neither solver can be held to 1e-6 there.
MIN_TIME_VALUE = 1e-3


def contracts(n: int = 400, seed: int = 11) -> dict[str, np.ndarray]:
    """Calls and puts, deep in to far out of the money, 1 day to 2 years, 5 % to 300 % vol."""
    rng = np.random.default_rng(seed)
    spot = rng.uniform(5, 600, 3 * n)
    strike = spot * np.exp(rng.uniform(-0.5, 0.5, 3 * n))
    years = np.exp(rng.uniform(np.log(1 / 365), np.log(2.0), 3 * n))
    sigma = rng.uniform(0.05, 3.0, 3 * n)
    is_call = rng.random(3 * n) < 0.5
    price = black_scholes(spot, strike, years, sigma, is_call, RATE)["price"]
    intrinsic = np.where(
        is_call, spot - strike * np.exp(-RATE * years), strike * np.exp(-RATE * years) - spot
    )
    keep = np.flatnonzero(price - np.maximum(intrinsic, 0) > MIN_TIME_VALUE)[:n]
    assert len(keep) == n
    picked = {"spot": spot, "strike": strike, "years": years, "sigma": sigma}
    return {k: v[keep] for k, v in picked.items()} | {
        "is_call": is_call[keep],
        "price": price[keep],
    }


def solve(c: dict[str, np.ndarray]) -> np.ndarray:
    return implied_volatility(c["price"], c["spot"], c["strike"], c["years"], c["is_call"], RATE)


def reference(c: dict[str, np.ndarray], i: int) -> tuple:
    flag = "c" if c["is_call"][i] else "p"
    return flag, c["spot"][i], c["strike"][i], c["years"][i], RATE


def test_the_sample_covers_the_cases():
    c = contracts()
    itm = np.where(c["is_call"], c["spot"] > c["strike"], c["spot"] < c["strike"])
    for kind in (c["is_call"], ~c["is_call"]):
        assert (kind & itm).sum() > 50 and (kind & ~itm).sum() > 50
    assert (c["years"] < 14 / 365).sum() > 50 and (c["years"] > 0.5).sum() > 50


def test_agrees_with_py_vollib():
    c = contracts()
    ours = solve(c)
    assert not np.isnan(ours).any()
    for i in range(len(ours)):
        flag, s, k, t, r = reference(c, i)
        theirs = ref_iv(c["price"][i], s, k, t, r, flag)
        assert ours[i] == pytest.approx(theirs, abs=IV_TOLERANCE), (i, flag, s, k, t)


def test_round_trip_price_iv_price():
    c = contracts(seed=12)
    sigma = solve(c)
    assert np.abs(sigma - c["sigma"]).max() < IV_TOLERANCE
    again = black_scholes(c["spot"], c["strike"], c["years"], sigma, c["is_call"], RATE)
    assert np.abs(again["price"] - c["price"]).max() < PRICE_TOLERANCE


def test_greeks_from_the_solved_iv_agree_with_py_vollib():
    c = contracts(seed=13)
    # Market-like prices: rounded to the cent, so the IV is no longer the generating one.
    c["price"] = np.round(c["price"], 2)
    sigma = solve(c)
    solvable = ~np.isnan(sigma)
    assert solvable.mean() > 0.95  # rounding pushes a few prices onto their intrinsic value
    ours = black_scholes(c["spot"], c["strike"], c["years"], sigma, c["is_call"], RATE)
    for i in np.flatnonzero(solvable):
        flag, s, k, t, r = reference(c, i)
        their_sigma = ref_iv(c["price"][i], s, k, t, r, flag)
        for name in ("delta", "gamma", "theta", "vega"):
            expected = getattr(ref_greeks, name)(flag, s, k, t, r, their_sigma)
            assert ours[name][i] == pytest.approx(expected, abs=GREEK_TOLERANCE), (i, name)


def test_no_solution_is_nan():
    s, k, t = 100.0, 100.0, 0.25
    discount = k * np.exp(-RATE * t)
    cases = {
        # (price, spot, strike, years, is_call)
        "call below intrinsic": (s - discount - 0.01, s, k * 0.8, t, True),
        "put below intrinsic": (discount * 1.2 - s - 0.01, s, k * 1.2, t, False),
        "call at its upper bound S": (s, s, k, t, True),
        "put at its upper bound K exp(-rT)": (discount, s, k, t, False),
        "zero price": (0.0, s, k, t, True),
        "negative price": (-1.0, s, k, t, False),
        "expired": (2.0, s, k, 0.0, True),
        "negative time": (2.0, s, k, -0.1, True),
        "missing price": (np.nan, s, k, t, True),
        "missing spot": (2.0, np.nan, k, t, True),
        "zero strike": (2.0, s, 0.0, t, True),
        "beyond the search range": (
            black_scholes(s, k, t, IV_SEARCH_MAX * 1.5, True, RATE)["price"],
            s,
            k,
            t,
            True,
        ),
    }
    columns = [np.array(v, dtype=float) for v in zip(*cases.values(), strict=True)]
    sigma = implied_volatility(*columns[:4], columns[4].astype(bool), RATE)
    assert dict(zip(cases, np.isnan(sigma), strict=True)) == dict.fromkeys(cases, True)


def test_extremes_within_the_search_range_are_found():
    """Where Newton alone wanders (tiny vega far out of the money, very high volatility), the
    bisection fallback still converges."""
    spot = np.array([100.0, 100.0, 100.0, 100.0])
    strike = np.array([300.0, 30.0, 100.0, 100.0])
    years = np.array([0.05, 0.05, 2.0, 1 / 365])
    sigma = np.array([2.5, 2.5, IV_SEARCH_MAX * 0.9, 0.02])
    is_call = np.array([True, False, True, False])
    price = black_scholes(spot, strike, years, sigma, is_call, RATE)["price"]
    assert np.abs(implied_volatility(price, spot, strike, years, is_call, RATE) - sigma).max() < (
        IV_TOLERANCE
    )


def test_scalars_and_empty_inputs():
    price = black_scholes(100.0, 95.0, 0.5, 0.3, True, RATE)["price"]
    assert float(implied_volatility(price, 100.0, 95.0, 0.5, True, RATE)) == pytest.approx(0.3)
    assert implied_volatility([], [], [], [], [], RATE).shape == (0,)
