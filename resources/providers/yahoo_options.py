"""Yahoo Finance option chains (providers.md 5.1): `GET /v7/finance/options/{symbol}` lists the
expirations; each expiration within OPTION_HORIZON_DAYS (90) days of the quote date is then
fetched with `?date=<epoch>`. The options API wants a session cookie and its crumb: fetched once
per client (`GET /`, then /v1/test/getcrumb), renewed once when Yahoo refuses them, and then
`ProviderDown` (a consent wall or a blocked address), so `yahoo,synthetic` moves on. yahoo.py's
YahooSource serves them through this mixin; see its docstring for what the values mean.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from urllib.parse import quote as url_quote

import polars as pl

from checks.schemas import OPTION_CHAIN_VENDOR

from .errors import ProviderDown, ProviderError, Unauthorized
from .http import ProviderHttp
from .values import date_of

PROVIDER = "yahoo"
OPTION_HORIZON_DAYS = 90
# Yahoo answers clients without a browser-like agent with 429s.
USER_AGENT = "Mozilla/5.0 (compatible; marketpipe/0.1)"
COOKIE_ENDPOINT = "/"  # any answer of the API host sets Yahoo's session cookie
CRUMB_ENDPOINT = "/v1/test/getcrumb"
CRUMB_REFUSALS = ("Invalid Crumb", "Invalid Cookie")  # 401 descriptions a fresh crumb can cure
# The vendor columns of CONTRACT section 5's option_chains (derived columns come later).
OPTION_CHAIN = OPTION_CHAIN_VENDOR

log = logging.getLogger(__name__)


class InvalidCrumb(Unauthorized):
    """Yahoo refused the session's cookie or crumb: fetch both again once, then give up."""


class _NoCrumb(Exception):
    def __init__(self, detail: str, *, retryable: bool):
        super().__init__(detail)
        self.retryable = retryable


def _cookie_header(response) -> str:
    """`name=value` of every cookie the answer sets, as a Cookie header. Read from the raw
    headers: Yahoo scopes its cookies to .yahoo.com, which a cookie jar would refuse for any
    other host (a local test server)."""
    pairs = (line.split(";", 1)[0].strip() for line in response.headers.get_list("set-cookie"))
    return "; ".join(pair for pair in pairs if "=" in pair)


def _looks_like_crumb(text: str) -> bool:
    # An HTML page, a JSON error or "Too Many Requests" is no crumb; crumbs are one short word.
    return 0 < len(text) <= 64 and not any(c in text for c in ' <>{}\n"')


class YahooOptions:
    """Option chains for YahooSource, over its `_http()` and `_result()` (yahoo.py)."""

    _session: tuple[str, str] | None = None  # the cookie and its crumb, once per client
    # YahooSource's, which this class is mixed into: the HTTP client and its envelope reader.
    _http: Callable[[], ProviderHttp]
    _result: Callable[..., Awaitable[dict]]
    _session_lock: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None

    async def option_chain(self, symbol: str, quote_date: dt.date) -> pl.DataFrame:
        """Every contract of every expiration within 90 days of `quote_date`, in OPTION_CHAIN.

        Unknown symbol or no listed options: `NotFound`.
        """
        async with self._http() as http:
            listing = await self._options_page(http, symbol, None)
            expirations = [int(e) for e in listing.get("expirationDates") or []]
            chosen = [
                e
                for e in expirations
                if 0 <= (date_of(e, dt.UTC) - quote_date).days <= OPTION_HORIZON_DAYS
            ]
            pages = await asyncio.gather(*(self._options_page(http, symbol, e) for e in chosen))
        columns: dict[str, list] = {name: [] for name in OPTION_CHAIN}
        for expiry, page in zip(chosen, pages, strict=True):
            underlying = page.get("underlyingSymbol") or symbol
            price = (page.get("quote") or {}).get("regularMarketPrice")
            chains = [c for c in page.get("options") or [] if isinstance(c, dict)]
            if not chains:
                log.warning("yahoo options %s: no contracts for expiry %s", symbol, expiry)
            for chain in chains:
                for kind, key in (("call", "calls"), ("put", "puts")):
                    for contract in chain.get(key) or []:
                        expires = contract.get("expiration") or chain.get("expirationDate")
                        values = {
                            "quote_date": quote_date,
                            "underlying": underlying,
                            "contract_symbol": contract.get("contractSymbol"),
                            "expiration": date_of(expires or expiry, dt.UTC),
                            "strike": contract.get("strike"),
                            "option_type": kind,
                            "bid": contract.get("bid"),
                            "ask": contract.get("ask"),
                            "last_price": contract.get("lastPrice"),
                            "volume": contract.get("volume"),
                            "open_interest": contract.get("openInterest"),
                            "implied_volatility": contract.get("impliedVolatility"),
                            "underlying_price": price,
                        }
                        for name, value in values.items():
                            columns[name].append(value)
        return pl.DataFrame(
            {
                name: pl.Series(columns[name], dtype=dtype, strict=False)
                for name, dtype in OPTION_CHAIN.items()
            }
        )

    async def _options_page(self, http: ProviderHttp, symbol: str, expiry: int | None) -> dict:
        endpoint = f"/v7/finance/options/{url_quote(symbol, safe='')}"
        params = {} if expiry is None else {"date": expiry}
        empty = "no option chain for this symbol"
        session = await self._cookie_and_crumb(http, endpoint, symbol)
        try:
            return await self._options_result(http, endpoint, symbol, params, empty, session)
        except InvalidCrumb:
            # Crumbs expire with their cookie: one fresh pair, then Yahoo means it.
            session = await self._cookie_and_crumb(http, endpoint, symbol, stale=session)
        try:
            return await self._options_result(http, endpoint, symbol, params, empty, session)
        except InvalidCrumb as refused:
            raise ProviderDown(
                f"{refused}, again with a fresh cookie and crumb from {CRUMB_ENDPOINT}: Yahoo "
                "is refusing this client (a consent wall or a blocked address); a chain such "
                "as MARKETPIPE_US_SOURCE=yahoo,synthetic moves on to its next source"
            ) from refused

    async def _options_result(self, http, endpoint, symbol, params, empty, session) -> dict:
        cookie, crumb = session
        params = params | {"crumb": crumb}
        return await self._result(http, endpoint, symbol, params, "optionChain", empty, cookie)

    # Cookie and crumb ---------------------------------------------------------------------
    def _lock(self) -> asyncio.Lock:
        """One lock per event loop (a source may serve several asyncio.run calls), so pages
        fetched at once wait for one handshake instead of each making their own."""
        loop = asyncio.get_running_loop()
        if self._session_lock is None or self._session_lock[0] is not loop:
            self._session_lock = (loop, asyncio.Lock())
        return self._session_lock[1]

    async def _cookie_and_crumb(
        self,
        http: ProviderHttp,
        endpoint: str,
        symbol: str,
        stale: tuple[str, str] | None = None,
    ) -> tuple[str, str]:
        """The client's (cookie, crumb); fetched again only when `stale`, the pair a request
        was refused with, is still the one kept (a concurrent page may have renewed it)."""
        async with self._lock():
            if self._session is None or self._session == stale:
                self._session = None
                self._session = await self._handshake(http, endpoint, symbol)
            return self._session

    async def _handshake(self, http: ProviderHttp, endpoint: str, symbol: str) -> tuple[str, str]:
        """A cookie, then its crumb; outages retried on the HTTP layer's schedule."""
        policy, detail = http.retry, ""
        for attempt in range(1, policy.attempts + 1):
            try:
                return await self._handshake_once(http, symbol)
            except ProviderError as error:  # the connection failed
                detail = error.detail
            except _NoCrumb as refused:
                detail = str(refused)
                if not refused.retryable:
                    raise ProviderDown(
                        f"{PROVIDER} {endpoint} [{symbol}]: no crumb: {detail}; Yahoo is "
                        "refusing this client (a consent wall or a blocked address)"
                    ) from None
            if attempt < policy.attempts:
                await asyncio.sleep(min(policy.maximum, policy.initial * 2 ** (attempt - 1)))
        raise ProviderDown(
            f"{PROVIDER} {endpoint} [{symbol}]: no crumb: {detail} "
            f"(gave up after {policy.attempts} attempts)"
        )

    async def _handshake_once(self, http: ProviderHttp, symbol: str) -> tuple[str, str]:
        headers = {"User-Agent": USER_AGENT}

        def failed(step: str, response) -> _NoCrumb:
            status, text = response.status_code, response.text
            busy = status == 429 or status >= 500 or text.lstrip().startswith("Too Many")
            body = http.redact(" ".join(text.split())[:300])
            return _NoCrumb(f"GET {step} answered HTTP {status}: {body!r}", retryable=busy)

        first = await http.send("GET", COOKIE_ENDPOINT, symbol=symbol, headers=headers)
        cookie = _cookie_header(first)
        if not cookie:
            raise failed(f"{COOKIE_ENDPOINT} (no cookie set)", first)
        answer = await http.send(
            "GET", CRUMB_ENDPOINT, symbol=symbol, headers=headers | {"Cookie": cookie}
        )
        crumb = answer.text.strip()
        if answer.status_code != 200 or not _looks_like_crumb(crumb):
            raise failed(CRUMB_ENDPOINT, answer)
        return cookie, crumb
