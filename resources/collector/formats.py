"""Websocket frames of each trade feed -> spool rows (trade_spool.ROW_COLUMNS), and the
subscribe messages. Pure functions: no socket, no clock beyond the arguments.

A frame that cannot be read becomes one row with its `problem` and text; a trade whose fields
cannot be read keeps them null (the rules quarantine it as `required_fields`) with the trade's
text in `raw`. Nothing raises: a bad frame never stops the collector.

Identity (`trade_id`): Finnhub and KIS send no trade id, so it is a hash of the trade's own
fields plus its occurrence among identical trades, never its place in a frame (a server that
re-sends trades after a reconnect batches them differently, and position-based ids stored 1,393
of 4,691 replayed trades twice). Finnhub: source, symbol, ts, price, size, conditions. KIS:
symbol, business date, time, price, size and the day's cumulative volume, which grows with
every trade and so already tells two trades of one second apart.

Why occurrence counting survives a replay. Two genuinely equal trades (same millisecond, price,
size, conditions) are the 1st and 2nd of their kind in the stream. `Occurrences` counts them per
connection, starting again at every connection: a reconnect that re-sends history re-sends
those trades in the same order, so they are again the 1st and 2nd and hash to the ids already
in the spool, which stores nothing new. Across connections the spool thus keeps, per set of
equal trades, the largest count any one connection delivered: a replay never doubles a trade,
and equal trades within a connection are all kept. (What it cannot tell apart: an equal trade
in the very millisecond of a disconnect, sent only to the next connection, while the server
does not re-send the first one; that needs a provider's trade id.) Counters older than
COUNT_HORIZON_MS of trade time behind the newest trade are dropped so memory stays bounded.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from dataclasses import dataclass, field
from functools import cache

from resources.providers.values import SEOUL

FINNHUB, KIS, SYNTHETIC = "finnhub", "kis", "synthetic"
KIS_TRADES = "H0STCNT0"
KIS_PINGPONG = "PINGPONG"
KIS_FIELD_COUNT = 46
# Positions in a H0STCNT0 record (providers.md 5.4).
_SYMBOL, _TIME, _PRICE, _VOLUME, _CUMULATIVE, _BUSINESS_DATE = 0, 1, 2, 12, 13, 33
RAW_LIMIT = 4_000  # characters of a rejected frame kept for the quarantine
# Equal trades share their timestamp, so a counter is needed only while its millisecond can
# still arrive: trades more than this behind the newest one seen are no longer counted apart.
COUNT_HORIZON_MS = 10 * 60 * 1000


class Occurrences:
    """How many times each trade key has been seen on one connection (module doc: why)."""

    def __init__(self) -> None:
        self._windows: dict[int, dict[str, int]] = {}
        self._newest = -1

    def next(self, key: str, ts: int | None) -> int:
        """1 for the first trade with this key, 2 for the second, ..."""
        window = (ts if ts is not None else 0) // COUNT_HORIZON_MS
        counts = self._windows.get(window)
        if counts is None:
            counts = self._windows[window] = {}
            if window > self._newest:
                self._newest = window
                for old in [w for w in self._windows if w < window - 1]:
                    del self._windows[old]
        n = counts.get(key, 0) + 1
        counts[key] = n
        return n


@dataclass
class Frame:
    rows: list[tuple] = field(default_factory=list)
    reply: str | None = None  # to send back (KIS PINGPONG echo)
    note: str | None = None  # a control frame worth a log line


def trade_id(key: str) -> str:
    return hashlib.blake2b(key.encode(), digest_size=8).hexdigest()


def rejected(source: str, text: str, received: int, problem: str) -> Frame:
    """A frame that could not be read: one quarantine row, identified by its text."""
    row = (trade_id(f"{source}\x1fframe\x1f{text}"), None, None, None, None, source, received,
           problem, text[:RAW_LIMIT])  # fmt: skip
    return Frame([row])


# Finnhub -------------------------------------------------------------------------------------
def finnhub_subscribe(symbols: list[str]) -> list[str]:
    return [json.dumps({"type": "subscribe", "symbol": s}) for s in symbols]


def parse_finnhub(
    text: str, received: int, source: str = FINNHUB, seen: Occurrences | None = None
) -> Frame:
    """`seen` counts equal trades across the connection's frames (a new one per frame if None)."""
    try:
        message = json.loads(text)
    except ValueError:
        return rejected(source, text, received, "malformed_json")
    if not isinstance(message, dict):
        return rejected(source, text, received, "not_a_json_object")
    kind = message.get("type")
    if kind == "ping":  # keep-alive; Finnhub documents no reply
        return Frame()
    if kind == "error":
        return Frame(note=f"{source} error frame: {message.get('msg')!r}")
    data = message.get("data")
    if kind != "trade" or not isinstance(data, list):
        return rejected(source, text, received, "not_a_trade_frame")
    seen = seen if seen is not None else Occurrences()
    rows: list[tuple] = []
    blake2b, isfinite = hashlib.blake2b, math.isfinite  # the hot loop: ~1M trades/s
    for trade in data:
        if not isinstance(trade, dict):
            trade = {"unreadable": trade}
        get = trade.get
        s, p, t, v, c = get("s"), get("p"), get("t"), get("v"), get("c")
        symbol = s if type(s) is str and s else None
        price = float(p) if (type(p) is float or type(p) is int) and isfinite(p) else None
        size = float(v) if (type(v) is float or type(v) is int) and isfinite(v) else None
        ts = t if type(t) is int else (int(t) if type(t) is float and t.is_integer() else None)
        key = f"{source}\x1f{s!r}\x1f{t!r}\x1f{p!r}\x1f{v!r}\x1f{c!r}\x1f{get('unreadable')!r}"
        key = f"{key}\x1f{seen.next(key, ts)}"
        tid = blake2b(key.encode(), digest_size=8).hexdigest()
        if symbol is None or price is None or size is None or ts is None:
            rows.append(
                (
                    tid,
                    symbol,
                    ts,
                    price,
                    size,
                    source,
                    received,
                    None,
                    json.dumps(trade)[:RAW_LIMIT],
                )
            )
        else:
            rows.append((tid, symbol, ts, price, size, source, received, None, None))
    return Frame(rows)


# KIS -----------------------------------------------------------------------------------------
def kis_subscribe(approval_key: str, symbols: list[str]) -> list[str]:
    return [
        json.dumps(
            {
                "header": {
                    "approval_key": approval_key,
                    "custtype": "P",
                    "tr_type": "1",
                    "content-type": "utf-8",
                },
                "body": {"input": {"tr_id": KIS_TRADES, "tr_key": s}},
            }
        )
        for s in symbols
    ]


@cache
def _seoul_midnight_ms(day: str) -> int | None:
    try:
        date = dt.datetime.strptime(day, "%Y%m%d").date()
    except ValueError:
        return None
    return int(dt.datetime.combine(date, dt.time(), SEOUL).timestamp()) * 1000


def _kis_ts(day: str, hhmmss: str) -> int | None:
    midnight = _seoul_midnight_ms(day)
    if midnight is None or len(hhmmss) != 6 or not hhmmss.isdigit():
        return None
    h, m, s = int(hhmmss[:2]), int(hhmmss[2:4]), int(hhmmss[4:])
    if h > 23 or m > 59 or s > 59:
        return None
    return midnight + ((h * 60 + m) * 60 + s) * 1000


def _text_number(text: str) -> float | None:
    try:
        value = float(text.replace(",", ""))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def parse_kis(text: str, received: int, today: dt.date, seen: Occurrences | None = None) -> Frame:
    """`today` (Seoul) dates a record without a business date (BSOP_DATE); `seen` as Finnhub's."""
    if text.startswith("{"):
        return _kis_control(text, received)
    parts = text.split("|", 3)
    if len(parts) != 4 or not parts[2].isdigit():
        return rejected(KIS, text, received, "malformed_frame")
    flag, tr_id, count, body = parts[0], parts[1], int(parts[2]), parts[3]
    if flag != "0":
        return rejected(KIS, text, received, "encrypted_frame")
    if tr_id != KIS_TRADES:
        return rejected(KIS, text, received, "unexpected_tr_id")
    fields = body.split("^")
    if count < 1 or len(fields) != count * KIS_FIELD_COUNT:
        return rejected(KIS, text, received, "field_count")
    rows, seen = [], seen if seen is not None else Occurrences()
    fallback_day = today.strftime("%Y%m%d")
    for k in range(count):
        record = fields[k * KIS_FIELD_COUNT : (k + 1) * KIS_FIELD_COUNT]
        day = record[_BUSINESS_DATE] or fallback_day
        ts = _kis_ts(day, record[_TIME])
        symbol = record[_SYMBOL] or None
        price, size = _text_number(record[_PRICE]), _text_number(record[_VOLUME])
        key = "\x1f".join((KIS, record[_SYMBOL], day, record[_TIME], record[_PRICE],
                           record[_VOLUME], record[_CUMULATIVE]))  # fmt: skip
        # The cumulative volume is the trade's sequence number: a record equal to another in it
        # is the same trade sent again. Only without one are equal records counted apart.
        if not record[_CUMULATIVE].strip():
            key = f"{key}\x1f{seen.next(key, ts)}"
        readable = symbol is not None and price is not None and size is not None and ts is not None
        raw = None if readable else "^".join(record)
        rows.append((trade_id(key), symbol, ts, price, size, KIS, received, None, raw))
    return Frame(rows)


def _kis_control(text: str, received: int) -> Frame:
    try:
        message = json.loads(text)
        header = message["header"]
        tr_id = header["tr_id"]
    except (ValueError, KeyError, TypeError):
        return rejected(KIS, text, received, "malformed_json")
    if tr_id == KIS_PINGPONG:
        return Frame(reply=text)  # KIS closes a session whose PINGPONG is not echoed
    body = message.get("body") or {}
    if body.get("rt_cd") not in (None, "0"):
        return Frame(
            note=f"kis refused {tr_id} {header.get('tr_key')}: "
            f"{body.get('msg_cd')} {body.get('msg1')}"
        )
    return Frame()
