"""Freshness: the daily assets' freshness policies and the per-symbol freshness checks, on a
hand-made lake (universe and bars written through the lake itself)."""

import datetime as dt

import dagster as dg
import polars as pl
import pytest

from checks.markets import MARKETS, partition_dates, partitions_def
from checks.schemas import DAILY_PRICES, INTRADAY_BARS, UNIVERSE
from marketpipe_assets.automation import RANGE_END_TAG, RANGE_START_TAG, price_job
from marketpipe_assets.definitions import assets
from marketpipe_assets.freshness import (
    MAX_AGE_VARIABLE,
    NOW_VARIABLE,
    PARTITION_TAG,
    SYMBOL_FRESHNESS,
    daily_freshness_result,
    freshness_checks,
    freshness_job,
    freshness_schedules,
    intraday_freshness_result,
    with_freshness,
)
from marketpipe_assets.ge_check import ge_asset_check
from resources.market_data import MarketDataResource

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
THU, FRI = D(2026, 11, 12), D(2026, 11, 13)


def test_daily_check_names_a_symbol_without_a_bar_in_the_last_three_ingested_sessions(us_lake):
    write_daily(
        us_lake,
        {
            THU: ["AAA", "BBB", "CCC"],
            FRI: ["AAA", "CCC"],
            MON: ["AAA", "CCC"],
            TUE: ["AAA"],  # CCC misses one session only: the completeness check's business
        },
    )

    result = daily_freshness_result(us_lake, "us", TUE)

    assert not result.passed
    assert stale_names(result) == ["BBB"]
    assert result.metadata["stale"].value == [{"symbol": "BBB", "last_update": "2026-11-12"}]
    assert "BBB (last 2026-11-12)" in result.description
    assert result.metadata["judged_session"].value == "2026-11-17"
    assert result.metadata["window_start"].value == "2026-11-13"
    assert result.metadata["active_symbols"].value == 3  # OLD and NEW are not expected
    # Judged on Monday, BBB has missed only two sessions.
    assert daily_freshness_result(us_lake, "us", MON).passed


def test_daily_check_counts_only_ingested_sessions(us_lake):
    # A lone old partition judges only itself: sessions never materialized say nothing.
    write_daily(us_lake, {MON: ["AAA", "CCC"]})
    alone = daily_freshness_result(us_lake, "us", MON)
    assert alone.passed, alone.description
    assert alone.metadata["window_sessions"].value == 1
    # Three ingested sessions with gaps between them (FRI not ingested) still count as three.
    write_daily(us_lake, {THU: ["AAA", "CCC"], TUE: ["AAA", "CCC"]})
    assert stale_names(daily_freshness_result(us_lake, "us", TUE)) == ["BBB"]


def test_a_symbol_listed_inside_the_window_is_not_yet_stale(us_lake):
    universe = us_lake.read_table("universe", "us").with_columns(
        listing_date=pl.when(pl.col("symbol") == "BBB")
        .then(pl.lit(MON))
        .otherwise(pl.col("listing_date"))
    )
    us_lake.write_table("universe", "us", universe)
    write_daily(us_lake, {day: ["AAA", "CCC"] for day in (THU, FRI, MON, TUE)})

    result = daily_freshness_result(us_lake, "us", TUE)
    assert result.passed, result.description  # listed Monday: two chances, not three
    assert result.metadata["active_symbols"].value == 3


def test_a_session_never_ingested_fails_naming_it(us_lake):
    write_daily(us_lake, {MON: ["AAA", "BBB", "CCC"]})

    result = daily_freshness_result(us_lake, "us", TUE)

    assert not result.passed
    assert "no stored bars for the 2026-11-17 session" in result.description
    assert "materialize partition 2026-11-17" in result.description


def test_morning_schedule_judges_the_session_due_that_morning():
    schedule = next(s for s in freshness_schedules("us") if s.name == "us_daily_freshness")

    def tick(moment: dt.datetime):
        with dg.build_schedule_context(scheduled_execution_time=moment) as context:
            return schedule.evaluate_tick(context)

    (request,) = tick(new_york(WED, 9)).run_requests
    assert request.tags[PARTITION_TAG] == "2026-11-17"
    # Saturday morning owes Friday's session.
    (saturday,) = tick(new_york(D(2026, 11, 21), 9)).run_requests
    assert saturday.tags[PARTITION_TAG] == "2026-11-20"


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


def test_intraday_check_judges_only_the_materialized_session_while_it_trades(us_lake):
    now = US_OPEN_TUE + dt.timedelta(hours=5, minutes=30)  # Tuesday 15:00 New York
    write_intraday(us_lake, {"AAA": [US_OPEN_TUE - dt.timedelta(hours=17)]}, [MON, TUE])

    # Materializing Monday's bars while Tuesday trades does not judge Tuesday.
    monday = intraday_freshness_result(us_lake, "us", now, FOUR_HOURS, judged=MON)
    assert monday.passed and "not the session trading now" in monday.description
    tuesday = intraday_freshness_result(us_lake, "us", now, FOUR_HOURS, judged=TUE)
    assert stale_names(tuesday) == ["AAA", "BBB", "CCC"]


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


def test_freshness_jobs_judge_their_partition_and_intraday_marketpipe_now(
    us_lake, market_data, instance, monkeypatch
):
    write_daily(us_lake, {day: ["AAA", "CCC"] for day in (FRI, MON, TUE)})
    defs = checks_defs(us_lake, market_data)

    # The daily check judges the partition it is run for, whatever the clock says.
    monkeypatch.setenv(NOW_VARIABLE, "2030-01-01T15:00:00")
    daily = defs.resolve_job_def("us_daily_prices_freshness").execute_in_process(
        instance=instance, raise_on_error=False, tags={PARTITION_TAG: TUE.isoformat()}
    )
    assert daily.success  # a failed check is a result, not a failed run
    (evaluation,) = evaluations(daily).values()
    assert evaluation.check_name == SYMBOL_FRESHNESS and not evaluation.passed
    assert evaluation.partition == TUE.isoformat()
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


# Through the price job, on the synthetic source's defaults -----------------------------------
def price_job_defs(lake, market_data) -> dg.Definitions:
    return dg.Definitions(
        assets=[a for a in assets if a.key.path[0] == "us"],
        asset_checks=[*freshness_checks("us"), ge_asset_check("us")],
        jobs=[price_job("us"), freshness_job("us", "daily_prices")],
        resources={"lake": lake, "market_data": market_data},
    )


def test_price_job_judges_its_own_old_session_and_passes_on_default_synthetic_data(lake, instance):
    # The defaults: 1% of bars missing and 0.2% broken, so single bars are absent here.
    market_data = MarketDataResource(synthetic_symbols=200, landing_url="unused-landing")
    defs = price_job_defs(lake, market_data)
    universe = dg.materialize(
        [a for a in assets if a.key == dg.AssetKey(["us", "universe"])],
        instance=instance,
        resources={"lake": lake, "market_data": market_data},
    )
    assert universe.success
    keys = [k for k in partitions_def("us").get_partition_keys() if k <= "2025-03-31"][-8:]
    job = defs.resolve_job_def("us_daily_prices")

    ranged = job.execute_in_process(
        instance=instance, tags={RANGE_START_TAG: keys[0], RANGE_END_TAG: keys[-2]}
    )
    single = job.execute_in_process(instance=instance, partition_key=keys[-1])

    stored = lake.read_partitions("daily_prices", "us", DAILY_PRICES, columns=["symbol"])
    assert len(stored) < 8 * 200  # some bars are really missing or quarantined
    for result, judged in ((ranged, keys[-2]), (single, keys[-1])):
        checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
        # Every check of the asset ran, as from the UI's Materialize.
        assert set(checks) == {
            "price_relationships",
            "completeness",
            "suspicious_jumps",
            "great_expectations",
            SYMBOL_FRESHNESS,
        }
        freshness = checks[SYMBOL_FRESHNESS]
        assert freshness.passed, freshness.description
        assert freshness.metadata["judged_session"].value == judged

    # A symbol really missing its last three sessions is named.
    gone = stored["symbol"].unique().sort()[0]
    last_three = partition_dates(keys[-3:])
    kept = lake.read_partitions(
        "daily_prices", "us", DAILY_PRICES, first=last_three[0], last=last_three[-1]
    ).filter(pl.col("symbol") != gone)
    lake.write_partitions("daily_prices", "us", kept, last_three)
    morning = defs.resolve_job_def("us_daily_prices_freshness").execute_in_process(
        instance=instance, tags={PARTITION_TAG: keys[-1]}
    )
    (evaluation,) = morning.get_asset_check_evaluations()
    assert not evaluation.passed
    assert stale_names(dg.AssetCheckResult(passed=False, metadata=evaluation.metadata)) == [gone]
