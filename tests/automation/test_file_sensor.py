"""The landing-file sensor: which runs it requests, and what a requested run stores."""

import datetime as dt
import json
import logging
import os

import dagster as dg
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from checks.markets import sessions_between
from checks.price_checks import COMPLETENESS
from checks.schemas import DAILY_PRICES, RAW
from marketpipe_assets.automation import (
    LANDING_FILE_TAG,
    RANGE_END_TAG,
    RANGE_START_TAG,
    files_run_config,
    landing_file_sensor,
    rejected_file_job,
)
from marketpipe_assets.definitions import defs
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
    # Per file its version and status: a file is requested once per version.
    states = json.loads(fourth.cursor)
    assert set(states) == {"a.csv", "b.parquet", "c.csv"}
    a_csv = (landing / "krx" / "a.csv").stat()
    assert states["a.csv"]["size"] == a_csv.st_size
    assert float(states["a.csv"]["mtime"]) == pytest.approx(a_csv.st_mtime)
    assert {state["status"] for state in states.values()} == {"requested"}
    assert all(r.tags[LANDING_FILE_TAG] == "a.csv" for r in fourth.run_requests)


def test_a_cursor_of_the_earlier_form_requests_no_file_again(landing, instance):
    bars(S[0:3]).write_csv(landing / "krx" / "a.csv")
    [entry] = FilesSource(landing_url=str(landing)).files("krx")
    earlier = json.dumps({entry["path"]: entry["stamp"]})
    data = tick(landing, instance, cursor=earlier)
    assert data.run_requests == []
    assert json.loads(data.cursor)["a.csv"]["status"] == "requested"


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


# Bad files ------------------------------------------------------------------------------------
def failure_message(request, instance) -> str:
    """Run a rejected-file request as the daemon would; the failure's message."""
    result = rejected_file_job("krx").execute_in_process(
        run_config=request.run_config, instance=instance, tags=request.tags, raise_on_error=False
    )
    assert not result.success
    return result.failure_data_for_node("reject_landing_file").user_failure_data.description


BAD_FILES = {
    # name: (contents, what the message says is wrong)
    "no_close.csv": (
        lambda path: bars(S[5:6]).drop("close").write_csv(path),
        "column(s) 'close' missing",
    ),
    "ragged.csv": (
        lambda path: path.write_text(
            "symbol,trade_date,open,high,low,close,volume\n"
            "000010,2025-09-01,1,2,0.5,1.5,10\n000020,2025-09-01,1,2,0.5,1.5,10,7\n"
        ),
        "row 2 has 8 fields but the header has 7",
    ),
    "x.parquet": (lambda path: path.write_bytes(os.urandom(256)), "not readable parquet"),
    "cp949.csv": (
        lambda path: path.write_bytes(
            "symbol,trade_date,open,high,low,close,volume,name\n"
            "005930,2025-09-08,1,2,0.5,1.5,10,삼성전자\n".encode("cp949")
        ),
        "line 2 is not UTF-8 text",
    ),
}


def test_each_bad_file_is_one_failed_run_and_blocks_no_other_file(landing, lake, instance):
    bars(S[0:3]).write_csv(landing / "krx" / "good.csv")
    for name, (write, _) in BAD_FILES.items():
        write(landing / "krx" / name)

    data = tick(landing, instance)
    rejected = {
        r.tags[LANDING_FILE_TAG]: r for r in data.run_requests if r.job_name.endswith("_rejected")
    }
    assert set(rejected) == set(BAD_FILES)
    [good] = [r for r in data.run_requests if r.job_name == "krx_daily_prices"]
    assert (good.tags[RANGE_START_TAG], good.tags[RANGE_END_TAG]) == iso(S[0], S[2])
    for name, (_, problem) in BAD_FILES.items():
        request = rejected[name]
        assert request.job_name == "krx_landing_file_rejected"
        assert request.run_key == f"{name}:{(landing / 'krx' / name).stat().st_mtime}"
        message = failure_message(request, instance)
        assert name in message and problem in message, message
        assert "polars" not in message and "infer_schema_length" not in message
        assert "drop it into the landing folder again" in message
    states = json.loads(data.cursor)
    assert {n for n, state in states.items() if state["status"] == "rejected"} == set(BAD_FILES)

    # The good file's run stores its rows although the bad files sit beside it.
    result = dg.materialize(
        market_assets("krx", "daily_prices"),
        instance=instance,
        resources={"lake": lake, "market_data": MarketDataResource(landing_url=str(landing))},
        run_config=good.run_config,
        tags=good.tags,
    )
    assert result.success
    assert lake.existing_days("daily_prices", "krx") == set(S[0:3])
    assert len(lake.read_partitions("daily_prices", "krx", DAILY_PRICES)) == 3 * len(TICKERS)
    warnings = [e.message for e in instance.all_logs(result.run_id) if e.level == logging.WARNING]
    assert sum("left out" in w and "no_close.csv" in w for w in warnings) == 1

    # Nothing twice; a fixed and re-dropped file is picked up again, as a price run.
    assert tick(landing, instance, cursor=data.cursor).run_requests == []
    bars(S[5:6]).write_csv(landing / "krx" / "no_close.csv")
    os.utime(landing / "krx" / "no_close.csv", (1e9, 1e9))
    again = tick(landing, instance, cursor=data.cursor)
    [fixed] = again.run_requests
    assert fixed.job_name == "krx_daily_prices" and fixed.tags[LANDING_FILE_TAG] == "no_close.csv"
    assert json.loads(again.cursor)["no_close.csv"]["status"] == "requested"


def test_unreadable_parquet_is_left_out_of_reads_and_named(landing):
    bars(S[0:1]).write_csv(landing / "krx" / "good.csv")
    bad = landing / "krx" / "x.parquet"
    bad.write_bytes(os.urandom(256))
    source = FilesSource(landing_url=str(landing))
    assert len(source.daily_bars("krx", S[0:1], TICKERS)) == len(TICKERS)
    [(path, message)] = source.rejected.items()
    assert path.endswith("x.parquet") and "x.parquet" in message
    with pytest.raises(SourceError, match=r"x\.parquet.*not readable parquet"):
        source.read_file("krx", path)


def test_a_bad_value_past_any_inference_window_is_kept_as_sent(landing):
    many = bars(S[0:1]).sample(n=12_000, with_replacement=True, seed=1)
    many = many.with_columns(pl.col("volume").cast(pl.String))
    many[11_500, "volume"] = "12,5"
    many.write_csv(landing / "krx" / "big.csv")
    source = FilesSource(landing_url=str(landing))
    frame = source.read_file("krx", str(landing / "krx" / "big.csv"))
    assert len(frame) == 12_000 and frame[11_500, "volume"] is None
    assert frame[11_500, RAW] == '{"volume": "12,5"}'
    assert frame[RAW].null_count() == 12_000 - 1


# The universe landing sessions are checked against ---------------------------------------------
def three_symbol_file(landing, symbols: list[str]) -> None:
    day = bars([S[0]]).head(3).with_columns(symbol=pl.Series(symbols))
    day.write_csv(landing / "krx" / "three.csv")


def ingest(landing, lake, instance) -> tuple[dg.ExecuteInProcessResult, dg.AssetCheckEvaluation]:
    """The sensor's tick and its one price run, against the deployment's synthetic settings."""
    [request] = tick(landing, instance).run_requests
    deployed = MarketDataResource(landing_url=str(landing), synthetic_symbols=20)
    result = dg.materialize(
        market_assets("krx", "daily_prices"),
        instance=instance,
        resources={"lake": lake, "market_data": deployed},
        run_config=request.run_config,
        tags=request.tags,
        raise_on_error=False,
    )
    [completeness] = [
        e for e in result.get_asset_check_evaluations() if e.check_name == COMPLETENESS
    ]
    return result, completeness


def universe_rule(result) -> str:
    """Said by the completeness check, whether or not the batch was published."""
    [completeness] = [
        e for e in result.get_asset_check_evaluations() if e.check_name == COMPLETENESS
    ]
    return completeness.metadata["universe_rule"].value


@pytest.fixture
def demo_universe(lake, instance):
    """What `make demo` leaves: the synthetic source's universe stored in the lake."""
    synthetic = MarketDataResource(synthetic_symbols=20)
    dg.materialize(
        market_assets("krx", "universe"),
        instance=instance,
        resources={"lake": lake, "market_data": synthetic},
    )
    return lake.read_table("universe", "krx")


def test_files_symbols_unknown_to_the_stored_universe_are_their_own_universe(
    landing, lake, instance, demo_universe
):
    three_symbol_file(landing, ["900010", "900020", "900030"])
    result, completeness = ingest(landing, lake, instance)
    assert result.success and completeness.passed
    rule = universe_rule(result)
    assert "does not list 3 of the landing files' 3 symbols" in rule
    assert "own 3 symbols are the universe" in rule
    # For those sessions only: the stored universe is left as it was.
    assert lake.read_table("universe", "krx").equals(demo_universe)


def test_without_a_stored_universe_the_files_symbols_are_the_universe(landing, lake, instance):
    three_symbol_file(landing, ["900010", "900020", "900030"])
    result, completeness = ingest(landing, lake, instance)
    assert result.success and completeness.passed
    assert universe_rule(result).startswith("no krx/universe is stored")


def test_a_partial_delivery_of_stored_symbols_says_which_file_to_provide(
    landing, lake, instance, demo_universe
):
    three_symbol_file(landing, TICKERS[:3])  # synthetic symbols: the stored universe lists them
    result, completeness = ingest(landing, lake, instance)
    assert not completeness.passed
    assert "stored krx/universe (20 symbols) lists every symbol" in universe_rule(result)
    folder = landing / "krx"
    assert f"drop the missing symbols' bars into {folder}/" in completeness.description
    assert f"{folder}/universe.csv (symbol,name,listing_date,delisting_date)" in (
        completeness.description
    )


def test_a_universe_file_in_the_landing_folder_is_the_universe(
    landing, lake, instance, demo_universe
):
    three_symbol_file(landing, ["900010", "900020", "900030"])
    listing = landing / "krx" / "universe.csv"
    pl.DataFrame(
        {
            "symbol": ["900010", "900020", "900030", "900040"],
            "name": ["a", "b", "c", "d"],
            "listing_date": ["2020-01-02"] * 4,
            "delisting_date": [None] * 4,
        }
    ).write_csv(listing)
    result, completeness = ingest(landing, lake, instance)
    assert universe_rule(result) == f"the landing folder's universe file {listing}"
    assert not completeness.passed  # 3 of its 4 symbols delivered: 75%
    assert "75.00%" in completeness.description
    assert f"or correct {listing}" in completeness.description


def test_sessions_no_usable_file_holds_fail_completeness(landing, lake, instance, demo_universe):
    bars(S[0:1]).drop("close").write_csv(landing / "krx" / "no_close.csv")
    result = dg.materialize(
        market_assets("krx", "daily_prices"),
        instance=instance,
        resources={"lake": lake, "market_data": MarketDataResource(landing_url=str(landing))},
        run_config=files_run_config(MarketDataResource(landing_url=str(landing)), "krx"),
        partition_key=S[0].isoformat(),
        raise_on_error=False,
    )
    [completeness] = [
        e for e in result.get_asset_check_evaluations() if e.check_name == COMPLETENESS
    ]
    assert not completeness.passed and "0.00%" in completeness.description
    assert f"drop files with these sessions' bars into {landing / 'krx'}/" in (
        completeness.description
    )


def test_a_parquet_file_of_unexpected_types_is_rejected_not_a_crashed_tick(landing, instance):
    nested = bars(S[0:1]).with_columns(close=pl.concat_list("close", "open"))
    nested.write_parquet(landing / "krx" / "nested.parquet")
    [request] = tick(landing, instance).run_requests
    assert request.job_name == "krx_landing_file_rejected"
    message = failure_message(request, instance)
    assert "nested.parquet': column close holds List(Float64) values, not numbers" in message
