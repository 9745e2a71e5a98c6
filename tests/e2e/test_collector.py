"""The trade collector: frame parsers and ingest rules as plain functions, then `marketpipe
collect` as a real subprocess against a local websocket server in each format (Finnhub, KIS),
killed with SIGKILL at a random moment, restarted while the lake is away, and stopped with
SIGTERM once the lake is back: every valid trade sent is in the lake exactly once, every broken
one in quarantine with its reason, and the API key appears in no log line."""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from checks.markets import all_sessions, session_bounds
from checks.schemas import TRADE_AGGREGATES, TRADES
from checks.trade_rules import QUARANTINE, check_trades
from marketpipe_assets.automation import RANGE_END_TAG, RANGE_START_TAG
from marketpipe_assets.trade_aggregates import trade_aggregates_asset
from marketpipe_assets.trade_hours import hour_key
from resources.collector.formats import parse_finnhub, parse_kis
from resources.lake import LakeResource
from resources.trade_spool import ROW_COLUMNS, SPOOL
from tests.conftest import REPO
from tests.fakes.ws_finnhub import FakeFinnhubWs, finnhub_frame
from tests.fakes.ws_kis import PINGPONG, FakeKisApproval, FakeKisWs, kis_frame, kis_record

RECEIVED = 1_700_000_000_000
TOKEN = "fh-secret-token-8c1f"
APP_KEY, APP_SECRET = "PSkisappkey0001", "kis-app-secret/=+42"


def last_session(market: str) -> dt.date:
    today = dt.date.today()
    return [d for d in all_sessions(market) if d < today][-1]


def ms(moment: dt.datetime) -> int:
    return int(moment.timestamp() * 1000)


def as_frame(rows: list[tuple]) -> pl.DataFrame:
    """Parsed rows as the spool returns them (SPOOL columns)."""
    data = dict(zip(ROW_COLUMNS, zip(*rows, strict=True), strict=True))
    schema = {c: SPOOL[c] for c in ROW_COLUMNS} | {"ts": pl.Int64, "received": pl.Int64}
    frame = pl.DataFrame(data, schema=schema, strict=False)
    frame = frame.with_columns(rowid=pl.int_range(1, len(rows) + 1, dtype=pl.Int64))
    return frame.with_columns(pl.col("ts", "received").cast(pl.Datetime("ms", "UTC")))


# Parsers ---------------------------------------------------------------------------------------
def test_finnhub_frame_trades_and_the_unreadable_ones():
    text = finnhub_frame(
        [
            {"s": "AAPL", "p": 129.58, "t": 1672348887666, "v": 1, "c": ["1", "24", "12"]},
            {"s": "AAPL", "p": 129.58, "t": 1672348887666, "v": 1, "c": ["1", "24", "12"]},
            {"s": "TSLA", "p": "abc", "t": 1672348887195, "v": 1},
            {"s": "TSLA", "p": True, "t": 1672348887195, "v": 1},
            {"s": "MSFT", "p": 1.0, "t": 1672348887195.0, "v": 2.5, "c": None},
        ]
    )
    frame = parse_finnhub(text, RECEIVED)
    ids, symbols, ts, prices = ([r[i] for r in frame.rows] for i in range(4))
    assert symbols == ["AAPL", "AAPL", "TSLA", "TSLA", "MSFT"]
    # Two equal trades at different positions of a frame are two trades; the same frame again
    # gives the same ids.
    assert len(set(ids)) == 5
    assert [r[0] for r in parse_finnhub(text, RECEIVED + 5).rows] == ids
    assert prices == [129.58, 129.58, None, None, 1.0]  # a string or a bool is no price
    assert ts[4] == 1672348887195
    assert json.loads(frame.rows[2][8]) == {"s": "TSLA", "p": "abc", "t": 1672348887195, "v": 1}
    assert frame.rows[0][8] is None


def test_finnhub_control_and_malformed_frames():
    assert parse_finnhub('{"type":"ping"}', RECEIVED).rows == []
    assert "no such symbol" in parse_finnhub('{"type":"error","msg":"no such symbol"}', 0).note
    for text, problem in [
        ('{"type":"trade","data":[{"s":"AAPL"', "malformed_json"),
        ("[1, 2]", "not_a_json_object"),
        ('{"type":"news"}', "not_a_trade_frame"),
    ]:
        (row,) = parse_finnhub(text, RECEIVED).rows
        assert row[7] == problem and row[8] == text and row[1] is None
    # NaN is valid to Python's json but no price: it would pass `price > 0` in polars.
    row = parse_finnhub('{"type":"trade","data":[{"s":"A","p":NaN,"t":1,"v":1}]}', 0).rows[0]
    assert row[3] is None


def test_kis_frames_pingpong_and_acknowledgements():
    day = "20261120"
    records = [
        kis_record("005930", day, "093001", "71000", "12", "1000"),
        kis_record("005930", day, "093001", "71000", "12", "1012"),  # same second, next trade
        kis_record("000660", "", "153000", "abc", "3", "50"),  # no date: today's; bad price
    ]
    frame = parse_kis(kis_frame(records), RECEIVED, dt.date(2026, 11, 19))
    seoul_0930 = dt.datetime(2026, 11, 20, 9, 30, 1, tzinfo=dt.timezone(dt.timedelta(hours=9)))
    assert [r[2] for r in frame.rows[:2]] == [ms(seoul_0930)] * 2
    assert frame.rows[0][0] != frame.rows[1][0]  # told apart by the cumulative volume
    assert frame.rows[2][2] == ms(seoul_0930.replace(day=19, hour=15, minute=30, second=0))
    assert frame.rows[2][3] is None and frame.rows[2][8].startswith("000660^153000^abc")
    assert parse_kis(PINGPONG, RECEIVED, dt.date.today()).reply == PINGPONG
    refused = '{"header":{"tr_id":"H0STCNT0","tr_key":"005930"},"body":{"rt_cd":"1",'
    refused += '"msg_cd":"OPSP0011","msg1":"invalid approval"}}'
    assert "OPSP0011" in parse_kis(refused, RECEIVED, dt.date.today()).note
    short = kis_frame(records[:1])[:-2]  # a field cut off
    for text, problem in [
        (short.replace("|001|", "|002|"), "field_count"),
        (kis_frame(records[:1], encrypted=True), "encrypted_frame"),
        ("0|H0STASP0|001|" + "^".join(records[0]), "unexpected_tr_id"),
        ("garbage", "malformed_frame"),
        ("{not json", "malformed_json"),
    ]:
        (row,) = parse_kis(text, RECEIVED, dt.date.today()).rows
        assert row[7] == problem, text


# Rules -----------------------------------------------------------------------------------------
def test_ingest_rules_quarantine_each_broken_trade_with_its_reason():
    day = last_session("us")
    opens, closes = session_bounds("us", day)
    sunday = dt.datetime.combine(day + dt.timedelta(days=(6 - day.weekday()) or 7), dt.time(15),
                                 dt.UTC)  # fmt: skip
    cases = [
        ("ok_open", ms(opens), 10.0, 1.0, []),
        ("ok_tolerance", ms(closes + dt.timedelta(minutes=4)), 10.0, 1.0, []),
        ("late", ms(closes + dt.timedelta(minutes=6)), 10.0, 1.0, ["within_session"]),
        ("early", ms(opens - dt.timedelta(minutes=6)), 10.0, 1.0, ["within_session"]),
        ("sunday", ms(sunday), 10.0, 1.0, ["within_session"]),
        ("zero_price", ms(opens), 0.0, 1.0, ["positive_price"]),
        ("negative_size", ms(opens), 10.0, -2.0, ["positive_size"]),
        ("no_ts", None, 10.0, 1.0, ["required_fields"]),
    ]
    rows = [(f"id{i}", name, ts, p, s, "t", ms(opens), None, None)
            for i, (name, ts, p, s, _) in enumerate(cases)]  # fmt: skip
    rows.append(("idx", None, None, None, None, "t", ms(opens), "malformed_json", "{"))
    checked = check_trades(as_frame(rows), "us")
    assert checked.clean["symbol"].to_list() == ["ok_open", "ok_tolerance"]
    assert checked.clean["session"].to_list() == [day, day]
    got = {r["symbol"]: r["violations"] for r in checked.quarantined.iter_rows(named=True)}
    assert got == {name: v for name, _, _, _, v in cases if v} | {None: ["malformed_json"]}
    assert checked.quarantined.schema == QUARANTINE
    assert checked.violation_counts["within_session"] == 3


# End to end ------------------------------------------------------------------------------------
def finnhub_script(day: dt.date) -> tuple[list[str], list[tuple], dict[str, list[str]]]:
    """Frames, the valid trades in them (symbol, ts ms, price, size), and broken trades by the
    reason each must be quarantined for (keyed by a recognisable symbol)."""
    opens, closes = session_bounds("us", day)
    start, rng = ms(opens), random.Random(6)
    frames, valid = [], []
    for f in range(40):
        trades = []
        for i in range(50):
            n = f * 50 + i
            trade = {"s": ("AAPL", "MSFT")[n % 2], "p": round(100 + rng.random(), 2),
                     "t": start + n * 250, "v": rng.randint(1, 300), "c": ["1"]}  # fmt: skip
            trades.append(trade)
            valid.append((trade["s"], trade["t"], trade["p"], float(trade["v"])))
        frames.append(finnhub_frame(trades))
    broken = [
        {"s": "BADPRICE", "p": -1.5, "t": start, "v": 1},
        {"s": "ZEROSIZE", "p": 10.0, "t": start, "v": 0},
        {"s": "LATE", "p": 10.0, "t": ms(closes + dt.timedelta(hours=3)), "v": 1},
        {"s": "UNREADABLE", "p": "abc", "t": start, "v": 1},
    ]
    frames.insert(7, finnhub_frame(broken))
    frames.insert(21, '{"type":"trade","data":[{"s":"AAPL","p":1')
    reasons = {"BADPRICE": ["positive_price"], "ZEROSIZE": ["positive_size"],
               "LATE": ["within_session"], "UNREADABLE": ["required_fields"],
               None: ["malformed_json"]}  # fmt: skip
    return frames, valid, reasons


def kis_script(day: dt.date) -> tuple[list[str], list[tuple], dict[str, list[str]]]:
    opens, _ = session_bounds("krx", day)
    seoul = dt.timezone(dt.timedelta(hours=9))
    yyyymmdd, rng = day.strftime("%Y%m%d"), random.Random(7)
    frames, valid, cumulative = [], [], {"005930": 0, "000660": 0}
    for f in range(40):
        records = []
        for i in range(25):
            n = f * 25 + i
            symbol = ("005930", "000660")[n % 2]
            moment = opens.astimezone(seoul) + dt.timedelta(seconds=n)
            price, volume = 70_000 + rng.randrange(0, 50) * 100, rng.randint(1, 300)
            cumulative[symbol] += volume
            records.append(kis_record(symbol, yyyymmdd, moment.strftime("%H%M%S"), str(price),
                                      str(volume), str(cumulative[symbol])))  # fmt: skip
            valid.append((symbol, ms(moment), float(price), float(volume)))
        frames.append(kis_frame(records))
    broken = [
        kis_record("BADPRICE", yyyymmdd, "100000", "-5", "1", "1"),
        kis_record("ZEROSIZE", yyyymmdd, "100000", "5000", "0", "1"),
        kis_record("LATE", yyyymmdd, "200000", "5000", "1", "1"),
        kis_record("UNREADABLE", yyyymmdd, "1000", "5000", "1", "1"),
    ]
    frames.insert(7, kis_frame(broken))
    frames.insert(21, kis_frame(broken[:1]).replace("|001|", "|002|"))
    reasons = {"BADPRICE": ["positive_price"], "ZEROSIZE": ["positive_size"],
               "LATE": ["within_session"], "UNREADABLE": ["required_fields"],
               None: ["field_count"]}  # fmt: skip
    return frames, valid, reasons


def spool_rows(spool_dir: Path, market: str) -> int:
    path = spool_dir / "trades" / f"{market}.sqlite"
    if not path.exists():
        return 0
    with sqlite3.connect(path, timeout=10) as db:
        try:
            return db.execute("SELECT count(*) FROM trades").fetchone()[0]
        except sqlite3.OperationalError:  # not created yet
            return 0


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


@pytest.mark.parametrize("source", ["finnhub", "kis"])
def test_collector_survives_kill_and_lake_outage_and_stores_every_trade_once(
    source, tmp_path, monkeypatch
):
    market, symbols = (
        ("us", ["AAPL", "MSFT"]) if source == "finnhub" else ("krx", ["005930", "000660"])
    )
    day = last_session(market)
    frames, valid, reasons = (finnhub_script if source == "finnhub" else kis_script)(day)
    expected_rows = len(valid) + sum(1 for r in reasons if r is not None) + 1
    lake_dir, spool_dir = tmp_path / "lake", tmp_path / "spool"
    env = {
        **os.environ,
        "MARKETPIPE_LAKE_URL": str(lake_dir),
        "MARKETPIPE_SPOOL_DIR": str(spool_dir),
        "MARKETPIPE_TRADE_FLUSH_SECONDS": "0.2",
        "MARKETPIPE_RETRY_INITIAL_SECONDS": "0.1",
        "MARKETPIPE_RETRY_MAX_SECONDS": "0.4",
        "PYTHONPATH": str(REPO),
    }
    approval = FakeKisApproval(APP_KEY, APP_SECRET) if source == "kis" else None
    with approval or FakeKisApproval("unused", "unused") as http:
        if source == "finnhub":
            server = FakeFinnhubWs(TOKEN, frames, symbols, pace=0.03, drop_after=12)
            env |= {"FINNHUB_API_KEY": TOKEN, "FINNHUB_WS_URL": "ws://127.0.0.1:1"}
        else:
            server = FakeKisWs(http, frames, symbols, pace=0.03, drop_after=12)
            env |= {"KIS_APP_KEY": APP_KEY, "KIS_APP_SECRET": APP_SECRET,
                    "KIS_BASE_URL": http.url}  # fmt: skip
        with server:
            env["FINNHUB_WS_URL" if source == "finnhub" else "KIS_WS_URL"] = server.url
            command = [sys.executable, "-m", "marketpipe_assets.collect", "--market", market,
                       "--source", source, "--symbols", ",".join(symbols)]  # fmt: skip
            logs = [tmp_path / "first.log", tmp_path / "second.log"]

            def start(log: Path) -> subprocess.Popen:
                return subprocess.Popen(command, cwd=tmp_path, env=env, stderr=log.open("w"))

            # 1. Killed at a random moment: mid-stream, possibly mid-commit or mid-flush.
            first = start(logs[0])
            wait_for(lambda: server.connections >= 2, 30, "the reconnect after the cut")
            time.sleep(random.uniform(0.0, 0.8))
            first.send_signal(signal.SIGKILL)
            first.wait(10)
            # 2. The lake goes away (a file where its folder was: even root cannot write
            # through that), and a new collector starts against it.
            lake_dir.mkdir(exist_ok=True)
            away = lake_dir.rename(tmp_path / "lake-away")
            lake_dir.write_text("the lake is down")
            second = start(logs[1])
            try:
                done = server.completed
                wait_for(lambda: server.completed > done, 30, "a full replay to the new collector")
                wait_for(lambda: spool_rows(spool_dir, market) == expected_rows, 10,
                         "every sent row in the spool")  # fmt: skip
                assert second.poll() is None, "the collector died while the lake was away"
                wait_for(lambda: "lake write failed" in logs[1].read_text(), 15,
                         "the flusher to find the lake away")  # fmt: skip
                # 3. The lake comes back: the backlog is replayed in order.
                lake_dir.unlink()
                away.rename(lake_dir)
                lake = LakeResource(url=str(lake_dir))
                pattern = f"trades/market={market}/date={day.isoformat()}/*.parquet"
                wait_for(lambda: lake.read_files(pattern, TRADES).height >= len(valid), 20,
                         "the backlog in the lake")  # fmt: skip
            finally:
                second.send_signal(signal.SIGTERM)
                assert second.wait(20) == 0

    stored = lake.read_files(pattern, TRADES)
    assert stored["trade_id"].n_unique() == stored.height == len(valid)  # exactly once
    got = sorted(
        stored.select(pl.col("symbol"), pl.col("ts").dt.epoch("ms"), "price", "size").rows()
    )
    assert got == sorted(valid)
    assert set(stored["source"]) == {source}
    quarantined = pl.read_parquet(
        lake_dir / "quarantine" / "trades" / f"market={market}" / "**" / "*.parquet"
    )
    assert {r["symbol"]: r["violations"] for r in quarantined.iter_rows(named=True)} == reasons
    assert quarantined.height == len(reasons)
    # Resubscribed on every connection; KIS keep-alives echoed.
    assert len(server.subscribed) >= 3 and all(s == set(symbols) for s in server.subscribed)
    if source == "kis":
        assert server.pongs > 0 and len(http.keys) >= 3
    text = "".join(log.read_text() for log in logs)
    assert "reconnecting" in text and "collector stopped" in text
    assert_aggregates_hold_every_trade_once(lake, market, valid)
    for secret in (TOKEN, APP_KEY, APP_SECRET, *(http.keys if source == "kis" else [])):
        assert secret not in text


# Synthetic source and command line -------------------------------------------------------------
def test_synthetic_stream_is_deterministic_valid_and_replays_from_its_start():
    import asyncio

    from resources.collector.feeds import SyntheticFeed

    feed = SyntheticFeed("krx", ["005930", "000660"], seed=3, rate=2000)

    async def first_frames(n: int) -> list[str]:
        connection, out = await feed.open(), []
        async for text in connection:
            out.append(text)
            if len(out) == n:
                await connection.close()
        return out

    once, again = asyncio.run(first_frames(3)), asyncio.run(first_frames(3))
    assert once == again  # a new connection replays the same trades: the spool stores them once
    rows = [r for text in once for r in feed.parse(text, RECEIVED).rows]
    assert len(rows) == 300 and len({r[0] for r in rows}) == 300
    checked = check_trades(as_frame(rows), "krx")
    assert checked.quarantined.is_empty() and set(checked.clean["symbol"]) == {"005930", "000660"}


def test_collect_refuses_a_wrong_configuration_with_a_clear_message(monkeypatch, capsys):
    from marketpipe_assets.collect import main

    monkeypatch.delenv("FINNHUB_API_KEY", raising=False)
    assert main(["--market", "krx", "--source", "finnhub", "--symbols", "005930"]) == 2
    assert "--source finnhub serves us trades, not --market krx" in capsys.readouterr().err
    assert main(["--market", "us", "--source", "finnhub", "--symbols", "AAPL"]) == 2
    assert "FINNHUB_API_KEY is not set" in capsys.readouterr().err
    assert main(["--market", "us", "--source", "synthetic", "--symbols", " , "]) == 2
    assert "--symbols" in capsys.readouterr().err


def assert_aggregates_hold_every_trade_once(lake, market: str, valid: list[tuple]) -> None:
    """Materialize the hours the trades fall in through Dagster, as one range run: the stored
    aggregates count every valid sent trade once, per symbol."""
    sent = pl.DataFrame(valid, schema=["symbol", "ts", "price", "size"], orient="row")
    sent = sent.with_columns(hour=pl.from_epoch("ts", "ms").dt.truncate("1h"))
    hours = sorted(sent["hour"].unique())
    keys = [hour_key(h.replace(tzinfo=dt.UTC)) for h in (hours[0], hours[-1])]
    asset = trade_aggregates_asset(market)
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [asset],
            instance=instance,
            resources={"lake": lake},
            tags={RANGE_START_TAG: keys[0], RANGE_END_TAG: keys[1]},
        )
    assert result.success
    assert all(c.passed for c in result.get_asset_check_evaluations())
    stored = lake.read_files(
        f"trade_aggregates/market={market}/date=*/hour=*/*.parquet", TRADE_AGGREGATES
    )
    expected = sent.group_by("symbol").agg(trades=pl.len(), volume=pl.col("size").sum())
    got = stored.group_by("symbol").agg(pl.col("trades").sum(), pl.col("volume").sum())
    assert (
        got.sort("symbol").select("symbol", "trades").rows()
        == expected.sort("symbol").select("symbol", pl.col("trades").cast(pl.Int64)).rows()
    )


def test_collect_tells_its_state_counts_and_a_summary_on_sigterm(tmp_path):
    """The synthetic stream end to end: what a user watching stderr sees, and nothing on stdout."""
    env = {
        **os.environ,
        "MARKETPIPE_LAKE_URL": str(tmp_path / "lake"),
        "MARKETPIPE_SPOOL_DIR": str(tmp_path / "spool"),
        "MARKETPIPE_TRADE_FLUSH_SECONDS": "0.2",
        "PYTHONPATH": str(REPO),
    }
    log = tmp_path / "collect.log"
    command = [sys.executable, "-m", "marketpipe_assets.collect", "--market", "us", "--source",
               "synthetic", "--symbols", "AAPL,MSFT", "--rate", "400", "--progress-seconds",
               "0.3"]  # fmt: skip
    with log.open("w") as stderr:
        collector = subprocess.Popen(
            command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True
        )
    try:
        progress = re.compile(
            r"synthetic connected: received ([\d,]+), committed ([\d,]+), flushed ([1-9][\d,]*), "
            r"quarantined (\d+); [\d,]+ waiting in the spool"
        )
        wait_for(lambda: progress.search(log.read_text()), 60, "a progress line with flushes")
    finally:
        collector.send_signal(signal.SIGTERM)
        out, _ = collector.communicate(timeout=60)
    assert collector.returncode == 0
    assert out == ""  # logs are for stderr
    text = log.read_text()
    states = ["synthetic: connecting", "synthetic: connected", "subscribed to AAPL, MSFT",
              "SIGTERM received: stopping", "flushing the spool to the lake"]  # fmt: skip
    assert all(s in text for s in states), text
    assert [text.index(s) for s in states] == sorted(text.index(s) for s in states)
    summary = re.search(
        r"summary after [\d.]+ s over 1 connection\(s\): received ([\d,]+), committed ([\d,]+), "
        r"flushed ([\d,]+), quarantined (\d+); the spool is empty",
        text,
    )
    assert summary, text
    received, committed, flushed, quarantined = (int(g.replace(",", "")) for g in summary.groups())
    assert received == committed == flushed + quarantined > 0
    stored = LakeResource(url=str(tmp_path / "lake")).read_files("trades/market=us/*/*.parquet",
                                                                 TRADES)  # fmt: skip
    assert stored.height == flushed


def test_collect_says_why_it_reconnects(tmp_path):
    env = {**os.environ, "FINNHUB_API_KEY": TOKEN, "FINNHUB_WS_URL": "ws://127.0.0.1:1",
           "MARKETPIPE_RETRY_INITIAL_SECONDS": "0.1", "MARKETPIPE_RETRY_MAX_SECONDS": "0.2",
           "MARKETPIPE_LAKE_URL": str(tmp_path / "lake"),
           "MARKETPIPE_SPOOL_DIR": str(tmp_path / "spool"), "PYTHONPATH": str(REPO)}  # fmt: skip
    log = tmp_path / "collect.log"
    command = [sys.executable, "-m", "marketpipe_assets.collect", "--market", "us", "--source",
               "finnhub", "--symbols", "AAPL"]  # fmt: skip
    with log.open("w") as stderr:
        collector = subprocess.Popen(command, cwd=tmp_path, env=env, stderr=stderr)
    try:
        wait_for(lambda: log.read_text().count("reconnecting") >= 2, 60, "two reconnects")
    finally:
        collector.send_signal(signal.SIGTERM)
        assert collector.wait(60) == 0
    text = log.read_text()
    assert re.search(r"finnhub: reconnecting in [\d.]+ s: connection failed: \w+", text), text
    assert TOKEN not in text
    assert "summary after" in text and "received 0, committed 0, flushed 0" in text


class RebatchingFinnhubWs(FakeFinnhubWs):
    """Each connection gets its own script: after a reconnect the same trades come again,
    batched into different frames (as a server re-sending its recent history does)."""

    def __init__(self, scripts: list[list[str]], symbols, **options):
        self.scripts = scripts
        super().__init__(TOKEN, scripts[0], symbols, **options)

    @property
    def frames(self) -> list[str]:
        return self.scripts[min(self.connections, len(self.scripts)) - 1]

    @frames.setter
    def frames(self, value) -> None:
        pass


def test_a_rebatched_replay_after_a_reconnect_stores_each_trade_once(tmp_path):
    import asyncio

    from resources.collector.feeds import FinnhubFeed
    from resources.collector.runner import Collector
    from resources.providers.http import RetryPolicy
    from resources.trade_spool import TradeSpool

    rng = random.Random(5)
    base = 1_700_000_000_000
    trades = [
        {"s": rng.choice(["AAPL", "MSFT"]), "p": 100.0 + rng.randint(0, 3), "t": base + i // 3,
         "v": 1 + rng.randint(0, 1), "c": ["1"]}
        for i in range(600)
    ]  # fmt: skip
    # Two genuinely equal trades in one frame (same ms, price, size, conditions): both are kept.
    trades[10:10] = [{"s": "AAPL", "p": 99.5, "t": base, "v": 7, "c": ["1"]}] * 2
    distinct = len(trades)

    def batched(sizes: list[int]) -> list[str]:
        frames, i = [], 0
        while i < len(trades):
            n = sizes[len(frames) % len(sizes)]
            frames.append(finnhub_frame(trades[i : i + n]))
            i += n
        return frames

    first, second = batched([7, 3, 11]), batched([5, 13])
    spool = TradeSpool(tmp_path / "us.sqlite")
    with RebatchingFinnhubWs([first, second], ["AAPL", "MSFT"], drop_after=len(first) // 2) as ws:
        feed = FinnhubFeed(TOKEN, ["AAPL", "MSFT"], ws.url)
        collector = Collector(feed, spool, retry=RetryPolicy(initial=0.05, maximum=0.1))

        async def run():
            task = asyncio.ensure_future(collector.run())
            # Generous: under a loaded machine the reconnect alone has taken over 20 s.
            deadline = time.monotonic() + 90
            while ws.completed < 1 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            collector.stop()
            await asyncio.wait_for(task, 10)

        asyncio.run(run())
        assert ws.connections >= 2 and ws.completed >= 1  # cut mid-stream, then a full replay

    stored = spool.unflushed()
    assert collector.stats.replayed > 0
    assert stored.height == distinct  # each trade once, the two equal ones both
    equal = stored.filter(pl.col("price") == 99.5)
    assert equal.height == 2 and equal["trade_id"].n_unique() == 2


def test_kis_ids_follow_the_cumulative_volume_and_count_equal_records_without_it():
    day = "20261120"
    same = kis_record("005930", day, "093001", "71000", "12", "1000")
    again = parse_kis(kis_frame([same, same]), RECEIVED, dt.date(2026, 11, 20)).rows
    assert again[0][0] == again[1][0]  # one cumulative volume: one trade, sent twice
    bare = kis_record("005930", day, "093001", "71000", "12", "")
    rows = parse_kis(kis_frame([bare, bare]), RECEIVED, dt.date(2026, 11, 20)).rows
    assert rows[0][0] != rows[1][0]  # nothing tells them apart but their order: both kept
