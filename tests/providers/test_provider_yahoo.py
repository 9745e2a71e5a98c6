"""The Yahoo source against FakeYahoo over real HTTP, through real Dagster runs: values, nulls
to quarantine, the partial bar of a running session, rate limits, the outage page and the
fallback chain; corporate actions and option chains parsed from Yahoo's shapes."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import warnings
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from checks.greeks import RISK_FREE_RATE
from checks.markets import sessions_between
from checks.schemas import DAILY_PRICES, OPTION_CHAINS, UNIVERSE, quarantine_schema
from marketpipe_assets.options import derive, live_session
from resources.market_data import MarketDataResource
from resources.providers import breaker as breaker_module
from resources.providers import limiter as limiter_module
from resources.providers import yahoo
from resources.providers.errors import NotFound, ProviderDown
from resources.providers.http import RetryPolicy
from resources.sources.base import SourceError
from resources.sources.synthetic import SyntheticSource
from resources.sources.synthetic_options import option_chains
from tests.conftest import materialize, recent_sessions, rejected_rows
from tests.fakes.yahoo import FakeYahoo, close_epoch, expirations, open_epoch, utc_epoch
from tests.metadata_values import run_metadata

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from py_vollib.black_scholes.implied_volatility import implied_volatility as py_vollib_iv

SYMBOLS = ["AAPL", "MSFT", "NVDA"]
ATTEMPTS = RetryPolicy().attempts  # the first try and three retries
CHART = "/v8/finance/chart/"
OPTIONS = "/v7/finance/options/"
CRUMB = "/v1/test/getcrumb"


@pytest.fixture(autouse=True)
def fast_and_isolated(monkeypatch, tmp_path_factory, caplog):
    """Fast retries, and a fresh circuit breaker and limiter per test (they are per process)."""
    monkeypatch.setattr(breaker_module, "_SHARED", {})
    monkeypatch.setattr(limiter_module, "_SHARED", {})
    monkeypatch.setenv("MARKETPIPE_RETRY_INITIAL_SECONDS", "0.01")
    monkeypatch.setenv("MARKETPIPE_RETRY_MAX_SECONDS", "0.05")
    monkeypatch.setattr(yahoo, "TIMEOUT", 2.0)
    monkeypatch.setenv("MARKETPIPE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("MARKETPIPE_YAHOO_RATE_LIMIT", "100/s")
    caplog.set_level(logging.INFO)


@pytest.fixture
def fake(monkeypatch):
    with FakeYahoo() as server:
        monkeypatch.setenv("YAHOO_BASE_URL", server.url)
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


def run_daily(tmp_path, lake, instance, sessions, *, source="yahoo", symbols=SYMBOLS):
    market_data = MarketDataResource(
        us_source=source,
        us_universe=write_universe(tmp_path / "universe.csv", symbols),
        landing_url="unused-landing",
        synthetic_symbols=60,
        synthetic_missing_rate=0.0,
        synthetic_bad_row_rate=0.0,
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


def metadata(result, dataset: str = "daily_prices") -> dict:
    """The run's metadata of us/<dataset> (a range's per-partition facts summed)."""
    return run_metadata(result, dg.AssetKey(["us", dataset]))


def materialized_prices(result) -> list:
    key = dg.AssetKey(["us", "daily_prices"])
    return [e for e in result.get_asset_materialization_events() if e.asset_key == key]


def checks(result) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def ny_midnight(day: dt.date) -> int:
    return int(dt.datetime.combine(day, dt.time(0), yahoo.NEW_YORK).timestamp())


def chart_requests(fake) -> list:
    return [r for r in fake.requests if r.path.startswith(CHART)]


# Values --------------------------------------------------------------------------------------
def test_daily_prices_match_the_vendor(tmp_path, lake, instance, fake):
    sessions = recent_sessions("us", 3)
    first, last = days(sessions)[0], days(sessions)[-1]
    fake.splits["AAPL"] = [(first, 4, 1)]
    fake.dividends["MSFT"] = [(last, 0.83)]
    result = run_daily(tmp_path, lake, instance, sessions)

    assert result.success
    assert_frame_equal(stored(lake, sessions), fake.truth(SYMBOLS, days(sessions)))
    assert metadata(result)["rows_by_source"] == {"yahoo": 9}
    assert checks(result)["completeness"] and checks(result)["price_relationships"]
    requests = chart_requests(fake)
    assert sorted(r.path for r in requests) == [CHART + s for s in SYMBOLS]
    for request in requests:
        assert request.query == {
            "period1": str(ny_midnight(first)),
            "period2": str(ny_midnight(last + dt.timedelta(days=1))),  # exclusive
            "interval": "1d",
            "includePrePost": "false",
            "events": "div,splits",
        }
        assert request.headers["user-agent"].startswith("Mozilla/5.0")


def test_nulls_in_the_arrays_end_in_quarantine(tmp_path, lake, instance, fake):
    sessions = recent_sessions("us", 2)
    day = days(sessions)[-1]
    fake.nulls[("AAPL", day)] = {"open", "high", "low", "close"}  # Yahoo's null OHLC rows
    fake.nulls[("NVDA", day)] = {"volume"}
    # Enough symbols that two rejected bars keep completeness above its 95% threshold (below
    # it, nothing would be published).
    symbols = [*SYMBOLS, *(f"S{i:02d}" for i in range(40))]
    result = run_daily(tmp_path, lake, instance, sessions, symbols=symbols)

    truth = fake.truth(symbols, days(sessions))
    clean = stored(lake, sessions)
    quarantined = lake.read_quarantine("daily_prices", "us", DAILY_PRICES).sort("symbol")
    assert quarantined["symbol"].to_list() == ["AAPL", "NVDA"]
    assert quarantined["trade_date"].to_list() == [day, day]
    assert all(v.to_list() == ["required_fields"] for v in quarantined["violations"])
    assert quarantined.row(0, named=True)["close"] is None
    assert (
        quarantined.row(0, named=True)["volume"]
        == truth.filter((pl.col("symbol") == "AAPL") & (pl.col("trade_date") == day))[
            "volume"
        ].item()
    )
    # No row lost or duplicated: stored + quarantined is exactly the vendor's rows.
    keys = pl.concat([clean.select("symbol", "trade_date"), quarantined.select(clean.columns[:2])])
    assert keys.sort("symbol", "trade_date").equals(truth.select("symbol", "trade_date"))
    assert_frame_equal(clean, truth.join(quarantined, on=["symbol", "trade_date"], how="anti"))
    assert metadata(result)["quarantined"] == 2


def test_unknown_symbol_counts_as_missing_not_fatal(tmp_path, lake, instance, fake, caplog):
    fake.unknown = {"NVDA"}
    sessions = recent_sessions("us", 2)
    result = run_daily(tmp_path, lake, instance, sessions)

    # The others are fetched; the blocking completeness check reports the gap, so the batch is
    # kept in _rejected/ instead of being published.
    assert not checks(result)["completeness"]
    assert not materialized_prices(result) and stored(lake, sessions).is_empty()
    rejected = rejected_rows(lake, "daily_prices", "us", DAILY_PRICES)
    assert_frame_equal(rejected, fake.truth(["AAPL", "MSFT"], days(sessions)))
    assert len(chart_requests(fake)) == len(SYMBOLS)  # a 404 is not retried
    assert "NVDA" in caplog.text and "no data" in caplog.text


# The partial bar of a running session -------------------------------------------------------
def test_partial_bar_of_a_running_session_is_not_stored(
    tmp_path, lake, instance, fake, monkeypatch
):
    sessions = recent_sessions("us", 2)
    before, running = days(sessions)
    # 11:00 New York on the session: Yahoo's last bar is the one so far, stamped 11:00.
    fake.market_time = open_epoch(running) + 5400
    monkeypatch.setattr(yahoo, "now", lambda: float(fake.market_time + 2))
    result = run_daily(tmp_path, lake, instance, sessions)

    # The running session's live bar is not taken, so that session has no bars: completeness
    # fails and the batch, the finished session's bars only, is kept in _rejected/ unpublished.
    truth = fake.truth(SYMBOLS, days(sessions))
    assert not checks(result)["completeness"]
    assert stored(lake, sessions).is_empty()
    kept = rejected_rows(lake, "daily_prices", "us", DAILY_PRICES)
    assert_frame_equal(
        kept, truth.filter(pl.col("trade_date") == before).sort("symbol", "trade_date")
    )
    assert lake.read_quarantine("daily_prices", "us", DAILY_PRICES).is_empty()
    payload_stamps = {r.path: r for r in chart_requests(fake)}
    assert payload_stamps  # the live bar was served (stamped 11:00) and dropped

    # After the close (Yahoo stamps the bar at the last trade, 16:00:06): stored as final.
    fake.market_time = close_epoch(running) + 6
    monkeypatch.setattr(yahoo, "now", lambda: float(close_epoch(running) + 3600))
    rerun = run_daily(tmp_path, lake, instance, sessions)
    assert rerun.success
    assert_frame_equal(stored(lake, sessions), truth)


def test_partial_bar_rule_in_detail(fake):
    day = dt.date(2025, 6, 3)  # a Tuesday session
    fake.market_time = open_epoch(day) + 3 * 3600
    at_noon = yahoo.YahooSource(fake.url, clock=lambda: float(fake.market_time))
    bars = at_noon.daily_bars("us", [day - dt.timedelta(1), day], ["AAPL"])
    assert bars["trade_date"].to_list() == [day - dt.timedelta(1)]
    # Our clock behind the vendor's (the vendor says the session closed): the vendor wins.
    fake.market_time = close_epoch(day) + 6
    behind = yahoo.YahooSource(fake.url, clock=lambda: float(open_epoch(day)))
    bars = behind.daily_bars("us", [day], ["AAPL"])
    assert bars.drop("source").row(0)[2:] == tuple(fake.bar("AAPL", day).values())
    # Days later, a bar stamped at a last trade before the close (a halted stock) is a
    # closed session's bar all the same.
    fake.market_time = open_epoch(day) + 3 * 3600
    later = yahoo.YahooSource(fake.url, clock=lambda: float(close_epoch(day) + 86400 * 3))
    assert len(later.daily_bars("us", [day], ["AAPL"])) == 1


def test_two_bars_for_one_session_keep_the_later(fake):
    day = dt.date(2025, 6, 3)
    source = yahoo.YahooSource(fake.url)
    frame = source._bars(
        None,
        "/v8/finance/chart/AAPL",
        "AAPL",
        {
            "meta": {"regularMarketTime": close_epoch(day) + 6},
            "timestamp": [open_epoch(day), close_epoch(day) + 6],
            "indicators": {
                "quote": [
                    {
                        "open": [10.0, 10.0],
                        "high": [11.0, 12.0],
                        "low": [9.0, 9.0],
                        "close": [10.5, 11.5],
                        "volume": [100, 250],
                    }
                ]
            },
        },
    )[0]
    assert frame.select("trade_date", "close", "volume").rows() == [(day, 11.5, 250)]


# Transient faults: retried, then the run succeeds --------------------------------------------
def test_too_many_requests_honours_retry_after(tmp_path, lake, instance, fake):
    fake.too_many_requests(retry_after=1)
    sessions = recent_sessions("us", 2)
    result = run_daily(tmp_path, lake, instance, sessions)

    assert result.success
    assert_frame_equal(stored(lake, sessions), fake.truth(SYMBOLS, days(sessions)))
    first, second = fake.requests[0], fake.requests[1]
    assert first.path == second.path  # the same request, retried
    assert 1.0 <= second.at - first.at < 3.0  # what the server asked, seen from its side


@pytest.mark.parametrize(
    "fault, extra, timeout",
    [
        pytest.param(lambda f: f.too_many_requests(times=2), 2, 2.0, id="429-without-retry-after"),
        pytest.param(lambda f: f.server_errors(3), 3, 2.0, id="5xx-burst"),
        pytest.param(lambda f: f.outage(times=2), 2, 2.0, id="short-outage"),
        pytest.param(lambda f: f.malformed(), 1, 2.0, id="malformed-json"),
        pytest.param(lambda f: f.slow(1.0), 1, 0.4, id="slow-beyond-timeout"),
    ],
)
def test_transient_faults_are_retried(
    tmp_path, lake, instance, fake, monkeypatch, fault, extra, timeout
):
    monkeypatch.setattr(yahoo, "TIMEOUT", timeout)
    fault(fake)
    sessions = recent_sessions("us", 2)
    result = run_daily(tmp_path, lake, instance, sessions)

    assert result.success
    assert_frame_equal(stored(lake, sessions), fake.truth(SYMBOLS, days(sessions)))
    assert len(chart_requests(fake)) == len(SYMBOLS) + extra


# Outage: fall back, or fail clearly ---------------------------------------------------------
def active_synthetic_symbols(sessions, n=4) -> list[str]:
    listing = SyntheticSource(symbols=60).universe("us")
    first = days(sessions)[0]
    active = listing.filter((pl.col("listing_date") <= first) & pl.col("delisting_date").is_null())
    return active["symbol"].to_list()[:n]


def test_outage_page_falls_back_to_the_next_source(tmp_path, lake, instance, fake):
    fake.down = True
    sessions = recent_sessions("us", 2)
    symbols = active_synthetic_symbols(sessions)
    result = run_daily(
        tmp_path, lake, instance, sessions, source="yahoo,synthetic", symbols=symbols
    )

    assert result.success
    assert metadata(result)["rows_by_source"] == {"synthetic": len(symbols) * len(sessions)}
    assert stored(lake, sessions)["source"].unique().to_list() == ["synthetic"]
    # The first symbol alone found the outage: its retries, then the chain moved on.
    assert fake.count() == ATTEMPTS
    [failure] = metadata(result)["source_failures"]
    assert failure["source"] == "yahoo" and failure["error"] == "ProviderDown"
    assert "yahoo /v8/finance/chart/" in failure["reason"]
    assert "Will be right back" in failure["reason"]


def test_persistent_outage_without_fallback_fails_clearly(tmp_path, lake, instance, fake):
    fake.down = True
    sessions = recent_sessions("us", 1)
    result = run_daily(tmp_path, lake, instance, sessions)

    assert not result.success
    text = failure_text(result)
    assert "yahoo /v8/finance/chart/AAPL [AAPL]" in text
    assert "Will be right back" in text and "gave up after 4 attempts" in text
    assert not Path(lake.url, "daily_prices").exists()


def test_bad_shape_fails_as_schema_drift_without_retry(tmp_path, lake, instance, fake):
    fake.faults.add(200, {"chart": {"result": "nope", "error": None}}, path=CHART + "AAPL")
    sessions = recent_sessions("us", 1)
    result = run_daily(tmp_path, lake, instance, sessions)

    assert not result.success
    assert "yahoo /v8/finance/chart/AAPL [AAPL]: expected chart.result" in failure_text(result)
    assert fake.count() == 1


# Corporate actions ---------------------------------------------------------------------------
def test_corporate_actions(fake):
    fake.splits["AAPL"] = [(dt.date(2020, 8, 31), 4, 1), (dt.date(2014, 6, 9), 7, 1)]
    fake.dividends["AAPL"] = [(dt.date(2020, 8, 7), 0.82), (dt.date(2020, 11, 6), 0.205)]
    source = yahoo.source_from_env()
    actions = asyncio.run(
        source.corporate_actions("AAPL", dt.date(2020, 8, 1), dt.date(2020, 12, 31))
    )

    assert actions.schema == yahoo.CORPORATE_ACTIONS
    assert actions.rows() == [
        ("AAPL", dt.date(2020, 8, 7), "dividend", None, 0.82),
        ("AAPL", dt.date(2020, 8, 31), "split", 4.0, None),
        ("AAPL", dt.date(2020, 11, 6), "dividend", None, 0.205),
    ]
    assert fake.requests[-1].query["events"] == "div,splits"
    assert asyncio.run(
        source.corporate_actions("MSFT", dt.date(2020, 8, 1), dt.date(2020, 9, 1))
    ).is_empty()
    fake.unknown = {"ZZZZ"}
    with pytest.raises(NotFound, match=r"yahoo /v8/finance/chart/ZZZZ \[ZZZZ\].*delisted"):
        asyncio.run(source.corporate_actions("ZZZZ", dt.date(2020, 8, 1), dt.date(2020, 9, 1)))


# Option chains -------------------------------------------------------------------------------
def test_option_chain_parses_every_expiration_within_90_days(fake):
    quote_date = dt.date(2026, 3, 4)
    fake.options_date = quote_date
    source = yahoo.source_from_env()
    chain = asyncio.run(source.option_chain("AAPL", quote_date))

    assert chain.schema == yahoo.OPTION_CHAIN
    order = ["expiration", "option_type", "strike"]
    assert_frame_equal(chain.sort(order), fake.chain_truth("AAPL").sort(order))
    # Every expiration within 90 days requested once, none beyond.
    within = [d for d in expirations(quote_date) if (d - quote_date).days <= 90]
    beyond = [d for d in expirations(quote_date) if (d - quote_date).days > 90]
    assert within and beyond
    # Yahoo's session first (a cookie, then its crumb), once; then the listing.
    assert [r.path for r in fake.requests[:2]] == ["/", CRUMB]
    assert fake.count(CRUMB) == 1
    asked = [r.query.get("date") for r in fake.requests if r.path.startswith(OPTIONS)]
    assert asked[0] is None  # the listing first
    assert sorted(asked[1:]) == sorted(str(utc_epoch(d)) for d in within)
    assert sorted(chain["expiration"].unique()) == within
    # A contract without "volume" has null volume, never 0.
    no_volume = chain.filter(pl.col("volume").is_null())
    assert len(no_volume) > 0 and not (chain["volume"] == 0).any()
    for row in no_volume.head(3).iter_rows(named=True):
        strike, kind = row["strike"], "C" if row["option_type"] == "call" else "P"
        assert "volume" not in fake.contract("AAPL", row["expiration"], strike, kind)
    # Implied volatility is the vendor's fraction, unscaled.
    first = chain.row(0, named=True)
    vendor = fake.contract(
        "AAPL", first["expiration"], first["strike"], "C" if first["option_type"] == "call" else "P"
    )
    assert first["implied_volatility"] == vendor["impliedVolatility"] < 5
    assert set(chain["option_type"]) == {"call", "put"}
    assert (chain["underlying_price"] == fake.underlying_price("AAPL")).all()


def test_option_chain_of_an_unknown_symbol(fake):
    fake.unknown = {"ZZZZ"}
    with pytest.raises(NotFound, match=r"yahoo /v7/finance/options/ZZZZ \[ZZZZ\]"):
        asyncio.run(yahoo.source_from_env().option_chain("ZZZZ", dt.date(2026, 3, 4)))


def test_option_chain_pages_are_retried(fake):
    fake.options_date = quote_date = dt.date(2026, 3, 4)
    fake.too_many_requests(path=OPTIONS)
    fake.server_errors(2, path=OPTIONS)
    chain = asyncio.run(yahoo.source_from_env().option_chain("MSFT", quote_date))
    order = ["expiration", "option_type", "strike"]
    assert_frame_equal(chain.sort(order), fake.chain_truth("MSFT").sort(order))


def test_option_requests_carry_the_cookie_and_its_crumb(fake):
    fake.options_date = quote_date = dt.date(2026, 3, 4)
    source = yahoo.source_from_env()
    asyncio.run(source.option_chain("AAPL", quote_date))
    asyncio.run(source.option_chain("MSFT", quote_date))  # the same client: no new handshake

    pages = [r for r in fake.requests if r.path.startswith(OPTIONS)]
    assert len(pages) > 4 and fake.issued == 1 and fake.count(CRUMB) == 1
    [(crumb, cookie)] = fake.crumbs.items()
    assert all(r.query["crumb"] == crumb for r in pages)
    assert all(f"A3={cookie}" in r.headers["cookie"] for r in pages)
    assert not any(r.path.startswith(CHART) for r in fake.requests)


def test_an_expired_crumb_is_renewed_once(fake):
    fake.options_date = quote_date = dt.date(2026, 3, 4)
    source = yahoo.source_from_env()
    first = asyncio.run(source.option_chain("AAPL", quote_date))
    fake.invalidate_crumbs()
    again = asyncio.run(source.option_chain("AAPL", quote_date))

    assert_frame_equal(again, first)
    assert fake.issued == 2  # one renewal, although every page of the chain needed a crumb
    pages = [r for r in fake.requests if r.path.startswith(OPTIONS)]
    assert len(pages) == 2 * len(first["expiration"].unique()) + 3  # 2 listings + 1 refused


def test_a_crumb_refused_again_is_an_outage_naming_the_endpoint(fake):
    fake.refuse_crumbs = True
    with pytest.raises(ProviderDown) as caught:
        asyncio.run(yahoo.source_from_env().option_chain("AAPL", dt.date(2026, 3, 4)))

    text = str(caught.value)
    assert "yahoo /v7/finance/options/AAPL [AAPL]: HTTP 401: Unauthorized: Invalid Crumb" in text
    assert "again with a fresh cookie and crumb" in text and "yahoo,synthetic" in text
    assert fake.issued == 2 and fake.count(OPTIONS) == 2  # refreshed once, never retried more


def test_a_client_without_the_cookie_gets_no_crumb(fake):
    fake.faults.add(404, b"<html>Not Found</html>", path="/", times=1)  # no Set-Cookie
    with pytest.raises(ProviderDown, match=r"no crumb: GET / \(no cookie set\)"):
        asyncio.run(yahoo.source_from_env().option_chain("AAPL", dt.date(2026, 3, 4)))
    assert fake.count(OPTIONS) == 0


# Option chains through Dagster --------------------------------------------------------------
def run_options(lake, instance, *, source="yahoo", underlyings=SYMBOLS, key=None):
    """us/option_chains for the live session (the only one Yahoo serves), one Dagster run."""
    market_data = MarketDataResource(
        us_source=source,
        option_underlyings=",".join(underlyings),
        landing_url="unused-landing",
        synthetic_symbols=60,
    )
    return materialize(
        "us",
        ("option_chains",),
        lake=lake,
        market_data=market_data,
        instance=instance,
        partition_key=key or live_session().isoformat(),
    )


def stored_chain(lake, day: dt.date) -> pl.DataFrame:
    return lake.read_partitions("option_chains", "us", OPTION_CHAINS, first=day, last=day)


@pytest.fixture
def live(fake) -> dt.date:
    fake.options_date = live_session()
    return fake.options_date


def second_expiry_contract(fake, symbol: str, strike_index: int, kind: str) -> str:
    """A contract of the second expiration (the first may expire today: no time value)."""
    expiry = expirations(fake.options_date)[1]
    strike = fake.strikes(symbol)[strike_index]
    return fake.contract(symbol, expiry, strike, kind)["contractSymbol"]


def test_option_chains_materialize_from_yahoo(lake, instance, fake, live):
    no_iv = second_expiry_contract(fake, "AAPL", 4, "C")  # at the money, IV key left out
    absurd_iv = second_expiry_contract(fake, "MSFT", 3, "P")  # 1400 %, the quote is sound
    crossed = second_expiry_contract(fake, "MSFT", 5, "C")
    zeros = second_expiry_contract(fake, "NVDA", 0, "P")  # yfinance#97: all zeros after hours
    no_bid = second_expiry_contract(fake, "NVDA", 2, "C")
    fake.option_overrides = {
        no_iv: {"impliedVolatility": None},
        absurd_iv: {"impliedVolatility": 14.0},
        crossed: {"bid": 9999.0},
        zeros: {"bid": 0.0, "ask": 0.0, "impliedVolatility": 0.0},
        no_bid: {"bid": None},
    }
    result = run_options(lake, instance)

    assert result.success
    served = pl.concat(fake.chain_truth(s) for s in SYMBOLS)
    stored = stored_chain(lake, live)
    quarantined = lake.read_quarantine("option_chains", "us", quarantine_schema(OPTION_CHAINS))
    # Every served contract is stored or quarantined, once, under the live session.
    kept = stored["contract_symbol"].to_list() + quarantined["contract_symbol"].to_list()
    assert sorted(kept) == sorted(served["contract_symbol"].to_list())
    assert (stored["quote_date"] == live).all() and (quarantined["quote_date"] == live).all()
    assert dict(quarantined.select("contract_symbol", "violations").rows()) == {
        crossed: ["bid_within_ask"],
        zeros: ["implied_volatility_in_range"],  # 0 sent, nothing to solve from
        no_bid: ["required_fields"],
    }
    # Stored values are the served ones, but for the two IVs solved from the mid.
    solved = [no_iv, absurd_iv]
    by_contract = ["contract_symbol"]
    expected = served.join(quarantined.select(by_contract), on=by_contract, how="anti")
    assert_frame_equal(
        stored.select(served.columns).drop("implied_volatility").sort(by_contract),
        expected.drop("implied_volatility").sort(by_contract),
    )
    vendor_iv = stored.filter(~pl.col("contract_symbol").is_in(solved))
    assert_frame_equal(
        vendor_iv.select(*by_contract, "implied_volatility").sort(by_contract),
        expected.filter(~pl.col("contract_symbol").is_in(solved))
        .select(*by_contract, "implied_volatility")
        .sort(by_contract),
    )
    for row in stored.filter(pl.col("contract_symbol").is_in(solved)).iter_rows(named=True):
        flag = "c" if row["option_type"] == "call" else "p"
        years = row["days_to_expiry"] / 365
        reference = py_vollib_iv(
            row["mid"], row["underlying_price"], row["strike"], years, RISK_FREE_RATE, flag
        )
        assert row["implied_volatility"] == pytest.approx(reference, abs=1e-6)
        assert row["delta"] is not None
    meta = metadata(result, "option_chains")
    assert meta["iv_solved"] == 2 and meta["iv_unsolved"] == 1
    assert meta["iv_vendor"] == len(served) - 3
    assert meta["source"] == "yahoo" and meta["rows"] == len(stored)
    assert checks(result)["option_rules"] and checks(result)["underlying_completeness"]
    # The listing, then one ?date= request per expiration within 90 days, per underlying.
    within = [utc_epoch(d) for d in expirations(live) if (d - live).days <= 90]
    for symbol in SYMBOLS:
        asked = [r.query.get("date") for r in fake.requests if r.path == OPTIONS + symbol]
        assert asked[0] is None and sorted(asked[1:]) == sorted(map(str, within))


def test_option_chain_of_an_unknown_underlying_counts_as_missing(
    lake, instance, fake, live, caplog
):
    fake.unknown = {"NVDA"}
    result = run_options(lake, instance)

    # Completeness fails, so the batch is kept in _rejected/ for inspection, not published.
    assert not result.get_asset_materialization_events()
    assert stored_chain(lake, live).is_empty()
    kept = rejected_rows(lake, "option_chains", "us", OPTION_CHAINS, by=("contract_symbol",))
    assert set(kept["underlying"]) == {"AAPL", "MSFT"}
    assert len(kept) == sum(len(fake.chain_truth(s)) for s in ["AAPL", "MSFT"])
    assert not checks(result)["underlying_completeness"]
    assert checks(result)["option_rules"]
    assert "no chain for NVDA" in caplog.text and "/v7/finance/options/NVDA" in caplog.text
    assert len([r for r in fake.requests if r.path == OPTIONS + "NVDA"]) == 1  # not retried


def test_option_chains_fall_back_when_yahoo_is_down(lake, instance, fake, live):
    fake.down = True
    result = run_options(lake, instance, source="yahoo,synthetic")

    assert result.success
    stored = stored_chain(lake, live)
    synthetic = derive(option_chains(0, SYMBOLS, [live]))[0].sort("contract_symbol")
    assert_frame_equal(stored.sort("contract_symbol"), synthetic)
    meta = metadata(result, "option_chains")
    assert meta["source"] == "synthetic"
    [failure] = meta["source_failures"]
    assert failure["source"] == "yahoo" and failure["error"] == "ProviderDown"
    assert "yahoo /v7/finance/options/AAPL" in failure["reason"]
    assert "Will be right back" in failure["reason"]
    assert fake.count() == ATTEMPTS  # the first underlying found the outage; no more asked


def test_option_chains_fall_back_when_yahoo_refuses_the_crumb(lake, instance, fake, live):
    fake.refuse_crumbs = True
    result = run_options(lake, instance, source="yahoo,synthetic")

    assert result.success
    synthetic = derive(option_chains(0, SYMBOLS, [live]))[0].sort("contract_symbol")
    assert_frame_equal(stored_chain(lake, live).sort("contract_symbol"), synthetic)
    meta = metadata(result, "option_chains")
    assert meta["source"] == "synthetic"
    [failure] = meta["source_failures"]
    assert failure["source"] == "yahoo" and failure["error"] == "ProviderDown"
    assert "yahoo /v7/finance/options/AAPL [AAPL]" in failure["reason"]
    assert "Invalid Crumb" in failure["reason"]
    assert fake.issued == 2  # the first underlying found the refusal; no more asked


def test_option_chains_without_fallback_fail_clearly_and_keep_nothing_half(
    lake, instance, fake, live
):
    assert run_options(lake, instance).success
    before = stored_chain(lake, live)
    fake.down = True
    result = run_options(lake, instance)

    assert not result.success
    text = failure_text(result)
    assert "yahoo /v7/finance/options/AAPL [AAPL]" in text and "Will be right back" in text
    assert_frame_equal(stored_chain(lake, live), before)  # the previous partition is intact


def test_yahoo_cannot_backfill_option_chains(lake, instance, fake, live):
    past = recent_sessions("us", 3)[0]
    result = run_options(lake, instance, key=past)

    assert not result.success
    assert f"serves only the latest session's option chains ({live})" in failure_text(result)
    assert fake.count() == 0


# Configuration -------------------------------------------------------------------------------
def test_defaults_and_universe(monkeypatch, fake):
    monkeypatch.delenv("MARKETPIPE_YAHOO_RATE_LIMIT")
    monkeypatch.delenv("YAHOO_BASE_URL")
    source = yahoo.source_from_env()
    assert source.rate == (2, 1.0) and source.base_url == yahoo.DEFAULT_BASE_URL
    with pytest.raises(SourceError, match="MARKETPIPE_US_UNIVERSE"):
        source.universe("us")
    with pytest.raises(yahoo.ConfigurationError, match="market 'us' only"):
        source.daily_bars(
            "krx", sessions_between("krx", dt.date(2025, 6, 2), dt.date(2025, 6, 2)), ["005930"]
        )
