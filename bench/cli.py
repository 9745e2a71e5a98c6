"""Run `dagster asset materialize` on a fresh temporary instance and read back what it did."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from .common import REPO

DAGSTER = str(Path(sys.executable).with_name("dagster"))


def new_home(root: Path, name: str) -> Path:
    """A fresh DAGSTER_HOME holding a copy of the repository's dagster.yaml."""
    home = root / name
    home.mkdir(parents=True)
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    return home


def env(home: Path, lake: Path, market: str, symbols: int, batch: int | None, **extra) -> dict:
    out = {k: v for k, v in os.environ.items() if not k.startswith("MARKETPIPE_")}
    out.update(
        extra,
        DAGSTER_HOME=str(home),
        MARKETPIPE_LAKE_URL=str(lake),
        MARKETPIPE_SYNTHETIC_SYMBOLS=str(symbols),
        MARKETPIPE_BENCH_MARKET=market,
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    )
    out.pop("DAGSTER_EVENT_BATCH_SIZE", None)
    if batch:
        out["DAGSTER_EVENT_BATCH_SIZE"] = str(batch)
    return out


def materialize(
    module: str, select: str, env: dict, partition_range: str | None = None
) -> tuple[float, float]:
    """(start, end) epoch seconds of one CLI process; raises with the log tail on failure."""
    cmd = [DAGSTER, "asset", "materialize", "-m", module, "--select", select]
    if partition_range:
        cmd += ["--partition-range", partition_range]
    started = time.time()
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    ended = time.time()
    if done.returncode != 0 or "RUN_SUCCESS" not in done.stderr + done.stdout:
        tail = (done.stderr + done.stdout)[-3000:]
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{tail}")
    return started, ended


def run_stats(home: Path, started: float, ended: float) -> dict:
    """Wall time split around the run (before RUN_START: CLI start, loading the definitions,
    creating the run and its planned events; after RUN_SUCCESS: teardown), step durations and
    event counts/bytes from the run's SQLite event log."""
    import dagster as dg

    with dg.DagsterInstance.from_config(str(home)) as instance:
        record = instance.get_run_records(limit=1)[0]
        run_id = record.dagster_run.run_id
        steps = {
            s.step_key: round(s.end_time - s.start_time, 2)
            for s in instance.get_run_step_stats(run_id)
            if s.start_time and s.end_time
        }
        run_start, run_end = record.start_time, record.end_time
    with sqlite3.connect(home / "history" / "runs" / f"{run_id}.db") as db:
        rows = db.execute(
            "SELECT dagster_event_type, count(*), sum(length(event)) FROM event_logs GROUP BY 1"
        ).fetchall()
    events = {kind or "log": n for kind, n, _ in rows}
    return {
        "wall_seconds": round(ended - started, 2),
        "before_run_seconds": round(run_start - started, 2),
        "run_seconds": round(run_end - run_start, 2),
        "after_run_seconds": round(ended - run_end, 2),
        "step_seconds": steps,
        "events": sum(events.values()),
        "event_bytes": sum(size for *_, size in rows),
        "events_by_type": events,
    }
