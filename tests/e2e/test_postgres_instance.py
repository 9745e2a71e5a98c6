"""Dagster instance storage on the machine's real Postgres when MARKETPIPE_PG_URL is set."""

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import psycopg2
import pytest
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

from marketpipe_assets.instance_config import (
    PG_URL_VARIABLE,
    InstanceConfigError,
    write_instance_yaml,
)
from tests.conftest import REPO, materialize, recent_sessions
from tests.postgres_db import fresh_database

DAGSTER_TABLES = {"runs", "event_logs", "asset_keys", "jobs", "instigators", "job_ticks"}


@pytest.fixture
def pg_url():
    """A fresh database's URL with the psycopg2 driver dagster-postgres needs."""
    with fresh_database() as url:
        yield url.replace("postgresql://", "postgresql+psycopg2://", 1)


def libpq(url: str) -> str:
    return url.replace("+psycopg2", "", 1)


def test_without_the_variable_storage_stays_sqlite_under_dagster_home(tmp_path, monkeypatch):
    monkeypatch.delenv(PG_URL_VARIABLE, raising=False)
    write_instance_yaml(tmp_path, env={})
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert type(instance.run_storage).__name__ == "SqliteRunStorage"
        assert (tmp_path / "history").is_dir()  # the SQLite files live under DAGSTER_HOME


def test_a_plain_postgresql_url_is_refused_with_the_fix():
    with pytest.raises(InstanceConfigError) as raised:
        write_instance_yaml("unused", env={PG_URL_VARIABLE: "postgresql://u:secret@db:5432/dg"})
    message = str(raised.value)
    assert "postgresql+psycopg2://u:***@db:5432/dg" in message
    assert "secret" not in message  # the password is never echoed


def test_a_run_is_recorded_in_postgres_and_visible_through_the_instance(
    tmp_path, monkeypatch, pg_url, lake, market_data
):
    monkeypatch.setenv(PG_URL_VARIABLE, pg_url)
    write_instance_yaml(tmp_path)
    key = recent_sessions("us", 1)[0]
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
        instance_args = dict(lake=lake, market_data=market_data, instance=instance)
        assert materialize("us", ("universe",), **instance_args).success
        result = materialize("us", ("daily_prices",), partition_key=key, **instance_args)
        assert result.success

        runs = instance.get_runs()
        assert len(runs) == 2 and runs[0].run_id == result.run_id  # newest first
        assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
        records = instance.fetch_materializations(dg.AssetKey(["us", "daily_prices"]), limit=5)
        assert [(r.run_id, r.partition_key) for r in records.records] == [(result.run_id, key)]
        assert instance.get_materialized_partitions(dg.AssetKey(["us", "daily_prices"])) == {key}

    # The same facts straight from Postgres, without Dagster in between.
    with psycopg2.connect(libpq(pg_url)) as conn, conn.cursor() as cur:
        cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        assert {name for (name,) in cur.fetchall()} >= DAGSTER_TABLES
        cur.execute("SELECT status FROM runs WHERE run_id = %s", (result.run_id,))
        assert cur.fetchall() == [("SUCCESS",)]
        cur.execute(
            "SELECT partition FROM event_logs WHERE run_id = %s AND asset_key = %s"
            " AND dagster_event_type = 'ASSET_MATERIALIZATION'",
            (result.run_id, dg.AssetKey(["us", "daily_prices"]).to_string()),
        )
        assert cur.fetchall() == [(key,)]


def test_the_cli_honours_the_variable_through_the_written_dagster_yaml(tmp_path, pg_url):
    """What `make` does: write $DAGSTER_HOME/dagster.yaml, then run the real dagster CLI."""
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MARKETPIPE_", "DAGSTER_"))}
    if "MARKETPIPE_CACHE_DIR" in os.environ:
        env["MARKETPIPE_CACHE_DIR"] = os.environ["MARKETPIPE_CACHE_DIR"]
    env.update(
        DAGSTER_HOME=str(home),
        MARKETPIPE_PG_URL=pg_url,
        MARKETPIPE_LAKE_URL=str(tmp_path / "lake"),
        MARKETPIPE_LANDING_URL=str(tmp_path / "landing"),
        MARKETPIPE_SYNTHETIC_SYMBOLS="20",
    )
    bin_dir = Path(sys.executable).parent
    for cmd in (
        [sys.executable, "-m", "marketpipe_assets.instance_config"],
        [
            str(bin_dir / "dagster"),
            "asset",
            "materialize",
            "-m",
            "marketpipe_assets.definitions",
            "--select",
            "us/universe",
        ],  # fmt: skip
    ):
        done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{cmd} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    assert not (home / "history").exists()  # nothing went to SQLite
    with psycopg2.connect(libpq(pg_url)) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM runs WHERE status = 'SUCCESS'")
        assert cur.fetchone() == (1,)
        cur.execute(
            "SELECT count(*) FROM event_logs WHERE asset_key = %s"
            " AND dagster_event_type = 'ASSET_MATERIALIZATION'",
            (dg.AssetKey(["us", "universe"]).to_string(),),
        )
        assert cur.fetchone() == (1,)
