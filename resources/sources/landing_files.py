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

from checks.schemas import DAILY_PRICES, PRICE_COLUMNS, conform

from .base import SourceError

REQUIRED = [c for c in DAILY_PRICES if c != "source"]
NUMBERS = [*PRICE_COLUMNS, "volume"]
# A date, optionally followed by a time (spreadsheets export dates as midnight datetimes).


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
    return ""


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
