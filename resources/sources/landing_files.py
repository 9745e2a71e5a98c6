"""Reading one landing file of daily bars, saying in plain words why a file cannot be used, and
the universe that landing sessions are measured against.

A file is rejected as a whole (RejectedFile, a SourceError) when it cannot be read, lacks a
required column, holds no bars, or has a value that is no number or no date where one must be:
such a file was exported wrongly, and storing the rest of it would hide that. Empty cells are
not a file problem: those rows reach validation and are quarantined with their rules.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

import fsspec
import polars as pl

from marketpipe_assets.schemas import DAILY_PRICES, PRICE_COLUMNS, conform

from .base import SourceError

REQUIRED = [c for c in DAILY_PRICES if c != "source"]
NUMBERS = [*PRICE_COLUMNS, "volume"]
DATE_FORMAT = "%Y-%m-%d"  # what the README asks for: YYYY-MM-DD
# A date, optionally followed by a time (spreadsheets export dates as midnight datetimes).
_DATE_TEXT = r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?$"
_SHOWN = 3  # problems named in one message; the rest are counted


@dataclass(frozen=True)
class SessionUniverse:
    frame: pl.DataFrame
    rule: str  # which rule chose it, for the run's log and metadata
    remedy: str  # what to provide when the completeness check fails


class RejectedFile(SourceError):
    """A landing file that cannot be ingested; the message names it, what is wrong, what to do."""


def read_landing_file(fs: fsspec.AbstractFileSystem, path: str, *, source: str) -> pl.DataFrame:
    """The file's bars in the daily_prices schema (`source` filled in when the file has none)."""
    try:
        raw = _read_as_text(fs, path)
    except Exception as exc:
        raise rejected_file(path, _unreadable(fs, path, exc)) from exc
    problems = _problems(raw)
    if problems:
        raise rejected_file(path, problems)
    if "source" not in raw.columns:
        raw = raw.with_columns(source=pl.lit(source))
    # A value that does not read as its type is the row's problem, not the file's: the row is
    # quarantined with the text as sent (`raw`) and the rest of the file is stored.
    try:
        return conform(raw, DAILY_PRICES, what=f"landing file {path!r}", evidence=True)
    except ValueError as exc:
        raise rejected_file(path, str(exc)) from exc


def rejected_file(path: str, problem: str) -> RejectedFile:
    return RejectedFile(
        f"landing file {path!r}: {problem}. Fix the file and drop it into the landing folder "
        "again: a changed file is picked up on the sensor's next tick."
    )


def _read_as_text(fs: fsspec.AbstractFileSystem, path: str) -> pl.DataFrame:
    """Every CSV column as text, so no value is guessed at (a KRX code keeps its leading zeros,
    and a bad value deep in the file is found by us, not by type inference)."""
    with fs.open(path, "rb") as fh:
        if path.endswith(".parquet"):
            return pl.read_parquet(fh)
        return pl.read_csv(fh, infer_schema=False)


def _unreadable(fs: fsspec.AbstractFileSystem, path: str, exc: Exception) -> str:
    if isinstance(exc, OSError):
        return f"the file cannot be opened ({exc.strerror or type(exc).__name__})"
    if path.endswith(".parquet"):
        return "the file is not readable parquet (damaged, cut short or another format)"
    if isinstance(exc, pl.exceptions.NoDataError):
        return "the file is empty; it needs a header row and one row per bar"
    try:
        with fs.open(path, "rb") as fh:
            data = fh.read()
    except OSError as again:
        return f"the file cannot be opened ({again.strerror or type(again).__name__})"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as bad:
        line = data[: bad.start].count(b"\n") + 1
        return f"line {line} is not UTF-8 text (e.g. saved as CP949 or Latin-1); save it as UTF-8"
    rows = csv.reader(io.StringIO(text, newline=""))
    header = next(rows, [])
    for number, row in enumerate(rows, start=1):
        if row and len(row) != len(header):
            return f"row {number} has {len(row)} fields but the header has {len(header)}"
    return "the file is not readable CSV (an unclosed quote or a broken line)"


def _problems(raw: pl.DataFrame) -> str:
    missing = [c for c in REQUIRED if c not in raw.columns]
    if missing:
        return (
            f"column(s) {', '.join(map(repr, missing))} missing (the file has "
            f"{', '.join(raw.columns) or 'none'}); "
            f"the columns are {', '.join(REQUIRED)} (source optional)"
        )
    if raw.is_empty():
        return "the file holds no bars, only a header"
    wrong_types = [
        f"column {c} holds {raw[c].dtype} values, not {kind}"
        for c, kind, fits in [
            *((c, "numbers", raw[c].dtype.is_numeric()) for c in NUMBERS),
            ("trade_date", "dates", raw["trade_date"].dtype.is_temporal()),
        ]
        if not fits and raw[c].dtype not in (pl.String, pl.Null)
    ]
    if wrong_types:
        return "; ".join(wrong_types)
    # A column none of whose values reads as its type is the file's format, not a row's slip
    # (dates as 05/09/2025, decimal commas throughout): the file is rejected, naming the first.
    # Where some values read, the others are the rows' problems: quarantined with their text.
    found = [
        *(_first_bad(raw[c], _numbers(raw[c]), "is not a number") for c in NUMBERS),
        _first_bad(raw["trade_date"], _dates(raw["trade_date"]), "is not a date (YYYY-MM-DD)"),
    ]
    found = [f for f in found if f]
    more = f" (and {len(found) - _SHOWN} more columns)" if len(found) > _SHOWN else ""
    return "; ".join(found[:_SHOWN]) + more


def _first_bad(given: pl.Series, parsed: pl.Series, what: str) -> str | None:
    """'column close, row 1: 'abc' is not a number' when no value given (not empty) in the
    column parses, naming the first; rows count from 1 after the header."""
    if given.dtype != pl.String:
        return None
    present = given.str.strip_chars().str.len_chars() > 0
    bad = present & parsed.is_null()
    if not bad.any() or bad.sum() < present.sum():
        return None
    row = int(bad.arg_true()[0])
    count = int(bad.sum())
    more = f" ({count - 1} more such rows)" if count > 1 else ""
    return f"column {given.name}, row {row + 1}: {given[row]!r} {what}{more}"


def _numbers(column: pl.Series) -> pl.Series:
    if column.dtype == pl.String:
        return column.str.strip_chars().cast(pl.Float64, strict=False)
    return column.cast(pl.Float64, strict=False)


def _dates(column: pl.Series) -> pl.Series:
    if column.dtype == pl.String:
        text = pl.col("text")
        parsed = text.str.slice(0, 10).str.to_date(DATE_FORMAT, strict=False)
        return (
            column.str.strip_chars()
            .to_frame("text")
            .select(pl.when(text.str.contains(_DATE_TEXT)).then(parsed).alias(column.name))
            .to_series()
        )
    return column.cast(pl.Date, strict=False)


def session_universe(
    market: str,
    folder: str,
    listing: tuple[str, pl.DataFrame] | None,
    stored: pl.DataFrame | None,
    bars: pl.DataFrame,
) -> SessionUniverse:
    """What landing bars of some sessions are checked against, by the first rule that applies:
    the landing folder's universe file (`listing`: its path and rows); the stored
    <market>/universe when it lists every symbol of the bars; else the bars' own symbols, active
    on all those sessions (a stored universe from another source, e.g. the demo's synthetic one,
    would count every delivered symbol as unknown and every listed one as missing)."""
    wanted = f"{folder}/universe.csv (symbol,name,listing_date,delisting_date)"
    add_bars = f"drop the missing symbols' bars into {folder}/"
    if listing is not None:
        path, frame = listing
        return SessionUniverse(
            frame,
            f"the landing folder's universe file {path}",
            f"{add_bars}, or correct {path} if they were not listed on those sessions",
        )
    symbols = bars["symbol"].drop_nulls().unique().sort()
    if symbols.is_empty() and stored is not None:
        # Own symbols of no bars would be an empty universe, and an empty session "complete".
        return SessionUniverse(
            stored,
            f"the stored {market}/universe: no landing file holds a bar of these sessions",
            f"drop files with these sessions' bars into {folder}/",
        )
    unknown = symbols if stored is None else symbols.filter(~symbols.is_in(stored["symbol"]))
    if stored is not None and unknown.is_empty() and not symbols.is_empty():
        return SessionUniverse(
            stored,
            f"the stored {market}/universe ({len(stored)} symbols) lists every symbol of the "
            "landing files",
            f"{add_bars}, or provide {wanted} listing only the symbols you deliver",
        )
    why = (
        f"no {market}/universe is stored"
        if stored is None
        else f"the stored {market}/universe does not list {len(unknown)} of the landing "
        f"files' {len(symbols)} symbols (e.g. {', '.join(unknown.head(5))})"
    )
    own = pl.DataFrame({"symbol": symbols}).select(
        "symbol",
        name=pl.col("symbol"),
        listing_date=pl.lit(None, pl.Date),
        delisting_date=pl.lit(None, pl.Date),
    )
    return SessionUniverse(
        own,
        f"{why}: the files' own {len(symbols)} symbols are the universe of these sessions",
        f"{add_bars}, or provide {wanted} with their listing and delisting dates",
    )
