"""Twelve Data: US daily bars per symbol from /time_series, and 15-minute bars (providers.md 5.3).

`GET {TWELVEDATA_BASE_URL}/time_series?symbol=&interval=1day&start_date=&end_date=&order=ASC&
apikey=` answers `{"meta": {...}, "values": [{"datetime", "open", ...}], "status": "ok"}` with
every number a string. Errors come in HTTP 200 bodies as often as with a matching status:
`{"status": "error", "code": 400|401|404|429, "message": ...}`; `classify` maps them to the typed
errors (429 waits out the rate window, 401 is not retried, 404 is a missing symbol).

The API key travels in the query string, so it is handed to ProviderHttp as a secret (scrubbed
from every error) and httpx's request logging stays off (http.py). Credits: one per symbol per
call, 8 per minute on the free plan; MARKETPIPE_TWELVEDATA_RATE_LIMIT sets another plan's rate.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import polars as pl

from checks.schemas import DAILY_PRICES, PRICE_COLUMNS, RAW, with_evidence
from checks.schemas import INTRADAY_BARS as SESSION_INTRADAY_BARS
from resources.sources.base import Dataset

from .base import (
    OneKeySource,
    OneMarketDailyBars,
    bars_by_date,
    no_listing,
    rate_limit,
    required_env,
    run_sync,
)
from .errors import BadRequest, NotFound, ProviderError, RateLimited, Unauthorized
from .http import ProviderHttp, RetryPolicy
from .values import parse_number

NAME = "twelvedata"
DEFAULT_BASE_URL = "https://api.twelvedata.com"
ENDPOINT = "/time_series"
RATE_LIMIT_VARIABLE = "MARKETPIPE_TWELVEDATA_RATE_LIMIT"
DEFAULT_RATE_LIMIT = "8/min"  # the free plan: 8 credits per minute
MAX_OUTPUTSIZE = 5000  # the most bars one call returns
EXCHANGE_TZ = "America/New_York"
# None: the HTTP layer's default, RetryPolicy.from_env() (MARKETPIPE_RETRY_*_SECONDS).
RETRY: RetryPolicy | None = None
TIMEOUT = 10.0

# One session's bars: the intraday_bars columns but the session (`trade_date`), which the
# caller knows and adds.
INTRADAY_BARS = pl.Schema({c: t for c, t in SESSION_INTRADAY_BARS.items() if c != "trade_date"})
_VALUE_FIELDS = ("datetime", *PRICE_COLUMNS, "volume")


def parse_values(values: list[dict[str, Any]], symbol: str) -> pl.DataFrame:
    """`values` -> strings parsed to numbers, ascending by datetime (the API defaults to DESC).

    Keys a row lacks (forex has no volume) become null, never 0. The text of a number that is
    none (`abc`, `1.5` shares) is kept in a `raw` column for the quarantine (absent when every
    value parsed).
    """
    raw = pl.from_dicts(values, schema=dict.fromkeys(_VALUE_FIELDS, pl.String), strict=False)
    typed = raw.with_columns(
        pl.lit(symbol, pl.String).alias("symbol"),
        pl.col("datetime").str.strip_chars(),
        *(parse_number(c, pl.Float64) for c in PRICE_COLUMNS),
        parse_number("volume", pl.Int64),
    )
    typed = with_evidence(typed, raw, [*PRICE_COLUMNS, "volume"])
    return typed.sort("datetime", nulls_last=True, maintain_order=True)


def _evidence(frame: pl.DataFrame) -> list[str]:
    """`raw` when some value of `frame` did not parse (parse_values), else nothing."""
    return [RAW] if RAW in frame.columns else []


@dataclass(frozen=True)
# rate and concurrency are computed from the frozen fields (OneKeySource), where other
# sources set the base's plain attributes.
class TwelveDataSource(OneKeySource, OneMarketDailyBars):  # type: ignore[override]
    market: ClassVar[str] = "us"
    api_key: str = field(repr=False)
    base_url: str = DEFAULT_BASE_URL
    requests: int = 8
    per_seconds: float = 60.0
    retry: RetryPolicy | None = RETRY
    timeout: float = TIMEOUT
    now: Callable[[], dt.datetime] = field(default=lambda: dt.datetime.now(dt.UTC), repr=False)
    name: str = NAME
    missing: dict[str, str] = field(default_factory=dict, compare=False, repr=False)
    datasets: ClassVar[frozenset[Dataset]] = frozenset({Dataset.DAILY_BARS, Dataset.INTRADAY_BARS})

    def _classify(self, http: ProviderHttp, symbol: str):
        def classify(payload: Any, response) -> None:
            if not isinstance(payload, dict) or payload.get("status") != "error":
                return
            # The body's code decides; without one, the HTTP status it came with.
            code = payload.get("code", response.status_code)
            code = int(code) if str(code).isdigit() else response.status_code
            message = str(payload.get("message", ""))  # the HTTP layer masks, then cuts
            detail = http.redact(f"error {code} (HTTP {response.status_code}): {message}")
            where = (NAME, ENDPOINT, symbol)
            if code in (401, 403):
                raise Unauthorized(*where, f"{detail} Check TWELVEDATA_API_KEY and its plan.")
            if code == 404 or (code == 400 and "no data is available" in message.lower()):
                raise NotFound(*where, detail)
            if code == 429:
                # Credits reset each minute: wait one whole window of the configured rate.
                raise RateLimited(*where, detail, retry_after=self.per_seconds)
            if isinstance(code, int) and code >= 500:
                raise ProviderError(*where, detail)
            raise BadRequest(*where, detail)

        return classify

    async def _time_series(
        self, http: ProviderHttp, symbol: str, **params
    ) -> tuple[pl.DataFrame, str]:
        """One /time_series call: (parsed values, exchange time zone)."""
        payload, _ = await http.request_json(
            "GET",
            ENDPOINT,
            symbol=symbol,
            classify=self._classify(http, symbol),
            params={
                "symbol": symbol,
                "order": "ASC",
                "outputsize": MAX_OUTPUTSIZE,
                **params,
                "apikey": self.api_key,
            },
        )
        values = payload.get("values") if isinstance(payload, dict) else None
        if not isinstance(values, list) or not all(isinstance(v, dict) for v in values):
            shape = sorted(payload) if isinstance(payload, dict) else type(payload).__name__
            raise http.schema_error(ENDPOINT, symbol, f"expected a `values` list, got {shape}")
        meta = payload.get("meta") if isinstance(payload.get("meta"), dict) else {}
        return parse_values(values, symbol), meta.get("exchange_timezone") or EXCHANGE_TZ

    async def _daily_symbol(
        self, http: ProviderHttp, symbol: str, days: list[dt.date]
    ) -> pl.DataFrame:
        frames, not_found = [], None
        for i in range(0, len(days), MAX_OUTPUTSIZE - 1):
            chunk = days[i : i + MAX_OUTPUTSIZE - 1]
            try:
                values, _ = await self._time_series(
                    http,
                    symbol,
                    interval="1day",
                    start_date=chunk[0].isoformat(),
                    # end_date is exclusive for some intervals: ask a day past the range and
                    # keep only the sessions asked for.
                    end_date=(chunk[-1] + dt.timedelta(days=1)).isoformat(),
                )
            except NotFound as error:  # no bars in this chunk (not listed yet, or unknown)
                not_found = error
                continue
            frames.append(values)
        if not frames and not_found is not None:
            raise not_found
        frame = pl.concat(frames, how="diagonal") if frames else parse_values([], symbol)
        return frame.with_columns(
            trade_date=pl.col("datetime").str.slice(0, 10).str.to_date("%Y-%m-%d", strict=False),
            source=pl.lit(NAME),
        ).select(*(pl.col(c).cast(t) for c, t in DAILY_PRICES.items()), *_evidence(frame))

    async def _daily(self, days: list[dt.date], symbols: Sequence[str]) -> pl.DataFrame:
        """One call per symbol (per 5,000 sessions), at most `requests` in flight; a partial bar
        of a session that has not closed yet waits for a run after its close."""
        async with self._http() as http:
            frames = await self.fetch_symbols(
                Dataset.DAILY_BARS, symbols, lambda s: self._daily_symbol(http, s, days)
            )
        return self.without_running(bars_by_date(frames), self.now().timestamp())

    async def session_intraday_bars(
        self, symbol: str, session: dt.date, *, http: ProviderHttp | None = None
    ) -> pl.DataFrame:
        """15-minute bars of one session, `bar_start` in UTC (CONTRACT section 5).

        Twelve Data stamps intraday bars "YYYY-MM-DD HH:MM:SS" in the exchange's time zone
        (meta.exchange_timezone). Pass an open `http` to share one session across calls.
        """
        if http is None:
            async with self._http() as own:
                return await self.session_intraday_bars(symbol, session, http=own)
        values, zone = await self._time_series(
            http,
            symbol,
            interval="15min",
            start_date=f"{session.isoformat()} 00:00:00",
            end_date=f"{(session + dt.timedelta(days=1)).isoformat()} 00:00:00",
        )
        local = pl.col("datetime").str.to_datetime(
            "%Y-%m-%d %H:%M:%S", time_zone=zone, ambiguous="earliest", strict=False
        )
        return (
            values.with_columns(local=local)
            .filter(pl.col("local").dt.date() == session)
            .with_columns(bar_start=pl.col("local").dt.convert_time_zone("UTC"))
            .select(*(pl.col(c).cast(t) for c, t in INTRADAY_BARS.items()), *_evidence(values))
            .sort("bar_start")
        )

    def intraday_bars(
        self, market: str, sessions: Sequence[dt.date], symbols: Sequence[str]
    ) -> pl.DataFrame:
        """Source.intraday_bars: one call per (symbol, session), `trade_date` the session."""
        days = self._asked(market, sessions, symbols)
        if not days:
            return pl.DataFrame(schema=SESSION_INTRADAY_BARS)
        return run_sync(self._intraday(days, symbols))

    async def _intraday(self, days: list[dt.date], symbols: Sequence[str]) -> pl.DataFrame:
        async with self._http() as http:

            async def fetch(symbol: str) -> pl.DataFrame:
                frames = [
                    (await self.session_intraday_bars(symbol, day, http=http)).with_columns(
                        trade_date=pl.lit(day, pl.Date)
                    )
                    for day in days
                ]
                return pl.concat(frames)

            frames = await self.fetch_symbols(Dataset.INTRADAY_BARS, symbols, fetch)
        return pl.concat([pl.DataFrame(schema=SESSION_INTRADAY_BARS), *frames], how="diagonal")

    def universe(self, market: str) -> pl.DataFrame:
        self._check_market(market)
        raise no_listing(NAME, market)


def source_from_env() -> TwelveDataSource:
    """TWELVEDATA_API_KEY (required), TWELVEDATA_BASE_URL, MARKETPIPE_TWELVEDATA_RATE_LIMIT."""
    requests, per_seconds = rate_limit(RATE_LIMIT_VARIABLE, DEFAULT_RATE_LIMIT)
    return TwelveDataSource(
        api_key=required_env("TWELVEDATA_API_KEY", NAME),
        base_url=os.environ.get("TWELVEDATA_BASE_URL") or DEFAULT_BASE_URL,
        requests=requests,
        per_seconds=per_seconds,
        retry=RETRY,
        timeout=TIMEOUT,
    )
