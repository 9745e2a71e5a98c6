"""Freshness: the daily assets' freshness policies and the per-symbol freshness checks, on a
hand-made lake (universe and bars written through the lake itself)."""

import datetime as dt

import dagster as dg
import polars as pl
import pytest

from checks.ge_check import ge_asset_check
from marketpipe_assets.definitions import assets
from marketpipe_assets.freshness import (
    MAX_AGE_VARIABLE,
    NOW_VARIABLE,
    SYMBOL_FRESHNESS,
    daily_freshness_result,
    freshness_checks,
    freshness_job,
    freshness_schedules,
    intraday_freshness_result,
    with_freshness,
)
from marketpipe_assets.markets import MARKETS
from marketpipe_assets.schemas import DAILY_PRICES, INTRADAY_BARS, UNIVERSE

UTC = dt.UTC
D = dt.date
MON, TUE, WED = D(2026, 11, 16), D(2026, 11, 17), D(2026, 11, 18)  # XNYS sessions
US_OPEN_TUE = dt.datetime(2026, 11, 17, 14, 30, tzinfo=UTC)  # 09:30 New York
FOUR_HOURS = dt.timedelta(hours=4)


def new_york(day: D, hour: int, minute: int = 0) -> dt.datetime:
    from zoneinfo import ZoneInfo

    return dt.datetime.combine(day, dt.time(hour, minute), ZoneInfo("America/New_York"))


@pytest.fixture
def us_lake(lake):
    """AAA, BBB, CCC active; OLD delisted before the sessions and NEW listed after them, so
    neither is expected to have bars."""
    universe = pl.DataFrame(
        {
            "symbol": ["AAA", "BBB", "CCC", "OLD", "NEW"],
            "name": ["a", "b", "c", "old", "new"],
            "listing_date": [D(2020, 1, 2)] * 4 + [D(2026, 12, 1)],
            "delisting_date": [None, None, None, D(2026, 11, 2), None],
        },
        schema=UNIVERSE,
    )
    lake.write_table("universe", "us", universe)
    return lake


def write_daily(lake, bars: dict[D, list[str]]) -> None:
    rows = [(s, day) for day, symbols in bars.items() for s in symbols]
    frame = pl.DataFrame(
        {
            "symbol": [s for s, _ in rows],
            "trade_date": [d for _, d in rows],
            **{c: [10.0] * len(rows) for c in ("open", "high", "low", "close")},
            "volume": [100] * len(rows),
            "source": ["test"] * len(rows),
        },
        schema=DAILY_PRICES,
    )
    lake.write_partitions("daily_prices", "us", frame, sorted(bars))


def write_intraday(lake, starts: dict[str, list[dt.datetime]], days: list[D]) -> None:
    rows = [(s, t) for s, times in starts.items() for t in times]
    frame = pl.DataFrame(
        {
            "symbol": [s for s, _ in rows],
            "bar_start": [t for _, t in rows],
            **{c: [10.0] * len(rows) for c in ("open", "high", "low", "close")},
            "volume": [100] * len(rows),
            "trade_date": [t.astimezone(new_york(MON, 0).tzinfo).date() for _, t in rows],
        },
        schema=INTRADAY_BARS,
    )
    lake.write_partitions("intraday_bars", "us", frame, days)


def stale_names(result: dg.AssetCheckResult) -> list[str]:
    return [row["symbol"] for row in result.metadata["stale"].value]


# Daily ---------------------------------------------------------------------------------------
def test_daily_check_fails_naming_the_symbol_missing_yesterdays_session(us_lake):
    write_daily(us_lake, {MON: ["AAA", "BBB", "CCC"], TUE: ["AAA", "CCC"]})

    result = daily_freshness_result(us_lake, "us", new_york(WED, 9, 30))

    assert not result.passed
    assert stale_names(result) == ["BBB"]
    assert result.metadata["stale"].value == [{"symbol": "BBB", "last_update": "2026-11-16"}]
    assert "BBB (last 2026-11-16)" in result.description
    assert result.metadata["due_session"].value == "2026-11-17"
    assert result.metadata["active_symbols"].value == 3  # OLD and NEW are not expected


def test_daily_check_passes_when_every_active_symbol_has_the_due_session(us_lake):
    write_daily(us_lake, {MON: ["AAA", "BBB", "CCC"], TUE: ["AAA", "BBB", "CCC"]})

    result = daily_freshness_result(us_lake, "us", new_york(WED, 9, 30))

    assert result.passed, result.description
    assert stale_names(result) == []


def test_daily_session_is_not_due_before_the_morning_deadline(us_lake):
    write_daily(us_lake, {MON: ["AAA", "BBB", "CCC"], TUE: ["AAA", "CCC"]})

    early = daily_freshness_result(us_lake, "us", new_york(WED, 8, 59))
    assert early.passed  # Tuesday is due at 09:00 Wednesday; Monday is complete
    assert early.metadata["due_session"].value == "2026-11-16"

    # Monday morning's due session is Friday's: the weekend owes nothing.
    write_daily(us_lake, {D(2026, 11, 13): ["AAA", "BBB"]})
    monday = daily_freshness_result(us_lake, "us", new_york(MON, 10))
    assert monday.metadata["due_session"].value == "2026-11-13"
    assert stale_names(monday) == ["CCC"]
    assert monday.metadata["stale"].value[0]["last_update"] is None  # nothing stored at all


# Intraday ------------------------------------------------------------------------------------
def test_intraday_check_during_the_session_names_symbols_older_than_four_hours(us_lake):
    now = US_OPEN_TUE + dt.timedelta(hours=5, minutes=30)  # 15:00 New York
    write_intraday(
        us_lake,
        {
            "AAA": [now - dt.timedelta(minutes=15)],
            "BBB": [US_OPEN_TUE + dt.timedelta(minutes=30)],  # 5 hours old
            "CCC": [US_OPEN_TUE - dt.timedelta(hours=17)],  # yesterday's last bar only
        },
        [MON, TUE],
    )

    result = intraday_freshness_result(us_lake, "us", now, FOUR_HOURS)

    assert not result.passed
    assert stale_names(result) == ["BBB", "CCC"]
    assert result.metadata["stale"].value[0] == {
        "symbol": "BBB",
        "last_update": "2026-11-17 15:00:00+00:00",
    }
    assert result.metadata["in_session"].value is True
    # A longer allowance (the variable's hours) accepts both.
    assert intraday_freshness_result(us_lake, "us", now, dt.timedelta(hours=6)).passed


def test_intraday_clock_starts_at_the_open(us_lake):
    write_intraday(us_lake, {"AAA": [US_OPEN_TUE - dt.timedelta(hours=17)]}, [MON, TUE])
    # 3 hours into the session nothing is overdue yet, even with no bar today.
    early = intraday_freshness_result(
        us_lake, "us", US_OPEN_TUE + dt.timedelta(hours=3), FOUR_HOURS
    )
    assert early.passed, early.description
    late = intraday_freshness_result(
        us_lake, "us", US_OPEN_TUE + dt.timedelta(hours=4, minutes=1), FOUR_HOURS
    )
    assert stale_names(late) == ["AAA", "BBB", "CCC"]


@pytest.mark.parametrize(
    "now",
    [
        dt.datetime(2026, 11, 17, 22, 0, tzinfo=UTC),  # after the close
        dt.datetime(2026, 11, 17, 13, 0, tzinfo=UTC),  # before the open
        new_york(D(2026, 11, 26), 12),  # Thanksgiving: no session
        new_york(D(2026, 11, 21), 12),  # Saturday
    ],
)
def test_intraday_check_outside_session_hours_passes_without_reading(us_lake, now):
    # Nothing stored at all: inside a session every symbol would be stale.
    result = intraday_freshness_result(us_lake, "us", now, FOUR_HOURS)
    assert result.passed
    assert result.metadata["in_session"].value is False


# Through Dagster -----------------------------------------------------------------------------
def checks_defs(lake, market_data) -> dg.Definitions:
    return dg.Definitions(
        assets=[a for a in assets if a.key.path[0] == "us"],
        asset_checks=[*freshness_checks("us"), ge_asset_check("us")],
        jobs=[freshness_job("us", "daily_prices"), freshness_job("us", "intraday_bars")],
        schedules=freshness_schedules("us"),
        resources={"lake": lake, "market_data": market_data},
    )


def evaluations(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {"/".join(e.asset_key.path): e for e in result.get_asset_check_evaluations()}


def test_freshness_jobs_run_the_checks_as_of_marketpipe_now(
    us_lake, market_data, instance, monkeypatch
):
    write_daily(us_lake, {MON: ["AAA", "BBB", "CCC"], TUE: ["AAA", "CCC"]})
    defs = checks_defs(us_lake, market_data)

    monkeypatch.setenv(NOW_VARIABLE, "2026-11-18T15:00:00")  # naive = UTC, 10:00 New York
    daily = defs.resolve_job_def("us_daily_prices_freshness").execute_in_process(
        instance=instance, raise_on_error=False
    )
    assert daily.success  # a failed check is a result, not a failed run
    (evaluation,) = evaluations(daily).values()
    assert evaluation.check_name == SYMBOL_FRESHNESS and not evaluation.passed
    assert "BBB" in evaluation.description

    monkeypatch.setenv(NOW_VARIABLE, "2026-11-17T20:00:00+00:00")  # 15:00 New York
    monkeypatch.setenv(MAX_AGE_VARIABLE, "2")  # 5.5 h into the session
    intraday = defs.resolve_job_def("us_intraday_bars_freshness").execute_in_process(
        instance=instance, raise_on_error=False
    )
    (evaluation,) = evaluations(intraday).values()
    assert not evaluation.passed  # nothing stored: all three active symbols are stale
    assert evaluation.metadata["max_age_hours"].value == 2
    assert evaluation.metadata["stale_symbols"].value == 3


def test_intraday_schedule_runs_only_during_sessions(us_lake):
    schedule = next(s for s in freshness_schedules("us") if s.name == "us_intraday_freshness")

    def tick(moment: dt.datetime):
        with dg.build_schedule_context(scheduled_execution_time=moment) as context:
            return schedule.evaluate_tick(context)

    assert tick(new_york(TUE, 11)).run_requests
    assert tick(new_york(TUE, 17)).skip_message
    assert tick(new_york(D(2026, 11, 26), 11)).skip_message  # Thanksgiving


# Freshness policies --------------------------------------------------------------------------
def test_daily_assets_carry_a_cron_freshness_policy_visible_in_the_asset_graph(lake, market_data):
    mapped = with_freshness(assets)
    graph = dg.Definitions(
        assets=mapped,
        asset_checks=[ge_asset_check(m) for m in MARKETS],
        resources={"lake": lake, "market_data": market_data},
    ).resolve_asset_graph()
    for market, spec in MARKETS.items():
        for dataset in ("daily_prices", "indicators"):
            policy = graph.get(dg.AssetKey([market, dataset])).freshness_policy
            assert isinstance(policy, dg.FreshnessPolicy)
            assert policy.deadline_cron == "0 9 * * 2-6"
            assert policy.timezone == spec.timezone
            assert policy.lower_bound_delta == dt.timedelta(hours=17)
        assert graph.get(dg.AssetKey([market, "universe"])).freshness_policy is None
        assert graph.get(dg.AssetKey([market, "intraday_bars"])).freshness_policy is None
    # Mapping specs keeps everything else: partitions and the inline checks.
    prices = next(a for a in mapped if a.key == dg.AssetKey(["us", "daily_prices"]))
    assert prices.partitions_def is not None
    assert {k.name for k in prices.check_keys} >= {"price_relationships", "completeness"}
