"""What every provider source shares: settings from the environment, the sync bridge, bounded
concurrent fetching of many symbols, the one-market check and the Source protocol's daily_bars."""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import hashlib
import os
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import ClassVar, TypeVar

import polars as pl

from checks.errors import ConfigurationError
from checks.schemas import DAILY_PRICES
from resources.sources.base import SourceError

from .errors import NotFound

T = TypeVar("T")
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(s|sec|second|m|min|minute)\s*$")


def rate_limit(variable: str, default: str) -> tuple[int, float]:
    """Parse `N/s` or `N/min` from the environment, e.g. MARKETPIPE_KIS_RATE_LIMIT=20/s."""
    raw = os.environ.get(variable, default)
    match = _RATE.match(raw)
    if not match or int(match.group(1)) < 1:
        raise ConfigurationError(f"{variable}={raw!r}: use 'N/s' or 'N/min', e.g. {default!r}")
    return int(match.group(1)), 1.0 if match.group(2).startswith("s") else 60.0


def required_env(variable: str, provider: str) -> str:
    value = os.environ.get(variable)
    if not value:
        raise ConfigurationError(f"{variable} is not set: the {provider} source needs it")
    return value


def credential_id(*parts: str | None) -> str:
    """A stable, non-reversible id of a credential, to key limiters and token caches."""
    return hashlib.sha256("\0".join(p or "" for p in parts).encode()).hexdigest()[:16]


def run_sync(coroutine: Awaitable[T]) -> T:
    """Run a coroutine from Dagster's synchronous step, even if a loop is already running."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


async def fetch_each(
    symbols: Sequence[str],
    fetch: Callable[[str], Awaitable[pl.DataFrame]],
    *,
    concurrency: int,
) -> tuple[list[pl.DataFrame], dict[str, str]]:
    """fetch(symbol) for every symbol, at most `concurrency` in flight.

    An unknown symbol or a symbol with no data is recorded in the returned `missing` map (the
    completeness check then counts it); any other error propagates.
    """
    gate = asyncio.Semaphore(concurrency)
    missing: dict[str, str] = {}

    async def one(symbol: str) -> pl.DataFrame | None:
        async with gate:
            try:
                return await fetch(symbol)
            except NotFound as error:
                missing[symbol] = error.detail
                return None

    frames = await asyncio.gather(*(one(s) for s in symbols))
    return [f for f in frames if f is not None], missing


def bars_by_date(frames: Sequence[pl.DataFrame]) -> pl.DataFrame:
    """daily_prices frames as one, by date then symbol (undated rows last); none -> empty. A
    frame's `raw` evidence (values that did not parse) is kept."""
    return pl.concat([pl.DataFrame(schema=DAILY_PRICES), *frames], how="diagonal").sort(
        "trade_date", "symbol", nulls_last=True, maintain_order=True
    )


async def fetch_all(
    symbols: Sequence[str],
    fetch: Callable[[str], Awaitable[pl.DataFrame]],
    *,
    concurrency: int,
) -> tuple[list[pl.DataFrame], dict[str, str]]:
    """fetch_each, but the first symbol alone before the rest: a bad key or an outage shows on
    one request (and its retries) instead of one per symbol."""
    if not symbols:
        return [], {}
    head, missing = await fetch_each(symbols[:1], fetch, concurrency=1)
    tail, more = await fetch_each(symbols[1:], fetch, concurrency=concurrency)
    return head + tail, {**missing, **more}


def no_listing(provider: str, market: str, hint: str = "") -> SourceError:
    """universe()'s error for a provider without a listing endpoint: where a universe comes
    from instead. `hint` adds a provider's own way out."""
    return SourceError(
        f"the {provider} source has no listing of its own for market {market!r}: set "
        f"MARKETPIPE_{market.upper()}_UNIVERSE to a CSV or parquet file with the columns "
        f"symbol, name, listing_date, delisting_date (local path, URL or s3://){hint}"
    )


class OneMarketDailyBars:
    """Source.daily_bars for a client of one market whose fetch is async.

    The market is checked first; no session or no symbol is an empty daily_prices frame without
    a request; otherwise the client's `_daily(sessions sorted and unique, symbols as given)`
    runs to completion in its own event loop (run_sync).
    """

    name: str
    market: ClassVar[str]  # the one market the client serves
    # The error for any other market. Finnhub and Yahoo raise ConfigurationError (a setting
    # names them for the wrong market), the others SourceError; callers and tests rely on each.
    wrong_market: ClassVar[type[Exception]] = SourceError

    def _check_market(self, market: str) -> None:
        if market != self.market:
            raise self.wrong_market(
                f"the {self.name} source serves market {self.market!r} only, not {market!r}; "
                f"set MARKETPIPE_{market.upper()}_SOURCE to a source for that market"
            )

    async def _daily(self, sessions: list[dt.date], symbols: Sequence[str]) -> pl.DataFrame:
        raise NotImplementedError

    def daily_bars(
        self, market: str, sessions: Sequence[dt.date], symbols: Sequence[str]
    ) -> pl.DataFrame:
        self._check_market(market)
        days = sorted(set(sessions))
        if not days or not symbols:
            return pl.DataFrame(schema=DAILY_PRICES)
        return run_sync(self._daily(days, symbols))
