"""The job and sensor that aggregate an hour of trades once it has closed plus a grace
period, and again when late trades land in it."""

import datetime as dt
import json
from collections.abc import Callable, Iterable
from functools import cache

import dagster as dg

from checks.markets import MARKETS
from resources.lake import LakeResource
from resources.trade_spool import read_unflushed

from .trade_files import batch_files, file_span
from .trade_hours import (
    DATASET,
    DEFAULT_GRACE_MINUTES,
    GRACE_VARIABLE,
    HOUR,
    REOPEN_WINDOW,
    floor_hour,
    grace_period,
    hour_key,
    hour_partitions,
    session_hours,
    trade_days,
)


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
