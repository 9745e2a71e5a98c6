"""The trade spool and its flusher: durable and idempotent appends, batches that stay fixed
across restarts, pruning that never drops an unflushed row, and a lake outage (moto's S3 server
stopped and started again) that the flusher rides out without losing or duplicating a trade."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import time

import boto3
import polars as pl
import s3fs
from moto.server import ThreadedMotoServer

from checks.markets import all_sessions, session_bounds
from checks.schemas import TRADES
from resources.collector.flusher import Flusher
from resources.lake import LakeResource
from resources.providers.http import RetryPolicy
from resources.trade_spool import TradeSpool, read_unflushed, spool_path
from tests.conftest import REPO

FAST_RETRY = RetryPolicy(initial=0.05, maximum=0.2, jitter=0.01)


def session_start(market: str = "us") -> dt.datetime:
    day = [d for d in all_sessions(market) if d < dt.date.today()][-1]
    return session_bounds(market, day)[0]


def trades(n: int, *, first: int = 0, price: float = 10.0) -> pl.DataFrame:
    start = session_start()
    return pl.DataFrame(
        {
            "symbol": ["AAPL"] * n,
            "ts": [start + dt.timedelta(seconds=first + i) for i in range(n)],
            "price": [price] * n,
            "size": [1.0] * n,
            "source": ["test"] * n,
            "trade_id": [f"t{first + i}" for i in range(n)],
        },
        schema=TRADES,
    )


def test_append_is_durable_at_return_and_a_replay_inserts_nothing(tmp_path):
    path = tmp_path / "us.sqlite"
    # A process killed right after append returned: its rows are there.
    frame = trades(5).with_columns(pl.col("ts").dt.epoch("ms"), received=pl.lit(0))
    rows = frame.select("trade_id", "symbol", "ts", "price", "size", "source", "received")
    rows = [(*r, None, None) for r in rows.rows()]
    child = (
        f"import os, signal, sys; sys.path.insert(0, {str(REPO)!r})\n"
        "from resources.trade_spool import TradeSpool\n"
        f"assert TradeSpool({str(path)!r}).append_rows({rows!r}) == 5\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run([sys.executable, "-c", child], cwd=REPO)
    assert done.returncode == -9
    spool = TradeSpool(path)
    assert spool.unflushed()["trade_id"].to_list() == [f"t{i}" for i in range(5)]
    assert spool.append(trades(5)) == 0  # the same frame again
    assert spool.append(trades(3, first=4)) == 2  # overlapping: only the new ones
    assert spool.backlog() == 7
    assert spool.unflushed().select(TRADES.names()).equals(trades(7))


def test_a_chosen_batch_stays_the_same_until_it_is_marked_flushed(tmp_path):
    spool = TradeSpool(tmp_path / "us.sqlite")
    spool.append(trades(3))
    assert spool.next_batch(10)["rowid"].to_list() == [1, 2, 3]
    spool.append(trades(4, first=3))
    spool.close()
    spool = TradeSpool(tmp_path / "us.sqlite")  # as after a crash mid-flush
    assert spool.next_batch(10)["rowid"].to_list() == [1, 2, 3]
    spool.mark_flushed(3)
    assert spool.flushed == 3 and spool.unflushed()["rowid"].to_list() == [4, 5, 6, 7]
    assert spool.next_batch(2)["rowid"].to_list() == [4, 5]


def test_prune_drops_only_old_flushed_rows_and_seqs_are_never_reused(tmp_path):
    spool = TradeSpool(tmp_path / "us.sqlite")
    spool.append(trades(4))
    spool.mark_flushed(2)
    later = time.time() + 4 * 86_400
    assert spool.prune(3, now=later) == 2  # rows 3 and 4 are unflushed: kept whatever their age
    assert spool.unflushed()["rowid"].to_list() == [3, 4]
    spool.mark_flushed(4)
    assert spool.prune(3, now=later) == 2
    spool.append(trades(1, first=100))
    assert spool.unflushed()["rowid"].to_list() == [5]  # not 1: it would hide below the mark


def test_read_unflushed_gives_the_valid_trades_not_yet_in_the_lake(tmp_path, monkeypatch):
    monkeypatch.setenv("MARKETPIPE_SPOOL_DIR", str(tmp_path))
    assert read_unflushed("us").equals(pl.DataFrame(schema=TRADES))  # no spool yet
    spool = TradeSpool(spool_path("us"))
    spool.append(pl.concat([trades(3), trades(1, first=3, price=-1.0)]))
    spool.mark_flushed(1)
    assert read_unflushed("us")["trade_id"].to_list() == ["t1", "t2"]
    assert read_unflushed("us").schema == TRADES


def test_a_flush_interrupted_after_its_files_is_redone_under_the_same_names(tmp_path):
    lake = LakeResource(url=str(tmp_path / "lake"))
    spool = TradeSpool(tmp_path / "us.sqlite")
    spool.append(trades(3))
    spool.next_batch(100)  # chosen, files maybe written, then the process died
    spool.append(trades(2, first=3))
    flusher = Flusher(spool.path, lake, "us", retry=FAST_RETRY)
    assert flusher.flush_once(spool) == 3
    assert flusher.flush_once(spool) == 2
    day = session_start().date().isoformat()
    names = sorted(p.name for p in (tmp_path / "lake/trades/market=us" / f"date={day}").iterdir())
    assert names == ["batch-1-3.parquet", "batch-4-5.parquet"]
    assert lake.read_files(f"trades/market=us/date={day}/*.parquet", TRADES).equals(trades(5))


def test_flusher_keeps_the_spool_while_s3_is_down_and_replays_it_in_order(
    s3_server,  # credentials and an empty moto
    tmp_path,
    monkeypatch,
):
    # A server of this test's own, so that it can be stopped and started on the same address.
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
    s3fs.S3FileSystem.clear_instance_cache()
    boto3.client("s3").create_bucket(Bucket="lake")
    lake = LakeResource(url="s3://lake/prefix")
    spool = TradeSpool(tmp_path / "us.sqlite")
    flusher = Flusher(spool.path, lake, "us", retry=FAST_RETRY)
    spool.append(trades(10))
    assert flusher.drain(spool, time.monotonic() + 10)

    server.stop()
    spool.append(trades(10, first=10))
    assert not flusher.drain(spool, time.monotonic() + 1.5)  # S3 down: nothing marked
    assert spool.backlog() == 10 and flusher.stats.failures >= 1
    spool.append(trades(5, first=20))
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()  # back on the same address, with its buckets (moto's state is global)
    try:
        assert flusher.drain(spool, time.monotonic() + 20)
        day = session_start().date().isoformat()
        stored = lake.read_files(f"trades/market=us/date={day}/*.parquet", TRADES)
    finally:
        server.stop()
        s3fs.S3FileSystem.clear_instance_cache()
    assert stored.sort("ts").equals(trades(25))
    assert spool.backlog() == 0
