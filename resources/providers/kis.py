"""KIS (Korea Investment & Securities) Open API as the `kis` source of the krx market.

Payloads follow providers.md 5.4. Each dataset has its module with its three steps: build the
query (tr_id, FID_* parameters), fetch the raw payload through KisClient (the KIS headers and
envelope, kis_client.py) over the shared HTTP layer (limiter, retries, circuit breaker), transform
it into the standard frame. Daily bars: kis_daily.py; intraday bars: kis_intraday.py; the live
order book and current price: kis_books.py. Access tokens (OAuth client credentials) live 24 h and
KIS issues at most one per minute per key, so a token is cached in memory and in a 0600 file that
every process using the same key shares; it is renewed 5 minutes before expiry or when KIS answers
that it expired (EGW00123). kis_token.py does that.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import ClassVar

import polars as pl

from checks.errors import ConfigurationError
from checks.markets import is_session
from checks.schemas import INTRADAY_BARS
from resources.sources.base import Dataset

from .base import OneMarketDailyBars, no_listing, rate_limit, required_env, run_sync
from .http import ProviderHttp, RetryPolicy, credential_id
from .kis_books import ORDER_BOOK, CurrentPrice, current_price, order_book
from .kis_client import MARKET, NAME, KisClient
from .kis_daily import RAW_DAILY, daily_frame, daily_rows
from .kis_intraday import (
    MINUTE_RETENTION_DAYS,
    RAW_MINUTES,
    MinuteHistoryUnavailable,
    aggregate_minutes,
    check_retention,
    minute_rows,
)
from .kis_token import REFRESH_MARGIN, TOKEN_INTERVAL, TokenCache, TokenFile
from .values import SEOUL as KST

# Names tests and callers read here, wherever they now live.
__all__ = ["ORDER_BOOK", "CurrentPrice", "KisSource", "MinuteHistoryUnavailable", "source_from_env"]

DEFAULT_BASE_URL = "https://openapi.koreainvestment.com:9443"
DEFAULT_WS_URL = "ws://ops.koreainvestment.com:21000"
# Requests handed to the connection pool at once, and its size: KIS's own 20 req/s. httpcore's
# pool upkeep costs CPU quadratic in the connections per request (bench: ~3.5 ms per request at
# 16, ~6 ms at 32, ~8 ms at 64), while 20 connections carry well over 100 req/s of ~50 ms replies.
MAX_IN_FLIGHT = 20

RATE_VARIABLE, DEFAULT_RATE = "MARKETPIPE_KIS_RATE_LIMIT", "20/s"
ADJUSTED_VARIABLE = "MARKETPIPE_KIS_ADJUSTED"


class KisSource(OneMarketDailyBars):
    """Daily bars, intraday bars, current price and order book of KRX stocks from KIS.

    `daily_bars` and `intraday_bars` are the Source protocol's synchronous calls;
    `current_price` and `order_book` are async. For many async calls, `async with source:` keeps
    one connection pool open.
    """

    name = NAME
    market = MARKET
    datasets: ClassVar[frozenset[Dataset]] = frozenset(
        {Dataset.DAILY_BARS, Dataset.INTRADAY_BARS, Dataset.ORDER_BOOKS}
    )

    def __init__(
        self,
        app_key: str,
        app_secret: str,
        base_url: str = DEFAULT_BASE_URL,
        *,
        ws_url: str = DEFAULT_WS_URL,
        adjusted: bool = True,
        rate: tuple[int, float] = (20, 1.0),
        retry: RetryPolicy | None = None,
        timeout: float = 10.0,
        cache_dir: str | Path | None = None,
        token_interval: float = TOKEN_INTERVAL,
        refresh_margin: float = REFRESH_MARGIN,
        minute_retention_days: int = MINUTE_RETENTION_DAYS,
        now: Callable[[], dt.datetime] | None = None,
    ):
        self._app_key, self._app_secret = app_key, app_secret
        self.minute_retention_days = minute_retention_days
        self.now = now or (lambda: dt.datetime.now(dt.UTC))
        self.base_url, self.ws_url = base_url.rstrip("/"), ws_url
        self.adjusted, self.retry, self.timeout = adjusted, retry, timeout
        # As many requests in flight as the limit allows, each with its own pooled connection
        # (a request waiting for a connection would hold its limiter slot meanwhile).
        self.concurrency = min(rate[0], MAX_IN_FLIGHT)
        self.rate = rate
        if cache_dir is None:
            default = Path.home() / ".cache" / "marketpipe"
            cache_dir = os.environ.get("MARKETPIPE_CACHE_DIR") or default
        token_file = TokenFile(Path(cache_dir), credential_id(app_key, self.base_url))
        self.tokens = TokenCache(
            app_key, app_secret, token_file, interval=token_interval, margin=refresh_margin
        )
        self.missing: dict[str, str] = {}  # symbols the last call found unknown
        self._open: KisClient | None = None
        self._stack: contextlib.AsyncExitStack | None = None

    # Source protocol ------------------------------------------------------------------------
    def universe(self, market: str) -> pl.DataFrame:
        hint = "; or put `krx` before `kis` in MARKETPIPE_KRX_SOURCE (e.g. krx,kis)"
        raise no_listing(NAME, MARKET, hint)

    def intraday_bars(
        self, market: str, sessions: Sequence[dt.date], symbols: Sequence[str]
    ) -> pl.DataFrame:
        """Source.intraday_bars: each (symbol, session)'s 1-minute bars as 15-minute bars on the
        session's grid (aggregate_minutes), `trade_date` the session.

        A session older than KIS's minute history fails before any request
        (MinuteHistoryUnavailable); a session still open yields only its bars already over.
        """
        days = self._asked(market, sessions, symbols)
        symbols = list(dict.fromkeys(symbols))
        if not days:
            return pl.DataFrame(schema=INTRADAY_BARS)
        now = self.now()
        check_retention(days, symbols, now, self.minute_retention_days)
        # A future session has no bars yet, a day without a session none at all.
        today = now.astimezone(KST).date()
        days = [d for d in days if d <= today and is_session(MARKET, d)]
        if not days:
            return pl.DataFrame(schema=INTRADAY_BARS)
        return run_sync(self._intraday(days, symbols, now))

    # Async calls for later steps ------------------------------------------------------------
    async def current_price(self, symbol: str) -> CurrentPrice:
        async with self._client() as client:
            return await current_price(client, symbol)

    async def order_book(self, symbol: str) -> pl.DataFrame:
        """Ten levels of the book in the order_books columns (kis_books.order_book)."""
        async with self._client() as client:
            return await order_book(client, symbol)

    async def __aenter__(self) -> KisSource:
        self._stack = contextlib.AsyncExitStack()
        http = await self._stack.enter_async_context(self._http())
        self._open = self._new_client(http)
        return self

    async def __aexit__(self, *exc) -> None:
        self._open = None
        if self._stack is not None:
            await self._stack.aclose()

    # Internals ------------------------------------------------------------------------------
    def _keys(self) -> tuple[list[str], tuple[str, str]]:
        # A key's budget is per server (real or paper).
        return [self._app_key, self.base_url], (self._app_key, self._app_secret)

    def _new_client(self, http: ProviderHttp) -> KisClient:
        return KisClient(http, self.tokens, self._app_key, self._app_secret)

    @contextlib.asynccontextmanager
    async def _client(self):
        """The open client of `async with source:` in this loop, else a one-call client."""
        if self._open is not None and self._open.loop is asyncio.get_running_loop():
            yield self._open
            return
        async with self._http() as http:
            yield self._new_client(http)

    async def _each(
        self,
        dataset: str,
        symbols: Sequence[str],
        fetch: Callable[[KisClient, str], Awaitable[pl.DataFrame]],
    ) -> list[pl.DataFrame]:
        """fetch(client, symbol) for each symbol on one client; unknown ones end in `missing`."""
        async with self._client() as client:
            await client.tokens.token()  # one before fanning out; a bad key fails once, here
            try:
                return await self.fetch_symbols(
                    dataset, symbols, lambda symbol: fetch(client, symbol)
                )
            except BaseException:
                await _cancel_siblings()
                raise

    async def _daily(self, sessions: list[dt.date], symbols: Sequence[str]) -> pl.DataFrame:
        """Bars of `symbols` on `sessions` as KIS sent them (bad rows included)."""
        first, last = sessions[0], sessions[-1]

        async def fetch(client: KisClient, symbol: str) -> pl.DataFrame:
            return await daily_rows(client, symbol, first, last, adjusted=self.adjusted)

        frames = await self._each(Dataset.DAILY_BARS, symbols, fetch)
        return daily_frame(pl.concat([pl.DataFrame(schema=RAW_DAILY), *frames]))

    async def _intraday(
        self, sessions: list[dt.date], symbols: Sequence[str], now: dt.datetime
    ) -> pl.DataFrame:
        today = now.astimezone(KST).date()

        async def fetch(client: KisClient, symbol: str) -> pl.DataFrame:
            return await minute_rows(client, symbol, sessions, today)

        frames = await self._each(Dataset.INTRADAY_BARS, symbols, fetch)
        return aggregate_minutes(pl.concat([pl.DataFrame(schema=RAW_MINUTES), *frames]), now=now)


async def _cancel_siblings() -> None:
    """After one symbol's fatal error, stop the others' requests before the pool closes.

    daily_bars always runs in its own event loop (run_sync), so every other task is ours.
    """
    current = asyncio.current_task()
    others = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)


def _flag(variable: str, default: bool) -> bool:
    raw = os.environ.get(variable, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "adjusted"):
        return True
    if raw in ("0", "false", "no", "raw"):
        return False
    raise ConfigurationError(f"{variable}={raw!r}: use 1 (adjusted prices) or 0 (raw prices)")


def source_from_env() -> KisSource:
    """KIS_APP_KEY and KIS_APP_SECRET (required), KIS_BASE_URL, KIS_WS_URL,
    MARKETPIPE_KIS_RATE_LIMIT (default 20/s), MARKETPIPE_KIS_ADJUSTED (default 1); retries follow
    MARKETPIPE_RETRY_INITIAL_SECONDS / MARKETPIPE_RETRY_MAX_SECONDS (RetryPolicy.from_env)."""
    return KisSource(
        required_env("KIS_APP_KEY", NAME),
        required_env("KIS_APP_SECRET", NAME),
        os.environ.get("KIS_BASE_URL") or DEFAULT_BASE_URL,
        ws_url=os.environ.get("KIS_WS_URL") or DEFAULT_WS_URL,
        adjusted=_flag(ADJUSTED_VARIABLE, True),
        rate=rate_limit(RATE_VARIABLE, DEFAULT_RATE),
    )
