"""Which universe rows are active on a day: the one rule behind completeness, order-book capture
and freshness.

A symbol is active from its listing date (inclusive) to its delisting date (exclusive). A null
listing date means listed since before the history began (providers and hand-written universes
leave it empty for old stocks), never "not listed"; a null delisting date means still listed. A
delisting before the listing (a bad row) means never active.
"""

from __future__ import annotations

import datetime as dt

import polars as pl

BEFORE_HISTORY = dt.date(1, 1, 1)  # the listing date a null one stands for


def listed_from() -> pl.Expr:
    """First active day (inclusive)."""
    return pl.col("listing_date").fill_null(BEFORE_HISTORY)


def listed_until() -> pl.Expr:
    """First day no longer active (exclusive); null while still listed."""
    return pl.when(pl.col("delisting_date").is_not_null()).then(
        pl.max_horizontal(listed_from(), "delisting_date")
    )


def active_on(day: dt.date | pl.Expr) -> pl.Expr:
    """True for universe rows active on `day` (a date or a date column)."""
    day = pl.lit(day) if isinstance(day, dt.date) else day
    until = listed_until()
    return (listed_from() <= day) & (until.is_null() | (until > day))
