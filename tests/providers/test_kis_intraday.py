"""krx/intraday_bars from KIS's 1-minute charts against the fake KIS server: runs through Dagster
store exactly the 15-minute bars aggregated by hand from the minutes the server sent, inside the
session's hours; a broken minute ends quarantined under its rule; faults are retried; today's
chart serves a session still trading; a session older than KIS keeps fails clearly."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from checks.markets import session_bounds, sessions_between
from checks.schemas import INTRADAY_BARS
from resources.providers import kis
from tests.conftest import materialize, recent_sessions
from tests.fakes.kis import KST, MALFORMED, MINUTE_DAY, MINUTE_TODAY, RATE_LIMIT, TOKEN
from tests.providers import test_provider_kis as kis_tests
from tests.providers.test_provider_kis import (
    APP_KEY,
    APP_SECRET,
    FAST,
    SYMBOLS,
    UNKNOWN,
    errors,
    market_data,
)

# The daily KIS tests' fixtures: credentials and fast retries in the environment (autouse), the
# fake server (KIS_BASE_URL pointing at it) and one instance for the module's runs.
kis_env, fake, instance = kis_tests.kis_env, kis_tests.fake, kis_tests.instance

STEP = dt.timedelta(minutes=15)
KEY = ["trade_date", "symbol", "bar_start"]


def seoul(day: dt.date, hour: int, minute: int) -> dt.datetime:
    """A wall-clock time in Seoul, as the UTC instant the lake stores."""
    return dt.datetime.combine(day, dt.time(hour, minute), KST).astimezone(dt.UTC)


def run(fake, lake, instance, tmp_path, symbols: list[str], days: list[str]):
    data = market_data(tmp_path, symbols)
    assert materialize("krx", ("universe",), lake=lake, market_data=data, instance=instance).success
    where = (
        {"partition_key": days[0]} if len(days) == 1 else {"partition_range": (days[0], days[-1])}
    )
    return materialize(
        "krx", ("intraday_bars",), lake=lake, market_data=data, instance=instance, **where
    )


def by_hand(fake, symbols, days: list[dt.date], now: dt.datetime | None = None) -> pl.DataFrame:
    """The 15-minute bars of the minutes the fake serves, aggregated in plain Python: slots from
    the session's open, the closing auction (stamped at the close) in the last slot."""
    buckets: dict[tuple, list[dict]] = {}
    for symbol in symbols:
        for day in days:
            opens, closes = session_bounds("krx", day)
            last = (closes - opens) // STEP - 1
            for stamp, values in fake.minutes(symbol, day):
                start = opens + min((stamp - opens) // STEP, last) * STEP
                buckets.setdefault((symbol, start, day), []).append(values)
    rows = [
        {
            "symbol": symbol,
            "bar_start": start,
            "open": minutes[0]["open"],
            "high": max(m["high"] for m in minutes),
            "low": min(m["low"] for m in minutes),
            "close": minutes[-1]["close"],
            "volume": sum(m["volume"] for m in minutes),
            "trade_date": day,
        }
        for (symbol, start, day), minutes in buckets.items()
        if now is None or start + STEP <= now
    ]
    return pl.DataFrame(rows, schema=INTRADAY_BARS, orient="row").sort(KEY)


def stored_and_quarantined(lake) -> tuple[pl.DataFrame, pl.DataFrame]:
    stored = lake.read_partitions("intraday_bars", "krx", INTRADAY_BARS).sort(KEY)
    return stored, lake.read_quarantine("intraday_bars", "krx", INTRADAY_BARS).sort(KEY)


def evaluations(result) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def test_intraday_bars_through_dagster_equal_the_minutes_aggregated_by_hand(
    fake, lake, instance, tmp_path
):
    symbols = SYMBOLS[:4]
    days = recent_sessions("krx", 2)
    d0, d1 = (dt.date.fromisoformat(d) for d in days)
    fake.thousands = True  # "71,000"
    fake.bad_minutes[(symbols[1], d0, "100700")] = "high_below_low"
    fake.bad_minutes[(symbols[2], d1, "133100")] = "blank_close"

    result = run(fake, lake, instance, tmp_path, symbols, days)

    assert result.success, errors(result)
    stored, quarantined = stored_and_quarantined(lake)
    expected = by_hand(fake, symbols, [d0, d1])
    # The bars holding a broken minute are quarantined as that minute, under its rules.
    broken = [
        (symbols[1], d0, seoul(d0, 10, 0), "high_gte_low"),
        (symbols[2], d1, seoul(d1, 13, 30), "required_fields"),
    ]
    for symbol, day, start, rule in broken:
        (row,) = quarantined.filter(
            (pl.col("symbol") == symbol) & (pl.col("bar_start") == start)
        ).iter_rows(named=True)
        assert rule in row["violations"] and row["trade_date"] == day
        minute = start.replace(minute=7 if rule == "high_gte_low" else 31)
        (served,) = [v for t, v in fake.minutes(symbol, day) if t == minute]
        assert {c: row[c] for c in served} == served
    assert len(quarantined) == len(broken)
    clean = expected.filter(
        ~pl.struct("symbol", "bar_start").is_in(
            [{"symbol": s, "bar_start": t} for s, _, t, _ in broken]
        )
    )
    assert_frame_equal(stored, clean)
    # Inside each session's hours, on its 15-minute grid; 26 bars a session, the last one
    # closing at the closing auction's print.
    for day in (d0, d1):
        opens, closes = session_bounds("krx", day)
        bars = stored.filter(pl.col("trade_date") == day)
        assert bars["bar_start"].min() == opens and bars["bar_start"].max() == closes - STEP
        assert all((t - opens) % STEP == dt.timedelta(0) for t in bars["bar_start"])
        last = bars.filter(
            (pl.col("symbol") == symbols[0]) & (pl.col("bar_start") == closes - STEP)
        )
        assert last["close"].item() == fake.minutes(symbols[0], day)[-1][1]["close"]
    counts = stored.group_by("symbol", "trade_date").len()["len"]
    assert counts.max() == 26 and counts.min() == 25
    assert all(evaluations(result).values())
    # Each (symbol, day): four calls of the per-day chart, 120 minutes each, paged backwards.
    calls = fake.calls(MINUTE_DAY)
    assert len(calls) == 4 * len(symbols) * 2 and not fake.calls(MINUTE_TODAY)
    assert fake.count(TOKEN) == 1
    mine = [c for c in calls if c.query["FID_INPUT_ISCD"] == symbols[0]]
    assert all(c.headers["tr_id"] == "FHKST03010230" for c in mine)
    assert [(c.query["FID_INPUT_DATE_1"], c.query["FID_INPUT_HOUR_1"]) for c in mine] == [
        (day.strftime("%Y%m%d"), hour)
        for day in (d0, d1)
        for hour in ("153000", "132000", "112000", "092000")
    ]


FAULTS = {
    # name: (inject, extra requests the server sees)
    "EGW00201 in a 500": (lambda f: f.faults.add(500, RATE_LIMIT, path=MINUTE_DAY, times=2), 2),
    "5xx burst": (lambda f: f.faults.add(503, b"Service Unavailable", path=MINUTE_DAY, times=3), 3),
    "malformed JSON": (lambda f: f.faults.add(200, MALFORMED, path=MINUTE_DAY), 1),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_provider_fault_is_retried(fault, fake, lake, instance, tmp_path):
    symbols, days = SYMBOLS[:2], recent_sessions("krx", 1)
    inject, extra = FAULTS[fault]
    inject(fake)

    result = run(fake, lake, instance, tmp_path, symbols, days)

    assert result.success, errors(result)
    stored, quarantined = stored_and_quarantined(lake)
    assert_frame_equal(stored, by_hand(fake, symbols, [dt.date.fromisoformat(days[0])]))
    assert quarantined.is_empty()
    assert fake.count(MINUTE_DAY) == 4 * len(symbols) + extra


def test_a_session_older_than_kis_keeps_fails_naming_provider_symbol_and_date(
    fake, lake, instance, tmp_path
):
    today = dt.date.today()
    day = sessions_between("krx", today - dt.timedelta(days=420), today - dt.timedelta(days=400))[0]

    result = run(fake, lake, instance, tmp_path, SYMBOLS[:3], [day.isoformat()])

    assert not result.success
    message = "\n".join(errors(result))
    assert "MinuteHistoryUnavailable: kis" in message
    assert f"[{SYMBOLS[0]} and 2 more symbol(s)]: no 1-minute bars for {day}" in message
    assert "KIS keeps about 365 days of minute history" in message
    assert fake.count(MINUTE_DAY) == 0 and fake.count(TOKEN) == 0  # failed before any request


def test_todays_session_comes_from_todays_chart_without_the_bar_still_trading(fake, tmp_path):
    day = dt.date.fromisoformat(recent_sessions("krx", 1)[0])
    now = dt.datetime.combine(day, dt.time(11, 7, 30), KST)  # the 11:00 bar is still open
    fake.clock = now
    source = kis.KisSource(
        APP_KEY,
        APP_SECRET,
        fake.url,
        cache_dir=tmp_path,
        rate=(200, 1.0),
        retry=FAST,
        now=lambda: now,
    )

    tomorrow = sessions_between("krx", day + dt.timedelta(days=1), day + dt.timedelta(days=10))[0]

    bars = source.intraday_bars("krx", [day, tomorrow], [*SYMBOLS[:2], UNKNOWN]).sort(KEY)

    assert_frame_equal(bars, by_hand(fake, SYMBOLS[:2], [day], now=now))
    assert list(source.missing) == [UNKNOWN]  # KIS's "no data": counted missing, not fatal
    assert bars["bar_start"].max() == seoul(day, 10, 45)
    # 09:00-11:07 is 128 minutes: five calls of 30, a minute before the oldest each time.
    calls = [c for c in fake.calls(MINUTE_TODAY) if c.query["FID_INPUT_ISCD"] == SYMBOLS[0]]
    assert [c.query["FID_INPUT_HOUR_1"] for c in calls] == [
        "153000",
        "103700",
        "100700",
        "093700",
        "090700",
    ]
    assert calls[0].headers["tr_id"] == "FHKST03010200" and "FID_INPUT_DATE_1" not in calls[0].query
    assert not fake.calls(MINUTE_DAY)  # and none for tomorrow's session, not traded yet
