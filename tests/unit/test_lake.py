"""The lake (CONTRACT section 3): atomic partition replacement under crashes and write errors,
readability by polars and DuckDB with no knowledge of marketpipe, and s3:// on a local S3."""

import glob
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import boto3
import duckdb
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from checks.schemas import DAILY_PRICES, INDICATORS
from resources.lake import LakeResource, LakeUnreachable
from tests.conftest import REPO, Runner, recent_sessions, synthetic_data

KEY = ["symbol", "trade_date"]


def part_file(lake_url: str, dataset: str, market: str, day: str) -> Path:
    return Path(lake_url) / dataset / f"market={market}" / f"date={day}" / "part-0.parquet"


def query(sql: str) -> list[tuple]:
    with duckdb.connect() as con:
        return con.execute(sql).fetchall()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def stored_session(runs) -> tuple[str, Path, pl.DataFrame]:
    """One krx session stored through Dagster: (partition key, its file, its rows)."""
    day = recent_sessions("krx", 1)[0]
    runs.universe("krx")
    result = runs("krx", "daily_prices", day=day)
    assert [e.partition for e in result.get_asset_materialization_events()] == [day]
    path = part_file(runs.lake.url, "daily_prices", "krx", day)
    frame = pl.read_parquet(path)
    assert len(frame) > 0
    return day, path, frame


# Crash and write errors ----------------------------------------------------------------------
_WRITER = textwrap.dedent(
    """
    import datetime as dt, sys
    import numpy as np, polars as pl
    from resources.lake import LakeResource

    lake = LakeResource(url=sys.argv[1])
    day, n = dt.date.fromisoformat(sys.argv[2]), int(sys.argv[3])
    rng = np.random.default_rng(0)
    frame = pl.DataFrame(
        {
            "symbol": pl.Series([f"S{i:04d}" for i in range(1000)]).gather(np.arange(n) % 1000),
            "trade_date": pl.repeat(day, n, eager=True),
            **{c: rng.random(n) for c in ("open", "high", "low", "close")},
            "volume": rng.integers(0, 10**9, n),
            "source": pl.repeat("crash-test", n, eager=True),
        }
    )
    print("writing", flush=True)
    lake.write_partitions("daily_prices", "krx", frame, [day])
    print("written", flush=True)
    """
)


def test_crash_mid_write_leaves_the_old_partition_readable(stored_session, runs, lake):
    day, path, before = stored_session
    old_digest = digest(path)
    # The writer stages its file under _staging/ (hidden from readers) before publishing it.
    pattern = f"{lake.url}/_staging/*/daily_prices~market=krx~date={day}~part-0.parquet"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, lake.url, day, "20000000"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while not glob.glob(pattern):
            if writer.poll() is not None:
                out, err = writer.communicate()
                pytest.fail(f"writer ended before its temp file appeared: {out!r} {err[-2000:]!r}")
            assert time.monotonic() < deadline, "the writer's temp file never appeared"
            time.sleep(0.005)
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    assert writer.returncode == -signal.SIGKILL
    assert b"written" not in writer.stdout.read()
    # The half-written file is still there (the retention job sweeps it after a day) ...
    leftovers = glob.glob(pattern)
    assert len(leftovers) == 1
    assert not glob.glob(f"{lake.url}/_journal/*.json")  # it was never published

    # ... yet the partition is exactly the old one, for marketpipe and for plain readers.
    assert digest(path) == old_digest
    assert_frame_equal(pl.read_parquet(path), before)
    assert_frame_equal(lake.read_partitions("daily_prices", "krx", DAILY_PRICES), before)
    scanned = pl.scan_parquet(f"{lake.url}/daily_prices/**/*.parquet", hive_partitioning=True)
    seen = scanned.collect()
    assert len(seen) == len(before)
    assert seen["source"].unique().to_list() == ["synthetic"]
    assert seen["date"].cast(pl.String).unique().to_list() == [day]
    assert_frame_equal(seen.select(before.columns).sort(KEY), before.sort(KEY))
    counted = query(
        f"select count(*) from read_parquet('{lake.url}/daily_prices/*/*/*.parquet', "
        "hive_partitioning=true)"
    )[0][0]
    assert counted == len(before)

    # The next run replaces the partition normally despite the crash's leftover.
    again = runs("krx", "daily_prices", day=day)
    assert [e.partition for e in again.get_asset_materialization_events()] == [day]
    assert sorted(p.name for p in path.parent.glob("*.parquet")) == ["part-0.parquet"]
    assert_frame_equal(pl.read_parquet(path).sort(KEY), before.sort(KEY))


def test_write_errors_leave_the_old_file(stored_session, lake, monkeypatch):
    day, path, before = stored_session
    old_digest = digest(path)
    when = [before["trade_date"][0]]

    def assert_untouched():
        assert digest(path) == old_digest
        assert sorted(p.name for p in path.parent.iterdir()) == ["part-0.parquet"]
        assert_frame_equal(pl.read_parquet(path), before)

    # A frame parquet cannot hold.
    unwritable = before.with_columns(extra=pl.Series([object()] * len(before), dtype=pl.Object))
    with pytest.raises(Exception):  # noqa: B017 - whatever polars raises for Object columns
        lake.write_partitions("daily_prices", "krx", unwritable, when)
    assert_untouched()

    # A write that fails halfway, like a full disk, after putting bytes on disk.
    original = pl.DataFrame.write_parquet
    targets = []

    def disk_full(self, file, *args, **kwargs):
        original(self, file, *args, **kwargs)
        targets.append(Path(file))
        with open(file, "r+b") as fh:
            fh.truncate(os.path.getsize(file) // 2)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pl.DataFrame, "write_parquet", disk_full)
    with pytest.raises(OSError, match="No space left"):
        lake.write_partitions("daily_prices", "krx", before.with_columns(pl.col("close") * 2), when)
    monkeypatch.undo()
    # It was a staged file, never the partition's; the failed batch's staging is removed.
    assert len(targets) == 1 and "_staging" in targets[0].parts and targets[0] != path
    assert not targets[0].exists()
    assert not list((Path(lake.url) / "_staging").iterdir())
    assert_untouched()

    # The same frame written without the fault does replace the partition.
    lake.write_partitions("daily_prices", "krx", before.with_columns(pl.col("close") * 2), when)
    assert digest(path) != old_digest
    assert pl.read_parquet(path)["close"].equals(before["close"] * 2)


# Plain readers ---------------------------------------------------------------------------------
def test_duckdb_and_polars_read_the_hive_layout_of_two_markets(with_universe, runs, lake):
    expected = {}
    for market in ("krx", "us"):
        days = recent_sessions(market, 2)
        result = runs(market, "daily_prices", days=(days[0], days[-1]))
        assert sorted(e.partition for e in result.get_asset_materialization_events()) == days
        for day in days:
            expected[(market, day)] = pl.read_parquet(
                part_file(lake.url, "daily_prices", market, day)
            ).height
    assert all(n > 0 for n in expected.values())

    source = f"read_parquet('{lake.url}/daily_prices/*/*/*.parquet', hive_partitioning=true)"
    columns = [row[0] for row in query(f"describe select * from {source}")]
    assert {"market", "date", *DAILY_PRICES.names()} <= set(columns)
    counts = query(f"select market, cast(date as varchar), count(*) from {source} group by all")
    assert {(m, d): n for m, d, n in counts} == expected
    # The hive date is the row's trade date.
    mismatched = query(
        f"select count(*) from {source} where cast(date as varchar) <> cast(trade_date as varchar)"
    )[0][0]
    assert mismatched == 0

    polars_counts = (
        pl.scan_parquet(f"{lake.url}/daily_prices/**/*.parquet", hive_partitioning=True)
        .group_by("market", pl.col("date").cast(pl.String))
        .len()
        .collect()
    )
    assert {(m, d): n for m, d, n in polars_counts.iter_rows()} == expected


# S3 -------------------------------------------------------------------------------------------
def test_s3_lake_on_a_local_s3_server(s3_server, tmp_path, instance):
    # boto3 and the lake find the server through AWS_ENDPOINT_URL alone.
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="market-lake")
    lake = LakeResource(url="s3://market-lake/lake")
    market_data = synthetic_data(symbols=60, missing_rate=0.0)
    day = recent_sessions("krx", 1)[0]
    runs = Runner(lake, market_data, instance)
    runs.universe("krx")
    result = runs("krx", "daily_prices", "indicators", day=day)
    assert result.success

    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="market-lake", Prefix="lake/")["Contents"]}
    prices_key = f"lake/daily_prices/market=krx/date={day}/part-0.parquet"
    indicators_key = f"lake/indicators/market=krx/date={day}/part-0.parquet"
    assert {"lake/universe/market=krx/part-0.parquet", prices_key, indicators_key} <= keys
    assert not [k for k in keys if k.endswith(".tmp")]

    def read_object(key: str) -> pl.DataFrame:
        return pl.read_parquet(s3.get_object(Bucket="market-lake", Key=key)["Body"].read())

    stored = read_object(prices_key)
    indicators = read_object(indicators_key)
    assert {c: stored.schema[c] for c in DAILY_PRICES} == dict(DAILY_PRICES)
    assert {c: indicators.schema[c] for c in INDICATORS} == dict(INDICATORS)
    assert_frame_equal(lake.read_partitions("daily_prices", "krx", DAILY_PRICES), stored)
    assert indicators.select(KEY).sort(KEY).equals(stored.select(KEY).sort(KEY))

    # The same run on a local lake stores the same rows.
    local = LakeResource(url=str(tmp_path / "local"))
    local_runs = Runner(local, market_data, instance)
    local_runs.universe("krx")
    assert local_runs("krx", "daily_prices", day=day).success
    assert_frame_equal(
        pl.read_parquet(part_file(local.url, "daily_prices", "krx", day)).sort(KEY),
        stored.sort(KEY),
    )


def test_missing_bucket_is_reported_as_unreachable_lake(s3_server, instance, market_data):
    lake = LakeResource(url="s3://no-such-bucket/lake")
    with pytest.raises(LakeUnreachable, match="MARKETPIPE_LAKE_URL") as caught:
        lake.ensure_reachable()
    assert "s3://no-such-bucket/lake" in str(caught.value)

    # A run against it fails while setting up the lake, before touching any data.
    result = Runner(lake, market_data, instance)("krx", "universe")
    assert not result.success
    assert boto3.client("s3").list_buckets()["Buckets"] == []
