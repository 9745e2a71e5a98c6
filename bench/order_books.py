"""(f) One session of 10-level snapshots, every minute, for 2,500 symbols: validating and
storing them the way `<market>/order_books` does, against a bare polars pass over the same rows.

marketpipe's path: validate_order_books (eight rules, each snapshot quarantined whole),
with_derived (mid, spread, depth, imbalance), and the lake's atomic partition and quarantine
writes. The bare pass: sort by (symbol, snapshot_ts, level), the row-level rules as one filter
(no per-snapshot widening, no quarantine), the same derived columns, one write_parquet: what the
same outcome costs with no platform around it. Generation is timed apart and not counted.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import polars as pl

from .common import Stages, past_keys

KEY = ("symbol", "snapshot_ts")


def bare_polars(frame: pl.DataFrame, path: Path) -> int:
    """The floor: the same data sorted, row rules filtered, derived and written once."""
    bid, ask = pl.col("bid_price"), pl.col("ask_price")
    bad_row = (
        ((pl.col("level") == 1) & (bid >= ask)).fill_null(False)
        | (pl.col("bid_size") < 0)
        | (pl.col("ask_size") < 0)
        | (bid <= 0).fill_null(False)
        | (ask <= 0).fill_null(False)
    )
    first = pl.col("level") == 1
    clean = (
        frame.sort(*KEY, "level")
        .filter(~bad_row)
        .with_columns(
            mid=((bid + ask) / 2).filter(first).first().over(KEY),
            cum_bid_size=pl.col("bid_size").cum_sum().over(KEY),
            cum_ask_size=pl.col("ask_size").cum_sum().over(KEY),
        )
    )
    clean.write_parquet(path, compression="zstd", statistics=True)
    return len(clean)


def run(symbols: int = 2500, market: str = "us", interval: int = 1) -> dict:
    from checks.markets import partition_dates
    from checks.order_book_rules import validate_order_books
    from marketpipe_assets.ingest import stage_sessions
    from marketpipe_assets.order_books import DATASET, with_derived
    from resources.lake import LakeResource
    from resources.sources.synthetic import SyntheticSource

    day = partition_dates(past_keys(market, 1))[0]
    source = SyntheticSource(symbols=symbols, missing_rate=0.01, bad_row_rate=0.002)
    names = source.universe(market, today=day)["symbol"].to_list()
    started = time.perf_counter()
    frame = source.order_book_history(market, [day], names, interval).rechunk()
    generation = time.perf_counter() - started

    stages = Stages()
    with tempfile.TemporaryDirectory() as scratch:
        lake = LakeResource(url=str(Path(scratch) / "lake"))
        with stages("validate"):
            validated = validate_order_books(frame, market, [day])
        with stages("derive"):
            stored = with_derived(validated.clean)
        with stages("write"):
            staged = stage_sessions(
                lake,
                "bench",
                DATASET,
                market,
                [day],
                sent=len(frame),
                stored=stored,
                quarantined=validated.quarantined,
            )
            lake.publish(staged.batch)
        started = time.perf_counter()
        bare_rows = bare_polars(frame, Path(scratch) / "bare.parquet")
        bare = time.perf_counter() - started
    return {
        "market": market,
        "session": day.isoformat(),
        "symbols": len(names),
        "interval_minutes": interval,
        "rows": len(frame),
        "snapshots": len(frame) // 10,
        "stored_rows": len(stored),
        "quarantined_rows": len(validated.quarantined),
        "bare_rows": bare_rows,
        "generation_s": round(generation, 3),
        "marketpipe_s": round(stages.total, 3),
        "stages_s": stages.rounded(),
        "bare_polars_s": round(bare, 3),
        "ratio_to_bare": round(stages.total / bare, 3),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--symbols", type=int, default=2500)
    parser.add_argument("--market", default="us", choices=["krx", "us"])
    args = parser.parse_args()
    print(json.dumps(run(args.symbols, args.market)))
