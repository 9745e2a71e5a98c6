"""KRX Open API: whole-market daily bars by session (providers.md 5.5).

`GET {KRX_BASE_URL}/svc/apis/sto/stk_bydd_trd?basDd=YYYYMMDD` (KOSPI) and `.../ksq_bydd_trd`
(KOSDAQ), header `AUTH_KEY`, answer every listed stock of that board on that day in
`OutBlock_1`, every value a string (sometimes with thousands separators). So the source asks once
per session per board, whatever the number of symbols, and filters to the symbols requested.

Halted stocks. KRX reports a session without a trade as TDD_OPNPRC/TDD_HGPRC/TDD_LWPRC = "0",
ACC_TRDVOL = "0" and TDD_CLSPRC = the base price (the last close), which carries on. Stored as
sent, the zeros would fail `positive_prices` and be quarantined although the row is a real session
row, and indicators would see a range down to zero. We store what the session was: no trade, price
unchanged, i.e. open = high = low = close = the base price with volume 0. Every price rule holds
for it, indicators see an unchanged day, and the row stays recognisable in the lake by the
catalogue's own rule "volume == 0 and price unchanged -> halted" (`checks.rulebook.HALTED`, counted
in the daily_prices metadata). Only the exact pattern is rewritten: zeros with a volume, a zero
close, or any other partial zero are left as sent so the price rules quarantine them.

Universe. The daily endpoints do not carry listing dates, so `universe()` lists the latest
published session's stocks with `listing_date` = HISTORY_START, the first session the KRX Open
API serves (it has no data before 2010): the earliest date this source can vouch for. Symbols that
listed later therefore count as missing on earlier sessions in the completeness check; point
MARKETPIPE_KRX_UNIVERSE at a file with real listing dates for long backfills.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import polars as pl

from checks import markets
from checks.schemas import DAILY_PRICES, PRICE_COLUMNS, RAW, UNIVERSE, with_evidence
from resources.sources.base import Dataset, SourceError

from .base import OneKeySource, OneMarketDailyBars, bars_by_date, rate_limit, required_env, run_sync
from .errors import BadRequest, ProviderError, RateLimited, Unauthorized
from .http import ProviderHttp, RetryPolicy
from .values import SEOUL, parse_number

log = logging.getLogger(__name__)

NAME = "krx"
DEFAULT_BASE_URL = "https://data-dbg.krx.co.kr"
BOARDS = {"KOSPI": "/svc/apis/sto/stk_bydd_trd", "KOSDAQ": "/svc/apis/sto/ksq_bydd_trd"}
RATE_LIMIT_VARIABLE = "MARKETPIPE_KRX_RATE_LIMIT"
# KRX documents a daily quota (10,000 calls per key) but no per-second limit; 5/s stays polite and
# still fetches a ten-year backfill (2 boards x 2,500 sessions) in about 17 minutes.
DEFAULT_RATE_LIMIT = "5/s"
HISTORY_START = dt.date(2010, 1, 4)
# A session is published the next morning: the universe walks back this many sessions at most.
UNIVERSE_LOOKBACK = 5
# None: the HTTP layer's default, RetryPolicy.from_env() (MARKETPIPE_RETRY_*_SECONDS).
RETRY: RetryPolicy | None = None
TIMEOUT = 30.0  # a whole board is ~1 MB of JSON

# Vendor field -> daily_prices column.
FIELDS = {
    "ISU_CD": "symbol",
    "BAS_DD": "trade_date",
    "TDD_OPNPRC": "open",
    "TDD_HGPRC": "high",
    "TDD_LWPRC": "low",
    "TDD_CLSPRC": "close",
    "ACC_TRDVOL": "volume",
}


def parse_bars(
    rows: list[dict[str, Any]], day: dt.date, symbols: set[str] | None = None
) -> pl.DataFrame:
    """OutBlock_1 rows -> daily_prices rows (source "krx"), halted rows made flat (see above).

    Absent keys become nulls, so validation quarantines the row instead of it vanishing. Rows
    without an ISU_CD are kept too (quarantined as `required_fields`); with `symbols` the others
    are filtered to those.
    """
    raw = pl.from_dicts(rows, schema=dict.fromkeys(FIELDS, pl.String), strict=False)
    frame = raw.rename(FIELDS).with_columns(
        pl.col("symbol").str.strip_chars(),
        pl.col("trade_date").str.to_date("%Y%m%d", strict=False).fill_null(day),
        *(parse_number(c, pl.Float64) for c in ("open", "high", "low", "close")),
        parse_number("volume", pl.Int64),
    )
    # The text of any number that is none (`abc`, `1.5` shares) is kept for the quarantine.
    frame = with_evidence(frame, raw.rename(FIELDS), [*PRICE_COLUMNS, "volume"])
    if symbols is not None:
        frame = frame.filter(pl.col("symbol").is_in(list(symbols)) | pl.col("symbol").is_null())
    halted = (
        (pl.col("open") == 0)
        & (pl.col("high") == 0)
        & (pl.col("low") == 0)
        & (pl.col("close") > 0)
        & (pl.col("volume") == 0)
    ).fill_null(False)
    frame = frame.with_columns(
        pl.when(halted).then(pl.col("close")).otherwise(pl.col(c)).alias(c)
        for c in ("open", "high", "low")
    )
    evidence = [RAW] if RAW in frame.columns else []
    return frame.with_columns(source=pl.lit(NAME)).select(
        *(pl.col(c).cast(t) for c, t in DAILY_PRICES.items()), *evidence
    )


def _classify(http: ProviderHttp, endpoint: str):
    """KRX answers a refused call with {"respCode": "401", "respMsg": "..."} (any HTTP status)."""

    def classify(payload: Any, response) -> None:
        if not isinstance(payload, dict) or "respCode" not in payload:
            return
        code = str(payload.get("respCode"))
        if code in ("200", "0", "00", "000"):
            return
        detail = http.redact(
            f"respCode {code} (HTTP {response.status_code}): {payload.get('respMsg')}"
        )
        where = (NAME, endpoint, None)
        if code in ("401", "403"):
            raise Unauthorized(*where, f"{detail}; check KRX_API_KEY and the API's approval")
        if code == "429":
            raise RateLimited(*where, detail)
        if code.startswith("5"):
            raise ProviderError(*where, detail)
        raise BadRequest(*where, detail)

    return classify


@dataclass(frozen=True)
# rate and concurrency are computed from the frozen fields (OneKeySource), where other
# sources set the base's plain attributes.
class KrxSource(OneKeySource, OneMarketDailyBars):  # type: ignore[override]
    market: ClassVar[str] = "krx"
    api_key: str = field(repr=False)
    base_url: str = DEFAULT_BASE_URL
    requests: int = 5
    per_seconds: float = 1.0
    retry: RetryPolicy | None = RETRY
    timeout: float = TIMEOUT
    name: str = NAME
    missing: dict[str, str] = field(default_factory=dict, compare=False, repr=False)
    datasets: ClassVar[frozenset[Dataset]] = frozenset({Dataset.DAILY_BARS, Dataset.UNIVERSE})

    async def _board_rows(self, http: ProviderHttp, board: str, day: dt.date) -> list[dict]:
        endpoint = BOARDS[board]
        payload, _ = await http.request_json(
            "GET",
            endpoint,
            symbol=f"basDd={day:%Y%m%d}",  # errors name the session asked for
            classify=_classify(http, endpoint),
            params={"basDd": day.strftime("%Y%m%d")},
            headers={"AUTH_KEY": self.api_key},
        )
        rows = payload.get("OutBlock_1") if isinstance(payload, dict) else None
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            shape = sorted(payload) if isinstance(payload, dict) else type(payload).__name__
            raise http.schema_error(
                endpoint, None, f"basDd={day:%Y%m%d}: expected an OutBlock_1 list, got {shape}"
            )
        return rows

    async def _daily(self, sessions: list[dt.date], symbols: Sequence[str]) -> pl.DataFrame:
        """One request per session and board; every board's rows filtered to `symbols`."""
        wanted = set(symbols)
        async with self._http() as http:
            gate = asyncio.Semaphore(self.requests)

            async def one(board: str, day: dt.date) -> pl.DataFrame:
                async with gate:
                    rows = await self._board_rows(http, board, day)
                frame = parse_bars(rows, day, wanted)
                wrong = frame.filter(pl.col("trade_date") != day)
                if len(wrong):
                    raise http.schema_error(
                        BOARDS[board], None, f"asked for {day}, got BAS_DD {wrong['trade_date'][0]}"
                    )
                return frame

            frames = await asyncio.gather(*(one(b, d) for d in sessions for b in BOARDS))
        bars = bars_by_date(frames)
        # A whole board per session: a symbol in none of them is unknown to KRX on those days.
        found = set(bars["symbol"].drop_nulls())
        span = f"{sessions[0]}..{sessions[-1]}"
        unknown = [s for s in dict.fromkeys(symbols) if s not in found]
        self.record_missing(
            Dataset.DAILY_BARS, {s: f"not listed on KOSPI or KOSDAQ on {span}" for s in unknown}
        )
        return bars

    async def _listing(self, today: dt.date) -> tuple[dt.date | None, list[dict]]:
        recent = [d for d in markets.all_sessions("krx") if d <= today][-UNIVERSE_LOOKBACK:]
        async with self._http() as http:
            for day in reversed(recent):
                boards = await asyncio.gather(*(self._board_rows(http, b, day) for b in BOARDS))
                rows = [row for board in boards for row in board]
                if rows:
                    return day, rows
        return None, []

    def universe(self, market: str, today: dt.date | None = None) -> pl.DataFrame:
        """The latest published session's stocks on both boards (see the module docstring)."""
        self._check_market(market)
        today = today or dt.datetime.now(SEOUL).date()
        day, rows = run_sync(self._listing(today))
        if day is None:
            raise SourceError(
                f"krx: no listing in the last {UNIVERSE_LOOKBACK} sessions up to {today}; "
                "the KRX Open API has published nothing recent (or the key lacks the approval "
                "for stk_bydd_trd / ksq_bydd_trd). Set MARKETPIPE_KRX_UNIVERSE to list symbols."
            )
        frame = (
            pl.from_dicts(rows, schema={"ISU_CD": pl.String, "ISU_NM": pl.String}, strict=False)
            .select(
                symbol=pl.col("ISU_CD").str.strip_chars(), name=pl.col("ISU_NM").str.strip_chars()
            )
            .filter(pl.col("symbol").is_not_null() & (pl.col("symbol") != ""))
            .unique("symbol", keep="first", maintain_order=True)
            .with_columns(listing_date=pl.lit(HISTORY_START), delisting_date=pl.lit(None))
        )
        log.info("krx universe: %d symbols listed on %s", len(frame), day)
        return frame.select(pl.col(c).cast(t) for c, t in UNIVERSE.items()).sort("symbol")


def source_from_env() -> KrxSource:
    """KRX_API_KEY (required); KRX_BASE_URL, the host the /svc/apis/... paths hang off (default
    https://data-dbg.krx.co.kr); MARKETPIPE_KRX_RATE_LIMIT (default 5/s)."""
    requests, per_seconds = rate_limit(RATE_LIMIT_VARIABLE, DEFAULT_RATE_LIMIT)
    return KrxSource(
        api_key=required_env("KRX_API_KEY", NAME),
        base_url=os.environ.get("KRX_BASE_URL") or DEFAULT_BASE_URL,
        requests=requests,
        per_seconds=per_seconds,
        retry=RETRY,
        timeout=TIMEOUT,
    )
