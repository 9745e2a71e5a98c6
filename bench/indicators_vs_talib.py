"""(b) compute_indicators on the history frame against TA-Lib called in a bare loop.

The bare loop gets per-symbol numpy arrays split beforehand (untimed) and calls the same seven
functions with the same parameters; the ratio is compute_indicators' time over the loop's.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import talib

from marketpipe_assets import indicators as ind

from .common import best_of, profile_top, row, verdict

TARGET_RATIO = 1.25


def split_arrays(history: pl.DataFrame) -> list[tuple[np.ndarray, ...]]:
    """Per-symbol (high, low, close, volume) float64 arrays in date order."""
    parts = history.sort("symbol", "trade_date").partition_by("symbol", maintain_order=True)
    columns = ("high", "low", "close", "volume")
    return [tuple(p[c].to_numpy().astype(np.float64) for c in columns) for p in parts]


def bare_loop(arrays: list[tuple[np.ndarray, ...]]) -> list:
    out = []
    for high, low, close, volume in arrays:
        out.append(
            (
                talib.SMA(close, 20),
                talib.EMA(close, 20),
                talib.RSI(close, 14),
                talib.MACD(close, 12, 26, 9),
                talib.BBANDS(close, 20, 2.0, 2.0),
                talib.ATR(high, low, close, 14),
                talib.OBV(close, volume),
            )
        )
    return out


def run(history: pl.DataFrame, repeat: int = 3) -> dict:
    arrays = split_arrays(history)
    ours, ours_all, values = best_of(lambda: ind.compute_indicators(history), repeat)
    bare, bare_all, reference = best_of(lambda: bare_loop(arrays), repeat)
    first = values.filter(pl.col("symbol") == values["symbol"][0])["sma_20"].to_numpy()
    assert np.allclose(first, reference[0][0], equal_nan=True), "SMA differs from TA-Lib"
    # The lake's reader returns one chunk per partition file: show what that costs here.
    rechunked = history.rechunk()
    flat, _, _ = best_of(lambda: ind.compute_indicators(rechunked), repeat)
    ratio = ours / bare
    return row(
        f"b. indicators {len(history):,} bars vs TA-Lib loop",
        f"< {TARGET_RATIO}x TA-Lib",
        f"{ours:.2f} s vs TA-Lib {bare:.2f} s",
        ratio,
        verdict(ratio < TARGET_RATIO),
        symbols=len(arrays),
        ours_seconds=ours_all,
        talib_seconds=bare_all,
        history_chunks=history.n_chunks(),
        ours_on_rechunked_frame_seconds=round(flat, 3),
        profile=profile_top(lambda: ind.compute_indicators(history)),
    )
