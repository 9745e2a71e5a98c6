"""The receive loop: connect, subscribe, commit every frame's trades to the spool before
counting them, answer keep-alives, and reconnect with exponential backoff and jitter.

A frame's rows are committed in one transaction before the next frame is read, so a trade the
collector has acknowledged (counted, logged, visible to `read_unflushed`) survives a kill.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass, field

import websockets

from resources.providers.http import RetryPolicy
from resources.trade_spool import TradeSpool

from .feeds import Connection, Feed

logger = logging.getLogger("marketpipe.collector")
# A connection that delivered frames for this long was healthy: the next failure starts the
# backoff from the beginning again.
HEALTHY_SECONDS = 10.0


@dataclass
class ReceiveStats:
    connections: int = 0
    frames: int = 0
    rows: int = 0  # rows parsed (trades and unreadable frames)
    stored: int = 0  # new rows committed
    replayed: int = 0  # rows already in the spool (a frame sent again)
    seconds: dict[str, float] = field(default_factory=lambda: {"parse": 0.0, "spool": 0.0})


class Collector:
    def __init__(self, feed: Feed, spool: TradeSpool, *, retry: RetryPolicy | None = None):
        self.feed, self.spool = feed, spool
        self.retry = retry or RetryPolicy.from_env()
        self.stats = ReceiveStats()
        # connecting, connected, reconnecting or stopped: shown in the progress lines.
        self.state = "starting"
        self._stopping = False
        self._stopped: asyncio.Event | None = None
        self._connection: Connection | None = None

    def stop(self) -> None:
        """Called from a signal handler: end the receive loop, close the socket."""
        self._stopping = True
        if self._stopped is not None:
            self._stopped.set()
        if self._connection is not None:
            asyncio.ensure_future(self._connection.close())

    async def run(self) -> None:
        failures = 0
        self._stopped = asyncio.Event()
        source = self.feed.source
        while not self._stopping:
            started = time.monotonic()
            reason = "the server closed the connection"
            try:
                self.state = "connecting"
                logger.info("%s: connecting", source)
                self._connection = await self.feed.open()
                if self._stopping:
                    await self._connection.close()
                    break
                self.stats.connections += 1
                self.state = "connected"
                logger.info("%s: connected", source)
                for message in self.feed.subscriptions():
                    await self._connection.send(message)
                logger.info("%s: subscribed to %s", source, ", ".join(self.feed.symbols))
                await self._receive(self._connection)
            except (OSError, websockets.WebSocketException, TimeoutError) as exc:
                reason = "connection failed: " + self.feed.redact(f"{type(exc).__name__}: {exc}")
            finally:
                self._connection = None
            if self._stopping:
                break
            failures = 1 if time.monotonic() - started > HEALTHY_SECONDS else failures + 1
            wait = min(
                self.retry.maximum,
                self.retry.initial * 2 ** (failures - 1) + random.uniform(0, self.retry.jitter),
            )
            self.state = "reconnecting"
            logger.warning("%s: reconnecting in %.2f s: %s", source, wait, reason)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), wait)
        self.state = "stopped"

    async def _receive(self, connection: Connection) -> None:
        stats, seconds = self.stats, self.stats.seconds
        async for message in connection:
            received = int(time.time() * 1000)
            t0 = time.perf_counter()
            text = message if isinstance(message, str) else message.decode("utf-8", "replace")
            frame = self.feed.parse(text, received)
            t1 = time.perf_counter()
            if frame.rows:
                new = self.spool.append_rows(frame.rows)  # durable before it counts
                stats.rows += len(frame.rows)
                stats.stored += new
                stats.replayed += len(frame.rows) - new
            seconds["parse"] += t1 - t0
            seconds["spool"] += time.perf_counter() - t1
            stats.frames += 1
            if frame.reply is not None:
                await connection.send(frame.reply)
            if frame.note is not None:
                logger.warning("%s", self.feed.redact(frame.note))
            if self._stopping:
                break
