"""The collector's durable spool of trades: one SQLite file per market, in WAL mode.

`<MARKETPIPE_SPOOL_DIR>/trades/<market>.sqlite`. Every received trade (and every frame that could
not be read, with its problem) is committed here before the collector counts it as received, so a
collector killed at any moment loses nothing it acknowledged. A trade's identity (`trade_id`) is
unique, so a frame the provider sends again inserts nothing twice. The flusher moves rows to the
lake in `seq` order and remembers the last flushed `seq`; the batch being flushed is recorded
before its files are written, so a flush interrupted by a crash is redone with exactly the same
rows and file names (idempotent), never merged into a different batch.

Durability: `synchronous=NORMAL` by default. In WAL mode a committed transaction survives the
process being killed (SIGKILL, OOM, a redeploy), the failure this spool exists for; only a power
loss or kernel crash can roll back the last commits before the next checkpoint. FULL (an fsync per
commit) closes that gap too, at a measured cost (BENCHMARKS.md); set MARKETPIPE_SPOOL_SYNCHRONOUS.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from checks.errors import ConfigurationError
from checks.schemas import TRADES, make_schema
from resources.book_spool import spool_dir

DATASET = "trades"
SYNCHRONOUS_VARIABLE = "MARKETPIPE_SPOOL_SYNCHRONOUS"
# The columns of one spooled row, in the order append_rows takes them. `problem` names why a
# frame could not be read (its trade columns are then null and `raw` holds the frame).
ROW_COLUMNS = ("trade_id", "symbol", "ts", "price", "size", "source", "received", "problem", "raw")
SPOOL = make_schema(
    {
        "rowid": pl.Int64,
        **TRADES,
        "received": pl.Datetime("ms", "UTC"),
        "problem": pl.String,
        "raw": pl.String,
    }
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS trades (
    -- AUTOINCREMENT: a seq is never reused, even after pruning empties the table, so nothing
    -- new can land below the flushed mark.
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    trade_id TEXT NOT NULL,
    symbol TEXT,
    ts INTEGER,          -- epoch milliseconds, UTC
    price REAL,
    size REAL,
    source TEXT NOT NULL,
    received INTEGER NOT NULL,  -- epoch milliseconds, UTC
    problem TEXT,
    raw TEXT
);
-- The identity is trade_id alone (ts is part of its hash); leading with ts keeps inserts near the
-- end of the index, 3-4x cheaper than scattering random hashes over it.
CREATE UNIQUE INDEX IF NOT EXISTS trades_identity ON trades (ifnull(ts, -1), trade_id);
CREATE TABLE IF NOT EXISTS state (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
_INSERT = f"INSERT OR IGNORE INTO trades ({', '.join(ROW_COLUMNS)}) VALUES ({', '.join('?' * 9)})"
_SELECT = f"SELECT seq, {', '.join(ROW_COLUMNS)} FROM trades"


def spool_path(market: str, root: str | Path | None = None) -> Path:
    return Path(root if root is not None else spool_dir()) / DATASET / f"{market}.sqlite"


def _synchronous() -> str:
    raw = os.environ.get(SYNCHRONOUS_VARIABLE, "").strip().upper() or "NORMAL"
    if raw not in ("NORMAL", "FULL"):
        raise ConfigurationError(f"{SYNCHRONOUS_VARIABLE}={raw!r}: use NORMAL or FULL")
    return raw


class TradeSpool:
    """One connection to a market's spool. Use one instance per thread."""

    def __init__(self, path: str | Path, *, synchronous: str | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous or _synchronous()}")
        self._db.execute("PRAGMA busy_timeout=10000")  # the flusher and receiver share the file
        self._db.execute("PRAGMA cache_size=-65536")  # 64 MiB: the identity index stays in memory
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    # Writing --------------------------------------------------------------------------------
    def append_rows(self, rows: Sequence[tuple]) -> int:
        """Commit rows (ROW_COLUMNS order); durable on return. Returns how many were new (a
        replayed trade is ignored)."""
        if not rows:
            return 0
        before = self._db.total_changes
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany(_INSERT, rows)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return self._db.total_changes - before

    def append(self, frame: pl.DataFrame) -> int:
        """append_rows for a frame with the TRADES columns (and optionally received, problem,
        raw; received defaults to now)."""
        now = int(time.time() * 1000)
        out = frame.with_columns(
            pl.col("ts").dt.epoch("ms"),
            received=(
                pl.col("received").dt.epoch("ms") if "received" in frame.columns else pl.lit(now)
            ),
            problem=pl.col("problem") if "problem" in frame.columns else pl.lit(None, pl.String),
            raw=pl.col("raw") if "raw" in frame.columns else pl.lit(None, pl.String),
        )
        return self.append_rows(out.select(ROW_COLUMNS).rows())

    # Reading and flushing -------------------------------------------------------------------
    def _state(self, name: str) -> int | None:
        row = self._db.execute("SELECT value FROM state WHERE name = ?", (name,)).fetchone()
        return None if row is None else int(row[0])

    @property
    def flushed(self) -> int:
        """The last seq in the lake (0: none)."""
        return self._state("flushed") or 0

    def _frame(self, where: str, params: tuple, limit: int = -1) -> pl.DataFrame:
        query = f"{_SELECT} WHERE {where} ORDER BY seq LIMIT ?"
        rows = self._db.execute(query, (*params, limit)).fetchall()
        ints = {"ts": pl.Int64, "received": pl.Int64}
        schema = make_schema({"rowid": pl.Int64, **{c: SPOOL[c] for c in ROW_COLUMNS}, **ints})
        # Rows straight into polars: it walks the tuples natively, no transposition in Python.
        frame = pl.DataFrame(rows, schema=schema, orient="row").select(SPOOL.names())
        return frame.with_columns(pl.col(c).cast(pl.Datetime("ms", "UTC")) for c in ints)

    def unflushed(self, limit: int | None = None) -> pl.DataFrame:
        """Rows not yet in the lake, in seq order: SPOOL columns (TRADES plus rowid)."""
        return self._frame("seq > ?", (self.flushed,), -1 if limit is None else limit)

    def next_batch(self, limit: int) -> pl.DataFrame:
        """The next rows to flush. A batch once chosen stays the same until mark_flushed, even
        across restarts, so its lake files are rewritten with the same rows and names."""
        first, last = self._state("pending_first"), self._state("pending_last")
        if first is not None and last is not None:
            return self._frame("seq BETWEEN ? AND ?", (first, last))
        batch = self.unflushed(limit)
        if not batch.is_empty():
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "INSERT OR REPLACE INTO state VALUES (?, ?)",
                [("pending_first", batch["rowid"][0]), ("pending_last", batch["rowid"][-1])],
            )
            self._db.execute("COMMIT")
        return batch

    def mark_flushed(self, max_rowid: int) -> None:
        self._db.execute("BEGIN IMMEDIATE")
        self._db.execute("INSERT OR REPLACE INTO state VALUES ('flushed', ?)", (max_rowid,))
        self._db.execute("DELETE FROM state WHERE name IN ('pending_first', 'pending_last')")
        self._db.execute("COMMIT")

    def backlog(self) -> int:
        row = self._db.execute("SELECT count(*) FROM trades WHERE seq > ?", (self.flushed,))
        return int(row.fetchone()[0])

    def prune(self, retention_days: float, *, now: float | None = None) -> int:
        """Delete flushed rows received more than `retention_days` ago; unflushed rows stay
        whatever their age (the spool is their only copy). Returns rows deleted."""
        cutoff = int(((now or time.time()) - retention_days * 86_400) * 1000)
        before = self._db.total_changes
        self._db.execute(
            "DELETE FROM trades WHERE seq <= ? AND received < ?", (self.flushed, cutoff)
        )
        return self._db.total_changes - before


def read_unflushed(market: str, root: str | Path | None = None) -> pl.DataFrame:
    """The market's valid trades still only in the spool (TRADES columns), so that answers
    include the freshest minute; empty when there is no spool. Rows the flusher will quarantine
    are left out, as they will be from the lake."""
    from checks.trade_rules import check_trades

    path = spool_path(market, root)
    if not path.exists():
        return pl.DataFrame(schema=TRADES)
    spool = TradeSpool(path)
    try:
        batch = spool.unflushed()
    finally:
        spool.close()
    return check_trades(batch, market).clean.select(TRADES.names())
