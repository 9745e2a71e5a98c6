"""FakeYahoo: Yahoo Finance's chart and options APIs (providers.md 5.1) over real HTTP.

Endpoints, in Yahoo's shapes:

- `GET /v8/finance/chart/{symbol}?period1=&period2=&interval=1d&events=div,splits` ->
  `{"chart":{"result":[{"meta":{..},"timestamp":[..],"events":{..},"indicators":{"quote":[{
  "open","high","low","close","volume"}],"adjclose":[{"adjclose"}]}}],"error":null}}`, one bar
  per XNYS session whose open (09:30 New York) lies in [period1, period2), stamped at that open.
  Unknown symbol: HTTP 404 `{"chart":{"result":null,"error":{"code":"Not Found",...}}}`.
- `GET /v7/finance/options/{symbol}[?date=<epoch>]` -> `{"optionChain":{"result":[{
  "underlyingSymbol","expirationDates","strikes","quote","options":[{"expirationDate","calls",
  "puts"}]}],"error":null}}`; without `date` the nearest expiration's contracts. Expirations are
  every Friday for 18 weeks from `options_date` plus one LEAPS a year out, as epochs of 00:00 UTC.
  Unknown symbol: `{"optionChain":{"result":[],"error":null}}`. Needs Yahoo's session: a cookie
  and the crumb issued for it as `crumb=`; otherwise HTTP 401 `{"finance":{"result":null,"error":
  {"code":"Unauthorized","description":"Invalid Crumb"}}}`.
- `GET /` (any answer of the host) sets the session cookie `A3` (HTTP 404, as the API host's root
  answers); `GET /v1/test/getcrumb` with that cookie -> the crumb as plain text, without it HTTP
  401 "Invalid Cookie".

Session modes: `invalidate_crumbs()` forgets every crumb issued so far (they expire, so the
next options request is refused until a new one is fetched); `refuse_crumbs = True` refuses every
options request whatever it carries (Yahoo turning a client away). `issued` counts crumbs served.

The market's "now" is `market_time` (epoch seconds, None = long after every session). When it
falls inside a session, that session's bar is the live one: stamped at `market_time` (which is
also `meta.regularMarketTime`) with values so far (`live_bar`), or its final values once
`market_time` is past 16:00; later sessions have no bar yet.

Deterministic data: `bar(symbol, day)`, `truth()`, `chain_truth()`. Faults besides
`faults.add(...)`: `too_many_requests()` (429 with the text body), `outage()` (the "Will be right
back" page, for a number of requests or for good with `down = True`), `server_errors()`,
`slow()`, `malformed()`; data defects: `unknown`, `nulls[(symbol, day)] = {"close", ...}`,
`splits[symbol] = [(day, numerator, denominator)]`, `dividends[symbol] = [(day, amount)]`,
`option_overrides[contract_symbol] = {key: value}` (Yahoo keys of one contract; None removes the
key, as Yahoo leaves keys out), and every contract whose hash says so (about one in four) has no
`"volume"` key.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import secrets
from zoneinfo import ZoneInfo

import polars as pl

from checks.markets import all_sessions
from checks.schemas import DAILY_PRICES
from resources.providers.yahoo import OPTION_CHAIN

from .finnhub import hashed_bar
from .server import FakeProvider, Reply, Request

NEW_YORK = ZoneInfo("America/New_York")
NOT_FOUND = {
    "chart": {
        "result": None,
        "error": {"code": "Not Found", "description": "No data found, symbol may be delisted"},
    }
}
OUTAGE_PAGE = (
    b'<!DOCTYPE html>\n<html lang="en-us"><head><meta charset="utf-8"><title>Yahoo</title>'
    b"</head><body><div><h1>Will be right back...</h1><p>Thank you for your patience.</p>"
    b"<p>Our engineers are working quickly to resolve the issue.</p></div></body></html>"
)
HORIZON_WEEKS = 18
COOKIE_NAME = "A3"
CRUMB_PATH = "/v1/test/getcrumb"


def _unauthorized(description: str) -> dict:
    return {"finance": {"result": None, "error": {"code": "Unauthorized",
                                                  "description": description}}}  # fmt: skip


def _cookies(request: Request) -> dict[str, str]:
    pairs = (p.strip().split("=", 1) for p in request.headers.get("cookie", "").split(";"))
    return {p[0]: p[1] for p in pairs if len(p) == 2}


def open_epoch(day: dt.date) -> int:
    return int(dt.datetime.combine(day, dt.time(9, 30), NEW_YORK).timestamp())


def close_epoch(day: dt.date) -> int:
    return int(dt.datetime.combine(day, dt.time(16, 0), NEW_YORK).timestamp())


def utc_epoch(day: dt.date) -> int:
    return int(dt.datetime.combine(day, dt.time(0, 0), dt.UTC).timestamp())


def _units(*key) -> list[float]:
    digest = hashlib.sha256("|".join(map(str, key)).encode()).digest()
    return [int.from_bytes(digest[i : i + 4], "big") / 2**32 for i in range(0, 32, 4)]


def expirations(quote_date: dt.date) -> list[dt.date]:
    """Fridays from the quote date on for HORIZON_WEEKS weeks, and a LEAPS a year out."""
    friday = quote_date + dt.timedelta(days=(4 - quote_date.weekday()) % 7)
    weekly = [friday + dt.timedelta(weeks=n) for n in range(HORIZON_WEEKS)]
    return [*weekly, friday + dt.timedelta(weeks=52)]


class FakeYahoo(FakeProvider):
    def __init__(self, *, options_date: dt.date | None = None):
        super().__init__()
        self.unknown: set[str] = set()
        self.nulls: dict[tuple[str, dt.date], set[str]] = {}
        self.splits: dict[str, list[tuple[dt.date, int, int]]] = {}
        self.dividends: dict[str, list[tuple[dt.date, float]]] = {}
        self.option_overrides: dict[str, dict] = {}
        self.market_time: int | None = None
        self.down = False
        self.options_date = options_date or dt.datetime.now(NEW_YORK).date()
        self._delays: list[float] = []
        self.crumbs: dict[str, str] = {}  # valid crumb -> the cookie it was issued for
        self.issued = 0
        self.refuse_crumbs = False

    # The truth ----------------------------------------------------------------------------
    def bar(self, symbol: str, day: dt.date) -> dict[str, float | int]:
        return hashed_bar(symbol, day, "yahoo")

    def live_bar(self, symbol: str, day: dt.date) -> dict[str, float | int]:
        """The session's bar so far: other prices, a fraction of the volume."""
        live = hashed_bar(symbol, day, "yahoo-live")
        return {**live, "volume": self.bar(symbol, day)["volume"] // 3}

    def truth(self, symbols, sessions) -> pl.DataFrame:
        rows = [
            {"symbol": s, "trade_date": d, **self.bar(s, d), "source": "yahoo"}
            for s in symbols
            if s not in self.unknown
            for d in sessions
        ]
        return pl.DataFrame(rows, schema=DAILY_PRICES).sort("symbol", "trade_date")

    def underlying_price(self, symbol: str) -> float:
        return float(self.bar(symbol, self.options_date)["close"])

    def strikes(self, symbol: str) -> list[float]:
        price = self.underlying_price(symbol)
        step = 1.0 if price < 50 else 5.0
        centre = round(price / step) * step
        return [centre + k * step for k in range(-4, 5) if centre + k * step > 0]

    def contract(self, symbol: str, expiry: dt.date, strike: float, kind: str) -> dict:
        """One contract in Yahoo's keys; about one in four has no "volume" (no trades)."""
        price = self.underlying_price(symbol)
        u = _units("option", symbol, self.options_date, expiry, strike, kind)
        days = max((expiry - self.options_date).days, 1)
        iv = 0.15 + 2.0 * u[0]
        intrinsic = max(0.0, price - strike) if kind == "C" else max(0.0, strike - price)
        value = intrinsic + 0.4 * price * iv * math.sqrt(days / 365) + 0.05
        contract = {
            "contractSymbol": f"{symbol}{expiry:%y%m%d}{kind}{round(strike * 1000):08d}",
            "strike": strike,
            "currency": "USD",
            "lastPrice": round(value, 2),
            "change": 0.0,
            "percentChange": 0.0,
            "volume": int(1 + 500 * u[1]),
            "openInterest": int(5000 * u[2]),
            "bid": round(value * 0.97, 2),
            "ask": round(value * 1.03 + 0.01, 2),
            "contractSize": "REGULAR",
            "expiration": utc_epoch(expiry),
            "lastTradeDate": open_epoch(self.options_date) + 3600,
            "impliedVolatility": iv,
            "inTheMoney": intrinsic > 0,
        }
        if u[3] < 0.25:
            del contract["volume"]
        for key, value in self.option_overrides.get(contract["contractSymbol"], {}).items():
            if value is None:
                contract.pop(key, None)
            else:
                contract[key] = value
        return contract

    def chain_truth(self, symbol: str, horizon_days: int = 90) -> pl.DataFrame:
        """What a client must make of every expiration within `horizon_days` of options_date."""
        rows = []
        for expiry in expirations(self.options_date):
            if not 0 <= (expiry - self.options_date).days <= horizon_days:
                continue
            for kind, name in (("C", "call"), ("P", "put")):
                for strike in self.strikes(symbol):
                    c = self.contract(symbol, expiry, strike, kind)
                    rows.append(
                        {
                            "quote_date": self.options_date,
                            "underlying": symbol,
                            "contract_symbol": c["contractSymbol"],
                            "expiration": expiry,
                            "strike": c.get("strike"),
                            "option_type": name,
                            "bid": c.get("bid"),
                            "ask": c.get("ask"),
                            "last_price": c.get("lastPrice"),
                            "volume": c.get("volume"),
                            "open_interest": c.get("openInterest"),
                            "implied_volatility": c.get("impliedVolatility"),
                            "underlying_price": self.underlying_price(symbol),
                        }
                    )
        return pl.DataFrame(rows, schema=OPTION_CHAIN)

    # Faults -------------------------------------------------------------------------------
    def too_many_requests(self, *, times: int = 1, retry_after: float | None = None, path=None):
        headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
        self.faults.add(429, b"Too Many Requests", headers=headers, path=path, times=times)

    def outage(self, *, times: int = 1, status: int = 503, path=None):
        self.faults.add(status, OUTAGE_PAGE, path=path, times=times)

    def server_errors(self, times: int, *, status: int = 500, path=None):
        body = {"finance": {"result": None, "error": {"code": "internal-error"}}}
        self.faults.add(status, body, path=path, times=times)

    def invalidate_crumbs(self):
        with self._lock:
            self.crumbs.clear()

    def slow(self, seconds: float, *, times: int = 1):
        """The next `times` answers are the correct ones, `seconds` late."""
        with self._lock:
            self._delays.extend([seconds] * times)

    def malformed(self, *, times: int = 1, path=None):
        self.faults.add(
            200, b'{"chart":{"result":[{"meta":{"currency":"USD"', path=path, times=times
        )

    # Serving ------------------------------------------------------------------------------
    def handle(self, request: Request) -> Reply:
        if self.down:
            return Reply(503, OUTAGE_PAGE)
        reply = self._answer(request)
        with self._lock:
            if self._delays:
                reply.delay += self._delays.pop(0)
        return reply

    def _answer(self, request: Request) -> Reply:
        parts = request.path.strip("/").split("/")
        if parts[:3] == ["v8", "finance", "chart"] and len(parts) == 4:
            return self._chart(parts[3], request.query)
        if parts[:3] == ["v7", "finance", "options"] and len(parts) == 4:
            cookie = _cookies(request).get(COOKIE_NAME)
            with self._lock:
                valid = cookie is not None and self.crumbs.get(request.query.get("crumb")) == cookie
            if self.refuse_crumbs or not valid:
                return Reply(401, _unauthorized("Invalid Crumb"))
            return self._options(parts[3], request.query)
        if request.path == CRUMB_PATH:
            return self._crumb(request)
        if request.path == "/":
            value = "d=" + secrets.token_urlsafe(24)
            cookie = f"{COOKIE_NAME}={value}; Path=/; Domain=.yahoo.com; Secure; HttpOnly"
            return Reply(404, b"<html><body>Not Found</body></html>", {"Set-Cookie": cookie})
        return Reply(404, {"finance": {"result": None, "error": {"code": "Not Found"}}})

    def _crumb(self, request: Request) -> Reply:
        cookie = _cookies(request).get(COOKIE_NAME)
        if not cookie:
            return Reply(401, _unauthorized("Invalid Cookie"))
        crumb = secrets.token_urlsafe(8)
        with self._lock:
            self.crumbs[crumb] = cookie
            self.issued += 1
        return Reply(200, crumb.encode())  # plain text, as Yahoo sends it

    def _chart(self, symbol: str, query: dict[str, str]) -> Reply:
        try:
            first, last = int(query["period1"]), int(query["period2"])
        except (KeyError, ValueError):
            return Reply(400, _chart_error("Bad Request", "period1 and period2 are required"))
        if query.get("interval") != "1d":
            return Reply(400, _chart_error("Bad Request", "Invalid interval"))
        if symbol in self.unknown:
            return Reply(404, NOT_FOUND)
        now = self.market_time
        today = None if now is None else dt.datetime.fromtimestamp(now, NEW_YORK).date()
        stamps, bars, days = [], [], []
        for day in all_sessions("us"):
            if not first <= open_epoch(day) < last or (today is not None and day > today):
                continue
            if day == today:
                if now < open_epoch(day):
                    continue  # pre-market: no bar yet
                stamps.append(now)
                final = now >= close_epoch(day)
                bars.append(self.bar(symbol, day) if final else self.live_bar(symbol, day))
            else:
                stamps.append(open_epoch(day))
                bars.append(self.bar(symbol, day))
            days.append(day)
        last_day = today or (days[-1] if days else None)
        meta = {
            "currency": "USD",
            "symbol": symbol,
            "exchangeName": "NMS",
            "instrumentType": "EQUITY",
            "regularMarketTime": now or (close_epoch(last_day) + 6 if last_day else None),
            "gmtoffset": -18000,
            "timezone": "EST",
            "exchangeTimezoneName": "America/New_York",
            "dataGranularity": "1d",
        }
        if last_day is not None:
            meta["currentTradingPeriod"] = {
                "regular": {
                    "timezone": "EST",
                    "start": open_epoch(last_day),
                    "end": close_epoch(last_day),
                    "gmtoffset": -18000,
                }
            }
        result: dict = {"meta": meta}
        if not stamps:
            result["indicators"] = {"quote": [{}], "adjclose": [{}]}
            return Reply(200, {"chart": {"result": [result], "error": None}})
        quote = {f: [b[f] for b in bars] for f in ("open", "high", "low", "close", "volume")}
        for i, day in enumerate(days):
            for field in self.nulls.get((symbol, day), ()):
                quote[field][i] = None
        result["timestamp"] = stamps
        result["events"] = self._events(symbol, query.get("events", ""), first, last)
        result["indicators"] = {"quote": [quote], "adjclose": [{"adjclose": quote["close"]}]}
        return Reply(200, {"chart": {"result": [result], "error": None}})

    def _events(self, symbol: str, wanted: str, first: int, last: int) -> dict:
        events: dict = {}
        if "div" in wanted:
            events["dividends"] = {
                str(open_epoch(d)): {"amount": amount, "date": open_epoch(d)}
                for d, amount in self.dividends.get(symbol, [])
                if first <= open_epoch(d) < last
            }
        if "split" in wanted:
            events["splits"] = {
                str(open_epoch(d)): {
                    "date": open_epoch(d),
                    "numerator": num,
                    "denominator": den,
                    "splitRatio": f"{num}:{den}",
                }
                for d, num, den in self.splits.get(symbol, [])
                if first <= open_epoch(d) < last
            }
        return {k: v for k, v in events.items() if v}

    def _options(self, symbol: str, query: dict[str, str]) -> Reply:
        if symbol in self.unknown:
            return Reply(200, {"optionChain": {"result": [], "error": None}})
        listed = expirations(self.options_date)
        epochs = [utc_epoch(d) for d in listed]
        if "date" in query:
            wanted = int(query["date"])
            chosen = [d for d in listed if utc_epoch(d) == wanted]
        else:
            chosen = listed[:1]
        price = self.underlying_price(symbol)
        options = [
            {
                "expirationDate": utc_epoch(expiry),
                "hasMiniOptions": False,
                "calls": [self.contract(symbol, expiry, k, "C") for k in self.strikes(symbol)],
                "puts": [self.contract(symbol, expiry, k, "P") for k in self.strikes(symbol)],
            }
            for expiry in chosen
        ]
        result = {
            "underlyingSymbol": symbol,
            "expirationDates": epochs,
            "strikes": self.strikes(symbol),
            "hasMiniOptions": False,
            "quote": {
                "symbol": symbol,
                "quoteType": "EQUITY",
                "currency": "USD",
                "regularMarketPrice": price,
                "bid": round(price - 0.02, 2),
                "ask": round(price + 0.02, 2),
                "exchangeTimezoneName": "America/New_York",
                "marketState": "POSTPOST",
            },
            "options": options,
        }
        return Reply(200, {"optionChain": {"result": [result], "error": None}})


def _chart_error(code: str, description: str) -> dict:
    return {"chart": {"result": None, "error": {"code": code, "description": description}}}
