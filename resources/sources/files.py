"""CSV or parquet files dropped in a landing folder (local or s3): <landing>/<market>/*.csv|parquet.

Each file holds daily bars with at least the daily_prices columns (`source` optional). An
optional `universe.csv` / `universe.parquet` in the same folder is the market's listing;
without one the universe is every symbol seen in the files, listed from its first bar. A file
that cannot be used as a whole (landing_files.py) is left out of every read and named in
`rejected`; the landing sensor gives it a failed run of its own.

Every row of a file is served to exactly one session's run, its *filing session*, so none is
lost: a row dated on a session goes to that session; one dated on a weekend or holiday to the
session before it (validation quarantines it there as `not_a_session`); one whose date is empty
or unreadable to the file's last filing session, or, when no row of the file has a date, to the
latest session on or before the day the file was last modified.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar
from zoneinfo import ZoneInfo

import fsspec
import polars as pl

from checks.markets import MARKETS, all_sessions, latest_on_or_before
from checks.schemas import DAILY_PRICES, RAW, UNIVERSE, conform

from .base import Dataset, SourceError, SourceUnavailable
from .landing_files import RejectedFile, SessionUniverse, read_landing_file, session_universe

_SUFFIXES = (".csv", ".parquet")
_UNIVERSE_STEM = "universe"


def read_table_file(fs: fsspec.AbstractFileSystem, path: str, *, what: str) -> pl.DataFrame:
    """Read one CSV or parquet file; any failure names the file and what to do."""
    try:
        with fs.open(path, "rb") as fh:
            if path.endswith(".parquet"):
                return pl.read_parquet(fh)
            # Every column as text: conform reads each value as its type and keeps the text of
            # any it cannot read (`1.5` as a volume), so the quarantine shows what was sent;
            # tickers such as KRX's 000010 keep their zeros.
            return pl.read_csv(fh, infer_schema=False)
    except Exception as exc:
        # The reader's first line says what it met; the lines after are its own API hints.
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SourceError(
            f"{what}: cannot read {path!r} as {path.rsplit('.', 1)[-1]}: {reason}. "
            "Fix or remove the file."
        ) from exc


@dataclass(frozen=True)
class FilesSource:
    """Down (SourceUnavailable, so a fallback chain moves on) when the market's landing folder
    does not exist: nothing was ever delivered, or the drive or bucket is not there. A folder
    that exists serves what it holds, even nothing: missing sessions are then the completeness
    check's business, as with any source."""

    landing_url: str = "data/landing"
    name: str = "files"
    datasets: ClassVar[frozenset[Dataset]] = frozenset({Dataset.UNIVERSE, Dataset.DAILY_BARS})
    # The messages of the files the latest reads left out, one per file.
    rejected: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def _fs_and_dir(self, market: str) -> tuple[fsspec.AbstractFileSystem, str]:
        fs, root = fsspec.core.url_to_fs(self.landing_url)
        return fs, f"{root.rstrip('/')}/{market}"

    def _require_folder(self, market: str) -> None:
        fs, folder = self._fs_and_dir(market)
        if not fs.exists(folder):
            raise SourceUnavailable(
                f"the landing folder {folder!r} does not exist (MARKETPIPE_LANDING_URL="
                f"{self.landing_url!r}); create it and drop the {market} files there"
            )

    def files(self, market: str) -> list[dict]:
        """Landing files of the market with their size and modification stamp, sorted by name."""
        fs, folder = self._fs_and_dir(market)
        if not fs.exists(folder):
            return []
        found = []
        for path, info in sorted(fs.find(folder, detail=True).items()):
            name = path.rsplit("/", 1)[-1]
            if name.endswith(_SUFFIXES) and not name.startswith((".", "_", _UNIVERSE_STEM)):
                stamp = info.get("mtime") or info.get("LastModified") or info.get("ETag") or ""
                found.append(
                    {
                        "path": path,
                        "name": path[len(folder.rstrip("/")) + 1 :],
                        "size": info.get("size"),
                        "stamp": str(stamp),
                    }
                )
        return found

    def read_file(self, market: str, path: str) -> pl.DataFrame:
        """The file's rows in the daily_prices schema plus `raw` (the text of values that did
        not parse) and `_filed_under` (the row's filing session, see the module's doc);
        RejectedFile (a SourceError) when the file as a whole cannot be used."""
        fs, _ = self._fs_and_dir(market)
        bars = read_landing_file(fs, path, source=self.name)
        return bars.with_columns(_filing_sessions(market, bars["trade_date"], fs, path))

    def _usable_files(self, market: str):
        """(entry, bars) of each landing file that can be read; the others go to `rejected`."""
        self.rejected.clear()
        for entry in self.files(market):
            try:
                yield entry, self.read_file(market, entry["path"])
            except RejectedFile as exc:
                self.rejected[entry["path"]] = str(exc)

    def sessions_in_file(self, market: str, path: str) -> list[dt.date]:
        """The sessions whose runs the file's rows go to (each row to one)."""
        return self.read_file(market, path)[FILED_UNDER].unique().sort().to_list()

    def _universe_file(self, market: str) -> tuple[str, pl.DataFrame] | None:
        fs, folder = self._fs_and_dir(market)
        for suffix in _SUFFIXES:
            path = f"{folder}/{_UNIVERSE_STEM}{suffix}"
            if fs.exists(path):
                frame = read_table_file(fs, path, what="MARKETPIPE_LANDING_URL universe")
                return path, conform(frame, UNIVERSE, what=f"universe file {path!r}")
        return None

    def universe(self, market: str) -> pl.DataFrame:
        self._require_folder(market)
        found = self._universe_file(market)
        if found is not None:
            return found[1]
        bars = self._all_bars(market)
        return (
            bars.group_by("symbol")
            .agg(listing_date=pl.col("trade_date").min())
            .with_columns(name=pl.col("symbol"), delisting_date=pl.lit(None, pl.Date))
            .select(UNIVERSE.names())
            .sort("symbol")
        )

    def session_universe(
        self, market: str, stored: pl.DataFrame | None, bars: pl.DataFrame
    ) -> SessionUniverse:
        """The universe landing `bars` are checked against (landing_files.session_universe)."""
        _, folder = self._fs_and_dir(market)
        return session_universe(market, folder, self._universe_file(market), stored, bars)

    def _all_bars(self, market: str) -> pl.DataFrame:
        frames = [bars for _, bars in self._usable_files(market)]
        return pl.concat(frames).drop(FILED_UNDER) if frames else pl.DataFrame(schema=DAILY_PRICES)

    def daily_bars(
        self, market: str, sessions: Sequence[dt.date], symbols: Sequence[str]
    ) -> pl.DataFrame:
        self._require_folder(market)
        wanted = pl.Series(sorted(set(sessions)), dtype=pl.Date)
        frames = [
            bars.filter(pl.col(FILED_UNDER).is_in(wanted)) for _, bars in self._usable_files(market)
        ]
        if not frames:
            return pl.DataFrame(schema={**DAILY_PRICES, RAW: pl.String})
        return pl.concat(frames).drop(FILED_UNDER)


FILED_UNDER = "_filed_under"


def _filing_sessions(
    market: str, dates: pl.Series, fs: fsspec.AbstractFileSystem, path: str
) -> pl.Series:
    """Per row, the session whose run serves it (see the module's doc)."""
    sessions = all_sessions(market)
    filed = {d: latest_on_or_before(sessions, d) for d in dates.drop_nulls().unique()}
    filed_dates = dates.replace_strict(filed, default=None, return_dtype=pl.Date)
    last = filed_dates.max()
    if last is None:
        last = latest_on_or_before(sessions, _modified_day(market, fs, path))
    return filed_dates.fill_null(last).alias(FILED_UNDER)


def _modified_day(market: str, fs: fsspec.AbstractFileSystem, path: str) -> dt.date:
    """The market-local day the file was last modified (today when the store cannot say)."""
    zone = ZoneInfo(MARKETS[market].timezone)
    try:
        stamp = fs.modified(path)
    except (NotImplementedError, OSError, ValueError):
        return dt.datetime.now(zone).date()
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.UTC)
    return stamp.astimezone(zone).date()
