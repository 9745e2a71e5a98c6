"""KIS live quotes: the 10-level order book (inquire-asking-price-exp-ccn, FHKST01010200) and the
current price (inquire-price, FHKST01010100). KIS serves the book of now only: order_books
captures it while the session trades."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import polars as pl

from checks.schemas import ORDER_BOOK_SNAPSHOTS

from .kis_client import QUOTATIONS, KisClient, integer, number
from .values import SEOUL as KST

PRICE_PATH = f"{QUOTATIONS}/inquire-price"
BOOK_PATH = f"{QUOTATIONS}/inquire-asking-price-exp-ccn"
PRICE_TR_ID, BOOK_TR_ID = "FHKST01010100", "FHKST01010200"
BOOK_LEVELS = 10
# A live book carries no session: order_books adds `trade_date` when it spools the capture.
ORDER_BOOK = pl.Schema({c: t for c, t in ORDER_BOOK_SNAPSHOTS.items() if c != "trade_date"})


@dataclass(frozen=True)
class CurrentPrice:
    """inquire-price's headline fields: stck_prpr, stck_oprc, stck_hgpr, stck_lwpr, acml_vol."""

    symbol: str
    price: float | None
    open: float | None
    high: float | None
    low: float | None
    volume: int | None
    fetched_at: dt.datetime


def _query(symbol: str) -> dict[str, str]:
    return {"FID_COND_MRKT_DIV_CODE": "J", "FID_INPUT_ISCD": symbol}


async def current_price(client: KisClient, symbol: str) -> CurrentPrice:
    payload, _ = await client.get(PRICE_PATH, PRICE_TR_ID, symbol, _query(symbol))
    output = client.object(payload, "output", PRICE_PATH, symbol)
    return CurrentPrice(
        symbol=symbol,
        price=number(output.get("stck_prpr")),
        open=number(output.get("stck_oprc")),
        high=number(output.get("stck_hgpr")),
        low=number(output.get("stck_lwpr")),
        volume=integer(output.get("acml_vol")),
        fetched_at=dt.datetime.now(dt.UTC),
    )


async def order_book(client: KisClient, symbol: str) -> pl.DataFrame:
    """Ten levels of the book in the order_books columns (ORDER_BOOK); an empty level ("0") has
    null prices and zero sizes."""
    payload, _ = await client.get(BOOK_PATH, BOOK_TR_ID, symbol, _query(symbol))
    book = client.object(payload, "output1", BOOK_PATH, symbol)
    levels = range(1, BOOK_LEVELS + 1)
    keys = [f"{side}{i}" for side in ("askp", "bidp") for i in levels]
    absent = [k for k in keys if k not in book]
    if absent:
        raise client.http.schema_error(BOOK_PATH, symbol, f"output1 lacks {', '.join(absent[:4])}")

    def price(key: str) -> float | None:
        value = number(book.get(key))
        return value if value else None  # "0" is an empty level

    return pl.DataFrame(
        {
            "symbol": [symbol] * BOOK_LEVELS,
            "snapshot_ts": [book_time(book.get("aspr_acpt_hour"))] * BOOK_LEVELS,
            "level": list(levels),
            "bid_price": [price(f"bidp{i}") for i in levels],
            "ask_price": [price(f"askp{i}") for i in levels],
            "bid_size": [integer(book.get(f"bidp_rsqn{i}")) or 0 for i in levels],
            "ask_size": [integer(book.get(f"askp_rsqn{i}")) or 0 for i in levels],
        },
        schema=ORDER_BOOK,
    )


def book_time(hhmmss: Any, now: dt.datetime | None = None) -> dt.datetime:
    """aspr_acpt_hour is the book's time of day in Seoul: today's, or yesterday's if that would
    lie in the future (a book read just after midnight)."""
    now = now or dt.datetime.now(dt.UTC)
    try:
        clock = dt.datetime.strptime(str(hhmmss).strip(), "%H%M%S").time()
    except ValueError:
        return now
    local = dt.datetime.combine(now.astimezone(KST).date(), clock, KST)
    if local > now + dt.timedelta(minutes=5):
        local -= dt.timedelta(days=1)
    return local.astimezone(dt.UTC)
