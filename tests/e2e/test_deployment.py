"""The deployment as a user runs it: `dagster dev` (webserver + daemon) started the way `make ui`
starts it, on a temporary instance and lake, driven only through the UI's GraphQL API.

The tests share one deployment (one xdist group, in file order): nothing runs at start, a
10-session backfill of krx/daily_prices reaches indicators by itself, a landing file is stored
and followed while a malformed one beside it is reported, and a run whose worker is SIGKILLed
fails and gives its provider pool slot back.
"""

import contextlib
import datetime as dt
import os
import signal
import time

import polars as pl
import pytest
import yaml

from marketpipe_assets.instance_config import instance_yaml
from marketpipe_assets.prices import active_symbols
from resources.lake import LakeResource
from tests.conftest import recent_sessions
from tests.deployment import Deployment, child_pids, running_deployment
from tests.fakes.twelvedata import API_KEY, FakeTwelveData

# One worker, one deployment. With pytest 9.2 xdist 3.8 ignores the group
# (https://github.com/pytest-dev/pytest-xdist/issues/1386) and each worker that gets one of these
# tests starts its own deployment; every test holds either way (file order is kept per worker).
pytestmark = pytest.mark.xdist_group("deployment")

SYMBOLS = 60
US_SYMBOLS = ("AAPL", "MSFT")
US_POOL = "provider_twelvedata"
LANDING_TAG = "marketpipe/landing_file"
REJECTED_JOB = "krx_landing_file_rejected"
# Generous bounds for a loaded 2-core machine; each wait ends as soon as its condition holds.
RUN_TIMEOUT = 300
AUTOMATION_TIMEOUT = 420


@pytest.fixture(scope="module")
def twelvedata():
    with FakeTwelveData() as server:
        yield server


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, twelvedata):
    root = tmp_path_factory.mktemp("deployment")
    universe = root / "us-universe.csv"
    pl.DataFrame(
        {
            "symbol": US_SYMBOLS,
            "name": US_SYMBOLS,
            "listing_date": [dt.date(2000, 1, 3)] * 2,
            "delisting_date": [None, None],
        }
    ).write_csv(universe)
    settings = {
        "MARKETPIPE_SYNTHETIC_SYMBOLS": str(SYMBOLS),
        # No missing bars: with 60 symbols, 1% missing would fail completeness now and then.
        "MARKETPIPE_SYNTHETIC_MISSING_RATE": "0",
        # Outage retries wait minutes (marketpipe_assets/retries.py); none is expected here.
        "MARKETPIPE_STEP_RETRIES": "0",
        # US through a real provider client against a local server, so that a run can be held
        # inside the provider's pool while its worker is killed.
        "MARKETPIPE_US_SOURCE": "twelvedata",
        "MARKETPIPE_US_UNIVERSE": str(universe),
        "TWELVEDATA_BASE_URL": twelvedata.url,
        "TWELVEDATA_API_KEY": API_KEY,
    }
    with running_deployment(root, **settings) as running:
        yield running


@pytest.fixture(scope="module")
def krx_universe(deployment):
    """krx/universe materialized from the UI (after the quiet-start test has looked)."""
    run = deployment.graphql.launch_run([["krx", "universe"]])
    assert deployment.wait_for_run(run, RUN_TIMEOUT) == "SUCCESS"


def runs_of(deployment: Deployment, job: str) -> list[dict]:
    return [r for r in deployment.graphql.runs() if r["jobName"] == job]


def materialized(deployment: Deployment, key: list[str], partitions: list[str]) -> set[str]:
    events = deployment.graphql.materializations(key, partitions)
    return {e["partition"] for e in events}


def failure_messages(deployment: Deployment, run_id: str) -> list[str]:
    messages = []
    for event in deployment.graphql.run_events(run_id):
        if event["__typename"] in {"ExecutionStepFailureEvent", "RunFailureEvent"}:
            messages.append(event.get("message") or "")
            for field in ("error", "pipelineFailureError"):
                if event.get(field):
                    messages.append(event[field]["message"])
    return messages


def test_the_shipped_instance_files_turn_run_monitoring_on(deployment):
    sqlite = yaml.safe_load(instance_yaml({}))
    postgres = yaml.safe_load(
        instance_yaml({"MARKETPIPE_PG_URL": "postgresql+psycopg2://dagster@127.0.0.1:5432/x"})
    )
    assert "storage" in postgres and "storage" not in sqlite
    for config in (sqlite, postgres):
        monitoring = config["run_monitoring"]
        assert monitoring["enabled"] is True
        assert monitoring["free_slots_after_run_end_seconds"] <= 60
    # The deployment under test differs from the shipped file only in how often it looks.
    tested = yaml.safe_load((deployment.root / "dagster_home" / "dagster.yaml").read_text())
    assert tested["run_monitoring"].pop("poll_interval_seconds") == 5
    sqlite["run_monitoring"].pop("poll_interval_seconds")
    assert tested == sqlite


def test_nothing_runs_at_start(deployment):
    graphql = deployment.graphql

    def every_sensor_ticked_twice():
        sensors = graphql.sensors()
        running = [s for s in sensors if s["sensorState"]["status"] == "RUNNING"]
        return len(running) == len(sensors) and all(
            len(s["sensorState"]["ticks"]) >= 2 for s in running
        )

    # Every sensor ships running (README, *The UI*); two ticks of the slowest is a fair start.
    deployment.wait_for("two ticks of every sensor", every_sensor_ticked_twice, 240)
    failed = {
        s["name"]: t["error"]["message"]
        for s in graphql.sensors()
        for t in s["sensorState"]["ticks"]
        if t["status"] == "FAILURE"
    }
    assert failed == {}, failed
    # A schedule firing at its hour while the test runs is requested work (schedules never
    # catch up on ticks from before they started); nothing else is.
    unrequested = [
        (r["jobName"], r["tags"])
        for r in graphql.runs()
        if "dagster/schedule_name" not in r["tags"]
    ]
    assert unrequested == [], f"{len(unrequested)} runs nobody asked for: {unrequested[:5]}"
    assert graphql.backfills() == []


def test_a_ten_session_backfill_gets_indicators_with_no_further_action(deployment, krx_universe):
    graphql = deployment.graphql
    sessions = recent_sessions("krx", 10)
    backfill = graphql.launch_backfill([["krx", "daily_prices"]], sessions)
    indicators = ["krx", "indicators"]
    deployment.wait_for(
        "indicators for all 10 sessions",
        lambda: materialized(deployment, indicators, sessions) == set(sessions),
        AUTOMATION_TIMEOUT,
    )
    # The backfill ran as one run over the range (single-run backfill policy).
    backfill_runs = graphql.runs(tags=[{"key": "dagster/backfill", "value": backfill}])
    assert len(backfill_runs) == 1 and backfill_runs[0]["status"] == "SUCCESS"
    tags = backfill_runs[0]["tags"]
    assert (
        tags["dagster/asset_partition_range_start"],
        tags["dagster/asset_partition_range_end"],
    ) == (sessions[0], sessions[-1])
    assert materialized(deployment, ["krx", "daily_prices"], sessions) == set(sessions)
    # Nobody launched the indicators: the automation sensor did, for every session at once.
    indicator_runs = [
        r for r in graphql.runs() if {"path": indicators} in (r["assetSelection"] or [])
    ]
    assert indicator_runs, "no run of krx/indicators"
    for run in indicator_runs:
        assert deployment.wait_for_run(run["runId"], RUN_TIMEOUT) == "SUCCESS"
    assert all(r["tags"].get("dagster/from_automation_condition") for r in indicator_runs)


def test_a_landing_file_is_stored_and_followed_while_a_malformed_one_is_reported(
    deployment, krx_universe
):
    graphql = deployment.graphql
    # A session before the backfilled ten, so its run is this file's alone.
    day = dt.date.fromisoformat(recent_sessions("krx", 15)[0])
    lake = LakeResource(url=str(deployment.lake))
    symbols = active_symbols(lake.read_table("universe", "krx"), day)["symbol"].sort()
    n = len(symbols)
    bars = pl.DataFrame(
        {
            "symbol": symbols,
            "trade_date": [day] * n,
            "open": [1000.0 + i for i in range(n)],
            "high": [1010.0 + i for i in range(n)],
            "low": [990.0 + i for i in range(n)],
            "close": [1005.0 + i for i in range(n)],
            "volume": [10_000 + i for i in range(n)],
        }
    )
    folder = deployment.landing / "krx"
    folder.mkdir(parents=True, exist_ok=True)
    # Written aside and renamed: the sensor never sees half a file.
    bars.write_csv(folder / ".good.csv.part")
    os.rename(folder / ".good.csv.part", folder / f"prices-{day}.csv")
    # A semicolon-separated export: one column, none of the required ones.
    malformed = "symbol;trade_date;open;high;low;close;volume\n000010;2025-09-01;1;2;0.5;1.5;9\n"
    (folder / "broken-export.csv").write_text(malformed)

    key = day.isoformat()
    deployment.wait_for(
        f"krx/daily_prices {key} from the landing file",
        lambda: materialized(deployment, ["krx", "daily_prices"], [key]),
        AUTOMATION_TIMEOUT,
    )
    deployment.wait_for(
        f"krx/indicators {key} after the landing file",
        lambda: materialized(deployment, ["krx", "indicators"], [key]),
        AUTOMATION_TIMEOUT,
    )
    stored = pl.read_parquet(deployment.lake / "daily_prices" / "market=krx" / f"date={key}")
    assert sorted(stored["symbol"]) == sorted(symbols) and set(stored["source"]) == {"files"}

    def rejected_runs():
        runs = runs_of(deployment, REJECTED_JOB)
        return runs if all(r["status"] in {"FAILURE", "SUCCESS"} for r in runs) else None

    # Reported once, however many times the sensor looks again.
    first = deployment.wait_for(f"a finished {REJECTED_JOB} run", rejected_runs, RUN_TIMEOUT)
    created = max(r["creationTime"] for r in first)
    deployment.wait_for(
        "a landing-sensor tick after the report",
        lambda: any(
            t["timestamp"] > created
            for s in graphql.sensors()
            if s["name"] == "krx_landing_files"
            for t in s["sensorState"]["ticks"]
        ),
        RUN_TIMEOUT,
    )
    [run] = runs_of(deployment, REJECTED_JOB)
    assert run["status"] == "FAILURE"
    assert run["tags"][LANDING_TAG].rsplit("/", 1)[-1] == "broken-export.csv"
    messages = failure_messages(deployment, run["runId"])
    assert any("broken-export.csv" in m for m in messages), messages


def test_a_sigkilled_run_fails_and_frees_its_provider_pool_slot(deployment, twelvedata):
    graphql = deployment.graphql
    session = recent_sessions("us", 1)[0]
    # Every price request hangs, so the prices step (after the universe step, from a file) sits
    # inside the pool until its worker is killed.
    twelvedata.faults.add(200, delay=120, path="/time_series", times=1000)
    before = twelvedata.count("/time_series")
    victim = graphql.launch_run([["us", "universe"], ["us", "daily_prices"]], partition=session)

    def worker_pid():
        for event in graphql.run_events(victim):
            message = event.get("message") or ""
            if message.startswith("Started process for run (pid: "):
                return int(message.split("pid: ")[1].split(")")[0])
        return None

    pid = deployment.wait_for(f"the worker of run {victim}", worker_pid, RUN_TIMEOUT)
    deployment.wait_for(
        "a price request from the run",
        lambda: twelvedata.count("/time_series") > before,
        RUN_TIMEOUT,
    )
    claims = graphql.pool_claims(US_POOL)
    assert claims["slotCount"] == 1
    assert [c["runId"] for c in claims["claimedSlots"]] == [victim]

    # The worker dies as under the OOM killer: no signal handler, no clean-up, its step with it.
    steps = child_pids(pid)
    os.kill(pid, signal.SIGKILL)
    for child in steps:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
    killed_at = time.monotonic()
    twelvedata.faults.clear()
    assert deployment.wait_for_run(victim, RUN_TIMEOUT) == "FAILURE"
    failed_after = time.monotonic() - killed_at

    # A second run of the same pool gets the slot once monitoring has freed it, and succeeds.
    successor = graphql.launch_run([["us", "daily_prices"]], partition=session)
    freed_after = None

    def successor_finished():
        nonlocal freed_after
        holders = {c["runId"] for c in graphql.pool_claims(US_POOL)["claimedSlots"]}
        if freed_after is None and victim not in holders:
            freed_after = time.monotonic() - killed_at
        status = graphql.run_status(successor)
        return status if status in {"SUCCESS", "FAILURE", "CANCELED"} else None

    assert deployment.wait_for("the next run of the pool", successor_finished, RUN_TIMEOUT) == (
        "SUCCESS"
    )
    assert graphql.pool_claims(US_POOL)["claimedSlots"] == []
    assert materialized(deployment, ["us", "daily_prices"], [session]) == {session}
    print(f"killed run FAILURE after {failed_after:.1f} s, slot freed after {freed_after:.1f} s")
