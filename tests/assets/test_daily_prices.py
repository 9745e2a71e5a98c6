"""Daily prices through real Dagster runs on a temporary instance and lake: clean storage,
quarantine, completeness, holidays, re-runs and backfills (CONTRACT sections 2 and 3)."""

import datetime as dt
import shutil
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from checks.markets import is_session, partitions_def
from checks.rulebook import DAILY_PRICE_RULES, validate
from checks.schemas import DAILY_PRICES, INDICATORS, UNIVERSE
from marketpipe_assets.automation import RANGE_START_TAG, market_schedule
from resources.lake import LakeResource
from resources.market_data import MarketDataResource
from resources.sources.synthetic import SyntheticSource
from tests.conftest import Runner, recent_sessions, synthetic_data
from tests.metadata_values import by_partition, counts

RULE_NAMES = {r.name for r in DAILY_PRICE_RULES}
KEY = ["symbol", "trade_date"]


# Helpers --------------------------------------------------------------------------------------
def part_file(lake: LakeResource, dataset: str, market: str, day: str) -> Path:
    return Path(lake.url) / dataset / f"market={market}" / f"date={day}" / "part-0.parquet"


def quarantine_dir(lake: LakeResource, market: str, day: str) -> Path:
    return Path(lake.url) / "quarantine" / "daily_prices" / f"market={market}" / f"date={day}"


def parquet_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.parquet")) if folder.exists() else []


def check_evaluations(result: dg.ExecuteInProcessResult) -> dict[str, object]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def materializations(result: dg.ExecuteInProcessResult, market: str, dataset: str) -> list:
    key = dg.AssetKey([market, dataset])
    return [e for e in result.get_asset_materialization_events() if e.asset_key == key]


def synthetic(market_data: MarketDataResource) -> SyntheticSource:
    return SyntheticSource(
        symbols=market_data.synthetic_symbols,
        seed=market_data.synthetic_seed,
        missing_rate=market_data.synthetic_missing_rate,
        bad_row_rate=market_data.synthetic_bad_row_rate,
    )


def raw_bars(lake, market_data, market: str, days: list[str]) -> pl.DataFrame:
    """What the source produces for these sessions and the stored universe's symbols."""
    symbols = lake.read_table("universe", market)["symbol"].to_list()
    return synthetic(market_data).daily_bars(
        market, [dt.date.fromisoformat(d) for d in days], symbols
    )


def active_symbols(universe: pl.DataFrame, day: str) -> set[str]:
    d = dt.date.fromisoformat(day)
    return set(
        universe.filter(
            (pl.col("listing_date") <= d)
            & (pl.col("delisting_date").is_null() | (pl.col("delisting_date") > d))
        )["symbol"]
    )


def expected_rules(row: dict, duplicated: bool) -> set[str]:
    """The rules a bar breaks, written out independently of the rulebook's expressions."""
    prices = [row[c] for c in ("open", "high", "low", "close")]
    required = [row["symbol"], row["trade_date"], *prices, row["volume"]]
    o, h, lo, c = prices
    broken = set()
    if any(v is None for v in required):
        broken.add("required_fields")
    if any(v is not None and v <= 0 for v in prices):
        broken.add("positive_prices")
    if h is not None and lo is not None and h < lo:
        broken.add("high_gte_low")
    if o is not None and ((lo is not None and o < lo) or (h is not None and o > h)):
        broken.add("open_within_range")
    if c is not None and ((lo is not None and c < lo) or (h is not None and c > h)):
        broken.add("close_within_range")
    if row["volume"] is not None and row["volume"] < 0:
        broken.add("non_negative_volume")
    if duplicated:
        broken.add("unique_symbol_date")
    return broken


def assert_clean(frame: pl.DataFrame) -> None:
    """Every stored row satisfies every price rule (checked without the rulebook)."""
    assert frame.null_count().sum_horizontal().item() == 0
    assert frame.filter(
        (pl.col("low") <= 0)
        | (pl.col("high") < pl.col("low"))
        | ~pl.col("open").is_between(pl.col("low"), pl.col("high"))
        | ~pl.col("close").is_between(pl.col("low"), pl.col("high"))
        | (pl.col("volume") < 0)
    ).is_empty()
    assert not frame.select(pl.struct(KEY).is_duplicated().any()).item()


def pick_session(market: str, predicate, lookback: int = 60) -> str:
    """The most recent past session for which `predicate(key)` holds (computed from the source,
    so the test does not depend on which day it runs)."""
    for key in reversed(recent_sessions(market, lookback)):
        if predicate(key):
            return key
    pytest.fail(f"no {market} session in the last {lookback} satisfies the test's precondition")


def by_key(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.sort(KEY, maintain_order=True)


# 1. A normal session --------------------------------------------------------------------------
@pytest.mark.parametrize("market", ["krx", "us"])
def test_normal_session_is_stored_clean_and_passes_blocking_checks(market, lake, instance):
    # The default rates (1% missing, 0.2% bad) on 200 symbols: with the 60-symbol fixture three
    # missing bars already make a session fail completeness (about 3% of sessions).
    market_data = synthetic_data(symbols=200)
    runs = Runner(lake, market_data, instance)
    runs.universe(market)
    day = recent_sessions(market, 1)[0]
    result = runs(market, "daily_prices", day=day)
    assert result.success

    path = part_file(lake, "daily_prices", market, day)
    assert parquet_files(path.parent) == ["part-0.parquet"]
    stored = pl.read_parquet(path)
    assert {c: stored.schema[c] for c in DAILY_PRICES} == dict(DAILY_PRICES)
    assert stored["trade_date"].unique().to_list() == [dt.date.fromisoformat(day)]
    assert stored["source"].unique().to_list() == ["synthetic"]
    assert_clean(stored)

    # Exactly the source's valid bars, one per active symbol that has a bar.
    expected = validate(raw_bars(lake, market_data, market, [day])).clean
    assert_frame_equal(by_key(stored.select(DAILY_PRICES.names())), by_key(expected))
    universe = lake.read_table("universe", market)
    assert set(stored["symbol"]) <= active_symbols(universe, day)
    assert len(stored) >= 0.95 * len(active_symbols(universe, day))

    checks = check_evaluations(result)
    assert checks["price_relationships"].passed
    assert checks["completeness"].passed
    assert checks["price_relationships"].blocking and checks["completeness"].blocking
    (event,) = materializations(result, market, "daily_prices")
    assert event.partition == day
    metadata = event.materialization.metadata
    assert metadata["rows"].value == len(stored)
    assert isinstance(metadata["rows"], dg.IntMetadataValue)
    assert isinstance(metadata["quarantined"], dg.IntMetadataValue)
    assert isinstance(metadata["path"], dg.PathMetadataValue)
    assert metadata["path"].value.endswith(f"daily_prices/market={market}")
    assert counts(metadata["rows_by_source"]) == {"synthetic": len(stored)}
    assert isinstance(metadata["source_failures"], dg.TableMetadataValue)
    assert isinstance(metadata["preview"], dg.MarkdownMetadataValue)
    active = len(active_symbols(universe, day))
    assert metadata["completeness_pct"].value == pytest.approx(100 * len(stored) / active, 0.01)
    assert not any(name.startswith("range_") for name in metadata)  # one session: its own


def test_a_range_run_records_each_sessions_own_facts_on_its_partition(lake, instance):
    market = "us"
    market_data = synthetic_data(symbols=200, bad_row_rate=0.01)
    runs = Runner(lake, market_data, instance)
    runs.universe(market)
    keys = recent_sessions(market, 6)
    result = runs(market, "daily_prices", "indicators", days=(keys[0], keys[-1]))
    assert result.success

    prices = by_partition(result, dg.AssetKey([market, "daily_prices"]))
    indicators = by_partition(result, dg.AssetKey([market, "indicators"]))
    assert set(prices) == set(indicators) == set(keys)
    total = 0
    for day in keys:
        stored = pl.read_parquet(part_file(lake, "daily_prices", market, day))
        quarantined = (
            pl.read_parquet(quarantine_dir(lake, market, day))
            if parquet_files(quarantine_dir(lake, market, day))
            else pl.DataFrame()
        )
        meta = prices[day]
        assert meta["rows"].value == len(stored)  # that day's rows, not the range's
        assert meta["quarantined"].value == len(quarantined)
        assert counts(meta["rows_by_source"]) == {"synthetic": len(stored)}
        assert indicators[day]["rows"].value == len(stored)
        assert 95 <= meta["completeness_pct"].value <= 100
        # The range's figures are on every partition, under names that say so.
        assert meta["range_rows"].value == sum(
            len(pl.read_parquet(part_file(lake, "daily_prices", market, k))) for k in keys
        )
        assert (meta["range_sessions"].value, meta["range_first"].value) == (6, keys[0])
        assert "sessions" not in meta and "preview" not in meta
        total += len(stored)
    assert len({prices[day]["quarantined"].value for day in keys}) > 1  # really per session
    assert prices[keys[0]]["range_rows"].value == total
    assert prices[keys[0]]["range_min_completeness_pct"].value == min(
        prices[day]["completeness_pct"].value for day in keys
    )


# 2. Bad rows are quarantined with their rules -------------------------------------------------
def test_bad_rows_are_quarantined_with_their_rules_and_nothing_is_lost(lake, instance):
    market = "krx"
    # 2% bad rows and none missing: completeness (blocking) holds, so the batch is published.
    # Over ~900 active symbols every 2026 session has 11 or more bad rows and completeness
    # >= 96% (200 symbols at 3% gave some sessions 4 bad rows).
    market_data = synthetic_data(symbols=1000, missing_rate=0.0, bad_row_rate=0.02)
    runs = Runner(lake, market_data, instance)
    runs.universe(market)
    day = recent_sessions(market, 1)[0]
    raw = raw_bars(lake, market_data, market, [day])
    reference = validate(raw)
    assert len(reference.quarantined) >= 5, "the source should have injected bad rows"

    result = runs(market, "daily_prices", day=day)
    assert [e.partition for e in materializations(result, market, "daily_prices")] == [day]

    stored = pl.read_parquet(part_file(lake, "daily_prices", market, day))
    qdir = quarantine_dir(lake, market, day)
    assert parquet_files(qdir) == ["part-0.parquet"]
    quarantined = pl.read_parquet(qdir / "part-0.parquet")

    # Schema: the dataset's columns plus violations, a list of rule names.
    assert quarantined.schema["violations"] == pl.List(pl.String)
    assert {c: quarantined.schema[c] for c in DAILY_PRICES} == dict(DAILY_PRICES)

    # Same rows and rule names as the rulebook applied to the raw bars ...
    order = [*KEY, "open", "high", "low", "close", "volume"]
    normalise = pl.col("violations").list.sort()
    assert_frame_equal(
        quarantined.select(*DAILY_PRICES.names(), normalise).sort(order, nulls_last=True),
        reference.quarantined.select(*DAILY_PRICES.names(), normalise).sort(order, nulls_last=True),
    )
    # ... and those names are right when worked out by hand from each row.
    duplicated = set(raw.group_by(KEY).len().filter(pl.col("len") > 1).select(KEY).iter_rows())
    for row in quarantined.iter_rows(named=True):
        key = (row["symbol"], row["trade_date"])
        assert set(row["violations"]) == expected_rules(row, key in duplicated), row
        assert set(row["violations"]) <= RULE_NAMES
    assert len({v for vs in quarantined["violations"] for v in vs}) >= 3

    # Never stored, nothing lost, and the stored partition is clean.
    assert stored.join(quarantined, on=KEY, how="semi").is_empty()
    assert len(stored) + len(quarantined) == len(raw)
    assert_clean(stored)
    checks = check_evaluations(result)
    assert checks["price_relationships"].passed
    assert checks["price_relationships"].metadata["quarantined_rows"].value == len(quarantined)


# 3. Completeness ------------------------------------------------------------------------------
def _completeness(lake, market_data, market, universe, day) -> tuple[int, int]:
    """(active symbols, active symbols with a valid bar) for the session, from the source."""
    active = active_symbols(universe, day)
    clean = validate(raw_bars(lake, market_data, market, [day])).clean
    return len(active), len(set(clean["symbol"]) & active)


def test_incomplete_session_fails_completeness_and_blocks_indicators(lake, instance):
    market = "krx"
    market_data = synthetic_data(symbols=200, missing_rate=0.10, bad_row_rate=0.0)
    runs = Runner(lake, market_data, instance)
    universe = runs.universe(market)

    def below_threshold(day):
        active, present = _completeness(lake, market_data, market, universe, day)
        return present / active < 0.95

    day = pick_session(market, below_threshold)
    result = runs(market, "daily_prices", "indicators", day=day)

    assert not result.success
    checks = check_evaluations(result)
    assert not checks["completeness"].passed
    assert checks["completeness"].metadata["sessions_below_threshold"].value == [day]
    assert checks["price_relationships"].passed
    # Nothing is published (write-audit-publish); the rejected batch is kept for inspection.
    assert not part_file(lake, "daily_prices", market, day).exists()
    assert not materializations(result, market, "daily_prices")
    [rejected] = (Path(lake.url) / "_rejected" / "daily_prices" / f"market={market}").iterdir()
    assert (rejected / f"daily_prices/market={market}/date={day}/part-0.parquet").exists()
    # Blocking: the indicators step never ran in this run and wrote nothing.
    assert result.is_node_skipped("krx__indicators") or result.is_node_untouched("krx__indicators")
    assert not materializations(result, market, "indicators")
    started = {
        r.step_key for r in instance.all_logs(result.run_id, of_type=dg.DagsterEventType.STEP_START)
    }
    assert started == {"krx__daily_prices"}
    assert not part_file(lake, "indicators", market, day).exists()
    assert not (Path(lake.url) / "indicators").exists()


def test_nearly_complete_session_passes_and_reports_missing_rows(lake, instance):
    market = "us"
    market_data = synthetic_data(symbols=200, missing_rate=0.02, bad_row_rate=0.0)
    runs = Runner(lake, market_data, instance)
    universe = runs.universe(market)
    counts = {}

    def partial(day):
        counts[day] = _completeness(lake, market_data, market, universe, day)
        active, present = counts[day]
        return 0.95 <= present / active < 1

    day = pick_session(market, partial)
    active, present = counts[day]
    result = runs(market, "daily_prices", "indicators", day=day)

    assert result.success
    completeness = check_evaluations(result)["completeness"]
    assert completeness.passed
    assert "accepted" in completeness.description
    assert "missing" in completeness.description
    metadata = {k: v.value for k, v in completeness.metadata.items()}
    assert metadata["sessions_accepted_with_missing_rows"] == 1
    assert metadata["missing_symbol_days"] == active - present > 0
    assert metadata["min_completeness_pct"] == pytest.approx(100 * present / active, abs=0.01)
    assert metadata["threshold_pct"] == 95.0
    assert f"{100 * present / active:.2f}%" in completeness.description
    assert part_file(lake, "indicators", market, day).exists()


# 4. Holidays ---------------------------------------------------------------------------------
def test_holidays_are_not_partitions_and_half_days_materialize(with_universe, runs, lake, instance):
    chuseok, thanksgiving, black_friday = "2025-10-06", "2025-11-27", "2025-11-28"
    assert dt.date.fromisoformat(chuseok).weekday() < 5
    assert not is_session("krx", dt.date.fromisoformat(chuseok))
    assert not is_session("us", dt.date.fromisoformat(thanksgiving))
    krx_keys = set(partitions_def("krx").get_partition_keys())
    us_keys = set(partitions_def("us").get_partition_keys())
    assert chuseok not in krx_keys and thanksgiving not in us_keys
    # The weekday cron's neighbours of those holidays are partitions; holidays are only excluded
    # on their own market.
    assert {"2025-10-02", "2025-10-10"} <= krx_keys and chuseok in us_keys
    assert {"2025-11-26", black_friday} <= us_keys and thanksgiving in krx_keys
    # The 18:00 schedule skips a holiday rather than requesting a run that could fail.
    seoul = dt.datetime(2025, 10, 6, 18, tzinfo=dt.timezone(dt.timedelta(hours=9)))
    tick = market_schedule("krx").evaluate_tick(
        dg.build_schedule_context(instance=instance, scheduled_execution_time=seoul)
    )
    assert not tick.run_requests and tick.skip_message

    # A range over the holiday week stores only sessions.
    krx = runs("krx", "daily_prices", "indicators", days=("2025-10-02", "2025-10-10"))
    assert krx.success
    stored_days = sorted(p.name for p in (Path(lake.url) / "daily_prices" / "market=krx").iterdir())
    assert stored_days == ["date=2025-10-02", "date=2025-10-10"]
    assert {e.partition for e in materializations(krx, "krx", "daily_prices")} == {
        "2025-10-02",
        "2025-10-10",
    }

    # The US half day is an ordinary partition.
    us = runs("us", "daily_prices", "indicators", day=black_friday)
    assert us.success
    assert all(e.passed for e in us.get_asset_check_evaluations())
    stored = pl.read_parquet(part_file(lake, "daily_prices", "us", black_friday))
    assert len(stored) > 0
    assert stored["trade_date"].unique().to_list() == [dt.date(2025, 11, 28)]
    assert part_file(lake, "indicators", "us", black_friday).exists()


# 5. Re-runs replace -------------------------------------------------------------------------
def test_rerun_replaces_the_partition_and_its_quarantine(lake, instance):
    market = "krx"
    day = recent_sessions(market, 1)[0]
    folder = part_file(lake, "daily_prices", market, day).parent
    qdir = quarantine_dir(lake, market, day)
    previous = None
    seeds = [(11, 0.03), (12, 0.03), (13, 0.0)]  # few enough bad rows for completeness to hold
    for seed, bad_rate in seeds:
        market_data = synthetic_data(
            symbols=200, missing_rate=0.0, seed=seed, bad_row_rate=bad_rate
        )
        runs = Runner(lake, market_data, instance)
        runs.universe(market)
        expected = validate(raw_bars(lake, market_data, market, [day]))
        assert (len(expected.quarantined) > 0) == (bad_rate > 0)
        result = runs(market, "daily_prices", day=day)
        assert [e.partition for e in materializations(result, market, "daily_prices")] == [day]
        assert check_evaluations(result)["price_relationships"].passed

        # Exactly one file and no leftovers; its content is this run's data.
        assert sorted(p.name for p in folder.iterdir()) == ["part-0.parquet"]
        stored = pl.read_parquet(folder / "part-0.parquet")
        assert_frame_equal(by_key(stored), by_key(expected.clean))
        if previous is not None:
            assert not stored.equals(previous)
        previous = stored

        if len(expected.quarantined):
            assert parquet_files(qdir) == ["part-0.parquet"]
            quarantined = pl.read_parquet(qdir / "part-0.parquet")
            assert len(quarantined) == len(expected.quarantined)
            assert (
                quarantined.select(KEY).sort(KEY).equals(expected.quarantined.select(KEY).sort(KEY))
            )
        else:
            assert parquet_files(qdir) == []

    # A reader of the whole lake sees the last run's rows only.
    everything = pl.scan_parquet(f"{lake.url}/daily_prices/**/*.parquet", hive_partitioning=True)
    assert everything.select(pl.len()).collect().item() == len(previous)
    quarantine = list((Path(lake.url) / "quarantine").rglob("*.parquet"))
    assert quarantine == []


# 6. A backfill equals day-by-day runs ---------------------------------------------------------
def test_range_backfill_is_one_run_and_equals_day_by_day_runs(tmp_path, instance):
    market = "krx"
    # No missing bars, so no session fails completeness and blocks indicators; a few bad rows.
    market_data = synthetic_data(symbols=100, missing_rate=0.0)
    sessions = recent_sessions(market, 30)
    history, backfill = sessions[:22], sessions[22:]
    assert len(backfill) == 8
    range_lake = LakeResource(url=str(tmp_path / "range"))
    daily_lake = LakeResource(url=str(tmp_path / "daily"))
    in_range, day_by_day = (
        Runner(range_lake, market_data, instance),
        Runner(daily_lake, market_data, instance),
    )
    in_range.universe(market)
    # Earlier prices, so the indicators compared below have values, not only nulls; both lakes
    # start from this same stored state.
    result = in_range(market, "daily_prices", days=(history[0], history[-1]))
    assert result.success
    shutil.copytree(range_lake.url, daily_lake.url)

    runs_before = len(instance.get_runs())
    ranged = in_range(market, "daily_prices", "indicators", days=(backfill[0], backfill[-1]))
    assert ranged.success
    assert len(instance.get_runs()) == runs_before + 1
    tagged = instance.get_runs(filters=dg.RunsFilter(tags={RANGE_START_TAG: backfill[0]}))
    assert [r.run_id for r in tagged] == [ranged.run_id]
    for dataset in ("daily_prices", "indicators"):
        assert sorted(e.partition for e in materializations(ranged, market, dataset)) == backfill

    for day in backfill:
        result = day_by_day(market, "daily_prices", "indicators", day=day)
        assert result.success
    assert len(instance.get_runs()) == runs_before + 1 + len(backfill)

    first, last = dt.date.fromisoformat(backfill[0]), dt.date.fromisoformat(backfill[-1])
    for dataset, schema in (("daily_prices", DAILY_PRICES), ("indicators", INDICATORS)):
        a = range_lake.read_partitions(dataset, market, schema, first=first, last=last)
        b = daily_lake.read_partitions(dataset, market, schema, first=first, last=last)
        assert len(a) > 0 and a["trade_date"].n_unique() == len(backfill)
        assert_frame_equal(by_key(a), by_key(b))
    indicators = range_lake.read_partitions("indicators", market, INDICATORS)
    assert indicators["sma_20"].drop_nulls().len() > 0
    assert indicators["rsi_14"].drop_nulls().len() > 0
    qa = range_lake.read_quarantine("daily_prices", market, DAILY_PRICES)
    qb = daily_lake.read_quarantine("daily_prices", market, DAILY_PRICES)
    assert_frame_equal(by_key(qa), by_key(qb))


def test_a_null_listing_date_means_listed_before_the_history():
    from checks.price_checks import completeness_by_session
    from marketpipe_assets.prices import active_symbols

    day = dt.date(2024, 1, 2)
    universe = pl.DataFrame(
        {
            "symbol": ["OLD", "NEW", "LATER", "BAD", "GONE"],
            "name": ["x"] * 5,
            "listing_date": [None, dt.date(2020, 1, 1), dt.date(2030, 1, 1), dt.date(2020, 1, 5),
                             None],
            "delisting_date": [None, None, None, dt.date(2020, 1, 2), dt.date(2023, 1, 1)],
        },
        schema=UNIVERSE,
    )  # fmt: skip
    assert active_symbols(universe, day)["symbol"].to_list() == ["OLD", "NEW"]
    stored = pl.DataFrame({"symbol": ["OLD"], "trade_date": [day]})
    [row] = completeness_by_session(stored, universe, [day]).rows(named=True)
    assert (row["active"], row["stored"], row["completeness_pct"]) == (2, 1, 50.0)
