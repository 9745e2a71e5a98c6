"""Deterministic synthetic market data (CONTRACT section 4), the embedded default source.

Every random number is a hash of (seed, market, symbol, session, stream), so a bar depends only
on those and never on which partitions are generated together: a backfill and day-by-day runs
store equal data. Prices follow a mean-reverting log walk from a fixed epoch (the first session
of 2010), so they stay in a realistic band over decades.
"""

from __future__ import annotations

import datetime as dt
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import polars as pl
from scipy.signal import lfilter

from checks import markets
from checks.listing import BEFORE_HISTORY
from checks.schemas import (
    DAILY_PRICES,
    INTRADAY_BAR_MINUTES,
    INTRADAY_BARS,
    UNIVERSE,
)

from .base import Dataset
from .synthetic_books import order_book_history as synthetic_order_books
from .synthetic_draws import hashes, shocks, uniform_pair, uniforms

EPOCH = dt.date(2010, 1, 1)
# Hash streams: each kind of draw has its own so adding one never shifts another.
_RET, _GAP_HIGH, _LOW_VOL, _MISS_BAD, _P0, _SIGMA, _VBASE, _LIST, _DELIST = range(9)
# Intraday streams, after the daily ones so those never shift.
_BAR_RET, _BAR_WICK, _BAR_MISS_BAD, _BAR_OUTSIDE = range(9, 13)
_MAX_SLOTS = 128  # slot keys: session position * _MAX_SLOTS + slot
_PRICE_BAND = {"krx": (2_000.0, 400_000.0), "us": (8.0, 400.0)}
_VOLUME_BAND = {"krx": (20_000.0, 5_000_000.0), "us": (200_000.0, 20_000_000.0)}
_REVERSION = 0.998  # AR(1) coefficient of log price around its start: long-run sd ~ 16 sigma
_BAD_KINDS = ("high_below_low", "close_above_high", "negative_volume", "zero_close",
              "missing_close", "duplicate")  # fmt: skip


def _ticker(i: int, market: str) -> str:
    if market == "krx":
        return f"{(i + 1) * 10:06d}"
    letters, n = "", i + 26 * 27  # start at three letters: AAA, AAB, ...
    while n:
        n, r = divmod(n, 26)
        letters = string.ascii_uppercase[r] + letters
    return letters


@dataclass(frozen=True)
class Selection:
    """What a request for (sessions, symbols) covers, shared by every generator: the sessions
    since the epoch in order, their epoch positions, the requested symbols listed by then with
    their hash indices, the daily OHLCV matrices and the cells with a daily bar (symbols x
    sessions)."""

    sessions: list[dt.date]
    wanted: np.ndarray
    symbols: pl.Series
    sym_idx: np.ndarray
    bars: dict[str, np.ndarray]
    present: np.ndarray


@dataclass(frozen=True)
class SyntheticSource:
    symbols: int = 500
    seed: int = 0
    missing_rate: float = 0.01
    bad_row_rate: float = 0.002
    name: str = "synthetic"
    datasets: ClassVar[frozenset[Dataset]] = frozenset(
        {
            Dataset.UNIVERSE,
            Dataset.DAILY_BARS,
            Dataset.INTRADAY_BARS,
            Dataset.ORDER_BOOK_HISTORY,
            Dataset.OPTION_CHAINS,
        }
    )

    def _epoch_sessions(self, market: str) -> list[dt.date]:
        return [d for d in markets.all_sessions(market) if d >= EPOCH]

    def universe(self, market: str, today: dt.date | None = None) -> pl.DataFrame:
        """Listings over time: most symbols trade from the epoch, a quarter list later and about
        one in ten is delisted. Only events up to today are known."""
        today = today or dt.date.today()
        sessions = self._epoch_sessions(market)
        idx = np.arange(self.symbols)
        one = np.zeros(1, dtype=np.int64)
        u_list = uniforms(self.seed, market, _LIST, idx, one)[:, 0]
        u_delist = uniforms(self.seed, market, _DELIST, idx, one)[:, 0]
        n = len(sessions)
        listed_late = u_list < 0.25
        listing_idx = np.where(listed_late, (u_list / 0.25 * 0.9 * n).astype(int), 0)
        delisted = u_delist < 0.10
        delist_idx = listing_idx + 60 + ((u_delist / 0.10) * (n - listing_idx - 60)).astype(int)
        rows = []
        for i in idx:
            listing = sessions[listing_idx[i]] if listed_late[i] else dt.date(2000, 1, 4)
            if listing > today:
                continue
            delisting = sessions[delist_idx[i]] if delisted[i] and delist_idx[i] < n else None
            rows.append(
                (
                    _ticker(int(i), market),
                    f"Synthetic {market.upper()} {i:04d}",
                    listing,
                    delisting if delisting is not None and delisting <= today else None,
                )
            )
        return pl.DataFrame(rows, schema=UNIVERSE, orient="row")

    def daily_bars(
        self, market: str, sessions: Sequence[dt.date], symbols: Sequence[str]
    ) -> pl.DataFrame:
        chosen = self.select(market, sessions, symbols)
        if chosen is None:
            return pl.DataFrame(schema=DAILY_PRICES)
        keep = chosen.present
        sym_pos = np.broadcast_to(np.arange(len(chosen.sym_idx))[:, None], keep.shape)[keep]
        day_pos = np.broadcast_to(np.arange(len(chosen.sessions))[None, :], keep.shape)[keep]
        days = np.array(chosen.sessions, dtype="datetime64[D]")
        frame = pl.DataFrame(
            {
                "symbol": chosen.symbols.gather(sym_pos),
                "trade_date": days[day_pos],
                **{name: values[keep] for name, values in chosen.bars.items()},
            }
        )
        return self._inject_bad_rows(frame).with_columns(source=pl.lit(self.name))

    def select(
        self, market: str, sessions: Sequence[dt.date], symbols: Sequence[str]
    ) -> Selection | None:
        """The Selection of a request; None when it covers no session or no symbol."""
        epoch_sessions = self._epoch_sessions(market)
        position = {d: i for i, d in enumerate(epoch_sessions)}
        wanted = np.array(
            sorted(position[d] for d in set(sessions) if d in position), dtype=np.int64
        )
        universe = self.universe(market, today=max(sessions, default=EPOCH))
        universe = universe.filter(pl.col("symbol").is_in(list(symbols)))
        if not len(wanted) or universe.is_empty():
            return None
        sym_idx = self.symbol_indices(market, universe["symbol"])
        return Selection(
            sessions=[epoch_sessions[p] for p in wanted],
            wanted=wanted,
            symbols=universe["symbol"],
            sym_idx=sym_idx,
            bars=self._bars(market, sym_idx, wanted),
            present=self._present(universe, sym_idx, wanted, epoch_sessions, market),
        )

    def symbol_indices(self, market: str, symbols: Iterable[str]) -> np.ndarray:
        """Each ticker's index, the key of its hashes."""
        index_of = {_ticker(i, market): i for i in range(self.symbols)}
        return np.array([index_of[x] for x in symbols], dtype=np.int64)

    def _present(self, universe, sym_idx, wanted, epoch_sessions, market) -> np.ndarray:
        """Mask of (symbol, session) cells with a bar: listed, not delisted, not missing."""
        ordinal = np.array(epoch_sessions, dtype="datetime64[D]")[wanted]
        # checks.listing's rule: a null listing date is listed since before the history.
        listing = universe["listing_date"].fill_null(BEFORE_HISTORY)
        listing = listing.to_numpy().astype("datetime64[D]")
        delisting = universe["delisting_date"].fill_null(dt.date(9999, 12, 31))
        delisting = delisting.to_numpy().astype("datetime64[D]")
        active = (listing[:, None] <= ordinal[None, :]) & (delisting[:, None] > ordinal[None, :])
        missing_u, _ = uniform_pair(hashes(self.seed, market, _MISS_BAD, sym_idx, wanted))
        return active & (missing_u >= self.missing_rate)

    def _bars(self, market, sym_idx, wanted) -> dict[str, np.ndarray]:
        """OHLCV and the bad-row draw as matrices (symbols x wanted sessions)."""
        s, one = self.seed, np.zeros(1, dtype=np.int64)
        lo, hi = _PRICE_BAND[market]
        p0 = np.exp(np.log(lo) + uniforms(s, market, _P0, sym_idx, one)[:, 0] * np.log(hi / lo))
        sigma = 0.01 + 0.025 * uniforms(s, market, _SIGMA, sym_idx, one)
        history = np.arange(wanted[-1] + 1)
        returns = shocks(uniforms(s, market, _RET, sym_idx, history)) * sigma
        if market == "krx":
            returns = np.clip(returns, -0.29, 0.29)  # the exchange's daily price limit
        log_close = lfilter([1.0], [1.0, -_REVERSION], returns, axis=1)
        log_close += np.log(p0)[:, None]
        close = np.exp(log_close[:, wanted])
        prev_close = np.exp(log_close[:, np.maximum(wanted - 1, 0)])
        gap_u, high_u = uniform_pair(hashes(s, market, _GAP_HIGH, sym_idx, wanted))
        low_u, vol_u = uniform_pair(hashes(s, market, _LOW_VOL, sym_idx, wanted))
        _, bad_u = uniform_pair(hashes(s, market, _MISS_BAD, sym_idx, wanted))
        open_ = prev_close * np.exp(shocks(gap_u) * sigma * 0.3)
        decimals = markets.MARKETS[market].price_decimals
        vlo, vhi = _VOLUME_BAND[market]
        vbase = np.exp(np.log(vlo) + uniforms(s, market, _VBASE, sym_idx, one) * np.log(vhi / vlo))
        # Rounding is monotone, so high >= max(open, close) and low <= min(...) survive it.
        return {
            "open": np.round(open_, decimals),
            "high": np.round(
                np.maximum(open_, close) * (1 - np.log(high_u) * sigma * 0.4), decimals
            ),
            "low": np.round(np.minimum(open_, close) / (1 - np.log(low_u) * sigma * 0.4), decimals),
            "close": np.round(close, decimals),
            "volume": np.round(vbase * np.exp(0.5 * shocks(vol_u))).astype(np.int64),
            "bad_u": bad_u,
        }

    def _inject_bad_rows(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Break a `bad_row_rate` share of bars, each in one of the ways real feeds do."""
        if self.bad_row_rate <= 0:
            return frame.drop("bad_u")
        bad = pl.col("bad_u") < self.bad_row_rate
        # Among bad rows bad_u is uniform on [0, rate): its position picks the defect.
        kind = (pl.col("bad_u") / self.bad_row_rate * len(_BAD_KINDS)).cast(pl.Int32)

        def defect(name: str) -> pl.Expr:
            return bad & (kind == _BAD_KINDS.index(name))

        frame = frame.with_columns(
            high=pl.when(defect("high_below_low"))
            .then(pl.col("low") * 0.97)
            .otherwise(pl.col("high")),
            close=pl.when(defect("close_above_high"))
            .then(pl.col("high") * 1.05)
            .when(defect("zero_close"))
            .then(0.0)
            .when(defect("missing_close"))
            .then(None)
            .otherwise(pl.col("close")),
            volume=pl.when(defect("negative_volume"))
            .then(-pl.col("volume"))
            .otherwise(pl.col("volume")),
        )
        frame = pl.concat([frame, frame.filter(defect("duplicate"))])
        return frame.drop("bad_u")

    def intraday_bars(
        self, market: str, sessions: Sequence[dt.date], symbols: Sequence[str]
    ) -> pl.DataFrame:
        """15-minute bars inside each session's hours (half days have fewer), walking from the
        daily bar's open to its close; a pure function of (seed, market, symbol, session, slot).

        Knobs as for daily bars: a (symbol, session) missing from daily bars has no intraday bars,
        single bars go missing at `missing_rate`, and a `bad_row_rate` share of bars is broken
        in the daily ways plus, as often as each of those, stamped outside the session's hours.
        """
        chosen = self.select(market, sessions, symbols)
        if chosen is None:
            return pl.DataFrame(schema=INTRADAY_BARS)
        sym_idx, daily, present = chosen.sym_idx, chosen.bars, chosen.present
        decimals = markets.MARKETS[market].price_decimals
        step = dt.timedelta(minutes=INTRADAY_BAR_MINUTES)
        frames = []
        for j, (pos, day) in enumerate(zip(chosen.wanted, chosen.sessions, strict=True)):
            opens_at, closes_at = markets.session_bounds(market, day)
            n = max(1, int((closes_at - opens_at) / step))
            slots = pos * _MAX_SLOTS + np.arange(n, dtype=np.int64)
            s = self.seed
            walk = np.cumsum(shocks(uniforms(s, market, _BAR_RET, sym_idx, slots)), axis=1)
            frac = np.arange(1, n + 1) / n
            lo, lc = np.log(daily["open"][:, j]), np.log(daily["close"][:, j])
            sigma = np.abs(lc - lo)[:, None] / np.sqrt(n) + 0.001
            # A bridge: the last bar closes at the daily close.
            log_close = (
                lo[:, None]
                + frac * (lc - lo)[:, None]
                + (walk - frac * walk[:, -1:]) * (sigma * 0.5)
            )
            close = np.exp(log_close)
            open_ = np.concatenate([np.exp(lo)[:, None], close[:, :-1]], axis=1)
            wick_hi, wick_lo = uniform_pair(hashes(s, market, _BAR_WICK, sym_idx, slots))
            miss_u, bad_u = uniform_pair(hashes(s, market, _BAR_MISS_BAD, sym_idx, slots))
            out_u = uniforms(s, market, _BAR_OUTSIDE, sym_idx, slots)
            high = np.maximum(open_, close) * (1 - np.log(wick_hi) * sigma * 0.1)
            low = np.minimum(open_, close) / (1 - np.log(wick_lo) * sigma * 0.1)
            volume = daily["volume"][:, j][:, None] / n * np.exp(0.3 * shocks(miss_u))
            keep = present[:, j][:, None] & (miss_u >= self.missing_rate)
            sym_pos = np.broadcast_to(np.arange(len(sym_idx))[:, None], keep.shape)[keep]
            slot = np.broadcast_to(np.arange(n)[None, :], keep.shape)[keep]
            # Outside the hours: moved by the session's length, so it falls after the close.
            outside = out_u[keep] < self.bad_row_rate / (len(_BAD_KINDS) + 1)
            offset = slot * step.total_seconds() + outside * (closes_at - opens_at).total_seconds()
            starts = np.datetime64(opens_at.replace(tzinfo=None), "us") + (
                offset * 1_000_000
            ).astype("timedelta64[us]")
            frames.append(
                pl.DataFrame(
                    {
                        "symbol": chosen.symbols.gather(sym_pos),
                        "bar_start": starts,
                        "open": np.round(open_[keep], decimals),
                        "high": np.round(high[keep], decimals),
                        "low": np.round(low[keep], decimals),
                        "close": np.round(close[keep], decimals),
                        "volume": np.round(volume[keep]).astype(np.int64),
                        "trade_date": np.full(int(keep.sum()), np.datetime64(day, "D")),
                        "bad_u": bad_u[keep],
                    }
                ).with_columns(
                    pl.col("bar_start").dt.replace_time_zone("UTC"),
                    pl.col("trade_date").cast(pl.Date),
                )
            )
        frame = self._inject_bad_rows(pl.concat(frames))
        return frame.select(pl.col(c).cast(t) for c, t in INTRADAY_BARS.items())

    def order_book_history(
        self,
        market: str,
        sessions: Sequence[dt.date],
        symbols: Sequence[str],
        interval_minutes: int,
        *,
        at: dt.datetime | None = None,
    ) -> pl.DataFrame:
        """10-level snapshots at every capture slot of past or present sessions, or only at
        the slot `at` (a live capture's view)."""
        return synthetic_order_books(self, market, sessions, symbols, interval_minutes, at=at)
