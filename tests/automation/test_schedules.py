"""The 18:00 session schedule of each market and the indicators' automation condition."""

import datetime as dt
from zoneinfo import ZoneInfo

import dagster as dg
import pytest

from checks.markets import MARKETS, is_session, partitions_def
from marketpipe_assets.automation import market_schedule
from marketpipe_assets.definitions import defs
from tests.conftest import SYMBOLS, Runner, synthetic_data

INDICATORS = dg.AssetKey(["krx", "indicators"])


def tick(market: str, when: dt.datetime, instance):
    """One evaluation of the market's schedule as the daemon would run it at `when`."""
    context = dg.build_schedule_context(
        instance=instance,
        scheduled_execution_time=when,
        repository_def=defs.get_repository_def(),
    )
    return defs.resolve_schedule_def(f"{market}_daily_close").evaluate_tick(context)


def at_six_pm(market: str, day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(18), tzinfo=ZoneInfo(MARKETS[market].timezone))


@pytest.mark.parametrize("market", ["krx", "us"])
def test_schedule_runs_at_18_on_weekdays_in_the_market_zone(market):
    schedule = market_schedule(market)
    assert schedule.cron_schedule == "0 18 * * 1-5"
    assert schedule.execution_timezone == MARKETS[market].timezone
    assert schedule.job_name == f"{market}_daily_prices"
    # The same object is what the definitions load.
    assert defs.resolve_schedule_def(f"{market}_daily_close").cron_schedule == "0 18 * * 1-5"


@pytest.mark.parametrize(
    ("market", "session"),
    [("krx", dt.date(2025, 10, 2)), ("us", dt.date(2025, 11, 26))],
)
def test_session_requests_a_run_for_that_session(market, session, instance):
    assert is_session(market, session)
    data = tick(market, at_six_pm(market, session), instance)
    assert data.skip_message is None
    [request] = data.run_requests
    assert request.partition_key == session.isoformat()
    assert request.tags["dagster/partition"] == session.isoformat()
    assert request.run_key == f"{market}-{session.isoformat()}"
    # Stable: a second evaluation of the same tick asks for the same run (deduplicated by key).
    [again] = tick(market, at_six_pm(market, session), instance).run_requests
    assert again.run_key == request.run_key
    # The tick time given in UTC means the same local session.
    [utc] = tick(market, at_six_pm(market, session).astimezone(dt.UTC), instance).run_requests
    assert utc.partition_key == session.isoformat()


@pytest.mark.parametrize(
    ("market", "holiday"),
    [
        ("krx", dt.date(2025, 10, 6)),  # Chuseok
        ("us", dt.date(2025, 11, 27)),  # Thanksgiving
    ],
)
def test_weekday_holiday_is_skipped_with_a_reason(market, holiday, instance):
    assert holiday.weekday() < 5 and not is_session(market, holiday)
    # Not a partition either, so nothing could ever be requested for it.
    assert holiday.isoformat() not in partitions_def(market).get_partition_keys()
    data = tick(market, at_six_pm(market, holiday), instance)
    assert data.run_requests == []
    assert holiday.isoformat() in data.skip_message
    assert "holiday" in data.skip_message
    assert MARKETS[market].calendar in data.skip_message


def test_us_evening_tick_is_not_mistaken_for_the_next_utc_day(instance):
    # 18:00 New York in November is 23:00 UTC; in summer 22:00 UTC. Either way it is the New
    # York session that is ingested, not the UTC date of the tick.
    when = dt.datetime(2025, 7, 3, 18, tzinfo=ZoneInfo("America/New_York"))
    [request] = tick("us", when, instance).run_requests
    assert request.partition_key == "2025-07-03"
    # The next day, Friday 2025-07-04, is Independence Day: skipped.
    data = tick("us", at_six_pm("us", dt.date(2025, 7, 4)), instance)
    assert data.run_requests == [] and "2025-07-04" in data.skip_message


def _indicator_evaluation(lake, instance, missing_rate: float):
    """Materialize the latest prices partition, then evaluate automation as the daemon does:
    one evaluation before (the cursor), one after."""
    key = partitions_def("krx").get_last_partition_key()
    market_data = synthetic_data(symbols=SYMBOLS, missing_rate=missing_rate)
    selection = dg.AssetSelection.assets(INDICATORS)
    before = dg.evaluate_automation_conditions(
        defs=defs, instance=instance, asset_selection=selection
    )
    assert before.total_requested == 0
    runs = Runner(lake, market_data, instance)
    runs.universe("krx")
    prices = runs("krx", "daily_prices", day=key)
    checks = {e.check_name: e.passed for e in prices.get_asset_check_evaluations()}
    after = dg.evaluate_automation_conditions(
        defs=defs, instance=instance, asset_selection=selection, cursor=before.cursor
    )
    return key, prices, checks, after


def test_indicators_requested_once_prices_pass_their_blocking_checks(lake, instance):
    key, prices, checks, after = _indicator_evaluation(lake, instance, missing_rate=0.0)
    assert prices.success and checks["price_relationships"] and checks["completeness"]
    assert after.get_requested_partitions(INDICATORS) == {key}
    assert after.total_requested == 1


def test_indicators_not_requested_when_completeness_fails(lake, instance):
    key, prices, checks, after = _indicator_evaluation(lake, instance, missing_rate=0.1)
    assert not prices.success  # a failed blocking check fails the run
    assert checks["price_relationships"] and not checks["completeness"]
    # Write-audit-publish: the failed batch is neither published nor recorded, so the session
    # never counts as updated and the indicators are not requested.
    assert instance.get_latest_materialization_event(dg.AssetKey(["krx", "daily_prices"])) is None
    assert after.get_requested_partitions(INDICATORS) == set()
    assert after.total_requested == 0
    [result] = after.results
    updated, *_ = result.child_results
    assert updated.true_subset.expensively_compute_partition_keys() == set()
