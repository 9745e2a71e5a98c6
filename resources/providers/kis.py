"""KIS (Korea Investment & Securities) Open API as the `kis` source of the krx market.

Payloads follow providers.md 5.4. Each call has three steps: build the query (tr_id, FID_*
parameters and the KIS headers), fetch the raw payload through the shared HTTP layer (limiter,
retries, circuit breaker), transform it into the standard frame.

Daily bars come from inquire-daily-itemchartprice, at most ~100 rows per call, newest first: a
range is read backwards, one earlier date window per call, until it is covered. Intraday bars are
KIS's 1-minute bars of each session (today's from inquire-time-itemchartprice, 30 per call; an
earlier day's from inquire-time-dailychartprice, 120 per call; both newest first, read backwards
one FID_INPUT_HOUR_1 cursor per call) aggregated to the session's 15-minute grid. Access tokens
(OAuth client credentials) live 24 h and KIS issues at most one per minute per key, so a token is
cached in memory and in a 0600 file that every process using the same key shares; it is renewed
5 minutes before expiry or when KIS answers that it expired (EGW00123). kis_token.py does that.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import polars as pl

from checks.errors import ConfigurationError
from checks.intraday_checks import SESSION_CLOSE, SESSION_OPEN, session_table
from checks.markets import is_session, session_bounds
from checks.rulebook import OHLCV_RULES
from checks.schemas import (
    INTRADAY_BAR_MINUTES,
    INTRADAY_BARS,
    ORDER_BOOK_SNAPSHOTS,
    PRICE_COLUMNS,
    with_evidence,
)
from resources.sources.base import SourceUnavailable

from .base import (
    OneMarketDailyBars,
    credential_id,
    fetch_each,
    no_listing,
    rate_limit,
    required_env,
    run_sync,
)
from .errors import (
    BadRequest,
    NotFound,
    ProviderError,
    RateLimited,
    TokenExpired,
    Unauthorized,
)
from .http import ProviderHttp, RetryPolicy
from .kis_token import (
    JSON_CONTENT,
    REFRESH_MARGIN,
    TOKEN_INTERVAL,
    TOKEN_PATH,
    TokenCache,
    TokenFile,
    TokenIssueLimited,
    TokenSession,
)

# Moved to kis_token.py; still importable from here.
from .kis_token import TOKEN_LIFETIME as TOKEN_LIFETIME
from .kis_token import Token as Token
from .values import SEOUL as KST
from .values import number_text, parse_number, served

NAME = "kis"
MARKET = "krx"
DEFAULT_BASE_URL = "https://openapi.koreainvestment.com:9443"
DEFAULT_WS_URL = "ws://ops.koreainvestment.com:21000"
_QUOTATIONS = "/uapi/domestic-stock/v1/quotations"
DAILY_PATH = f"{_QUOTATIONS}/inquire-daily-itemchartprice"
PRICE_PATH = f"{_QUOTATIONS}/inquire-price"
BOOK_PATH = f"{_QUOTATIONS}/inquire-asking-price-exp-ccn"
DAILY_TR_ID, PRICE_TR_ID, BOOK_TR_ID = "FHKST03010100", "FHKST01010100", "FHKST01010200"
PAGE_ROWS = 100  # the most rows one daily-chart call returns
MINUTE_TODAY_PATH = f"{_QUOTATIONS}/inquire-time-itemchartprice"  # today's session only
MINUTE_DAY_PATH = f"{_QUOTATIONS}/inquire-time-dailychartprice"  # one earlier day per call
MINUTE_TR_IDS = {MINUTE_TODAY_PATH: "FHKST03010200", MINUTE_DAY_PATH: "FHKST03010230"}
MINUTE_PAGE_ROWS = {MINUTE_TODAY_PATH: 30, MINUTE_DAY_PATH: 120}  # the most rows per call
# KIS keeps "at most one year" of minute bars for the per-day chart: older sessions fail before
# any request instead of coming back empty (which would look like a market without trades).
MINUTE_RETENTION_DAYS = 365
# Requests handed to the connection pool at once, and its size: KIS's own 20 req/s. httpcore's
# pool upkeep costs CPU quadratic in the connections per request (bench: ~3.5 ms per request at
# 16, ~6 ms at 32, ~8 ms at 64), while 20 connections carry well over 100 req/s of ~50 ms replies.
MAX_IN_FLIGHT = 20
BOOK_LEVELS = 10

RATE_VARIABLE, DEFAULT_RATE = "MARKETPIPE_KIS_RATE_LIMIT", "20/s"
ADJUSTED_VARIABLE = "MARKETPIPE_KIS_ADJUSTED"

RATE_LIMITED = "EGW00201"  # "초당 거래건수를 초과하였습니다", in a 500 or a 200
TOKEN_CODES = frozenset({"EGW00121", "EGW00123"})  # invalid token, expired token
TOKEN_ISSUE_LIMITED = "EGW00133"  # one token per minute
CREDENTIAL_CODES = frozenset({"EGW00103", "EGW00105"})  # invalid AppKey, invalid AppSecret
NO_DATA_RT_CD = "7"
NO_DATA_HINTS = ("자료가 없", "내용이 없", "종목")  # "no data", "nothing to show", "stock code"
CREDENTIAL_HINT = (
    "check KIS_APP_KEY and KIS_APP_SECRET, and that KIS_BASE_URL is the server (real or paper) "
    "the key was issued for"
)

# A live book carries no session: order_books adds `trade_date` when it spools the capture.
ORDER_BOOK = pl.Schema({c: t for c, t in ORDER_BOOK_SNAPSHOTS.items() if c != "trade_date"})
_RAW_FIELDS = {  # daily_prices column -> output2 key
    "trade_date": "stck_bsop_date",
    "open": "stck_oprc",
    "high": "stck_hgpr",
    "low": "stck_lwpr",
    "close": "stck_clpr",
    "volume": "acml_vol",
}
_RAW = pl.Schema({"symbol": pl.String, **{c: pl.String for c in _RAW_FIELDS}})
_MINUTE_FIELDS = {  # raw minute column -> output2 key of both minute charts
    "date": "stck_bsop_date",
    "hour": "stck_cntg_hour",  # HHMMSS in Seoul, the minute's start
    "open": "stck_oprc",
    "high": "stck_hgpr",
    "low": "stck_lwpr",
    "close": "stck_prpr",  # a minute bar's close is its last price
    "volume": "cntg_vol",  # the minute's own volume (acml_vol would be the day's running total)
}
RAW_MINUTES = pl.Schema(
    {"symbol": pl.String, "trade_date": pl.Date, **{c: pl.String for c in _MINUTE_FIELDS}}
)
_OHLCV = (*PRICE_COLUMNS, "volume")

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CurrentPrice:
    """inquire-price's headline fields: stck_prpr, stck_oprc, stck_hgpr, stck_lwpr, acml_vol."""

    symbol: str
    price: float | None
    open: float | None
    high: float | None
    low: float | None
    volume: int | None
    fetched_at: dt.datetime


class MinuteHistoryUnavailable(SourceUnavailable):
    """A session older than the minute history KIS keeps: no request can serve it, so a fallback
    chain moves on to its next source and a run with KIS alone fails with this message."""


def classify(payload: Any, response: httpx.Response) -> None:
    """Raise the typed error a KIS answer means, whatever its HTTP status.

    Data calls answer `{"rt_cd": "0"|..., "msg_cd", "msg1"}`; the token endpoint answers
    `{"error_code", "error_description"}` on failure. EGW00201 (rate limit) comes in a 500 or a
    200, so codes are read before the status.
    """
    if not isinstance(payload, dict):
        return
    rt_cd = str(payload.get("rt_cd", "0")).strip()
    if rt_cd == "0" and "error_code" not in payload:
        return
    code = str(payload.get("msg_cd") or payload.get("error_code") or "").strip()
    # Not cut here: the HTTP layer masks secrets first, then shortens every error.
    message = str(payload.get("msg1") or payload.get("error_description") or "").strip()
    request = response.request
    endpoint, symbol = request.url.path, request.url.params.get("FID_INPUT_ISCD")
    where = (NAME, endpoint, symbol)
    detail = f"{code or 'rt_cd ' + rt_cd} {message} (HTTP {response.status_code})"
    if code == RATE_LIMITED:
        raise RateLimited(*where, detail)
    if code == TOKEN_ISSUE_LIMITED:
        raise TokenIssueLimited(*where, detail)
    if code in TOKEN_CODES:
        raise TokenExpired(*where, detail)
    status = response.status_code
    if (
        code in CREDENTIAL_CODES
        or status in (401, 403)
        or (endpoint == TOKEN_PATH and status < 500)
    ):
        raise Unauthorized(*where, f"{detail}: {CREDENTIAL_HINT}")
    if rt_cd == NO_DATA_RT_CD or any(hint in message for hint in NO_DATA_HINTS):
        raise NotFound(*where, detail)
    if 400 <= status < 500:
        raise BadRequest(*where, detail)
    raise ProviderError(*where, detail)


class KisSource(OneMarketDailyBars):
    """Daily bars, current price and order book of KRX stocks from the KIS Open API.

    `daily_bars` is the Source protocol's synchronous call; `current_price` and `order_book` are
    async. For many async calls, `async with source:` keeps one connection pool open.
    """

    name = NAME
    market = MARKET

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
        self.missing: dict[str, str] = {}  # symbols the last daily_bars call found unknown
        self._open: _Client | None = None
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
        self._check_market(market)
        days = sorted(set(sessions))
        symbols = list(dict.fromkeys(symbols))
        if not days or not symbols:
            return pl.DataFrame(schema=INTRADAY_BARS)
        now = self.now()
        oldest = now.astimezone(KST).date() - dt.timedelta(days=self.minute_retention_days)
        if days[0] < oldest:
            others = f" and {len(symbols) - 1} more symbol(s)" if len(symbols) > 1 else ""
            raise MinuteHistoryUnavailable(
                f"{NAME} {MINUTE_DAY_PATH} [{symbols[0]}{others}]: no 1-minute bars for "
                f"{days[0]}: KIS keeps about {self.minute_retention_days} days of minute history "
                f"(the oldest day it can serve now is {oldest}); take intraday_bars before that "
                "from another source"
            )
        # A future session has no bars yet, a day without a session none at all.
        today = now.astimezone(KST).date()
        days = [d for d in days if d <= today and is_session(MARKET, d)]
        if not days:
            return pl.DataFrame(schema=INTRADAY_BARS)
        return run_sync(self._intraday(days, symbols, now))

    # Async calls for later steps ------------------------------------------------------------
    async def current_price(self, symbol: str) -> CurrentPrice:
        params = {"FID_COND_MRKT_DIV_CODE": "J", "FID_INPUT_ISCD": symbol}
        async with self._client() as client:
            payload, _ = await client.get(PRICE_PATH, PRICE_TR_ID, symbol, params)
            output = client.object(payload, "output", PRICE_PATH, symbol)
        return CurrentPrice(
            symbol=symbol,
            price=_number(output.get("stck_prpr")),
            open=_number(output.get("stck_oprc")),
            high=_number(output.get("stck_hgpr")),
            low=_number(output.get("stck_lwpr")),
            volume=_integer(output.get("acml_vol")),
            fetched_at=dt.datetime.now(dt.UTC),
        )

    async def order_book(self, symbol: str) -> pl.DataFrame:
        """Ten levels of the book in the order_books columns; an empty level ("0") has null
        prices and zero sizes."""
        params = {"FID_COND_MRKT_DIV_CODE": "J", "FID_INPUT_ISCD": symbol}
        async with self._client() as client:
            payload, _ = await client.get(BOOK_PATH, BOOK_TR_ID, symbol, params)
            book = client.object(payload, "output1", BOOK_PATH, symbol)
            levels = range(1, BOOK_LEVELS + 1)
            keys = [f"{side}{i}" for side in ("askp", "bidp") for i in levels]
            absent = [k for k in keys if k not in book]
            if absent:
                raise client.http.schema_error(
                    BOOK_PATH, symbol, f"output1 lacks {', '.join(absent[:4])}"
                )

        def price(key: str) -> float | None:
            value = _number(book.get(key))
            return value if value else None  # "0" is an empty level

        return pl.DataFrame(
            {
                "symbol": [symbol] * BOOK_LEVELS,
                "snapshot_ts": [_book_time(book.get("aspr_acpt_hour"))] * BOOK_LEVELS,
                "level": list(levels),
                "bid_price": [price(f"bidp{i}") for i in levels],
                "ask_price": [price(f"askp{i}") for i in levels],
                "bid_size": [_integer(book.get(f"bidp_rsqn{i}")) or 0 for i in levels],
                "ask_size": [_integer(book.get(f"askp_rsqn{i}")) or 0 for i in levels],
            },
            schema=ORDER_BOOK,
        )

    async def __aenter__(self) -> KisSource:
        self._stack = contextlib.AsyncExitStack()
        http = await self._stack.enter_async_context(self._http())
        self._open = _Client(self, http)
        return self

    async def __aexit__(self, *exc) -> None:
        self._open = None
        if self._stack is not None:
            await self._stack.aclose()

    # Internals ------------------------------------------------------------------------------
    def _http(self) -> ProviderHttp:
        return ProviderHttp.shared(
            NAME,
            self.base_url,
            credential=[self._app_key, self.base_url],  # a key's budget is per server
            requests=self.rate[0],
            per_seconds=self.rate[1],
            secrets=(self._app_key, self._app_secret),
            retry=self.retry,  # None: RetryPolicy.from_env()
            timeout=self.timeout,
            max_connections=self.concurrency,
        )

    @contextlib.asynccontextmanager
    async def _client(self):
        """The open client of `async with source:` in this loop, else a one-call client."""
        if self._open is not None and self._open.loop is asyncio.get_running_loop():
            yield self._open
            return
        async with self._http() as http:
            yield _Client(self, http)

    async def _each(
        self, symbols: Sequence[str], fetch: Callable[[_Client, str], Awaitable[pl.DataFrame]]
    ) -> list[pl.DataFrame]:
        """fetch(client, symbol) for each symbol on one client; unknown ones end in `missing`."""
        symbols = list(dict.fromkeys(symbols))
        async with self._client() as client:
            await client.tokens.token()  # one before fanning out; a bad key fails once, here
            try:
                frames, missing = await fetch_each(
                    symbols, lambda symbol: fetch(client, symbol), concurrency=self.concurrency
                )
            except BaseException:
                await _cancel_siblings()
                raise
        self.missing = missing
        if missing:
            logger.warning("kis: %d symbol(s) without data: %s", len(missing), sorted(missing))
        return frames

    async def _daily(self, sessions: list[dt.date], symbols: Sequence[str]) -> pl.DataFrame:
        """Bars of `symbols` on `sessions` as KIS sent them (bad rows included)."""
        first, last = sessions[0], sessions[-1]
        frames = await self._each(symbols, lambda c, symbol: c.daily_rows(symbol, first, last))
        raw = pl.concat(frames) if frames else pl.DataFrame(schema=_RAW)
        return _bars(raw, sessions)

    async def _intraday(
        self, sessions: list[dt.date], symbols: Sequence[str], now: dt.datetime
    ) -> pl.DataFrame:
        today = now.astimezone(KST).date()
        frames = await self._each(symbols, lambda c, symbol: c.minute_rows(symbol, sessions, today))
        return aggregate_minutes(pl.concat([pl.DataFrame(schema=RAW_MINUTES), *frames]), now=now)


class _Client:
    """One event loop's session: the HTTP pool and the way to a token (kis_token.py)."""

    def __init__(self, source: KisSource, http: ProviderHttp):
        self.source, self.http = source, http
        self.loop = asyncio.get_running_loop()
        self.tokens = TokenSession(source.tokens, http, classify)

    # Requests -------------------------------------------------------------------------------
    async def get(
        self, path: str, tr_id: str, symbol: str, params: dict[str, str], tr_cont: str = ""
    ) -> tuple[dict, httpx.Response]:
        """One KIS query; on an expired-token answer the token is renewed once and the query
        sent once more."""
        for attempt in (1, 2):
            token = await self.tokens.token()
            self.http.redact.add(token)  # a bearer token is a credential too
            headers = {
                **JSON_CONTENT,
                "authorization": f"Bearer {token}",
                "appkey": self.source._app_key,
                "appsecret": self.source._app_secret,
                "tr_id": tr_id,
                "custtype": "P",
                "tr_cont": tr_cont,
            }
            try:
                payload, response = await self.http.request_json(
                    "GET", path, symbol=symbol, classify=classify, params=params, headers=headers
                )
            except TokenExpired:
                if attempt == 2:
                    raise
                await self.tokens.token(stale=token)
                continue
            if not isinstance(payload, dict):
                raise self.http.schema_error(path, symbol, "the answer is not a JSON object")
            return payload, response
        raise AssertionError("unreachable")  # pragma: no cover

    def object(self, payload: dict, key: str, path: str, symbol: str) -> dict:
        value = payload.get(key)
        if not isinstance(value, dict):
            raise self.http.schema_error(path, symbol, f"the answer has no {key!r} object")
        return value

    def rows(self, payload: dict, path: str, symbol: str) -> list[dict]:
        """The chart rows of `output2`, without the row of empty strings an empty window is."""
        page = payload.get("output2")
        if not isinstance(page, list) or not all(isinstance(r, dict) for r in page):
            raise self.http.schema_error(path, symbol, "the answer has no 'output2' list of rows")
        return [r for r in page if any(str(v).strip() for v in r.values())]

    async def daily_rows(self, symbol: str, first: dt.date, last: dt.date) -> pl.DataFrame:
        """Every row KIS sends for [first, last], newest first, one earlier window per call."""
        rows: list[dict] = []
        end, tr_cont = last, ""
        while True:
            params = {
                "FID_COND_MRKT_DIV_CODE": "J",
                "FID_INPUT_ISCD": symbol,
                "FID_INPUT_DATE_1": first.strftime("%Y%m%d"),
                "FID_INPUT_DATE_2": end.strftime("%Y%m%d"),
                "FID_PERIOD_DIV_CODE": "D",
                "FID_ORG_ADJ_PRC": "0" if self.source.adjusted else "1",
            }
            try:
                payload, response = await self.get(DAILY_PATH, DAILY_TR_ID, symbol, params, tr_cont)
            except NotFound:
                if not rows:
                    raise
                break  # nothing before the listing: the rows so far are the symbol's history
            page = self.rows(payload, DAILY_PATH, symbol)
            rows.extend(page)
            # KIS marks further pages with tr_cont F/M; a full page may also have more behind it.
            more = response.headers.get("tr_cont", "").strip() in ("F", "M")
            dates = [d for d in map(_date, page) if d is not None]
            if not (more or len(page) >= PAGE_ROWS) or not dates:
                break
            oldest = min(dates)
            if oldest <= first or oldest > end:  # covered, or the server ignored the window
                break
            end, tr_cont = oldest - dt.timedelta(days=1), "N"
        fields = _RAW_FIELDS.values()
        return pl.DataFrame(
            [(symbol, *(_text(r.get(k)) for k in fields)) for r in rows], schema=_RAW, orient="row"
        )

    async def minute_rows(
        self, symbol: str, sessions: list[dt.date], today: dt.date
    ) -> pl.DataFrame:
        """The 1-minute rows KIS sends for each session (RAW_MINUTES); a session without any
        is skipped, a symbol without any in every session is NotFound (counted missing)."""
        frames, not_found = [], None
        for day in sessions:
            try:
                rows = await self.session_minutes(symbol, day, day == today)
            except NotFound as error:  # not listed yet that day, or unknown to KIS
                not_found = error
                continue
            fields = _MINUTE_FIELDS.values()
            frames.append(
                pl.DataFrame(
                    [(symbol, day, *(_text(r.get(k)) for k in fields)) for r in rows],
                    schema=RAW_MINUTES,
                    orient="row",
                )
            )
        if not frames and not_found is not None:
            raise not_found
        return pl.concat([pl.DataFrame(schema=RAW_MINUTES), *frames])

    async def session_minutes(self, symbol: str, day: dt.date, today: bool) -> list[dict]:
        """One session's minute rows, newest first: each call asks for the bars at or before
        FID_INPUT_HOUR_1, starting at the close; the next cursor is a minute before the oldest
        bar received, until the session's open is reached or a page comes back short."""
        path = MINUTE_TODAY_PATH if today else MINUTE_DAY_PATH
        opens, closes = (t.astimezone(KST).time() for t in session_bounds(MARKET, day))
        stamp = day.strftime("%Y%m%d")
        rows: list[dict] = []
        cursor = closes
        while True:
            params = {
                "FID_COND_MRKT_DIV_CODE": "J",
                "FID_INPUT_ISCD": symbol,
                "FID_INPUT_HOUR_1": cursor.strftime("%H%M%S"),
                "FID_PW_DATA_INCU_YN": "N",  # this day only, not the days before
                **({"FID_ETC_CLS_CODE": ""} if today else {"FID_INPUT_DATE_1": stamp}),
            }
            payload, _ = await self.get(path, MINUTE_TR_IDS[path], symbol, params)
            page = self.rows(payload, path, symbol)
            full = len(page) >= MINUTE_PAGE_ROWS[path]
            # Bars after the cursor were on an earlier page (a server ignoring the cursor).
            page = [r for r in page if (_clock(r.get("stck_cntg_hour")) or cursor) <= cursor]
            rows.extend(page)
            times = [
                _clock(r.get("stck_cntg_hour"))
                for r in page
                if str(r.get("stck_bsop_date")).strip() == stamp
            ]
            oldest = min((t for t in times if t is not None), default=None)
            if not full or oldest is None or oldest <= opens:  # the last page, or the open
                break
            cursor = (dt.datetime.combine(day, oldest) - dt.timedelta(minutes=1)).time()
        if not rows:
            raise NotFound(NAME, path, symbol, f"no 1-minute bars for {day}")
        return rows


def aggregate_minutes(raw: pl.DataFrame, *, now: dt.datetime | None = None) -> pl.DataFrame:
    """KIS 1-minute rows (RAW_MINUTES: text, Seoul time) -> 15-minute bars (INTRADAY_BARS).

    Bars lie on the session's grid from its open (session_bounds, so late opens and early
    closes follow the exchange calendar): open = first, high = max, low = min, close = last,
    volume = sum, stamped in UTC. The closing auction prints at the close itself and belongs to
    the last bar. Rows the server sent for another day are dropped; a minute outside the hours
    lands in a bar outside them, and a row without a time in a bar without one, for validation
    to quarantine. A minute that breaks an OHLCV rule or lacks a value makes its whole bar
    that minute's values: folded into max/min it would vanish and the bar would be stored, so the
    bar goes to quarantine under the rule the minute broke. With `now`, bars not over by then
    (a session still trading) are left out.
    """
    step = dt.timedelta(minutes=INTRADAY_BAR_MINUTES)
    step_us = step // dt.timedelta(microseconds=1)
    bounds = session_table(MARKET, raw["trade_date"].unique().sort().to_list()).drop("slots")
    sent_day = pl.col("date").str.strip_chars().str.to_date("%Y%m%d", strict=False)
    local = pl.concat_str(
        sent_day.dt.strftime("%Y%m%d"), pl.col("hour").str.strip_chars().str.zfill(6)
    )
    at = (
        local.str.to_datetime("%Y%m%d%H%M%S", time_unit="us", strict=False)
        .dt.replace_time_zone(KST.key, ambiguous="earliest", non_existent="null")
        .dt.convert_time_zone("UTC")
    )
    slot = (pl.col("at") - pl.col(SESSION_OPEN)).dt.total_microseconds() // step_us
    slot = pl.when(pl.col("at") == pl.col(SESSION_CLOSE)).then(slot - 1).otherwise(slot)
    bad = pl.any_horizontal(
        *(rule.broken() for rule in OHLCV_RULES), *(pl.col(c).is_null() for c in _OHLCV)
    )
    minutes = (
        raw.filter(sent_day.is_null() | (sent_day == pl.col("trade_date")))
        .with_columns(
            at=at,
            **{c: parse_number(c, pl.Float64) for c in PRICE_COLUMNS},
            volume=number_text("volume").cast(pl.Int64, strict=False),
        )
        .join(bounds, on="trade_date", how="left")
        .with_columns(
            bar_start=pl.col(SESSION_OPEN) + pl.duration(microseconds=slot * step_us), _bad=bad
        )
        .sort("symbol", "trade_date", "at", nulls_last=True)
    )
    first_bad = {f"_bad_{c}": pl.col(c).filter(pl.col("_bad")).first() for c in _OHLCV}
    bars = minutes.group_by("symbol", "trade_date", "bar_start", maintain_order=True).agg(
        pl.col("open").first(),
        pl.col("high").max(),
        pl.col("low").min(),
        pl.col("close").last(),
        pl.col("volume").sum(),
        pl.col("_bad").any(),
        **first_bad,
    )
    if now is not None:
        over = pl.col("bar_start") + step <= now.astimezone(dt.UTC)  # any aware `now`
        bars = bars.filter(pl.col("bar_start").is_null() | over)
    return bars.with_columns(
        pl.when(pl.col("_bad")).then(pl.col(f"_bad_{c}")).otherwise(pl.col(c)).alias(c)
        for c in _OHLCV
    ).select(pl.col(c).cast(t) for c, t in INTRADAY_BARS.items())


def _bars(raw: pl.DataFrame, sessions: list[dt.date]) -> pl.DataFrame:
    """Strings (maybe with thousands separators) to numbers, the text of any that is none kept
    in `raw`; rows of other sessions dropped (their runs get them). Undated and off-session
    rows stay: validation quarantines them as they came."""

    frame = raw.select(
        "symbol",
        trade_date=pl.col("trade_date").str.strip_chars().str.to_date("%Y%m%d", strict=False),
        **{c: parse_number(c, pl.Float64) for c in ("open", "high", "low", "close")},
        # Straight to an integer, not through a float: a fractional volume is no volume.
        volume=number_text("volume").cast(pl.Int64, strict=False),
        source=pl.lit(NAME),
    )
    frame = with_evidence(frame, raw, ["trade_date", *PRICE_COLUMNS, "volume"])
    return served(frame, MARKET, sessions)


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _number(value: Any) -> float | None:
    try:
        return float(str(value).replace(",", "").strip())
    except ValueError:
        return None


def _integer(value: Any) -> int | None:
    number = _number(value)
    return None if number is None else int(number)


def _clock(hhmmss: Any) -> dt.time | None:
    try:
        return dt.datetime.strptime(str(hhmmss).strip().zfill(6), "%H%M%S").time()
    except ValueError:
        return None


def _date(row: dict) -> dt.date | None:
    try:
        return dt.datetime.strptime(str(row.get("stck_bsop_date", "")).strip(), "%Y%m%d").date()
    except ValueError:
        return None


def _book_time(hhmmss: Any, now: dt.datetime | None = None) -> dt.datetime:
    """aspr_acpt_hour is the book's time of day in Seoul: today's, or yesterday's if that would
    lie in the future (a book read just after midnight)."""
    now = now or dt.datetime.now(dt.UTC)
    try:
        clock = dt.datetime.strptime(str(hhmmss).strip(), "%H%M%S").time()
    except ValueError:
        return now
    local = dt.datetime.combine(now.astimezone(KST).date(), clock, KST)
    if local > now + dt.timedelta(minutes=5):
        local -= dt.timedelta(days=1)
    return local.astimezone(dt.UTC)


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
