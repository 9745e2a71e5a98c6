"""Deterministic synthetic option chains for the synthetic source.

Per underlying and session: every Friday expiration within 90 days, strikes on a price-scaled
grid within +/-30% of the underlying, an implied-volatility smile, bid/ask around the
Black-Scholes price, volume null for about one contract in ten. Every draw is a hash of
(seed, underlying, session, stream), so a chain never depends on what else is generated with it.
`defects` names flaws to inject (DEFECTS), each in the first underlying's chain, each the one a
check exists for.
"""

from __future__ import annotations

import datetime as dt
import zlib
from collections.abc import Iterable, Sequence

import numpy as np
import polars as pl

from checks.greeks import DAYS_PER_YEAR, RISK_FREE_RATE, black_scholes
from checks.schemas import OPTION_CHAIN_VENDOR

from .synthetic import EPOCH
from .synthetic_draws import hashes, uniform_pair

HORIZON_DAYS = 90
DEFECTS = ("bid_above_ask", "negative_bid", "zero_strike", "expired", "iv_out_of_range",
           "duplicate_contract", "missing_field", "bad_option_type", "parity_break",
           "missing_underlying")  # fmt: skip
_PRICE, _DAY, _QUOTE, _VOL = range(20, 24)


def _draws(seed: int, stream: int, underlying: str, keys: np.ndarray):
    sym = np.array([zlib.crc32(underlying.encode())], dtype=np.int64)
    first, second = uniform_pair(hashes(seed, "us", stream, sym, keys))
    return first[0], second[0]


def _step(price: float) -> float:
    return 0.5 if price < 25 else 1.0 if price < 100 else 2.5 if price < 250 else 5.0


def fridays(quote_date: dt.date, horizon: int = HORIZON_DAYS) -> list[dt.date]:
    first = quote_date + dt.timedelta(days=(4 - quote_date.weekday()) % 7)
    weeks = (first + dt.timedelta(weeks=w) for w in range(horizon // 7 + 1))
    return [d for d in weeks if (d - quote_date).days <= horizon]


def chain(seed: int, underlying: str, session: dt.date) -> pl.DataFrame:
    """One underlying's clean chain on one session, in the vendor columns."""
    day = (session - EPOCH).days
    u_p0, u_iv = _draws(seed, _PRICE, underlying, np.zeros(1, np.int64))
    u_walk, _ = _draws(seed, _DAY, underlying, np.array([day]))
    spot = round(float(20 * np.exp(u_p0[0] * np.log(20)) * (0.9 + 0.2 * u_walk[0])), 2)
    base_iv = 0.15 + 0.35 * float(u_iv[0])
    step = _step(spot)
    strikes = np.arange(np.ceil(spot * 0.7 / step), np.floor(spot * 1.3 / step) + 1) * step
    expiries = np.array(fridays(session), dtype="datetime64[D]")
    k = np.tile(np.repeat(strikes, 2), len(expiries))
    is_call = np.tile([True, False], len(strikes) * len(expiries))
    exp = np.repeat(expiries, 2 * len(strikes))
    days = (exp - np.datetime64(session, "D")).astype(np.int64)
    years = np.maximum(days, 1) / DAYS_PER_YEAR
    m = np.log(k / spot)
    iv = np.round(base_iv * (1 + 1.2 * m * m / np.sqrt(years)) - 0.1 * m, 4)
    price = black_scholes(spot, k, years, iv, is_call, RISK_FREE_RATE)["price"]
    half = np.maximum(0.025, 0.015 * price)
    rows = np.arange(len(k), dtype=np.int64) + day * 100_000
    u_last, u_vol = _draws(seed, _QUOTE, underlying, rows)
    u_oi, u_null = _draws(seed, _VOL, underlying, rows)
    strike_code = pl.Series(np.round(k * 1000).astype(np.int64)).cast(pl.String).str.zfill(8)
    symbols = (
        pl.Series(exp).dt.strftime("%y%m%d").alias("contract_symbol")
        + pl.Series(np.where(is_call, "C", "P"))
        + strike_code
    )
    volume = pl.Series(np.round(np.exp(8 * u_vol) - 1).astype(np.int64))
    return pl.DataFrame(
        {
            "quote_date": pl.Series([session] * len(k), dtype=pl.Date),
            "underlying": underlying,
            "contract_symbol": underlying + symbols,
            "expiration": exp,
            "strike": k,
            "option_type": np.where(is_call, "call", "put"),
            "bid": np.maximum(np.round(price - half, 2), 0.0),
            "ask": np.round(price + half, 2),
            "last_price": np.round(np.clip(price * (0.97 + 0.06 * u_last), 0.01, None), 2),
            "volume": pl.select(pl.when(pl.lit(u_null) < 0.1).then(None).otherwise(volume))[
                :, 0
            ].alias("volume"),
            "open_interest": np.round(np.exp(9 * u_oi)).astype(np.int64),
            "implied_volatility": iv,
            "underlying_price": spot,
        }
    ).select(pl.col(c).cast(t) for c, t in OPTION_CHAIN_VENDOR.items())


def option_chains(
    seed: int,
    underlyings: Sequence[str],
    sessions: Iterable[dt.date],
    defects: Iterable[str] = (),
) -> pl.DataFrame:
    """Chains of every underlying on every session, with `defects` injected."""
    defects = set(defects)
    unknown = defects - set(DEFECTS)
    if unknown:
        raise ValueError(f"unknown option defect(s) {sorted(unknown)}; use {DEFECTS}")
    frames = []
    for session in sessions:
        for i, underlying in enumerate(underlyings):
            if i == 0 and "missing_underlying" in defects:
                continue
            frame = chain(seed, underlying, session)
            frames.append(_inject(frame, defects) if i == len(underlyings) - 1 else frame)
    if not frames:
        return pl.DataFrame(schema=OPTION_CHAIN_VENDOR)
    return pl.concat(frames)


# Each defect breaks one row of the chain, picked by position (row 2k is a call, 2k+1 its put).
_ROW = {name: 2 * i for i, name in enumerate(DEFECTS)}


# An absurd implied volatility (yfinance#2937: 500-2000 % on stale deep quotes): the vendor's IV
# and the quote agree on it, so solving the IV from the mid cannot repair the row.
ABSURD_IV = 7.5


def _inject(frame: pl.DataFrame, defects: set[str]) -> pl.DataFrame:
    row = pl.int_range(pl.len())

    def at(name: str) -> pl.Expr:
        return (row == _ROW[name]) & pl.lit(name in defects)

    years = (frame["expiration"] - frame["quote_date"]).dt.total_days().to_numpy() / DAYS_PER_YEAR
    absurd = black_scholes(
        frame["underlying_price"].to_numpy(),
        frame["strike"].to_numpy(),
        years,
        ABSURD_IV,
        (frame["option_type"] == "call").to_numpy(),
    )["price"]
    absurd = pl.Series(np.round(absurd, 2))
    frame = frame.with_columns(
        bid=pl.when(at("bid_above_ask"))
        .then(pl.col("ask") + 0.5)
        .when(at("negative_bid"))
        .then(-0.05)
        .when(at("parity_break"))  # the whole quote moves: mid off parity, spread unchanged
        .then(pl.col("bid") + 3.0)
        .when(at("iv_out_of_range"))
        .then(pl.lit(absurd) - 0.05)
        .otherwise(pl.col("bid")),
        ask=pl.when(at("parity_break"))
        .then(pl.col("ask") + 3.0)
        .when(at("iv_out_of_range"))
        .then(pl.lit(absurd) + 0.05)
        .otherwise(pl.col("ask")),
        strike=pl.when(at("zero_strike")).then(0.0).otherwise(pl.col("strike")),
        expiration=pl.when(at("expired"))
        .then(pl.col("quote_date") - pl.duration(days=1))
        .otherwise(pl.col("expiration")),
        implied_volatility=pl.when(at("iv_out_of_range"))
        .then(ABSURD_IV)
        .otherwise(pl.col("implied_volatility")),
        underlying_price=pl.when(at("missing_field"))
        .then(None)
        .otherwise(pl.col("underlying_price")),
        option_type=pl.when(at("bad_option_type"))
        .then(pl.lit("straddle"))
        .otherwise(pl.col("option_type")),
    )
    if "duplicate_contract" in defects:
        frame = pl.concat([frame, frame[_ROW["duplicate_contract"]]])
    return frame
