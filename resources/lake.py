"""The parquet lake on fsspec: local disk by default, s3:// through s3fs.

Layout (CONTRACT section 3): <lake>/<dataset>/market=<m>/date=<YYYY-MM-DD>/part-0.parquet and
<lake>/quarantine/<dataset>/... for rejected rows. Stored and quarantine files of a run are
written, audited and published together (write-audit-publish, resources/publishing.py): staged
under <lake>/_staging/, judged by the run's blocking checks, then moved into place under one
journal, so marketpipe's readers see a partition's old pair of files or its new pair, never one
of each. Single files (the universe, trade batches, the failure log) are replaced atomically
on their own: locally a hidden temp file renamed over the old one, on S3 a single PUT.
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import cast

import dagster as dg
import fsspec
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import PrivateAttr

from checks.schemas import quarantine_schema

from . import publishing
from .publishing import Batch

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
        return f"{self.root}/{partition_path(dataset, market, day)}"

    def uri(self, path: str) -> str:
        return path if self.is_local else f"{self.fs.protocol[0]}://{path}"

    # Writing single files -------------------------------------------------------------------
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
            self._put_parquet(frame, path)

    def _put_parquet(self, frame: pl.DataFrame, path: str) -> None:
        """A file nothing reads yet (staged) or an S3 object (one PUT: whole or absent)."""
        if self.is_local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            frame.write_parquet(path, compression="zstd", statistics=True)
        else:
            with self.fs.open(path, "wb") as fh:
                frame.write_parquet(fh, compression="zstd", statistics=True)

    def _run_writes(self, jobs: list[tuple[pl.DataFrame, str]]) -> None:
        if len(jobs) <= 1:
            for frame, path in jobs:
                self._put_parquet(frame, path)
            return
        with ThreadPoolExecutor(_WRITE_THREADS) as pool:
            list(pool.map(lambda job: self._put_parquet(*job), jobs))

    def write_table(self, dataset: str, market: str, frame: pl.DataFrame) -> str:
        """Replace an unpartitioned table such as the universe."""
        path = f"{self.market_dir(dataset, market)}/{PART_FILE}"
        self._write_file(frame, path)
        return path

    def write_file(self, relative: str, frame: pl.DataFrame) -> str:
        """Write one parquet file at `<lake>/<relative>` atomically (datasets made of several
        files per partition, such as micro-batches of trades). Returns its path."""
        path = f"{self.root}/{relative}"
        self._write_file(frame, path)
        return path

    # Write-audit-publish ---------------------------------------------------------------------
    def stage(
        self,
        run_id: str,
        dataset: str,
        market: str,
        stored: pl.DataFrame,
        quarantined: pl.DataFrame | None,
        days: Iterable[dt.date],
        *,
        date_column: str = "trade_date",
        quarantine_date_column: str | None = None,
        undated: dt.date | None = None,
    ) -> Batch:
        """Stage the replacement of `days`' partitions of `dataset` and of its quarantine: each
        day's stored rows (an empty file if none) and quarantined rows (rows where any, no file
        where none; rows without a date go, as they are, to `undated`, default the last day).
        `quarantined=None`: a dataset without quarantine. `quarantine_date_column` (default
        `date_column`) names the day a quarantined row is filed under, which for a row dated off
        the run's sessions is not its own date. Nothing is visible until publish()."""
        days = list(days)
        files = partition_files(dataset, market, stored, days, date_column)
        deletes: list[str] = []
        if quarantined is not None:
            changes = self._quarantine_changes(
                dataset, market, quarantined, days, quarantine_date_column or date_column, undated
            )
            files.update(changes[0])
            deletes = changes[1]
        return self.stage_files(run_id, dataset, market, files, deletes)

    def stage_files(
        self,
        run_id: str,
        dataset: str,
        market: str,
        files: Mapping[str, pl.DataFrame],
        deletes: Iterable[str] = (),
        *,
        into: Batch | None = None,
    ) -> Batch:
        """Stage `files` (path relative to the lake -> rows) and the published files to remove,
        as a new batch or added to `into`. A failed write removes what this batch staged."""
        batch = into or publishing.new_batch(run_id, dataset, market)
        try:
            self._run_writes(
                [(frame, f"{self.root}/{batch.staged(rel)}") for rel, frame in files.items()]
            )
        except BaseException:
            publishing.discard(self.fs, self.root, batch)
            raise
        return batch.including(files, deletes)

    def publish(self, batch: Batch) -> None:
        """Move the staged batch into place as one journaled step (rolled forward by recover()
        if this process dies half-way); first finishes any publish a crashed process left."""
        self.recover()
        publishing.publish(self.fs, self.root, self.is_local, batch)

    def reject(self, batch: Batch, reason: str) -> str:
        """Keep a batch that failed its audit under <lake>/_rejected/<dataset>/market=<m>/
        <UTC time>-<run id>/ (its files at the paths they would have had, plus _reason.json);
        returns that folder's URI. Published partitions are not touched."""
        return self.uri(publishing.reject(self.fs, self.root, self.is_local, batch, reason))

    def recover(self) -> int:
        """Roll forward every publish a crashed process left half-done (one listing when there
        is none); returns how many were finished."""
        return publishing.recover(self.fs, self.root, self.is_local)

    def sweep_staging(
        self,
        *,
        older_than: dt.timedelta = publishing.STALE_AFTER,
        now: dt.datetime | None = None,
        dry_run: bool = False,
    ) -> list[str]:
        """Remove staged batches abandoned before `now - older_than` (never one a journal still
        names) and hidden `.tmp` files as old; returns their URIs."""
        now = now or dt.datetime.now(dt.UTC)
        stale = publishing.stale(self.fs, self.root, self.is_local, now - older_than)
        if not dry_run:
            for path in stale:
                self.fs.rm(path, recursive=True)
        return [self.uri(p) for p in stale]

    def write_partitions(
        self,
        dataset: str,
        market: str,
        frame: pl.DataFrame,
        days: Iterable[dt.date],
        *,
        date_column: str = "trade_date",
    ) -> int:
        """Replace each of `days`' partitions with the frame's rows of that day (empty if none),
        all published together, with no audit. Returns the number of files written."""
        files = partition_files(dataset, market, frame, list(days), date_column)
        self.publish(self.stage_files("", dataset, market, files))
        return len(files)

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
        """Replace only the quarantine partitions of `days` (see stage()), with no audit.
        Returns the number of rows written."""
        days = list(days)
        files, deletes = self._quarantine_changes(
            dataset, market, frame, days, date_column, undated
        )
        self.publish(self.stage_files("", dataset, market, files, deletes))
        return len(frame)

    def _quarantine_changes(
        self,
        dataset: str,
        market: str,
        frame: pl.DataFrame,
        days: list[dt.date],
        date_column: str,
        undated: dt.date | None,
    ) -> tuple[dict[str, pl.DataFrame], list[str]]:
        """Quarantine files of `days` (rows where any) and those to remove (no rows any more);
        rows without a date are kept unchanged in the `undated` day's file (default: the last
        of `days`)."""
        qdataset = f"quarantine/{dataset}"
        by_day = _split_by_day(frame, date_column)
        if None in by_day:
            nulls, undated = by_day.pop(None), undated or max(days)
            by_day[undated] = pl.concat([by_day[undated], nulls]) if undated in by_day else nulls
        files = {partition_path(qdataset, market, d): by_day[d] for d in days if d in by_day}
        emptied = (self.existing_days(qdataset, market) & set(days)) - set(by_day)
        return files, [partition_path(qdataset, market, d) for d in sorted(emptied)]

    # Reading --------------------------------------------------------------------------------
    def read_files(
        self, pattern: str, schema: Mapping[str, pl.DataType], *, batch: Batch | None = None
    ) -> pl.DataFrame:
        """Every parquet file matching `<lake>/<pattern>` (a glob; hidden temp files never
        match), cast to `schema`; none -> an empty frame. With `batch`: its staged files."""
        if batch is None:
            self.recover()
        where = pattern if batch is None else batch.staged(pattern)
        paths = sorted(p for p in self.fs.glob(f"{self.root}/{where}") if p.endswith(".parquet"))
        if not paths:
            return pl.DataFrame(schema=dict(schema))
        if self.is_local:
            frame = pl.read_parquet(paths, columns=list(schema))
        else:
            frame = from_arrow_table(pq.read_table(paths, columns=list(schema), filesystem=self.fs))
        return frame.cast({c: schema[c] for c in schema}).rechunk()

    def existing_days(self, dataset: str, market: str) -> set[dt.date]:
        self.recover()
        return self._existing_days(dataset, market)

    def _existing_days(self, dataset: str, market: str) -> set[dt.date]:
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
            frame = from_arrow_table(pq.read_table(paths, columns=columns, filesystem=self.fs))
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


def partition_path(dataset: str, market: str, day: dt.date) -> str:
    """A partition's file, relative to the lake root."""
    return f"{dataset}/market={market}/date={day.isoformat()}/{PART_FILE}"


def partition_files(
    dataset: str, market: str, frame: pl.DataFrame, days: list[dt.date], date_column: str
) -> dict[str, pl.DataFrame]:
    """Each day's file with the frame's rows of that day (an empty frame when none)."""
    by_day, empty = _split_by_day(frame, date_column), frame.clear()
    return {partition_path(dataset, market, d): by_day.get(d, empty) for d in days}


def _split_by_day(frame: pl.DataFrame, date_column: str) -> dict[dt.date | None, pl.DataFrame]:
    """The frame's rows by day; rows without a date under None."""
    if frame.is_empty():
        return {}
    parts = frame.partition_by(date_column, as_dict=True, maintain_order=True)
    return {key[0]: part for key, part in parts.items()}


def from_arrow_table(table: pa.Table) -> pl.DataFrame:
    """pl.from_arrow of a pyarrow Table, which is a DataFrame (pyarrow has no type hints, so
    mypy cannot pick that overload and sees DataFrame | Series)."""
    return cast(pl.DataFrame, pl.from_arrow(table))
