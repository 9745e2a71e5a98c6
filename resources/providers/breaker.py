"""Circuit breaker per provider (seed 000): 5 failures open it for 60 s, then one probe."""

from __future__ import annotations

import threading
import time

from .errors import ProviderDown

FAILURE_THRESHOLD = 5
OPEN_SECONDS = 60.0


class CircuitBreaker:
    CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"

    def __init__(
        self,
        provider: str,
        threshold: int = FAILURE_THRESHOLD,
        open_seconds: float = OPEN_SECONDS,
        clock=time.monotonic,
    ):
        self.provider, self.threshold, self.open_seconds = provider, threshold, open_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self.state, self.failures, self._opened_at = self.CLOSED, 0, 0.0
        self._probing = False

    def before_call(self, where: str | None = None) -> None:
        """Raise ProviderDown fast while open; let exactly one probe through when half-open.

        The caller that gets through while half-open owns the probe and must end it with
        record_success, record_failure or release. `where` names the call in the error.
        """
        where = where or self.provider
        with self._lock:
            if self.state == self.OPEN:
                remaining = self.open_seconds - (self._clock() - self._opened_at)
                if remaining > 0:
                    raise ProviderDown(
                        f"{where}: circuit open after {self.failures} consecutive "
                        f"failures; next probe in {remaining:.0f} s"
                    )
                self.state, self._probing = self.HALF_OPEN, False
            if self.state == self.HALF_OPEN:
                if self._probing:
                    raise ProviderDown(f"{where}: circuit half-open, probe in flight")
                self._probing = True

    def record_success(self) -> None:
        with self._lock:
            self.state, self.failures, self._probing = self.CLOSED, 0, False

    def release(self) -> None:
        """The call ended without a verdict (cancelled): the next caller may probe."""
        with self._lock:
            self._probing = False

    def record_failure(self) -> None:
        with self._lock:
            self.failures += 1
            if self.state == self.HALF_OPEN or self.failures >= self.threshold:
                self.state, self._opened_at, self._probing = self.OPEN, self._clock(), False


_SHARED: dict[str, CircuitBreaker] = {}
_SHARED_LOCK = threading.Lock()


def shared_breaker(provider: str) -> CircuitBreaker:
    with _SHARED_LOCK:
        return _SHARED.setdefault(provider, CircuitBreaker(provider))
