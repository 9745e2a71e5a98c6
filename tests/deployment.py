"""A running deployment for tests: `dagster dev` (webserver + daemon) as `make ui` starts it, on
a temporary instance, lake, landing folder and spool, driven through the GraphQL API the UI uses.

`dagster dev` and everything it starts (webserver, daemon, code servers, run workers and their
step processes) share one new process group, which `Deployment.stop` kills; `dagster dev` also
gets SIGTERM (and stops what it started) if the test process dies first, so no test leaves a
deployment running.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import yaml

from marketpipe_assets.instance_config import write_instance_yaml

ROOT = Path(__file__).resolve().parents[1]
LOCATION = "marketpipe"  # workspace.yaml's location_name
REPOSITORY = "__repository__"  # the repository of a module's single Definitions
ASSET_JOB = "__ASSET_JOB"  # the job the UI's Materialize button launches
# Daemons the tests rely on: sensors and the automation sensor, backfills, the run queue, and
# run monitoring (which frees the pool slots of a run whose worker died).
DAEMONS = {"SENSOR", "BACKFILL", "QUEUED_RUN_COORDINATOR", "MONITORING"}
FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}
# Runs the command it is given after asking Linux to SIGTERM it when the test process dies (the
# request survives exec), so even a killed pytest leaves no deployment running. A preexec_fn
# would do the same in the forked child, which is unsafe while the test's fake servers run
# threads.
_DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys; "
    "ctypes.CDLL(None).prctl(1, signal.SIGTERM); "  # 1 = PR_SET_PDEATHSIG
    "os.execv(sys.argv[1], sys.argv[1:])"
)
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    """The caller's environment without marketpipe or Dagster settings (`make test` exports its
    own), plus a temporary instance, lake, landing folder and spool, plus `settings`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MARKETPIPE_", "DAGSTER_")) or k == "MARKETPIPE_CACHE_DIR"
    }
    home = tmp_path / "dagster_home"
    home.mkdir()
    env |= {
        "DAGSTER_HOME": str(home),
        "MARKETPIPE_LAKE_URL": str(tmp_path / "lake"),
        "MARKETPIPE_LANDING_URL": str(tmp_path / "landing"),
        "MARKETPIPE_SPOOL_DIR": str(tmp_path / "spool"),
        **settings,
    }
    return env


class GraphQLError(AssertionError):
    pass


class GraphQL:
    """The webserver's /graphql endpoint, with the queries and mutations the UI sends."""

    def __init__(self, url: str):
        self.http = httpx.Client(base_url=url, timeout=60)

    def __call__(self, query: str, **variables: Any) -> dict:
        reply = self.http.post("/graphql", json={"query": query, "variables": variables})
        reply.raise_for_status()
        body = reply.json()
        if body.get("errors"):
            raise GraphQLError(f"GraphQL errors: {body['errors']}")
        return body["data"]

    # Mutations ------------------------------------------------------------------------------
    def launch_run(
        self,
        assets: list[list[str]],
        *,
        partition: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> str:
        """What *Materialize* sends for the selected assets (one partition, or none)."""
        tags = dict(tags or {})
        if partition:
            tags["dagster/partition"] = partition
        data = self(
            """mutation($params: ExecutionParams!) {
              launchRun(executionParams: $params) {
                __typename
                ... on LaunchRunSuccess { run { runId } }
                ... on PythonError { message }
                ... on Error { message }
                ... on RunConfigValidationInvalid { errors { message } }
              }
            }""",
            params={
                "selector": {
                    "repositoryLocationName": LOCATION,
                    "repositoryName": REPOSITORY,
                    "jobName": ASSET_JOB,
                    "assetSelection": [{"path": key} for key in assets],
                },
                "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in tags.items()]},
            },
        )["launchRun"]
        if data["__typename"] != "LaunchRunSuccess":
            raise GraphQLError(f"launchRun failed: {data}")
        return data["run"]["runId"]

    def launch_backfill(self, assets: list[list[str]], partitions: list[str]) -> str:
        """What *Materialize* → *Launch backfill* sends for a partition selection."""
        data = self(
            """mutation($params: LaunchBackfillParams!) {
              launchPartitionBackfill(backfillParams: $params) {
                __typename
                ... on LaunchBackfillSuccess { backfillId }
                ... on PythonError { message }
                ... on Error { message }
              }
            }""",
            params={
                "assetSelection": [{"path": key} for key in assets],
                "partitionNames": partitions,
                "fromFailure": False,
            },
        )["launchPartitionBackfill"]
        if data["__typename"] != "LaunchBackfillSuccess":
            raise GraphQLError(f"launchPartitionBackfill failed: {data}")
        return data["backfillId"]

    # Queries --------------------------------------------------------------------------------
    def runs(self, **filter_: Any) -> list[dict]:
        """Runs (newest first) with job, status, tags and assets; `filter_` is a RunsFilter."""
        data = self(
            """query($filter: RunsFilter) {
              runsOrError(filter: $filter) {
                ... on Runs { results {
                  runId jobName status creationTime
                  tags { key value }
                  assetSelection { path }
                } }
              }
            }""",
            filter=filter_ or None,
        )
        return [
            {**run, "tags": {t["key"]: t["value"] for t in run["tags"]}}
            for run in data["runsOrError"]["results"]
        ]

    def run_status(self, run_id: str) -> str:
        (run,) = self.runs(runIds=[run_id])
        return run["status"]

    def run_events(self, run_id: str) -> list[dict]:
        """The run's event log as the run page shows it: type, message, error message."""
        events, cursor = [], None
        while True:
            data = self(
                """query($runId: ID!, $cursor: String) {
                  logsForRun(runId: $runId, afterCursor: $cursor) {
                    ... on EventConnection {
                      cursor hasMore
                      events {
                        __typename
                        ... on MessageEvent { message stepKey }
                        ... on ExecutionStepFailureEvent { error { message } }
                        ... on RunFailureEvent { pipelineFailureError: error { message } }
                      }
                    }
                    ... on PythonError { message }
                  }
                }""",
                runId=run_id,
                cursor=cursor,
            )["logsForRun"]
            if "events" not in data:
                raise GraphQLError(f"logsForRun({run_id}) failed: {data}")
            events += data["events"]
            if not data["hasMore"]:
                return events
            cursor = data["cursor"]

    def backfills(self) -> list[dict]:
        data = self(
            """{ partitionBackfillsOrError {
                 ... on PartitionBackfills { results { id status } }
               } }"""
        )
        return data["partitionBackfillsOrError"]["results"]

    def materializations(self, key: list[str], partitions: list[str]) -> list[dict]:
        data = self(
            """query($key: AssetKeyInput!, $partitions: [String!]) {
              assetOrError(assetKey: $key) {
                ... on Asset { assetMaterializations(partitions: $partitions) {
                  partition runId timestamp
                } }
              }
            }""",
            key={"path": key},
            partitions=partitions,
        )
        return data["assetOrError"].get("assetMaterializations", [])

    def pool_claims(self, pool: str) -> dict:
        """The pool's slot count and the (run, step) pairs holding or waiting for its slots."""
        data = self(
            """query($pool: String!) { instance { concurrencyLimit(concurrencyKey: $pool) {
                 slotCount
                 claimedSlots { runId stepKey }
                 pendingSteps { runId stepKey }
               } } }""",
            pool=pool,
        )
        return data["instance"]["concurrencyLimit"]

    def sensors(self) -> list[dict]:
        """Every sensor with its status and latest ticks."""
        data = self(
            """query($repo: RepositorySelector!) {
              repositoryOrError(repositorySelector: $repo) {
                ... on Repository { sensors {
                  name
                  sensorState { status ticks(limit: 5) {
                    status timestamp runIds skipReason error { message }
                  } }
                } }
              }
            }""",
            repo={"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY},
        )
        return data["repositoryOrError"]["sensors"]

    def daemons(self) -> dict[str, bool]:
        data = self(
            """{ instance { daemonHealth { allDaemonStatuses { daemonType healthy } } } }"""
        )
        statuses = data["instance"]["daemonHealth"]["allDaemonStatuses"]
        return {d["daemonType"]: bool(d["healthy"]) for d in statuses}

    def location_loaded(self) -> bool:
        data = self(
            """{ workspaceOrError { ... on Workspace { locationEntries {
                 name loadStatus
                 locationOrLoadError { __typename ... on PythonError { message } }
               } } } }"""
        )
        entries = {e["name"]: e for e in data["workspaceOrError"]["locationEntries"]}
        entry = entries.get(LOCATION)
        if entry and entry["locationOrLoadError"]["__typename"] == "PythonError":
            raise GraphQLError(f"{LOCATION} failed to load: {entry['locationOrLoadError']}")
        return bool(entry) and entry["loadStatus"] == "LOADED"


@dataclass
class Deployment:
    root: Path
    env: dict[str, str]
    url: str
    process: subprocess.Popen
    log: Path
    graphql: GraphQL

    @property
    def lake(self) -> Path:
        return Path(self.env["MARKETPIPE_LAKE_URL"])

    @property
    def landing(self) -> Path:
        return Path(self.env["MARKETPIPE_LANDING_URL"])

    def log_tail(self, lines: int = 60) -> str:
        text = self.log.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def wait_for(self, what: str, probe: Callable[[], T | None], timeout: float) -> T:
        """Poll `probe` until it returns something truthy; on timeout fail saying `what`, with
        the deployment's last log lines."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"dagster dev exited ({self.process.returncode}) waiting for {what}:\n"
                    f"{self.log_tail()}"
                )
            value = probe()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} after {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(1)

    def wait_for_run(self, run_id: str, timeout: float) -> str:
        def finished():
            status = self.graphql.run_status(run_id)
            return status if status in FINISHED else None

        return self.wait_for(f"end of run {run_id}", finished, timeout)

    def stop(self) -> None:
        """SIGTERM to the whole group, SIGKILL to whatever is left after 20 s."""
        for sig, grace in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                if self.process.poll() is not None and not _group_alive(self.process.pid):
                    return
                time.sleep(0.2)
        self.process.wait(10)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def instance_yaml_for_tests(home: Path, env: dict[str, str], **run_monitoring: int) -> Path:
    """$DAGSTER_HOME/dagster.yaml as `make ui` writes it, with `run_monitoring` settings changed."""
    path = write_instance_yaml(home, env)
    config = yaml.safe_load(path.read_text())
    config["run_monitoring"] |= run_monitoring
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@contextmanager
def running_deployment(
    tmp_path: Path, *, startup_timeout: float = 240, **settings: str
) -> Iterator[Deployment]:
    """`make ui` on a temporary instance: dagster.yaml written into DAGSTER_HOME, then
    `dagster dev` started from there, serving once the code location and the daemons are up."""
    env = clean_env(tmp_path, **settings)
    # What the Makefile exports for every command.
    env.setdefault("DAGSTER_EVENT_BATCH_SIZE", "1000")
    home = Path(env["DAGSTER_HOME"])
    # Monitoring looks for dead runs every 5 s instead of 30; its other settings stay shipped.
    instance_yaml_for_tests(home, env, poll_interval_seconds=5)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "dagster-dev.log"
    dagster = Path(sys.executable).with_name("dagster")
    command = [str(dagster), "dev", "-w", str(ROOT / "workspace.yaml"), "-h", "127.0.0.1"]
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", _DIE_WITH_PARENT, *command, "-p", str(port)],
            cwd=home,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # one process group for everything it starts
        )
    deployment = Deployment(tmp_path, env, url, process, log, GraphQL(url))
    try:

        def serving() -> bool:
            try:
                if not deployment.graphql.location_loaded():
                    return False
                healthy = {d for d, ok in deployment.graphql.daemons().items() if ok}
                return healthy >= DAEMONS
            except httpx.TransportError:
                return False

        deployment.wait_for("loaded code location and healthy daemons", serving, startup_timeout)
        yield deployment
    finally:
        deployment.graphql.http.close()
        deployment.stop()


def child_pids(pid: int) -> list[int]:
    """Every descendant of `pid` (Linux /proc), children first."""
    found, queue = [], [pid]
    while queue:
        parent = queue.pop(0)
        for task in Path(f"/proc/{parent}/task").glob("*/children"):
            for child in task.read_text().split():
                found.append(int(child))
                queue.append(int(child))
    return found
