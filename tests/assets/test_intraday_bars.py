"""Intraday bars through real Dagster runs on a temporary instance and lake: clean sessions, half
days, quarantine with rule names, bars outside the hours, duplicates and deterministic data
(CONTRACT section 5)."""

import datetime as dt
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from checks.intraday_checks import (
    INTRADAY_BAR_COUNT,
    INTRADAY_BAR_RULES,
    INTRADAY_COMPLETENESS,
    INTRADAY_PRICE_RULES_CHECK,
    validate_intraday,
)
from checks.markets import session_bounds
from checks.schemas import INTRADAY_BARS
from resources.market_data import MarketDataResource
from resources.sources.base import FallbackSource, SourceUnavailable, intraday_bars
from resources.sources.synthetic import SyntheticSource
from tests.conftest import SYMBOLS, materialize

RULE_NAMES = {r.name for r in INTRADAY_BAR_RULES}
DAY = "2025-11-26"  # a full US session: 09:30-16:00 New York, 26 bars
HALF_DAY = "2025-11-28"  # the day after Thanksgiving closes at 13:00: 14 bars
CONTRACT_COLUMNS = ["symbol", "bar_start", "open", "high", "low", "close", "volume"]


def evaluations(result: dg.ExecuteInProcessResult) -> dict[str, object]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def quarantine_file(lake, market: str, day: str) -> Path:
    base = Path(lake.url) / "quarantine" / "intraday_bars"
    return base / f"market={market}" / f"date={day}" / "part-0.parquet"


def run(lake, market_data, instance, market: str = "us", **kwargs):
    return materialize(
        market,
        ("intraday_bars",),
        lake=lake,
        market_data=market_data,
        instance=instance,
        **kwargs,
    )


def stored(lake, market: str, day: str) -> pl.DataFrame:
    d = dt.date.fromisoformat(day)
    return lake.read_partitions("intraday_bars", market, INTRADAY_BARS, first=d, last=d)


class DefectSource:
    """Synthetic bars of a session with chosen rows replaced (a source the tests control)."""

    name = "defects"

    def __init__(self, base: SyntheticSource, edit):
        self.base, self.edit = base, edit

    def universe(self, market):
        return self.base.universe(market)

    def daily_bars(self, market, sessions, symbols):
        return self.base.daily_bars(market, sessions, symbols)

    def intraday_bars(self, market, sessions, symbols):
        return self.edit(self.base.intraday_bars(market, sessions, symbols))


def with_source(market_data: MarketDataResource, source) -> MarketDataResource:
    class Fixed(MarketDataResource):
        def source(self, market):
            return source

    return Fixed(**market_data.model_dump())


def clean_source() -> SyntheticSource:
    return SyntheticSource(symbols=SYMBOLS, missing_rate=0.0, bad_row_rate=0.0)


def serving(source) -> MarketDataResource:
    """Market data whose every market is served by `source`."""
    return with_source(MarketDataResource(synthetic_symbols=SYMBOLS, landing_url="unused"), source)


def with_defects(edit) -> MarketDataResource:
    """The clean synthetic bars, changed by `edit` (a function of the frame) before validation."""
    return serving(DefectSource(clean_source(), edit))


def test_a_clean_session_passes_every_check(with_universe, lake, instance):
    market_data = serving(clean_source())
    result = run(lake, market_data, instance, partition_key=DAY)
    assert result.success
    checks = evaluations(result)
    assert {INTRADAY_PRICE_RULES_CHECK, INTRADAY_COMPLETENESS, INTRADAY_BAR_COUNT} <= set(checks)
    assert all(e.passed for e in checks.values())
    bars = stored(lake, "us", DAY)
    open_, close = session_bounds("us", dt.date.fromisoformat(DAY))
    assert bars["bar_start"].min() == open_
    assert bars["bar_start"].max() == close - dt.timedelta(minutes=15)
    assert set(bars.group_by("symbol").len()["len"]) == {26}
    assert not quarantine_file(lake, "us", DAY).exists()
    # The stored file has the contract's columns, in their types.
    path = Path(lake.url) / "intraday_bars" / "market=us" / f"date={DAY}" / "part-0.parquet"
    schema = pl.read_parquet_schema(path)
    assert [c for c in CONTRACT_COLUMNS if c in schema] == CONTRACT_COLUMNS
    assert schema["bar_start"] == pl.Datetime("us", "UTC")
    assert schema["volume"] == pl.Int64


def test_a_us_half_day_has_fewer_bars(with_universe, lake, instance):
    market_data = serving(clean_source())
    result = run(lake, market_data, instance, partition_key=HALF_DAY)
    assert result.success
    assert all(e.passed for e in evaluations(result).values())
    bars = stored(lake, "us", HALF_DAY)
    assert set(bars.group_by("symbol").len()["len"]) == {14}
    assert bars["bar_start"].max() == dt.datetime(2025, 11, 28, 17, 45, tzinfo=dt.UTC)


def test_krx_session_is_stored_in_utc(with_universe, lake, instance):
    market_data = serving(clean_source())
    result = run(lake, market_data, instance, market="krx", partition_key=DAY)
    assert result.success
    bars = stored(lake, "krx", DAY)
    # 09:00-15:30 Seoul is 00:00-06:30 UTC: 26 bars.
    assert bars["bar_start"].min() == dt.datetime(2025, 11, 26, 0, 0, tzinfo=dt.UTC)
    assert set(bars.group_by("symbol").len()["len"]) == {26}


def test_injected_defects_are_quarantined_with_rule_names(with_universe, lake, instance):
    market_data = MarketDataResource(
        synthetic_symbols=SYMBOLS,
        synthetic_missing_rate=0.0,
        synthetic_bad_row_rate=0.05,
        landing_url="unused",
    )
    result = run(lake, market_data, instance, partition_key=DAY)
    assert result.success
    checks = evaluations(result)
    assert checks[INTRADAY_PRICE_RULES_CHECK].passed  # nothing bad was stored
    quarantined = pl.read_parquet(quarantine_file(lake, "us", DAY))
    assert len(quarantined) > 0
    assert quarantined["violations"].list.len().min() >= 1
    seen = set(quarantined["violations"].explode())
    assert seen <= RULE_NAMES
    assert {
        "high_gte_low",
        "close_within_range",
        "non_negative_volume",
        "positive_prices",
        "required_fields",
        "unique_symbol_bar_start",
        "within_session_hours",
    } <= seen
    # Every stored row passes the rulebook.
    day = dt.date.fromisoformat(DAY)
    assert validate_intraday(stored(lake, "us", DAY), "us", [day]).quarantined.is_empty()


def test_a_bar_outside_the_session_hours_is_quarantined(with_universe, lake, instance):
    def late(frame):
        # A bar at 16:00 New York: the close, not inside the session.
        first = frame.head(1).with_columns(pl.col("bar_start") + dt.timedelta(hours=10))
        return pl.concat([frame, first])

    market_data = with_defects(late)
    result = run(lake, market_data, instance, partition_key=HALF_DAY)
    assert result.success
    quarantined = pl.read_parquet(quarantine_file(lake, "us", HALF_DAY))
    assert quarantined["violations"].to_list() == [["within_session_hours"]]
    assert quarantined["bar_start"][0] == dt.datetime(2025, 11, 29, 0, 30, tzinfo=dt.UTC)
    # A half day closes at 13:00: a bar at 13:00 is outside too, one at 12:45 inside.
    day = dt.date.fromisoformat(HALF_DAY)
    probe = (
        stored(lake, "us", HALF_DAY)
        .head(2)
        .with_columns(
            bar_start=pl.Series(
                [dt.datetime(2025, 11, 28, 18, 0), dt.datetime(2025, 11, 28, 17, 45)]
            ).dt.replace_time_zone("UTC"),
            symbol=pl.Series(["X", "Y"]),
        )
    )
    assert validate_intraday(probe, "us", [day]).quarantined["symbol"].to_list() == ["X"]


def test_duplicate_bars_are_all_quarantined(with_universe, lake, instance):
    def duplicated(frame):
        # The first bar of three symbols, sent twice.
        firsts = frame.unique("symbol", keep="first", maintain_order=True).head(3)
        return pl.concat([frame, firsts])

    market_data = with_defects(duplicated)
    result = run(lake, market_data, instance, partition_key=DAY)
    assert result.success
    quarantined = pl.read_parquet(quarantine_file(lake, "us", DAY))
    assert len(quarantined) == 6
    assert set(quarantined["violations"].explode()) == {"unique_symbol_bar_start"}
    bars = stored(lake, "us", DAY)
    assert not bars.select("symbol", "bar_start").is_duplicated().any()
    # Both copies are quarantined: 25 of 26 bars stays above the 90% tolerance.
    assert evaluations(result)[INTRADAY_BAR_COUNT].passed


def test_short_symbols_warn_and_missing_symbols_block(with_universe, lake, instance):
    universe = lake.read_table("universe", "us")
    gone = universe["symbol"][:10].to_list()

    def thin(frame):
        # Ten symbols missing (completeness < 95%), one with half its bars (bar count warns).
        frame = frame.filter(~pl.col("symbol").is_in(gone))
        one = frame["symbol"][0]
        return frame.filter((pl.col("symbol") != one) | (pl.int_range(pl.len()) % 2 == 0))

    market_data = with_defects(thin)
    result = run(lake, market_data, instance, partition_key=DAY)
    checks = evaluations(result)
    assert not checks[INTRADAY_COMPLETENESS].passed
    assert not checks[INTRADAY_BAR_COUNT].passed
    assert checks[INTRADAY_BAR_COUNT].severity == dg.AssetCheckSeverity.WARN
    assert checks[INTRADAY_PRICE_RULES_CHECK].passed


def test_synthetic_intraday_is_the_same_for_a_range_and_single_runs(
    with_universe, lake, market_data, instance, tmp_path
):
    days = ["2025-11-25", "2025-11-26", "2025-11-28"]
    result = run(lake, market_data, instance, partition_range=(days[0], days[-1]))
    assert result.success
    ranged = {d: stored(lake, "us", d) for d in days}
    for d in days:
        assert run(lake, market_data, instance, partition_key=d).success
        assert_frame_equal(stored(lake, "us", d), ranged[d])
        assert len(ranged[d]) > 0


def test_sources_without_intraday_bars_let_a_chain_move_on():
    class DailyOnly:
        name = "daily-only"

    source = clean_source()
    with pytest.raises(SourceUnavailable, match="no intraday bars"):
        intraday_bars(DailyOnly(), "us", [dt.date(2025, 11, 26)], ["BBA"])
    chain = FallbackSource([DailyOnly(), source])
    bars = chain.intraday_bars("us", [dt.date(2025, 11, 26)], ["BBA"])
    assert len(bars) == 26
    assert chain.last_failures[0]["source"] == "daily-only"
