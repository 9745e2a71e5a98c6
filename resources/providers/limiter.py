"""A sliding-window rate limiter: never more than `requests` starts in any `per_seconds` window.

aiolimiter's leaky bucket lets a full burst through at the start of every window, so a sliding
window can see up to twice the budget; providers count requests per rolling second or minute,
so this limiter keeps the start times of the last `requests` calls and waits for the oldest to
leave the window.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time


class SlidingWindowLimiter:
    def __init__(self, requests: int, per_seconds: float, clock=time.monotonic):
        if requests < 1 or per_seconds <= 0:
            raise ValueError("a rate limit needs requests >= 1 and per_seconds > 0")
        self.requests, self.per_seconds, self._clock = requests, per_seconds, clock
        self._starts: collections.deque[float] = collections.deque()
        # A thread lock, not an asyncio one: one limiter serves every event loop of the process.
        self._lock = threading.Lock()

    def _reserve(self) -> float:
        """Take a slot now if one is free, else return how long to wait."""
        with self._lock:
            now = self._clock()
            while self._starts and now - self._starts[0] >= self.per_seconds:
                self._starts.popleft()
            if len(self._starts) < self.requests:
                self._starts.append(now)
                return 0.0
            return self.per_seconds - (now - self._starts[0])

    async def acquire(self) -> None:
        while (wait := self._reserve()) > 0:
            await asyncio.sleep(wait)


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
