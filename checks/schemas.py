"""Column names and types of each dataset (CONTRACT section 3), in one place."""

from __future__ import annotations

import json
from collections.abc import Mapping

import polars as pl
from polars.datatypes import DataTypeClass


def make_schema(columns: Mapping[str, pl.DataType | DataTypeClass]) -> pl.Schema:
    """pl.Schema(columns). Against pl.Schema's own argument type (a union of mappings,
    iterables and Arrow schemas) mypy reads a dict that mixes dtype classes (pl.String) and
    instances (pl.Datetime("us", "UTC")) as dict[str, object]; this one type checks each column."""
    return pl.Schema(columns)


UNIVERSE = make_schema(
    {
        "symbol": pl.String,
        "name": pl.String,
        "listing_date": pl.Date,
        "delisting_date": pl.Date,
    }
)

PRICE_COLUMNS = ("open", "high", "low", "close")

DAILY_PRICES = make_schema(
    {
        "symbol": pl.String,
        "trade_date": pl.Date,
        **{c: pl.Float64 for c in PRICE_COLUMNS},
        "volume": pl.Int64,
        "source": pl.String,
    }
)

# CONTRACT section 5 columns, plus `trade_date`: the session the bar belongs to (its partition).
INTRADAY_BARS = make_schema(
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
ORDER_BOOK_SNAPSHOTS = make_schema(
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
ORDER_BOOKS = make_schema(
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

INDICATORS = make_schema(
    {"symbol": pl.String, "trade_date": pl.Date, **{c: pl.Float64 for c in INDICATOR_COLUMNS}}
)


# What a vendor (or the synthetic source) serves per contract; OPTION_CHAINS adds the derived.
OPTION_CHAIN_VENDOR = make_schema(
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
OPTION_CHAINS = make_schema(
    {
        **OPTION_CHAIN_VENDOR,
        # Derived (checks/greeks.py): theta per calendar day, vega per vol point.
        **{c: pl.Float64 for c in ("mid", "spread", "days_to_expiry", "moneyness")},
        **{c: pl.Float64 for c in ("delta", "gamma", "theta", "vega")},
    }
)

# CONTRACT section 5, plus `trade_id`: the trade's identity (the provider's id, or a hash of its
# fields and its position in the stream), which makes every flush and replay idempotent.
TRADES = make_schema(
    {
        "symbol": pl.String,
        "ts": pl.Datetime("ms", "UTC"),
        "price": pl.Float64,
        "size": pl.Float64,
        "source": pl.String,
        "trade_id": pl.String,
    }
)

TRADE_AGGREGATES = make_schema(
    {
        "symbol": pl.String,
        "hour_start": pl.Datetime("ms", "UTC"),
        "trades": pl.Int64,
        "volume": pl.Float64,
        "vwap": pl.Float64,
    }
)


# Evidence of what a source sent: a JSON object of the fields of a row whose value could not be
# read as its type, with the text as sent (`{"volume": "1.5"}`); null when every field parsed.
# It travels with the row into the quarantine, whose typed column for that field is null.
RAW = "raw"
# The quarantine's partition column: the run session a rejected row is filed under, which is
# its own date unless that date is empty or not one of the run's sessions (markets.filed_under).
FILED_UNDER = "filed_under"
# Above this a float no longer holds every integer exactly, so it cannot be read as a count.
_EXACT_FLOAT_INTEGER = 2.0**53


def quarantine_schema(schema: pl.Schema) -> pl.Schema:
    """The columns every quarantine file has. Files also carry `raw` (and daily datasets
    `filed_under`); readers that want that evidence ask for it, so files written before it
    existed stay readable."""
    return make_schema({**schema, "violations": pl.List(pl.String)})


def _read_as(
    name: str, source: pl.DataType, target: pl.DataType, *, nan_is_unread: bool
) -> tuple[pl.Expr, pl.Expr]:
    """The column read as `target`, and True where a value was sent but could not be read
    (the typed value is then null, never a guess: 1.5 is not rounded into a count). NaN becomes
    null, "no number" to every engine downstream; `nan_is_unread` counts it as unread too (a
    source sent it), otherwise it is a derived value's "undefined"."""
    col = pl.col(name)
    if source == target:  # the usual case, kept cheap: only a float's NaN can be unread
        if not target.is_float():
            return col, pl.lit(False)
        return col.fill_nan(None), col.is_nan().fill_null(False) & nan_is_unread
    if source == pl.String and target == pl.Date:
        typed = col.str.strip_chars().str.to_date("%Y-%m-%d", strict=False)
    elif source == pl.String and isinstance(target, pl.Datetime):
        typed = col.str.strip_chars().str.to_datetime(strict=False, time_zone=target.time_zone)
    elif source == pl.String and target.is_numeric():
        text = col.str.strip_chars()
        typed = text.cast(target, strict=False)
        if target.is_integer():
            # "1000.0" is a count written by a float-minded tool; "1.5" is not one.
            typed = typed.fill_null(_integral(text.cast(pl.Float64, strict=False), target))
    elif source.is_float() and target.is_integer():
        typed = _integral(col, target)
    else:
        typed = col.cast(target, strict=False)
    # Blank text is a missing value (required_fields' business), not a malformed one.
    sent = col.is_not_null()
    if source == pl.String and target != pl.String:
        sent = sent & (col.str.strip_chars() != "")
    unread = sent & typed.is_null()
    if target.is_float():
        if nan_is_unread:
            unread = unread | typed.is_nan().fill_null(False)
        typed = pl.when(typed.is_nan()).then(None).otherwise(typed)
    return typed.alias(name), unread


def _integral(values: pl.Expr, target: pl.DataType) -> pl.Expr:
    exact = (values == values.round(0)) & (values.abs() <= _EXACT_FLOAT_INTEGER)
    return pl.when(exact).then(values).cast(target, strict=False)


def conform(
    frame: pl.DataFrame, schema: pl.Schema, *, what: str, evidence: bool = False
) -> pl.DataFrame:
    """The schema's columns read as its types; a missing column is an error naming it.

    A value that cannot be read as its column's type (`abc` or `1.5` for a volume, `1e20`
    beyond int64, `2026-13-45`, NaN) becomes null. With `evidence`, its text as sent goes into
    the `raw` column (merged with a `raw` the frame already has) for validation's
    `unparseable:<field>` rules to quarantine; without, it is an error naming the field and
    the value.
    """
    missing = [c for c in schema if c not in frame.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {missing}; expected {list(schema)}")
    read = {c: _read_as(c, frame.schema[c], t, nan_is_unread=evidence) for c, t in schema.items()}
    try:
        typed = frame.select(
            *(value for value, _ in read.values()),
            *(failed.alias(f"_unread_{c}") for c, (_, failed) in read.items()),
        )
    except pl.exceptions.PolarsError as exc:
        found = {c: str(frame.schema[c]) for c in schema}
        raise ValueError(
            f"{what}: columns of types {found} cannot be read as {dict(schema)} ({exc}); "
            "send the columns with these types or as text"
        ) from exc
    flags = [f"_unread_{c}" for c in schema]
    unread = typed.select(pl.any_horizontal(flags).any()).item()
    texts = _unread_texts(frame, typed, list(schema)) if unread else []
    if not evidence:
        if texts:
            index, fields = texts[0]
            field, value = next(iter(fields.items()))
            raise ValueError(
                f"{what}: row {index + 1}, field {field!r}: {value!r} is not a valid "
                f"{schema[field]} ({len(texts)} row(s) like this); correct the value and retry"
            )
        return typed.select(schema.names())
    return _with_raw(typed.select(schema.names()), frame, texts)


def with_evidence(typed: pl.DataFrame, sent: pl.DataFrame, columns: list[str]) -> pl.DataFrame:
    """`typed` plus `raw`, as conform keeps it, for a provider that reads its own text: the
    text of each of `columns` that `sent` has (not blank) but `typed` has null (it did not
    parse). Both frames row for row; `typed` unchanged when everything parsed."""
    text = sent.select(pl.col(c).cast(pl.String).str.strip_chars().fill_null("") for c in columns)
    flags = pl.DataFrame(
        {f"_unread_{c}": (text[c] != "") & typed[c].is_null() for c in columns},
        schema=dict.fromkeys((f"_unread_{c}" for c in columns), pl.Boolean),
    )
    if not flags.select(pl.any_horizontal(pl.all()).any()).item():
        return typed
    return _with_raw(typed, sent, _unread_texts(sent, flags, columns))


def _with_raw(
    typed: pl.DataFrame, sent: pl.DataFrame, texts: list[tuple[int, dict[str, str]]]
) -> pl.DataFrame:
    """`typed` with the `raw` column: `sent`'s own raw, merged with `texts`."""
    if RAW not in sent.columns and not texts:
        return typed.with_columns(pl.lit(None, pl.String).alias(RAW))
    raw = (
        sent[RAW]
        if RAW in sent.columns
        else pl.repeat(None, len(sent), dtype=pl.String, eager=True)
    )
    if texts:
        merged = [{**_json_object(raw[i]), **fields} for i, fields in texts]
        values = pl.Series([json.dumps(m, sort_keys=True) for m in merged], dtype=pl.String)
        raw = raw.cast(pl.String).scatter([i for i, _ in texts], values)
    return typed.with_columns(raw.cast(pl.String).alias(RAW))


def _unread_texts(
    frame: pl.DataFrame, typed: pl.DataFrame, columns: list[str]
) -> list[tuple[int, dict[str, str]]]:
    """(row index, {field: text as sent}) of each row with a value that could not be read."""
    marked = (
        frame.select(columns)
        .with_row_index("_row")
        .with_columns(typed.select(f"_unread_{c}" for c in columns))
    )
    marked = marked.filter(pl.any_horizontal(f"_unread_{c}" for c in columns))
    texts = marked.select(
        "_row",
        *(
            pl.when(pl.col(f"_unread_{c}")).then(pl.col(c).cast(pl.String)).alias(c)
            for c in columns
        ),
    )
    return [
        (row.pop("_row"), {c: v for c, v in row.items() if v is not None})
        for row in texts.iter_rows(named=True)
    ]


def _json_object(text: str | None) -> dict:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {"raw": text}
    return value if isinstance(value, dict) else {"raw": value}
