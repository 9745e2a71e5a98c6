"""Retention removes quarantine past 30 days and spool captures past 3 days, and nothing else:
files of various ages (the boundary day included) on a local lake and on moto's S3 server."""

import datetime as dt
import os
from pathlib import Path

import boto3
import dagster as dg
import polars as pl
import pytest

from marketpipe_assets.freshness import NOW_VARIABLE
from marketpipe_assets.retention import (
    QUARANTINE_DAYS_VARIABLE,
    retention_job,
    retention_schedule,
)
from resources.lake import LakeResource

D = dt.date
TODAY = D(2026, 11, 21)  # MARKETPIPE_NOW below
OLD, BOUNDARY, RECENT, ANCIENT = D(2026, 10, 21), D(2026, 10, 22), D(2026, 11, 20), D(2016, 1, 4)
SPOOL_DIR_VARIABLE = "MARKETPIPE_SPOOL_DIR"


@pytest.fixture(autouse=True)
def fixed_clock(monkeypatch):
    monkeypatch.setenv(NOW_VARIABLE, f"{TODAY}T12:00:00+00:00")
    for name in (QUARANTINE_DAYS_VARIABLE, "MARKETPIPE_SPOOL_RETENTION_DAYS", SPOOL_DIR_VARIABLE):
        monkeypatch.delenv(name, raising=False)


def frame(day: D) -> pl.DataFrame:
    return pl.DataFrame({"symbol": ["AAA"], "trade_date": [day], "close": [1.0]})


def fill_lake(lake: LakeResource) -> None:
    """Stored partitions, quarantine and a failure log, each at every age."""
    days = [ANCIENT, OLD, BOUNDARY, RECENT]
    for dataset in ("daily_prices", "quarantine/daily_prices"):
        for day in days:
            lake.write_partitions(dataset, "us", frame(day), [day])
    lake.write_table("universe", "us", frame(ANCIENT))
    # Hourly datasets nest hour= folders under the date: the whole date folder goes.
    hours = f"{lake.root}/quarantine/trade_aggregates/market=us/date={OLD}"
    put(lake, f"{hours}/hour=13/p.parquet", b"x" * 10)
    put(lake, f"{hours}/hour=14/p.parquet", b"x" * 10)
    put(lake, f"{lake.root}/failure_log/date={ANCIENT}/part-0.parquet", b"failure")


def put(lake: LakeResource, path: str, data: bytes) -> None:
    if lake.is_local:
        lake.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    lake.fs.pipe(path, data)


def lake_files(lake: LakeResource) -> set[str]:
    return {p[len(lake.root) + 1 :] for p in lake.fs.find(lake.root)}


def expected_lake_after(before: set[str]) -> set[str]:
    gone = (f"quarantine/daily_prices/market=us/date={d}/" for d in (ANCIENT, OLD))
    gone = (*gone, f"quarantine/trade_aggregates/market=us/date={OLD}/")
    return {p for p in before if not p.startswith(gone)}


def make_spool(root: Path) -> None:
    ten_days_ago = (dt.datetime(2026, 11, 11, 12, tzinfo=dt.UTC)).timestamp()
    files = {
        "order_books/market=us/date=2026-11-17/book-1.jsonl": None,  # 4 days: goes
        "order_books/market=us/date=2026-11-18/book-1.jsonl": None,  # exactly 3 days: stays
        "order_books/market=krx/date=2026-11-21/book-1.jsonl": None,
        # Expired, but its session never reached the lake: the spool is the only copy.
        "order_books/market=krx/date=2026-11-10/slot=20261110T000000Z.parquet": None,
        "order_books/market=us/2026-11-10.jsonl": None,  # dated file name: goes
        "order_books/market=us/undated-old.jsonl": ten_days_ago,  # no date: its mtime, goes
        "order_books/market=us/current.jsonl": None,  # being written now: stays
        # The collector's live trade spool, idle for ten days: never touched (it prunes itself).
        "trades/us.sqlite": ten_days_ago,
        "trades/us.sqlite-wal": ten_days_ago,
        "offsets-2016-01-01.json": ten_days_ago,  # not a capture folder: never touched
    }
    for name, mtime in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}\n" * 5)
        if mtime:
            os.utime(path, (mtime, mtime))


def spool_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def run(lake: LakeResource, instance, **config) -> dg.ExecuteInProcessResult:
    result = retention_job.execute_in_process(
        run_config={"ops": {"remove_expired": {"config": config}}},
        resources={"lake": lake},
        instance=instance,
    )
    assert result.success
    return result


def metadata(result: dg.ExecuteInProcessResult) -> dict:
    (output,) = [e for e in result.all_node_events if e.event_type_value == "STEP_OUTPUT"]
    return {k: v.value for k, v in output.step_output_data.metadata.items()}


def test_dry_run_lists_and_deletes_nothing_then_the_run_deletes_only_expired_data(
    lake, tmp_path, instance
):
    fill_lake(lake)
    # The expired us order-book sessions were compacted into the lake: their spool can go.
    for day in (D(2026, 11, 17), D(2026, 11, 18)):
        lake.write_partitions("order_books", "us", frame(day), [day])
    spool = tmp_path / "spool"
    make_spool(spool)
    lake_before, spool_before = lake_files(lake), spool_files(spool)

    dry = run(lake, instance, dry_run=True, spool_dir=str(spool))
    assert lake_files(lake) == lake_before and spool_files(spool) == spool_before
    listed = metadata(dry)["would_delete"]
    assert sorted(Path(p).name for p in listed["quarantine"]) == [
        f"date={ANCIENT}",
        f"date={OLD}",
        f"date={OLD}",
    ]
    assert metadata(dry)["quarantine_paths"] == 3 and metadata(dry)["spool_paths"] == 3

    # The variable sets the spool folder when the run config does not.
    os.environ[SPOOL_DIR_VARIABLE] = str(spool)
    try:
        done = run(lake, instance)
    finally:
        del os.environ[SPOOL_DIR_VARIABLE]
    assert lake_files(lake) == expected_lake_after(lake_before)
    assert spool_files(spool) == spool_before - {
        "order_books/market=us/date=2026-11-17/book-1.jsonl",
        "order_books/market=us/2026-11-10.jsonl",
        "order_books/market=us/undated-old.jsonl",
    }
    assert not (spool / "order_books/market=us/date=2026-11-17").exists()  # the folder went
    meta = metadata(done)
    assert meta["dry_run"] is False
    assert meta["spool_bytes"] == 3 * len("{}\n" * 5)
    assert meta["quarantine_bytes"] > 20  # two parquet files plus the two 10-byte hour files
    assert meta["deleted"]["quarantine"] == listed["quarantine"]
    assert meta["spool_kept_not_ingested"] == [
        str(spool / "order_books/market=krx/date=2026-11-10")
    ]

    # A second run has nothing left to do.
    assert metadata(run(lake, instance, spool_dir=str(spool)))["quarantine_paths"] == 0


def test_retention_periods_are_configurable(lake, tmp_path, instance, monkeypatch):
    fill_lake(lake)
    before = lake_files(lake)
    monkeypatch.setenv(QUARANTINE_DAYS_VARIABLE, "0")  # keep only today's
    run(lake, instance, spool_dir=str(tmp_path / "no-spool"))
    assert not [p for p in lake_files(lake) if p.startswith("quarantine/")]
    assert {p for p in before if not p.startswith("quarantine/")} == lake_files(lake)

    monkeypatch.setenv(QUARANTINE_DAYS_VARIABLE, "thirty")
    result = retention_job.execute_in_process(
        resources={"lake": lake}, instance=instance, raise_on_error=False
    )
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert QUARANTINE_DAYS_VARIABLE in failure.step_failure_data.error.cause.message


def test_schedule_runs_the_retention_job_daily():
    assert retention_schedule.job_name == "lake_retention"
    assert retention_schedule.cron_schedule == "30 7 * * *"


def test_retention_on_an_s3_lake(s3_server, tmp_path, instance):
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="market-lake")
    lake = LakeResource(url="s3://market-lake/lake")
    fill_lake(lake)
    before = lake_files(lake)
    assert f"quarantine/daily_prices/market=us/date={OLD}/part-0.parquet" in before

    result = run(lake, instance, spool_dir=str(tmp_path / "spool"))

    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="market-lake")["Contents"]}
    assert {k[len("lake/") :] for k in keys} == expected_lake_after(before)
    assert metadata(result)["deleted"]["quarantine"][0].startswith("s3://market-lake/lake/")
