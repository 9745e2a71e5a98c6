"""How the values providers send become typed ones: numbers as text, bar arrays with nulls,
epoch stamps and session dates."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Mapping, Sequence
from zoneinfo import ZoneInfo

import polars as pl

from checks.markets import is_session, session_bounds
from checks.schemas import RAW

NEW_YORK = ZoneInfo("America/New_York")
SEOUL = ZoneInfo("Asia/Seoul")
# The latest regular close of a US session: the close assumed for a day the calendar does not
# list as a session (a weekend, a holiday, beyond its end), so a bar of it is final only after it.
LATEST_US_CLOSE = dt.time(16, 0)
LATEST_CLOSE = {"us": (LATEST_US_CLOSE, NEW_YORK), "krx": (dt.time(15, 30), SEOUL)}


def number_text(column: str) -> pl.Expr:
    """A number sent as text ('79,600', ' 439.88000'), thousands separators and padding gone."""
    return pl.col(column).str.replace_all(",", "").str.strip_chars()


def parse_number(column: str, dtype: pl.DataType | type[pl.DataType]) -> pl.Expr:
    """'79,600' -> 79600, '439.88000' -> 439.88; empty, '-', absent or unparsable -> null,
    never 0 (validation quarantines the row instead of storing a made-up price)."""
    as_float = number_text(column).cast(pl.Float64, strict=False)
    if dtype.is_integer():
        # 1.5 shares is no count: null (and quarantined), never truncated to 1.
        as_float = pl.when(as_float == as_float.round(0)).then(as_float)
    return as_float.cast(dtype, strict=False).alias(column)


def bar_columns(arrays: Mapping[str, list], keys: Sequence[str]) -> dict[str, pl.Series]:
    """open, high, low, close and volume from the JSON arrays named by `keys`, in that order.

    Nulls stay nulls (validation quarantines those rows); volume is rounded to whole shares.
    """
    open_, high, low, close, volume = (
        pl.Series(arrays[k], dtype=pl.Float64, strict=False) for k in keys
    )
    volume = volume.round(0).cast(pl.Int64, strict=False)
    return {"open": open_, "high": high, "low": low, "close": close, "volume": volume}


def unread_numbers(arrays: Mapping[str, list], keys: Sequence[str]) -> list[dict[str, str]]:
    """Per bar, {column: value as sent} of each value that was sent but is no JSON number
    (text, true, an object): bar_columns makes it null, the quarantine shows what it was."""
    columns = ("open", "high", "low", "close", "volume")
    unread: list[dict[str, str]] = [{} for _ in arrays[keys[0]]]
    for column, key in zip(columns, keys, strict=True):
        for i, value in enumerate(arrays[key]):
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if value is not None and not number:
                unread[i][column] = str(value)
    return unread


def dates_of(
    stamps: list, date: Callable[[int | float], dt.date | None]
) -> tuple[list[dt.date | None], list[dict[str, str]]]:
    """Per epoch stamp, `date(stamp)`, and the evidence of a stamp that is none (text, true,
    inf, beyond any date): that bar is undated, quarantined as unparseable:trade_date."""
    dates: list[dt.date | None] = []
    unread: list[dict[str, str]] = []
    for stamp in stamps:
        try:
            if stamp is None:
                dates.append(None)
            elif isinstance(stamp, bool) or not isinstance(stamp, int | float):
                raise TypeError(stamp)
            else:
                dates.append(date(stamp))
            unread.append({})
        except (TypeError, ValueError, OverflowError, OSError):
            dates.append(None)
            unread.append({"trade_date": str(stamp)})
    return dates, unread


def evidence(*per_bar: list[dict[str, str]]) -> pl.Series:
    """The `raw` column from per-bar evidence dicts merged: JSON, or null where all read."""
    merged = [
        {k: v for part in parts for k, v in part.items()} for parts in zip(*per_bar, strict=True)
    ]
    texts = [json.dumps(m, sort_keys=True) if m else None for m in merged]
    return pl.Series(RAW, texts, dtype=pl.String)


def epoch(day: dt.date, at: dt.time, zone: dt.tzinfo) -> int:
    """Epoch seconds of `day` at the wall-clock time `at` in `zone`."""
    return int(dt.datetime.combine(day, at, zone).timestamp())


def session_close(market: str, day: dt.date) -> int:
    """Epoch seconds of the close of `market`'s session on `day`, from the exchange calendar
    (13:00 New York on a US half day): a bar of it counts as final only after it, so waiting for
    it never stores a partial bar. The latest regular close on a day that is not a session."""
    if is_session(market, day):
        return int(session_bounds(market, day)[1].timestamp())
    latest, zone = LATEST_CLOSE[market]
    return epoch(day, latest, zone)


def us_close(day: dt.date) -> int:
    """session_close of the US market."""
    return session_close("us", day)


def date_of(stamp: int | float, zone: dt.tzinfo) -> dt.date:
    """The calendar date in `zone` of an epoch stamp (whole seconds)."""
    return dt.datetime.fromtimestamp(int(stamp), zone).date()


def served(frame: pl.DataFrame, market: str, sessions: Sequence[dt.date]) -> pl.DataFrame:
    """The bars of the requested `sessions`, plus those no session's run would ever get:
    undated ones and ones dated on a day that is not a session (a weekend, a holiday), which
    validation quarantines (`required_fields`, `not_a_session`) instead of losing. Bars of
    other sessions belong to those sessions' runs."""
    days = frame["trade_date"].drop_nulls().unique().to_list()
    kept = [*sessions, *(d for d in days if not is_session(market, d))]
    return frame.filter(
        pl.col("trade_date").is_null() | pl.col("trade_date").is_in(pl.Series(kept, dtype=pl.Date))
    )
