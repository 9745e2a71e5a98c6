"""A local webhook receiver: real HTTP on 127.0.0.1 that records every POSTed JSON body.

Faults come from FakeProvider's plan, e.g. `server.faults.add(503, times=99)` for a receiver
that is down.
"""

from __future__ import annotations

from .server import FakeProvider, Reply, Request


class FakeWebhook(FakeProvider):
    def handle(self, request: Request) -> Reply:
        return Reply(200, {"ok": True})

    def posts(self, path: str = "/") -> list[Request]:
        """The POSTs received under `path` (faulted ones included: the sender did try)."""
        with self._lock:
            return [r for r in self.requests if r.method == "POST" and r.path.startswith(path)]
