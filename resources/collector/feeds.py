"""Where trades come from: a feed opens a connection (a websocket, or the synthetic local stream),
names its subscribe messages and parses its frames (formats.py)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
from typing import Protocol, TypedDict
from urllib.parse import quote

import httpx
import websockets

from checks.markets import MARKETS, all_sessions, session_bounds
from resources.providers.base import required_env
from resources.providers.http import DEADLINE_VARIABLE, Redactor, deadline_from_env
from resources.providers.values import SEOUL

from .formats import (
    FINNHUB,
    KIS,
    SYNTHETIC,
    Frame,
    Occurrences,
    finnhub_subscribe,
    kis_subscribe,
    parse_finnhub,
    parse_kis,
)

DEFAULT_FINNHUB_WS_URL = "wss://ws.finnhub.io"
DEFAULT_KIS_BASE_URL = "https://openapi.koreainvestment.com:9443"
DEFAULT_KIS_WS_URL = "ws://ops.koreainvestment.com:21000"
APPROVAL_PATH = "/oauth2/Approval"


# Dead connections are found by websocket pings (answered by the peer's library); frames are
# at most a few MB even for a batched feed.
class _WsOptions(TypedDict):
    ping_interval: float
    ping_timeout: float
    max_size: int


_WS_OPTIONS = _WsOptions(ping_interval=20.0, ping_timeout=20.0, max_size=2**24)


class Connection(Protocol):
    async def send(self, message: str) -> None: ...
    async def close(self) -> None: ...
    def __aiter__(self): ...


class Feed(Protocol):
    source: str
    symbols: list[str]
    redact: Redactor

    async def open(self) -> Connection: ...
    def subscriptions(self) -> list[str]: ...
    def parse(self, text: str, received: int) -> Frame: ...


class FinnhubFeed:
    """wss://ws.finnhub.io?token=<FINNHUB_API_KEY>; one subscribe message per symbol."""

    source = FINNHUB

    def __init__(self, token: str, symbols: list[str], ws_url: str = DEFAULT_FINNHUB_WS_URL):
        self.symbols = symbols
        join = "&" if "?" in ws_url else "?"
        self._url = f"{ws_url}{join}token={quote(token, safe='')}"
        self.redact = Redactor([token])
        self._seen = Occurrences()

    async def open(self) -> Connection:
        self._seen = Occurrences()  # equal trades are counted per connection (formats.py)
        return await websockets.connect(self._url, **_WS_OPTIONS)

    def subscriptions(self) -> list[str]:
        return finnhub_subscribe(self.symbols)

    def parse(self, text: str, received: int) -> Frame:
        return parse_finnhub(text, received, seen=self._seen)


class KisFeed:
    """KIS H0STCNT0 trades: an approval key from POST /oauth2/Approval (asked again on every
    connection, so a rejected key heals itself), then one subscribe message per symbol."""

    source = KIS

    def __init__(
        self, app_key: str, app_secret: str, symbols: list[str], base_url: str, ws_url: str
    ):
        self.symbols, self.base_url, self.ws_url = symbols, base_url.rstrip("/"), ws_url
        self._app_key, self._app_secret = app_key, app_secret
        self._approval: str | None = None
        self.redact = Redactor([app_key, app_secret])
        self._seen = Occurrences()

    async def _approval_key(self) -> str:
        """POST the approval request and read the whole answer within the deadline every
        provider request has (MARKETPIPE_HTTP_DEADLINE_SECONDS): a server that trickles its
        answer must not hold the collector; a miss is a ConnectionError, so it reconnects."""
        body = {"grant_type": "client_credentials", "appkey": self._app_key}
        body["secretkey"] = self._app_secret
        deadline = deadline_from_env()
        where = f"kis {APPROVAL_PATH}"
        try:
            async with asyncio.timeout(deadline), httpx.AsyncClient(timeout=deadline) as client:
                response = await client.post(f"{self.base_url}{APPROVAL_PATH}", json=body)
        except TimeoutError:
            raise ConnectionError(
                f"{where}: no complete answer within the {deadline:g} s deadline "
                f"({DEADLINE_VARIABLE}); check KIS_BASE_URL or raise the deadline"
            ) from None
        except httpx.HTTPError as exc:
            detail = self.redact.excerpt(f"{type(exc).__name__}: {exc}", 300)
            raise ConnectionError(f"{where}: {detail}; check KIS_BASE_URL") from None
        if response.status_code != 200:
            raise ConnectionError(
                f"{where}: HTTP {response.status_code}: "
                f"{self.redact.excerpt(response.text, 300)}; check KIS_APP_KEY, KIS_APP_SECRET "
                "and KIS_BASE_URL"
            )
        try:
            key = response.json().get("approval_key")
        except (ValueError, AttributeError):
            key = None
        if not key:
            raise ConnectionError(
                f"{where}: no approval_key in the answer "
                f"{self.redact.excerpt(response.text, 300)!r}; check KIS_BASE_URL"
            )
        self.redact = Redactor([self._app_key, self._app_secret, key])
        return str(key)

    async def open(self) -> Connection:
        self._approval = await self._approval_key()
        self._seen = Occurrences()  # equal trades are counted per connection (formats.py)
        return await websockets.connect(self.ws_url, **_WS_OPTIONS)

    def subscriptions(self) -> list[str]:
        assert self._approval is not None
        return kis_subscribe(self._approval, self.symbols)

    def parse(self, text: str, received: int) -> Frame:
        return parse_kis(text, received, dt.datetime.now(SEOUL).date(), self._seen)


class SyntheticFeed:
    """A deterministic local stream in Finnhub's format: the latest session that has begun, trade
    n stamped at open + n * step (wrapping at the close), prices a seeded walk per symbol. Every
    connection starts again from trade 0, like a server replaying its history, so a restarted
    collector stores nothing twice."""

    source = SYNTHETIC

    def __init__(self, market: str, symbols: list[str], *, seed: int = 0, rate: float = 1000.0):
        self.market, self.symbols, self.seed, self.rate = market, symbols, seed, rate
        self.redact = Redactor([])
        self._seen = Occurrences()

    async def open(self) -> Connection:
        self._seen = Occurrences()  # equal trades are counted per connection (formats.py)
        now = dt.datetime.now(dt.UTC)
        today = now.astimezone(dt.UTC).date()
        started = [d for d in all_sessions(self.market) if d <= today]
        day = next(d for d in reversed(started) if session_bounds(self.market, d)[0] <= now)
        return _SyntheticConnection(self, *session_bounds(self.market, day))

    def subscriptions(self) -> list[str]:
        return []

    def parse(self, text: str, received: int) -> Frame:
        return parse_finnhub(text, received, SYNTHETIC, self._seen)


class _SyntheticConnection:
    STEP_MS = 37  # ~630k trades per US session before the stamps wrap
    FRAMES_PER_SECOND = 20

    def __init__(self, feed: SyntheticFeed, opens: dt.datetime, closes: dt.datetime):
        self.feed, self.closed = feed, False
        self.opens_ms = int(opens.timestamp() * 1000)
        self.length_ms = int((closes - opens).total_seconds() * 1000)
        self.decimals = MARKETS[feed.market].price_decimals

    async def send(self, message: str) -> None:
        pass

    async def close(self) -> None:
        self.closed = True

    async def __aiter__(self):
        rng = random.Random(self.feed.seed)
        prices = {s: 50.0 + 450.0 * rng.random() for s in self.feed.symbols}
        per_frame = max(1, int(self.feed.rate / self.FRAMES_PER_SECOND))
        n = 0
        while not self.closed:
            data = []
            for _ in range(per_frame):
                symbol = rng.choice(self.feed.symbols)
                prices[symbol] = max(0.01, prices[symbol] * (1 + rng.gauss(0, 0.0005)))
                ts = self.opens_ms + (n * self.STEP_MS) % self.length_ms
                price = round(prices[symbol], self.decimals)
                data.append({"s": symbol, "p": price, "t": ts, "v": rng.randint(1, 500)})
                n += 1
            yield json.dumps({"type": "trade", "data": data})
            await asyncio.sleep(per_frame / self.feed.rate)


def feed_from_env(source: str, market: str, symbols: list[str], *, seed: int, rate: float) -> Feed:
    """The feed named by --source, configured from the provider variables (CONTRACT section 4)."""
    import os

    if source == FINNHUB:
        token = required_env("FINNHUB_API_KEY", FINNHUB)
        url = os.environ.get("FINNHUB_WS_URL") or DEFAULT_FINNHUB_WS_URL
        return FinnhubFeed(token, symbols, url)
    if source == KIS:
        return KisFeed(
            required_env("KIS_APP_KEY", KIS),
            required_env("KIS_APP_SECRET", KIS),
            symbols,
            os.environ.get("KIS_BASE_URL") or DEFAULT_KIS_BASE_URL,
            os.environ.get("KIS_WS_URL") or DEFAULT_KIS_WS_URL,
        )
    return SyntheticFeed(market, symbols, seed=seed, rate=rate)
