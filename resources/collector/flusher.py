"""Moves spooled rows to the lake in micro-batches, in spool order, and marks them flushed.

`<lake>/trades/market=<m>/date=<session>/batch-<first seq>-<last seq>.parquet` for clean trades
and the same under `quarantine/trades/` (with `violations`) for the rest. A batch is fixed in the
spool before its files are written (TradeSpool.next_batch), so after a crash or a lake outage the
same rows are written under the same names: replaying a batch replaces its files, never adds
copies. While the lake is unreachable the flusher waits with backoff and jitter and the spool
keeps growing; nothing is marked flushed that is not in the lake.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from marketpipe_assets.schemas import TRADES
from resources.lake import LakeResource
from resources.providers.http import RetryPolicy
from resources.trade_spool import DATASET, TradeSpool

from .rules import QUARANTINE, SESSION, check_trades

logger = logging.getLogger("marketpipe.collector.flusher")
PRUNE_EVERY_SECONDS = 3_600.0


@dataclass
class FlushStats:
    batches: int = 0
    trades: int = 0
    quarantined: int = 0
    failures: int = 0
    seconds: dict[str, float] = field(
        default_factory=lambda: {"read_spool": 0.0, "check": 0.0, "write_lake": 0.0}
    )


class Flusher:
    def __init__(
        self,
        spool_file: str | Path,
        lake: LakeResource,
        market: str,
        *,
        interval: float = 5.0,
        batch_rows: int = 100_000,
        retention_days: float = 3.0,
        retry: RetryPolicy | None = None,
    ):
        self.spool_file, self.lake, self.market = spool_file, lake, market
        self.interval, self.batch_rows, self.retention_days = interval, batch_rows, retention_days
        self.retry = retry or RetryPolicy.from_env()
        self.stats = FlushStats()
        self.stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _timed(self, stage: str, started: float) -> float:
        now = time.perf_counter()
        self.stats.seconds[stage] += now - started
        return now

    def flush_once(self, spool: TradeSpool) -> int:
        """Write the next batch to the lake and mark it flushed; returns its rows (0: none)."""
        started = time.perf_counter()
        batch = spool.next_batch(self.batch_rows)
        if batch.is_empty():
            return 0
        started = self._timed("read_spool", started)
        first, last = int(batch["rowid"][0]), int(batch["rowid"][-1])
        checked = check_trades(batch, self.market)
        started = self._timed("check", started)
        name = f"batch-{first}-{last}.parquet"
        for dataset, frame, columns in (
            (DATASET, checked.clean, TRADES.names()),
            (f"quarantine/{DATASET}", checked.quarantined, QUARANTINE.names()),
        ):
            for (day,), part in frame.partition_by(SESSION, as_dict=True).items():
                relative = f"{dataset}/market={self.market}/date={day.isoformat()}/{name}"
                self.lake.write_file(relative, part.select(c for c in columns if c != SESSION))
        self._timed("write_lake", started)
        spool.mark_flushed(last)
        self.stats.batches += 1
        self.stats.trades += checked.clean.height
        self.stats.quarantined += checked.quarantined.height
        if checked.quarantined.height:
            broken = {k: v for k, v in checked.violation_counts.items() if v}
            logger.warning("quarantined %d rows of spool batch %s: %s", len(batch), name, broken)
        return len(batch)

    def drain(self, spool: TradeSpool, deadline: float) -> bool:
        """Flush until the spool is empty (True) or the deadline (monotonic) passes."""
        failures = 0
        while time.monotonic() < deadline:
            try:
                if self.flush_once(spool) == 0:
                    return True
                failures = 0
            except Exception as exc:  # the lake is down or unwritable: wait, keep the rows
                failures += 1
                self.stats.failures += 1
                wait = self._backoff(failures)
                logger.warning(
                    "lake write failed (attempt %d, %d rows waiting in the spool), retrying in "
                    "%.1f s: %s",
                    failures,
                    spool.backlog(),
                    wait,
                    exc,
                )
                if self.stop.wait(min(wait, max(0.0, deadline - time.monotonic()))):
                    return False
        return False

    def _backoff(self, failures: int) -> float:
        base = self.retry.initial * 2 ** (failures - 1)
        return min(self.retry.maximum, base + random.uniform(0, self.retry.jitter))

    def run(self) -> None:
        spool = TradeSpool(self.spool_file)
        last_prune = 0.0
        try:
            while not self.stop.is_set():
                if time.monotonic() - last_prune > PRUNE_EVERY_SECONDS:
                    pruned = spool.prune(self.retention_days)
                    if pruned:
                        logger.info("pruned %d flushed rows older than %s days", pruned,
                                    self.retention_days)  # fmt: skip
                    last_prune = time.monotonic()
                # Full batches go out back to back; a partial one waits for the interval.
                self.drain(spool, time.monotonic() + self.interval)
                self.stop.wait(self.interval)
        finally:
            spool.close()

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="trade-flusher", daemon=True)
        self._thread.start()

    def finish(self, timeout: float) -> bool:
        """Stop the loop, then flush what is left for up to `timeout` seconds. True when the
        spool is empty; otherwise the rest waits in the spool for the next start."""
        self.stop.set()
        if self._thread is not None:
            self._thread.join()
        self.stop.clear()
        spool = TradeSpool(self.spool_file)
        try:
            return self.drain(spool, time.monotonic() + timeout)
        finally:
            spool.close()
