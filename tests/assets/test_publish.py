"""Write-audit-publish: a batch that fails a blocking check changes nothing published and is kept
in _rejected/; a publisher SIGKILLed at any step (local disk, S3 on moto, the real CLI in a
backfill) leaves each partition's old pair or new pair once recovered, never a mix; stale
staging is swept, nothing else."""

import datetime as dt
import glob
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import boto3
import dagster as dg
import fsspec.asyn
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from marketpipe_assets.retention import retention_job
from resources.lake import LakeResource
from resources.market_data import MarketDataResource
from resources.publishing import JOURNAL, REASON_FILE, REJECTED, STAGING
from tests.conftest import REPO, Runner, cli_environment, recent_sessions

DAGSTER = Path(sys.executable).with_name("dagster")
DAYS = [dt.date(2026, 11, 19), dt.date(2026, 11, 20)]
DATASETS = ("daily_prices", "quarantine/daily_prices", "indicators")
CLI_SYMBOLS = 200
NOISY_SYMBOLS = 1000


def published(root: Path) -> dict[str, bytes]:
    """Every published file of the datasets (relative path -> bytes), read without marketpipe
    (so without recovery), as DuckDB or Spark would see the lake."""
    files = {}
    for dataset in DATASETS:
        for path in sorted((root / dataset).rglob("*.parquet")):
            files[str(path.relative_to(root))] = path.read_bytes()
    return files


def digests(files: dict[str, bytes]) -> dict[str, str]:
    return {k: hashlib.sha256(v).hexdigest() for k, v in files.items()}


def noisy_source(**settings) -> MarketDataResource:
    """Synthetic bars with no symbol missing and 2% bad rows: over ~900 active symbols a
    session has a quarantine file and completeness near 98%, whatever the date (with 60
    symbols at 5% it fell under 95% on some sessions)."""
    defaults = {
        "synthetic_symbols": NOISY_SYMBOLS,
        "synthetic_missing_rate": 0.0,
        "synthetic_bad_row_rate": 0.02,
        "landing_url": "unused-landing",
    }
    return MarketDataResource(**{**defaults, **settings})


# A failed audit --------------------------------------------------------------------------------
def test_failed_completeness_leaves_the_published_pair_and_keeps_the_rejected_batch(lake, instance):
    noisy = noisy_source()
    [day] = recent_sessions("krx", 1)
    noisy_runs = Runner(lake, noisy, instance)
    noisy_runs.universe("krx")
    good = noisy_runs("krx", "daily_prices", day=day)
    assert good.success
    root = Path(lake.url)
    before = published(root)
    assert f"quarantine/daily_prices/market=krx/date={day}/part-0.parquet" in before
    key = dg.AssetKey(["krx", "daily_prices"])
    first = instance.get_latest_materialization_event(key)

    # Half the symbols missing: completeness (blocking) fails on the staged batch.
    gappy = noisy_source(synthetic_missing_rate=0.5, synthetic_seed=7)
    bad = Runner(lake, gappy, instance)("krx", "daily_prices", day=day)
    assert not bad.success
    checks = {e.check_name: e for e in bad.get_asset_check_evaluations()}
    assert not checks["completeness"].passed and checks["price_relationships"].passed
    assert bad.get_asset_materialization_events() == []
    assert instance.get_latest_materialization_event(key).run_id == first.run_id

    # Published files byte-identical, stored and quarantine alike; nothing left staged.
    assert digests(published(root)) == digests(before)
    assert not list((root / STAGING).iterdir())
    assert not list((root / JOURNAL).glob("*.json"))

    # The rejected batch, named in the failure, holds what would have been published.
    [rejected] = (root / REJECTED / "daily_prices" / "market=krx").iterdir()
    assert rejected.name.endswith(f"-{bad.run_id}")
    [failure] = [e for e in bad.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    message = failure.step_failure_data.error.message
    assert str(rejected) in message and "completeness" in message
    would_be = pl.read_parquet(rejected / f"daily_prices/market=krx/date={day}/part-0.parquet")
    present = len(would_be)
    assert 0 < present < NOISY_SYMBOLS * 0.75
    assert would_be["symbol"].n_unique() == present
    assert not would_be.equals(
        pl.read_parquet(root / f"daily_prices/market=krx/date={day}/part-0.parquet")
    )
    reason = json.loads((rejected / REASON_FILE).read_text())
    assert reason["run_id"] == bad.run_id and "completeness" in reason["reason"]
    assert f"daily_prices/market=krx/date={day}/part-0.parquet" in reason["would_have_written"]

    # A later good run publishes normally.
    again = noisy_runs("krx", "daily_prices", day=day)
    assert again.success
    assert digests(published(root)) == digests(before)  # the same data as the first run


# SIGKILL at every step of a publish -------------------------------------------------------------
def pair(seed: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Stored and quarantined rows of DAYS: seed 0 quarantines only on the first day, seed 1
    only on the second, so a publish replaces, adds and deletes quarantine files."""
    stored = pl.DataFrame(
        {
            "symbol": ["AAA", "BBB"] * 2,
            "trade_date": [DAYS[0]] * 2 + [DAYS[1]] * 2,
            "close": [1.0 + seed, 2.0 + seed, 3.0 + seed, 4.0 + seed],
        }
    )
    bad_day = DAYS[seed]
    quarantined = pl.DataFrame(
        {"symbol": ["ZZZ"], "trade_date": [bad_day], "close": [-1.0 - seed]}
    ).with_columns(violations=pl.lit(["positive_prices"]))
    return stored, quarantined


_KILLED_PUBLISHER = textwrap.dedent(
    """
    import sys
    from resources.lake import LakeResource
    from tests.assets.test_publish import DAYS, arm, pair

    lake = LakeResource(url=sys.argv[1])
    batch = lake.stage("new", "daily_prices", "us", *pair(0), DAYS)
    arm(lake, int(sys.argv[2]))  # SIGKILL this process before its n-th filesystem change
    lake.publish(batch)
    print("published", flush=True)
    """
)


def arm(lake: LakeResource, n: int) -> None:
    """Make this process SIGKILL itself just before the n-th filesystem change of a publish:
    os.replace, os.remove, os.rmdir and shutil.rmtree (one change) locally, PUT, copy and
    delete on S3 (real kills, no fakes)."""
    import threading

    lock, count, inside = threading.Lock(), [0], []

    def tick():
        with lock:
            count[0] += 1
            if count[0] >= n:
                os.kill(os.getpid(), signal.SIGKILL)

    if lake.is_local:
        for module, name in ((os, "replace"), (os, "remove"), (os, "rmdir"), (shutil, "rmtree")):
            original = getattr(module, name)

            def counted(*args, _original=original, **kwargs):
                if inside:  # rmtree's own rmdir calls are part of its one change
                    return _original(*args, **kwargs)
                tick()
                inside.append(True)
                try:
                    return _original(*args, **kwargs)
                finally:
                    inside.pop()

            setattr(module, name, counted)
        return
    for name in ("_pipe_file", "_cp_file", "_rm_file"):
        original = getattr(type(lake.fs), name)

        async def counted(self, *args, _original=original, **kwargs):
            tick()
            return await _original(self, *args, **kwargs)

        # Per instance, with its sync twin: fsspec binds those when the filesystem is made.
        bound = counted.__get__(lake.fs)
        setattr(lake.fs, name, bound)
        setattr(lake.fs, name[1:], fsspec.asyn.sync_wrapper(bound, obj=lake.fs))


def read_pair(lake: LakeResource) -> tuple[pl.DataFrame, pl.DataFrame]:
    schema = {"symbol": pl.String, "trade_date": pl.Date, "close": pl.Float64}
    stored = lake.read_partitions("daily_prices", "us", schema)
    quarantined = lake.read_quarantine("daily_prices", "us", schema)
    return stored.sort("trade_date", "symbol"), quarantined.sort("trade_date")


def raw_pair(lake: LakeResource) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The same without recovery: what a plain Hive reader sees right after the crash."""
    lake.fs.invalidate_cache()
    frames = []
    for dataset in ("daily_prices", "quarantine/daily_prices"):
        paths = sorted(lake.fs.glob(f"{lake.root}/{dataset}/market=us/*/*.parquet"))
        files = [lake.fs.cat_file(p) for p in paths]
        frame = pl.concat([pl.read_parquet(f) for f in files]) if files else None
        frames.append(frame.sort("trade_date", "symbol") if frame is not None else None)
    return frames[0], frames[1]


def same(a: pl.DataFrame | None, b: pl.DataFrame) -> bool:
    return a is not None and a.equals(b)


def kill_at_every_step(url: str, env: dict) -> dict[int, str]:
    """Publish seed 0 over seed 1, killed before change 1, 2, ... until a publish completes;
    after each crash, recover and classify the lake. Returns {n: "old" | "new"}."""
    old, new = pair(1), pair(0)
    outcomes, mixed_before_recovery = {}, 0
    for n in range(1, 60):
        lake = LakeResource(url=f"{url}/kill-{n}")
        lake.publish(lake.stage("old", "daily_prices", "us", *old, DAYS))
        run = [sys.executable, "-c", _KILLED_PUBLISHER, lake.url, str(n)]
        done = subprocess.run(run, cwd=REPO, env=env, capture_output=True, timeout=300)
        if done.returncode == 0:
            assert b"published" in done.stdout
            assert same(read_pair(lake)[0], new[0])
            break
        assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
        raw = raw_pair(lake)
        mixed_before_recovery += not (
            (same(raw[0], old[0]) and same(raw[1], old[1]))
            or (same(raw[0], new[0]) and same(raw[1], new[1]))
        )
        lake.recover()
        lake.fs.invalidate_cache()
        stored, quarantined = read_pair(lake)
        if stored.equals(old[0]):
            assert_frame_equal(quarantined, old[1])
            # Never published: the staged batch waits for the sweep.
            assert lake.fs.glob(f"{lake.root}/{STAGING}/*/daily_prices~*")
            outcomes[n] = "old"
        else:
            assert_frame_equal(stored, new[0])
            assert_frame_equal(quarantined, new[1])  # seed 1's quarantine file is gone
            assert not lake.fs.glob(f"{lake.root}/{STAGING}/*/daily_prices~*")
            outcomes[n] = "new"
        assert not lake.fs.glob(f"{lake.root}/{JOURNAL}/*.json")
    else:
        pytest.fail("the publish never completed")
    # Killed before its journal existed: the old pair; after: rolled forward to the new one.
    assert outcomes[1] == "old" and set(list(outcomes.values())[1:]) == {"new"}
    assert len(outcomes) >= 5
    assert mixed_before_recovery > 0  # the kills did land between moves
    return outcomes


def subprocess_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def test_sigkill_at_every_publish_step_on_local_disk(tmp_path):
    kill_at_every_step(str(tmp_path), subprocess_env())


def test_sigkill_at_every_publish_step_on_s3(s3_server):
    boto3.client("s3").create_bucket(Bucket="market-lake")
    kill_at_every_step("s3://market-lake/lake", subprocess_env())


# The real CLI killed mid-backfill ---------------------------------------------------------------
_KILL_HOOK = textwrap.dedent(
    """
    # Loaded at start-up by every Python process of the CLI (PYTHONPATH): SIGKILLs the whole
    # process group once a publish has moved MARKETPIPE_TEST_KILL_AFTER_MOVES files into place.
    import os, signal

    _after = int(os.environ.get("MARKETPIPE_TEST_KILL_AFTER_MOVES") or 0)
    if _after:
        _replace, _moved = os.replace, [0]

        def _killing_replace(src, dst, *args, **kwargs):
            result = _replace(src, dst, *args, **kwargs)
            if "/_staging/" in str(src):
                _moved[0] += 1
                if _moved[0] >= _after:
                    os.killpg(os.getpgid(0), signal.SIGKILL)
            return result

        os.replace = _killing_replace
    """
)


def cli_env(tmp_path: Path, name: str, lake: Path, **extra: str) -> dict:
    home = tmp_path / name
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    env = cli_environment()
    hook = tmp_path / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(_KILL_HOOK)
    env.update(
        DAGSTER_HOME=str(home),
        MARKETPIPE_LAKE_URL=str(lake),
        MARKETPIPE_LANDING_URL=str(tmp_path / "landing"),
        MARKETPIPE_SYNTHETIC_SYMBOLS=str(CLI_SYMBOLS),
        MARKETPIPE_SYNTHETIC_MISSING_RATE="0",
        MARKETPIPE_SYNTHETIC_BAD_ROW_RATE="0.02",
        MARKETPIPE_STEP_RETRIES="0",
        PYTHONPATH=os.pathsep.join([str(hook), str(REPO)]),
        **extra,
    )
    return env


def backfill(env: dict, first: str, last: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(DAGSTER), "asset", "materialize", "-m", "marketpipe_assets.definitions"]
        + ["--select", "krx/daily_prices,krx/indicators", "--partition-range", f"{first}...{last}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        start_new_session=True,  # its own process group, which the hook kills whole
    )


@pytest.mark.xdist_group("cli")
def test_cli_backfill_killed_mid_publish_then_rerun_equals_a_clean_run(tmp_path, instance):
    keys = recent_sessions("krx", 20)
    lake, clean = tmp_path / "lake", tmp_path / "clean"
    # 200 symbols at 2% bad rows: a quarantine file most days, completeness always >= 95%.
    market_data = noisy_source(synthetic_symbols=CLI_SYMBOLS, synthetic_bad_row_rate=0.02)
    resource = LakeResource(url=str(lake))
    Runner(resource, market_data, instance).universe("krx")
    shutil.copytree(lake, clean)
    # Earlier data in the lake, without bad rows: the backfill moves rows of most sessions to
    # quarantine. (Another seed would list other symbols than the stored universe.)
    earlier = noisy_source(synthetic_symbols=CLI_SYMBOLS, synthetic_bad_row_rate=0.0)
    assert Runner(resource, earlier, instance)(
        "krx", "daily_prices", days=(keys[0], keys[-1])
    ).success
    old = published(lake)

    killed = backfill(
        cli_env(tmp_path, "home-killed", lake, MARKETPIPE_TEST_KILL_AFTER_MOVES="15"),
        keys[0],
        keys[-1],
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert glob.glob(f"{lake}/{JOURNAL}/*.json")  # killed mid-publish
    crashed = published(lake)
    changed = {k for k in crashed if crashed[k] != old.get(k)}
    assert 0 < len(changed) < len(old)  # some partitions published, others not yet

    rerun = backfill(cli_env(tmp_path, "home-rerun", lake), keys[0], keys[-1])
    assert rerun.returncode == 0 and "RUN_SUCCESS" in rerun.stderr + rerun.stdout, rerun.stderr[
        -3000:
    ]
    done = backfill(cli_env(tmp_path, "home-clean", clean), keys[0], keys[-1])
    assert done.returncode == 0, done.stderr[-3000:]

    ours, theirs = published(lake), published(clean)
    assert sorted(ours) == sorted(theirs)
    assert len([k for k in ours if k.startswith("indicators/")]) == len(keys)
    assert any(k.startswith("quarantine/") for k in ours)
    for name in ours:
        assert_frame_equal(
            pl.read_parquet(ours[name]), pl.read_parquet(theirs[name]), check_exact=True
        )
    assert digests(ours) == digests(theirs)
    assert not glob.glob(f"{lake}/{JOURNAL}/*.json")
    assert not list((lake / STAGING).iterdir())


# Sweeping --------------------------------------------------------------------------------------
def test_sweep_removes_only_stale_staging_and_temp_files(lake, instance):
    root = Path(lake.url)
    lake.write_partitions("daily_prices", "us", pair(0)[0], DAYS)
    stored_before = published(root)
    now = dt.datetime.now(dt.UTC)
    two_days_ago = (now - dt.timedelta(days=2)).timestamp()

    def staged(name: str) -> Path:
        path = root / STAGING / name / "daily_prices/market=us/date=2026-11-20/part-0.parquet"
        path.parent.mkdir(parents=True)
        path.write_bytes(b"staged")
        return root / STAGING / name

    stamp = f"{now - dt.timedelta(days=2):%Y%m%dT%H%M%SZ}"
    abandoned = staged(f"{stamp}-aaaaaaaaaaaa")
    journaled = staged(f"{stamp}-bbbbbbbbbbbb")  # its journal will publish it: never swept
    (root / JOURNAL).mkdir(exist_ok=True)
    (root / JOURNAL / f"{journaled.name}.json").write_text("{}")
    fresh = staged(f"{now - dt.timedelta(hours=2):%Y%m%dT%H%M%SZ}-cccccccccccc")
    not_ours = staged("notes")
    old_tmp = root / "daily_prices/market=us/date=2026-11-20/.part-0.parquet.dead.tmp"
    new_tmp = root / "universe/market=us/.part-0.parquet.live.tmp"
    for path in (old_tmp, new_tmp):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    os.utime(old_tmp, (two_days_ago, two_days_ago))
    rejected = root / REJECTED / f"daily_prices/market=us/{stamp}-run/x.parquet"
    expired = root / REJECTED / "daily_prices/market=us/20200101T000000Z-run/x.parquet"
    for path in (rejected, expired):  # kept as long as quarantine (30 days)
        path.parent.mkdir(parents=True)
        path.write_bytes(b"kept for inspection")

    listed = lake.sweep_staging(now=now, dry_run=True)
    assert sorted(listed) == sorted([str(abandoned), str(old_tmp)])
    assert abandoned.exists() and old_tmp.exists()

    # The retention job sweeps (with the real clock: MARKETPIPE_NOW unset).
    result = retention_job.execute_in_process(
        run_config={"ops": {"remove_expired": {"config": {"spool_dir": str(root / "no-spool")}}}},
        resources={"lake": lake},
        instance=instance,
    )
    assert result.success
    assert not abandoned.exists() and not old_tmp.exists()
    assert journaled.exists() and fresh.exists() and not_ours.exists() and new_tmp.exists()
    assert rejected.exists() and not expired.parent.exists()
    assert published(root) == stored_before
