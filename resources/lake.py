"""The parquet lake on fsspec: local disk by default, s3:// through s3fs.

Layout (CONTRACT section 3): <lake>/<dataset>/market=<m>/date=<YYYY-MM-DD>/part-0.parquet and
<lake>/quarantine/<dataset>/... for rejected rows. A partition is exactly one file, replaced
atomically: locally by writing a hidden temp file and renaming it over the old one, on S3 by a
single PUT (an object appears whole or not at all). A failed write leaves the old file in place.
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor

import dagster as dg
import fsspec
import polars as pl
import pyarrow.parquet as pq
from pydantic import PrivateAttr

from marketpipe_assets.schemas import quarantine_schema

PART_FILE = "part-0.parquet"
# Enough concurrent writes to hide S3 latency; local writes are CPU-bound and gain little more.
_WRITE_THREADS = 8


class LakeUnreachable(RuntimeError):
    pass


class LakeResource(dg.ConfigurableResource):
    """Root of the lake: a local path or an s3://bucket/prefix URL (AWS_* variables apply)."""

    url: str = "data/lake"
    _fs: fsspec.AbstractFileSystem | None = PrivateAttr(default=None)
    _root: str = PrivateAttr(default="")

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self.ensure_reachable()

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        if self._fs is None:
            fs, root = fsspec.core.url_to_fs(self.url)
            self._fs, self._root = fs, root.rstrip("/")
        return self._fs

    @property
    def root(self) -> str:
        _ = self.fs
        return self._root

    @property
    def is_local(self) -> bool:
        return "file" in self.fs.protocol or "local" in self.fs.protocol

    def ensure_reachable(self) -> None:
        try:
            if self.is_local:
                self.fs.makedirs(self.root, exist_ok=True)
            else:
                bucket = self.root.split("/", 1)[0]
                if not self.fs.exists(bucket):
                    raise FileNotFoundError(f"bucket {bucket!r} does not exist")
        except Exception as exc:
            raise LakeUnreachable(
                f"MARKETPIPE_LAKE_URL={self.url!r} cannot be reached: {exc}. "
                "Point it at a writable folder or an existing s3://bucket/prefix "
                "(set AWS_ENDPOINT_URL and credentials for S3-compatible servers)."
            ) from exc

    # Paths ----------------------------------------------------------------------------------
    def market_dir(self, dataset: str, market: str) -> str:
        return f"{self.root}/{dataset}/market={market}"

    def partition_file(self, dataset: str, market: str, day: dt.date) -> str:
        return f"{self.market_dir(dataset, market)}/date={day.isoformat()}/{PART_FILE}"

    def uri(self, path: str) -> str:
        return path if self.is_local else f"{self.fs.protocol[0]}://{path}"

    # Writing --------------------------------------------------------------------------------
    def _write_file(self, frame: pl.DataFrame, path: str) -> None:
        if self.is_local:
            directory = os.path.dirname(path)
            os.makedirs(directory, exist_ok=True)
            # Hidden name: globs for *.parquet and hive readers never pick up a half-written file.
            tmp = os.path.join(directory, f".{PART_FILE}.{uuid.uuid4().hex}.tmp")
            try:
                frame.write_parquet(tmp, compression="zstd", statistics=True)
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
        else:
            with self.fs.open(path, "wb") as fh:
                frame.write_parquet(fh, compression="zstd", statistics=True)

    def write_partitions(
        self,
        dataset: str,
        market: str,
        frame: pl.DataFrame,
        days: Iterable[dt.date],
        *,
        date_column: str = "trade_date",
    ) -> int:
        """Replace each of `days`' partitions with the frame's rows of that day (empty if none).

        Returns the number of files written.
        """
        by_day = _split_by_day(frame, date_column)
        empty = frame.clear()
        jobs = [(by_day.get(d, empty), self.partition_file(dataset, market, d)) for d in days]
        self._run_writes(jobs)
        return len(jobs)

    def write_quarantine(
        self,
        dataset: str,
        market: str,
        frame: pl.DataFrame,
        days: Iterable[dt.date],
        *,
        undated: dt.date | None = None,
        date_column: str = "trade_date",
    ) -> int:
        """Replace the quarantine partitions of `days`: rows where any, no file where none.

        Rows without a date are kept unchanged in the `undated` day's file (default: the last
        of `days`).
        """
        qdataset = f"quarantine/{dataset}"
        by_day = _split_by_day(frame, date_column)
        days = list(days)
        if None in by_day:
            nulls, undated = by_day.pop(None), undated or max(days)
            by_day[undated] = pl.concat([by_day[undated], nulls]) if undated in by_day else nulls
        self._run_writes(
            [(by_day[d], self.partition_file(qdataset, market, d)) for d in days if d in by_day]
        )
        stale = (self.existing_days(qdataset, market) & set(days)) - set(by_day)
        for day in stale:
            self.fs.rm(self.partition_file(qdataset, market, day))
        return sum(len(by_day[d]) for d in days if d in by_day)

    def _run_writes(self, jobs: list[tuple[pl.DataFrame, str]]) -> None:
        if len(jobs) <= 1:
            for frame, path in jobs:
                self._write_file(frame, path)
            return
        with ThreadPoolExecutor(_WRITE_THREADS) as pool:
            list(pool.map(lambda job: self._write_file(*job), jobs))

    def write_table(self, dataset: str, market: str, frame: pl.DataFrame) -> str:
        """Replace an unpartitioned table such as the universe."""
        path = f"{self.market_dir(dataset, market)}/{PART_FILE}"
        self._write_file(frame, path)
        return path

    # Reading --------------------------------------------------------------------------------
    def write_file(self, relative: str, frame: pl.DataFrame) -> str:
        """Write one parquet file at `<lake>/<relative>` atomically (datasets made of several
        files per partition, such as micro-batches of trades). Returns its path."""
        path = f"{self.root}/{relative}"
        self._write_file(frame, path)
        return path

    def read_files(self, pattern: str, schema: Mapping[str, pl.DataType]) -> pl.DataFrame:
        """Every parquet file matching `<lake>/<pattern>` (a glob; hidden temp files never
        match), cast to `schema`; none -> an empty frame."""
        paths = sorted(p for p in self.fs.glob(f"{self.root}/{pattern}") if p.endswith(".parquet"))
        if not paths:
            return pl.DataFrame(schema=dict(schema))
        if self.is_local:
            frame = pl.read_parquet(paths, columns=list(schema))
        else:
            frame = pl.from_arrow(pq.read_table(paths, columns=list(schema), filesystem=self.fs))
        return frame.cast(dict(schema)).rechunk()

    def existing_days(self, dataset: str, market: str) -> set[dt.date]:
        try:
            entries = self.fs.ls(self.market_dir(dataset, market), detail=False)
        except FileNotFoundError:
            return set()
        days = set()
        for entry in entries:
            name = entry.rstrip("/").rsplit("/", 1)[-1]
            if name.startswith("date="):
                days.add(dt.date.fromisoformat(name[5:]))
        return days

    def read_partitions(
        self,
        dataset: str,
        market: str,
        schema: Mapping[str, pl.DataType],
        *,
        first: dt.date | None = None,
        last: dt.date | None = None,
        columns: list[str] | None = None,
    ) -> pl.DataFrame:
        """All stored rows of the dataset with first <= date <= last (either bound optional)."""
        days = sorted(
            d
            for d in self.existing_days(dataset, market)
            if (first is None or d >= first) and (last is None or d <= last)
        )
        columns = columns or list(schema)
        if not days:
            return pl.DataFrame(schema={c: schema[c] for c in columns})
        paths = [self.partition_file(dataset, market, d) for d in days]
        if self.is_local:
            # polars reads a list of local files in parallel, ~5x faster than pyarrow here.
            frame = pl.read_parquet(paths, columns=columns)
        else:
            frame = pl.from_arrow(pq.read_table(paths, columns=columns, filesystem=self.fs))
        # One chunk per file otherwise: later numpy and pandas conversions pay for each.
        return frame.cast({c: schema[c] for c in columns}).rechunk()

    def read_table(self, dataset: str, market: str) -> pl.DataFrame | None:
        path = f"{self.market_dir(dataset, market)}/{PART_FILE}"
        if not self.fs.exists(path):
            return None
        with self.fs.open(path, "rb") as fh:
            return pl.read_parquet(fh)

    def read_quarantine(
        self, dataset: str, market: str, schema: Mapping[str, pl.DataType], **bounds
    ) -> pl.DataFrame:
        return self.read_partitions(
            f"quarantine/{dataset}", market, quarantine_schema(pl.Schema(schema)), **bounds
        )


def _split_by_day(frame: pl.DataFrame, date_column: str) -> dict[dt.date, pl.DataFrame]:
    if frame.is_empty():
        return {}
    parts = frame.partition_by(date_column, as_dict=True, maintain_order=True)
    return {key[0]: part for key, part in parts.items()}
