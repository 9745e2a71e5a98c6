"""CSV or parquet files dropped in a landing folder (local or s3): <landing>/<market>/*.csv|parquet.

Each file holds daily bars with at least the daily_prices columns (`source` optional). An
optional `universe.csv` / `universe.parquet` in the same folder is the market's listing;
without one the universe is every symbol seen in the files, listed from its first bar.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import fsspec
import polars as pl

from marketpipe_assets.schemas import DAILY_PRICES, UNIVERSE, conform

from .base import SourceError, SourceUnavailable

_SUFFIXES = (".csv", ".parquet")
_UNIVERSE_STEM = "universe"


def read_table_file(fs: fsspec.AbstractFileSystem, path: str, *, what: str) -> pl.DataFrame:
    """Read one CSV or parquet file; any failure names the file and what to do."""
    try:
        with fs.open(path, "rb") as fh:
            if path.endswith(".parquet"):
                return pl.read_parquet(fh)
            # Tickers are text: inferring KRX codes such as 000010 as integers drops the zeros.
            return pl.read_csv(
                fh,
                try_parse_dates=True,
                infer_schema_length=10_000,
                schema_overrides={"symbol": pl.String},
            )
    except Exception as exc:
        raise SourceError(
            f"{what}: cannot read {path!r} as {path.rsplit('.', 1)[-1]}: {exc}. "
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
                found.append({"path": path, "size": info.get("size"), "stamp": str(stamp)})
        return found

    def read_file(self, market: str, path: str) -> pl.DataFrame:
        fs, _ = self._fs_and_dir(market)
        raw = read_table_file(fs, path, what="MARKETPIPE_LANDING_URL")
        if "source" not in raw.columns:
            raw = raw.with_columns(source=pl.lit(self.name))
        try:
            return conform(raw, DAILY_PRICES, what=f"landing file {path!r}")
        except ValueError as exc:
            raise SourceError(str(exc)) from exc

    def sessions_in_file(self, market: str, path: str) -> list[dt.date]:
        dates = self.read_file(market, path)["trade_date"].drop_nulls().unique().sort()
        return dates.to_list()

    def universe(self, market: str) -> pl.DataFrame:
        self._require_folder(market)
        fs, folder = self._fs_and_dir(market)
        for suffix in _SUFFIXES:
            path = f"{folder}/{_UNIVERSE_STEM}{suffix}"
            if fs.exists(path):
                frame = read_table_file(fs, path, what="MARKETPIPE_LANDING_URL universe")
                return conform(frame, UNIVERSE, what=f"universe file {path!r}")
        bars = self._all_bars(market)
        return (
            bars.group_by("symbol")
            .agg(listing_date=pl.col("trade_date").min())
            .with_columns(name=pl.col("symbol"), delisting_date=pl.lit(None, pl.Date))
            .select(UNIVERSE.names())
            .sort("symbol")
        )

    def _all_bars(self, market: str) -> pl.DataFrame:
        frames = [self.read_file(market, f["path"]) for f in self.files(market)]
        return pl.concat(frames) if frames else pl.DataFrame(schema=DAILY_PRICES)

    def daily_bars(
        self, market: str, sessions: Sequence[dt.date], symbols: Sequence[str]
    ) -> pl.DataFrame:
        self._require_folder(market)
        wanted = set(sessions)
        frames = []
        for entry in self.files(market):
            bars = self.read_file(market, entry["path"])
            last = bars["trade_date"].max()
            # Rows without a date cannot be placed in a session. They travel with the file's
            # last session (date left null) so validation quarantines them instead of losing them.
            keep = pl.col("trade_date").is_in(list(wanted))
            if last in wanted:
                keep = keep | pl.col("trade_date").is_null()
            frames.append(bars.filter(keep))
        return pl.concat(frames) if frames else pl.DataFrame(schema=DAILY_PRICES)
