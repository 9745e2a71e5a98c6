"""Trade hours: the UTC hour partitions of each market's trades, their keys, which hours
intersect a session, and the settings that bound them."""

import datetime as dt
import os
from functools import cache
from zoneinfo import ZoneInfo

import dagster as dg
import polars as pl

from checks.markets import MARKETS, all_sessions, session_bounds, sessions_between
from checks.schemas import make_schema

DATASET = "trade_aggregates"
MINUTES_DATASET = "trade_minutes"
SOURCES_DATASET = "trade_aggregate_sources"
TRADES_DATASET = "trades"
# The trades an hour's aggregation rejected, beside the aggregates (the collector's own rejects
# are per batch under quarantine/trades).
QUARANTINE_DATASET = f"quarantine/{DATASET}"

_UTC_MS = pl.Datetime("ms", "UTC")
TRADE_MINUTES = make_schema(
    {
        "symbol": pl.String,
        "minute_start": _UTC_MS,
        "trades": pl.Int64,
        "volume": pl.Float64,
        "vwap": pl.Float64,
        **{c: pl.Float64 for c in ("open", "high", "low", "close")},
    }
)
AGGREGATE_SOURCES = make_schema(
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
        exclusions=[*cron_exclusions, *listed],
    )


# Trades in the lake ----------------------------------------------------------------------------
def trade_days(market: str, start: dt.datetime, end: dt.datetime) -> list[dt.date]:
    """Trades folders (the market's local dates) that can hold trades of [start, end)."""
    zone = ZoneInfo(MARKETS[market].timezone)
    first = start.astimezone(zone).date()
    last = (end - dt.timedelta(milliseconds=1)).astimezone(zone).date()
    return [first + dt.timedelta(n) for n in range((last - first).days + 1)]


def grace_period() -> dt.timedelta:
    raw = os.environ.get(GRACE_VARIABLE, "").strip() or str(DEFAULT_GRACE_MINUTES)
    if not raw.isdigit():
        raise ValueError(f"{GRACE_VARIABLE}={raw!r}: use a whole number of minutes, e.g. 5")
    return dt.timedelta(minutes=int(raw))
