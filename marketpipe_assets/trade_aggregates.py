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
import json
import os
import re
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import cache
from zoneinfo import ZoneInfo

import dagster as dg
import polars as pl
import pyarrow.parquet as pq

from checks.markets import MARKETS, all_sessions, session_bounds, sessions_between
from checks.metadata import markdown_table
from checks.rulebook import Validated
from checks.schemas import TRADE_AGGREGATES, TRADES
from checks.trade_checks import (
    drop_exact_duplicates,
    reconcile_result,
    trade_check_specs,
    trade_rules_result,
    validate_trades,
)
from resources.lake import PART_FILE, LakeResource
from resources.publishing import Batch
from resources.trade_spool import read_unflushed

from .metadata import counts_by_session, path_value, per_session, run_totals
from .publish import publish_if_checks_pass

DATASET = "trade_aggregates"
MINUTES_DATASET = "trade_minutes"
SOURCES_DATASET = "trade_aggregate_sources"
TRADES_DATASET = "trades"
# The trades an hour's aggregation rejected, beside the aggregates (the collector's own rejects
# are per batch under quarantine/trades).
QUARANTINE_DATASET = f"quarantine/{DATASET}"

_UTC_MS = pl.Datetime("ms", "UTC")
TRADE_MINUTES = pl.Schema(
    {
        "symbol": pl.String,
        "minute_start": _UTC_MS,
        "trades": pl.Int64,
        "volume": pl.Float64,
        "vwap": pl.Float64,
        **{c: pl.Float64 for c in ("open", "high", "low", "close")},
    }
)
AGGREGATE_SOURCES = pl.Schema(
    {
        "hour_start": _UTC_MS,
        "trades_date": pl.Date,  # a trades folder (session date) the hour was read from
        "max_batch": pl.Int64,  # its highest batch id then; -1 when it had no file
        "files": pl.Int64,
        "aggregated_at": _UTC_MS,
    }
)

HOUR = dt.timedelta(hours=1)
KEY_FORMAT = "%Y-%m-%d-%H:%M"
START_VARIABLE = "MARKETPIPE_TRADES_START_DATE"
# Trades exist only from the day a collector first ran; every extra year of hourly partitions
# costs Dagster ~0.4 s whenever it lists them (UI, backfills), so they start late by default.
DEFAULT_TRADES_START = "2026-01-02"
GRACE_VARIABLE = "MARKETPIPE_TRADE_GRACE_MINUTES"
DEFAULT_GRACE_MINUTES = 5
# How far back the sensor requests hours and re-opens them for late trades; older late trades
# need a manual backfill of their hour.
REOPEN_WINDOW = dt.timedelta(days=3)
Stage = Callable[[str], AbstractContextManager]  # as in options.py: the bench's step timer
_BATCH_NAME = re.compile(r"batch-(\d+)-(\d+)\.parquet$")


# Hours and their partitions --------------------------------------------------------------------
# A trade's hour partition key, as hour_key writes it (trade times are UTC).
HOUR_KEY_OF_TRADE = pl.col("ts").dt.truncate("1h").dt.strftime(KEY_FORMAT)


def hour_key(hour: dt.datetime) -> str:
    return hour.astimezone(dt.UTC).strftime(KEY_FORMAT)


def hour_from_key(key: str) -> dt.datetime:
    return dt.datetime.strptime(key, KEY_FORMAT).replace(tzinfo=dt.UTC)


def floor_hour(ts: dt.datetime) -> dt.datetime:
    return ts.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)


def trades_start_date() -> dt.date:
    raw = os.environ.get(START_VARIABLE, DEFAULT_TRADES_START)
    try:
        return dt.date.fromisoformat(raw)
    except ValueError as exc:
        raise ValueError(f"{START_VARIABLE}={raw!r} is not a date; use YYYY-MM-DD") from exc


def session_hours(market: str, first: dt.datetime, last: dt.datetime) -> list[dt.datetime]:
    """UTC starts in [first, last) of the hours that intersect a session (half days included)."""
    hours = set()
    days = sessions_between(market, first.date() - dt.timedelta(1), last.date() + dt.timedelta(1))
    for day in days:
        opens, closes = session_bounds(market, day)
        hour = floor_hour(opens)
        while hour < closes:
            if first <= hour < last:
                hours.add(hour)
            hour += HOUR
    return sorted(hours)


@cache
def hour_partitions(market: str) -> dg.TimeWindowPartitionsDefinition:
    """Hourly partitions, keys `YYYY-MM-DD-HH:MM` in UTC, only hours intersecting a session.

    The cron is every hour so that each window is exactly its hour (Dagster ends a window at the
    next cron tick, so a sessions-only cron would stretch a Friday's last hour to Monday).
    Weekdays and hours of the day that never trade are excluded by two cron strings; holidays,
    the daylight-saving shift and half days by the remaining hours listed one by one.
    """
    first = dt.datetime.combine(trades_start_date(), dt.time(), dt.UTC)
    end = session_bounds(market, all_sessions(market)[-1])[1]
    hours = session_hours(market, first, end)
    if not hours:
        raise ValueError(f"{START_VARIABLE}={first.date()} is after the {market} calendar's end")
    weekdays = {h.isoweekday() % 7 for h in hours}  # cron numbering: 0 = Sunday
    of_day = {h.hour for h in hours}
    idle_days = ",".join(str(d) for d in range(7) if d not in weekdays)
    idle_hours = ",".join(str(h) for h in range(24) if h not in of_day)
    cron_exclusions = [f"0 * * * {idle_days}"] * bool(idle_days) + [f"0 {idle_hours} * * *"] * bool(
        idle_hours
    )
    listed, trading = [], set(hours)
    tick = hours[0]
    while tick <= hours[-1]:
        if tick.isoweekday() % 7 in weekdays and tick.hour in of_day and tick not in trading:
            listed.append(tick.replace(tzinfo=None))
        tick += HOUR
    return dg.TimeWindowPartitionsDefinition(
        cron_schedule="0 * * * *",
        start=hours[0].replace(tzinfo=None),
        timezone="UTC",
        fmt=KEY_FORMAT,
        exclusions=cron_exclusions + listed,
    )


# Trades in the lake ----------------------------------------------------------------------------
def trade_days(market: str, start: dt.datetime, end: dt.datetime) -> list[dt.date]:
    """Trades folders (the market's local dates) that can hold trades of [start, end)."""
    zone = ZoneInfo(MARKETS[market].timezone)
    first = start.astimezone(zone).date()
    last = (end - dt.timedelta(milliseconds=1)).astimezone(zone).date()
    return [first + dt.timedelta(n) for n in range((last - first).days + 1)]


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
        frame = pl.from_arrow(table)
    return frame.cast(dict(TRADES))


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


def _hour_files(lake, market, hours, hourly, minutes, validated, files, now):
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


def _sources(market: str, hour: dt.datetime, files: list[BatchFile], now: dt.datetime):
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


# The sensor -----------------------------------------------------------------------------------
def grace_period() -> dt.timedelta:
    raw = os.environ.get(GRACE_VARIABLE, "").strip() or str(DEFAULT_GRACE_MINUTES)
    if not raw.isdigit():
        raise ValueError(f"{GRACE_VARIABLE}={raw!r}: use a whole number of minutes, e.g. 5")
    return dt.timedelta(minutes=int(raw))


@cache
def trade_aggregates_job(market: str):
    return dg.define_asset_job(
        f"{market}_trade_aggregates",
        selection=dg.AssetSelection.assets(dg.AssetKey([market, DATASET])),
        partitions_def=hour_partitions(market),
        description=f"Aggregate {market.upper()} trades of one hour (or a range of hours).",
    )


def plan_hour_runs(
    lake: LakeResource,
    market: str,
    now: dt.datetime,
    cursor: str | None,
    spooled: Iterable[dt.datetime] = (),
) -> tuple[list[dg.RunRequest], str]:
    """Run requests for the closed hours (ended more than the grace period ago) that hold a trade,
    in a batch in the lake or in `spooled` (trade times still only in the collector's spool),
    for requested hours that a batch flushed since holds a trade of; and the next cursor. An
    hour without trades is never requested: a deployment that never collected asks for nothing.

    Cursor: per trades folder the highest batch id already looked at (only newer batches are
    opened, and only their footers), per hour with trades not yet requested the highest batch
    holding one (`traded`, -1 when only spooled), and per requested hour the batch id of its
    last request.
    """
    state = json.loads(cursor) if cursor else {}
    seen: dict[str, int] = state.get("batches", {})
    traded: dict[str, int] = state.get("traded", {})
    requested: dict[str, int] = state.get("hours", {})
    window_start = floor_hour(now - REOPEN_WINDOW)
    files = batch_files(lake, market, trade_days(market, window_start, now))
    landed: dict[str, int] = {}  # hour key -> highest new batch holding a trade of it
    for f in files:
        if f.batch <= seen.get(f.day.isoformat(), -1):
            continue
        span = file_span(lake, f.path)
        lo, hi = (window_start, now) if span is None else (floor_hour(span[0]), span[1])
        hour = max(lo, window_start)
        while hour <= hi:
            landed[hour_key(hour)] = max(landed.get(hour_key(hour), -1), f.batch)
            hour += HOUR
    for f in files:
        seen[f.day.isoformat()] = max(seen.get(f.day.isoformat(), -1), f.batch)
    for key, batch in landed.items():
        if key not in requested:
            traded[key] = max(traded.get(key, -1), batch)
    for ts in spooled:
        if window_start <= ts < now and hour_key(floor_hour(ts)) not in requested:
            traded.setdefault(hour_key(floor_hour(ts)), -1)

    requests = []
    closed_before = now - grace_period() - HOUR  # an hour is due once it ended a grace ago
    for hour in session_hours(market, window_start, now):
        key = hour_key(hour)
        if hour > closed_before:
            continue
        if key in traded:
            requests.append(dg.RunRequest(run_key=f"{market}:{key}", partition_key=key))
            requested[key] = traded.pop(key)
        elif key in requested and key in landed:  # late trades: re-open once per new batch
            batch = landed[key]
            requests.append(dg.RunRequest(run_key=f"{market}:{key}:b{batch}", partition_key=key))
            requested[key] = batch
    oldest = hour_key(window_start)
    first_day = trade_days(market, window_start, window_start + HOUR)[0].isoformat()
    next_state = {
        "batches": {d: b for d, b in sorted(seen.items()) if d >= first_day},
        "traded": {k: b for k, b in sorted(traded.items()) if k >= oldest},
        "hours": {k: b for k, b in sorted(requested.items()) if k >= oldest},
    }
    return requests, json.dumps(next_state, sort_keys=True)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def trade_hours_sensor(
    market: str, *, clock: Callable[[], dt.datetime] = _utcnow
) -> dg.SensorDefinition:
    """`clock` fixes "now" in tests; deployments use the wall clock."""

    @dg.sensor(
        name=f"{market}_trade_hours",
        job=trade_aggregates_job(market),
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Requests each {market} trading hour that has trades {GRACE_VARIABLE} "
        f"(default {DEFAULT_GRACE_MINUTES}) minutes after it closes, and again when late trades "
        "land in it.",
    )
    def trade_hours(context: dg.SensorEvaluationContext, lake: LakeResource):
        # Trades collected but not flushed yet count too; the hour re-opens when they land.
        spooled = read_unflushed(market)["ts"].dt.truncate("1h").unique()
        requests, cursor = plan_hour_runs(lake, market, clock(), context.cursor, spooled)
        if not requests:
            return dg.SensorResult(
                skip_reason="no closed hour with trades in the lake or the spool", cursor=cursor
            )
        return dg.SensorResult(run_requests=requests, cursor=cursor)

    return trade_hours


def trade_sensors() -> list[dg.SensorDefinition]:
    return [trade_hours_sensor(m) for m in MARKETS]


def trade_jobs() -> list:
    return [trade_aggregates_job(m) for m in MARKETS]
