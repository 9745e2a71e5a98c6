"""Yahoo Finance (providers.md 5.1): US daily bars, splits and dividends from the v8 chart API,
option chains from the v7 options API. No credentials.

Environment (CONTRACT section 4):

- `YAHOO_BASE_URL`, default `https://query2.finance.yahoo.com`.
- `MARKETPIPE_YAHOO_RATE_LIMIT`, default `2/s`. Yahoo publishes no limit and throttles by IP
  (429 or a "Too Many Requests" body); two requests a second is polite: a 500-symbol daily run
  takes about four minutes. As many requests are in flight as the limit allows per window.

Daily bars: `GET /v8/finance/chart/{symbol}?period1=&period2=&interval=1d&includePrePost=false
&events=div,splits`, one request per symbol for the whole requested range. Yahoo stamps a
finished session's bar at the session open (09:30 New York, in UTC epoch seconds); its date in
America/New_York is the session date. Nulls in the arrays are kept as nulls, so validation
quarantines those rows (`required_fields`) instead of losing them.

The partial bar of a running session. While a session trades, Yahoo returns its bar so far,
stamped at the last trade (`meta.regularMarketTime`, e.g. 1766437206 = 16:00:06) instead of the
open. The rule: **a bar is stored only when its session has closed** when the answer arrives,
that is when the session's close is at or before max(our clock, `meta.regularMarketTime`).
The close is `meta.currentTradingPeriod.regular.end` when that period is the bar's session, and
the exchange calendar's close otherwise (so early closes count: 13:00 New York on a half day). A
bar of a running session is dropped, whatever its stamp, and its symbol counts as missing for
that session (the completeness check says so); the 18:00 run, or any re-run after the close,
stores the final bar. When Yahoo sends two bars for
one session (an open-stamped and a live one), the later stamp wins.

Answers and what they become: HTTP 404 `{"chart":{"result":null,"error":{...}}}` or a
`Not Found` error code is `NotFound` (the symbol counts as missing, the run goes on); HTTP 429 or
a "Too Many Requests" body is `RateLimited` (retried, Retry-After honoured); the "Will be right
back" outage page and 5xx are retried and then make the source `ProviderDown`, which moves a
fallback chain such as `yahoo,synthetic` to its next source (served with HTTP 200, the outage
page ends the same way as a malformed body); any other shape is `SchemaDrift`.

Option chains: `GET /v7/finance/options/{symbol}` lists the expirations; each expiration within
`OPTION_HORIZON_DAYS` (90) days of the quote date is then fetched with `?date=<epoch>`. Yahoo's
expiration epochs are 00:00 UTC of the expiry date, so they are read as UTC dates. Keys Yahoo
leaves out (`volume` when a contract did not trade) become nulls, never zeros.
`impliedVolatility` is already a fraction (2.27 = 227 %) and is kept as it is here; us/option_chains
solves it from the mid where it is absent, 0 or outside the rule's range. Yahoo serves only the
current chain: the asset stores it under the latest session (today's, or the last one on a weekend
or holiday) and refuses to backfill with it (marketpipe_assets/options.py).

Cookie and crumb. The options API answers 401 `{"finance":{"error":{"code":"Unauthorized",
"description":"Invalid Crumb"}}}` unless the request carries a session cookie and the crumb
issued for it (`crumb=` query parameter). Like yfinance, the client asks the API host's root once
for the cookie (Yahoo sets it whatever the status), then `GET /v1/test/getcrumb` with that cookie
for the crumb (plain text), and keeps both for the client's life. A 401 "Invalid Crumb" (or
"Invalid Cookie") fetches a fresh pair once and repeats the request; refused again, Yahoo is
turning this client away (consent wall, blocked address), which is `ProviderDown` naming the
endpoint and underlying, so `yahoo,synthetic` moves on. A handshake that meets an outage is
retried like any request, then is `ProviderDown` too.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import quote as url_quote

import polars as pl

from checks.errors import ConfigurationError
from checks.schemas import DAILY_PRICES, RAW
from resources.sources.base import Dataset

from .base import OneMarketDailyBars, no_listing, rate_limit
from .errors import BadRequest, NotFound, ProviderError, RateLimited, Unauthorized
from .http import ProviderHttp, RetryPolicy, retry_after_seconds
from .values import (
    NEW_YORK,
    bar_columns,
    date_of,
    dates_of,
    epoch,
    evidence,
    unread_numbers,
    us_close,
)
from .yahoo_options import CRUMB_REFUSALS, OPTION_CHAIN, USER_AGENT, InvalidCrumb, YahooOptions

__all__ = ["OPTION_CHAIN", "YahooSource", "source_from_env"]  # OPTION_CHAIN: tests read it here

PROVIDER = "yahoo"
DEFAULT_BASE_URL = "https://query2.finance.yahoo.com"
RATE_VARIABLE = "MARKETPIPE_YAHOO_RATE_LIMIT"
DEFAULT_RATE = "2/s"
MARKET = "us"
OUTAGE_MARKER = "Will be right back"
# Seconds per request; read when a source is built, so tests can shorten it. Retries follow
# RetryPolicy.from_env() (MARKETPIPE_RETRY_INITIAL_SECONDS, MARKETPIPE_RETRY_MAX_SECONDS).
TIMEOUT = 10.0

CORPORATE_ACTIONS = pl.Schema(
    {
        "symbol": pl.String,
        "date": pl.Date,
        "kind": pl.String,  # split | dividend
        "ratio": pl.Float64,  # new shares per old share (4:1 -> 4.0); null for dividends
        "amount": pl.Float64,  # cash per share; null for splits
    }
)


log = logging.getLogger(__name__)


def now() -> float:
    """The wall clock the partial-bar rule compares session closes with."""
    return time.time()


def _error_of(payload: Any) -> dict | None:
    """The `error` object of a chart, optionChain or finance envelope, if any."""
    if not isinstance(payload, dict):
        return None
    for envelope in ("chart", "optionChain", "finance"):
        inner = payload.get(envelope)
        if isinstance(inner, dict) and isinstance(inner.get("error"), dict):
            return inner["error"]
    return None


class YahooSource(YahooOptions, OneMarketDailyBars):
    """US daily bars, corporate actions and option chains from Yahoo Finance."""

    name = PROVIDER
    market = MARKET
    wrong_market = ConfigurationError
    datasets = frozenset({Dataset.DAILY_BARS, Dataset.OPTION_CHAINS})

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        *,
        rate: tuple[int, float] = (2, 1.0),
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        clock: Callable[[], float] | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self.rate = rate
        self.retry = retry  # None: the HTTP layer's schedule from the environment
        self.timeout = timeout or TIMEOUT
        self.concurrency = max(1, min(rate[0], 64))
        self._clock = clock or (lambda: now())
        self.missing: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"YahooSource(base_url={self.base_url!r}, rate={self.rate})"

    def _keys(self) -> tuple[list[str], list[str]]:
        return ["anonymous"], []  # no key: one budget for the whole process

    async def _get(
        self, http: ProviderHttp, endpoint: str, symbol: str, params: dict, cookie: str | None
    ) -> Any:
        def classify(payload: Any, response) -> None:
            status, text = response.status_code, response.text
            if OUTAGE_MARKER in text:
                raise ProviderError(
                    PROVIDER,
                    endpoint,
                    symbol,
                    f"Yahoo Finance is down: outage page {OUTAGE_MARKER!r} (HTTP {status})",
                )
            if text.lstrip().startswith("Too Many Requests"):
                raise RateLimited(
                    PROVIDER,
                    endpoint,
                    symbol,
                    f"HTTP {status}: Too Many Requests",
                    retry_after=retry_after_seconds(response),
                )
            error = _error_of(payload)
            if error is None:
                return
            code, description = error.get("code"), error.get("description")
            detail = f"HTTP {status}: {code}: {description}"
            if status == 404 or code == "Not Found":
                raise NotFound(PROVIDER, endpoint, symbol, detail)
            if status in (401, 403) or code == "Unauthorized":
                refused = str(description or "").startswith(CRUMB_REFUSALS)
                raise (InvalidCrumb if refused else Unauthorized)(
                    PROVIDER, endpoint, symbol, detail
                )
            if status >= 500:
                raise ProviderError(PROVIDER, endpoint, symbol, detail)
            raise BadRequest(PROVIDER, endpoint, symbol, detail)

        payload, _ = await http.request_json(
            "GET",
            endpoint,
            symbol=symbol,
            classify=classify,
            params=params,
            headers={"User-Agent": USER_AGENT, "Accept": "application/json"}
            | ({"Cookie": cookie} if cookie else {}),
        )
        return payload

    async def _chart(
        self, http: ProviderHttp, symbol: str, first: dt.date, last: dt.date
    ) -> tuple[str, dict]:
        """The chart result of `symbol` for sessions first..last (period2 is exclusive)."""
        endpoint = f"/v8/finance/chart/{url_quote(symbol, safe='')}"
        params = {
            "period1": epoch(first, dt.time(0, 0), NEW_YORK),
            "period2": epoch(last + dt.timedelta(days=1), dt.time(0, 0), NEW_YORK),
            "interval": "1d",
            "includePrePost": "false",
            "events": "div,splits",
        }
        result = await self._result(http, endpoint, symbol, params, "chart", "empty chart result")
        return endpoint, result

    async def _result(
        self,
        http: ProviderHttp,
        endpoint: str,
        symbol: str,
        params: dict,
        envelope: str,
        empty: str,
        cookie: str | None = None,
    ) -> dict:
        """The first result of a `{envelope: {"result": [...]}}` answer: SchemaDrift when there
        is no result list, NotFound (saying `empty`) when it is empty."""
        payload = await self._get(http, endpoint, symbol, params, cookie)
        inner = payload.get(envelope) if isinstance(payload, dict) else None
        results = inner.get("result") if isinstance(inner, dict) else None
        if not isinstance(results, list):
            raise http.schema_error(
                endpoint, symbol, f"expected {envelope}.result, got {http.excerpt(payload)!r}"
            )
        if not results or not isinstance(results[0], dict):
            raise NotFound(PROVIDER, endpoint, symbol, empty)
        return results[0]

    # Daily bars ---------------------------------------------------------------------------
    def universe(self, market: str) -> pl.DataFrame:
        raise no_listing(PROVIDER, market)

    async def _daily(self, sessions: Sequence[dt.date], symbols: Sequence[str]) -> pl.DataFrame:
        first, last = min(sessions), max(sessions)
        partial: dict[str, list[dt.date]] = {}
        async with self._http() as http:

            async def fetch(symbol: str) -> pl.DataFrame:
                endpoint, result = await self._chart(http, symbol, first, last)
                frame, dropped = self._bars(http, endpoint, symbol, result)
                if dropped:
                    partial[symbol] = dropped
                return frame

            frames = await self.fetch_symbols(Dataset.DAILY_BARS, symbols, fetch, first_alone=True)
        if partial:
            days = sorted({d for ds in partial.values() for d in ds})
            log.warning(
                "yahoo chart: partial bars of running sessions %s not stored (%d symbol(s))",
                ", ".join(map(str, days)),
                len(partial),
            )
        return pl.concat([pl.DataFrame(schema=DAILY_PRICES), *frames], how="diagonal")

    def _session_close(self, day: dt.date, meta: dict) -> int:
        regular = (meta.get("currentTradingPeriod") or {}).get("regular") or {}
        start, end = regular.get("start"), regular.get("end")
        if not (isinstance(start, int | float) and isinstance(end, int | float)):
            return us_close(day)
        return int(end) if date_of(start, NEW_YORK) == day else us_close(day)

    def _bars(
        self, http: ProviderHttp, endpoint: str, symbol: str, result: dict
    ) -> tuple[pl.DataFrame, list[dt.date]]:
        """The chart's bars of closed sessions, and the session dates of dropped live bars."""
        stamps = result.get("timestamp")
        if not stamps:
            raise NotFound(PROVIDER, endpoint, symbol, "no bars in the requested range")
        try:
            quote = result["indicators"]["quote"][0]
        except (KeyError, IndexError, TypeError):
            raise http.schema_error(endpoint, symbol, "no indicators.quote[0]") from None
        fields = ("open", "high", "low", "close", "volume")
        absent = [f for f in fields if not isinstance(quote.get(f), list)]
        if absent:
            raise http.schema_error(endpoint, symbol, f"missing indicators.quote {absent}")
        lengths = {f: len(quote[f]) for f in fields} | {"timestamp": len(stamps)}
        if len(set(lengths.values())) != 1:
            raise http.schema_error(endpoint, symbol, f"arrays of different lengths {lengths}")
        meta = result.get("meta") or {}
        moment = max(self._clock(), float(meta.get("regularMarketTime") or 0))
        dates, unread = dates_of(stamps, lambda stamp: date_of(stamp, NEW_YORK))
        frame = pl.DataFrame(
            {
                "symbol": [symbol] * len(stamps),
                "stamp": pl.Series(stamps, dtype=pl.Int64, strict=False),
                **bar_columns(quote, fields),
                RAW: evidence(unread, unread_numbers(quote, fields)),
            }
        )
        closes = [None if d is None else self._session_close(d, meta) for d in dates]
        frame = frame.with_columns(
            trade_date=pl.Series(dates, dtype=pl.Date),
            closed=pl.Series([c is not None and c <= moment for c in closes], dtype=pl.Boolean),
        )
        dropped = frame.filter(pl.col("trade_date").is_not_null() & ~pl.col("closed"))
        kept = frame.filter(pl.col("trade_date").is_null() | pl.col("closed"))
        # Two bars of one session (open-stamped and live): the later stamp has the final values.
        dated = kept.filter(pl.col("trade_date").is_not_null())
        dated = dated.sort("stamp").unique("trade_date", keep="last", maintain_order=True)
        kept = pl.concat([dated, kept.filter(pl.col("trade_date").is_null())])
        # `raw` only where something did not read, as every source sends it.
        shown = [] if kept[RAW].is_null().all() else [RAW]
        bars = kept.with_columns(source=pl.lit(PROVIDER)).select(*DAILY_PRICES, *shown)
        return bars.cast(DAILY_PRICES), sorted(set(dropped["trade_date"]))

    # Corporate actions --------------------------------------------------------------------
    async def corporate_actions(self, symbol: str, first: dt.date, last: dt.date) -> pl.DataFrame:
        """Splits and dividends of `symbol` with ex-dates first..last (New York dates).

        Columns: symbol, date, kind (`split` | `dividend`), ratio (numerator / denominator, a
        4:1 split is 4.0), amount (cash per share). Unknown symbol: `NotFound`.
        """
        async with self._http() as http:
            endpoint, result = await self._chart(http, symbol, first, last)
        events = result.get("events") or {}
        rows = []
        for item in (events.get("splits") or {}).values():
            numerator, denominator = item.get("numerator"), item.get("denominator")
            ratio = numerator / denominator if numerator and denominator else None
            rows.append((symbol, date_of(item["date"], NEW_YORK), "split", ratio, None))
        for item in (events.get("dividends") or {}).values():
            rows.append(
                (symbol, date_of(item["date"], NEW_YORK), "dividend", None, item.get("amount"))
            )
        frame = pl.DataFrame(rows, schema=CORPORATE_ACTIONS, orient="row")
        return frame.filter(pl.col("date").is_between(first, last)).sort("date", "kind")


def source_from_env() -> YahooSource:
    return YahooSource(
        os.environ.get("YAHOO_BASE_URL") or DEFAULT_BASE_URL,
        rate=rate_limit(RATE_VARIABLE, DEFAULT_RATE),
        timeout=TIMEOUT,
    )
