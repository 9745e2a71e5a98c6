"""(c) The polars rulebook against the Great Expectations suite on the same frame.

The frame is synthetic with a raised bad-row rate, so that every rule has violations; both
engines must report the same count per rule. checks.ge_suite is imported lazily.
"""

from __future__ import annotations

import importlib
import json
import time

import polars as pl

from checks.markets import partition_dates
from checks.rulebook import validate
from checks.schemas import RAW
from marketpipe_assets.prices import standardise
from resources.sources.synthetic import SyntheticSource

from .common import best_of, row

BAD_ROW_RATE = 0.02


# One row in this many gets each defect the synthetic generator does not make but providers
# and landing files send: an infinite price, a blank symbol, a value that did not parse.
HOSTILE_EVERY = 997
UNREAD = ("trade_date", "open", "high", "low", "close", "volume")


def frame(market: str, symbols: int, keys: list[str]) -> pl.DataFrame:
    source = SyntheticSource(symbols=symbols, bad_row_rate=BAD_ROW_RATE)
    universe = source.universe(market)
    raw = source.daily_bars(market, partition_dates(keys), universe["symbol"].to_list())
    return with_hostile_values(standardise(raw))


def with_hostile_values(data: pl.DataFrame) -> pl.DataFrame:
    """`data` with the defects above, as standardise leaves them: inf as sent, the symbol
    blank, an unread value null with its text in `raw`."""
    slot = pl.int_range(pl.len()) % HOSTILE_EVERY
    unread = {field: slot == 3 + i for i, field in enumerate(UNREAD)}
    raw = pl.coalesce(
        *(pl.when(hit).then(pl.lit(json.dumps({field: "abc"}))) for field, hit in unread.items()),
        pl.col(RAW),
    )
    return data.with_columns(
        *(pl.when(hit).then(None).otherwise(pl.col(f)).alias(f) for f, hit in unread.items()),
        raw.alias(RAW),
    ).with_columns(
        pl.when(slot == 1).then(float("inf")).otherwise(pl.col("open")).alias("open"),
        pl.when(slot == 2).then(pl.lit("  ")).otherwise(pl.col("symbol")).alias("symbol"),
    )


def run(data: pl.DataFrame, repeat: int = 2) -> dict:
    name = f"c. rules {len(data):,} rows: polars vs GE"
    try:
        started = time.perf_counter()
        ge_suite = importlib.import_module("checks.ge_suite")
        import_seconds = time.perf_counter() - started
    except ModuleNotFoundError as exc:
        return row(name, "same counts", f"GE suite unavailable: {exc}", None, "N/A")
    ours, ours_all, validated = best_of(lambda: validate(data), repeat)
    theirs, theirs_all, ge_counts = best_of(lambda: ge_suite.ge_violation_counts(data), repeat)
    polars_counts = validated.violation_counts
    ge_counts = {k: int(v) for k, v in dict(ge_counts).items()}
    same = ge_counts == polars_counts
    every_rule = all(polars_counts.values())
    return row(
        name,
        "same counts, every rule hit",
        f"polars {ours:.2f} s vs GE {theirs:.2f} s",
        ours / theirs,
        "PASS" if same and every_rule else "FAIL",
        ratio_meaning="polars time / GE time",
        polars_seconds=ours_all,
        ge_seconds=theirs_all,
        ge_import_seconds=round(import_seconds, 2),
        polars_counts=polars_counts,
        ge_counts=ge_counts,
    )
