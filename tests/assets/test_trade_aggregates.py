"""`<market>/trade_aggregates`: its hourly partitions, what a run stores from real batch files in
a temporary lake (hand-computed), its checks, and the closed-hour sensor with late trades."""

import datetime as dt

import dagster as dg
import polars as pl
import pytest

from checks.schemas import TRADE_AGGREGATES, TRADES
from checks.trade_checks import AGGREGATES_RECONCILE, TRADE_RULES_CHECK, reconcile_result
from marketpipe_assets.automation import RANGE_END_TAG, RANGE_START_TAG
from marketpipe_assets.trade_aggregates import minute_stats, trade_aggregates_asset
from marketpipe_assets.trade_files import complete_hours, hour_path
from marketpipe_assets.trade_hours import (
    AGGREGATE_SOURCES,
    DATASET,
    MINUTES_DATASET,
    QUARANTINE_DATASET,
    SOURCES_DATASET,
    TRADE_MINUTES,
    hour_partitions,
    session_hours,
)
from marketpipe_assets.trade_sensors import trade_hours_sensor
from resources.trade_spool import TradeSpool, spool_path

UTC = dt.UTC
DAY = "2026-11-20"  # a Friday, XNYS 14:30-21:00 UTC (EST)
H14 = dt.datetime(2026, 11, 20, 14, tzinfo=UTC)
H15 = H14 + dt.timedelta(hours=1)


def trades(*rows, day: str = DAY) -> pl.DataFrame:
    """Rows of (symbol, 'HH:MM:SS' on `day` UTC, price, size, trade_id)."""
    return pl.DataFrame(
        [
            (s, dt.datetime.fromisoformat(f"{day}T{t}+00:00"), p, z, "finnhub", i)
            for s, t, p, z, i in rows
        ],
        schema=TRADES,
        orient="row",
    )


def flush(lake, first: int, last: int, frame: pl.DataFrame, day: str = DAY) -> None:
    """What the collector's flusher does: one batch file, written atomically."""
    lake.write_file(f"trades/market=us/date={day}/batch-{first}-{last}.parquet", frame)


def read(lake, dataset, hour, schema):
    return lake.read_files(hour_path(dataset, "us", hour), schema)


def run(lake, instance, key=None, range_=None):
    tags = {RANGE_START_TAG: range_[0], RANGE_END_TAG: range_[1]} if range_ else {}
    return dg.materialize(
        [trade_aggregates_asset("us")],
        instance=instance,
        resources={"lake": lake},
        partition_key=key,
        tags=tags,
        raise_on_error=False,
    )


def checks(result) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def test_partitions_are_the_hours_that_intersect_a_session():
    keys = set(hour_partitions("us").get_partition_keys())
    # EST: 14:30-21:00 UTC touches 14:00..20:00; EDT: 13:30-20:00 UTC touches 13:00..19:00.
    assert sorted(k for k in keys if k.startswith("2026-11-20")) == [
        f"2026-11-20-{h}:00" for h in range(14, 21)
    ]
    assert sorted(k for k in keys if k.startswith("2026-07-15")) == [
        f"2026-07-15-{h}:00" for h in range(13, 20)
    ]
    assert not [k for k in keys if k.startswith("2026-07-03")]  # Independence Day observed
    assert not [k for k in keys if k.startswith("2026-11-21")]  # Saturday
    # Every window is exactly its hour, the session's last one too (not until Monday).
    window = hour_partitions("us").time_window_for_partition_key("2026-11-20-20:00")
    assert window.end - window.start == dt.timedelta(hours=1)
    # Half day (13:00 ET close) and KRX's late opening on the year's first session.
    friday = dt.datetime(2025, 11, 28, tzinfo=UTC)
    assert [h.hour for h in session_hours("us", friday, friday + dt.timedelta(1))] == [
        14,
        15,
        16,
        17,
    ]
    krx = set(hour_partitions("krx").get_partition_keys())
    assert sorted(k[-5:] for k in krx if k.startswith("2026-01-02")) == [
        f"{h:02d}:00" for h in range(1, 7)
    ]


def test_an_hour_is_aggregated_from_its_batches_deduplicated_and_checked(lake, instance):
    batch = trades(
        ("AAPL", "14:31:05", 190.0, 3, "a1"),
        ("AAPL", "14:31:40", 200.0, 1, "a2"),
        ("AAPL", "14:45:00", 195.0, 2, "a3"),
        ("MSFT", "14:27:00", 400.0, 10, "m1"),  # 3 minutes before the open: within tolerance
        ("MSFT", "14:20:00", 401.0, 10, "m0"),  # 10 minutes before: outside the session
        ("MSFT", "14:50:00", -1.0, 5, "m2"),  # negative price
        ("MSFT", "15:10:00", 410.0, 7, "m3"),  # next hour: not this partition's
    )
    flush(lake, 1, 7, batch)
    flush(lake, 1, 7, batch)  # an idempotent re-flush (same name)
    # A replayed spool with other rowids repeats a1 exactly (dropped) and sends a conflicting
    # copy of a3 (both quarantined: which one is right cannot be told).
    flush(
        lake, 8, 9, trades(("AAPL", "14:31:05", 190.0, 3, "a1"), ("AAPL", "14:46:00", 1.0, 1, "a3"))
    )

    result = run(lake, instance, "2026-11-20-14:00")
    assert result.success

    hourly = read(lake, DATASET, H14, TRADE_AGGREGATES)
    assert hourly.select("symbol", "trades", "volume").rows() == [
        ("AAPL", 2, 4.0),
        ("MSFT", 1, 10.0),
    ]
    assert hourly["vwap"].to_list() == pytest.approx([192.5, 400.0])  # (190*3 + 200*1) / 4
    assert hourly["hour_start"].to_list() == [H14, H14]

    minutes = read(lake, MINUTES_DATASET, H14, TRADE_MINUTES).sort("minute_start", "symbol")
    assert minutes.select("symbol", "trades", "volume", "open", "high", "low", "close").rows() == [
        ("MSFT", 1, 10.0, 400.0, 400.0, 400.0, 400.0),
        ("AAPL", 2, 4.0, 190.0, 200.0, 190.0, 200.0),
    ]
    assert minutes["minute_start"].dt.minute().to_list() == [27, 31]

    quarantined = read(lake, QUARANTINE_DATASET, H14, {**TRADES, "violations": pl.List(pl.String)})
    assert sorted(
        zip(quarantined["trade_id"], quarantined["violations"].to_list(), strict=True)
    ) == [
        ("a3", ["unique_trade_id"]),
        ("a3", ["unique_trade_id"]),
        ("m0", ["within_session"]),
        ("m2", ["positive_price"]),
    ]

    found = checks(result)
    assert not found[TRADE_RULES_CHECK].passed
    assert found[TRADE_RULES_CHECK].metadata["exact_duplicates_dropped"].value == 1  # a1 replayed
    assert found[AGGREGATES_RECONCILE].passed
    sources = read(lake, SOURCES_DATASET, H14, AGGREGATE_SOURCES)
    assert sources.select("max_batch", "files").rows() == [(9, 2)]


def test_reconcile_fails_when_stored_totals_differ_from_the_trades():
    valid = trades(("AAPL", "14:31:05", 190.0, 3, "a1"), ("AAPL", "14:31:40", 200.0, 1, "a2"))
    hourly = pl.DataFrame([("AAPL", H14, 2, 4.0, 192.5)], schema=TRADE_AGGREGATES, orient="row")
    minute = dt.datetime(2026, 11, 20, 14, 31, tzinfo=UTC)
    minutes = pl.DataFrame(
        [("AAPL", minute, 2, 4.0, 192.5, 190.0, 200.0, 190.0, 200.0)],
        schema=TRADE_MINUTES,
        orient="row",
    )
    assert reconcile_result(valid, hourly, minutes).passed
    lost_trade = hourly.with_columns(trades=pl.lit(1, pl.Int64))
    assert not reconcile_result(valid, lost_trade, minutes).passed
    wrong_price = minutes.with_columns(vwap=pl.lit(193.0))
    assert not reconcile_result(valid, hourly, wrong_price).passed


def test_late_batch_marks_the_hour_incomplete_until_it_is_aggregated_again(lake, instance):
    flush(
        lake, 1, 2, trades(("AAPL", "14:40:00", 10.0, 1, "x1"), ("AAPL", "15:20:00", 11.0, 1, "x2"))
    )
    assert complete_hours(lake, "us", [H14, H15]) == set()
    assert run(lake, instance, range_=("2026-11-20-14:00", "2026-11-20-15:00")).success
    assert complete_hours(lake, "us", [H14, H15]) == {H14, H15}
    assert read(lake, DATASET, H15, TRADE_AGGREGATES)["trades"].to_list() == [1]

    flush(lake, 3, 3, trades(("AAPL", "15:59:00", 12.0, 2, "x3")))  # a later batch of 15:00 only
    assert complete_hours(lake, "us", [H14, H15]) == {H14}
    flush(lake, 4, 4, trades(("AAPL", "14:59:59", 13.0, 4, "x4")))  # late trade of 14:00
    assert complete_hours(lake, "us", [H14, H15]) == set()

    assert run(lake, instance, "2026-11-20-14:00").success
    assert complete_hours(lake, "us", [H14, H15]) == {H14}
    hourly = read(lake, DATASET, H14, TRADE_AGGREGATES)
    assert hourly.select("trades", "volume").rows() == [(2, 5.0)]
    assert hourly["vwap"].item() == pytest.approx((10.0 + 13.0 * 4) / 5)
    # No invalid trade any more: the hour has no quarantine file.
    assert read(lake, QUARANTINE_DATASET, H14, TRADES).is_empty()


def test_an_hour_without_trades_stores_empty_aggregates(lake, instance):
    result = run(lake, instance, "2026-11-20-16:00")
    assert result.success
    hour = H14 + dt.timedelta(hours=2)
    assert read(lake, DATASET, hour, TRADE_AGGREGATES).is_empty()
    assert complete_hours(lake, "us", [hour]) == {hour}
    assert checks(result)[AGGREGATES_RECONCILE].passed


# The sensor ------------------------------------------------------------------------------------
class Clock:
    def __init__(self, now: dt.datetime):
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


@pytest.fixture
def sensor_defs(lake, tmp_path, monkeypatch):
    monkeypatch.setenv("MARKETPIPE_SPOOL_DIR", str(tmp_path / "spool"))
    monkeypatch.delenv("MARKETPIPE_TRADE_GRACE_MINUTES", raising=False)
    clock = Clock(dt.datetime(2026, 11, 20, 15, 4, tzinfo=UTC))
    sensor = trade_hours_sensor("us", clock=clock)
    defs = dg.Definitions(
        assets=[trade_aggregates_asset("us")], sensors=[sensor], resources={"lake": lake}
    )
    return clock, sensor, defs


def evaluate(sensor_defs, instance, cursor):
    clock, sensor, defs = sensor_defs
    context = dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={"lake": defs.resources["lake"]},
        repository_def=defs.get_repository_def(),
    )
    return sensor.evaluate_tick(context)


def tick(sensor_defs, instance, cursor):
    data = evaluate(sensor_defs, instance, cursor)
    return [(r.partition_key, r.run_key) for r in data.run_requests], data.cursor


def test_an_empty_deployment_requests_nothing(lake, instance, sensor_defs):
    clock = sensor_defs[0]
    cursor = None
    # Three days of closed session hours, ticked hourly, and not one trade collected.
    for _ in range(72):
        data = evaluate(sensor_defs, instance, cursor)
        assert data.run_requests == []
        assert "no closed hour with trades" in data.skip_message
        cursor = data.cursor
        clock.now += dt.timedelta(hours=1)


def test_only_the_hours_with_trades_are_requested(lake, instance, sensor_defs):
    clock = sensor_defs[0]
    flush(lake, 1, 1, trades(("AAPL", "15:59:59", 10.0, 1, "a"), day="2026-11-19"), "2026-11-19")
    two = trades(("MSFT", "14:30:00", 20.0, 2, "b"), ("AAPL", "14:31:00", 10.0, 1, "c"))
    flush(lake, 2, 3, two)
    clock.now = dt.datetime(2026, 11, 20, 21, 30, tzinfo=UTC)  # after the close
    requests, cursor = tick(sensor_defs, instance, None)
    assert requests == [
        ("2026-11-19-15:00", "us:2026-11-19-15:00"),
        ("2026-11-20-14:00", "us:2026-11-20-14:00"),
    ]
    clock.now += dt.timedelta(days=1)
    assert tick(sensor_defs, instance, cursor)[0] == []


def test_a_spooled_trade_requests_its_hour_and_its_flush_reopens_it(
    lake, instance, sensor_defs, tmp_path
):
    clock = sensor_defs[0]
    spool = TradeSpool(spool_path("us", tmp_path / "spool"))
    spool.append(trades(("AAPL", "14:40:00", 10.0, 1, "s1")))
    clock.now = dt.datetime(2026, 11, 20, 15, 5, tzinfo=UTC)
    requests, cursor = tick(sensor_defs, instance, None)
    assert requests == [("2026-11-20-14:00", "us:2026-11-20-14:00")]
    assert tick(sensor_defs, instance, cursor)[0] == []
    # The flusher writes it to the lake: the hour is aggregated again, now with the trade.
    flush(lake, 1, 1, trades(("AAPL", "14:40:00", 10.0, 1, "s1")))
    spool.mark_flushed(1)
    spool.close()
    requests, cursor = tick(sensor_defs, instance, cursor)
    assert requests == [("2026-11-20-14:00", "us:2026-11-20-14:00:b1")]
    assert tick(sensor_defs, instance, cursor)[0] == []


def test_sensor_requests_closed_hours_after_the_grace_and_reopens_them_for_late_trades(
    lake, instance, sensor_defs
):
    clock = sensor_defs[0]
    flush(
        lake, 1, 5, trades(("AAPL", "14:35:00", 10.0, 1, "t1"), ("AAPL", "15:01:00", 10.0, 1, "t2"))
    )

    # 15:04: 14:00 closed four minutes ago, inside the 5-minute grace; the earlier session hours
    # of the last three days have no trades.
    requests, cursor = tick(sensor_defs, instance, None)
    assert requests == []

    clock.now = dt.datetime(2026, 11, 20, 15, 5, tzinfo=UTC)
    requests, cursor = tick(sensor_defs, instance, cursor)
    assert requests == [("2026-11-20-14:00", "us:2026-11-20-14:00")]
    clock.now += dt.timedelta(minutes=5)
    assert tick(sensor_defs, instance, cursor)[0] == []  # nothing twice

    # A late trade of 14:00 lands in a new batch: the hour re-opens once, with a new run key.
    flush(
        lake, 6, 9, trades(("AAPL", "14:59:00", 11.0, 1, "t3"), ("AAPL", "15:11:00", 9.0, 1, "t4"))
    )
    requests, cursor = tick(sensor_defs, instance, cursor)
    assert requests == [("2026-11-20-14:00", "us:2026-11-20-14:00:b9")]
    assert tick(sensor_defs, instance, cursor)[0] == []

    # A batch holding only trades of the open hour 15:00 re-opens nothing.
    flush(lake, 10, 11, trades(("AAPL", "15:30:00", 9.5, 1, "t5")))
    requests, cursor = tick(sensor_defs, instance, cursor)
    assert requests == []
    clock.now = dt.datetime(2026, 11, 20, 16, 5, tzinfo=UTC)
    requests, cursor = tick(sensor_defs, instance, cursor)
    assert requests == [("2026-11-20-15:00", "us:2026-11-20-15:00")]

    # The same state evaluated again (e.g. a lost cursor) asks for the same run keys, which
    # Dagster runs once.
    again, _ = tick(sensor_defs, instance, cursor)
    assert again == []


def test_grace_period_is_configurable(lake, instance, sensor_defs, monkeypatch):
    clock = sensor_defs[0]
    flush(lake, 1, 1, trades(("AAPL", "20:30:00", 10.0, 1, "y"), day="2026-11-19"), "2026-11-19")
    flush(lake, 2, 2, trades(("AAPL", "14:30:00", 10.0, 1, "t")))
    clock.now = dt.datetime(2026, 11, 20, 15, 0, tzinfo=UTC)
    monkeypatch.setenv("MARKETPIPE_TRADE_GRACE_MINUTES", "0")
    requests, _ = tick(sensor_defs, instance, None)
    assert [k for k, _ in requests] == ["2026-11-19-20:00", "2026-11-20-14:00"]
    monkeypatch.setenv("MARKETPIPE_TRADE_GRACE_MINUTES", "30")
    clock.now = dt.datetime(2026, 11, 20, 15, 29, tzinfo=UTC)
    requests, _ = tick(sensor_defs, instance, None)
    assert [k for k, _ in requests] == ["2026-11-19-20:00"]
    monkeypatch.setenv("MARKETPIPE_TRADE_GRACE_MINUTES", "soon")
    with pytest.raises(Exception, match="MARKETPIPE_TRADE_GRACE_MINUTES='soon'"):
        tick(sensor_defs, instance, None)


def test_minute_open_and_close_follow_time_not_arrival():
    late_first = trades(
        ("AAPL", "14:31:30", 191.0, 1, "b"),
        ("AAPL", "14:31:50", 193.0, 1, "c"),
        ("AAPL", "14:31:05", 190.0, 1, "a"),  # arrived last (a late batch), traded first
    )
    minute = minute_stats(late_first).row(0, named=True)
    assert (minute["open"], minute["close"], minute["high"], minute["low"]) == (
        190.0,
        193.0,
        193.0,
        190.0,
    )
    assert minute["vwap"] == pytest.approx(574.0 / 3)
