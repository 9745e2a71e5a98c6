"""A local Twelve Data /time_series (providers.md 5.3), daily and 15-minute bars.

    GET /time_series?symbol=AAPL&interval=1day|15min&start_date=&end_date=&order=ASC|DESC
                    &outputsize=30&apikey=...
    -> 200 {"meta": {"symbol", "interval", "currency", "exchange_timezone": "America/New_York",
             "exchange", "mic_code", "type"},
            "values": [{"datetime": "2025-09-23", "open": "439.88000", ..., "volume": "83211500"}],
            "status": "ok"}

Every number is a string with five decimals; newest first unless order=ASC (`ignore_order=True`
always answers newest first); outputsize defaults to 30, at most 5000, the newest bars of the
range kept. Intraday `datetime` is "YYYY-MM-DD HH:MM:SS" in New York time, 26 bars of 15 minutes
from 09:30 per session. start_date/end_date bound the range inclusively.

Errors come in HTTP 200 bodies (`errors_with_status=True` sends the matching status instead):
a wrong apikey -> {"code": 401, ...}, an unknown symbol (`unknown`) -> {"code": 404, "message":
"**symbol** not found: X. ..."}, a range without bars -> {"code": 400, "message": "No data is
available on the specified dates. ..."}. Defects to inject: `missing` {(symbol, day)} (a partial
history), `overrides` {(symbol, day): {field: text or None}} (None removes the key),
`thousands_separators` ("83,211,500"), and the FakeProvider faults (429 with or without
Retry-After, 429 in a 200 body, 5xx, slow or malformed replies). Data is deterministic per
(symbol, day); `truth()` and `intraday_truth()` give it in the datasets' schemas.
"""

from __future__ import annotations

import datetime as dt
import random
import zoneinfo

import polars as pl

from checks.markets import all_sessions
from checks.schemas import DAILY_PRICES

from .server import FakeProvider, Reply, Request

API_KEY = "td-fake-apikey-51c0de"
NEW_YORK = zoneinfo.ZoneInfo("America/New_York")
INTRADAY_STARTS = tuple(
    (dt.datetime(2000, 1, 1, 9, 30) + dt.timedelta(minutes=15 * i)).time() for i in range(26)
)
RATE_LIMIT_BODY = {
    "code": 429,
    "message": "You have run out of API credits for the current minute. 9 API credits were used, "
    "with the current limit being 8. Wait for the next minute or consider switching to a higher "
    "tier plan at https://twelvedata.com/pricing",
    "status": "error",
}


def _draws(*key) -> random.Random:
    return random.Random("|".join(map(str, key)))


def _error(code: int, message: str) -> dict:
    return {"code": code, "message": message, "status": "error"}


def _parse(text: str) -> dt.datetime | None:
    for fmt in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d"):
        try:
            return dt.datetime.strptime(text, fmt)
        except ValueError:
            pass
    return None


class FakeTwelveData(FakeProvider):
    def __init__(
        self,
        api_key: str = API_KEY,
        *,
        unknown: set[str] = frozenset(),
        missing: set[tuple[str, dt.date]] = frozenset(),
        overrides: dict[tuple[str, dt.date], dict[str, str | None]] | None = None,
        thousands_separators: bool = False,
        ignore_order: bool = False,
        errors_with_status: bool = False,
        through: dt.date | None = None,
    ):
        super().__init__()
        self.api_key, self.unknown, self.missing = api_key, set(unknown), set(missing)
        self.overrides = overrides or {}
        self.thousands_separators, self.ignore_order = thousands_separators, ignore_order
        self.errors_with_status = errors_with_status
        self.through = through or dt.datetime.now(NEW_YORK).date()
        self._sessions = frozenset(all_sessions("us"))

    # The data -----------------------------------------------------------------------------
    def _ohlcv(self, r: random.Random, base: float, spread: float) -> dict[str, str]:
        open_, close = (base * (1 + spread * (r.random() - 0.5)) for _ in range(2))
        high = max(open_, close) * (1 + spread * 0.25 * r.random())
        low = min(open_, close) * (1 - spread * 0.25 * r.random())
        volume = r.randint(100_000, 90_000_000)
        prices = dict(zip(("open", "high", "low", "close"), (open_, high, low, close), strict=True))
        return {
            **{k: f"{v:.5f}" for k, v in prices.items()},
            "volume": f"{volume:,}" if self.thousands_separators else str(volume),
        }

    def _base(self, symbol: str) -> float:
        return _draws(symbol).uniform(8, 400)

    def clean_daily_value(self, symbol: str, day: dt.date) -> dict[str, str]:
        """The bar as the vendor means it, before `overrides`."""
        bar = self._ohlcv(_draws(symbol, day), self._base(symbol), 0.04)
        return {"datetime": day.isoformat(), **bar}

    def daily_value(self, symbol: str, day: dt.date) -> dict[str, str]:
        value = self.clean_daily_value(symbol, day)
        for key, text in self.overrides.get((symbol, day), {}).items():
            if text is None:
                value.pop(key, None)
            else:
                value[key] = text
        return value

    def intraday_values(self, symbol: str, day: dt.date) -> list[dict[str, str]]:
        base = self._base(symbol)
        return [
            {
                "datetime": f"{day.isoformat()} {start:%H:%M:%S}",
                **self._ohlcv(_draws(symbol, day, start), base, 0.01),
            }
            for start in INTRADAY_STARTS
        ]

    def _served(self, symbol: str, day: dt.date) -> bool:
        return day in self._sessions and day <= self.through and (symbol, day) not in self.missing

    def truth(self, symbols, sessions) -> pl.DataFrame:
        rows = []
        for day in sorted(sessions):
            for symbol in sorted(symbols):
                if symbol in self.unknown or not self._served(symbol, day):
                    continue
                v = self.clean_daily_value(symbol, day)
                rows.append(
                    {
                        "symbol": symbol,
                        "trade_date": day,
                        **{k: float(v[k]) for k in ("open", "high", "low", "close")},
                        "volume": int(v["volume"].replace(",", "")),
                        "source": "twelvedata",
                    }
                )
        return pl.DataFrame(rows, schema=DAILY_PRICES)

    def intraday_truth(self, symbol: str, day: dt.date) -> pl.DataFrame:
        rows = [
            {
                "symbol": symbol,
                "bar_start": dt.datetime.strptime(v["datetime"], "%Y-%m-%d %H:%M:%S")
                .replace(tzinfo=NEW_YORK)
                .astimezone(dt.UTC),
                **{k: float(v[k]) for k in ("open", "high", "low", "close")},
                "volume": int(v["volume"].replace(",", "")),
            }
            for v in self.intraday_values(symbol, day)
        ]
        return pl.DataFrame(rows).with_columns(pl.col("bar_start").dt.convert_time_zone("UTC"))

    # The server ---------------------------------------------------------------------------
    def _fail(self, code: int, message: str) -> Reply:
        return Reply(code if self.errors_with_status else 200, _error(code, message))

    def handle(self, request: Request) -> Reply:
        q = request.query
        if request.path != "/time_series":
            return self._fail(404, f"Endpoint {request.path} not found")
        if q.get("apikey") != self.api_key:
            return self._fail(
                401,
                "**apikey** parameter is incorrect or not specified. You can get your free API "
                "key instantly following this link: https://twelvedata.com/pricing. If you "
                "believe that everything is correct, you can contact us at "
                "https://twelvedata.com/contact/customer",
            )
        symbol, interval = q.get("symbol", ""), q.get("interval", "")
        if not symbol or interval not in ("1day", "15min"):
            return self._fail(400, "**symbol** and **interval** (1day or 15min here) are required")
        if symbol in self.unknown:
            return self._fail(
                404,
                f"**symbol** not found: {symbol}. Please specify it correctly according to API "
                "Documentation.",
            )
        start = _parse(q.get("start_date", "")) or dt.datetime(1990, 1, 1)
        end = _parse(q.get("end_date", "")) or dt.datetime(2100, 1, 1)
        days = sorted(
            d for d in self._sessions if start.date() <= d <= end.date() and self._served(symbol, d)
        )
        if interval == "1day":
            values = [self.daily_value(symbol, d) for d in days]
        else:
            values = [
                v
                for d in days
                for v in self.intraday_values(symbol, d)
                if start <= dt.datetime.strptime(v["datetime"], "%Y-%m-%d %H:%M:%S") <= end
            ]
        if not values:
            return self._fail(
                400,
                "No data is available on the specified dates. Try setting different start/end "
                "dates.",
            )
        outputsize = min(int(q.get("outputsize") or 30), 5000)
        values = values[-outputsize:]
        if q.get("order", "DESC").upper() != "ASC" or self.ignore_order:
            values = values[::-1]
        meta = {
            "symbol": symbol,
            "interval": interval,
            "currency": "USD",
            "exchange_timezone": "America/New_York",
            "exchange": "NASDAQ",
            "mic_code": "XNGS",
            "type": "Common Stock",
        }
        return Reply(200, {"meta": meta, "values": values, "status": "ok"})
