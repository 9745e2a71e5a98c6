"""The warehouse assets on the machine's real Postgres: exact copies of the lake, idempotent
re-loads, range backfills, replaced partitions, the bar views, and failed loads that keep data."""

import datetime as dt
import time
from concurrent.futures import ThreadPoolExecutor

import dagster as dg
import polars as pl
import psycopg2
import pytest

from checks.markets import partition_dates
from checks.schemas import DAILY_PRICES, INDICATORS
from marketpipe_assets.automation import RANGE_END_TAG, RANGE_START_TAG
from marketpipe_assets.warehouse import MATCHES_LAKE, warehouse_asset
from resources.warehouse import TABLES, WarehouseResource
from tests.conftest import recent_sessions
from tests.postgres_db import fresh_database


@pytest.fixture
def warehouse():
    with fresh_database() as url:
        yield WarehouseResource(url=url)


def load(market, lake, warehouse, instance, keys: list[str]) -> dg.ExecuteInProcessResult:
    """Materialize <market>/warehouse for the keys as one run (a range when more than one)."""
    tags = {RANGE_START_TAG: keys[0], RANGE_END_TAG: keys[-1]} if len(keys) > 1 else {}
    return dg.materialize(
        [warehouse_asset(market)],
        instance=instance,
        resources={"lake": lake, "warehouse": warehouse},
        partition_key=keys[0] if len(keys) == 1 else None,
        tags=tags,
        raise_on_error=False,
    )


def stored(warehouse, table: str, market: str) -> pl.DataFrame:
    with warehouse.transaction() as cur:
        cur.execute(
            f"SELECT {', '.join(TABLES[table])} FROM {table} WHERE market = %s",  # fixed names
            (market,),
        )
        rows = cur.fetchall()
    return pl.DataFrame(rows, schema=TABLES[table], orient="row").sort("symbol", "trade_date")


def lake_rows(lake, table: str, market: str, keys: list[str]) -> pl.DataFrame:
    days = partition_dates(keys)
    frame = lake.read_partitions(table, market, TABLES[table], first=days[0], last=days[-1])
    return frame.sort("symbol", "trade_date")


def assert_mirrors_lake(lake, warehouse, market, keys):
    for table in TABLES:
        expected = lake_rows(lake, table, market, keys)
        assert len(expected) > 0, f"the lake has no {table} for {keys}"
        assert stored(warehouse, table, market).equals(expected), f"{market} {table} differs"


def check_passed(result: dg.ExecuteInProcessResult) -> bool:
    (evaluation,) = result.get_asset_check_evaluations()
    assert evaluation.check_name == MATCHES_LAKE
    return evaluation.passed


def prices_and_indicators(runs, market, keys):
    rng = (keys[0], keys[-1]) if len(keys) > 1 else None
    result = runs(market, "daily_prices", "indicators", day=None if rng else keys[0], days=rng)
    assert result.success


def test_a_load_and_a_reload_hold_exactly_the_lakes_rows(with_universe, runs, instance, warehouse):
    lake, keys = with_universe, recent_sessions("us", 1)
    prices_and_indicators(runs, "us", keys)

    first = load("us", lake, warehouse, instance, keys)
    assert first.success and check_passed(first)
    assert_mirrors_lake(lake, warehouse, "us", keys)

    again = load("us", lake, warehouse, instance, keys)  # idempotent: replaces, never appends
    assert again.success and check_passed(again)
    assert_mirrors_lake(lake, warehouse, "us", keys)
    metadata = again.get_asset_materialization_events()[0].materialization.metadata
    assert metadata["daily_prices_rows_replaced"].value == metadata["daily_prices_rows"].value > 0


def test_a_range_backfill_is_one_run_and_leaves_other_markets_alone(
    with_universe, runs, instance, warehouse
):
    lake, keys, krx_key = with_universe, recent_sessions("us", 8), recent_sessions("krx", 1)
    prices_and_indicators(runs, "us", keys)
    prices_and_indicators(runs, "krx", krx_key)
    assert load("krx", lake, warehouse, instance, krx_key).success

    result = load("us", lake, warehouse, instance, keys)
    assert result.success and check_passed(result)
    assert len(instance.get_runs()) == 2 + 2 + 2  # universes, prices+indicators, loads
    assert instance.get_materialized_partitions(dg.AssetKey(["us", "warehouse"])) == set(keys)
    assert_mirrors_lake(lake, warehouse, "us", keys)
    assert_mirrors_lake(lake, warehouse, "krx", krx_key)


def test_a_changed_lake_partition_replaces_exactly_its_session(
    with_universe, runs, instance, warehouse
):
    lake, keys = with_universe, recent_sessions("us", 3)
    prices_and_indicators(runs, "us", keys)
    assert load("us", lake, warehouse, instance, keys).success
    day = partition_dates(keys)[1]

    old = lake.read_partitions("daily_prices", "us", DAILY_PRICES, first=day, last=day)
    dropped = old["symbol"][0]
    new = old.filter(pl.col("symbol") != dropped).with_columns(close=pl.col("close") + 1)
    lake.write_partitions("daily_prices", "us", new, [day])
    assert load("us", lake, warehouse, instance, [keys[1]]).success

    assert_mirrors_lake(lake, warehouse, "us", keys)  # the new session, the other two unchanged
    prices = stored(warehouse, "daily_prices", "us").filter(pl.col("trade_date") == day)
    assert dropped not in prices["symbol"] and len(prices) == len(old) - 1


# Two weeks that cross a month end: Mon 2024-01-29 .. Fri 2024-02-02, then Mon 5 and Tue 6 Feb.
VIEW_DAYS = [dt.date(2024, 1, d) for d in (29, 30, 31)] + [
    dt.date(2024, 2, d) for d in (1, 2, 5, 6)
]


def hand_bars() -> pl.DataFrame:
    """Session i: open i+1, high i+2, low i, close i+1.5, volume 100(i+1); BBB is AAA x 10."""
    rows = []
    for i, day in enumerate(VIEW_DAYS):
        for symbol, k in (("AAA", 1), ("BBB", 10)):
            rows.append(
                (symbol, day, k * (i + 1), k * (i + 2), k * i, k * (i + 1.5), 100 * (i + 1))
            )
    frame = pl.DataFrame(
        rows, schema=list(DAILY_PRICES)[:-1], orient="row", infer_schema_length=None
    )
    return frame.with_columns(source=pl.lit("hand")).cast(dict(DAILY_PRICES))


def view(warehouse, name: str, columns: str) -> list[tuple]:
    with warehouse.transaction() as cur:
        cur.execute(f"SELECT {columns} FROM {name} WHERE market = 'us' ORDER BY 1, 2")  # fixed
        return cur.fetchall()


def test_the_views_hold_weekly_monthly_and_latest_bars_after_each_load(lake, instance, warehouse):
    lake.write_partitions("daily_prices", "us", hand_bars(), VIEW_DAYS)
    keys = [d.isoformat() for d in VIEW_DAYS]
    assert load("us", lake, warehouse, instance, keys).success

    bars = "symbol, {}, open, high, low, close, volume, sessions"
    assert view(warehouse, "weekly_bars", bars.format("week_start")) == [
        ("AAA", dt.date(2024, 1, 29), 1.0, 6.0, 0.0, 5.5, 1500, 5),
        ("AAA", dt.date(2024, 2, 5), 6.0, 8.0, 5.0, 7.5, 1300, 2),
        ("BBB", dt.date(2024, 1, 29), 10.0, 60.0, 0.0, 55.0, 1500, 5),
        ("BBB", dt.date(2024, 2, 5), 60.0, 80.0, 50.0, 75.0, 1300, 2),
    ]
    assert view(warehouse, "monthly_bars", bars.format("month_start")) == [
        ("AAA", dt.date(2024, 1, 1), 1.0, 4.0, 0.0, 3.5, 600, 3),
        ("AAA", dt.date(2024, 2, 1), 4.0, 8.0, 3.0, 7.5, 2200, 4),
        ("BBB", dt.date(2024, 1, 1), 10.0, 40.0, 0.0, 35.0, 600, 3),
        ("BBB", dt.date(2024, 2, 1), 40.0, 80.0, 30.0, 75.0, 2200, 4),
    ]
    latest = "symbol, trade_date, close, volume"
    assert view(warehouse, "latest_prices", latest) == [
        ("AAA", dt.date(2024, 2, 6), 7.5, 700),
        ("BBB", dt.date(2024, 2, 6), 75.0, 700),
    ]

    # A later load of the last session refreshes the views: AAA's new close everywhere.
    last = hand_bars().filter(pl.col("trade_date") == VIEW_DAYS[-1])
    last = last.with_columns(close=pl.when(pl.col("symbol") == "AAA").then(7.0).otherwise("close"))
    lake.write_partitions("daily_prices", "us", last, VIEW_DAYS[-1:])
    assert load("us", lake, warehouse, instance, keys[-1:]).success
    assert view(warehouse, "latest_prices", latest)[0] == ("AAA", dt.date(2024, 2, 6), 7.0, 700)
    assert view(warehouse, "weekly_bars", "symbol, week_start, close")[1] == (
        "AAA",
        dt.date(2024, 2, 5),
        7.0,
    )
    assert view(warehouse, "monthly_bars", "symbol, month_start, close")[1][2] == 7.0


def test_a_failed_load_leaves_the_previous_rows_intact(with_universe, runs, instance, warehouse):
    lake, keys = with_universe, recent_sessions("us", 2)
    prices_and_indicators(runs, "us", keys)
    assert load("us", lake, warehouse, instance, keys).success
    before = {t: stored(warehouse, t, "us") for t in TABLES}

    # Bad data in the lake: a duplicated bar. The DELETE of the session runs first; the COPY
    # then breaks the primary key, and the whole transaction must roll back.
    day = partition_dates(keys)[1]
    good = lake.read_partitions("daily_prices", "us", DAILY_PRICES, first=day, last=day)
    lake.write_partitions("daily_prices", "us", pl.concat([good, good.head(1)]), [day])
    result = load("us", lake, warehouse, instance, keys)

    assert not result.success
    error = result.failure_data_for_node("us__warehouse").error
    message = error.cause.message if error.cause else error.message
    assert "rolled back" in message and "UniqueViolation" in message and "us:" in message
    for table in TABLES:
        assert stored(warehouse, table, "us").equals(before[table]), f"{table} changed"
    assert len(before["indicators"]) and len(
        lake.read_partitions("indicators", "us", INDICATORS, first=day, last=day)
    )


def test_an_unreachable_warehouse_names_the_variable(lake, instance):
    unreachable = WarehouseResource(url="postgresql+psycopg2://nobody@127.0.0.1:1/none")
    with pytest.raises(Exception, match="MARKETPIPE_WAREHOUSE_URL"), unreachable.transaction():
        pass
    assert psycopg2  # the driver the resource uses is the one dagster-postgres brings


def test_the_warehouse_is_optional_and_wires_into_the_definitions(monkeypatch, lake, market_data):
    from marketpipe_assets.definitions import assets
    from marketpipe_assets.warehouse import warehouse_assets, warehouse_resources

    monkeypatch.delenv("MARKETPIPE_WAREHOUSE_URL", raising=False)
    assert warehouse_assets() == [] and warehouse_resources() == {}

    monkeypatch.setenv("MARKETPIPE_WAREHOUSE_URL", "postgresql://postgres@127.0.0.1/unused")
    added = warehouse_assets()
    assert [a.key.to_user_string() for a in added] == ["krx/warehouse", "us/warehouse"]
    defs = dg.Definitions(
        assets=[a for a in assets if a.key.path[-1] != "warehouse"] + added,
        resources={"lake": lake, "market_data": market_data, **warehouse_resources()},
    )
    dg.Definitions.validate_loadable(defs)  # both deps exist in the graph; the resource binds
    graph = defs.resolve_asset_graph()
    assert graph.get(dg.AssetKey(["us", "warehouse"])).parent_keys == {
        dg.AssetKey(["us", "daily_prices"]),
        dg.AssetKey(["us", "indicators"]),
    }


def test_a_connection_killed_mid_load_leaves_the_previous_rows_intact(
    with_universe, runs, instance, warehouse
):
    """The load replaces daily_prices, then waits on a row lock held on indicators; killing its
    connection there must undo the daily_prices replacement too (one transaction)."""
    lake, keys = with_universe, recent_sessions("us", 2)
    prices_and_indicators(runs, "us", keys)
    assert load("us", lake, warehouse, instance, keys).success
    before = stored(warehouse, "daily_prices", "us")
    days = partition_dates(keys)
    changed = lake_rows(lake, "daily_prices", "us", keys).with_columns(close=pl.col("close") + 1)
    lake.write_partitions("daily_prices", "us", changed, days)

    blocker, watcher = warehouse.connect(), warehouse.connect()
    watcher.autocommit = True  # pg_stat_activity is a snapshot per transaction: poll outside one
    pool = ThreadPoolExecutor(1)
    try:
        with blocker.cursor() as cur:
            cur.execute("SELECT 1 FROM indicators WHERE market = 'us' FOR UPDATE")
        running = pool.submit(load, "us", lake, warehouse, instance, keys)
        killed = terminate_lock_waiter(watcher)
    finally:
        blocker.rollback()  # releases the rows whatever happened, so the load cannot hang
        blocker.close()
        watcher.close()
    result = running.result(timeout=120)
    pool.shutdown()

    assert killed and not result.success
    error = result.failure_data_for_node("us__warehouse").error
    assert "rolled back" in (error.cause.message if error.cause else error.message)
    assert stored(warehouse, "daily_prices", "us").equals(before)


def terminate_lock_waiter(admin, timeout: float = 60.0) -> bool:
    """Terminate the backend of this database that waits on a lock; False if none appears."""
    deadline = time.monotonic() + timeout
    with admin.cursor() as cur:
        while time.monotonic() < deadline:
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            if cur.fetchall():
                return True
            time.sleep(0.05)
    return False
