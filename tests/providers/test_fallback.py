"""Fallback chains over real sources, through real Dagster runs: which source served each row
(`source` column, `rows_by_source`), which sources were tried before it and why
(`source_failures`), and that no secret reaches the run's metadata or logs on the way."""

import json

import dagster as dg
import polars as pl
import pytest

from checks.schemas import DAILY_PRICES
from resources.market_data import MarketDataResource
from resources.providers import breaker as breaker_module
from resources.providers import limiter as limiter_module
from resources.sources.base import FallbackSource, SourceUnavailable
from resources.sources.files import FilesSource
from resources.sources.synthetic import SyntheticSource
from tests.conftest import SYMBOLS, Runner, recent_sessions
from tests.fakes.server import FakeProvider, Reply, Request
from tests.metadata_values import by_partition, run_metadata

KRX_KEY = "krx-auth-8d1f+Q/secret="
SESSIONS = recent_sessions("krx", 3)


class Outage(FakeProvider):
    """Every endpoint fails with a 500 whose body repeats the request, credentials included."""

    def handle(self, request: Request) -> Reply:
        return Reply(
            500, {"error": "maintenance", "headers": request.headers, "query": request.query}
        )


@pytest.fixture(autouse=True)
def fresh_provider_state(monkeypatch):
    # Breakers and limiters are per process: no test inherits another's open circuit.
    monkeypatch.setattr(breaker_module, "_SHARED", {})
    monkeypatch.setattr(limiter_module, "_SHARED", {})


def chain(source: str, landing) -> MarketDataResource:
    return MarketDataResource(
        krx_source=source,
        landing_url=str(landing),
        synthetic_symbols=SYMBOLS,
        synthetic_missing_rate=0.0,
    )


def run_prices(market_data, lake, instance) -> dg.ExecuteInProcessResult:
    return Runner(lake, market_data, instance)(
        "krx", "daily_prices", days=(SESSIONS[0], SESSIONS[-1])
    )


def store_universe(market_data, lake, instance) -> None:
    Runner(lake, market_data, instance).universe("krx")


def metadata(result: dg.ExecuteInProcessResult) -> dict:
    """The daily_prices metadata of the range run, each partition's facts summed."""
    assert set(by_partition(result, dg.AssetKey(["krx", "daily_prices"]))) == set(SESSIONS)
    return run_metadata(result, dg.AssetKey(["krx", "daily_prices"]))


def stored(lake) -> pl.DataFrame:
    first, last = pl.Series([SESSIONS[0], SESSIONS[-1]]).str.to_date().to_list()
    return lake.read_partitions("daily_prices", "krx", DAILY_PRICES, first=first, last=last)


def run_text(result: dg.ExecuteInProcessResult, instance) -> str:
    """Everything the run recorded: every event with its metadata, and every log message."""
    logs = instance.all_logs(result.run_id)
    return "\n".join(dg.serialize_value(entry) for entry in logs)


# What "down" means for the files source -------------------------------------------------------
def test_a_missing_landing_folder_is_a_files_source_that_is_down(tmp_path):
    missing = FilesSource(landing_url=str(tmp_path / "nowhere"))
    for call in (
        lambda: missing.daily_bars("krx", [pl.Series(SESSIONS).str.to_date()[0]], ["000001"]),
        lambda: missing.universe("krx"),
    ):
        with pytest.raises(
            SourceUnavailable, match="landing folder .*nowhere/krx.* does not exist"
        ):
            call()
    assert missing.files("krx") == []  # the landing sensor just finds nothing to do

    (tmp_path / "empty" / "krx").mkdir(parents=True)
    empty = FilesSource(landing_url=str(tmp_path / "empty"))
    # Delivered nothing for these sessions: available, serves no rows, completeness will say so.
    assert empty.daily_bars("krx", [pl.Series(SESSIONS).str.to_date()[0]], ["000001"]).is_empty()


def test_the_chain_records_who_was_tried_and_forgets_it_on_the_next_call(tmp_path):
    landing = tmp_path / "landing"
    source = FallbackSource(
        [FilesSource(landing_url=str(landing)), SyntheticSource(symbols=5, missing_rate=0.0)]
    )
    day = pl.Series(SESSIONS).str.to_date().to_list()
    symbols = source.universe("krx")["symbol"].to_list()
    assert [f["source"] for f in source.last_failures] == ["files"]

    served = source.daily_bars("krx", day, symbols)
    assert set(served["source"]) == {"synthetic"}
    (failure,) = source.last_failures
    assert failure["error"] == "SourceUnavailable" and "does not exist" in failure["reason"]

    (landing / "krx").mkdir(parents=True)
    served.with_columns(source=pl.lit("vendor-file")).write_parquet(landing / "krx" / "a.parquet")
    assert set(source.daily_bars("krx", day, symbols)["source"]) == {"vendor-file"}
    assert source.last_failures == []


# Through Dagster -------------------------------------------------------------------------------
def test_missing_files_fall_back_to_synthetic_and_the_run_says_so(tmp_path, lake, instance):
    market_data = chain("files,synthetic", tmp_path / "no-landing")
    store_universe(market_data, lake, instance)
    result = run_prices(market_data, lake, instance)
    assert result.success

    rows = stored(lake)
    assert set(rows["source"]) == {"synthetic"}  # every row names the source that served it
    meta = metadata(result)
    assert meta["rows_by_source"] == {"synthetic": len(rows)}
    (failure,) = meta["source_failures"]
    assert failure["source"] == "files" and failure["error"] == "SourceUnavailable"
    assert "no-landing/krx" in failure["reason"] and "does not exist" in failure["reason"]
    warnings = [
        e.message for e in instance.all_logs(result.run_id) if "could not serve" in e.message
    ]
    assert len(warnings) == 1 and warnings[0].startswith("files could not serve")


def test_delivered_files_serve_first_and_nothing_is_recorded_as_failed(tmp_path, lake, instance):
    landing = tmp_path / "landing"
    (landing / "krx").mkdir(parents=True)
    days = pl.Series(SESSIONS).str.to_date().to_list()
    bars = SyntheticSource(symbols=SYMBOLS, missing_rate=0.0).daily_bars(
        "krx", days, SyntheticSource(symbols=SYMBOLS).universe("krx")["symbol"].to_list()
    )
    bars.drop("source").write_csv(landing / "krx" / "delivery.csv")  # files name themselves

    market_data = chain("files,synthetic", landing)
    store_universe(market_data, lake, instance)
    result = run_prices(market_data, lake, instance)
    assert result.success
    rows = stored(lake)
    assert set(rows["source"]) == {"files"}
    meta = metadata(result)
    assert meta["rows_by_source"] == {"files": len(rows)}
    assert meta["range_rows"] == len(rows)  # the range's total, named as such
    assert meta["source_failures"] == []


def test_a_provider_that_is_down_falls_back_and_its_key_stays_out_of_the_run(
    tmp_path, lake, instance, monkeypatch
):
    monkeypatch.setenv("MARKETPIPE_RETRY_INITIAL_SECONDS", "0.01")
    monkeypatch.setenv("KRX_API_KEY", KRX_KEY)
    with Outage() as server:
        monkeypatch.setenv("KRX_BASE_URL", server.url)
        store_universe(chain("synthetic", tmp_path), lake, instance)
        result = run_prices(chain("krx,synthetic", tmp_path), lake, instance)
        assert server.count() >= 2  # the real client really asked, with the real key
        assert all(r.headers["auth_key"] == KRX_KEY for r in server.requests)
    assert result.success

    rows = stored(lake)
    assert set(rows["source"]) == {"synthetic"}
    meta = metadata(result)
    assert meta["rows_by_source"] == {"synthetic": len(rows)}
    (failure,) = meta["source_failures"]
    assert failure["source"] == "krx" and failure["error"] == "ProviderDown"
    assert "HTTP 500" in failure["reason"] and "maintenance" in failure["reason"]
    assert "***" in failure["reason"]  # the echoed key, masked

    recorded = run_text(result, instance) + json.dumps(meta)
    assert "maintenance" in recorded  # the failure is in the run's records...
    assert KRX_KEY not in recorded  # ...its secret is not, in any form
    assert "krx-auth-8d1f%2BQ%2Fsecret%3D" not in recorded


def test_when_every_source_is_down_the_run_fails_naming_each(tmp_path, lake, instance, monkeypatch):
    monkeypatch.setenv("MARKETPIPE_RETRY_INITIAL_SECONDS", "0.01")
    monkeypatch.setenv("KRX_API_KEY", KRX_KEY)
    store_universe(chain("synthetic", tmp_path), lake, instance)
    with Outage() as server:
        monkeypatch.setenv("KRX_BASE_URL", server.url)
        result = run_prices(chain("files,krx", tmp_path / "no-landing"), lake, instance)
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    message = failure.step_failure_data.error.to_string()  # with its causes
    assert "every source in the chain failed" in message
    assert "files: the landing folder" in message and "krx: krx " in message
    assert KRX_KEY not in run_text(result, instance)
