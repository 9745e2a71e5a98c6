"""Markets, their exchange calendars and the session-date partitions every asset shares.

This is the one module that knows what a session is. Assets, checks, schedules, sensors, the
synthetic source and the tests all ask it.
"""

from __future__ import annotations

import bisect
import datetime as dt
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import dagster as dg
import polars as pl

from .schemas import FILED_UNDER

# Ten years of history plus margin: a full ten-year backfill fits inside the partitions.
DEFAULT_START_DATE = "2015-01-02"
# Weekday cron: exchange holidays are removed from it with `exclusions` below.
_WEEKDAY_CRON = "0 0 * * 1-5"


@dataclass(frozen=True)
class Market:
    name: str
    calendar: str
    timezone: str
    price_decimals: int  # KRX quotes whole won, US quotes cents

    @property
    def source_variable(self) -> str:
        return f"MARKETPIPE_{self.name.upper()}_SOURCE"

    @property
    def universe_variable(self) -> str:
        return f"MARKETPIPE_{self.name.upper()}_UNIVERSE"


MARKETS: dict[str, Market] = {
    "krx": Market("krx", "XKRX", "Asia/Seoul", 0),
    "us": Market("us", "XNYS", "America/New_York", 2),
}


def start_date() -> dt.date:
    raw = os.environ.get("MARKETPIPE_START_DATE", DEFAULT_START_DATE)
    try:
        return dt.date.fromisoformat(raw)
    except ValueError as exc:
        raise ValueError(
            f"MARKETPIPE_START_DATE={raw!r} is not a date; "
            f"use YYYY-MM-DD, e.g. {DEFAULT_START_DATE}"
        ) from exc


def _cache_dir() -> Path:
    return Path(os.environ.get("MARKETPIPE_CACHE_DIR", Path.home() / ".cache" / "marketpipe"))


@cache
def all_sessions(market: str) -> tuple[dt.date, ...]:
    """Every session of the market's calendar from 2000 to the calendar's end (about a year ahead).

    Building the XKRX calendar costs about 3 s (lunar holidays), and every Dagster process would
    pay it, so the session list is cached on disk per exchange_calendars version.
    """
    import exchange_calendars as xcals

    spec = MARKETS[market]
    path = _cache_dir() / f"sessions-{spec.calendar}-{xcals.__version__}.json"
    try:
        return tuple(dt.date.fromisoformat(d) for d in json.loads(path.read_text()))
    except (OSError, ValueError):
        pass
    calendar = xcals.get_calendar(spec.calendar, start="2000-01-01")
    sessions = tuple(ts.date() for ts in calendar.sessions)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps([d.isoformat() for d in sessions]))
    tmp.replace(path)
    return sessions


@cache
def _session_set(market: str) -> frozenset[dt.date]:
    return frozenset(all_sessions(market))


def is_session(market: str, day: dt.date) -> bool:
    return day in _session_set(market)


def sessions_between(market: str, first: dt.date, last: dt.date) -> list[dt.date]:
    return [d for d in all_sessions(market) if first <= d <= last]


def previous_session(market: str, day: dt.date) -> dt.date | None:
    earlier = [d for d in all_sessions(market) if d < day]
    return earlier[-1] if earlier else None


def latest_on_or_before(days: Sequence[dt.date], day: dt.date) -> dt.date:
    """The latest of the sorted `days` on or before `day`; the first one for a day before all."""
    return days[max(bisect.bisect_right(days, day) - 1, 0)]


def filed_under(dates: pl.Series, sessions: Sequence[dt.date]) -> pl.Series:
    """The run session each quarantined row is filed under: its own date when that is one of
    the run's `sessions`; else the latest of them on or before it (the first for an earlier
    date), so a Saturday's row sits with Friday's; the run's last session for a row with no
    date."""
    days = sorted(set(sessions))
    filed = {d: latest_on_or_before(days, d) for d in dates.drop_nulls().unique()}
    by_date = dates.replace_strict(filed, default=None, return_dtype=pl.Date)
    return by_date.fill_null(days[-1])


def with_filing(
    quarantined: pl.DataFrame, sessions: Sequence[dt.date], date_column: str = "trade_date"
) -> pl.DataFrame:
    """Quarantined rows with FILED_UNDER, the partition that keeps them."""
    filing: pl.Series | list[dt.date] = (
        filed_under(quarantined[date_column], sessions) if len(quarantined) else []
    )
    return quarantined.with_columns(pl.Series(FILED_UNDER, filing, dtype=pl.Date))


def holidays(market: str, first: dt.date) -> list[dt.date]:
    """Weekdays between `first` and the calendar's end that are not sessions."""
    sessions = _session_set(market)
    last = all_sessions(market)[-1]
    days = (first + dt.timedelta(n) for n in range((last - first).days + 1))
    return [d for d in days if d.weekday() < 5 and d not in sessions]


@cache
def partitions_def(market: str) -> dg.TimeWindowPartitionsDefinition:
    """Session-date partitions: weekdays minus the exchange's holidays, in the market's zone.

    end_offset=1 makes today's session a partition from midnight local time, so the 18:00
    schedule can target it.
    """
    spec = MARKETS[market]
    first = start_date()
    return dg.TimeWindowPartitionsDefinition(
        cron_schedule=_WEEKDAY_CRON,
        start=first.isoformat(),
        timezone=spec.timezone,
        fmt="%Y-%m-%d",
        end_offset=1,
        exclusions=[dt.datetime.combine(d, dt.time()) for d in holidays(market, first)],
    )


def partition_dates(keys: list[str] | tuple[str, ...]) -> list[dt.date]:
    return [dt.date.fromisoformat(k) for k in keys]


@cache
def _all_session_bounds(market: str) -> dict[dt.date, tuple[dt.datetime, dt.datetime]]:
    """Open and close (UTC) of every session, disk-cached like all_sessions."""
    import exchange_calendars as xcals

    spec = MARKETS[market]
    path = _cache_dir() / f"session-bounds-{spec.calendar}-{xcals.__version__}.json"
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        calendar = xcals.get_calendar(spec.calendar, start="2000-01-01")
        raw = {
            day.date().isoformat(): [int(o.timestamp()), int(c.timestamp())]
            for day, o, c in zip(calendar.sessions, calendar.opens, calendar.closes, strict=True)
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(raw))
        tmp.replace(path)
    utc = dt.UTC
    return {
        dt.date.fromisoformat(day): (
            dt.datetime.fromtimestamp(o, utc),
            dt.datetime.fromtimestamp(c, utc),
        )
        for day, (o, c) in raw.items()
    }


def session_bounds(market: str, day: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """(open, close) of the session in UTC; half days close early. KeyError if not a session."""
    return _all_session_bounds(market)[day]


def capture_slots(market: str, day: dt.date, interval_minutes: int) -> list[dt.datetime]:
    """The order-book capture times of a session (UTC): its open, then every
    `interval_minutes` before its close."""
    opens, closes = session_bounds(market, day)
    step = dt.timedelta(minutes=interval_minutes)
    count = max(1, -(-(closes - opens) // step))  # ceil
    return [opens + i * step for i in range(count)]
