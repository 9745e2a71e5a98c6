"""Sustained trade ingest: a local Finnhub-format websocket server sends N trades in frames of
1,000 (the real feed batches many trades per frame) as fast as the collector reads them;
`marketpipe collect` runs as its own process and commits every trade to the spool, then flushes
micro-batches to a local lake. Target: >= 50,000 trades/s into the lake with zero loss.

Measured: trades/s from the first subscription to the last trade committed in the spool
(receive) and to the last trade marked flushed into the lake (end to end); loss and duplicates
(sent vs distinct trade ids in the lake after SIGTERM); where the collector's time went (parse,
spool commit, spool read, rules, lake write) from its own summary line.

    python -m bench.trades_ingest [--trades N]   # prints a JSON line
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import REPO

TARGET_PER_S = 50_000
TRADES_PER_FRAME = 1_000
SYMBOLS = [f"S{i:03d}" for i in range(50)]
_TOKEN = "bench-finnhub-token"


def frames(trades: int) -> list[str]:
    from checks.markets import all_sessions, session_bounds
    from tests.fakes.ws_finnhub import finnhub_frame

    day = [d for d in all_sessions("us") if d < dt.date.today()][-1]
    opens, closes = session_bounds("us", day)
    start, span = int(opens.timestamp() * 1000), int((closes - opens).total_seconds() * 1000)
    rng, out = random.Random(0), []
    for first in range(0, trades, TRADES_PER_FRAME):
        data = [
            {"s": SYMBOLS[n % len(SYMBOLS)], "p": round(50 + 100 * rng.random(), 2),
             "t": start + n * span // trades, "v": rng.randint(1, 500), "c": ["1", "12"]}
            for n in range(first, min(trades, first + TRADES_PER_FRAME))
        ]  # fmt: skip
        out.append(finnhub_frame(data))
    return out


def _spool_progress(path: Path) -> tuple[int, int]:
    """(last seq committed, last seq flushed) of the spool, 0 while it does not exist."""
    if not path.exists():
        return 0, 0
    try:
        with sqlite3.connect(path, timeout=5) as db:
            last = db.execute("SELECT max(seq) FROM trades").fetchone()[0] or 0
            row = db.execute("SELECT value FROM state WHERE name = 'flushed'").fetchone()
            return int(last), int(row[0]) if row else 0
    except sqlite3.OperationalError:
        return 0, 0


def run(trades: int = 1_000_000) -> dict:
    import polars as pl

    from checks.schemas import TRADES
    from resources.lake import LakeResource
    from tests.fakes.ws_finnhub import FakeFinnhubWs

    script = frames(trades)
    with (
        tempfile.TemporaryDirectory() as tmp,
        FakeFinnhubWs(_TOKEN, script, SYMBOLS, ping_every=10**9) as server,
    ):
        root = Path(tmp)
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "FINNHUB_API_KEY": _TOKEN,
            "FINNHUB_WS_URL": server.url,
            "MARKETPIPE_LAKE_URL": str(root / "lake"),
            "MARKETPIPE_SPOOL_DIR": str(root / "spool"),
            "MARKETPIPE_TRADE_FLUSH_SECONDS": "1",
        }
        command = [sys.executable, "-m", "marketpipe_assets.collect", "--market", "us",
                   "--source", "finnhub", "--symbols", ",".join(SYMBOLS)]  # fmt: skip
        log = root / "collector.log"
        spool = root / "spool" / "trades" / "us.sqlite"
        collector = subprocess.Popen(command, env=env, stderr=log.open("w"))
        try:
            give_up = time.monotonic() + 120
            while not (server.subscribed and SYMBOLS[-1] in server.subscribed[0]):
                if collector.poll() is not None or time.monotonic() > give_up:
                    raise RuntimeError(f"collector did not subscribe: {log.read_text()[-2000:]}")
                time.sleep(0.01)
            started, received_at = time.perf_counter(), None
            deadline = time.monotonic() + max(120.0, trades / 5_000)
            while time.monotonic() < deadline:
                committed, flushed = _spool_progress(spool)
                if received_at is None and committed >= trades:
                    received_at = time.perf_counter()
                if flushed >= trades:
                    break
                time.sleep(0.02)
            flushed_at = time.perf_counter()
        finally:
            collector.send_signal(signal.SIGTERM)
            code = collector.wait(120)
        text = log.read_text()
        summary = json.loads(text.split("collector stopped: ", 1)[1].splitlines()[0])
        lake = LakeResource(url=str(root / "lake"))
        stored = lake.read_files("trades/market=us/date=*/*.parquet", TRADES)
        quarantined = lake.read_files("quarantine/trades/market=us/date=*/*.parquet", TRADES)
        files = len(list((root / "lake").rglob("*.parquet")))
        spool_mb = sum(f.stat().st_size for f in spool.parent.iterdir()) / 1e6
    distinct = stored["trade_id"].n_unique()
    receive_s = (received_at or flushed_at) - started
    total_s = flushed_at - started
    receive, flush = summary["receive"], summary["flush"]
    stages = {f"receive.{k}": round(v, 2) for k, v in receive["seconds"].items()}
    stages |= {f"flush.{k}": round(v, 2) for k, v in flush["seconds"].items()}
    return {
        "trades_sent": trades,
        "frames": len(script),
        "trades_per_frame": TRADES_PER_FRAME,
        "receive_per_s": round(trades / receive_s),
        "end_to_end_per_s": round(trades / total_s),
        "end_to_end_s": round(total_s, 2),
        "in_lake": stored.height,
        "distinct_in_lake": distinct,
        "lost": trades - distinct,
        "duplicates": stored.height - distinct,
        "quarantined": quarantined.height,
        "lake_files": files,
        "spool_mb": round(spool_mb, 1),
        "collector_seconds": stages,
        "collector_exit_code": code,
        "spool_empty_at_exit": summary["spool_empty"],
        "synchronous": os.environ.get("MARKETPIPE_SPOOL_SYNCHRONOUS", "NORMAL"),
        "target_per_s": TARGET_PER_S,
        "meets_target": trades / total_s >= TARGET_PER_S and distinct == trades,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "polars": pl.__version__,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trades", type=int, default=1_000_000)
    args = parser.parse_args()
    print(json.dumps(run(args.trades)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
