"""(c) The polars rulebook against the Great Expectations suite on the same frame.

The frame is synthetic with a raised bad-row rate, so that every rule has violations; both
engines must report the same count per rule. checks.ge_suite is imported lazily.
"""

from __future__ import annotations

import importlib
import time

import polars as pl

from checks.markets import partition_dates
from checks.rulebook import validate
from marketpipe_assets.prices import standardise
from resources.sources.synthetic import SyntheticSource

from .common import best_of, row

BAD_ROW_RATE = 0.02


def frame(market: str, symbols: int, keys: list[str]) -> pl.DataFrame:
    source = SyntheticSource(symbols=symbols, bad_row_rate=BAD_ROW_RATE)
    universe = source.universe(market)
    raw = source.daily_bars(market, partition_dates(keys), universe["symbol"].to_list())
    return standardise(raw)


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
