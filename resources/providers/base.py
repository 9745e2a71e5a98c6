"""What every provider source shares: settings from the environment, the sync bridge, bounded
concurrent fetching of many symbols with the missing ones recorded and logged, the one-market
check, the closed-session filter and the Source protocol's daily_bars around a provider's own
`_daily`."""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import logging
import os
import re
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, ClassVar, TypeVar

import polars as pl

from checks.errors import ConfigurationError
from checks.markets import is_session
from checks.schemas import DAILY_PRICES
from resources.sources.base import Dataset, SourceError

from .errors import NotFound
from .http import ProviderHttp, RetryPolicy
from .values import served, session_close

T = TypeVar("T")
# The most pooled connections of one source: more cost CPU in httpcore's pool upkeep (kis.py) and
# no throughput, as requests wait for the limiter anyway.
MAX_CONNECTIONS = 64
log = logging.getLogger(__name__)
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


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
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


class OneKeySource:
    """Rate, concurrency and keys of a source (a frozen dataclass) with one `api_key` and a
    budget of `requests` per `per_seconds`, as many in flight as the budget allows."""

    api_key: str
    requests: int
    per_seconds: float

    @property
    def rate(self) -> tuple[int, float]:
        return self.requests, self.per_seconds

    @property
    def concurrency(self) -> int:
        return self.requests

    def _keys(self) -> tuple[list[str], list[str]]:
        return [self.api_key], [self.api_key]


class OneMarketDailyBars:
    """The base of a provider source of one market: Source.daily_bars around the client's async
    `_daily`, the datasets it declares, and what every provider does the same way.

    daily_bars checks the market first; no session or no symbol is an empty daily_prices frame
    without a request; otherwise the client's `_daily(sessions sorted and unique, symbols as
    given)` runs to completion in its own event loop (run_sync), and of its bars the requested
    sessions' are kept, with the undated and off-session ones for the quarantine (values.served).
    """

    name: str
    market: ClassVar[str]  # the one market the client serves
    missing: dict[str, str]  # symbol -> why, of the latest fetch_symbols call; set by __init__
    concurrency: int  # requests in flight at once
    rate: tuple[int, float]  # requests per that many seconds
    base_url: str
    retry: RetryPolicy | None  # None: RetryPolicy.from_env()
    timeout: float
    datasets: ClassVar[frozenset[Dataset]] = frozenset({Dataset.DAILY_BARS})
    # The error for any other market. Finnhub and Yahoo raise ConfigurationError (a setting
    # names them for the wrong market), the others SourceError; callers and tests rely on each.
    wrong_market: ClassVar[type[Exception]] = SourceError

    @property
    def markets(self) -> tuple[str, ...]:
        return (self.market,)

    def _check_market(self, market: str) -> None:
        if market != self.market:
            raise self.wrong_market(
                f"the {self.name} source serves market {self.market!r} only, not {market!r}; "
                f"set MARKETPIPE_{market.upper()}_SOURCE to a source for that market"
            )

    def _asked(
        self, market: str, sessions: Sequence[dt.date], symbols: Sequence[str]
    ) -> list[dt.date]:
        """The sessions asked for, sorted and unique, once the market is checked; none when no
        session or no symbol is asked for (an empty frame then, without a request)."""
        self._check_market(market)
        return sorted(set(sessions)) if symbols else []

    async def _daily(self, sessions: list[dt.date], symbols: Sequence[str]) -> pl.DataFrame:
        raise NotImplementedError

    def _keys(self) -> tuple[Sequence[str | None], Sequence[str | None]]:
        """(what identifies the key to the provider, the secrets every error is scrubbed of)."""
        raise NotImplementedError

    def _http(self) -> ProviderHttp:
        """A session of the shared HTTP layer: the key's one limiter and breaker, its secrets
        masked, as many pooled connections as requests in flight."""
        credential, secrets = self._keys()
        return ProviderHttp.shared(
            self.name,
            self.base_url,
            credential=credential,
            requests=self.rate[0],
            per_seconds=self.rate[1],
            secrets=secrets,
            retry=self.retry,
            timeout=self.timeout,
            max_connections=max(1, min(self.concurrency, MAX_CONNECTIONS)),
        )

    def daily_bars(
        self, market: str, sessions: Sequence[dt.date], symbols: Sequence[str]
    ) -> pl.DataFrame:
        days = self._asked(market, sessions, symbols)
        if not days:
            return pl.DataFrame(schema=DAILY_PRICES)
        return served(run_sync(self._daily(days, symbols)), market, days)

    async def fetch_symbols(
        self,
        dataset: str,
        symbols: Sequence[str],
        fetch: Callable[[str], Awaitable[pl.DataFrame]],
        *,
        concurrency: int | None = None,
        first_alone: bool = False,
    ) -> list[pl.DataFrame]:
        """fetch(symbol) for each distinct symbol, at most `concurrency` (default: the source's
        own) in flight; with `first_alone` the first symbol before the rest (fetch_all). An
        unknown symbol is recorded in `self.missing` and logged, never fails the batch."""
        symbols = list(dict.fromkeys(symbols))
        limit = concurrency or self.concurrency
        each = fetch_all if first_alone else fetch_each
        frames, missing = await each(symbols, fetch, concurrency=limit)
        self.record_missing(dataset, missing)
        return frames

    def record_missing(self, dataset: str, missing: dict[str, str]) -> None:
        """Keep `missing` (symbol -> why) as the latest call's, and log it: the completeness
        check counts those symbols, the run goes on."""
        # Updated in place: frozen dataclass sources hold it as a field.
        self.missing.clear()
        self.missing.update(missing)
        if missing:
            log.warning(
                "%s %s: no data for %d symbol(s): %s",
                self.name,
                dataset,
                len(missing),
                ", ".join(sorted(missing)),
            )

    def without_running(self, frame: pl.DataFrame, now: float) -> pl.DataFrame:
        """`frame` without the bars of sessions not closed by `now` (epoch seconds; the exchange
        calendar's close, half days included): a running session's bar is the day so far, not
        the session's, and waits for a run after the close (the symbol counts missing till then)."""
        dates = frame["trade_date"].drop_nulls().unique().to_list()
        # A bar dated on no session (a weekend, a holiday) is not a running session's: it stays
        # for the quarantine (not_a_session), whatever its date.
        running = sorted(
            d for d in dates if is_session(self.market, d) and session_close(self.market, d) > now
        )
        if not running:
            return frame
        log.warning(
            "%s daily_bars: bars of sessions not closed yet (%s) not stored",
            self.name,
            ", ".join(map(str, running)),
        )
        return frame.filter(~pl.col("trade_date").is_in(running).fill_null(False))
