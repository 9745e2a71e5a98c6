"""Indicators equal TA-Lib called directly on each symbol's full stored history, whichever
partitions and runs they were computed in (CONTRACT section 3)."""

import datetime as dt

import numpy as np
import polars as pl
import pytest
import talib

from checks.schemas import DAILY_PRICES, INDICATOR_COLUMNS, INDICATORS
from marketpipe_assets.indicators import compute_indicators
from tests.conftest import Runner, recent_sessions, synthetic_data

RELATIVE = 1e-9


def talib_reference(high, low, close, volume) -> dict[str, np.ndarray]:
    """TA-Lib's own outputs for one symbol's series in date order."""
    high, low, close, volume = (np.asarray(a, dtype=np.float64) for a in (high, low, close, volume))
    macd, signal, hist = talib.MACD(close, fastperiod=12, slowperiod=26, signalperiod=9)
    upper, middle, lower = talib.BBANDS(close, timeperiod=20, nbdevup=2, nbdevdn=2)
    return {
        "sma_20": talib.SMA(close, timeperiod=20),
        "ema_20": talib.EMA(close, timeperiod=20),
        "rsi_14": talib.RSI(close, timeperiod=14),
        "macd": macd,
        "macd_signal": signal,
        "macd_hist": hist,
        "bb_upper": upper,
        "bb_middle": middle,
        "bb_lower": lower,
        "atr_14": talib.ATR(high, low, close, timeperiod=14),
        "obv": talib.OBV(close, volume),
    }


def assert_matches_reference(actual: pl.Series, expected: np.ndarray, what: str) -> int:
    """Null exactly where TA-Lib is NaN, within RELATIVE elsewhere; returns the values compared."""
    assert actual.dtype == pl.Float64, what
    values = actual.to_numpy()  # nulls become NaN
    missing = actual.is_null().to_numpy()
    assert not actual.is_nan().any(), f"{what}: NaN stored instead of null"
    np.testing.assert_array_equal(missing, np.isnan(expected), err_msg=f"{what}: null pattern")
    a, b = values[~missing], expected[~missing]
    tolerance = RELATIVE * np.maximum(np.abs(a), np.abs(b))
    bad = np.abs(a - b) > tolerance
    assert not bad.any(), f"{what}: {a[bad][:5]} != {b[bad][:5]}"
    return int((~missing).sum())


def test_stored_indicators_match_talib_across_partition_boundaries(lake, instance):
    market = "krx"
    # Missing and bad bars stay in: gaps and quarantined rows must simply be absent from the
    # history TA-Lib sees. Only a handful per session, so completeness holds.
    market_data = synthetic_data(symbols=60, missing_rate=0.002, bad_row_rate=0.004)
    runs = Runner(lake, market_data, instance)
    runs.universe(market)
    sessions = recent_sessions(market, 40)
    prices = runs(market, "daily_prices", days=(sessions[0], sessions[-1]))
    materialized = {e.partition for e in prices.get_asset_materialization_events()}
    assert materialized == set(sessions)

    # Three separate runs, out of date order: the latest chunk first, the single middle
    # partition last, so each run must read the earlier history itself.
    chunks = [(sessions[21], sessions[-1]), (sessions[0], sessions[19]), (sessions[20],)]
    for chunk in chunks:
        result = runs(
            market,
            "indicators",
            day=chunk[0] if len(chunk) == 1 else None,
            days=chunk if len(chunk) == 2 else None,
        )
        assert result.success

    stored = lake.read_partitions("daily_prices", market, DAILY_PRICES).sort("symbol", "trade_date")
    quarantined = lake.read_quarantine("daily_prices", market, DAILY_PRICES)
    assert len(quarantined) > 0, "the history should have quarantined rows left out"
    indicators = lake.read_partitions("indicators", market, INDICATORS)
    assert indicators.schema == INDICATORS
    # One indicator row per stored bar, no more.
    assert len(indicators) == len(stored)
    assert (
        indicators.select("symbol", "trade_date")
        .sort("symbol", "trade_date")
        .equals(stored.select("symbol", "trade_date"))
    )

    compared = dict.fromkeys(INDICATOR_COLUMNS, 0)
    for (symbol,), history in stored.group_by("symbol"):
        history = history.sort("trade_date")
        mine = (
            history.select("trade_date")
            .join(indicators.filter(pl.col("symbol") == symbol), on="trade_date", how="left")
            .sort("trade_date")
        )
        reference = talib_reference(
            history["high"], history["low"], history["close"], history["volume"]
        )
        for column, expected in reference.items():
            compared[column] += assert_matches_reference(
                mine[column], expected, f"{symbol} {column}"
            )
    # Every indicator, the slowest (MACD signal, 33 bars) included, had values to compare.
    assert all(n > 0 for n in compared.values()), compared


def test_compute_indicators_on_an_unsorted_multi_symbol_frame():
    rng = np.random.default_rng(7)
    frames = []
    lengths = {"BBB": 60, "AAA": 45, "CCC": 12}  # CCC is too short for most indicators
    for symbol, n in lengths.items():
        days = [dt.date(2024, 1, 1) + dt.timedelta(days=i) for i in range(n)]
        close = 100 * np.exp(np.cumsum(rng.normal(0, 0.02, n)))
        spread = np.abs(rng.normal(0, 0.01, n)) * close
        frames.append(
            pl.DataFrame(
                {
                    "symbol": symbol,
                    "trade_date": days,
                    "high": close + spread,
                    "low": close - spread,
                    "close": close,
                    "volume": rng.integers(1_000, 1_000_000, n),
                    "open": close,  # extra columns are ignored
                }
            )
        )
    history = pl.concat(frames)
    shuffled = history.sample(fraction=1.0, shuffle=True, seed=3)
    assert not shuffled.equals(history.sort("symbol", "trade_date"))

    out = compute_indicators(shuffled)

    assert out.columns == ["symbol", "trade_date", *INDICATOR_COLUMNS]
    assert len(out) == len(history)
    assert out.select("symbol", "trade_date").is_unique().all()
    # Shuffling the input changes no value (row order is free).
    key = ["symbol", "trade_date"]
    assert out.sort(key).equals(compute_indicators(history).sort(key))
    for symbol in lengths:
        series = history.filter(pl.col("symbol") == symbol).sort("trade_date")
        mine = out.filter(pl.col("symbol") == symbol).sort("trade_date")
        assert mine["trade_date"].equals(series["trade_date"])
        reference = talib_reference(
            series["high"], series["low"], series["close"], series["volume"]
        )
        for column, expected in reference.items():
            assert_matches_reference(mine[column], expected, f"{symbol} {column}")
    short = out.filter(pl.col("symbol") == "CCC")
    assert short["sma_20"].null_count() == lengths["CCC"]
    assert short["obv"].null_count() == 0


@pytest.mark.parametrize("rows", [0, 1])
def test_compute_indicators_on_tiny_histories(rows):
    history = pl.DataFrame(
        {
            "symbol": ["AAA"] * rows,
            "trade_date": [dt.date(2024, 1, 2)] * rows,
            "high": [11.0] * rows,
            "low": [9.0] * rows,
            "close": [10.0] * rows,
            "volume": [100] * rows,
        },
        schema={
            **{c: DAILY_PRICES[c] for c in ("symbol", "trade_date", "high", "low")},
            "close": pl.Float64,
            "volume": pl.Int64,
        },
    )
    out = compute_indicators(history)
    assert len(out) == rows
    assert out.schema == INDICATORS
