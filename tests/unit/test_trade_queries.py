"""The seed-004 queries against hand-computed answers on a small hand-made trade set spread over
stored aggregates, raw batch files and the collector's spool (real SQLite), and the CLI once."""

import datetime as dt
import json
import os
import subprocess
import sys

import dagster as dg
import polars as pl
import pytest

from checks.schemas import TRADES
from marketpipe_assets import trade_queries as q
from marketpipe_assets.trade_aggregates import trade_aggregates_asset
from resources.trade_spool import TradeSpool, spool_path

UTC = dt.UTC
DAY = "2026-11-20"  # XNYS 14:30-21:00 UTC
NOW = dt.datetime(2026, 11, 20, 18, 30, 30, tzinfo=UTC)


def trades(*rows) -> pl.DataFrame:
    """(trade_id, symbol, 'HH:MM:SS' on DAY, price, size)."""
    return pl.DataFrame(
        [
            (s, dt.datetime.fromisoformat(f"{DAY}T{t}+00:00"), p, z, "finnhub", i)
            for i, s, t, p, z in rows
        ],
        schema=TRADES,
        orient="row",
    )


def flush(lake, first, last, frame):
    lake.write_file(f"trades/market=us/date={DAY}/batch-{first}-{last}.parquet", frame)


def aggregate(lake, instance, key):
    result = dg.materialize(
        [trade_aggregates_asset("us")],
        instance=instance,
        resources={"lake": lake},
        partition_key=key,
    )
    assert result.success


def spool(*rows):
    store = TradeSpool(spool_path("us"))
    try:
        store.append(trades(*rows))
    finally:
        store.close()


def h(hour: int) -> str:
    return f"{DAY}T{hour:02d}:00:00+00:00"


@pytest.fixture
def scene(lake, instance, tmp_path, monkeypatch):
    """14:00 aggregated, then its batch file removed (only the stored aggregates know it);
    16:00-18:00 raw in the lake and in the spool; 15:00 and the pre-session hours empty."""
    monkeypatch.setenv("MARKETPIPE_SPOOL_DIR", str(tmp_path / "spool"))
    monkeypatch.setenv("MARKETPIPE_LAKE_URL", lake.url)
    flush(
        lake,
        1,
        3,
        trades(
            ("a1", "AAPL", "14:31:05", 190.0, 3),
            ("a2", "AAPL", "14:31:40", 200.0, 1),
            ("m1", "MSFT", "14:40:00", 400.0, 10),
        ),
    )
    aggregate(lake, instance, "2026-11-20-14:00")
    lake.fs.rm(f"{lake.root}/trades/market=us/date={DAY}/batch-1-3.parquet")
    flush(
        lake,
        4,
        7,
        trades(
            ("a4", "AAPL", "16:05:00", 191.0, 5),
            ("m4", "MSFT", "16:10:00", 401.0, 1),
            ("m5", "MSFT", "16:20:00", 402.0, 2),
            ("bad", "MSFT", "16:30:00", 402.0, -1),  # broken size: left out, as when aggregating
        ),
    )
    flush(
        lake,
        8,
        9,
        trades(("m6", "MSFT", "17:59:30", 403.0, 4), ("m7", "MSFT", "18:20:00", 405.0, 100)),
    )
    spool(
        ("m5", "MSFT", "16:20:00", 402.0, 2),  # flushed but not yet marked: counted once
        ("a5", "AAPL", "17:45:00", 193.0, 2),
        ("a6", "AAPL", "18:10:00", 194.0, 1),
        ("a7", "AAPL", "18:29:10", 195.0, 3),
        ("a8", "AAPL", "18:29:50", 197.0, 1),
        ("m8", "MSFT", "18:30:20", 406.0, 2),  # the current minute
    )
    return lake


def test_transactions_and_volumes_per_stock_for_the_last_six_closed_hours(scene):
    assert q.transactions_hourly(scene, "us", NOW) == {
        "transactions": [
            {"hour": h(17), "datetime": f"{DAY} 17:00:00", "data": {"AAPL": 1, "MSFT": 1}},
            {"hour": h(16), "datetime": f"{DAY} 16:00:00", "data": {"AAPL": 1, "MSFT": 2}},
            {"hour": h(14), "datetime": f"{DAY} 14:00:00", "data": {"AAPL": 2, "MSFT": 1}},
        ],
        "missing_hours": [h(15)],  # 12:00 and 13:00 are before the 14:30 open: not missing
    }
    volumes = q.volumes_hourly(scene, "us", NOW)
    assert [t["data"] for t in volumes["transactions"]] == [
        {"AAPL": 2.0, "MSFT": 4.0},
        {"AAPL": 5.0, "MSFT": 3.0},
        {"AAPL": 4.0, "MSFT": 10.0},
    ]
    assert volumes["missing_hours"] == [h(15)]


def test_hourly_stats_for_twelve_hours_list_the_missing_ones(scene):
    assert q.hourly_stats(scene, "us", NOW) == {
        "transactions": [
            {
                "hour": h(17),
                "datetime": f"{DAY} 17:00:00",
                "data": {"total_volume": 6.0, "total_count": 2},
            },
            {
                "hour": h(16),
                "datetime": f"{DAY} 16:00:00",
                "data": {"total_volume": 8.0, "total_count": 3},
            },
            {
                "hour": h(14),
                "datetime": f"{DAY} 14:00:00",
                "data": {"total_volume": 14.0, "total_count": 3},
            },
        ],
        "missing_hours": [h(15)],  # 06:00-13:00 are overnight, outside every session
    }


def test_missing_hours_are_only_hours_of_a_session(lake, tmp_path, monkeypatch):
    monkeypatch.setenv("MARKETPIPE_SPOOL_DIR", str(tmp_path / "spool"))
    # Monday 2026-11-23 15:30 UTC: the 12 hours before reach back to 03:00 over the night; only
    # the hour of the 14:30 open belongs to a session. KRX's Monday session (00:00-06:30 UTC)
    # intersects 03:00-06:00 of the window.
    monday = dt.datetime(2026, 11, 23, 15, 30, tzinfo=UTC)
    assert q.hourly_stats(lake, "us", monday)["missing_hours"] == ["2026-11-23T14:00:00+00:00"]
    krx = q.hourly_stats(lake, "krx", monday)["missing_hours"]
    assert krx == [f"2026-11-23T{n:02d}:00:00+00:00" for n in (6, 5, 4, 3)]
    # A Sunday has no session at all: nothing is missing.
    sunday = dt.datetime(2026, 11, 22, 20, 0, tzinfo=UTC)
    assert q.transactions_hourly(lake, "us", sunday)["missing_hours"] == []


def test_trades_of_a_stock_in_the_last_minutes_exclude_the_current_minute(scene):
    answer = q.transactions_minutes(scene, "us", "AAPL", 30, NOW)
    assert (answer["start"], answer["end"]) == (h(18), f"{DAY}T18:30:00+00:00")
    assert (answer["count"], answer["volume"]) == (3, 5.0)
    assert len(answer["minutes"]) == 30
    assert answer["minutes"][0] == {"minute": f"{DAY}T18:29:00+00:00", "count": 2}
    assert answer["minutes"][19] == {"minute": f"{DAY}T18:10:00+00:00", "count": 1}
    assert sum(m["count"] for m in answer["minutes"]) == 3
    # An hour further back reaches the spool's 17:45 trade; MSFT's current minute stays out.
    assert q.transactions_minutes(scene, "us", "AAPL", 60, NOW)["count"] == 4
    assert q.transactions_minutes(scene, "us", "MSFT", 1, NOW)["count"] == 0


def test_top_volume_in_the_last_hour_includes_the_freshest_minute(scene):
    answer = q.top_volume(scene, "us", 5, NOW)
    assert (answer["start"], answer["end"]) == (f"{DAY}T17:31:00+00:00", f"{DAY}T18:30:30+00:00")
    assert answer["top"] == [
        {"symbol": "MSFT", "total_volume": 106.0, "total_count": 3},  # m6, m7 and the spool's m8
        {"symbol": "AAPL", "total_volume": 7.0, "total_count": 4},
    ]
    assert [t["symbol"] for t in q.top_volume(scene, "us", 1, NOW)["top"]] == ["MSFT"]


def test_price_is_the_vwap_of_the_latest_minute(scene):
    aapl = q.latest_price(scene, "us", "AAPL", NOW)
    assert aapl == {
        "symbol": "AAPL",
        "latest_price": pytest.approx((195.0 * 3 + 197.0) / 4),
        "minute": f"{DAY}T18:29:00+00:00",
        "trades": 2,
        "volume": 4.0,
    }
    assert q.latest_price(scene, "us", "MSFT", NOW)["latest_price"] == 406.0  # spool, 18:30
    # Hours later the same minute is found further back.
    later = dt.datetime(2026, 11, 20, 21, 15, tzinfo=UTC)
    assert q.latest_price(scene, "us", "AAPL", later)["minute"] == f"{DAY}T18:29:00+00:00"
    assert q.latest_price(scene, "us", "NFLX", NOW)["latest_price"] is None


def test_a_late_batch_or_an_unflushed_trade_reopens_a_stored_hour(
    lake, instance, tmp_path, monkeypatch
):
    monkeypatch.setenv("MARKETPIPE_SPOOL_DIR", str(tmp_path / "spool"))  # no spool file yet
    flush(lake, 1, 1, trades(("a1", "AAPL", "14:31:05", 190.0, 3)))
    aggregate(lake, instance, "2026-11-20-14:00")
    now = dt.datetime(2026, 11, 20, 15, 10, tzinfo=UTC)

    def aapl_at_14():
        return q.transactions_hourly(lake, "us", now)["transactions"][0]["data"]["AAPL"]

    assert aapl_at_14() == 1
    flush(lake, 2, 2, trades(("a2", "AAPL", "14:59:58", 191.0, 1)))  # late, after aggregating
    assert aapl_at_14() == 2
    spool(("a3", "AAPL", "14:59:59", 192.0, 1))  # later still, not flushed yet
    assert aapl_at_14() == 3


def test_no_report_counts_a_trade_after_now(lake, instance, tmp_path, monkeypatch):
    """NOW is 18:30:30; trades 10 s later, in the same minute, are the future to that answer,
    whether they come from a stored hour, raw batch files or the spool."""
    monkeypatch.setenv("MARKETPIPE_SPOOL_DIR", str(tmp_path / "spool"))
    flush(
        lake,
        1,
        2,
        trades(("a1", "AAPL", "18:30:20", 100.0, 1), ("a2", "AAPL", "18:30:40", 300.0, 5)),
    )

    def answers(now=NOW):
        return (
            q.top_volume(lake, "us", 5, now)["top"],
            q.latest_price(lake, "us", "AAPL", now),
            q.transactions_minutes(lake, "us", "AAPL", 1, now)["count"],
        )

    before = [{"symbol": "AAPL", "total_volume": 1.0, "total_count": 1}]
    price = {"symbol": "AAPL", "latest_price": 100.0, "minute": f"{DAY}T18:30:00+00:00"}
    price |= {"trades": 1, "volume": 1.0}
    assert answers() == (before, price, 0)  # raw batch files
    aggregate(lake, instance, "2026-11-20-18:00")
    assert answers() == (before, price, 0)  # the hour is stored with a2 in its 18:30 minute
    spool(("a3", "AAPL", "18:30:40", 500.0, 7))
    assert answers() == (before, price, 0)  # the spool
    # A minute later all three count.
    top, later, count = answers(dt.datetime(2026, 11, 20, 18, 31, 0, tzinfo=UTC))
    assert (top[0]["total_count"], later["trades"], count) == (3, 3, 3)


def test_cli_prints_the_answer_as_json(scene):
    command = [sys.executable, "-m", "marketpipe_assets.cli", "query", "hourly-stats"]
    done = subprocess.run(
        [*command, "--market", "us", "--now", "2026-11-20T18:30:30Z"],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == q.hourly_stats(scene, "us", NOW)
