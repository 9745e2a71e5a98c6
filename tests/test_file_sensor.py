"""The landing-file sensor: which runs it requests, and what a requested run stores."""

import datetime as dt
import json
import os

import dagster as dg
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from marketpipe_assets.automation import RANGE_END_TAG, RANGE_START_TAG, landing_file_sensor
from marketpipe_assets.definitions import defs
from marketpipe_assets.markets import sessions_between
from marketpipe_assets.schemas import DAILY_PRICES
from resources.market_data import MarketDataResource
from resources.sources.base import SourceError
from resources.sources.files import FilesSource
from tests.conftest import market_assets

# September 2025 on XKRX: every weekday is a session (Chuseok falls in October).
S = sessions_between("krx", dt.date(2025, 9, 1), dt.date(2025, 9, 30))
# KRX codes are text with leading zeros; a reader that guesses integers loses them.
TICKERS = [f"{(i + 1) * 10:06d}" for i in range(40)]


def bars(days: list[dt.date], *, shift: float = 0.0) -> pl.DataFrame:
    """One valid bar per ticker and day, values distinct per ticker and day."""
    rows = []
    for d, day in enumerate(days):
        for i, ticker in enumerate(TICKERS):
            base = 1000.0 + 10 * i + d + shift
            rows.append((ticker, day, base, base + 5, base - 5, base + 1, 1000 * (i + 1) + d))
    return pl.DataFrame(
        rows,
        schema=["symbol", "trade_date", "open", "high", "low", "close", "volume"],
        orient="row",
    )


@pytest.fixture
def landing(tmp_path):
    folder = tmp_path / "landing"
    (folder / "krx").mkdir(parents=True)
    return folder


def tick(landing, instance, cursor=None):
    """One sensor evaluation, as the daemon runs it, against the real landing folder."""
    context = dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={"market_data": MarketDataResource(landing_url=str(landing))},
        repository_def=defs.get_repository_def(),
    )
    return landing_file_sensor("krx").evaluate_tick(context)


def ranges(data) -> set[tuple[str, str]]:
    return {(r.tags[RANGE_START_TAG], r.tags[RANGE_END_TAG]) for r in data.run_requests}


def iso(*days: dt.date) -> tuple[str, ...]:
    return tuple(d.isoformat() for d in days)


def test_ticks_request_new_and_changed_files_once(landing, instance):
    bars(S[0:3]).write_csv(landing / "krx" / "a.csv")  # three contiguous sessions
    bars([S[5], S[6], S[9]]).write_parquet(landing / "krx" / "b.parquet")  # two blocks

    first = tick(landing, instance)
    assert first.skip_message is None
    # Contiguous sessions make one range run; a gap starts another.
    assert ranges(first) == {iso(S[0], S[2]), iso(S[5], S[6]), iso(S[9], S[9])}
    for request in first.run_requests:
        assert request.partition_key is None  # a range, not one run per partition
        config = request.run_config["resources"]["market_data"]["config"]
        assert config["krx_source"] == "files"
        # Every other setting travels with the run (run config replaces the whole resource).
        assert config["landing_url"] == str(landing)
        assert config["us_source"] == "synthetic"
    keys = [r.run_key for r in first.run_requests]
    assert len(set(keys)) == 3
    # Stable keys: evaluating the same folder from the same cursor asks for the same runs,
    # which Dagster deduplicates by key.
    assert [r.run_key for r in tick(landing, instance).run_requests] == keys

    second = tick(landing, instance, cursor=first.cursor)
    assert second.run_requests == []
    assert "no new files" in second.skip_message

    bars([S[12]]).write_csv(landing / "krx" / "c.csv")
    third = tick(landing, instance, cursor=first.cursor)
    assert ranges(third) == {iso(S[12], S[12])}
    assert tick(landing, instance, cursor=third.cursor).run_requests == []

    # A corrected delivery of a.csv, now with a fourth session: asked for again, whole file.
    bars(S[0:4], shift=0.5).write_csv(landing / "krx" / "a.csv")
    fourth = tick(landing, instance, cursor=third.cursor)
    assert ranges(fourth) == {iso(S[0], S[3])}
    assert fourth.run_requests[0].run_key not in keys
    assert tick(landing, instance, cursor=fourth.cursor).run_requests == []
    assert set(json.loads(fourth.cursor)) == {
        str(landing / "krx" / name) for name in ("a.csv", "b.parquet", "c.csv")
    }


def test_files_of_other_markets_and_hidden_files_are_ignored(landing, instance):
    (landing / "us").mkdir()
    bars(S[0:2]).write_csv(landing / "us" / "a.csv")
    bars(S[0:2]).write_csv(landing / "krx" / ".partial.csv")
    bars(S[0:2]).write_csv(landing / "krx" / "notes.txt")
    data = tick(landing, instance)
    assert data.run_requests == [] and data.skip_message


def test_requested_run_stores_the_files_rows_and_quarantines_the_bad_one(landing, lake, instance):
    good = bars(S[0:3])
    broken = (pl.col("symbol") == TICKERS[7]) & (pl.col("trade_date") == S[1])
    # One bar with high below low: it must land in quarantine, not in the lake.
    delivered = good.with_columns(high=pl.when(broken).then(pl.col("low") - 1).otherwise("high"))
    delivered.write_csv(landing / "krx" / "a.csv")
    bars([S[10]]).write_parquet(landing / "krx" / "other.parquet")  # not part of this run

    data = tick(landing, instance)
    [request] = [r for r in data.run_requests if r.tags[RANGE_START_TAG] == S[0].isoformat()]
    assert request.tags[RANGE_END_TAG] == S[2].isoformat()

    # The deployment's resource is synthetic-sourced; the request's run config switches it.
    deployed = MarketDataResource(landing_url=str(landing), synthetic_symbols=20)
    result = dg.materialize(
        market_assets("krx", "universe", "daily_prices"),
        instance=instance,
        resources={"lake": lake, "market_data": deployed},
        run_config=request.run_config,
        tags=request.tags,
    )
    assert result.success
    materialized = {
        e.partition
        for e in result.get_asset_materialization_events()
        if e.asset_key == dg.AssetKey(["krx", "daily_prices"])
    }
    assert materialized == set(iso(*S[0:3]))

    stored = lake.read_partitions("daily_prices", "krx", DAILY_PRICES)
    expected = good.filter(~broken).with_columns(source=pl.lit("files")).cast(DAILY_PRICES)
    order = ["trade_date", "symbol"]
    assert_frame_equal(stored.sort(order), expected.sort(order).select(stored.columns))
    assert lake.existing_days("daily_prices", "krx") == set(S[0:3])

    quarantined = lake.read_quarantine("daily_prices", "krx", DAILY_PRICES)
    assert quarantined["symbol"].to_list() == [TICKERS[7]]
    assert quarantined["trade_date"].to_list() == [S[1]]
    assert "high_gte_low" in quarantined["violations"][0].to_list()

    universe = lake.read_table("universe", "krx")
    assert sorted(universe["symbol"].to_list()) == TICKERS


def test_unreadable_parquet_names_the_file(landing, instance):
    bad = landing / "krx" / "x.parquet"
    bad.write_bytes(os.urandom(256))
    source = FilesSource(landing_url=str(landing))
    with pytest.raises(SourceError, match=r"x\.parquet.*Fix or remove the file"):
        source.daily_bars("krx", S[0:1], TICKERS)
    # The sensor cannot tell the file's sessions either, and says which file.
    with pytest.raises(SourceError, match=r"x\.parquet"):
        tick(landing, instance)


def test_csv_without_close_names_the_file_and_the_column(landing):
    bars(S[0:2]).drop("close").write_csv(landing / "krx" / "no_close.csv")
    source = FilesSource(landing_url=str(landing))
    with pytest.raises(SourceError, match=r"no_close\.csv.*'close'"):
        source.daily_bars("krx", S[0:2], TICKERS)
