"""Order books from any source: history where a source can generate or serve it, the live book
where a provider only has that (KIS), through a fallback chain like every other dataset."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import polars as pl

from checks.schemas import ORDER_BOOK_SNAPSHOTS

from .providers.base import fetch_all, run_sync
from .sources.base import (
    Dataset,
    FallbackSource,
    require,
    serves,
)

LIVE_CONCURRENCY = 8  # books in flight at once from a live provider (its limiter still rules)


def order_book_history(
    source, market: str, sessions: Sequence[dt.date], symbols: Sequence[str], interval: int
) -> pl.DataFrame:
    """Snapshots at every capture slot of past sessions, from a source that has them."""
    if isinstance(source, FallbackSource):
        return source.first_available(
            lambda s: order_book_history(s, market, sessions, symbols, interval)
        )
    if not serves(source, Dataset.ORDER_BOOK_HISTORY, market):
        live_only = serves(source, Dataset.ORDER_BOOKS, market)
        hint = (
            ": it serves order books live only, so a past session cannot be fetched from it; "
            f"its books come from the capture schedule ({market}_order_book_capture) while the "
            "session trades"
        )
        require(source, Dataset.ORDER_BOOK_HISTORY, market, hint if live_only else "")
    return source.order_book_history(market, sessions, symbols, interval)


def order_books_at(
    source,
    market: str,
    session: dt.date,
    slot: dt.datetime,
    symbols: Sequence[str],
    interval: int,
) -> pl.DataFrame:
    """The books a capture at `slot` sees: a live provider's current book per symbol, or a
    history source's snapshot of that slot."""
    if isinstance(source, FallbackSource):
        return source.first_available(
            lambda s: order_books_at(s, market, session, slot, symbols, interval)
        )
    if serves(source, Dataset.ORDER_BOOK_HISTORY, market):
        return source.order_book_history(market, [session], symbols, interval, at=slot)
    require(source, Dataset.ORDER_BOOKS, market)
    live = source.order_book

    async def capture():
        async with source:  # one pooled client for every symbol's request
            return await fetch_all(symbols, live, concurrency=LIVE_CONCURRENCY)

    # A symbol the provider does not know is left out; coverage counts it as missing.
    frames, _missing = run_sync(capture())
    books = pl.concat([pl.DataFrame(schema=ORDER_BOOK_SNAPSHOTS).drop("trade_date"), *frames])
    return books.with_columns(trade_date=pl.lit(session, pl.Date)).select(
        pl.col(c).cast(t) for c, t in ORDER_BOOK_SNAPSHOTS.items()
    )
