"""A KIS Open API server on 127.0.0.1 speaking the documented format (providers.md 5.4).

Tokens: `POST /oauth2/tokenP` issues tokens with an expiry and refuses a second one within
`token_interval` with the real 403 EGW00133 body; `expire_tokens()` makes data calls answer
EGW00123. Quotations: daily bars (newest first, `page_rows` per call, `tr_cont` M/D, numbers as
strings, optionally with thousands separators), current price and the 10-level order book, and
1-minute bars: today's chart (inquire-time-itemchartprice, 30 per call, up to `clock`) and an
earlier day's (inquire-time-dailychartprice, 120 per call, nothing older than
`minute_retention_days`), both newest first, the bars at or before FID_INPUT_HOUR_1. A session's
minutes run from its open to ten minutes before its close (continuous trading), plus the closing
auction's bar stamped at the close.

Prices are a pure function of (symbol, date): integer won from a seeded hash, so a test can ask
`truth()` what any run must have stored. Defects: `drop(symbol, day)` removes a session's bar (a
partial day), `bad[(symbol, day)] = kind` breaks one and `bad_minutes[(symbol, day, "HHMMSS")]`
one minute bar (`minutes()` and `minute_truth()` say what was served). Unknown symbols get KIS's
"no data" answer. Faults (`faults.add`, any path) use the bodies below: RATE_LIMIT in a 500 or a
200, TOKEN_EXPIRED, MALFORMED, NO_OUTPUT (missing keys), and any status, Retry-After header or
delay.
"""

from __future__ import annotations

import datetime as dt
import random
import secrets
import threading
import time
from bisect import bisect_left, bisect_right
from collections.abc import Iterable
from zoneinfo import ZoneInfo

import polars as pl

from checks.markets import all_sessions, is_session, session_bounds

from .server import FakeProvider, Reply, Request

KST = ZoneInfo("Asia/Seoul")
TOKEN = "/oauth2/tokenP"
DAILY = "/uapi/domestic-stock/v1/quotations/inquire-daily-itemchartprice"
PRICE = "/uapi/domestic-stock/v1/quotations/inquire-price"
BOOK = "/uapi/domestic-stock/v1/quotations/inquire-asking-price-exp-ccn"
MINUTE_TODAY = "/uapi/domestic-stock/v1/quotations/inquire-time-itemchartprice"
MINUTE_DAY = "/uapi/domestic-stock/v1/quotations/inquire-time-dailychartprice"
TR_IDS = {
    DAILY: "FHKST03010100",
    PRICE: "FHKST01010100",
    BOOK: "FHKST01010200",
    MINUTE_TODAY: "FHKST03010200",
    MINUTE_DAY: "FHKST03010230",
}
MINUTE_PAGE_ROWS = {MINUTE_TODAY: 30, MINUTE_DAY: 120}
AUCTION = dt.timedelta(minutes=10)  # the closing call auction: no minute bars, one print

OK = {"rt_cd": "0", "msg_cd": "MCA00000", "msg1": "정상처리 되었습니다."}
RATE_LIMIT = {"rt_cd": "1", "msg_cd": "EGW00201", "msg1": "초당 거래건수를 초과하였습니다."}
TOKEN_EXPIRED = {"rt_cd": "1", "msg_cd": "EGW00123", "msg1": "기간이 만료된 token 입니다."}
TOKEN_INVALID = {"rt_cd": "1", "msg_cd": "EGW00121", "msg1": "유효하지 않은 token 입니다."}
TOKEN_LIMIT = {
    "error_code": "EGW00133",
    "error_description": "접근토큰 발급 잠시 후 다시 시도하세요(1분당 1회)",
}
BAD_APPKEY = {"error_code": "EGW00103", "error_description": "유효하지 않은 AppKey입니다."}
BAD_APPSECRET = {"error_code": "EGW00105", "error_description": "유효하지 않은 AppSecret입니다."}
NO_DATA = {"rt_cd": "7", "msg_cd": "KIOK0560", "msg1": "조회할 자료가 없습니다."}
NO_SERVICE = {"rt_cd": "1", "msg_cd": "OPSQ0002", "msg1": "없는 서비스 코드 입니다"}
NO_OUTPUT = dict(OK)  # a 200 that lacks output1/output2: schema drift
MALFORMED = b'{"rt_cd":"0","msg_cd":"MCA00000","output2":[{"stck_bsop_date":"2024'
BAD_KINDS = ("high_below_low", "zero_close", "blank_close")


def tick(price: int) -> int:
    """KRX price tick (호가 단위) for a price in won."""
    for bound, step in ((2_000, 1), (5_000, 5), (20_000, 10), (50_000, 50), (200_000, 100)):
        if price < bound:
            return step
    return 500 if price < 500_000 else 1_000


def bar(symbol: str, day: dt.date) -> dict[str, int]:
    """The clean bar of (symbol, day): whole won, high >= open/close >= low, volume > 0."""
    base = 1_000 + random.Random(f"kis:{symbol}").randrange(199_000)
    rng = random.Random(f"kis:{symbol}:{day.isoformat()}")
    step = tick(base)
    open_ = round(base * rng.uniform(0.9, 1.1) / step) * step
    close = round(base * rng.uniform(0.9, 1.1) / step) * step
    high = max(open_, close) + step * rng.randrange(0, 20)
    low = max(step, min(open_, close) - step * rng.randrange(0, 20))
    volume = rng.randrange(1_000, 5_000_000)
    return {"open": open_, "high": high, "low": low, "close": close, "volume": volume}


def broken(values: dict[str, int | None], kind: str | None) -> dict[str, int | None]:
    """A bar with the defect `kind` (one of BAD_KINDS) applied; None leaves it clean."""
    values = dict(values)
    if kind == "high_below_low":
        values["high"] = values["low"] - tick(values["low"])
    elif kind == "zero_close":
        values["close"] = 0
    elif kind == "blank_close":
        values["close"] = None
    return values


def minute_stamps(day: dt.date) -> list[dt.datetime]:
    """The session's minute bars in Seoul time: open to the auction, then the close itself."""
    opens, closes = (t.astimezone(KST) for t in session_bounds("krx", day))
    count = int((closes - AUCTION - opens) / dt.timedelta(minutes=1))
    return [opens + dt.timedelta(minutes=i) for i in range(count)] + [closes]


def minute_bars(symbol: str, day: dt.date) -> list[dict[str, int]]:
    """The clean minute bars of (symbol, day): a walk in whole ticks from the day's open."""
    rng = random.Random(f"kis-minutes:{symbol}:{day.isoformat()}")
    price = bar(symbol, day)["open"]
    step = tick(price)
    bars = []
    for _ in minute_stamps(day):
        open_ = price
        price = max(step, price + step * rng.randint(-3, 3))
        high = max(open_, price) + step * rng.randrange(0, 3)
        low = max(step, min(open_, price) - step * rng.randrange(0, 3))
        volume = rng.randrange(0, 20_000)
        bars.append({"open": open_, "high": high, "low": low, "close": price, "volume": volume})
    return bars


class FakeKis(FakeProvider):
    def __init__(
        self,
        app_key: str,
        app_secret: str,
        *,
        symbols: Iterable[str] | None = None,
        latency: tuple[float, float] = (0.0, 0.0),
        token_interval: float = 60.0,
        expires_in: float = 86_400.0,
        thousands: bool = False,
        page_rows: int = 100,
        tr_cont: bool = True,
        minute_retention_days: int = 365,
        clock: dt.datetime | None = None,
    ):
        super().__init__()
        self.app_key, self.app_secret = app_key, app_secret
        self.symbols = None if symbols is None else set(symbols)  # None: any 6-digit code
        self.latency = latency
        self.token_interval, self.expires_in = token_interval, expires_in
        self.thousands, self.page_rows, self.tr_cont = thousands, page_rows, tr_cont
        self.dropped: set[tuple[str, dt.date]] = set()
        self.bad: dict[tuple[str, dt.date], str] = {}
        self.bad_minutes: dict[tuple[str, dt.date, str], str] = {}  # HHMMSS in Seoul
        self.minute_retention_days = minute_retention_days
        self.clock = clock  # the server's "now" (aware); None: the real one
        self.book_levels: dict[str, int] = {}  # symbol -> levels quoted (others "0")
        self.tokens: dict[str, float] = {}  # token -> expiry (epoch seconds)
        self.issued: list[float] = []  # monotonic times of issued tokens
        self.refused = 0  # EGW00133 answers
        self.last_issue: float | None = None
        self._token_lock = threading.Lock()
        self._slow: list[list] = []  # [path, replies left, extra seconds]

    # Test controls --------------------------------------------------------------------------
    def expire_tokens(self) -> None:
        with self._token_lock:
            self.tokens = dict.fromkeys(self.tokens, 0.0)

    def note_issue(self) -> None:
        """Another process just got a token for this key."""
        with self._token_lock:
            self.last_issue = time.monotonic()

    def slow_down(self, seconds: float, *, times: int = 1, path: str = DAILY) -> None:
        """The next `times` genuine answers on `path` arrive `seconds` late (a slow server,
        not an error: the body is the right one)."""
        with self._token_lock:
            self._slow.append([path, times, seconds])

    def drop(self, symbol: str, day: dt.date) -> None:
        self.dropped.add((symbol, day))

    def knows(self, symbol: str) -> bool:
        if self.symbols is not None:
            return symbol in self.symbols
        return len(symbol) == 6 and symbol.isdigit()

    def days(self, symbol: str, first: dt.date, last: dt.date) -> list[dt.date]:
        """Sessions in [first, last] up to today with a bar for the symbol, oldest first."""
        sessions = all_sessions("krx")
        window = sessions[bisect_left(sessions, first) : bisect_right(sessions, last)]
        today = dt.date.today()
        return [d for d in window if d <= today and (symbol, d) not in self.dropped]

    def row(self, symbol: str, day: dt.date) -> dict[str, int | None]:
        """The bar as served, defects included (numbers; None for a blank field)."""
        return broken(bar(symbol, day), self.bad.get((symbol, day)))

    def now(self) -> dt.datetime:
        return (self.clock or dt.datetime.now(dt.UTC)).astimezone(KST)

    def minutes(self, symbol: str, day: dt.date) -> list[tuple[dt.datetime, dict]]:
        """(Seoul time, bar as served) of every minute the server has for (symbol, day), oldest
        first: none for an unknown symbol, a dropped day, a non-session or a day past the
        retention; today's up to the clock's minute (the last one still trading)."""
        now = self.now()
        oldest = now.date() - dt.timedelta(days=self.minute_retention_days)
        if (
            not self.knows(symbol)
            or (symbol, day) in self.dropped
            or not is_session("krx", day)
            or not oldest <= day <= now.date()
        ):
            return []
        served = []
        for stamp, values in zip(minute_stamps(day), minute_bars(symbol, day), strict=True):
            if stamp > now:
                break
            kind = self.bad_minutes.get((symbol, day, stamp.strftime("%H%M%S")))
            served.append((stamp, broken(values, kind)))
        return served

    def minute_truth(self, symbols: Iterable[str], sessions: Iterable[dt.date]) -> pl.DataFrame:
        """Every minute bar served for the sessions, `minute` in UTC (numbers, None if blank)."""
        rows = [
            {"symbol": s, "trade_date": d, "minute": stamp.astimezone(dt.UTC), **values}
            for s in symbols
            for d in sorted(set(sessions))
            for stamp, values in self.minutes(s, d)
        ]
        schema = {"symbol": pl.String, "trade_date": pl.Date, "minute": pl.Datetime("us", "UTC")}
        schema |= {c: pl.Float64 for c in ("open", "high", "low", "close")} | {"volume": pl.Int64}
        return pl.DataFrame(rows, schema=schema, orient="row")

    def truth(self, symbols: Iterable[str], sessions: Iterable[dt.date]) -> pl.DataFrame:
        """Every row any correct client must end with (stored or quarantined), as numbers."""
        sessions = sorted(sessions)
        rows = [
            {"symbol": s, "trade_date": d, **self.row(s, d)}
            for s in symbols
            if self.knows(s)
            for d in self.days(s, sessions[0], sessions[-1])
            if d in set(sessions)
        ]
        schema = {"symbol": pl.String, "trade_date": pl.Date}
        schema |= {c: pl.Float64 for c in ("open", "high", "low", "close")} | {"volume": pl.Int64}
        return pl.DataFrame(rows, schema=schema, orient="row")

    # Serving --------------------------------------------------------------------------------
    def handle(self, request: Request) -> Reply:
        reply = self._answer(request)
        with self._token_lock:
            for slow in self._slow:
                if slow[0] == request.path and slow[1] > 0:
                    slow[1] -= 1
                    reply.delay += slow[2]
                    break
        return reply

    def _answer(self, request: Request) -> Reply:
        if request.path == TOKEN and request.method == "POST":
            return self._token(request)
        if request.path in TR_IDS and request.method == "GET":
            refusal = self._check_headers(request)
            if refusal is not None:
                return refusal
            symbol = request.query.get("FID_INPUT_ISCD", "")
            if request.query.get("FID_COND_MRKT_DIV_CODE") != "J":
                return Reply(500, {"rt_cd": "1", "msg_cd": "OPSQ2001", "msg1": "시장구분 오류"})
            if not self.knows(symbol):
                return Reply(200, NO_DATA)
            if request.path == DAILY:
                return self._daily(request, symbol)
            if request.path in MINUTE_PAGE_ROWS:
                return self._minutes(request, symbol)
            if request.path == PRICE:
                return Reply(200, {**OK, "output": self._price(symbol)})
            return Reply(200, {**OK, **self._book(symbol)})
        return Reply(404, {"error": "not found"})

    def _token(self, request: Request) -> Reply:
        body = request.body if isinstance(request.body, dict) else {}
        if body.get("grant_type") != "client_credentials":
            return Reply(400, {"error_code": "EGW00002", "error_description": "grant_type"})
        if body.get("appkey") != self.app_key:
            return Reply(403, BAD_APPKEY)
        if body.get("appsecret") != self.app_secret:
            return Reply(403, BAD_APPSECRET)
        with self._token_lock:
            now = time.monotonic()
            if self.last_issue is not None and now - self.last_issue < self.token_interval:
                self.refused += 1
                return Reply(403, TOKEN_LIMIT)
            self.last_issue = now
            self.issued.append(now)
            token = "eyJ0eXAiOiJKV1Qi." + secrets.token_urlsafe(24)
            expires = time.time() + self.expires_in
            self.tokens[token] = expires
        stamp = dt.datetime.fromtimestamp(expires, KST).strftime("%Y-%m-%d %H:%M:%S")
        return Reply(
            200,
            {
                "access_token": token,
                "access_token_token_expired": stamp,
                "token_type": "Bearer",
                "expires_in": int(self.expires_in),
            },
        )

    def _check_headers(self, request: Request) -> Reply | None:
        headers = request.headers
        if headers.get("appkey") != self.app_key:
            return Reply(403, {"rt_cd": "1", **_kis(BAD_APPKEY)})
        if headers.get("appsecret") != self.app_secret:
            return Reply(403, {"rt_cd": "1", **_kis(BAD_APPSECRET)})
        if headers.get("tr_id") != TR_IDS[request.path] or headers.get("custtype") != "P":
            return Reply(500, NO_SERVICE)
        scheme, _, token = headers.get("authorization", "").partition(" ")
        with self._token_lock:
            expires = self.tokens.get(token) if scheme == "Bearer" else None
        if expires is None:
            return Reply(500, TOKEN_INVALID)
        if expires <= time.time():
            return Reply(500, TOKEN_EXPIRED)
        return None

    def _fmt(self, value: int | None) -> str:
        if value is None:
            return ""
        return f"{value:,}" if self.thousands else str(value)

    def _daily(self, request: Request, symbol: str) -> Reply:
        query = request.query
        try:
            first = dt.datetime.strptime(query["FID_INPUT_DATE_1"], "%Y%m%d").date()
            last = dt.datetime.strptime(query["FID_INPUT_DATE_2"], "%Y%m%d").date()
        except (KeyError, ValueError):
            return Reply(500, {"rt_cd": "1", "msg_cd": "OPSQ2002", "msg1": "조회일자 오류"})
        if query.get("FID_PERIOD_DIV_CODE") != "D" or query.get("FID_ORG_ADJ_PRC") not in (
            "0",
            "1",
        ):
            return Reply(500, {"rt_cd": "1", "msg_cd": "OPSQ2003", "msg1": "입력값 오류"})
        days = self.days(symbol, first, last)[::-1]
        page, more = days[: self.page_rows], len(days) > self.page_rows
        rows = []
        for day in page:
            values = self.row(symbol, day)
            close = values["close"]
            rows.append(
                {
                    "stck_bsop_date": day.strftime("%Y%m%d"),
                    "stck_clpr": self._fmt(close),
                    "stck_oprc": self._fmt(values["open"]),
                    "stck_hgpr": self._fmt(values["high"]),
                    "stck_lwpr": self._fmt(values["low"]),
                    "acml_vol": self._fmt(values["volume"]),
                    "acml_tr_pbmn": self._fmt((close or 0) * values["volume"]),
                    "flng_cls_code": "00",
                    "prtt_rate": "0.00",
                    "mod_yn": "N",
                    "prdy_vrss_sign": "3",
                    "prdy_vrss": "0",
                    "revl_issu_reas": "",
                }
            )
        summary = {
            "stck_prpr": rows[0]["stck_clpr"] if rows else "0",
            "acml_vol": rows[0]["acml_vol"] if rows else "0",
            "hts_kor_isnm": f"가짜종목{symbol}",
            "stck_shrn_iscd": symbol,
        }
        headers = {"tr_cont": "M" if more else "D"} if self.tr_cont else {}
        return Reply(200, {**OK, "output1": summary, "output2": rows}, headers)

    def _minutes(self, request: Request, symbol: str) -> Reply:
        query = request.query
        try:
            cursor = dt.datetime.strptime(query["FID_INPUT_HOUR_1"], "%H%M%S").time()
            if request.path == MINUTE_TODAY:
                day = self.now().date()
            else:
                day = dt.datetime.strptime(query["FID_INPUT_DATE_1"], "%Y%m%d").date()
        except (KeyError, ValueError):
            return Reply(500, {"rt_cd": "1", "msg_cd": "OPSQ2002", "msg1": "조회일자 오류"})
        if query.get("FID_PW_DATA_INCU_YN") not in ("Y", "N"):
            return Reply(500, {"rt_cd": "1", "msg_cd": "OPSQ2003", "msg1": "입력값 오류"})
        # A cursor in the future answers up to now (minutes() stops at the clock).
        served = [(t, v) for t, v in self.minutes(symbol, day) if t.time() <= cursor]
        page = served[::-1][: MINUTE_PAGE_ROWS[request.path]]
        rows = [
            {
                "stck_bsop_date": day.strftime("%Y%m%d"),
                "stck_cntg_hour": stamp.strftime("%H%M%S"),
                "stck_prpr": self._fmt(values["close"]),
                "stck_oprc": self._fmt(values["open"]),
                "stck_hgpr": self._fmt(values["high"]),
                "stck_lwpr": self._fmt(values["low"]),
                "cntg_vol": self._fmt(values["volume"]),
                "acml_tr_pbmn": self._fmt((values["close"] or 0) * values["volume"]),
            }
            for stamp, values in page
        ]
        summary = {
            "prdy_vrss": "0",
            "prdy_vrss_sign": "3",
            "prdy_ctrt": "0.00",
            "stck_prdy_clpr": rows[0]["stck_prpr"] if rows else "0",
            "acml_vol": self._fmt(sum(v["volume"] for _, v in served)),
            "hts_kor_isnm": f"가짜종목{symbol}",
            "stck_prpr": rows[0]["stck_prpr"] if rows else "0",
        }
        return Reply(200, {**OK, "output1": summary, "output2": rows})

    def _latest(self, symbol: str) -> tuple[dict[str, int | None], dict[str, int | None]]:
        today = dt.date.today()
        recent = self.days(symbol, today - dt.timedelta(days=20), today)
        return self.row(symbol, recent[-1]), self.row(symbol, recent[-2])

    def _price(self, symbol: str) -> dict[str, str]:
        now, before = self._latest(symbol)
        close, previous = now["close"] or 0, before["close"] or 1
        change = close - previous
        return {
            "iscd_stat_cls_code": "55",
            "rprs_mrkt_kor_name": "KOSPI200",
            "bstp_kor_isnm": "전기·전자",
            "stck_prpr": self._fmt(close),
            "prdy_vrss": str(abs(change)),
            "prdy_vrss_sign": "2" if change > 0 else "5" if change < 0 else "3",
            "prdy_ctrt": f"{100 * change / previous:.2f}",
            "acml_tr_pbmn": self._fmt(close * now["volume"]),
            "acml_vol": self._fmt(now["volume"]),
            "stck_oprc": self._fmt(now["open"]),
            "stck_hgpr": self._fmt(now["high"]),
            "stck_lwpr": self._fmt(now["low"]),
            "stck_mxpr": self._fmt(previous * 13 // 10),
            "stck_llam": self._fmt(previous * 7 // 10),
            "stck_sdpr": self._fmt(previous),
            "wghn_avrg_stck_prc": f"{(now['high'] + now['low'] + close) / 3:.2f}",
            "stck_shrn_iscd": symbol,
            "aspr_unit": str(tick(close)),
            "temp_stop_yn": "N",
        }

    def _book(self, symbol: str) -> dict[str, dict[str, str]]:
        """Ask i = close + i ticks, bid i = close - (i - 1) ticks; sizes from a seeded draw."""
        now, _ = self._latest(symbol)
        close = now["close"] or 1_000
        step = tick(close)
        quoted = self.book_levels.get(symbol, 10)
        rng = random.Random(f"kis-book:{symbol}")
        book: dict[str, str] = {"aspr_acpt_hour": dt.datetime.now(KST).strftime("%H%M%S")}
        for i in range(1, 11):
            live = i <= quoted
            book[f"askp{i}"] = str(close + i * step) if live else "0"
            book[f"bidp{i}"] = str(close - (i - 1) * step) if live else "0"
            book[f"askp_rsqn{i}"] = str(rng.randrange(1, 50_000)) if live else "0"
            book[f"bidp_rsqn{i}"] = str(rng.randrange(1, 50_000)) if live else "0"
            book[f"askp_rsqn_icdc{i}"] = "0"
            book[f"bidp_rsqn_icdc{i}"] = "0"
        book["total_askp_rsqn"] = str(sum(int(book[f"askp_rsqn{i}"]) for i in range(1, 11)))
        book["total_bidp_rsqn"] = str(sum(int(book[f"bidp_rsqn{i}"]) for i in range(1, 11)))
        book["new_mkop_cls_code"] = "20"
        expected = {
            "antc_mkop_cls_code": "112",
            "stck_prpr": str(close),
            "stck_oprc": str(now["open"]),
            "stck_hgpr": str(now["high"]),
            "stck_lwpr": str(now["low"]),
            "antc_cnpr": "0",
            "antc_vol": "0",
            "stck_shrn_iscd": symbol,
        }
        return {"output1": book, "output2": expected}

    # Inspection -----------------------------------------------------------------------------
    def calls(self, path: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.path == path]


def _kis(body: dict[str, str]) -> dict[str, str]:
    """A token-endpoint error body in the quotation envelope's keys."""
    return {"msg_cd": body["error_code"], "msg1": body["error_description"]}
