"""The Finnhub source against FakeFinnhub over real HTTP, through real Dagster runs: values,
retries, Retry-After, failures that name provider, endpoint and symbol, and a key that never
leaks into logs, metadata, errors or the lake."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from checks.errors import ConfigurationError
from checks.markets import sessions_between
from checks.schemas import DAILY_PRICES, UNIVERSE
from resources.market_data import MarketDataResource
from resources.providers import breaker as breaker_module
from resources.providers import finnhub
from resources.providers import limiter as limiter_module
from resources.providers.errors import NotFound
from resources.providers.http import RetryPolicy
from resources.sources.base import SourceError
from tests.conftest import materialize, recent_sessions, rejected_rows
from tests.fakes.finnhub import FakeFinnhub
from tests.metadata_values import run_metadata

FAKE_KEY = "fhk-FAKE-7c1e9a42-do-not-leak"
WRONG_KEY = "fhk-WRONG-55d0b3e1-do-not-leak"
SYMBOLS = ["AAPL", "MSFT", "NVDA"]
ATTEMPTS = RetryPolicy().attempts  # the first try and three retries
CANDLE = "/stock/candle"


@pytest.fixture(autouse=True)
def fast_and_isolated(monkeypatch, tmp_path_factory, caplog):
    """Fast retries, and a fresh circuit breaker and limiter per test (they are per process)."""
    monkeypatch.setattr(breaker_module, "_SHARED", {})
    monkeypatch.setattr(limiter_module, "_SHARED", {})
    monkeypatch.setenv("MARKETPIPE_RETRY_INITIAL_SECONDS", "0.01")
    monkeypatch.setenv("MARKETPIPE_RETRY_MAX_SECONDS", "0.05")
    monkeypatch.setattr(finnhub, "TIMEOUT", 2.0)
    monkeypatch.setenv("MARKETPIPE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("MARKETPIPE_FINNHUB_RATE_LIMIT", "100/s")
    caplog.set_level(logging.INFO)


@pytest.fixture
def fake(monkeypatch):
    with FakeFinnhub(FAKE_KEY) as server:
        monkeypatch.setenv("FINNHUB_BASE_URL", server.url)
        monkeypatch.setenv("FINNHUB_API_KEY", FAKE_KEY)
        yield server


def write_universe(path: Path, symbols: list[str]) -> str:
    n = len(symbols)
    frame = pl.DataFrame(
        {
            "symbol": symbols,
            "name": [f"{s} Inc." for s in symbols],
            "listing_date": [dt.date(2000, 1, 3)] * n,
            "delisting_date": [None] * n,
        },
        schema=UNIVERSE,
    )
    frame.write_csv(path)
    return str(path)


def run_daily(tmp_path, lake, instance, sessions, *, source="finnhub", symbols=SYMBOLS):
    market_data = MarketDataResource(
        us_source=source,
        us_universe=write_universe(tmp_path / "universe.csv", symbols),
        landing_url="unused-landing",
    )
    # One run, as a user's first backfill: the universe from the CSV, then the prices.
    return materialize(
        "us",
        ("universe", "daily_prices"),
        lake=lake,
        market_data=market_data,
        instance=instance,
        partition_range=(sessions[0], sessions[-1]),
    )


def stored(lake, sessions) -> pl.DataFrame:
    first, last = dt.date.fromisoformat(sessions[0]), dt.date.fromisoformat(sessions[-1])
    frame = lake.read_partitions("daily_prices", "us", DAILY_PRICES, first=first, last=last)
    return frame.sort("symbol", "trade_date")


def days(sessions) -> list[dt.date]:
    return [dt.date.fromisoformat(s) for s in sessions]


def failure_text(result: dg.ExecuteInProcessResult) -> str:
    failures = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    assert failures, "expected a failed step"
    return failures[0].step_failure_data.error.to_string()


def metadata(result) -> dict:
    """The run's daily_prices metadata (a range's per-partition facts summed)."""
    return run_metadata(result, dg.AssetKey(["us", "daily_prices"]))


def materialized_prices(result) -> list:
    key = dg.AssetKey(["us", "daily_prices"])
    return [e for e in result.get_asset_materialization_events() if e.asset_key == key]


def checks(result) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def assert_no_secret(result, instance, lake, caplog, *secrets):
    """No key in the run's event log (messages, metadata, errors), Python logs or the lake."""
    secrets = secrets or (FAKE_KEY,)
    texts = [dg.serialize_value(e) for e in instance.all_logs(result.run_id)]
    texts += [str(e) for e in result.all_events] + [caplog.text]
    for secret in secrets:
        for text in texts:
            assert secret not in text
        for path in Path(lake.url).rglob("*"):
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), path


# Values --------------------------------------------------------------------------------------
@pytest.mark.parametrize("stamp", ["utc_midnight", "ny_open"])
def test_daily_prices_match_the_vendor(tmp_path, lake, instance, monkeypatch, caplog, stamp):
    with FakeFinnhub(FAKE_KEY, stamp=stamp) as fake:
        monkeypatch.setenv("FINNHUB_BASE_URL", fake.url)
        monkeypatch.setenv("FINNHUB_API_KEY", FAKE_KEY)
        sessions = recent_sessions("us", 3)
        result = run_daily(tmp_path, lake, instance, sessions)

        assert result.success
        assert_frame_equal(stored(lake, sessions), fake.truth(SYMBOLS, days(sessions)))
        assert metadata(result)["rows_by_source"] == {"finnhub": 9}
        assert metadata(result)["quarantined"] == 0
        assert checks(result)["completeness"] and checks(result)["price_relationships"]
        # One request per symbol for the whole range; the key in the header, not the URL.
        assert sorted(r.query["symbol"] for r in fake.requests) == SYMBOLS
        for request in fake.requests:
            assert request.path == CANDLE and request.query["resolution"] == "D"
            assert request.headers["x-finnhub-token"] == FAKE_KEY
            assert "token" not in request.query
        assert_no_secret(result, instance, lake, caplog)


def test_session_date_reads_both_stamp_conventions():
    # 2025-11-03 (after the DST change) and 2025-06-02 (during DST).
    for day in (dt.date(2025, 11, 3), dt.date(2025, 6, 2)):
        midnight_utc = dt.datetime.combine(day, dt.time(0), dt.UTC).timestamp()
        open_ny = dt.datetime.combine(day, dt.time(9, 30), finnhub.NEW_YORK).timestamp()
        assert finnhub.session_date(midnight_utc) == day
        assert finnhub.session_date(open_ny) == day
    assert finnhub.session_date(None) is None


def test_bars_outside_requested_sessions_are_not_returned(fake):
    source = finnhub.source_from_env()
    wanted = sessions_between("us", dt.date(2025, 6, 2), dt.date(2025, 6, 6))[1:3]
    frame = source.daily_bars("us", wanted, ["AAPL"])
    assert frame["trade_date"].to_list() == wanted


def test_a_running_sessions_candle_is_not_stored(fake, caplog):
    before, running = sessions_between("us", dt.date(2025, 6, 2), dt.date(2025, 6, 3))
    eleven = dt.datetime.combine(running, dt.time(11), finnhub.NEW_YORK).timestamp()
    source = finnhub.FinnhubSource(FAKE_KEY, fake.url, clock=lambda: eleven)
    frame = source.daily_bars("us", [before, running], ["AAPL"])
    assert frame["trade_date"].to_list() == [before]
    assert "not closed yet (2025-06-03)" in caplog.text
    after_close = finnhub.FinnhubSource(FAKE_KEY, fake.url, clock=lambda: eleven + 5 * 3600)
    assert after_close.daily_bars("us", [running], ["AAPL"])["trade_date"].to_list() == [running]


# Transient faults: retried, then the run succeeds --------------------------------------------
def test_retry_after_is_honoured(tmp_path, lake, instance, fake, caplog):
    fake.rate_limited(retry_after=1)
    sessions = recent_sessions("us", 2)
    result = run_daily(tmp_path, lake, instance, sessions)

    assert result.success
    assert_frame_equal(stored(lake, sessions), fake.truth(SYMBOLS, days(sessions)))
    first, second = fake.requests[0], fake.requests[1]
    assert first.query["symbol"] == second.query["symbol"]  # the same request, retried
    assert 1.0 <= second.at - first.at < 3.0  # waited what the server asked, from its side
    assert fake.count(CANDLE) == len(SYMBOLS) + 1
    assert_no_secret(result, instance, lake, caplog)


@pytest.mark.parametrize(
    "fault, extra, timeout",
    [
        pytest.param(lambda f: f.rate_limited(times=2), 2, 2.0, id="429-without-retry-after"),
        pytest.param(lambda f: f.server_errors(3), 3, 2.0, id="5xx-burst"),
        pytest.param(lambda f: f.malformed(), 1, 2.0, id="malformed-json"),
        pytest.param(lambda f: f.slow(1.0), 1, 0.4, id="slow-beyond-timeout"),
        pytest.param(lambda f: f.slow(0.3, times=3), 0, 2.0, id="slow-within-timeout"),
    ],
)
def test_transient_faults_are_retried(
    tmp_path, lake, instance, fake, monkeypatch, caplog, fault, extra, timeout
):
    monkeypatch.setattr(finnhub, "TIMEOUT", timeout)
    fault(fake)
    sessions = recent_sessions("us", 2)
    result = run_daily(tmp_path, lake, instance, sessions)

    assert result.success
    # Nothing lost, nothing duplicated.
    assert_frame_equal(stored(lake, sessions), fake.truth(SYMBOLS, days(sessions)))
    assert fake.count(CANDLE) == len(SYMBOLS) + extra
    assert_no_secret(result, instance, lake, caplog)


def test_outage_beyond_retries_fails_naming_provider_endpoint_and_symbol(
    tmp_path, lake, instance, fake, caplog
):
    fake.server_errors(100)
    sessions = recent_sessions("us", 1)
    result = run_daily(tmp_path, lake, instance, sessions)

    assert not result.success
    text = failure_text(result)
    assert "finnhub /stock/candle [AAPL]" in text and "gave up after 4 attempts" in text
    # The first symbol is asked alone: an outage costs its retries, not one per symbol.
    assert fake.count(CANDLE) == ATTEMPTS
    assert not Path(lake.url, "daily_prices").exists()
    assert_no_secret(result, instance, lake, caplog)


# Permanent faults ----------------------------------------------------------------------------
def test_bad_key_fails_after_exactly_one_request(
    tmp_path, lake, instance, fake, monkeypatch, caplog
):
    monkeypatch.setenv("FINNHUB_API_KEY", WRONG_KEY)
    sessions = recent_sessions("us", 2)
    result = run_daily(tmp_path, lake, instance, sessions)

    assert not result.success
    assert fake.count() == 1  # a 401 is never retried, and no other symbol is tried
    text = failure_text(result)
    assert "finnhub /stock/candle [AAPL]: HTTP 401" in text
    assert "Invalid API key" in text and "FINNHUB_API_KEY" in text
    assert_no_secret(result, instance, lake, caplog, WRONG_KEY, FAKE_KEY)


def test_plan_without_the_endpoint_is_named(fake):
    fake.faults.add(403, {"error": "You don't have access to this resource."}, times=10)
    source = finnhub.source_from_env()
    with pytest.raises(finnhub.Unauthorized, match="plan may not include") as raised:
        source.daily_bars("us", [dt.date(2025, 6, 2)], ["AAPL"])
    assert "finnhub /stock/candle [AAPL]: HTTP 403" in str(raised.value)
    assert fake.count() == 1


def test_missing_array_fails_as_schema_drift(tmp_path, lake, instance, fake, caplog):
    fake.drop_keys["MSFT"] = {"v"}
    sessions = recent_sessions("us", 2)
    result = run_daily(tmp_path, lake, instance, sessions)

    assert not result.success
    text = failure_text(result)
    assert "finnhub /stock/candle [MSFT]" in text and "missing array(s) ['v']" in text
    # Not retried: the same answer would come back. (Other symbols may or may not have been
    # requested before the failure stopped the fan-out, so only MSFT's requests are counted.)
    msft = [
        r for r in fake.requests if r.path.startswith(CANDLE) and r.query.get("symbol") == "MSFT"
    ]
    assert len(msft) == 1
    assert_no_secret(result, instance, lake, caplog)


def test_unknown_symbol_counts_as_missing_not_fatal(tmp_path, lake, instance, fake, caplog):
    fake.unknown = {"NVDA"}
    sessions = recent_sessions("us", 2)
    result = run_daily(tmp_path, lake, instance, sessions)

    # The step fetches the others; the completeness check (blocking) reports the gap, so the
    # batch is kept in _rejected/ instead of being published.
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert not evaluations["completeness"].passed
    assert not materialized_prices(result)
    assert stored(lake, sessions).is_empty()
    rejected = rejected_rows(lake, "daily_prices", "us", DAILY_PRICES)
    assert_frame_equal(rejected, fake.truth(["AAPL", "MSFT"], days(sessions)))
    assert fake.count(CANDLE) == len(SYMBOLS)  # no_data is not retried
    assert "NVDA" in caplog.text and "no data" in caplog.text


def test_nulls_in_the_arrays_end_in_quarantine(tmp_path, lake, instance, fake, caplog):
    sessions = recent_sessions("us", 2)
    day = dt.date.fromisoformat(sessions[-1])
    fake.nulls[("AAPL", day)] = {"c"}
    fake.nulls[("MSFT", day)] = {"v"}
    # Enough symbols that two rejected bars keep completeness above its 95% threshold (below
    # it, nothing would be published).
    symbols = ["AAPL", "MSFT", *(f"S{i:02d}" for i in range(40))]
    result = run_daily(tmp_path, lake, instance, sessions, symbols=symbols)

    truth = fake.truth(symbols, days(sessions))
    clean = stored(lake, sessions)
    quarantined = lake.read_quarantine("daily_prices", "us", DAILY_PRICES)
    assert sorted(quarantined["symbol"]) == ["AAPL", "MSFT"]
    assert all(v.to_list() == ["required_fields"] for v in quarantined["violations"])
    assert quarantined.filter(pl.col("symbol") == "AAPL")["close"].to_list() == [None]
    assert quarantined.filter(pl.col("symbol") == "MSFT")["volume"].to_list() == [None]
    # No row lost or duplicated: stored + quarantined is exactly the vendor's rows.
    both = pl.concat([clean, quarantined.select(list(DAILY_PRICES))])
    assert (
        both.select("symbol", "trade_date")
        .sort("symbol", "trade_date")
        .equals(truth.select("symbol", "trade_date"))
    )
    assert_frame_equal(clean, truth.join(quarantined, on=["symbol", "trade_date"], how="anti"))
    assert metadata(result)["quarantined"] == 2


def test_infinity_and_nan_in_the_json_reach_validation_and_no_row_is_lost(
    tmp_path, lake, instance, fake
):
    sessions = recent_sessions("us", 2)
    day = dt.date.fromisoformat(sessions[-1])
    fake.overrides[("AAPL", day)] = {"h": math.inf}  # sent as `Infinity`
    fake.overrides[("MSFT", day)] = {"c": math.nan}  # sent as `NaN`
    # Enough symbols that two rejected bars keep completeness above its 95% threshold.
    symbols = ["AAPL", "MSFT", *(f"S{i:02d}" for i in range(40))]
    result = run_daily(tmp_path, lake, instance, sessions, symbols=symbols)
    assert result.success  # no crash on the literals

    clean = stored(lake, sessions)
    quarantined = lake.read_quarantine("daily_prices", "us", DAILY_PRICES)
    both = pl.concat([clean, quarantined.select(list(DAILY_PRICES))])
    assert len(both) == len(symbols) * len(sessions)  # stored + quarantined = what was sent
    # The infinite high arrives as infinity (stored today; the non-finite rule quarantines it),
    # never turned into null or a number.
    aapl = both.filter((pl.col("symbol") == "AAPL") & (pl.col("trade_date") == day))
    assert aapl["high"].to_list() == [math.inf]
    msft = both.filter((pl.col("symbol") == "MSFT") & (pl.col("trade_date") == day))
    assert msft["close"].is_null().all() or msft["close"].is_nan().all()
    assert "MSFT" in quarantined["symbol"].to_list()


# Rate limit, universe, configuration, quotes ---------------------------------------------------
def test_rate_limit_holds_from_the_servers_side(fake, monkeypatch):
    monkeypatch.setenv("MARKETPIPE_FINNHUB_RATE_LIMIT", "4/s")
    source = finnhub.source_from_env()
    assert source.concurrency == 4
    symbols = [f"S{i:02d}" for i in range(10)]
    frame = source.daily_bars("us", [dt.date(2025, 6, 2)], symbols)

    assert sorted(frame["symbol"]) == symbols
    starts = sorted(r.at for r in fake.requests)
    # Never more than 4 requests in any one-second window (small allowance for clocks).
    assert all(b - a >= 0.95 for a, b in zip(starts, starts[4:], strict=False))


def test_default_rate_limit_is_the_free_tier(fake, monkeypatch):
    monkeypatch.delenv("MARKETPIPE_FINNHUB_RATE_LIMIT")
    source = finnhub.source_from_env()
    assert source.rate == (60, 60.0) and source.concurrency == 60


def test_universe_tells_the_user_what_to_set(tmp_path, lake, instance, fake):
    with pytest.raises(SourceError, match="MARKETPIPE_US_UNIVERSE"):
        finnhub.source_from_env().universe("us")
    market_data = MarketDataResource(us_source="finnhub", landing_url="unused-landing")
    result = materialize("us", ("universe",), lake=lake, market_data=market_data, instance=instance)
    assert not result.success
    assert "MARKETPIPE_US_UNIVERSE" in failure_text(result)


def test_configuration_errors(monkeypatch, fake):
    monkeypatch.delenv("FINNHUB_API_KEY")
    with pytest.raises(ConfigurationError, match="FINNHUB_API_KEY"):
        finnhub.source_from_env()
    monkeypatch.setenv("FINNHUB_API_KEY", FAKE_KEY)
    monkeypatch.setenv("MARKETPIPE_FINNHUB_RATE_LIMIT", "lots")
    with pytest.raises(ConfigurationError, match="MARKETPIPE_FINNHUB_RATE_LIMIT"):
        finnhub.source_from_env()
    monkeypatch.setenv("MARKETPIPE_FINNHUB_RATE_LIMIT", "60/min")
    source = finnhub.source_from_env()
    assert FAKE_KEY not in repr(source) and FAKE_KEY not in str(vars(source).get("rate"))
    with pytest.raises(ConfigurationError, match="market 'us' only"):
        source.daily_bars("krx", [dt.date(2025, 6, 2)], ["005930"])


def test_quote(fake):
    source = finnhub.source_from_env()
    quote = asyncio.run(source.quote("AAPL"))
    assert set(quote) == {
        "symbol",
        "price",
        "change",
        "change_pct",
        "open",
        "high",
        "low",
        "prev_close",
        "ts",
    }
    assert quote["price"] > 0 and quote["ts"].tzinfo is not None
    assert quote["change"] == pytest.approx(quote["price"] - quote["prev_close"], abs=0.011)
    assert fake.requests[-1].path == "/quote"
    assert fake.requests[-1].headers["x-finnhub-token"] == FAKE_KEY
    fake.unknown = {"ZZZZ"}
    with pytest.raises(NotFound, match=r"finnhub /quote \[ZZZZ\]"):
        asyncio.run(source.quote("ZZZZ"))
