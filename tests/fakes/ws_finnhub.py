"""Websocket servers on 127.0.0.1 that replay a script of trade frames, and Finnhub's.

`ScriptedWsServer` (shared with ws_kis.py): on every connection it waits for the client to
subscribe to all `symbols`, then sends the whole script from its first frame, a keep-alive ping
every `ping_every` frames, and keeps pinging after the script until the client leaves. A client
that reconnects receives the history again, so delivery is at least once and the collector must
make it exactly once. `drop_after` cuts the first connection abruptly after that many frames (a
network failure mid-stream). Everything the server saw is recorded for the tests.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterable
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response


class ScriptedWsServer:
    def __init__(
        self,
        frames: list[str],
        symbols: Iterable[str],
        *,
        pace: float = 0.0,
        ping_every: int = 10,
        drop_after: int | None = None,
        close_with: tuple[int, str] | None = None,
    ):
        self.frames, self.symbols = frames, set(symbols)
        self.pace, self.ping_every, self.drop_after = pace, ping_every, drop_after
        self.close_with = close_with  # hostile: (code, reason) to close with after the script
        self.connections = 0
        self.completed = 0  # connections that received the whole script
        self.subscribed: list[set[str]] = []  # per connection
        self.messages: list[str] = []  # other client messages (pong echoes)
        self.rejected = 0  # connections refused at the handshake
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self.port = 0

    # Per format --------------------------------------------------------------------------
    def authorize(self, request: Request) -> Response | None:
        return None

    def subscription(self, message: str) -> str | None:
        """The symbol a client message subscribes to (None: not a subscription)."""
        raise NotImplementedError

    def acknowledge(self, message: str) -> str | None:
        return None

    def ping(self) -> str:
        raise NotImplementedError

    # Server ------------------------------------------------------------------------------
    def _process_request(self, connection: ServerConnection, request: Request):
        refusal = self.authorize(request)
        if refusal is not None:
            self.rejected += 1
        return refusal

    async def _handler(self, ws: ServerConnection) -> None:
        self.connections += 1
        number, subscribed = self.connections, set()
        self.subscribed.append(subscribed)
        try:
            while not self.symbols <= subscribed:
                message = await asyncio.wait_for(ws.recv(), 10)
                symbol = self.subscription(message)
                if symbol is None:
                    self.messages.append(message)
                    continue
                subscribed.add(symbol)
                ack = self.acknowledge(message)
                if ack is not None:
                    await ws.send(ack)
            reader = asyncio.ensure_future(self._read(ws))
            for i, frame in enumerate(self.frames):
                if number == 1 and i == self.drop_after:
                    ws.transport.abort()  # no close frame: the network failed
                    return
                await ws.send(frame)
                if i % self.ping_every == 0:
                    await ws.send(self.ping())
                if self.pace:
                    await asyncio.sleep(self.pace)
            self.completed += 1
            if self.close_with is not None:
                await ws.close(*self.close_with)
                return
            while True:
                await asyncio.sleep(0.5)
                await ws.send(self.ping())
        except (ConnectionClosed, TimeoutError):
            pass
        finally:
            if "reader" in locals():
                reader.cancel()

    async def _read(self, ws: ServerConnection) -> None:
        async for message in ws:
            self.messages.append(message if isinstance(message, str) else message.decode())

    def _run(self) -> None:
        async def main():
            self._stop = asyncio.Event()
            async with serve(
                self._handler,
                "127.0.0.1",
                0,
                process_request=self._process_request,
                compression=None,
                max_size=2**24,
            ) as server:
                self.port = server.sockets[0].getsockname()[1]
                self._ready.set()
                await self._stop.wait()

        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(main())
        self._loop.close()

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"


class FakeFinnhubWs(ScriptedWsServer):
    """wss://ws.finnhub.io's protocol: `?token=` checked at the handshake (401 otherwise),
    `{"type":"subscribe","symbol":...}` messages, `{"type":"ping"}` keep-alives."""

    def __init__(self, token: str, frames: list[str], symbols: Iterable[str], **options):
        super().__init__(frames, symbols, **options)
        self.token = token

    def authorize(self, request: Request) -> Response | None:
        query = parse_qs(urlsplit(request.path).query)
        if query.get("token") != [self.token]:
            return Response(401, "Unauthorized", _headers(), b"Invalid API key\n")
        return None

    def subscription(self, message: str) -> str | None:
        try:
            body = json.loads(message)
        except ValueError:
            return None
        if isinstance(body, dict) and body.get("type") == "subscribe":
            return body.get("symbol")
        return None

    def ping(self) -> str:
        return '{"type":"ping"}'


def _headers():
    from websockets.datastructures import Headers

    return Headers([("Content-Type", "text/plain")])


def finnhub_frame(trades: list[dict]) -> str:
    """One trade frame as Finnhub sends it: {"type":"trade","data":[{"s","p","t","v","c"}]}."""
    return json.dumps({"type": "trade", "data": trades})
