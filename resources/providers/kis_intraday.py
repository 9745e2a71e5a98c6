"""KIS intraday bars: the 1-minute bars of each session (today's from inquire-time-itemchartprice,
30 per call; an earlier day's from inquire-time-dailychartprice, 120 per call; both newest first,
read backwards one FID_INPUT_HOUR_1 cursor per call), aggregated to the session's 15-minute grid."""

from __future__ import annotations

import datetime as dt

import polars as pl

from checks.intraday_checks import SESSION_CLOSE, SESSION_OPEN, session_table
from checks.markets import session_bounds
from checks.rulebook import OHLCV_RULES
from checks.schemas import INTRADAY_BAR_MINUTES, INTRADAY_BARS, PRICE_COLUMNS
from resources.sources.base import SourceUnavailable

from .errors import NotFound
from .kis_client import MARKET, NAME, QUOTATIONS, KisClient, clock, text
from .values import SEOUL as KST
from .values import number_text, parse_number

MINUTE_TODAY_PATH = f"{QUOTATIONS}/inquire-time-itemchartprice"  # today's session only
MINUTE_DAY_PATH = f"{QUOTATIONS}/inquire-time-dailychartprice"  # one earlier day per call
MINUTE_TR_IDS = {MINUTE_TODAY_PATH: "FHKST03010200", MINUTE_DAY_PATH: "FHKST03010230"}
MINUTE_PAGE_ROWS = {MINUTE_TODAY_PATH: 30, MINUTE_DAY_PATH: 120}  # the most rows per call
# KIS keeps "at most one year" of minute bars for the per-day chart: older sessions fail before
# any request instead of coming back empty (which would look like a market without trades).
MINUTE_RETENTION_DAYS = 365
_MINUTE_FIELDS = {  # raw minute column -> output2 key of both minute charts
    "date": "stck_bsop_date",
    "hour": "stck_cntg_hour",  # HHMMSS in Seoul, the minute's start
    "open": "stck_oprc",
    "high": "stck_hgpr",
    "low": "stck_lwpr",
    "close": "stck_prpr",  # a minute bar's close is its last price
    "volume": "cntg_vol",  # the minute's own volume (acml_vol would be the day's running total)
}
RAW_MINUTES = pl.Schema(
    {"symbol": pl.String, "trade_date": pl.Date, **{c: pl.String for c in _MINUTE_FIELDS}}
)
_OHLCV = (*PRICE_COLUMNS, "volume")


class MinuteHistoryUnavailable(SourceUnavailable):
    """A session older than the minute history KIS keeps: no request can serve it, so a fallback
    chain moves on to its next source and a run with KIS alone fails with this message."""


def check_retention(days: list[dt.date], symbols: list[str], now: dt.datetime, keep: int) -> None:
    """MinuteHistoryUnavailable, before any request, when the oldest of `days` is beyond the
    `keep` days of minute history KIS serves."""
    oldest = now.astimezone(KST).date() - dt.timedelta(days=keep)
    if days[0] < oldest:
        others = f" and {len(symbols) - 1} more symbol(s)" if len(symbols) > 1 else ""
        raise MinuteHistoryUnavailable(
            f"{NAME} {MINUTE_DAY_PATH} [{symbols[0]}{others}]: no 1-minute bars for "
            f"{days[0]}: KIS keeps about {keep} days of minute history "
            f"(the oldest day it can serve now is {oldest}); take intraday_bars before that "
            "from another source"
        )


async def minute_rows(
    client: KisClient, symbol: str, sessions: list[dt.date], today: dt.date
) -> pl.DataFrame:
    """The 1-minute rows KIS sends for each session (RAW_MINUTES); a session without any
    is skipped, a symbol without any in every session is NotFound (counted missing)."""
    frames, not_found = [], None
    for day in sessions:
        try:
            rows = await session_minutes(client, symbol, day, day == today)
        except NotFound as error:  # not listed yet that day, or unknown to KIS
            not_found = error
            continue
        fields = _MINUTE_FIELDS.values()
        frames.append(
            pl.DataFrame(
                [(symbol, day, *(text(r.get(k)) for k in fields)) for r in rows],
                schema=RAW_MINUTES,
                orient="row",
            )
        )
    if not frames and not_found is not None:
        raise not_found
    return pl.concat([pl.DataFrame(schema=RAW_MINUTES), *frames])


async def session_minutes(client: KisClient, symbol: str, day: dt.date, today: bool) -> list[dict]:
    """One session's minute rows, newest first: each call asks for the bars at or before
    FID_INPUT_HOUR_1, starting at the close; the next cursor is a minute before the oldest
    bar received, until the session's open is reached or a page comes back short."""
    path = MINUTE_TODAY_PATH if today else MINUTE_DAY_PATH
    opens, closes = (t.astimezone(KST).time() for t in session_bounds(MARKET, day))
    stamp = day.strftime("%Y%m%d")
    rows: list[dict] = []
    cursor = closes
    while True:
        params = {
            "FID_COND_MRKT_DIV_CODE": "J",
            "FID_INPUT_ISCD": symbol,
            "FID_INPUT_HOUR_1": cursor.strftime("%H%M%S"),
            "FID_PW_DATA_INCU_YN": "N",  # this day only, not the days before
            **({"FID_ETC_CLS_CODE": ""} if today else {"FID_INPUT_DATE_1": stamp}),
        }
        payload, _ = await client.get(path, MINUTE_TR_IDS[path], symbol, params)
        page = client.rows(payload, path, symbol)
        full = len(page) >= MINUTE_PAGE_ROWS[path]
        # Bars after the cursor were on an earlier page (a server ignoring the cursor).
        page = [r for r in page if (clock(r.get("stck_cntg_hour")) or cursor) <= cursor]
        rows.extend(page)
        times = [
            clock(r.get("stck_cntg_hour"))
            for r in page
            if str(r.get("stck_bsop_date")).strip() == stamp
        ]
        oldest = min((t for t in times if t is not None), default=None)
        if not full or oldest is None or oldest <= opens:  # the last page, or the open
            break
        cursor = (dt.datetime.combine(day, oldest) - dt.timedelta(minutes=1)).time()
    if not rows:
        raise NotFound(NAME, path, symbol, f"no 1-minute bars for {day}")
    return rows


def aggregate_minutes(raw: pl.DataFrame, *, now: dt.datetime | None = None) -> pl.DataFrame:
    """KIS 1-minute rows (RAW_MINUTES: text, Seoul time) -> 15-minute bars (INTRADAY_BARS).

    Bars lie on the session's grid from its open (session_bounds, so late opens and early
    closes follow the exchange calendar): open = first, high = max, low = min, close = last,
    volume = sum, stamped in UTC. The closing auction prints at the close itself and belongs to
    the last bar. Rows the server sent for another day are dropped; a minute outside the hours
    lands in a bar outside them, and a row without a time in a bar without one, for validation
    to quarantine. A minute that breaks an OHLCV rule or lacks a value makes its whole bar
    that minute's values: folded into max/min it would vanish and the bar would be stored, so the
    bar goes to quarantine under the rule the minute broke. With `now`, bars not over by then
    (a session still trading) are left out.
    """
    step = dt.timedelta(minutes=INTRADAY_BAR_MINUTES)
    step_us = step // dt.timedelta(microseconds=1)
    bounds = session_table(MARKET, raw["trade_date"].unique().sort().to_list()).drop("slots")
    sent_day = pl.col("date").str.strip_chars().str.to_date("%Y%m%d", strict=False)
    local = pl.concat_str(
        sent_day.dt.strftime("%Y%m%d"), pl.col("hour").str.strip_chars().str.zfill(6)
    )
    at = (
        local.str.to_datetime("%Y%m%d%H%M%S", time_unit="us", strict=False)
        .dt.replace_time_zone(KST.key, ambiguous="earliest", non_existent="null")
        .dt.convert_time_zone("UTC")
    )
    slot = (pl.col("at") - pl.col(SESSION_OPEN)).dt.total_microseconds() // step_us
    slot = pl.when(pl.col("at") == pl.col(SESSION_CLOSE)).then(slot - 1).otherwise(slot)
    bad = pl.any_horizontal(
        *(rule.broken() for rule in OHLCV_RULES), *(pl.col(c).is_null() for c in _OHLCV)
    )
    minutes = (
        raw.filter(sent_day.is_null() | (sent_day == pl.col("trade_date")))
        .with_columns(
            at=at,
            **{c: parse_number(c, pl.Float64) for c in PRICE_COLUMNS},
            volume=number_text("volume").cast(pl.Int64, strict=False),
        )
        .join(bounds, on="trade_date", how="left")
        .with_columns(
            bar_start=pl.col(SESSION_OPEN) + pl.duration(microseconds=slot * step_us), _bad=bad
        )
        .sort("symbol", "trade_date", "at", nulls_last=True)
    )
    first_bad = {f"_bad_{c}": pl.col(c).filter(pl.col("_bad")).first() for c in _OHLCV}
    bars = minutes.group_by("symbol", "trade_date", "bar_start", maintain_order=True).agg(
        pl.col("open").first(),
        pl.col("high").max(),
        pl.col("low").min(),
        pl.col("close").last(),
        pl.col("volume").sum(),
        pl.col("_bad").any(),
        **first_bad,
    )
    if now is not None:
        over = pl.col("bar_start") + step <= now.astimezone(dt.UTC)  # any aware `now`
        bars = bars.filter(pl.col("bar_start").is_null() | over)
    return bars.with_columns(
        pl.when(pl.col("_bad")).then(pl.col(f"_bad_{c}")).otherwise(pl.col(c)).alias(c)
        for c in _OHLCV
    ).select(pl.col(c).cast(t) for c, t in INTRADAY_BARS.items())
