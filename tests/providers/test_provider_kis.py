"""The KIS source against a fake KIS server on 127.0.0.1: daily prices through real Dagster runs,
each injected fault's outcome, tokens (file, sharing, renewal, one per minute), quotes and books.

Every run is checked for lost or duplicated rows (stored + quarantined == the fake's rows) and for
the app key and secret anywhere in the run's event log, errors, python logs, lake or caches.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import stat
import threading
import time
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from checks.errors import ConfigurationError
from checks.markets import sessions_between
from checks.schemas import DAILY_PRICES
from resources.lake import LakeResource
from resources.market_data import MarketDataResource
from resources.providers import kis
from resources.providers.breaker import shared_breaker
from resources.providers.errors import NotFound, ProviderDown
from resources.providers.http import RetryPolicy
from resources.sources.base import SourceError
from resources.sources.synthetic import SyntheticSource
from tests.conftest import materialize, recent_sessions
from tests.fakes.kis import (
    BOOK,
    DAILY,
    MALFORMED,
    NO_OUTPUT,
    PRICE,
    RATE_LIMIT,
    TOKEN,
    FakeKis,
)
from tests.metadata_values import run_metadata

APP_KEY = "PSfakeKISappKEY7f3a9c1e5b2d"
APP_SECRET = "fakeKISsecret+Q2w/E4r=T6y-never-logged"
WRONG_KEY = "PSwrongKISappKEY0d0d0d0d0d0d"
SYMBOLS = [f"{(i + 1) * 10:06d}" for i in range(20)]  # synthetic tickers, so fallback can serve
UNKNOWN = "999990"
KEY = ["symbol", "trade_date"]
FAST = RetryPolicy(initial=0.05, jitter=0.05)


# Fixtures and helpers -------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def kis_env(monkeypatch, tmp_path):
    monkeypatch.setenv("KIS_APP_KEY", APP_KEY)
    monkeypatch.setenv("KIS_APP_SECRET", APP_SECRET)
    monkeypatch.setenv("MARKETPIPE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MARKETPIPE_RETRY_INITIAL_SECONDS", "0.05")
    monkeypatch.setenv("MARKETPIPE_KIS_RATE_LIMIT", "200/s")
    breaker = shared_breaker("kis")
    breaker.record_success()  # the breaker is per process: no test inherits another's outage
    yield
    breaker.record_success()


@pytest.fixture(scope="module")
def instance():
    """One instance for the module's runs (each run is its own run id): ~1 s less per test."""
    with dg.instance_for_test() as shared:
        yield shared


@pytest.fixture
def fake(monkeypatch):
    with FakeKis(APP_KEY, APP_SECRET, symbols=SYMBOLS, latency=(0.0, 0.005)) as server:
        monkeypatch.setenv("KIS_BASE_URL", server.url)
        yield server


def market_data(tmp_path: Path, symbols=SYMBOLS, source: str = "kis", **settings):
    path = tmp_path / "krx_universe.csv"
    universe = pl.DataFrame(
        {
            "symbol": symbols,
            "name": [f"KIS test {s}" for s in symbols],
            "listing_date": [dt.date(2000, 1, 4)] * len(symbols),
            "delisting_date": [None] * len(symbols),
        },
        schema_overrides={"delisting_date": pl.Date},
    )
    universe.write_csv(path)
    return MarketDataResource(
        krx_source=source, krx_universe=str(path), landing_url="unused", **settings
    )


def run_daily(lake, data, instance, days: list[str]) -> dg.ExecuteInProcessResult:
    assert materialize("krx", ("universe",), lake=lake, market_data=data, instance=instance).success
    where = (
        {"partition_key": days[0]} if len(days) == 1 else {"partition_range": (days[0], days[-1])}
    )
    return materialize(
        "krx", ("daily_prices",), lake=lake, market_data=data, instance=instance, **where
    )


def dates(days: list[str]) -> list[dt.date]:
    return [dt.date.fromisoformat(d) for d in days]


def lake_rows(lake: LakeResource) -> tuple[pl.DataFrame, pl.DataFrame]:
    stored = lake.read_partitions("daily_prices", "krx", DAILY_PRICES)
    quarantined = lake.read_quarantine("daily_prices", "krx", DAILY_PRICES)
    return stored, quarantined


def assert_no_row_lost_or_duplicated(lake, fake, symbols, days) -> pl.DataFrame:
    stored, quarantined = lake_rows(lake)
    got = pl.concat([stored, quarantined.drop("violations")]).sort(KEY)
    want = fake.truth(symbols, dates(days)).with_columns(source=pl.lit("kis")).sort(KEY)
    assert_frame_equal(got, want)
    return stored


def metadata(result, name: str):
    (event, *_) = result.get_asset_materialization_events()
    return run_metadata(result, event.asset_key)[name]


def errors(result) -> list[str]:
    """Class and message of every step failure, with its causes."""
    found = []
    for event in result.all_events:
        if event.event_type == dg.DagsterEventType.STEP_FAILURE:
            error = event.step_failure_data.error
            while error is not None:
                found.append(f"{error.cls_name}: {error.message}")
                error = error.cause
    return found


def assert_no_secrets(instance, result, lake, caplog, tmp_path, secrets=(APP_KEY, APP_SECRET)):
    """The run's event log (messages, metadata, errors), the run record, python logs, and every
    file in the lake and the token cache."""
    log = "\n".join(dg.serialize_value(r) for r in instance.all_logs(result.run_id))
    assert "daily_prices" in log  # the scan reads the real records
    texts = [log, dg.serialize_value(instance.get_run_by_id(result.run_id)), caplog.text]
    texts += errors(result)
    for text in texts:
        for secret in secrets:
            assert secret not in text
    # The lake and the token cache, byte for byte (parquet, json, lock files).
    for root in (Path(lake.url), tmp_path / "cache"):
        for path in root.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                for secret in secrets:
                    assert secret.encode() not in data, path


def source(fake: FakeKis, tmp_path: Path, **settings) -> kis.KisSource:
    settings = {"cache_dir": tmp_path / "cache", "rate": (200, 1.0), "retry": FAST} | settings
    return kis.KisSource(APP_KEY, APP_SECRET, fake.url, **settings)


# Daily prices through Dagster -----------------------------------------------------------------
def test_daily_prices_through_dagster_equal_the_fakes_rows(fake, lake, instance, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    days = recent_sessions("krx", 5)
    fake.thousands = True  # "71,000"
    fake.page_rows = 2  # five sessions take three pages, chained by tr_cont
    fake.drop(SYMBOLS[3], dt.date.fromisoformat(days[1]))  # a partial day: 19 of 20
    fake.bad[(SYMBOLS[5], dt.date.fromisoformat(days[2]))] = "high_below_low"

    result = run_daily(lake, market_data(tmp_path), instance, days)

    assert result.success, errors(result)
    stored = assert_no_row_lost_or_duplicated(lake, fake, SYMBOLS, days)
    _, quarantined = lake_rows(lake)
    assert quarantined.select(KEY).rows() == [(SYMBOLS[5], dt.date.fromisoformat(days[2]))]
    assert stored.height == 20 * 5 - 2
    assert metadata(result, "rows_by_source") == {"kis": stored.height}
    assert metadata(result, "range_min_completeness_pct") == pytest.approx(95.0)
    # One token for the whole run; three pages per symbol, each window ending before the last.
    assert fake.count(TOKEN) == 1
    calls = fake.calls(DAILY)
    assert len(calls) == 3 * len(SYMBOLS) - 1  # the partial symbol's second page was its last
    first = calls[0]
    assert first.headers["tr_id"] == "FHKST03010100" and first.headers["custtype"] == "P"
    assert first.headers["appkey"] == APP_KEY and first.headers["authorization"].startswith(
        "Bearer "
    )
    assert first.query["FID_PERIOD_DIV_CODE"] == "D" and first.query["FID_ORG_ADJ_PRC"] == "0"
    windows = [c.query["FID_INPUT_DATE_2"] for c in calls if c.query["FID_INPUT_ISCD"] == "000010"]
    assert windows == [
        days[-1].replace("-", ""),
        (dt.date.fromisoformat(days[-2]) - dt.timedelta(1)).strftime("%Y%m%d"),
        (dt.date.fromisoformat(days[-4]) - dt.timedelta(1)).strftime("%Y%m%d"),
    ]
    assert_no_secrets(instance, result, lake, caplog, tmp_path)


def test_unknown_symbol_is_counted_missing_not_fatal(fake, lake, instance, tmp_path):
    days = recent_sessions("krx", 1)
    symbols = [*SYMBOLS[:19], UNKNOWN]
    result = run_daily(lake, market_data(tmp_path, symbols), instance, days)

    assert result.success, errors(result)
    assert_no_row_lost_or_duplicated(lake, fake, symbols, days)
    assert metadata(result, "completeness_pct") == pytest.approx(95.0)
    (check,) = [c for c in result.get_asset_check_evaluations() if c.check_name == "completeness"]
    assert check.passed and check.metadata["missing_symbol_days"].value == 1


def _retry_after(fake):
    fake.faults.add(429, {"message": "Too Many Requests"}, headers={"Retry-After": "1"}, path=DAILY)


FAULTS = {
    # name: (inject, extra requests the server sees)
    "429 with Retry-After": (_retry_after, 1),
    "429 without Retry-After": (lambda f: f.faults.add(429, {}, path=DAILY), 1),
    "EGW00201 in a 500": (lambda f: f.faults.add(500, RATE_LIMIT, path=DAILY, times=2), 2),
    "EGW00201 in a 200": (lambda f: f.faults.add(200, RATE_LIMIT, path=DAILY, times=2), 2),
    "5xx burst": (lambda f: f.faults.add(503, b"Service Unavailable", path=DAILY, times=3), 3),
    "malformed JSON": (lambda f: f.faults.add(200, MALFORMED, path=DAILY), 1),
    "slow answer": (lambda f: f.slow_down(0.5), 0),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault_is_retried_and_the_run_succeeds(fault, fake, lake, instance, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    days = recent_sessions("krx", 1)
    inject, extra = FAULTS[fault]
    inject(fake)

    result = run_daily(lake, market_data(tmp_path), instance, days)

    assert result.success, errors(result)
    assert_no_row_lost_or_duplicated(lake, fake, SYMBOLS, days)
    assert fake.count(DAILY) == len(SYMBOLS) + extra
    if fault == "429 with Retry-After":
        (retried,) = [s for s in SYMBOLS if len(_calls(fake, s)) == 2]
        first, second = _calls(fake, retried)
        assert second.at - first.at >= 1.0
    assert_no_secrets(instance, result, lake, caplog, tmp_path)


def _calls(fake, symbol):
    return [c for c in fake.calls(DAILY) if c.query["FID_INPUT_ISCD"] == symbol]


def test_persistent_outage_falls_back_to_the_next_source(fake, lake, instance, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    days = recent_sessions("krx", 1)
    fake.faults.add(503, b"Service Unavailable", path=DAILY, times=10_000)
    fallback = SyntheticSource(missing_rate=0.0, bad_row_rate=0.0)
    day = dt.date.fromisoformat(days[0])
    listed = fallback.universe("krx").filter(
        (pl.col("listing_date") <= day)
        & (pl.col("delisting_date").is_null() | (pl.col("delisting_date") > day))
    )
    symbols = listed["symbol"].to_list()[:20]  # the synthetic source has a bar for each
    data = market_data(
        tmp_path,
        symbols,
        source="kis,synthetic",
        synthetic_missing_rate=0.0,
        synthetic_bad_row_rate=0.0,
    )

    result = run_daily(lake, data, instance, days)

    assert result.success, errors(result)
    stored, quarantined = lake_rows(lake)
    assert set(stored["source"]) == {"synthetic"}
    assert metadata(result, "rows_by_source") == {"synthetic": stored.height}
    (failure,) = metadata(result, "source_failures")
    assert failure["source"] == "kis" and failure["error"] == "ProviderDown"
    assert "HTTP 503" in failure["reason"]
    assert stored.height == 20 and quarantined.is_empty()
    # The breaker opened after five failures instead of every symbol spending its retries.
    assert shared_breaker("kis").state == "open"
    assert fake.count(DAILY) < len(SYMBOLS) * FAST.attempts
    assert_no_secrets(instance, result, lake, caplog, tmp_path)


def test_bad_key_fails_once_with_a_clear_message(
    fake, lake, instance, tmp_path, caplog, monkeypatch
):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("KIS_APP_KEY", WRONG_KEY)
    result = run_daily(lake, market_data(tmp_path), instance, recent_sessions("krx", 1))

    assert not result.success
    message = "\n".join(errors(result))
    assert "Unauthorized: kis /oauth2/tokenP: EGW00103" in message
    assert "check KIS_APP_KEY and KIS_APP_SECRET" in message
    assert fake.count() == 1  # not retried, no data call
    assert "EGW00103" in dg.serialize_value(instance.all_logs(result.run_id))
    assert_no_secrets(instance, result, lake, caplog, tmp_path, (WRONG_KEY, APP_SECRET))


def test_answer_without_rows_fails_with_a_clear_message(fake, lake, instance, tmp_path):
    fake.faults.add(200, NO_OUTPUT, path=DAILY)
    result = run_daily(lake, market_data(tmp_path), instance, recent_sessions("krx", 1))

    assert not result.success
    message = "\n".join(errors(result))
    assert "SchemaDrift: kis /uapi/domestic-stock/v1/quotations/inquire-daily-itemchartprice" in (
        message
    )
    assert "no 'output2' list of rows" in message
    assert fake.count(DAILY) <= len(SYMBOLS)  # schema drift is not retried
    assert not (Path(lake.url) / "daily_prices").exists()


# The client directly ---------------------------------------------------------------------------
def test_long_ranges_page_backwards_through_full_pages(fake, tmp_path):
    fake.tr_cont = False  # the client must also page on a full page alone
    last = dt.date.fromisoformat(recent_sessions("krx", 1)[0])
    sessions = sessions_between("krx", last - dt.timedelta(days=365), last)  # ~245: 3 pages
    bars = source(fake, tmp_path).daily_bars("krx", sessions, SYMBOLS[:3])

    want = fake.truth(SYMBOLS[:3], sessions).with_columns(source=pl.lit("kis"))
    assert_frame_equal(bars.sort(KEY), want.sort(KEY))
    assert len(fake.calls(DAILY)) == 3 * 3


def test_requests_stay_within_the_rate_limit(tmp_path):
    with FakeKis(APP_KEY, APP_SECRET, latency=(0.01, 0.03)) as fake:
        symbols = [f"{i:06d}" for i in range(1, 26)]
        kis_source = source(fake, tmp_path, rate=(10, 1.0))
        assert kis_source.concurrency == 10
        day = dt.date.fromisoformat(recent_sessions("krx", 1)[0])
        bars = kis_source.daily_bars("krx", [day], symbols)
        starts = sorted(r.at for r in fake.requests)
    assert bars.height == 25
    assert len(starts) == 26  # the token and one call per symbol
    # Never more than 10 starts in any second (arrival jitter of a few ms allowed).
    assert all(b - a >= 0.95 for a, b in zip(starts, starts[10:], strict=False))


def test_timeout_is_retried(fake, tmp_path):
    fake.slow_down(1.0)
    day = dt.date.fromisoformat(recent_sessions("krx", 1)[0])
    bars = source(fake, tmp_path, timeout=0.3).daily_bars("krx", [day], SYMBOLS[:2])
    assert bars.height == 2
    assert fake.count(DAILY) == 3


def test_raw_prices_setting(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("KIS_BASE_URL", fake.url)
    monkeypatch.setenv("MARKETPIPE_KIS_ADJUSTED", "0")
    day = dt.date.fromisoformat(recent_sessions("krx", 1)[0])
    kis.source_from_env().daily_bars("krx", [day], SYMBOLS[:1])
    assert fake.calls(DAILY)[0].query["FID_ORG_ADJ_PRC"] == "1"
    monkeypatch.setenv("MARKETPIPE_KIS_ADJUSTED", "maybe")
    with pytest.raises(ConfigurationError, match="MARKETPIPE_KIS_ADJUSTED"):
        kis.source_from_env()
    monkeypatch.delenv("KIS_APP_SECRET")
    with pytest.raises(ConfigurationError, match="KIS_APP_SECRET is not set"):
        kis.source_from_env()


def test_universe_says_where_to_get_one(fake, tmp_path):
    with pytest.raises(SourceError) as error:
        source(fake, tmp_path).universe("krx")
    assert "MARKETPIPE_KRX_UNIVERSE" in str(error.value) and "krx,kis" in str(error.value)


def test_current_price_and_order_book(fake, tmp_path):
    fake.book_levels["000020"] = 3  # levels 4-10 answered "0", as outside the session

    async def read():
        async with source(fake, tmp_path) as kis_source:  # one pool, one token for all three
            return (
                await kis_source.current_price("000010"),
                await kis_source.order_book("000010"),
                await kis_source.order_book("000020"),
            )

    price, book, thin = asyncio.run(read())

    truth = fake._price("000010")
    assert price.price == float(truth["stck_prpr"]) and price.volume == int(truth["acml_vol"])
    assert (price.open, price.high, price.low) == tuple(
        float(truth[k]) for k in ("stck_oprc", "stck_hgpr", "stck_lwpr")
    )
    assert fake.calls(PRICE)[0].headers["tr_id"] == "FHKST01010100"
    assert fake.calls(BOOK)[0].headers["tr_id"] == "FHKST01010200"
    assert fake.count(TOKEN) == 1
    assert book.schema == kis.ORDER_BOOK and book["level"].to_list() == list(range(1, 11))
    assert (book["ask_price"] > book["bid_price"]).all() and book["bid_price"].is_sorted(
        descending=True
    )
    assert abs(book["snapshot_ts"][0] - dt.datetime.now(dt.UTC)) < dt.timedelta(seconds=10)
    assert thin["bid_price"].null_count() == 7 and thin["ask_price"].null_count() == 7
    assert thin["bid_size"].to_list()[3:] == [0] * 7 and thin["ask_size"].to_list()[3:] == [0] * 7


def test_unknown_symbol_quote_is_not_found(fake, tmp_path):
    with pytest.raises(NotFound, match="999990"):
        asyncio.run(source(fake, tmp_path).current_price(UNKNOWN))


# Tokens ------------------------------------------------------------------------------------------
def one_day() -> list[dt.date]:
    return [dt.date.fromisoformat(recent_sessions("krx", 1)[0])]


def test_token_file_is_private_holds_no_secret_and_serves_a_second_process(fake, tmp_path):
    source(fake, tmp_path).daily_bars("krx", one_day(), SYMBOLS[:2])

    (path,) = (tmp_path / "cache" / "kis").glob("token-*.json")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert APP_KEY not in path.name
    content = path.read_text()
    assert APP_KEY not in content and APP_SECRET not in content
    assert set(json.loads(content)) == {"access_token", "expires_at", "issued_at"}
    # Another process: a new source, nothing in memory, the same cache directory.
    source(fake, tmp_path).daily_bars("krx", one_day(), SYMBOLS[:2])
    assert fake.count(TOKEN) == 1


def test_concurrent_processes_share_one_token(fake, tmp_path):
    fake.latency = (0.05, 0.05)
    results = []

    def one_process():
        results.append(source(fake, tmp_path).daily_bars("krx", one_day(), SYMBOLS[:2]).height)

    threads = [threading.Thread(target=one_process) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [2, 2, 2]
    assert fake.count(TOKEN) == 1  # the issuing lock made the others read the first's file


def test_token_is_renewed_five_minutes_before_expiry(fake, tmp_path):
    fake.expires_in, fake.token_interval = 302, 0.2  # 2 s before the 5-minute margin
    kis_source = source(fake, tmp_path, token_interval=0.2)
    kis_source.daily_bars("krx", one_day(), SYMBOLS[:1])
    kis_source.daily_bars("krx", one_day(), SYMBOLS[:1])
    assert fake.count(TOKEN) == 1
    time.sleep(2.2)
    kis_source.daily_bars("krx", one_day(), SYMBOLS[:1])
    assert fake.count(TOKEN) == 2
    bearers = [c.headers["authorization"] for c in fake.calls(DAILY)]
    assert bearers[0] == bearers[1] != bearers[2]


def test_expired_token_is_renewed_once_and_requests_retried(fake, tmp_path):
    fake.token_interval = 0.3
    kis_source = source(fake, tmp_path, token_interval=0.3)
    kis_source.daily_bars("krx", one_day(), SYMBOLS[:5])
    fake.expire_tokens()  # KIS now answers EGW00123 to the token the client believes valid

    bars = kis_source.daily_bars("krx", one_day(), SYMBOLS[:5])

    assert bars.height == 5
    issued = fake.issued
    assert len(issued) == 2 and fake.refused == 0  # five concurrent rejections, one renewal
    assert issued[1] - issued[0] >= 0.3  # and not sooner than the one-per-interval rule
    assert fake.count(DAILY) == 5 + 5 + 5


def test_token_refused_within_the_minute_waits_then_retries_once(fake, tmp_path):
    fake.token_interval = 0.5
    fake.note_issue()  # another machine just took this key's token
    bars = source(fake, tmp_path, token_interval=0.5).daily_bars("krx", one_day(), SYMBOLS[:1])

    assert bars.height == 1
    requests = fake.calls(TOKEN)
    assert len(requests) == 2 and fake.refused == 1
    assert requests[1].at - requests[0].at >= 0.5


def test_token_refused_twice_gives_up_without_hammering(fake, tmp_path):
    fake.token_interval = 30.0
    fake.note_issue()
    with pytest.raises(ProviderDown, match="EGW00133") as error:
        source(fake, tmp_path, token_interval=0.2).daily_bars("krx", one_day(), SYMBOLS[:1])
    assert fake.count(TOKEN) == 2 and fake.count(DAILY) == 0
    assert APP_SECRET not in str(error.value)
