"""Declarative automation over every partition: backfills, old sessions and failed checks."""

import dagster as dg
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from checks.markets import partition_dates
from checks.schemas import DAILY_PRICES, INDICATORS
from marketpipe_assets.declarative import AUTOMATION_SENSOR
from marketpipe_assets.definitions import defs
from marketpipe_assets.indicators import compute_indicators
from resources.market_data import MarketDataResource
from tests.conftest import SYMBOLS, materialize, recent_sessions

INDICATORS_KEY = dg.AssetKey(["krx", "indicators"])
SELECTION = dg.AssetSelection.assets(INDICATORS_KEY)


def evaluate(instance, cursor=None):
    return dg.evaluate_automation_conditions(
        defs=defs, instance=instance, asset_selection=SELECTION, cursor=cursor
    )


def store_range(datasets, keys, lake, market_data, instance):
    """One run over the range of `keys`, as a backfill or the CLI's --partition-range does."""
    return materialize(
        "krx",
        datasets,
        lake=lake,
        market_data=market_data,
        instance=instance,
        partition_range=(keys[0], keys[-1]),
    )


@pytest.fixture
def universe(lake, market_data, instance):
    assert materialize(
        "krx", ("universe",), lake=lake, market_data=market_data, instance=instance
    ).success


def test_the_automation_sensor_ships_running_and_replaces_dagsters_default():
    sensors = {s.name: s for s in defs.get_repository_def().sensor_defs}
    assert sensors[AUTOMATION_SENSOR].default_status == dg.DefaultSensorStatus.RUNNING
    assert "default_automation_condition_sensor" not in sensors


def test_a_range_backfill_requests_indicators_for_every_partition(
    lake, market_data, instance, universe
):
    keys = recent_sessions("krx", 10)
    start = evaluate(instance)
    assert start.total_requested == 0  # nothing was updated: no unrequested work at start
    prices = store_range(("daily_prices",), keys, lake, market_data, instance)
    assert prices.success
    after = evaluate(instance, start.cursor)
    # eager() would have asked for the latest partition only.
    assert after.get_requested_partitions(INDICATORS_KEY) == set(keys)
    # Once requested, the same update is not requested again.
    again = evaluate(instance, after.cursor)
    assert again.total_requested == 0


def test_a_run_that_stored_prices_and_indicators_together_is_not_repeated(
    lake, market_data, instance, universe
):
    keys = recent_sessions("krx", 3)
    start = evaluate(instance)
    both = store_range(("daily_prices", "indicators"), keys, lake, market_data, instance)
    assert both.success
    assert evaluate(instance, start.cursor).total_requested == 0


def test_only_sessions_whose_blocking_checks_passed_are_followed(lake, instance, universe):
    keys = recent_sessions("krx", 3)
    good = MarketDataResource(synthetic_symbols=SYMBOLS, synthetic_missing_rate=0.0)
    # A third of the symbols missing: completeness fails on that session.
    bad = MarketDataResource(synthetic_symbols=SYMBOLS, synthetic_missing_rate=0.34)

    def prices(key, source):
        return materialize(
            "krx",
            ("daily_prices",),
            lake=lake,
            market_data=source,
            instance=instance,
            partition_key=key,
        )

    # Evaluated between runs, as the daemon's sensor ticks do.
    cursor = evaluate(instance).cursor
    assert prices(keys[0], good).success
    tick = evaluate(instance, cursor)
    assert tick.get_requested_partitions(INDICATORS_KEY) == {keys[0]}
    assert not prices(keys[1], bad).success
    tick = evaluate(instance, tick.cursor)
    assert tick.get_requested_partitions(INDICATORS_KEY) == set()
    # Dagster keeps one status per check of the asset (a range run reports one result for the
    # range), so a held-back session waits for its inputs' next passing check: fixed, it follows.
    assert prices(keys[1], good).success
    tick = evaluate(instance, tick.cursor)
    assert tick.get_requested_partitions(INDICATORS_KEY) == {keys[1]}
    assert prices(keys[2], good).success
    tick = evaluate(instance, tick.cursor)
    assert tick.get_requested_partitions(INDICATORS_KEY) == {keys[2]}


def test_new_prices_for_an_old_session_refresh_every_later_indicator(
    lake, market_data, instance, universe
):
    keys = recent_sessions("krx", 40)
    assert store_range(("daily_prices", "indicators"), keys, lake, market_data, instance).success
    # The session's prices change (a corrected file, a re-run with another source).
    old = partition_dates([keys[5]])[0]
    stored = lake.read_partitions("daily_prices", "krx", DAILY_PRICES, first=old, last=old)
    doubled = stored.with_columns(
        (pl.col(c) * 2) for c in ("open", "high", "low", "close")
    ).with_columns(volume=pl.col("volume") * 3)
    lake.write_partitions("daily_prices", "krx", doubled, [old])
    start = evaluate(instance)
    result = materialize(
        "krx",
        ("indicators",),
        lake=lake,
        market_data=market_data,
        instance=instance,
        partition_key=keys[5],
    )
    assert result.success
    # Every later session's indicators equal a computation over the whole corrected history.
    history = lake.read_partitions("daily_prices", "krx", DAILY_PRICES)
    expected = compute_indicators(history).filter(pl.col("trade_date") >= old)
    stored_indicators = lake.read_partitions("indicators", "krx", INDICATORS, first=old)
    assert_frame_equal(
        stored_indicators.sort("symbol", "trade_date"),
        expected.select(INDICATORS.names()).sort("symbol", "trade_date"),
    )
    # Dagster sees the later partitions as updated, with the reason.
    for key in keys[6:]:
        [record] = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=INDICATORS_KEY, asset_partitions=[key]), limit=1
        ).records
        metadata = record.asset_materialization.metadata
        assert metadata["refreshed_because_prices_changed_from"].value == keys[5]
    [materialized] = [
        e.materialization
        for e in result.get_asset_materialization_events()
        if e.partition == keys[5]
    ]
    assert materialized.metadata["later_sessions_refreshed"].value == len(keys[6:])
    # Nothing is asked for again: the refreshed partitions were not requested by automation.
    assert evaluate(instance, start.cursor).total_requested == 0
