"""The KRX source against a local KRX Open API (tests/fakes/krx.py), through real Dagster runs:
values as the vendor sent them, halted stocks stored, faults retried or failed clearly, no
secret anywhere."""

import datetime as dt
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from checks.errors import ConfigurationError
from checks.schemas import DAILY_PRICES
from resources.market_data import MarketDataResource
from resources.providers import breaker, krx, limiter
from resources.providers.errors import SchemaDrift
from resources.sources.base import SourceError
from resources.sources.synthetic import SyntheticSource
from tests.conftest import materialize, recent_sessions, rejected_rows
from tests.fakes.krx import API_KEY, LISTING, FakeKrx
from tests.metadata_values import run_metadata

KEY = ["symbol", "trade_date"]
WRONG_KEY = "krx-wrong-auth-key-0b5e11"


@pytest.fixture(autouse=True)
def provider_env(monkeypatch, tmp_path):
    """Fresh circuit breakers and limiters per test, fast retries and a short timeout."""
    monkeypatch.setattr(breaker, "_SHARED", {})
    monkeypatch.setattr(limiter, "_SHARED", {})
    monkeypatch.setattr(krx, "TIMEOUT", 1.0)
    monkeypatch.setenv("MARKETPIPE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MARKETPIPE_RETRY_INITIAL_SECONDS", "0.01")
    monkeypatch.setenv("MARKETPIPE_RETRY_MAX_SECONDS", "0.05")
    monkeypatch.setenv("MARKETPIPE_KRX_RATE_LIMIT", "20/s")
    monkeypatch.setenv("KRX_API_KEY", API_KEY)


@pytest.fixture
def fake(monkeypatch):
    with FakeKrx() as server:
        monkeypatch.setenv("KRX_BASE_URL", server.url)
        yield server


def resource(source: str = "krx", **kwargs) -> MarketDataResource:
    return MarketDataResource(
        krx_source=source,
        synthetic_missing_rate=0.0,
        synthetic_bad_row_rate=0.0,
        landing_url="unused-landing",
        **kwargs,
    )


def run(lake, instance, market_data, datasets=("daily_prices",), **partitions):
    return materialize(
        "krx", datasets, lake=lake, market_data=market_data, instance=instance, **partitions
    )


def stored(lake, days) -> pl.DataFrame:
    first, last = min(days), max(days)
    frame = lake.read_partitions("daily_prices", "krx", DAILY_PRICES, first=first, last=last)
    return frame.sort(KEY)


def quarantined(lake, days) -> pl.DataFrame:
    frame = lake.read_quarantine(
        "daily_prices", "krx", DAILY_PRICES, first=min(days), last=max(days)
    )
    return frame.sort(KEY)


def dates(keys) -> list[dt.date]:
    return [dt.date.fromisoformat(k) for k in keys]


def metadata(result) -> dict:
    # A range run records each partition's own facts; summed here, they are the run's.
    return run_metadata(result, dg.AssetKey(["krx", "daily_prices"]))


def failure_text(result) -> str:
    """Every failed step's error and its causes, as Dagster recorded them."""
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


def daily_requests(fake) -> list:
    return [r for r in fake.requests if r.path.startswith("/svc/apis/sto/")]


# 1. Values ------------------------------------------------------------------------------------
def test_universe_and_daily_prices_match_the_vendor(fake, lake, instance, caplog):
    fake.thousands_separators = True  # "79,600", as KRX sometimes sends
    market_data = resource()
    assert run(lake, instance, market_data, ("universe",)).success
    universe = lake.read_table("universe", "krx").sort("symbol")
    assert universe["symbol"].to_list() == sorted(s for s, _, _ in LISTING)
    assert dict(zip(universe["symbol"], universe["name"], strict=True)) == {
        s: n for s, n, _ in LISTING
    }
    assert set(universe["listing_date"]) == {krx.HISTORY_START}
    assert universe["delisting_date"].null_count() == len(universe)

    keys = recent_sessions("krx", 3)
    before = len(fake.requests)
    result = run(lake, instance, market_data, partition_range=(keys[0], keys[-1]))
    assert result.success, failure_text(result)

    days = dates(keys)
    assert_frame_equal(stored(lake, days), fake.truth(days).sort(KEY))
    assert quarantined(lake, days).is_empty()
    # One request per session per board, whatever the number of symbols; the key in the header.
    requests = fake.requests[before:]
    assert sorted((r.path, r.query["basDd"]) for r in requests) == sorted(
        (path, f"{d:%Y%m%d}")
        for path in ("/svc/apis/sto/stk_bydd_trd", "/svc/apis/sto/ksq_bydd_trd")
        for d in days
    )
    assert {r.headers["auth_key"] for r in requests} == {API_KEY}
    meta = metadata(result)
    assert meta["rows"] == 3 * len(LISTING) and meta["rows_by_source"] == {"krx": 3 * len(LISTING)}
    assert_no_secret([API_KEY], result, instance, lake, caplog)


def test_universe_walks_back_to_the_latest_published_session(fake):
    sessions = recent_sessions("krx", 4)
    fake.published_through = dt.date.fromisoformat(sessions[1])
    today = dt.date.fromisoformat(sessions[-1])
    universe = krx.source_from_env().universe("krx", today=today)
    assert len(universe) == len(LISTING)
    asked = [r.query["basDd"] for r in daily_requests(fake)]
    assert asked == [f"{d:%Y%m%d}" for d in dates(sessions[:0:-1]) for _ in range(2)]

    fake.published_through = dt.date(2001, 1, 2)
    with pytest.raises(SourceError, match="MARKETPIPE_KRX_UNIVERSE"):
        krx.source_from_env().universe("krx", today=today)


# 2. Halted stocks and bad rows ----------------------------------------------------------------
def test_halted_stock_is_stored_and_genuinely_bad_rows_are_quarantined(fake, lake, instance):
    key = recent_sessions("krx", 1)[0]
    day = dt.date.fromisoformat(key)
    halted, high_below_low, zero_open, no_close = (s for s, _, _ in LISTING[:4])
    fake.halted = {(halted, day)}
    low = fake.bar(high_below_low, day)["low"]
    fake.overrides = {
        (high_below_low, day): {"TDD_HGPRC": str(int(low) - 10)},
        (zero_open, day): {"TDD_OPNPRC": "0"},  # a zero price with trades is not a halt
        (no_close, day): {"TDD_CLSPRC": None},  # an absent key is null, never 0
    }
    market_data = resource()
    assert run(lake, instance, market_data, ("universe",)).success
    result = run(lake, instance, market_data, partition_key=key)

    rows = stored(lake, [day])
    (flat,) = rows.filter(pl.col("symbol") == halted).iter_rows(named=True)
    base = fake.bar(halted, day)["close"]  # the previous session's close carries on
    assert (flat["open"], flat["high"], flat["low"], flat["close"], flat["volume"]) == (
        base,
        base,
        base,
        base,
        0,
    )
    bad = quarantined(lake, [day])
    assert dict(zip(bad["symbol"], bad["violations"].to_list(), strict=True)) == {
        high_below_low: ["high_gte_low", "open_within_range", "close_within_range"],
        zero_open: ["positive_prices", "open_within_range"],
        no_close: ["required_fields"],
    }
    expected = fake.truth([day]).filter(
        ~pl.col("symbol").is_in([high_below_low, zero_open, no_close])
    )
    assert_frame_equal(rows, expected.sort(KEY))
    meta = metadata(result)
    assert (meta["halted"], meta["quarantined"]) == (1, 3)
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert checks["price_relationships"].passed
    assert checks["completeness"].passed  # 57 of 60 is 95%
    assert result.success


# 3. Faults ------------------------------------------------------------------------------------
FAULTS = {
    "429 with Retry-After": dict(
        status=429, body={"respCode": "429"}, headers={"Retry-After": "1"}
    ),
    "429 without Retry-After": dict(status=429, body={"respMsg": "Too Many Requests"}),
    "5xx burst": dict(status=503, body={"respMsg": "Service Unavailable"}, times=3),
    "malformed JSON": dict(status=200, body=b'{"OutBlock_1": [{"BAS_DD": "2026'),
    "slow reply": dict(status=200, body={"OutBlock_1": []}, delay=1.5),
}


@pytest.mark.parametrize("fault", FAULTS.values(), ids=FAULTS.keys())
def test_transient_faults_are_retried_without_losing_or_duplicating_rows(
    fault, fake, lake, instance
):
    market_data = resource()
    assert run(lake, instance, market_data, ("universe",)).success
    key = recent_sessions("krx", 1)[0]
    fake.faults.add(path="/svc/apis/sto/", **fault)
    before = len(fake.requests)
    result = run(lake, instance, market_data, partition_key=key)
    assert result.success, failure_text(result)
    assert_frame_equal(stored(lake, dates([key])), fake.truth(dates([key])).sort(KEY))
    assert len(fake.requests) - before == 2 + fault.get("times", 1)  # the failures, retried


def test_invalid_key_fails_naming_provider_and_endpoint_without_retrying(
    fake, lake, instance, monkeypatch, caplog
):
    market_data = resource()
    assert run(lake, instance, market_data, ("universe",)).success
    monkeypatch.setenv("KRX_API_KEY", WRONG_KEY)
    key = recent_sessions("krx", 1)[0]
    before = len(fake.requests)
    result = run(lake, instance, market_data, partition_key=key)
    assert not result.success
    text = failure_text(result)
    assert "Unauthorized" in text and "krx /svc/apis/sto/" in text and "KRX_API_KEY" in text
    asked = [(r.path, r.query["basDd"]) for r in fake.requests[before:]]
    assert len(asked) == len(set(asked)) <= 2  # never retried
    assert lake.read_partitions("daily_prices", "krx", DAILY_PRICES).is_empty()
    searched = assert_no_secret([API_KEY, WRONG_KEY], result, instance, lake, caplog)
    assert "Unauthorized" in searched  # the search did cover the error


def test_persistent_outage_falls_back_to_the_next_source(fake, lake, instance):
    market_data = resource("krx,synthetic")
    assert run(lake, instance, market_data, ("universe",)).success
    key = recent_sessions("krx", 1)[0]
    fake.faults.add(503, {"respMsg": "down"}, path="/svc/apis/sto/", times=10**6)
    run(lake, instance, market_data, partition_key=key)
    synthetic = SyntheticSource(symbols=500, missing_rate=0.0, bad_row_rate=0.0)
    expected = synthetic.daily_bars("krx", dates([key]), [s for s, _, _ in LISTING])
    # The synthetic fallback serves 11 of the 12 listed symbols: short of 95%, the batch is kept
    # in _rejected/ rather than published, every row of it from the fallback.
    assert stored(lake, dates([key])).is_empty()
    served = rejected_rows(lake, "daily_prices", "krx", DAILY_PRICES)
    assert set(served["source"]) == {"synthetic"}
    assert_frame_equal(served.sort(KEY), expected.sort(KEY))


def test_partial_day_and_unknown_symbols_count_as_missing(fake, lake, instance, tmp_path):
    key = recent_sessions("krx", 1)[0]
    day = dt.date.fromisoformat(key)
    absent = LISTING[5][0]
    fake.missing = {(absent, day)}
    universe = pl.DataFrame(
        {
            "symbol": [s for s, _, _ in LISTING] + ["999990"],
            "name": [n for _, n, _ in LISTING] + ["not listed at KRX"],
            "listing_date": [dt.date(2015, 1, 2)] * (len(LISTING) + 1),
            "delisting_date": [None] * (len(LISTING) + 1),
        },
        schema_overrides={"delisting_date": pl.Date},
    )
    path = tmp_path / "krx_universe.csv"
    universe.write_csv(path)
    market_data = resource(krx_universe=str(path))
    assert run(lake, instance, market_data, ("universe",)).success
    result = run(lake, instance, market_data, partition_key=key)

    assert_frame_equal(stored(lake, [day]), fake.truth([day]).sort(KEY))
    assert absent not in stored(lake, [day])["symbol"].to_list()
    assert quarantined(lake, [day]).is_empty()
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    completeness = checks["completeness"]
    assert completeness.metadata["missing_symbol_days"].value == 2
    assert completeness.passed  # 59 of 61 is above 95%


def test_payload_without_outblock_is_schema_drift_and_not_retried(fake):
    day = dates(recent_sessions("krx", 1))[0]
    fake.faults.add(200, {"unexpected": []}, path="/svc/apis/sto/stk_bydd_trd")
    with pytest.raises(SchemaDrift, match=r"krx /svc/apis/sto/stk_bydd_trd.*OutBlock_1"):
        krx.source_from_env().daily_bars("krx", [day], ["000010"])
    assert fake.count("/svc/apis/sto/stk_bydd_trd") == 1


# 4. Configuration -----------------------------------------------------------------------------
def test_configuration_from_the_environment(monkeypatch):
    monkeypatch.delenv("MARKETPIPE_KRX_RATE_LIMIT")
    monkeypatch.delenv("KRX_BASE_URL", raising=False)
    source = krx.source_from_env()
    assert (source.requests, source.per_seconds) == (5, 1.0)
    assert source.base_url == "https://data-dbg.krx.co.kr"
    assert API_KEY not in repr(source)
    monkeypatch.setenv("MARKETPIPE_KRX_RATE_LIMIT", "fast")
    with pytest.raises(ConfigurationError, match="MARKETPIPE_KRX_RATE_LIMIT"):
        krx.source_from_env()
    monkeypatch.delenv("MARKETPIPE_KRX_RATE_LIMIT")
    monkeypatch.delenv("KRX_API_KEY")
    with pytest.raises(ConfigurationError, match="KRX_API_KEY"):
        krx.source_from_env()
    with pytest.raises(SourceError, match="market 'krx' only"):
        krx.KrxSource(api_key="x").daily_bars("us", [dt.date(2026, 1, 5)], ["AAA"])
