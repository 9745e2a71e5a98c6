"""A sliding-window rate limiter: never more than `requests` requests in any `per_seconds` window,
as the provider counts them.

aiolimiter's leaky bucket lets a full burst through at the start of every window, so a sliding
window can see up to twice the budget. Counting start times is not enough either: a request
reaches the provider some time after it is let go (connection set-up, the event loop serving
the others), while the next one may go out at once over a kept-alive connection, so the
provider would see more than the budget in one of its windows. Each request therefore holds its
slot until its reply is in, and the slot is free again `per_seconds` after that: any two
requests sharing a slot then arrive at least `per_seconds` apart, whatever the network did.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
from collections.abc import AsyncIterator


class SlidingWindowLimiter:
    def __init__(self, requests: int, per_seconds: float, clock=time.monotonic):
        if requests < 1 or per_seconds <= 0:
            raise ValueError("a rate limit needs requests >= 1 and per_seconds > 0")
        self.requests, self.per_seconds, self._clock = requests, per_seconds, clock
        self._ends: collections.deque[float] = collections.deque()  # finish times, oldest first
        self._in_flight = 0
        # A thread lock, not an asyncio one: one limiter serves every event loop of the process.
        self._lock = threading.Lock()

    def _reserve(self) -> float:
        """Take a slot now if one is free, else return how long to wait before asking again."""
        with self._lock:
            now = self._clock()
            while self._ends and now - self._ends[0] >= self.per_seconds:
                self._ends.popleft()
            if len(self._ends) + self._in_flight < self.requests:
                self._in_flight += 1
                return 0.0
            # Every slot in flight: none can be free sooner than a whole window from now.
            return self.per_seconds - (now - self._ends[0]) if self._ends else self.per_seconds

    def _release(self) -> None:
        with self._lock:
            self._in_flight -= 1
            self._ends.append(self._clock())

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold a slot for one request: `async with limiter.slot(): response = await ...`."""
        while (wait := self._reserve()) > 0:
            await asyncio.sleep(wait)
        try:
            yield
        finally:
            self._release()

    async def acquire(self) -> None:
        """Take a slot counted from now, for a caller that cannot say when its request ended."""
        async with self.slot():
            pass


_SHARED: dict[tuple[str, str], SlidingWindowLimiter] = {}
_SHARED_LOCK = threading.Lock()


def shared_limiter(provider: str, credential_id: str, requests: int, per_seconds: float):
    """One limiter per provider and credential in this process, shared by every request."""
    with _SHARED_LOCK:
        key = (provider, credential_id)
        limiter = _SHARED.get(key)
        if limiter is None or (limiter.requests, limiter.per_seconds) != (requests, per_seconds):
            limiter = _SHARED[key] = SlidingWindowLimiter(requests, per_seconds)
        return limiter
