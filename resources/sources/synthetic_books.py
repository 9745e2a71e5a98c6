"""Deterministic synthetic 10-level order books for the synthetic source.

One snapshot per symbol and capture slot of a session (markets' hours, half days shorter): a mid
price bridging the daily bar's open to its close, a spread of one to three ticks (KRX's tick
table, cents in the US), one tick between levels, log-normal sizes, and about one book in fifty
thin (its deeper levels explicitly empty). Every draw is a hash of (seed, market, symbol, session,
slot, level), so a snapshot never depends on what else is generated with it.

Knobs as for bars: a (symbol, session) without a daily bar has no book, single snapshots go
missing at `missing_rate`, and a `bad_row_rate` share of snapshots carries one of DEFECTS, each
the one a rule of checks/order_book_rules.py exists for.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import numpy as np
import polars as pl

from checks import markets
from checks.markets import capture_slots
from checks.schemas import ORDER_BOOK_LEVELS, ORDER_BOOK_SNAPSHOTS

from .synthetic_draws import hashes, shocks, uniform_pair, uniforms

DEFECTS = ("crossed", "unordered_levels", "negative_size", "missing_level", "outside_session")
_MID, _SPREAD_THIN, _SIZE, _MISS_BAD, _KIND = range(30, 35)
_MAX_SLOTS = 1024  # slot keys: session position * _MAX_SLOTS + slot (one-minute slots fit)
# KRX tick sizes by price (KRX rules since 2023); US equities quote in cents.
_KRX_TICKS = ((2_000, 1), (5_000, 5), (20_000, 10), (50_000, 50), (200_000, 100), (500_000, 500))


def tick_size(market: str, price: np.ndarray) -> np.ndarray:
    if market == "us":
        return np.full(price.shape, 0.01)
    bounds = np.array([b for b, _ in _KRX_TICKS], dtype=np.float64)
    ticks = np.array([t for _, t in _KRX_TICKS] + [1_000], dtype=np.float64)
    return ticks[np.searchsorted(bounds, price, side="right")]


def order_book_history(
    source,
    market: str,
    sessions: Sequence[dt.date],
    symbols: Sequence[str],
    interval_minutes: int,
    *,
    at: dt.datetime | None = None,
) -> pl.DataFrame:
    """Snapshots of `symbols` from the synthetic `source` (a SyntheticSource, whose bars they
    follow) at every capture slot of `sessions` (ORDER_BOOK_SNAPSHOTS), or only at the slot `at`
    (what a live capture at that time would see)."""
    chosen = source.select(market, sessions, symbols)
    if chosen is None:
        return pl.DataFrame(schema=ORDER_BOOK_SNAPSHOTS)
    frames = [
        _session_books(source, market, day, pos, chosen.symbols, chosen.sym_idx,
                       chosen.bars["open"][:, j], chosen.bars["close"][:, j],
                       chosen.bars["volume"][:, j], chosen.present[:, j], interval_minutes, at)
        for j, (pos, day) in enumerate(zip(chosen.wanted, chosen.sessions, strict=True))
    ]  # fmt: skip
    return pl.concat(frames)


def _session_books(
    source,
    market,
    day,
    pos,
    symbols,
    sym_idx,
    day_open,
    day_close,
    day_volume,
    present,
    interval,
    at,
) -> pl.DataFrame:
    times = capture_slots(market, day, interval)
    slots = np.array([t.replace(tzinfo=None) for t in times], dtype="datetime64[us]")
    n, levels = len(slots), ORDER_BOOK_LEVELS
    keys = pos * _MAX_SLOTS + np.arange(n, dtype=np.int64)
    s = source.seed
    # Mid: a bridge from the day's open to its close, like the synthetic intraday bars.
    walk = np.cumsum(shocks(uniforms(s, market, _MID, sym_idx, keys)), axis=1)
    frac = np.arange(n) / max(n - 1, 1)
    lo, lc = np.log(day_open), np.log(day_close)
    sigma = np.abs(lc - lo)[:, None] / np.sqrt(n) + 0.0005
    mid = np.exp(lo[:, None] + frac * (lc - lo)[:, None] + (walk - frac * walk[:, -1:]) * sigma)
    tick = tick_size(market, mid)
    spread_u, thin_u = uniform_pair(hashes(s, market, _SPREAD_THIN, sym_idx, keys))
    spread_ticks = 1 + np.floor(spread_u * 3)
    best_bid = np.floor(mid / tick - spread_ticks / 2) * tick
    best_ask = best_bid + spread_ticks * tick
    step = np.arange(levels) * tick[..., None]
    bid = best_bid[..., None] - step
    ask = best_ask[..., None] + step
    level_keys = (keys[:, None] * 16 + np.arange(levels)).ravel()
    bid_u, ask_u = uniform_pair(hashes(s, market, _SIZE, sym_idx, level_keys))
    base = np.maximum(day_volume / (n * 40.0), 1.0)[:, None, None]
    bid_size = np.maximum(1, np.round(base * np.exp(shocks(bid_u.reshape(bid.shape)))))
    ask_size = np.maximum(1, np.round(base * np.exp(shocks(ask_u.reshape(ask.shape)))))
    # One book in fifty is thin: quoted down to level 5..9, the rest explicitly empty.
    depth = np.where(thin_u < 0.02, 5 + np.floor(thin_u / 0.02 * 5), levels)
    empty = np.arange(levels) >= depth[..., None]
    bid, ask = np.where(empty, np.nan, bid), np.where(empty, np.nan, ask)
    bid_size, ask_size = np.where(empty, 0, bid_size), np.where(empty, 0, ask_size)

    miss_u, bad_u = uniform_pair(hashes(s, market, _MISS_BAD, sym_idx, keys))
    kind = np.floor(uniforms(s, market, _KIND, sym_idx, keys) * len(DEFECTS)).astype(int)
    bad = bad_u < source.bad_row_rate

    def defect(name: str) -> np.ndarray:
        return bad & (kind == DEFECTS.index(name))

    ask[..., 0] = np.where(defect("crossed"), bid[..., 0], ask[..., 0])
    swap = defect("unordered_levels")
    bid[..., 1], bid[..., 2] = (
        np.where(swap, bid[..., 2], bid[..., 1]),
        np.where(swap, bid[..., 1], bid[..., 2]),
    )
    bid_size[..., 0] = np.where(defect("negative_size"), -bid_size[..., 0], bid_size[..., 0])
    session_length = slots[-1] - slots[0] + np.timedelta64(interval, "m")
    ts = slots[None, :] + np.where(defect("outside_session"), session_length, np.timedelta64(0))

    snapshot = present[:, None] & (miss_u >= source.missing_rate)
    if at is not None:
        snapshot &= np.array([t == at for t in times])[None, :]
    rows = snapshot[..., None] & ~(defect("missing_level")[..., None] & (np.arange(levels) == 9))
    sym_pos = np.broadcast_to(np.arange(len(sym_idx))[:, None, None], rows.shape)[rows]
    decimals = markets.MARKETS[market].price_decimals
    frame = pl.DataFrame(
        {
            "symbol": symbols.gather(sym_pos),
            "snapshot_ts": np.broadcast_to(ts[..., None], rows.shape)[rows],
            "level": np.broadcast_to(np.arange(1, levels + 1), rows.shape)[rows],
            "bid_price": np.round(bid[rows], decimals),
            "ask_price": np.round(ask[rows], decimals),
            "bid_size": bid_size[rows].astype(np.int64),
            "ask_size": ask_size[rows].astype(np.int64),
        }
    )
    return frame.with_columns(
        pl.col("snapshot_ts").dt.replace_time_zone("UTC"),
        pl.col("bid_price", "ask_price").fill_nan(None),
        trade_date=pl.lit(day, pl.Date),
    ).select(pl.col(c).cast(t) for c, t in ORDER_BOOK_SNAPSHOTS.items())
