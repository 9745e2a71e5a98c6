"""Technical indicators (CONTRACT section 3) computed with TA-Lib over each symbol's history."""

import datetime as dt
from collections.abc import Callable
from typing import Any, TypeVar

import dagster as dg
import numpy as np
import polars as pl
import talib

from checks.markets import partition_dates, partitions_def
from checks.schemas import DAILY_PRICES, INDICATOR_COLUMNS, INDICATORS
from resources.lake import LakeResource

from .declarative import after_checked_inputs
from .metadata import session_metadata

HISTORY_COLUMNS = ["symbol", "trade_date", "high", "low", "close", "volume"]


# TA-Lib's C functions themselves: talib's public names wrap them to accept pandas and polars
# Series, a check that costs more than the computation on a short symbol history.
_F = TypeVar("_F", bound=Callable[..., Any])


def _c_function(f: _F) -> _F:
    return getattr(f, "__wrapped__", f)


SMA = _c_function(talib.SMA)
EMA = _c_function(talib.EMA)
RSI = _c_function(talib.RSI)
MACD = _c_function(talib.MACD)
BBANDS = _c_function(talib.BBANDS)
ATR = _c_function(talib.ATR)
OBV = _c_function(talib.OBV)


def _symbol_indicators(high, low, close, volume) -> tuple[np.ndarray, ...]:
    macd, signal, hist = MACD(close, 12, 26, 9)
    upper, middle, lower = BBANDS(close, 20, 2.0, 2.0)
    return (
        SMA(close, 20),
        EMA(close, 20),
        RSI(close, 14),
        macd,
        signal,
        hist,
        upper,
        middle,
        lower,
        ATR(high, low, close, 14),
        OBV(close, volume),
    )


def _symbol_major_order(history: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Row order that groups each symbol's rows in date order, and the code of each row.

    Integer codes instead of symbol strings: sorting strings costs 10x more. History read from
    the lake is already in date order, so a stable radix sort of 16-bit codes keeps that order
    within each symbol at a fraction of a full (symbol, date) sort.
    """
    codes = history["symbol"].cast(pl.Categorical).to_physical().to_numpy()
    if len(codes) and codes.max() < 2**15 and history["trade_date"].is_sorted():
        return np.argsort(codes.astype(np.int16), kind="stable"), codes
    days = history["trade_date"].to_physical().to_numpy().astype(np.int64)
    return np.argsort(codes.astype(np.int64) * 1_000_000 + days, kind="stable"), codes


def compute_indicators(history: pl.DataFrame) -> pl.DataFrame:
    """Indicators for every row of `history` (symbol, trade_date, high, low, close, volume),
    each symbol's series taken in date order; null where TA-Lib has no value yet."""
    order, codes = _symbol_major_order(history)
    high, low, close = (history[c].to_numpy()[order] for c in ("high", "low", "close"))
    volume = history["volume"].to_numpy()[order].astype(np.float64)
    # Contiguous slices per symbol: views, so TA-Lib reads the arrays without copies.
    bounds = np.append(np.flatnonzero(np.diff(codes[order], prepend=-1)), len(order))
    pieces = [
        _symbol_indicators(high[a:b], low[a:b], close[a:b], volume[a:b])
        for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    ]
    out = [np.concatenate(column) for column in zip(*pieces, strict=True)] if pieces else []
    out = out or [np.empty(0)] * len(INDICATOR_COLUMNS)
    return history.select("symbol", "trade_date")[order].with_columns(
        pl.Series(name, values, nan_to_null=True)
        for name, values in zip(INDICATOR_COLUMNS, out, strict=True)
    )


def _record_refreshed(
    context: dg.AssetExecutionContext, later: list[dt.date], first: dt.date
) -> None:
    """A materialization for each later session rewritten because its history changed, so the UI,
    freshness and the assets downstream (the warehouse) see those partitions as updated."""
    for day in later:
        context.log_event(
            dg.AssetMaterialization(
                asset_key=context.asset_key,
                partition=day.isoformat(),
                metadata={"refreshed_because_prices_changed_from": first.isoformat()},
            )
        )


def indicators_asset(market: str) -> dg.AssetsDefinition:
    prices_key = dg.AssetKey([market, "daily_prices"])

    @dg.asset(
        key=[market, "indicators"],
        deps=[prices_key],
        partitions_def=partitions_def(market),
        backfill_policy=dg.BackfillPolicy.single_run(),
        # Follows every session whose prices were updated, once their blocking checks passed.
        automation_condition=after_checked_inputs(),
        group_name=market,
        kinds={"polars", "talib", "parquet"},
    )
    def indicators(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
        """SMA(20), EMA(20), RSI(14), MACD(12,26,9), Bollinger(20,2), ATR(14) and OBV per symbol,
        TA-Lib's values over each symbol's full stored history."""
        sessions = partition_dates(context.partition_keys)
        first = min(sessions)
        # EMA, RSI, MACD, ATR and OBV carry every earlier bar forward: new prices for a session
        # change the stored indicators of every later session, so those are refreshed too.
        later = sorted(d for d in lake.existing_days("indicators", market) if d > max(sessions))
        last = later[-1] if later else max(sessions)
        history = lake.read_partitions(
            "daily_prices", market, DAILY_PRICES, last=last, columns=HISTORY_COLUMNS
        )
        values = compute_indicators(history).filter(pl.col("trade_date").is_between(first, last))
        # Replaces exactly the partitions of this run and the later ones refreshed, all published
        # together (no blocking checks to wait for).
        lake.publish(
            lake.stage(
                context.run_id,
                "indicators",
                market,
                values.select(INDICATORS.names()),
                None,
                [*sessions, *later],
            )
        )
        _record_refreshed(context, later, first)
        in_run = values.filter(pl.col("trade_date").is_between(first, max(sessions)))
        return dg.MaterializeResult(
            metadata={
                **session_metadata(
                    context,
                    sessions,
                    counts={"rows": in_run},
                    uri=lake.uri(lake.market_dir("indicators", market)),
                    shown=in_run.drop_nulls().tail(10),
                ),
                "later_sessions_refreshed": len(later),
                "history_rows_read": len(history),
            }
        )

    return indicators
