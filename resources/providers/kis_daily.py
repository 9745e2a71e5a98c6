"""KIS daily bars: inquire-daily-itemchartprice (FHKST03010100), at most ~100 rows per call,
newest first, so a range is read backwards, one earlier date window per call, until covered."""

from __future__ import annotations

import datetime as dt

import polars as pl

from checks.schemas import PRICE_COLUMNS, with_evidence

from .errors import NotFound
from .kis_client import NAME, QUOTATIONS, KisClient, text
from .values import number_text, parse_number

DAILY_PATH = f"{QUOTATIONS}/inquire-daily-itemchartprice"
DAILY_TR_ID = "FHKST03010100"
PAGE_ROWS = 100  # the most rows one daily-chart call returns
_RAW_FIELDS = {  # daily_prices column -> output2 key
    "trade_date": "stck_bsop_date",
    "open": "stck_oprc",
    "high": "stck_hgpr",
    "low": "stck_lwpr",
    "close": "stck_clpr",
    "volume": "acml_vol",
}
RAW_DAILY = pl.Schema({"symbol": pl.String, **{c: pl.String for c in _RAW_FIELDS}})


async def daily_rows(
    client: KisClient, symbol: str, first: dt.date, last: dt.date, *, adjusted: bool
) -> pl.DataFrame:
    """Every row KIS sends for [first, last] (RAW_DAILY), newest first, one earlier window per
    call."""
    rows: list[dict] = []
    end, tr_cont = last, ""
    while True:
        params = {
            "FID_COND_MRKT_DIV_CODE": "J",
            "FID_INPUT_ISCD": symbol,
            "FID_INPUT_DATE_1": first.strftime("%Y%m%d"),
            "FID_INPUT_DATE_2": end.strftime("%Y%m%d"),
            "FID_PERIOD_DIV_CODE": "D",
            "FID_ORG_ADJ_PRC": "0" if adjusted else "1",
        }
        try:
            payload, response = await client.get(DAILY_PATH, DAILY_TR_ID, symbol, params, tr_cont)
        except NotFound:
            if not rows:
                raise
            break  # nothing before the listing: the rows so far are the symbol's history
        page = client.rows(payload, DAILY_PATH, symbol)
        rows.extend(page)
        # KIS marks further pages with tr_cont F/M; a full page may also have more behind it.
        more = response.headers.get("tr_cont", "").strip() in ("F", "M")
        dates = [d for d in map(_date, page) if d is not None]
        if not (more or len(page) >= PAGE_ROWS) or not dates:
            break
        oldest = min(dates)
        if oldest <= first or oldest > end:  # covered, or the server ignored the window
            break
        end, tr_cont = oldest - dt.timedelta(days=1), "N"
    fields = _RAW_FIELDS.values()
    return pl.DataFrame(
        [(symbol, *(text(r.get(k)) for k in fields)) for r in rows], schema=RAW_DAILY, orient="row"
    )


def daily_frame(raw: pl.DataFrame) -> pl.DataFrame:
    """RAW_DAILY text (maybe with thousands separators) to daily_prices numbers, the text of any
    that is none kept in `raw`. Every row stays: the base keeps the sessions asked for."""
    frame = raw.select(
        "symbol",
        trade_date=pl.col("trade_date").str.strip_chars().str.to_date("%Y%m%d", strict=False),
        **{c: parse_number(c, pl.Float64) for c in ("open", "high", "low", "close")},
        # Straight to an integer, not through a float: a fractional volume is no volume.
        volume=number_text("volume").cast(pl.Int64, strict=False),
        source=pl.lit(NAME),
    )
    return with_evidence(frame, raw, ["trade_date", *PRICE_COLUMNS, "volume"])


def _date(row: dict) -> dt.date | None:
    try:
        return dt.datetime.strptime(str(row.get("stck_bsop_date", "")).strip(), "%Y%m%d").date()
    except ValueError:
        return None
