"""FakeFinnhub: Finnhub's REST API (providers.md 5.2) over real HTTP on 127.0.0.1.

Endpoints, in Finnhub's documented shapes:

- `GET /stock/candle?symbol=&resolution=D&from=&to=` ->
  `{"c":[..],"h":[..],"l":[..],"o":[..],"s":"ok","t":[..],"v":[..]}` with one bar per XNYS
  session whose stamp lies in [from, to], or `{"s":"no_data"}` (unknown symbol, empty range).
  Stamps are 00:00 UTC of the session date (`stamp="utc_midnight"`, Finnhub since mid-2021) or
  09:30 New York (`stamp="ny_open"`, before).
- `GET /quote?symbol=` -> `{"c","d","dp","h","l","o","pc","t"}` of the latest session before
  today; an unknown symbol gets zeros and t=0, as Finnhub answers.
- The key must come in `X-Finnhub-Token` (or `token=`) and equal `api_key`, else HTTP 401
  `{"error":"Invalid API key."}`. Other errors are non-2xx `{"error": "..."}`.

The data is deterministic: `bar(symbol, day)` is derived from a hash of both, and `truth()`
gives the frame a correct client must produce. Faults, besides `faults.add(...)` of the base:
`rate_limited()`, `server_errors()`, `slow()`, `malformed()`; data defects per symbol:
`unknown` (no_data), `nulls[(symbol, day)] = {"c", ...}` (nulls in the arrays) and
`drop_keys[symbol] = {"v", ...}` (arrays missing from the answer).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from zoneinfo import ZoneInfo

import polars as pl

from checks.markets import all_sessions
from checks.schemas import DAILY_PRICES

from .server import FakeProvider, Reply, Request

NEW_YORK = ZoneInfo("America/New_York")
INVALID_KEY = {"error": "Invalid API key."}
LIMIT_REACHED = {"error": "API limit reached. Please try again later. Remaining Limit: 0"}


def hashed_bar(symbol: str, day: dt.date, salt: str = "") -> dict[str, float | int]:
    """A valid OHLCV bar (cents, low <= open, close <= high) that depends only on the key."""
    digest = hashlib.sha256(f"{salt}|{symbol}|{day.isoformat()}".encode()).digest()
    u = [int.from_bytes(digest[i : i + 4], "big") / 2**32 for i in range(0, 24, 4)]
    level = int.from_bytes(hashlib.sha256(f"{salt}|{symbol}".encode()).digest()[:4], "big")
    # A level per symbol and a few percent a day: no day-over-day jump check fires.
    base = (20.0 + 300.0 * level / 2**32) * (1 + 0.06 * (u[0] - 0.5))
    open_ = base * (1 + 0.02 * (u[1] - 0.5))
    close = base * (1 + 0.04 * (u[2] - 0.5))
    high = max(open_, close) * (1 + 0.02 * u[3])
    low = min(open_, close) * (1 - 0.02 * u[4])
    # Rounding is monotone, so the price relationships survive it.
    return {
        "open": round(open_, 2),
        "high": round(high, 2),
        "low": round(low, 2),
        "close": round(close, 2),
        "volume": int(100_000 + 5_000_000 * u[5]),
    }


def stamp_of(day: dt.date, style: str) -> int:
    if style == "utc_midnight":
        return int(dt.datetime.combine(day, dt.time(0, 0), dt.UTC).timestamp())
    return int(dt.datetime.combine(day, dt.time(9, 30), NEW_YORK).timestamp())


class FakeFinnhub(FakeProvider):
    def __init__(self, api_key: str, *, stamp: str = "utc_midnight"):
        super().__init__()
        self.api_key, self.stamp = api_key, stamp
        self.unknown: set[str] = set()
        self.nulls: dict[tuple[str, dt.date], set[str]] = {}
        self.drop_keys: dict[str, set[str]] = {}
        # Hostile values, e.g. {("AAPL", day): {"h": math.inf}}: sent as JSON `Infinity`/`NaN`.
        self.overrides: dict[tuple[str, dt.date], dict[str, float]] = {}
        self._delays: list[float] = []

    # The truth ----------------------------------------------------------------------------
    def bar(self, symbol: str, day: dt.date) -> dict[str, float | int]:
        return hashed_bar(symbol, day, "finnhub")

    def truth(self, symbols, sessions) -> pl.DataFrame:
        rows = [
            {"symbol": s, "trade_date": d, **self.bar(s, d), "source": "finnhub"}
            for s in symbols
            if s not in self.unknown
            for d in sessions
        ]
        return pl.DataFrame(rows, schema=DAILY_PRICES).sort("symbol", "trade_date")

    # Faults -------------------------------------------------------------------------------
    def rate_limited(self, retry_after: float | None = None, *, times: int = 1, path=None):
        headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
        self.faults.add(429, LIMIT_REACHED, headers=headers, path=path, times=times)

    def server_errors(self, times: int, *, status: int = 502, path=None):
        self.faults.add(status, {"error": "Bad gateway"}, path=path, times=times)

    def slow(self, seconds: float, *, times: int = 1):
        """The next `times` answers are the correct ones, `seconds` late."""
        with self._lock:
            self._delays.extend([seconds] * times)

    def malformed(self, *, times: int = 1, path=None):
        self.faults.add(200, b'{"c":[101.5,102.', path=path, times=times)

    # Serving ------------------------------------------------------------------------------
    def handle(self, request: Request) -> Reply:
        reply = self._answer(request)
        with self._lock:
            if self._delays:
                reply.delay += self._delays.pop(0)
        return reply

    def _answer(self, request: Request) -> Reply:
        token = request.headers.get("x-finnhub-token") or request.query.get("token")
        if token != self.api_key:
            return Reply(401, INVALID_KEY)
        if request.path == "/stock/candle":
            return self._candle(request.query)
        if request.path == "/quote":
            return self._quote(request.query)
        return Reply(404, {"error": "Not found"})

    def _candle(self, query: dict[str, str]) -> Reply:
        try:
            symbol, first, last = query["symbol"], int(query["from"]), int(query["to"])
        except (KeyError, ValueError):
            return Reply(422, {"error": "Wrong resolution or missing parameters"})
        if query.get("resolution") != "D":
            return Reply(422, {"error": "Wrong resolution"})
        days = [d for d in all_sessions("us") if first <= stamp_of(d, self.stamp) <= last]
        if symbol in self.unknown or not days:
            return Reply(200, {"s": "no_data"})
        bars = [self.bar(symbol, d) for d in days]
        body = {"s": "ok", "t": [stamp_of(d, self.stamp) for d in days]}
        for key, field in (("o", "open"), ("h", "high"), ("l", "low"), ("c", "close")):
            body[key] = [b[field] for b in bars]
        body["v"] = [b["volume"] for b in bars]
        for i, day in enumerate(days):
            for key in self.nulls.get((symbol, day), ()):
                body[key][i] = None
            for key, value in self.overrides.get((symbol, day), {}).items():
                body[key][i] = value
        for key in self.drop_keys.get(symbol, ()):
            body.pop(key, None)
        return Reply(200, body)

    def _quote(self, query: dict[str, str]) -> Reply:
        symbol = query.get("symbol", "")
        if not symbol or symbol in self.unknown:
            return Reply(200, dict.fromkeys(("c", "d", "dp", "h", "l", "o", "pc", "t"), 0))
        today = dt.datetime.now(NEW_YORK).date()
        past = [d for d in all_sessions("us") if d < today]
        day, before = past[-1], past[-2]
        bar, prev = self.bar(symbol, day), self.bar(symbol, before)
        change = round(bar["close"] - prev["close"], 2)
        return Reply(
            200,
            {
                "c": bar["close"],
                "d": change,
                "dp": round(100 * change / prev["close"], 4),
                "h": bar["high"],
                "l": bar["low"],
                "o": bar["open"],
                "pc": prev["close"],
                "t": int(dt.datetime.combine(day, dt.time(16, 0), NEW_YORK).timestamp()),
            },
        )
