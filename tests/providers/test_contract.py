"""One contract for every provider in the registry: built by its own `from_env` against its local
fake server, each dataset it declares comes back in the standard schema, every row the server
sent is served (stored or for the quarantine), and an unknown symbol is reported missing instead
of failing the batch.

Adding a provider: its module, its registry entry, and one fixture in FIXTURES below.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import polars as pl
import pytest

from checks.intraday_checks import session_table
from checks.schemas import (
    DAILY_PRICES,
    INTRADAY_BARS,
    OPTION_CHAIN_VENDOR,
    ORDER_BOOK_SNAPSHOTS,
    RAW,
    UNIVERSE,
)
from marketpipe_assets.options import fetch as option_chains
from marketpipe_assets.options import live_session
from resources.books import order_books_at
from resources.providers import breaker, limiter
from resources.providers.errors import NotFound
from resources.providers.registry import PROVIDERS
from resources.sources.base import Dataset, SourceUnavailable, require
from tests.conftest import recent_sessions
from tests.fakes.finnhub import FakeFinnhub
from tests.fakes.kis import FakeKis
from tests.fakes.krx import API_KEY as KRX_KEY
from tests.fakes.krx import LISTING, FakeKrx
from tests.fakes.server import FakeProvider
from tests.fakes.twelvedata import API_KEY as TWELVEDATA_KEY
from tests.fakes.twelvedata import FakeTwelveData
from tests.fakes.yahoo import FakeYahoo

US_SYMBOLS = ["AAPL", "MSFT", "SPY"]
KRX_SYMBOLS = [LISTING[0][0], LISTING[1][0], LISTING[-1][0]]  # two KOSPI stocks, one KOSDAQ
UNKNOWN = {"krx": "999990", "us": "ZZZZ"}


@dataclass
class Case:
    """A provider's fake server, running, with the environment pointing its source at it."""

    fake: FakeProvider
    symbols: list[str]


@contextlib.contextmanager
def kis_case(env: Callable[[str, str], None]) -> Iterator[Case]:
    with FakeKis("PScontractKISappKEY0", "contract-secret", symbols=KRX_SYMBOLS) as fake:
        env("KIS_APP_KEY", "PScontractKISappKEY0")
        env("KIS_APP_SECRET", "contract-secret")
        env("KIS_BASE_URL", fake.url)
        yield Case(fake, KRX_SYMBOLS)


@contextlib.contextmanager
def krx_case(env: Callable[[str, str], None]) -> Iterator[Case]:
    with FakeKrx() as fake:
        env("KRX_API_KEY", KRX_KEY)
        env("KRX_BASE_URL", fake.url)
        yield Case(fake, KRX_SYMBOLS)


@contextlib.contextmanager
def twelvedata_case(env: Callable[[str, str], None]) -> Iterator[Case]:
    with FakeTwelveData(unknown={UNKNOWN["us"]}) as fake:
        env("TWELVEDATA_API_KEY", TWELVEDATA_KEY)
        env("TWELVEDATA_BASE_URL", fake.url)
        env("MARKETPIPE_TWELVEDATA_RATE_LIMIT", "50/s")
        yield Case(fake, US_SYMBOLS)


@contextlib.contextmanager
def finnhub_case(env: Callable[[str, str], None]) -> Iterator[Case]:
    with FakeFinnhub("fhk-contract-key") as fake:
        fake.unknown.add(UNKNOWN["us"])
        env("FINNHUB_API_KEY", "fhk-contract-key")
        env("FINNHUB_BASE_URL", fake.url)
        env("MARKETPIPE_FINNHUB_RATE_LIMIT", "50/s")
        yield Case(fake, US_SYMBOLS)


@contextlib.contextmanager
def yahoo_case(env: Callable[[str, str], None]) -> Iterator[Case]:
    with FakeYahoo(options_date=live_session()) as fake:
        fake.unknown.add(UNKNOWN["us"])
        env("YAHOO_BASE_URL", fake.url)
        env("MARKETPIPE_YAHOO_RATE_LIMIT", "50/s")
        yield Case(fake, US_SYMBOLS)


FIXTURES = {
    "kis": kis_case,
    "krx": krx_case,
    "twelvedata": twelvedata_case,
    "finnhub": finnhub_case,
    "yahoo": yahoo_case,
}
CASES = [
    pytest.param(name, market, dataset, id=f"{name}-{dataset}")
    for name, provider in PROVIDERS.items()
    for market in provider.markets
    for dataset in sorted(provider.datasets)
]


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """Fresh circuit breakers and limiters, fast retries, a token cache of the test's own."""
    monkeypatch.setattr(breaker, "_SHARED", {})
    monkeypatch.setattr(limiter, "_SHARED", {})
    monkeypatch.setenv("MARKETPIPE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MARKETPIPE_RETRY_INITIAL_SECONDS", "0.01")
    monkeypatch.setenv("MARKETPIPE_RETRY_MAX_SECONDS", "0.05")


def sessions(market: str, n: int) -> list[dt.date]:
    return [dt.date.fromisoformat(k) for k in recent_sessions(market, n)]


def assert_schema(frame: pl.DataFrame, schema: pl.Schema) -> None:
    """The standard columns with their types; besides them at most `raw`, the evidence of
    values that did not parse."""
    assert {c: frame.schema.get(c) for c in schema} == dict(schema)
    assert set(frame.columns) - set(schema) <= {RAW}


def daily_bars(source, case: Case, market: str) -> tuple[pl.DataFrame, int]:
    days = sessions(market, 3)
    frame = source.daily_bars(market, days, [*case.symbols, UNKNOWN[market]])
    assert_schema(frame, DAILY_PRICES)
    if isinstance(case.fake, FakeKrx):
        sent = case.fake.truth(days, case.symbols)
    else:
        sent = case.fake.truth(case.symbols, days)
    return frame, len(sent)


def intraday_bars(source, case: Case, market: str) -> tuple[pl.DataFrame, int]:
    days = sessions(market, 1)
    frame = source.intraday_bars(market, days, [*case.symbols, UNKNOWN[market]])
    assert_schema(frame, INTRADAY_BARS)
    if isinstance(case.fake, FakeTwelveData):
        sent = sum(len(case.fake.intraday_truth(s, d)) for s in case.symbols for d in days)
    else:  # a full session of 1-minute bars is one bar per slot of its 15-minute grid
        sent = len(case.symbols) * int(session_table(market, days)["slots"].sum())
    return frame, sent


def order_books(source, case: Case, market: str) -> tuple[pl.DataFrame, int]:
    day = sessions(market, 1)[0]
    slot = dt.datetime.combine(day, dt.time(1, 0), dt.UTC)
    frame = order_books_at(source, market, day, slot, [*case.symbols, UNKNOWN[market]], 60)
    assert_schema(frame, ORDER_BOOK_SNAPSHOTS)
    return frame, 10 * len(case.symbols)  # ten levels a book


def option_chains_now(source, case: Case, market: str) -> tuple[pl.DataFrame, int]:
    frame = option_chains(source, [*case.symbols, UNKNOWN[market]], [live_session()])
    assert_schema(frame, OPTION_CHAIN_VENDOR)
    with pytest.raises(NotFound):
        asyncio.run(source.option_chain(UNKNOWN[market], live_session()))
    return frame, sum(len(case.fake.chain_truth(s)) for s in case.symbols)


def universe(source, case: Case, market: str) -> tuple[pl.DataFrame, int]:
    frame = source.universe(market)
    assert_schema(frame, UNIVERSE)
    return frame, len(LISTING)


RUNS = {
    Dataset.DAILY_BARS: daily_bars,
    Dataset.INTRADAY_BARS: intraday_bars,
    Dataset.ORDER_BOOKS: order_books,
    Dataset.OPTION_CHAINS: option_chains_now,
    Dataset.UNIVERSE: universe,
}
# The column naming each row's symbol, in the datasets asked for per symbol.
SYMBOL_COLUMN = {
    Dataset.DAILY_BARS: "symbol",
    Dataset.INTRADAY_BARS: "symbol",
    Dataset.ORDER_BOOKS: "symbol",
    Dataset.OPTION_CHAINS: "underlying",
}


def test_every_provider_has_a_fixture_and_every_dataset_a_run():
    assert set(FIXTURES) == set(PROVIDERS)
    assert {d for p in PROVIDERS.values() for d in p.datasets} <= set(RUNS)


@pytest.mark.parametrize(("name", "market", "dataset"), CASES)
def test_provider_serves_what_it_declares(name, market, dataset, monkeypatch):
    with FIXTURES[name](monkeypatch.setenv) as case:
        source = PROVIDERS[name].from_env()
        assert source.name == name
        frame, sent = RUNS[dataset](source, case, market)
    assert len(frame) == sent  # every row the server sent, stored or for the quarantine
    if dataset in SYMBOL_COLUMN:  # the unknown symbol absent, the batch served
        assert set(frame[SYMBOL_COLUMN[dataset]].drop_nulls()) == set(case.symbols)
    if dataset in (Dataset.DAILY_BARS, Dataset.INTRADAY_BARS):
        assert UNKNOWN[market] in source.missing  # reported, not fatal


@pytest.mark.parametrize("name", list(PROVIDERS))
def test_a_dataset_not_declared_is_refused_naming_provider_dataset_and_market(name, monkeypatch):
    provider = PROVIDERS[name]
    with FIXTURES[name](monkeypatch.setenv):
        source = provider.from_env()
    other = "us" if "krx" in provider.markets else "krx"
    with pytest.raises(
        SourceUnavailable, match=f"{name} source has no daily bars for market '{other}'"
    ):
        require(source, Dataset.DAILY_BARS, other)
    for dataset in sorted(set(Dataset) - provider.datasets):
        with pytest.raises(SourceUnavailable) as refused:
            require(source, dataset, provider.markets[0])
        assert name in str(refused.value) and dataset.replace("_", " ") in str(refused.value)
