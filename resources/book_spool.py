"""The order-book capture spool: durable local files, one per market and capture slot.

`<spool>/order_books/market=<m>/date=<session>/slot=<YYYYMMDDTHHMMSSZ>.parquet`

A slot's file is written once, atomically (temp file, fsync, rename, fsync of the folder), so a
capture killed at any moment leaves either the whole slot or nothing, and a restarted capture
that meets a slot already on disk leaves it alone: no snapshot is lost or stored twice. The
session partition (`<market>/order_books`) compacts a session's slots; the spool keeps them
until retention removes them (default three days), so compaction can be repeated.
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from pathlib import Path

import polars as pl

from checks.schemas import ORDER_BOOK_SNAPSHOTS

DATASET = "order_books"
DEFAULT_SPOOL_DIR = "data/spool"


def spool_dir() -> Path:
    return Path(os.environ.get("MARKETPIPE_SPOOL_DIR") or DEFAULT_SPOOL_DIR)


class BookSpool:
    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else spool_dir()

    def session_dir(self, market: str, day: dt.date) -> Path:
        return self.root / DATASET / f"market={market}" / f"date={day.isoformat()}"

    def slot_file(self, market: str, day: dt.date, slot: dt.datetime) -> Path:
        stamp = slot.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        return self.session_dir(market, day) / f"slot={stamp}.parquet"

    def has(self, market: str, day: dt.date, slot: dt.datetime) -> bool:
        return self.slot_file(market, day, slot).exists()

    def write(self, market: str, day: dt.date, slot: dt.datetime, frame: pl.DataFrame) -> Path:
        """Store one slot's snapshots durably; an existing slot file is replaced whole."""
        path = self.slot_file(market, day, slot)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
        try:
            with open(tmp, "wb") as fh:
                frame.write_parquet(fh, compression="zstd")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
            _fsync_dir(path.parent)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    def slots(self, market: str, day: dt.date) -> list[Path]:
        folder = self.session_dir(market, day)
        return sorted(folder.glob("slot=*.parquet")) if folder.is_dir() else []

    def read(self, market: str, days: list[dt.date]) -> pl.DataFrame:
        """Every captured snapshot of `days`. A snapshot captured twice (a provider's book that
        did not change between two slots) appears once."""
        files = [str(f) for d in days for f in self.slots(market, d)]
        if not files:
            return pl.DataFrame(schema=ORDER_BOOK_SNAPSHOTS)
        frame = pl.read_parquet(files, schema=ORDER_BOOK_SNAPSHOTS)
        return frame.unique(maintain_order=True)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
