"""Moves spooled rows to the lake in micro-batches, in spool order, and marks them flushed.

`<lake>/trades/market=<m>/date=<session>/batch-<first seq>-<last seq>.parquet` for clean trades
and the same under `quarantine/trades/` (with `violations`) for the rest. A batch is fixed in the
spool before its files are written (TradeSpool.next_batch), so after a crash or a lake outage the
same rows are written under the same names: replaying a batch replaces its files, never adds
copies. While the lake is unreachable the flusher waits with backoff and jitter and the spool
keeps growing; nothing is marked flushed that is not in the lake.
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import multiprocessing
import os
import queue
import random
import resource
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from checks.schemas import TRADES
from checks.trade_rules import QUARANTINE, SESSION, check_trades
from resources.lake import LakeResource
from resources.providers.http import RetryPolicy
from resources.trade_spool import DATASET, TradeSpool

logger = logging.getLogger("marketpipe.collector.flusher")
PRUNE_EVERY_SECONDS = 3_600.0
LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"


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
        # Called with the stats after every batch written (the collector's progress lines).
        self.on_batch: Callable[[FlushStats], None] | None = None

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
        if self.on_batch is not None:
            self.on_batch(self.stats)
        if checked.quarantined.height:
            broken = {k: v for k, v in checked.violation_counts.items() if v}
            logger.warning("quarantined %d rows of spool batch %s: %s", len(batch), name, broken)
        return len(batch)

    def drain(self, spool: TradeSpool, deadline: float, *, final: bool = False) -> bool:
        """Flush until the spool is empty (True) or the deadline (monotonic) passes. Backoff
        waits end early when the flusher is stopped, unless this is the final drain."""
        failures = 0
        while time.monotonic() < deadline:
            try:
                if self.flush_once(spool) == 0:
                    return True
                failures = 0
            except Exception as exc:  # the lake is down or unwritable: wait, keep the rows
                failures += 1
                self.stats.failures += 1
                wait = min(self._backoff(failures), max(0.0, deadline - time.monotonic()))
                logger.warning(
                    "lake write failed (attempt %d, %d rows waiting in the spool), retrying in "
                    "%.1f s: %s",
                    failures,
                    spool.backlog(),
                    wait,
                    exc,
                )
                if final:
                    time.sleep(wait)
                elif self.stop.wait(wait):
                    return False
        return False

    def _backoff(self, failures: int) -> float:
        base = self.retry.initial * 2 ** (failures - 1)
        return min(self.retry.maximum, base + random.uniform(0, self.retry.jitter))

    def run(self, drain_seconds: float) -> bool:
        """Flush every `interval` until stopped, then flush what is left for up to
        `drain_seconds`. True when the spool ended empty; otherwise the rest waits in the spool
        for the next start. One flusher per spool at a time (a lock file): two would race on
        the flushed mark."""
        lock = open(f"{self.spool_file}.flush-lock", "w")  # noqa: SIM115 (held for the run)
        fcntl.flock(lock, fcntl.LOCK_EX)
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
                # Everything waiting goes out in full batches; then wait for the next interval.
                self.drain(spool, time.monotonic() + self.interval)
                self.stop.wait(self.interval)
            return self.drain(spool, time.monotonic() + drain_seconds, final=True)
        finally:
            spool.close()
            lock.close()


def _flush_in_child(
    parent: int, lake_url: str, args: tuple, options: dict, stop, results, progress
) -> None:
    """The flusher process: dies with its parent (a SIGKILLed collector leaves no orphan
    flushing behind the next one), leaves signals to the parent, shares its running counts
    (`progress`: batches, trades, quarantined) and reports its stats at the end."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before prctl
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    spool_file, market, drain_seconds = args
    flusher = Flusher(spool_file, LakeResource(url=lake_url), market, **options)
    flusher.stop = stop

    def publish(stats: FlushStats) -> None:
        progress[:] = [stats.batches, stats.trades, stats.quarantined]

    flusher.on_batch = publish
    empty = flusher.run(drain_seconds)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    flusher.stats.seconds["cpu"] = usage.ru_utime + usage.ru_stime
    results.put((empty, asdict(flusher.stats)))


class FlusherProcess:
    """The flusher in a process of its own: reading the spool back and writing parquet would
    otherwise compete with the receive loop for the interpreter lock (measured: BENCHMARKS.md)."""

    def __init__(self, spool_file: Path, lake_url: str, market: str, **options):
        self._context = multiprocessing.get_context("spawn")  # no fork of a threaded process
        self._stop = self._context.Event()
        self._results = self._context.Queue()
        self._progress = self._context.Array("q", 3)  # batches, trades, quarantined so far
        self._spec = (spool_file, lake_url, market, options)
        self.stats: dict = {}
        self._process: multiprocessing.process.BaseProcess | None = None

    def start(self, drain_seconds: float) -> None:
        spool_file, lake_url, market, options = self._spec
        self._process = self._context.Process(
            target=_flush_in_child,
            args=(
                os.getpid(),
                lake_url,
                (spool_file, market, drain_seconds),
                options,
                self._stop,
                self._results,
                self._progress,
            ),  # fmt: skip
            name="trade-flusher",
            daemon=True,
        )
        # Ctrl-C signals the whole process group, and so may a service manager's SIGTERM: the
        # child inherits "ignored" through exec, so such a signal during its start-up (imports,
        # about a second) cannot kill it before it ignores signals itself. The parent's own
        # handlers are set once this returns.
        previous = {
            sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            self._process.start()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    @property
    def progress(self) -> dict[str, int]:
        """What the flusher has written to the lake so far: batches, trades, quarantined rows."""
        batches, trades, quarantined = self._progress[:]
        return {"batches": batches, "trades": trades, "quarantined": quarantined}

    def finish(self) -> bool:
        """Stop it and wait for its final drain; True when the spool ended empty."""
        self._stop.set()
        assert self._process is not None
        while True:
            try:
                empty, self.stats = self._results.get(timeout=1.0)
                break
            except queue.Empty:
                if not self._process.is_alive():
                    logger.error("the flusher process died (exit code %s); the spool keeps "
                                 "its rows for the next start", self._process.exitcode)  # fmt: skip
                    return False
        self._process.join()
        return empty
