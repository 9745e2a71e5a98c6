"""Reading the trades lake: the collector's batch files of a day, which hours a file spans,
the trades of some hours, and the hours already aggregated (with their sources)."""

import datetime as dt
import re
from dataclasses import dataclass

import polars as pl
import pyarrow.parquet as pq

from checks.schemas import TRADES
from resources.lake import PART_FILE, LakeResource, from_arrow_table
from resources.publishing import Batch

from .trade_hours import AGGREGATE_SOURCES, HOUR, SOURCES_DATASET, TRADES_DATASET

_BATCH_NAME = re.compile(r"batch-(\d+)-(\d+)\.parquet$")


@dataclass(frozen=True)
class BatchFile:
    day: dt.date
    batch: int  # the last spool rowid in the batch: later flushes have higher ids
    path: str


def batch_files(lake: LakeResource, market: str, days: list[dt.date]) -> list[BatchFile]:
    files = []
    for day in days:
        folder = f"{lake.market_dir(TRADES_DATASET, market)}/date={day.isoformat()}"
        for path in sorted(lake.fs.glob(f"{folder}/*.parquet")):
            match = _BATCH_NAME.search(path)
            if match is None:
                raise ValueError(
                    f"{path}: not a trades batch file; the collector writes "
                    "batch-<first_spool_rowid>-<last_spool_rowid>.parquet"
                )
            files.append(BatchFile(day, int(match.group(2)), path))
    return files


def file_span(lake: LakeResource, path: str) -> tuple[dt.datetime, dt.datetime] | None:
    """First and last trade time of a batch from its parquet statistics (footer only); None
    when a row group has none, meaning "could be any time"."""
    meta = pq.read_metadata(path, filesystem=lake.fs)
    column = meta.schema.names.index("ts")
    lows, highs = [], []
    for group in range(meta.num_row_groups):
        stats = meta.row_group(group).column(column).statistics
        if meta.row_group(group).num_rows == 0:
            continue
        if stats is None or not stats.has_min_max:
            return None
        lows.append(stats.min)
        highs.append(stats.max)
    return (min(lows), max(highs)) if lows else None


def touches(span: tuple[dt.datetime, dt.datetime] | None, start: dt.datetime, end: dt.datetime):
    return span is None or (span[0] < end and span[1] >= start)


def read_trades(
    lake: LakeResource, paths: list[str], start: dt.datetime, end: dt.datetime
) -> pl.DataFrame:
    """Trades with start <= ts < end from the given batch files (row groups outside skipped)."""
    if not paths:
        return pl.DataFrame(schema=TRADES)
    columns = list(TRADES)
    if lake.is_local:
        in_range = (pl.col("ts") >= start) & (pl.col("ts") < end)
        frame = pl.scan_parquet(paths).select(columns).filter(in_range).collect()
    else:
        bounds = [("ts", ">=", start), ("ts", "<", end)]
        table = pq.read_table(paths, columns=columns, filters=bounds, filesystem=lake.fs)
        frame = from_arrow_table(table)
    return frame.cast(TRADES)


def hour_path(dataset: str, market: str, hour: dt.datetime) -> str:
    return f"{dataset}/market={market}/date={hour:%Y-%m-%d}/hour={hour:%H}/{PART_FILE}"


def read_hours(
    lake: LakeResource,
    dataset: str,
    market: str,
    hours: list[dt.datetime],
    schema: pl.Schema,
    *,
    batch: Batch | None = None,
) -> pl.DataFrame:
    """Published hours, or with `batch` those it staged."""
    frames = [lake.read_files(hour_path(dataset, market, h), schema, batch=batch) for h in hours]
    return pl.concat(frames) if frames else pl.DataFrame(schema=schema)


def complete_hours(lake: LakeResource, market: str, hours: list[dt.datetime]) -> set[dt.datetime]:
    """The hours whose stored aggregates include every trade now in the lake: aggregated, and
    no batch flushed since (higher id than recorded) holds a trade of that hour."""
    sources = read_hours(lake, SOURCES_DATASET, market, hours, AGGREGATE_SOURCES)
    if sources.is_empty():
        return set()
    recorded = {
        (h, d): b for h, d, b in sources.select("hour_start", "trades_date", "max_batch").rows()
    }
    aggregated = sorted(set(sources["hour_start"]))
    days = sorted({d for _, d in recorded})
    files = batch_files(lake, market, days)
    spans: dict[str, tuple | None] = {}
    complete = set()
    for hour in aggregated:
        newer = [
            f for f in files if (hour, f.day) in recorded and f.batch > recorded[(hour, f.day)]
        ]
        for f in newer:
            if f.path not in spans:
                spans[f.path] = file_span(lake, f.path)
        if not any(touches(spans[f.path], hour, hour + HOUR) for f in newer):
            complete.add(hour)
    return complete


# Aggregation (pure polars) ---------------------------------------------------------------------
