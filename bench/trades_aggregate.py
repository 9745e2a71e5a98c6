"""Aggregation of one US session of 10 million trades (synthetic) into hourly and per-minute
aggregates: marketpipe's `<market>/trade_aggregates` data work against a bare polars group_by.

Generation (not timed): `trades` trades of 500 symbols spread uniformly over the latest past
XNYS session, sorted by time and cut into the micro-batch files the collector's flusher writes
every FLUSH_SECONDS (`trades/market=us/date=<D>/batch-<first>-<last>.parquet`, ~4,700 files).

marketpipe: `build_hours` over the session's hours, as the asset's single-run backfill of the
session does it: list the batches, read them (row groups outside the hours skipped), drop exact
duplicates, the trade rules (the collector's ingest rules plus unique trade_id), per-minute and
hourly aggregates, four atomic writes per hour (minutes, hours, quarantine, sources), read back;
then the two checks' results (rules, reconcile). Also timed: the same hours as the sensor runs
them, one run per hour, each reading the session's folder.

Bare polars: `read_parquet` of the same files, one group_by per minute and one per hour,
`write_parquet` of both. It must find the same per-symbol hourly trades and volume (status FAIL
otherwise).

Both sides run `repeat` times, alternating; the best of each is the figure.
`python -m bench.trades_aggregate [--trades N] [--repeat R]` prints the figures as JSON.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from checks.markets import session_bounds
from checks.schemas import TRADES
from checks.trade_checks import reconcile_result, trade_rules_result
from marketpipe_assets.trade_aggregates import build_hours
from marketpipe_assets.trade_hours import session_hours
from resources.lake import LakeResource

from .common import Stages, past_keys, row

TRADES_PER_SESSION = 10_000_000
SYMBOLS = 500
FLUSH_SECONDS = 5
SEED = 0


def generate(trades: int, session: dt.date, seed: int = SEED) -> pl.DataFrame:
    """`trades` valid trades of one session, in time order (TRADES columns)."""
    rng = np.random.default_rng(seed)
    opens, closes = session_bounds("us", session)
    start_ms, span_ms = int(opens.timestamp() * 1000), int((closes - opens).total_seconds() * 1000)
    symbol = rng.integers(0, SYMBOLS, trades)
    base = 20 + 480 * np.random.default_rng(seed + 1).random(SYMBOLS)
    frame = pl.DataFrame(
        {
            "symbol": pl.Series(symbol).cast(pl.String).str.zfill(4),
            "ts": np.sort(start_ms + rng.integers(0, span_ms, trades)),
            "price": np.round(base[symbol] * (1 + 0.01 * rng.standard_normal(trades)), 2),
            "size": rng.integers(1, 500, trades).astype(np.float64),
        }
    )
    return frame.with_columns(
        pl.concat_str(pl.lit("S"), pl.col("symbol")).alias("symbol"),  # S0000..S0499
        pl.col("ts").cast(pl.Datetime("ms", "UTC")),
        source=pl.lit("synthetic"),
        trade_id=pl.concat_str(pl.lit("t"), pl.int_range(pl.len()).cast(pl.String)),
    ).select(list(TRADES))


def write_batches(lake: LakeResource, trades: pl.DataFrame, session: dt.date) -> list[str]:
    """The flusher's files: one per FLUSH_SECONDS of trades, named by their row numbers."""
    slot = (pl.col("ts").dt.epoch("s") // FLUSH_SECONDS).alias("_slot")
    numbered = trades.with_row_index("_row", offset=1).with_columns(slot)
    paths = []
    for part in numbered.partition_by("_slot", maintain_order=True):
        first, last = part["_row"][0], part["_row"][-1]
        relative = f"trades/market=us/date={session}/batch-{first}-{last}.parquet"
        paths.append(lake.write_file(relative, part.select(list(TRADES))))
    return paths


def marketpipe_pass(
    lake: LakeResource, hours: list[dt.datetime], stages: Stages
) -> tuple[dict, pl.DataFrame]:
    built = build_hours(lake, "us", hours, dt.datetime.now(dt.UTC), stage=stages)
    with stages("checks"):
        checks = [
            trade_rules_result(built.validated, built.duplicates_dropped),
            reconcile_result(built.validated.clean, built.hourly, built.minutes),
        ]
    with stages("publish"):  # the asset publishes once the blocking check passes
        lake.publish(built.batch)
    return {c.check_name: c.passed for c in checks}, built.hourly


def bare_pass(paths: list[str], out: Path) -> pl.DataFrame:
    trades = pl.read_parquet(paths)
    minutes = trades.group_by("symbol", minute=pl.col("ts").dt.truncate("1m")).agg(
        trades=pl.len(),
        volume=pl.col("size").sum(),
        vwap=(pl.col("price") * pl.col("size")).sum() / pl.col("size").sum(),
    )
    hours = trades.group_by("symbol", hour=pl.col("ts").dt.truncate("1h")).agg(
        trades=pl.len(),
        volume=pl.col("size").sum(),
        vwap=(pl.col("price") * pl.col("size")).sum() / pl.col("size").sum(),
    )
    minutes.write_parquet(out / "minutes.parquet")
    hours.write_parquet(out / "hours.parquet")
    return hours


def _same(ours: pl.DataFrame, bare: pl.DataFrame) -> bool:
    a = ours.select("symbol", hour="hour_start", trades="trades", volume="volume")
    b = bare.select("symbol", "hour", pl.col("trades").cast(pl.Int64), "volume")
    return a.sort("hour", "symbol").equals(b.sort("hour", "symbol"))


def run(trades: int = TRADES_PER_SESSION, repeat: int = 3) -> dict:
    session = dt.date.fromisoformat(past_keys("us", 1)[0])
    day = dt.datetime.combine(session, dt.time(), dt.UTC)
    hours = session_hours("us", day, day + dt.timedelta(1))
    with tempfile.TemporaryDirectory(prefix="bench-trades-") as tmp:
        lake = LakeResource(url=str(Path(tmp, "lake")))
        started = time.perf_counter()
        frame = generate(trades, session)
        paths = write_batches(lake, frame, session)
        generation = time.perf_counter() - started
        del frame

        ours_all, per_hour_all, bare_all, best_stages = [], [], [], None
        for _ in range(repeat):
            stages = Stages()
            checks, ours = marketpipe_pass(lake, hours, stages)
            ours_all.append(stages.total)
            if best_stages is None or stages.total < best_stages.total:
                best_stages = stages
            started = time.perf_counter()
            bare = bare_pass(paths, Path(tmp))
            bare_all.append(time.perf_counter() - started)
        for _ in range(max(1, repeat - 1)):  # the sensor's way: one run per closed hour
            started = time.perf_counter()
            for hour in hours:
                marketpipe_pass(lake, [hour], Stages())
            per_hour_all.append(time.perf_counter() - started)
        written = sum(f.stat().st_size for f in Path(tmp, "lake").rglob("hour=*/*.parquet"))

    best, bare_best, per_hour = min(ours_all), min(bare_all), min(per_hour_all)
    same = _same(ours, bare)
    return row(
        f"i. trade aggregation, {trades:,} trades, one session",
        "report (issue 6: time and ratio to a bare polars group_by)",
        f"marketpipe {best:.2f} s vs bare polars {bare_best:.2f} s",
        best / bare_best,
        "PASS" if same and all(checks.values()) else "FAIL",
        ratio_meaning="marketpipe (list + read batches + dedupe + trade rules + minute and hour "
        "aggregates + atomic writes + read back + checks) / bare polars (read_parquet + two "
        "group_bys + write_parquet)",
        trades=trades,
        symbols=SYMBOLS,
        batch_files=len(paths),
        hours=len(hours),
        generation_seconds=round(generation, 2),
        marketpipe_seconds=round(best, 3),
        marketpipe_stages=best_stages.rounded(),  # of the best run
        marketpipe_trades_per_second=round(trades / best),
        marketpipe_one_run_per_hour_seconds=round(per_hour, 3),
        bare_polars_seconds=round(bare_best, 3),
        marketpipe_runs=[round(t, 3) for t in ours_all],
        marketpipe_one_run_per_hour_runs=[round(t, 3) for t in per_hour_all],
        bare_polars_runs=[round(t, 3) for t in bare_all],
        same_hourly_totals=same,
        checks=checks,
        aggregate_bytes=written,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trades", type=int, default=TRADES_PER_SESSION)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(run(args.trades, args.repeat), default=str))


if __name__ == "__main__":
    main()
