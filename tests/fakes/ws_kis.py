"""KIS's realtime service on 127.0.0.1: the approval-key endpoint (POST /oauth2/Approval, on a
FakeProvider HTTP server) and the websocket (tests/fakes/ws_finnhub.ScriptedWsServer) speaking
H0STCNT0: JSON subscribe messages carrying the approval key, a JSON acknowledgement, `|`/`^`
trade frames and JSON PINGPONG keep-alives that the client must echo.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable

from tests.fakes.server import FakeProvider, Reply, Request
from tests.fakes.ws_finnhub import ScriptedWsServer

APPROVAL = "/oauth2/Approval"
FIELDS = 46
PINGPONG = '{"header":{"tr_id":"PINGPONG","datetime":"20261120093001"}}'


class FakeKisApproval(FakeProvider):
    def __init__(self, app_key: str, app_secret: str):
        super().__init__()
        self.app_key, self.app_secret = app_key, app_secret
        self.keys: list[str] = []  # approval keys issued

    def handle(self, request: Request) -> Reply:
        if request.method != "POST" or request.path != APPROVAL:
            return Reply(404, {"error": "not found"})
        body = request.body if isinstance(request.body, dict) else {}
        if body.get("appkey") != self.app_key or body.get("secretkey") != self.app_secret:
            return Reply(403, {"error_code": "EGW00103", "error_description": "bad appkey"})
        key = secrets.token_hex(16)
        self.keys.append(key)
        return Reply(200, {"approval_key": key})


class FakeKisWs(ScriptedWsServer):
    def __init__(self, approval: FakeKisApproval, frames: list[str], symbols: Iterable[str], **kw):
        super().__init__(frames, symbols, **kw)
        self.approval = approval

    def subscription(self, message: str) -> str | None:
        try:
            body = json.loads(message)
            key = body["header"]["approval_key"]
            request = body["body"]["input"]
        except (ValueError, KeyError, TypeError):
            return None
        if key not in self.approval.keys or request.get("tr_id") != "H0STCNT0":
            return None
        return request.get("tr_key")

    def acknowledge(self, message: str) -> str | None:
        symbol = json.loads(message)["body"]["input"]["tr_key"]
        return json.dumps(
            {
                "header": {"tr_id": "H0STCNT0", "tr_key": symbol, "encrypt": "N"},
                "body": {"rt_cd": "0", "msg_cd": "OPSP0000", "msg1": "SUBSCRIBE SUCCESS"},
            }
        )

    def ping(self) -> str:
        return PINGPONG

    @property
    def pongs(self) -> int:
        return sum(1 for m in self.messages if m == PINGPONG)


def kis_record(
    symbol: str, day: str, hhmmss: str, price: str, volume: str, cumulative: str
) -> list[str]:
    """The 46 H0STCNT0 fields of one trade; only those the collector reads are meaningful."""
    fields = ["0"] * FIELDS
    fields[0], fields[1], fields[2] = symbol, hhmmss, price
    fields[12], fields[13], fields[33] = volume, cumulative, day
    return fields


def kis_frame(records: list[list[str]], *, encrypted: bool = False) -> str:
    body = "^".join(f for record in records for f in record)
    return f"{1 if encrypted else 0}|H0STCNT0|{len(records):03d}|{body}"
