"""Finnhub REST (providers.md 5.2): US daily bars from `/stock/candle`, quotes from `/quote`.

Environment (CONTRACT section 4):

- `FINNHUB_API_KEY` (required). Sent in the `X-Finnhub-Token` header, never in the URL, and
  redacted from every error message.
- `FINNHUB_BASE_URL`, default `https://finnhub.io/api/v1`.
- `MARKETPIPE_FINNHUB_RATE_LIMIT`, default `60/min` (the free tier); as many requests are in
  flight at once as the limit allows in one window.

Answers and what they become:

- `{"s":"ok","c":[..],"h":[..],"l":[..],"o":[..],"t":[..],"v":[..]}`: one bar per element,
  nulls kept as nulls (validation quarantines them), bars outside the requested sessions dropped.
- `{"s":"no_data"}`: `NotFound`; the symbol counts as missing (the completeness check sees it),
  the run goes on.
- non-2xx with `{"error": "..."}`: 401/403 `Unauthorized` (never retried: the same key fails
  again), 429 `RateLimited` and 5xx retried, then `ProviderDown` (a fallback chain moves on).
- anything else (a missing array, arrays of different lengths): `SchemaDrift`, not retried.

A session's candle is stored only once the session has closed (the exchange calendar's close, 16:00
New York or 13:00 on a half day, by the wall clock): while it trades, Finnhub's candle of the day
is the day so far, not the session's bar. The symbol then counts as missing for that session until
a run after the close.

Candle timestamps: Finnhub stamped daily candles at the session open (09:30 New York) until
mid-2021 and at 00:00 UTC of the session date since (finnhubio/Finnhub-API#449). A stamp at
00:00 UTC is read as that UTC date; any other stamp as its date in America/New_York. Both
conventions give the session date; reading a 00:00 UTC stamp in New York would shift every bar
to the day before.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import polars as pl

from checks.errors import ConfigurationError
from checks.schemas import DAILY_PRICES
from resources.sources.base import Dataset

from .base import OneMarketDailyBars, no_listing, rate_limit, required_env
from .errors import BadRequest, NotFound, Unauthorized
from .http import ProviderHttp, RetryPolicy
from .values import (
    NEW_YORK,
    bar_columns,
    date_of,
    dates_of,
    epoch,
    evidence,
    served,
    unread_numbers,
)

PROVIDER = "finnhub"
DEFAULT_BASE_URL = "https://finnhub.io/api/v1"
RATE_VARIABLE = "MARKETPIPE_FINNHUB_RATE_LIMIT"
DEFAULT_RATE = "60/min"
CANDLE, QUOTE = "/stock/candle", "/quote"
MARKET = "us"
# Seconds per request; read when a source is built, so tests can shorten it. Retries follow
# RetryPolicy.from_env() (MARKETPIPE_RETRY_INITIAL_SECONDS, MARKETPIPE_RETRY_MAX_SECONDS).
TIMEOUT = 10.0

log = logging.getLogger(__name__)


def session_date(epoch: int | float | None) -> dt.date | None:
    """The session date of a daily candle stamp (see the module docstring)."""
    if epoch is None:
        return None
    seconds = int(epoch)
    if seconds % 86_400 == 0:
        return date_of(seconds, dt.UTC)
    return date_of(seconds, NEW_YORK)


def now() -> float:
    """The wall clock that says whether a session has closed."""
    return time.time()


class FinnhubSource(OneMarketDailyBars):
    """US daily bars and quotes from Finnhub. The key is kept out of repr, logs and errors."""

    name = PROVIDER
    market = MARKET
    wrong_market = ConfigurationError
    datasets = frozenset({Dataset.DAILY_BARS})

    def __init__(
        self,
        api_key: str,
        base_url: str = DEFAULT_BASE_URL,
        *,
        rate: tuple[int, float] = (60, 60.0),
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        clock: Callable[[], float] | None = None,
    ):
        if not api_key:
            raise ConfigurationError("FINNHUB_API_KEY is not set: the finnhub source needs it")
        self._api_key = api_key
        self.base_url = base_url.rstrip("/")
        self.rate = rate
        self.retry = retry  # None: the HTTP layer's schedule from the environment
        self.timeout = timeout or TIMEOUT
        self.concurrency = rate[0]
        self._clock = clock or (lambda: now())
        self.missing: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"FinnhubSource(base_url={self.base_url!r}, rate={self.rate})"

    def _keys(self) -> tuple[list[str], list[str]]:
        return [self._api_key], [self._api_key]

    async def _get(self, http: ProviderHttp, endpoint: str, symbol: str, params: dict) -> Any:
        def classify(payload: Any, response) -> None:
            status = response.status_code
            message = payload.get("error") if isinstance(payload, dict) else None
            if status in (401, 403):
                hint = (
                    "check FINNHUB_API_KEY"
                    if status == 401
                    else "the key's plan may not include this endpoint"
                )
                detail = f"HTTP {status}: {message or http.excerpt(response.text)}; {hint}"
                raise Unauthorized(PROVIDER, endpoint, symbol, http.redact(detail))
            if status < 400 and message:
                # Errors are documented as non-2xx; one in a 200 is not retried either.
                raise BadRequest(PROVIDER, endpoint, symbol, http.redact(f"error: {message}"))

        payload, _ = await http.request_json(
            "GET",
            endpoint,
            symbol=symbol,
            classify=classify,
            params=params,
            headers={"X-Finnhub-Token": self._api_key},
        )
        return payload

    # Daily bars ---------------------------------------------------------------------------
    def universe(self, market: str) -> pl.DataFrame:
        raise no_listing(PROVIDER, market)

    async def _daily(self, sessions: Sequence[dt.date], symbols: Sequence[str]) -> pl.DataFrame:
        first, last = min(sessions), max(sessions)
        async with self._http() as http:

            async def fetch(symbol: str) -> pl.DataFrame:
                return await self._candles(http, symbol, first, last)

            frames = await self.fetch_symbols(Dataset.DAILY_BARS, symbols, fetch, first_alone=True)
        frame = pl.concat([pl.DataFrame(schema=DAILY_PRICES), *frames], how="diagonal")
        outside = len(frame) - len(served(frame, MARKET, sessions))
        if outside:
            log.warning(
                "finnhub %s: %d bar(s) of sessions this run does not materialize left to theirs",
                CANDLE,
                outside,
            )
        # A running session's candle is the day so far, not the session's bar.
        return self.without_running(frame, self._clock())

    async def _candles(
        self, http: ProviderHttp, symbol: str, first: dt.date, last: dt.date
    ) -> pl.DataFrame:
        # 00:00 UTC of the first session to 23:59:59 UTC of the last covers both stamp
        # conventions (09:30 New York is 13:30 or 14:30 UTC the same day).
        params = {
            "symbol": symbol,
            "resolution": "D",
            "from": epoch(first, dt.time(0, 0), dt.UTC),
            "to": epoch(last, dt.time(23, 59, 59), dt.UTC),
        }
        payload = await self._get(http, CANDLE, symbol, params)
        if not isinstance(payload, dict) or "s" not in payload:
            raise http.schema_error(
                CANDLE, symbol, f"expected an object with 's', got {http.excerpt(payload)!r}"
            )
        if payload["s"] == "no_data":
            raise NotFound(PROVIDER, CANDLE, symbol, f"no_data between {first} and {last}")
        if payload["s"] != "ok":
            raise http.schema_error(CANDLE, symbol, f"unexpected status s={payload['s']!r}")
        keys = ("t", "o", "h", "l", "c", "v")
        absent = [k for k in keys if not isinstance(payload.get(k), list)]
        if absent:
            raise http.schema_error(
                CANDLE, symbol, f"missing array(s) {absent} in an 's':'ok' answer"
            )
        lengths = {k: len(payload[k]) for k in keys}
        if len(set(lengths.values())) != 1:
            raise http.schema_error(CANDLE, symbol, f"arrays of different lengths {lengths}")
        dates, unread = dates_of(payload["t"], session_date)
        frame = pl.DataFrame(
            {
                "symbol": [symbol] * lengths["t"],
                "trade_date": pl.Series(dates, dtype=pl.Date),
                **bar_columns(payload, "ohlcv"),
                "source": [PROVIDER] * lengths["t"],
            },
            schema=DAILY_PRICES,
        )
        # A stamp that is no epoch (text, inf, beyond any date) leaves the bar undated and a
        # value that is no number leaves it null, their text kept in `raw`: validation
        # quarantines them as unparseable:<field>.
        raw = evidence(unread, unread_numbers(payload, "ohlcv"))
        if raw.is_not_null().any():
            frame = frame.with_columns(raw)
        return frame

    # Quotes -------------------------------------------------------------------------------
    async def quote(self, symbol: str) -> dict[str, Any]:
        """The latest quote: price, change, change_pct, open, high, low, prev_close and `ts`
        (UTC). Finnhub answers an unknown symbol with zeros and t=0: that is `NotFound`."""
        async with self._http() as http:
            payload = await self._get(http, QUOTE, symbol, {"symbol": symbol})
        keys = ("c", "d", "dp", "h", "l", "o", "pc", "t")
        if not isinstance(payload, dict) or any(k not in payload for k in ("c", "t")):
            raise http.schema_error(QUOTE, symbol, f"expected keys {list(keys)}")
        if not payload.get("t") and not payload.get("c"):
            raise NotFound(PROVIDER, QUOTE, symbol, "no quote (c=0, t=0): unknown symbol?")
        return {
            "symbol": symbol,
            "price": payload.get("c"),
            "change": payload.get("d"),
            "change_pct": payload.get("dp"),
            "open": payload.get("o"),
            "high": payload.get("h"),
            "low": payload.get("l"),
            "prev_close": payload.get("pc"),
            "ts": dt.datetime.fromtimestamp(int(payload["t"]), dt.UTC),
        }


def source_from_env() -> FinnhubSource:
    return FinnhubSource(
        required_env("FINNHUB_API_KEY", PROVIDER),
        os.environ.get("FINNHUB_BASE_URL") or DEFAULT_BASE_URL,
        rate=rate_limit(RATE_VARIABLE, DEFAULT_RATE),
        timeout=TIMEOUT,
    )
