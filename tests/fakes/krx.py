"""A local KRX Open API (providers.md 5.5): whole-market daily trading by session and board.

    GET /svc/apis/sto/stk_bydd_trd?basDd=YYYYMMDD   (KOSPI)
    GET /svc/apis/sto/ksq_bydd_trd?basDd=YYYYMMDD   (KOSDAQ)
    header AUTH_KEY: <key>
    -> 200 {"OutBlock_1": [{"BAS_DD": "20240102", "ISU_CD": "005930", "ISU_NM": ..., "MKT_NM":
       "KOSPI", "TDD_CLSPRC": "79600", "TDD_OPNPRC": ..., "ACC_TRDVOL": ..., ...}, ...]}

Every value is a string; `thousands_separators=True` writes "79,600". A day that is not an XKRX
session, or a session after `published_through` (KRX publishes a day the next morning), has an
empty OutBlock_1. A wrong AUTH_KEY gets HTTP 401 {"respCode": "401", "respMsg": "Unauthorized
Key"} (an assumption: independent clients only report the 401).

Data is deterministic: each stock has a base price, and each (stock, session) a bar drawn from
a hash of both. Defects to inject:
- `halted`: {(symbol, day)} -> OPN/HG/LW "0", volume "0", close = the previous session's close;
- `missing`: {(symbol, day)} -> the stock is absent that day (a partial day);
- `overrides`: {(symbol, day): {field: text or None}} -> raw fields replaced, None removes the key;
- `faults` (FakeProvider): 429 with or without Retry-After, 5xx, slow or malformed replies.
`truth()` is what the sessions were, in the daily_prices schema (a halted session: a flat bar at
the base price with volume 0).
"""

from __future__ import annotations

import datetime as dt
import random
import zoneinfo

import polars as pl

from checks.markets import all_sessions, previous_session
from checks.schemas import DAILY_PRICES

from .server import FakeProvider, Reply, Request

API_KEY = "krx-fake-auth-key-7f3a9c"
BOARDS = {"/svc/apis/sto/stk_bydd_trd": "KOSPI", "/svc/apis/sto/ksq_bydd_trd": "KOSDAQ"}
# Codes the synthetic source also knows (000010, 000020, ...), so a chain "krx,synthetic" can
# fall back for the same universe.
LISTING = tuple(
    (f"{(i + 1) * 10:06d}", f"테스트종목{i:02d}", "KOSPI" if i < 40 else "KOSDAQ")
    for i in range(60)
)


def _draws(*key) -> random.Random:
    return random.Random("|".join(map(str, key)))


class FakeKrx(FakeProvider):
    def __init__(
        self,
        api_key: str = API_KEY,
        *,
        listing: tuple[tuple[str, str, str], ...] = LISTING,
        thousands_separators: bool = False,
        halted: set[tuple[str, dt.date]] = frozenset(),
        missing: set[tuple[str, dt.date]] = frozenset(),
        overrides: dict[tuple[str, dt.date], dict[str, str | None]] | None = None,
        published_through: dt.date | None = None,
    ):
        super().__init__()
        self.api_key, self.listing = api_key, listing
        self.thousands_separators = thousands_separators
        self.halted, self.missing = set(halted), set(missing)
        self.overrides = overrides or {}
        today = dt.datetime.now(zoneinfo.ZoneInfo("Asia/Seoul")).date()
        self.published_through = published_through or previous_session("krx", today)
        self._sessions = frozenset(all_sessions("krx"))

    # The data -----------------------------------------------------------------------------
    def bar(self, symbol: str, day: dt.date) -> dict:
        """The session as it was: numbers, halted sessions flat at the base price."""
        if (symbol, day) in self.halted:
            before = previous_session("krx", day)
            close = self.bar(symbol, before)["close"]
            return {"open": close, "high": close, "low": close, "close": close, "volume": 0}
        base = _draws(symbol).randint(2_000, 400_000)
        r = _draws(symbol, day)
        open_, close = (round(base * (1 + 0.04 * (r.random() - 0.5))) for _ in range(2))
        high = max(open_, close) + round(base * 0.01 * r.random())
        low = min(open_, close) - round(base * 0.01 * r.random())
        volume = r.randint(10_000, 3_000_000)
        return {"open": open_, "high": high, "low": low, "close": close, "volume": volume}

    def _text(self, value: int | float) -> str:
        return f"{value:,}" if self.thousands_separators else str(value)

    def raw_row(self, symbol: str, name: str, board: str, day: dt.date) -> dict[str, str]:
        b = self.bar(symbol, day)
        halted = (symbol, day) in self.halted
        before = previous_session("krx", day)
        prev_close = self.bar(symbol, before)["close"]
        change = b["close"] - prev_close
        row = {
            "BAS_DD": day.strftime("%Y%m%d"),
            "ISU_CD": symbol,
            "ISU_NM": name,
            "MKT_NM": board,
            "SECT_TP_NM": "중견기업부" if board == "KOSDAQ" else "",
            "TDD_CLSPRC": self._text(b["close"]),
            "CMPPREVDD_PRC": self._text(change),
            "FLUC_RT": f"{100 * change / prev_close:.2f}",
            "TDD_OPNPRC": "0" if halted else self._text(b["open"]),
            "TDD_HGPRC": "0" if halted else self._text(b["high"]),
            "TDD_LWPRC": "0" if halted else self._text(b["low"]),
            "ACC_TRDVOL": self._text(b["volume"]),
            "ACC_TRDVAL": self._text(b["volume"] * b["close"]),
            "MKTCAP": self._text(b["close"] * 50_000_000),
            "LIST_SHRS": self._text(50_000_000),
        }
        for key, value in self.overrides.get((symbol, day), {}).items():
            if value is None:
                row.pop(key, None)
            else:
                row[key] = value
        return row

    def rows(self, board: str, day: dt.date) -> list[dict[str, str]]:
        if day not in self._sessions or day > self.published_through:
            return []
        return [
            self.raw_row(symbol, name, board, day)
            for symbol, name, on in self.listing
            if on == board and (symbol, day) not in self.missing
        ]

    def truth(self, sessions, symbols=None) -> pl.DataFrame:
        symbols = [s for s, _, _ in self.listing] if symbols is None else symbols
        listed = {s for s, _, _ in self.listing}
        rows = [
            {"symbol": s, "trade_date": d, **self.bar(s, d), "source": "krx"}
            for d in sorted(sessions)
            for s in sorted(symbols)
            if s in listed and (s, d) not in self.missing
        ]
        return pl.DataFrame(rows, schema=DAILY_PRICES)

    # The server ---------------------------------------------------------------------------
    def handle(self, request: Request) -> Reply:
        if request.headers.get("auth_key") != self.api_key:
            return Reply(401, {"respMsg": "Unauthorized Key", "respCode": "401"})
        board = BOARDS.get(request.path.removesuffix(".json"))
        if board is None:
            return Reply(404, {"respMsg": "Not Found", "respCode": "404"})
        try:
            day = dt.datetime.strptime(request.query.get("basDd", ""), "%Y%m%d").date()
        except ValueError:
            return Reply(400, {"respMsg": "basDd must be YYYYMMDD", "respCode": "400"})
        return Reply(200, {"OutBlock_1": self.rows(board, day)})
