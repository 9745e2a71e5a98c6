"""KIS (Korea Investment & Securities) Open API as the `kis` source of the krx market.

Payloads follow providers.md 5.4. Each call has three steps: build the query (tr_id, FID_*
parameters and the KIS headers), fetch the raw payload through the shared HTTP layer (limiter,
retries, circuit breaker), transform it into the standard frame.

Daily bars come from inquire-daily-itemchartprice, at most ~100 rows per call, newest first: a
range is read backwards, one earlier date window per call, until it is covered. Access tokens
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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import polars as pl

from resources.sources.base import ConfigurationError

from .base import (
    OneMarketDailyBars,
    credential_id,
    fetch_each,
    no_listing,
    rate_limit,
    required_env,
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
from .values import number_text, parse_number

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

ORDER_BOOK = pl.Schema(
    {
        "symbol": pl.String,
        "snapshot_ts": pl.Datetime("us", "UTC"),
        "level": pl.Int64,
        "bid_price": pl.Float64,
        "ask_price": pl.Float64,
        "bid_size": pl.Int64,
        "ask_size": pl.Int64,
    }
)
_RAW_FIELDS = {  # daily_prices column -> output2 key
    "trade_date": "stck_bsop_date",
    "open": "stck_oprc",
    "high": "stck_hgpr",
    "low": "stck_lwpr",
    "close": "stck_clpr",
    "volume": "acml_vol",
}
_RAW = pl.Schema({"symbol": pl.String, **{c: pl.String for c in _RAW_FIELDS}})

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
    message = str(payload.get("msg1") or payload.get("error_description") or "").strip()[:200]
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
    ):
        self._app_key, self._app_secret = app_key, app_secret
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

    async def _daily(self, sessions: list[dt.date], symbols: Sequence[str]) -> pl.DataFrame:
        """Bars of `symbols` on `sessions` as KIS sent them (bad rows included)."""
        first, last = sessions[0], sessions[-1]
        symbols = list(dict.fromkeys(symbols))
        async with self._client() as client:
            await client.tokens.token()  # one before fanning out; a bad key fails once, here
            try:
                frames, missing = await fetch_each(
                    symbols,
                    lambda symbol: client.daily_rows(symbol, first, last),
                    concurrency=self.concurrency,
                )
            except BaseException:
                await _cancel_siblings()
                raise
        self.missing = missing
        if missing:
            logger.warning("kis: %d symbol(s) unknown to KIS: %s", len(missing), sorted(missing))
        raw = pl.concat(frames) if frames else pl.DataFrame(schema=_RAW)
        return _bars(raw, sessions)


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
            if token not in self.http.redact.secrets:
                self.http.redact.secrets.append(token)  # a bearer token is a credential too
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
            page = payload.get("output2")
            if not isinstance(page, list) or not all(isinstance(r, dict) for r in page):
                raise self.http.schema_error(
                    DAILY_PATH, symbol, "the answer has no 'output2' list of rows"
                )
            # An empty window comes back as one row of empty strings: not a bar.
            page = [r for r in page if any(str(v).strip() for v in r.values())]
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


def _bars(raw: pl.DataFrame, sessions: list[dt.date]) -> pl.DataFrame:
    """Strings (maybe with thousands separators) to numbers; rows off the sessions dropped.
    Undated rows stay: validation quarantines them as they came."""

    frame = raw.select(
        "symbol",
        trade_date=pl.col("trade_date").str.strip_chars().str.to_date("%Y%m%d", strict=False),
        **{c: parse_number(c, pl.Float64) for c in ("open", "high", "low", "close")},
        # Straight to an integer, not through a float: a fractional volume is no volume.
        volume=number_text("volume").cast(pl.Int64, strict=False),
        source=pl.lit(NAME),
    )
    return frame.filter(pl.col("trade_date").is_null() | pl.col("trade_date").is_in(sessions))


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
