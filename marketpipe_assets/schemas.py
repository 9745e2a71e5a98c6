"""Column names and types of each dataset (CONTRACT section 3), in one place."""

from __future__ import annotations

import polars as pl

UNIVERSE = pl.Schema(
    {
        "symbol": pl.String,
        "name": pl.String,
        "listing_date": pl.Date,
        "delisting_date": pl.Date,
    }
)

PRICE_COLUMNS = ("open", "high", "low", "close")

DAILY_PRICES = pl.Schema(
    {
        "symbol": pl.String,
        "trade_date": pl.Date,
        **{c: pl.Float64 for c in PRICE_COLUMNS},
        "volume": pl.Int64,
        "source": pl.String,
    }
)

# CONTRACT section 5 columns, plus `trade_date`: the session the bar belongs to (its partition).
INTRADAY_BARS = pl.Schema(
    {
        "symbol": pl.String,
        "bar_start": pl.Datetime("us", "UTC"),
        **{c: pl.Float64 for c in PRICE_COLUMNS},
        "volume": pl.Int64,
        "trade_date": pl.Date,
    }
)
INTRADAY_BAR_MINUTES = 15

# CONTRACT section 5 columns, plus `trade_date` (the session, as for intraday bars). An empty
# level has null prices and zero sizes.
ORDER_BOOK_LEVELS = 10
ORDER_BOOK_SNAPSHOTS = pl.Schema(
    {
        "symbol": pl.String,
        "snapshot_ts": pl.Datetime("us", "UTC"),
        "level": pl.Int64,  # 1 (best) .. 10
        "bid_price": pl.Float64,
        "ask_price": pl.Float64,
        "bid_size": pl.Int64,
        "ask_size": pl.Int64,
        "trade_date": pl.Date,
    }
)
# Derived per row (marketpipe_assets/order_books.py): the snapshot's best-level mid, spread and
# spread in percent of mid, the depth summed from level 1 to this level on each side, and the
# imbalance of that depth, (bid - ask) / (bid + ask), in [-1, 1].
ORDER_BOOKS = pl.Schema(
    {
        **ORDER_BOOK_SNAPSHOTS,
        **{c: pl.Float64 for c in ("mid", "spread", "spread_pct")},
        "cum_bid_size": pl.Int64,
        "cum_ask_size": pl.Int64,
        "imbalance": pl.Float64,
    }
)

INDICATOR_COLUMNS = (
    "sma_20",
    "ema_20",
    "rsi_14",
    "macd",
    "macd_signal",
    "macd_hist",
    "bb_upper",
    "bb_middle",
    "bb_lower",
    "atr_14",
    "obv",
)

INDICATORS = pl.Schema(
    {"symbol": pl.String, "trade_date": pl.Date, **{c: pl.Float64 for c in INDICATOR_COLUMNS}}
)


# What a vendor (or the synthetic source) serves per contract; OPTION_CHAINS adds the derived.
OPTION_CHAIN_VENDOR = pl.Schema(
    {
        "quote_date": pl.Date,
        "underlying": pl.String,
        "contract_symbol": pl.String,
        "expiration": pl.Date,
        "strike": pl.Float64,
        "option_type": pl.String,  # call | put
        "bid": pl.Float64,
        "ask": pl.Float64,
        "last_price": pl.Float64,
        "volume": pl.Int64,  # null when the vendor omits it
        "open_interest": pl.Int64,
        "implied_volatility": pl.Float64,  # a fraction
        "underlying_price": pl.Float64,
    }
)
OPTION_CHAINS = pl.Schema(
    {
        **OPTION_CHAIN_VENDOR,
        # Derived (marketpipe_assets/greeks.py): theta per calendar day, vega per vol point.
        **{c: pl.Float64 for c in ("mid", "spread", "days_to_expiry", "moneyness")},
        **{c: pl.Float64 for c in ("delta", "gamma", "theta", "vega")},
    }
)

# CONTRACT section 5, plus `trade_id`: the trade's identity (the provider's id, or a hash of its
# fields and its position in the stream), which makes every flush and replay idempotent.
TRADES = pl.Schema(
    {
        "symbol": pl.String,
        "ts": pl.Datetime("ms", "UTC"),
        "price": pl.Float64,
        "size": pl.Float64,
        "source": pl.String,
        "trade_id": pl.String,
    }
)

TRADE_AGGREGATES = pl.Schema(
    {
        "symbol": pl.String,
        "hour_start": pl.Datetime("ms", "UTC"),
        "trades": pl.Int64,
        "volume": pl.Float64,
        "vwap": pl.Float64,
    }
)


def quarantine_schema(schema: pl.Schema) -> pl.Schema:
    return pl.Schema({**schema, "violations": pl.List(pl.String)})


def conform(frame: pl.DataFrame, schema: pl.Schema, *, what: str) -> pl.DataFrame:
    """Select and cast the schema's columns; a missing column is an error naming it."""
    missing = [c for c in schema if c not in frame.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {missing}; expected {list(schema)}")
    return frame.select(pl.col(c).cast(t, strict=False) for c, t in schema.items())
