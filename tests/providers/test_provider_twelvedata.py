"""The Twelve Data source against a local /time_series (tests/fakes/twelvedata.py), through real
Dagster runs: values as the vendor sent them, errors in 200 bodies typed, faults retried, fallen
back from or failed clearly, the rate limit held, the API key nowhere."""

import asyncio
import dataclasses
import datetime as dt
import zoneinfo
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from checks.errors import ConfigurationError
from checks.schemas import DAILY_PRICES, INTRADAY_BARS, quarantine_schema
from resources.market_data import MarketDataResource
from resources.providers import breaker, limiter, twelvedata
from resources.providers.errors import Unauthorized
from resources.sources.base import SourceError
from resources.sources.synthetic import SyntheticSource
from tests.conftest import materialize, recent_sessions, rejected_rows
from tests.fakes.twelvedata import API_KEY, RATE_LIMIT_BODY, FakeTwelveData
from tests.metadata_values import run_metadata

KEY = ["symbol", "trade_date"]
WRONG_KEY = "td-wrong-apikey-9d2f70"
# Tickers the synthetic source also knows, so "twelvedata,synthetic" can fall back.
SYMBOLS = ["BBA", "BBB", "BBC", "BBD", "BBE", "BBF"]


@pytest.fixture(autouse=True)
def provider_env(monkeypatch, tmp_path):
    """Fresh circuit breakers and limiters per test, fast retries, a short timeout."""
    monkeypatch.setattr(breaker, "_SHARED", {})
    monkeypatch.setattr(limiter, "_SHARED", {})
    monkeypatch.setattr(twelvedata, "TIMEOUT", 1.0)
    monkeypatch.setenv("MARKETPIPE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MARKETPIPE_RETRY_INITIAL_SECONDS", "0.01")
    monkeypatch.setenv("MARKETPIPE_RETRY_MAX_SECONDS", "0.05")
    monkeypatch.setenv("MARKETPIPE_TWELVEDATA_RATE_LIMIT", "20/s")
    monkeypatch.setenv("TWELVEDATA_API_KEY", API_KEY)


@pytest.fixture
def fake(monkeypatch):
    with FakeTwelveData() as server:
        monkeypatch.setenv("TWELVEDATA_BASE_URL", server.url)
        yield server


def universe_file(tmp_path, symbols=SYMBOLS) -> str:
    path = tmp_path / "us_universe.csv"
    pl.DataFrame(
        {
            "symbol": symbols,
            "name": [f"{s} Inc." for s in symbols],
            "listing_date": [dt.date(2015, 1, 2)] * len(symbols),
            "delisting_date": [None] * len(symbols),
        },
        schema_overrides={"delisting_date": pl.Date},
    ).write_csv(path)
    return str(path)


@pytest.fixture
def market_data(tmp_path) -> MarketDataResource:
    return resource(tmp_path)


def resource(tmp_path, source="twelvedata", symbols=SYMBOLS) -> MarketDataResource:
    return MarketDataResource(
        us_source=source,
        us_universe=universe_file(tmp_path, symbols),
        synthetic_missing_rate=0.0,
        synthetic_bad_row_rate=0.0,
        landing_url="unused-landing",
    )


def run(lake, instance, market_data, datasets=("daily_prices",), **partitions):
    return materialize(
        "us", datasets, lake=lake, market_data=market_data, instance=instance, **partitions
    )


def with_universe(lake, instance, market_data) -> None:
    assert run(lake, instance, market_data, ("universe",)).success


def stored(lake, days) -> pl.DataFrame:
    frame = lake.read_partitions(
        "daily_prices", "us", DAILY_PRICES, first=min(days), last=max(days)
    )
    return frame.sort(KEY)


def quarantined(lake, days) -> pl.DataFrame:
    frame = lake.read_quarantine(
        "daily_prices", "us", DAILY_PRICES, first=min(days), last=max(days)
    )
    return frame.sort(KEY)


def dates(keys) -> list[dt.date]:
    return [dt.date.fromisoformat(k) for k in keys]


def metadata(result) -> dict:
    # A range run records each partition's own facts; summed here, they are the run's.
    return run_metadata(result, dg.AssetKey(["us", "daily_prices"]))


def checks(result) -> dict:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def failure_text(result) -> str:
    parts = []
    for event in result.get_step_failure_events():
        error = event.step_failure_data.error
        while error is not None:
            parts.append(f"{error.cls_name}: {error.message}")
            error = error.cause
    return "\n".join(parts)


def assert_no_secret(secrets, result, instance, lake, caplog) -> str:
    """Not in the run's event log (messages, metadata, errors), the run record, Python logs,
    the instance's files (compute logs, storage) or the lake. Returns the text searched."""
    texts = [repr(entry) for entry in instance.all_logs(result.run_id)]
    texts.append(repr(instance.get_run_by_id(result.run_id)))
    texts += [r.getMessage() for r in caplog.records]
    blob = "\n".join(texts)
    files = [p for root in (lake.url, instance.root_directory) for p in Path(root).rglob("*")]
    for secret in secrets:
        assert secret not in blob
        for path in files:
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), path
    return blob


def requests_after(fake, before: int) -> list:
    return fake.requests[before:]


# 1. Values ------------------------------------------------------------------------------------
def test_daily_prices_match_the_vendor(fake, lake, instance, market_data, caplog):
    fake.ignore_order = True  # newest first whatever was asked, the API's default order
    fake.thousands_separators = True
    with_universe(lake, instance, market_data)
    keys = recent_sessions("us", 3)
    before = len(fake.requests)
    result = run(lake, instance, market_data, partition_range=(keys[0], keys[-1]))
    assert result.success, failure_text(result)

    days = dates(keys)
    assert_frame_equal(stored(lake, days), fake.truth(SYMBOLS, days).sort(KEY))
    assert quarantined(lake, days).is_empty()
    sent = requests_after(fake, before)
    assert sorted(r.query["symbol"] for r in sent) == SYMBOLS  # one call per symbol
    assert {(r.query["interval"], r.query["order"], r.query["apikey"]) for r in sent} == {
        ("1day", "ASC", API_KEY)
    }
    assert metadata(result)["rows_by_source"] == {"twelvedata": 3 * len(SYMBOLS)}
    assert_no_secret([API_KEY], result, instance, lake, caplog)


def test_us_universe_must_come_from_a_file(fake, lake, instance, tmp_path):
    market_data = MarketDataResource(us_source="twelvedata", landing_url="unused-landing")
    result = run(lake, instance, market_data, ("universe",))
    assert not result.success
    assert "MARKETPIPE_US_UNIVERSE" in failure_text(result)
    with pytest.raises(SourceError, match="MARKETPIPE_US_UNIVERSE"):
        twelvedata.source_from_env().universe("us")


def test_intraday_bars_are_stamped_in_utc(fake):
    source = twelvedata.source_from_env()
    fake.ignore_order = True
    # One session in winter (UTC-5), one in summer (UTC-4).
    for day in (dt.date(2026, 1, 6), dt.date(2026, 7, 7)):
        bars = asyncio.run(source.session_intraday_bars("BBA", day))
        assert_frame_equal(bars, fake.intraday_truth("BBA", day))
        offset = 5 if day.month == 1 else 4
        assert bars["bar_start"][0] == dt.datetime(
            day.year, day.month, day.day, 9 + offset, 30, tzinfo=dt.UTC
        )
    assert {r.query["interval"] for r in fake.requests} == {"15min"}


def test_intraday_bars_asset_stores_the_vendors_bars(fake, lake, instance, market_data):
    """us/intraday_bars from Twelve Data: the source's intraday_bars, validated and stored."""
    day = dt.date(2026, 1, 6)
    with_universe(lake, instance, market_data)
    result = run(lake, instance, market_data, ("intraday_bars",), partition_key=day.isoformat())
    assert result.success
    assert all(e.passed for e in checks(result).values())
    bars = lake.read_partitions("intraday_bars", "us", INTRADAY_BARS, first=day, last=day)
    truth = pl.concat([fake.intraday_truth(s, day) for s in SYMBOLS])
    assert_frame_equal(
        bars.drop("trade_date").sort("symbol", "bar_start"),
        truth.sort("symbol", "bar_start"),
        check_dtypes=False,
    )
    assert bars.schema == INTRADAY_BARS


def test_a_partial_bar_of_an_unclosed_session_is_not_stored(fake):
    day = dates(recent_sessions("us", 1))[0]
    fake.through = day
    source = twelvedata.source_from_env()
    new_york = zoneinfo.ZoneInfo("America/New_York")

    def at(hour):
        return dataclasses.replace(
            source, now=lambda: dt.datetime.combine(day, dt.time(hour), new_york)
        )

    assert at(12).daily_bars("us", [day], ["BBA"]).is_empty()
    assert_frame_equal(at(17).daily_bars("us", [day], ["BBA"]), fake.truth(["BBA"], [day]))


# 2. Errors inside 200 bodies, gaps and bad rows -----------------------------------------------
def test_unknown_symbols_gaps_and_missing_keys(fake, lake, instance, tmp_path):
    keys = recent_sessions("us", 2)
    d1, d2 = dates(keys)
    fake.unknown = {"ZZZZ"}  # 404 in a 200 body
    fake.missing = {("BBE", d1), ("BBF", d1), ("BBF", d2)}  # BBF: "No data is available" (400)
    fake.overrides = {("BBB", d2): {"volume": None}}  # an absent key is null, never 0
    market_data = resource(tmp_path, symbols=[*SYMBOLS, "ZZZZ"])
    with_universe(lake, instance, market_data)
    result = run(lake, instance, market_data, partition_range=(keys[0], keys[-1]))

    # Completeness fails (below), so the batch is kept in _rejected/, not published.
    assert stored(lake, [d1, d2]).is_empty() and quarantined(lake, [d1, d2]).is_empty()
    truth = fake.truth(SYMBOLS, [d1, d2])
    bad = (pl.col("symbol") == "BBB") & (pl.col("trade_date") == d2)
    kept = rejected_rows(lake, "daily_prices", "us", DAILY_PRICES)
    assert_frame_equal(kept, truth.filter(~bad).sort(KEY))
    q = rejected_rows(lake, "daily_prices", "us", quarantine_schema(DAILY_PRICES), quarantine=True)
    assert q.select("symbol", "trade_date", "violations").rows() == [
        ("BBB", d2, ["required_fields"])
    ]
    assert q["volume"].to_list() == [None]
    completeness = checks(result)["completeness"]
    # ZZZZ twice, BBE once, BBF twice, BBB's quarantined bar once: 6 of 14 symbol-days.
    assert completeness.metadata["missing_symbol_days"].value == 6
    assert not completeness.passed and keys[0] in completeness.description


@pytest.mark.parametrize("in_status", [False, True], ids=["in a 200 body", "as HTTP 401"])
def test_invalid_key_fails_naming_provider_and_endpoint_without_retrying(
    in_status, fake, lake, instance, market_data, monkeypatch, caplog
):
    with_universe(lake, instance, market_data)
    fake.errors_with_status = in_status
    monkeypatch.setenv("TWELVEDATA_API_KEY", WRONG_KEY)
    key = recent_sessions("us", 1)[0]
    before = len(fake.requests)
    result = run(lake, instance, market_data, partition_key=key)
    assert not result.success
    text = failure_text(result)
    assert "Unauthorized" in text and "twelvedata /time_series" in text
    assert "TWELVEDATA_API_KEY" in text or "HTTP 401" in text
    symbols = [r.query["symbol"] for r in requests_after(fake, before)]
    assert len(symbols) == len(set(symbols))  # never retried
    assert lake.read_partitions("daily_prices", "us", DAILY_PRICES).is_empty()
    searched = assert_no_secret([API_KEY, WRONG_KEY], result, instance, lake, caplog)
    assert "Unauthorized" in searched  # the search did cover the error


def test_unauthorized_is_typed_and_scrubbed(fake, monkeypatch):
    monkeypatch.setenv("TWELVEDATA_API_KEY", WRONG_KEY)
    with pytest.raises(Unauthorized) as caught:
        twelvedata.source_from_env().daily_bars("us", dates(recent_sessions("us", 1)), ["BBA"])
    assert "twelvedata /time_series [BBA]" in str(caught.value)
    assert WRONG_KEY not in str(caught.value)


# 3. Faults ------------------------------------------------------------------------------------
SERVER_ERROR_BODY = {"code": 500, "message": "Internal server error", "status": "error"}
FAULTS = {
    "HTTP 429 with Retry-After": dict(
        status=429, body=RATE_LIMIT_BODY, headers={"Retry-After": "1"}
    ),
    "HTTP 429 without Retry-After": dict(status=429, body=RATE_LIMIT_BODY),
    "429 in a 200 body": dict(status=200, body=RATE_LIMIT_BODY),
    "500 in a 200 body": dict(status=200, body=SERVER_ERROR_BODY),
    "5xx burst": dict(status=502, body=b"<html>Bad Gateway</html>", times=3),
    "malformed JSON": dict(status=200, body=b'{"meta": {"symbol": "BBA"}, "values": [{"da'),
    "slow reply": dict(status=200, body={"values": [], "status": "ok"}, delay=1.5),
}


@pytest.mark.parametrize("fault", FAULTS.values(), ids=FAULTS.keys())
def test_transient_faults_are_retried_without_losing_or_duplicating_rows(
    fault, fake, lake, instance, market_data
):
    with_universe(lake, instance, market_data)
    key = recent_sessions("us", 1)[0]
    fake.faults.add(path="/time_series", **fault)
    before = len(fake.requests)
    result = run(lake, instance, market_data, partition_key=key)
    assert result.success, failure_text(result)
    assert_frame_equal(stored(lake, dates([key])), fake.truth(SYMBOLS, dates([key])).sort(KEY))
    assert len(fake.requests) - before == len(SYMBOLS) + fault.get("times", 1)


def test_rate_limit_in_a_body_waits_out_the_window(fake, monkeypatch):
    monkeypatch.setenv("MARKETPIPE_TWELVEDATA_RATE_LIMIT", "3/s")
    fake.faults.add(200, RATE_LIMIT_BODY, path="/time_series")
    day = dates(recent_sessions("us", 1))
    bars = twelvedata.source_from_env().daily_bars("us", day, ["BBA"])
    assert_frame_equal(bars, fake.truth(["BBA"], day))
    refused, retried = fake.requests
    assert retried.at - refused.at >= 1.0  # credits come back with the next window


def test_persistent_outage_falls_back_to_the_next_source(fake, lake, instance, tmp_path):
    market_data = resource(tmp_path, source="twelvedata,synthetic")
    with_universe(lake, instance, market_data)
    key = recent_sessions("us", 1)[0]
    fake.faults.add(503, {"status": "error"}, path="/time_series", times=10**6)
    result = run(lake, instance, market_data, partition_key=key)
    assert metadata(result)["rows_by_source"].keys() == {"synthetic"}
    synthetic = SyntheticSource(symbols=500, missing_rate=0.0, bad_row_rate=0.0)
    expected = synthetic.daily_bars("us", dates([key]), SYMBOLS)
    assert len(expected) >= 5
    assert_frame_equal(stored(lake, dates([key])), expected.sort(KEY))
    # The circuit opened: the outage cost a handful of calls, not attempts x symbols.
    assert len(fake.requests) <= 5 + len(SYMBOLS)


# 4. The rate limit ----------------------------------------------------------------------------
def test_limiter_holds_the_rate_in_every_window(fake, monkeypatch):
    """8/min scaled to 5/s: from the server's side, no 1 s window holds more than 5 requests."""
    monkeypatch.setenv("MARKETPIPE_TWELVEDATA_RATE_LIMIT", "5/s")
    symbols = [f"S{i:02d}" for i in range(16)]
    day = dates(recent_sessions("us", 1))
    bars = twelvedata.source_from_env().daily_bars("us", day, symbols)
    assert_frame_equal(bars, fake.truth(symbols, day).sort(KEY))
    times = sorted(r.at for r in fake.requests)
    assert len(times) == 16
    busiest = max(sum(1 for t in times if start <= t < start + 1.0) for start in times)
    assert busiest <= 5
    assert times[-1] - times[0] >= 3.0  # 16 requests need at least four windows


def test_configuration_from_the_environment(monkeypatch):
    monkeypatch.delenv("MARKETPIPE_TWELVEDATA_RATE_LIMIT")
    monkeypatch.delenv("TWELVEDATA_BASE_URL", raising=False)
    source = twelvedata.source_from_env()
    assert (source.requests, source.per_seconds) == (8, 60.0)  # the free plan: 8 per minute
    assert source.base_url == "https://api.twelvedata.com"
    assert API_KEY not in repr(source)
    monkeypatch.setenv("MARKETPIPE_TWELVEDATA_RATE_LIMIT", "8 per minute")
    with pytest.raises(ConfigurationError, match="MARKETPIPE_TWELVEDATA_RATE_LIMIT"):
        twelvedata.source_from_env()
    monkeypatch.setenv("MARKETPIPE_TWELVEDATA_RATE_LIMIT", "55/min")
    assert twelvedata.source_from_env().requests == 55
    monkeypatch.delenv("TWELVEDATA_API_KEY")
    with pytest.raises(ConfigurationError, match="TWELVEDATA_API_KEY"):
        twelvedata.source_from_env()
    with pytest.raises(SourceError, match="market 'us' only"):
        twelvedata.TwelveDataSource(api_key="x").daily_bars("krx", [dt.date(2026, 1, 5)], ["A"])
