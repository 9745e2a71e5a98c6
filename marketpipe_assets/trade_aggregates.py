"""`<market>/trade_aggregates`: per hour and symbol the trades, volume and VWAP, plus per-minute
statistics, built from the collector's trade batches in the lake; and the sensor that requests
an hour once it has closed plus a grace period, and again when late trades land in it.

Lake layout (one file per hour and dataset; a run's files are published together once its
blocking check passes, see resources/publishing.py):
  trade_minutes/market=<m>/date=<UTC day>/hour=<HH>/part-0.parquet      TRADE_MINUTES
  trade_aggregates/market=<m>/date=<UTC day>/hour=<HH>/part-0.parquet   TRADE_AGGREGATES
  trade_aggregate_sources/market=<m>/date=<UTC day>/hour=<HH>/part-0.parquet
plus quarantine/trade_aggregates/... (same layout) for the trades an hour rejected.
The sources file, moved into place last, records the highest trades batch id of each trades
folder the hour was built from: a batch with a higher id is newer than the aggregate, so readers
(the queries) know whether the stored hour is complete or must be recomputed from raw trades.
"""

import datetime as dt
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import dagster as dg
import polars as pl

from checks.metadata import markdown_table
from checks.rulebook import Validated
from checks.schemas import TRADE_AGGREGATES
from checks.trade_checks import (
    drop_exact_duplicates,
    reconcile_result,
    trade_check_specs,
    trade_rules_result,
    validate_trades,
)
from resources.lake import LakeResource
from resources.publishing import Batch

from .metadata import counts_by_session, path_value, per_session, run_totals
from .publish import publish_if_checks_pass
from .trade_files import BatchFile, batch_files, hour_path, read_hours, read_trades
from .trade_hours import (
    AGGREGATE_SOURCES,
    DATASET,
    HOUR,
    HOUR_KEY_OF_TRADE,
    MINUTES_DATASET,
    QUARANTINE_DATASET,
    SOURCES_DATASET,
    TRADE_MINUTES,
    TRADES_DATASET,
    hour_from_key,
    hour_key,
    hour_partitions,
    trade_days,
)

Stage = Callable[[str], AbstractContextManager]  # as in options.py: the bench's step timer


def minute_stats(trades: pl.DataFrame) -> pl.DataFrame:
    """Per symbol and minute: TRADE_MINUTES plus `notional` (sum of price x size)."""
    price = pl.col("price")
    # In time order, open and close are each group's first and last price (half the cost of
    # arg_min/arg_max lookups); batches read in flush order are sorted but for late trades.
    ordered = trades.lazy() if trades["ts"].is_sorted() else trades.lazy().sort("ts")
    frame = ordered.group_by("symbol", minute_start=pl.col("ts").dt.truncate("1m")).agg(
        trades=pl.len().cast(pl.Int64),
        volume=pl.col("size").sum(),
        notional=(price * pl.col("size")).sum(),
        open=price.first(),
        high=price.max(),
        low=price.min(),
        close=price.last(),
    )
    frame = frame.with_columns(vwap=pl.col("notional") / pl.col("volume"))
    return frame.sort("minute_start", "symbol").collect()


def hourly_stats(minutes: pl.DataFrame) -> pl.DataFrame:
    """Per symbol and hour from the per-minute rows (far fewer than trades): TRADE_AGGREGATES."""
    frame = minutes.group_by("symbol", hour_start=pl.col("minute_start").dt.truncate("1h")).agg(
        trades=pl.col("trades").sum(),
        volume=pl.col("volume").sum(),
        notional=pl.col("notional").sum(),
    )
    frame = frame.with_columns(vwap=pl.col("notional") / pl.col("volume"))
    return frame.select(list(TRADE_AGGREGATES)).sort("hour_start", "symbol")


def aggregate(trades: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(hourly TRADE_AGGREGATES, TRADE_MINUTES) of valid, de-duplicated trades."""
    minutes = minute_stats(trades)
    return hourly_stats(minutes), minutes.select(list(TRADE_MINUTES))


@dataclass
class HoursBuilt:
    validated: Validated
    duplicates_dropped: int
    hourly: pl.DataFrame  # as read back from the staged files
    minutes: pl.DataFrame
    batch_files: int
    batch: Batch  # staged, not yet published


def build_hours(
    lake: LakeResource,
    market: str,
    hours: list[dt.datetime],
    now: dt.datetime,
    stage: Stage = lambda name: nullcontext(),
    *,
    run_id: str = "",
    into: Batch | None = None,
) -> HoursBuilt:
    """Aggregate and stage `hours` (a few, of one day) from the trades batches in the lake, into
    a new batch or `into` (the bench times the steps by `stage`)."""
    start, end = min(hours), max(hours) + HOUR
    with stage("read"):
        # Listed once: the recorded batch ids and the trades read agree while the flusher adds
        # files.
        files = batch_files(lake, market, trade_days(market, start, end))
        raw = read_trades(lake, [f.path for f in files], start, end)
        raw = raw.filter(pl.col("ts").dt.truncate("1h").is_in(hours))
    with stage("validate"):
        deduped = drop_exact_duplicates(raw)
        validated = validate_trades(deduped, market)
    with stage("aggregate"):
        hourly, minutes = aggregate(validated.clean)
    with stage("write"):
        staged, removed = _hour_files(lake, market, hours, hourly, minutes, validated, files, now)
        batch = lake.stage_files(run_id, DATASET, market, staged, removed, into=into)
    with stage("read_back"):
        # The reconcile check judges the files as written, before anything is published.
        return HoursBuilt(
            validated=validated,
            duplicates_dropped=len(raw) - len(deduped),
            hourly=read_hours(lake, DATASET, market, hours, TRADE_AGGREGATES, batch=batch),
            minutes=read_hours(lake, MINUTES_DATASET, market, hours, TRADE_MINUTES, batch=batch),
            batch_files=len(files),
            batch=batch,
        )


def _hour_files(
    lake: LakeResource,
    market: str,
    hours: list[dt.datetime],
    hourly: pl.DataFrame,
    minutes: pl.DataFrame,
    validated: Validated,
    files: list[BatchFile],
    now: dt.datetime,
) -> tuple[dict[str, pl.DataFrame], list[str]]:
    """Per hour: minutes, aggregates, quarantined trades (none: the old file goes) and the
    sources stamp that marks it done; published together, so the stamp never runs ahead."""
    staged: dict[str, pl.DataFrame] = {}
    removed: list[str] = []
    bad = validated.quarantined
    for hour in hours:
        of_hour = pl.col("minute_start").dt.truncate("1h") == hour
        staged[hour_path(MINUTES_DATASET, market, hour)] = minutes.filter(of_hour)
        staged[hour_path(DATASET, market, hour)] = hourly.filter(pl.col("hour_start") == hour)
        quarantine = hour_path(QUARANTINE_DATASET, market, hour)
        rejected = bad.filter(pl.col("ts").dt.truncate("1h") == hour)
        if len(rejected):
            staged[quarantine] = rejected
        elif lake.fs.exists(f"{lake.root}/{quarantine}"):
            removed.append(quarantine)
        staged[hour_path(SOURCES_DATASET, market, hour)] = _sources(market, hour, files, now)
    return staged, removed


def _sources(
    market: str, hour: dt.datetime, files: list[BatchFile], now: dt.datetime
) -> pl.DataFrame:
    rows = []
    for day in trade_days(market, hour, hour + HOUR):
        batches = [f.batch for f in files if f.day == day]
        rows.append((hour, day, max(batches, default=-1), len(batches), now))
    return pl.DataFrame(rows, schema=AGGREGATE_SOURCES, orient="row")


def trade_aggregates_asset(market: str) -> dg.AssetsDefinition:
    key = dg.AssetKey([market, DATASET])

    @dg.asset(
        key=key,
        deps=[dg.AssetKey([market, TRADES_DATASET])],
        partitions_def=hour_partitions(market),
        backfill_policy=dg.BackfillPolicy.single_run(),
        check_specs=trade_check_specs(key),
        group_name=market,
        kinds={"polars", "parquet"},
    )
    def trade_aggregates(context: dg.AssetExecutionContext, lake: LakeResource):
        """Per hour (UTC) and symbol: trades, volume and VWAP of the de-duplicated valid trades,
        with per-minute trades, volume, VWAP and OHLC in `trade_minutes`; invalid trades are
        quarantined under quarantine/trade_aggregates with their rules."""
        hours = sorted(hour_from_key(k) for k in context.partition_keys)
        now = dt.datetime.now(dt.UTC)
        by_day: dict[dt.date, list[dt.datetime]] = {}
        for hour in hours:
            by_day.setdefault(hour.date(), []).append(hour)
        # One UTC day at a time: a range run never holds more than a day of trades.
        built, batch = [], None
        for day_hours in by_day.values():
            built.append(
                build_hours(lake, market, day_hours, now, run_id=context.run_id, into=batch)
            )
            batch = built[-1].batch
        validated = Validated(
            clean=pl.concat([b.validated.clean for b in built]),
            quarantined=pl.concat([b.validated.quarantined for b in built]),
            violation_counts={
                rule: sum(b.validated.violation_counts[rule] for b in built)
                for rule in built[0].validated.violation_counts
            },
        )
        hourly = pl.concat([b.hourly for b in built])
        minutes = pl.concat([b.minutes for b in built])
        duplicates = sum(b.duplicates_dropped for b in built)
        check_results = [
            trade_rules_result(validated, duplicates),
            reconcile_result(validated.clean, hourly, minutes),
        ]
        # Every hour of the run (aggregates, minutes, quarantine, sources) is published together
        # once the blocking reconcile check passes.
        assert batch is not None  # a run has at least one hour, so one day was built
        yield from publish_if_checks_pass(context, lake, batch, check_results)
        yield dg.MaterializeResult(
            metadata={
                **per_session(
                    context,
                    counts_by_session(
                        [hour_key(h) for h in hours],
                        "hour",
                        trades=validated.clean.select(hour=HOUR_KEY_OF_TRADE),
                        quarantined_trades=validated.quarantined.select(hour=HOUR_KEY_OF_TRADE),
                    ),
                    "hour",
                    unit="hours",
                ),
                **run_totals(
                    hours,
                    volume=float(validated.clean["size"].sum()),
                    symbols=hourly["symbol"].n_unique(),
                    batch_files_read=sum(b.batch_files for b in built),
                    # Trades read == stored + quarantined + exact re-flushed copies kept once.
                    sent=len(validated.clean) + len(validated.quarantined) + duplicates,
                    stored=len(validated.clean),
                    quarantined=len(validated.quarantined),
                    duplicates_dropped=duplicates,
                ),
                "path": path_value(lake.uri(lake.market_dir(DATASET, market))),
                **(
                    {"preview": dg.MetadataValue.md(markdown_table(hourly))}
                    if len(hours) == 1
                    else {}
                ),
            },
            check_results=check_results,
        )

    return trade_aggregates
