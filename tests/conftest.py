"""Fixtures and helpers shared by every layer of the suite (unit, providers, assets, automation,
e2e): a temporary lake, small synthetic sources, a real temporary instance, a local S3 server and
Dagster runs as the CLI starts them."""

import datetime as dt
import os
import urllib.request
import warnings
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import s3fs

from checks.markets import partitions_def
from marketpipe_assets.automation import RANGE_END_TAG, RANGE_START_TAG
from marketpipe_assets.definitions import assets
from resources.lake import LakeResource
from resources.market_data import MarketDataResource

warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)

REPO = Path(__file__).resolve().parents[1]
SYMBOLS = 60  # small universes keep each materialization well under a second


@pytest.fixture(autouse=True)
def _no_step_retries(monkeypatch):
    # Ingestion steps retry provider outages after minutes (marketpipe_assets/retries.py);
    # a test that exercises the retries sets its own short schedule.
    monkeypatch.setenv("MARKETPIPE_STEP_RETRIES", "0")


@pytest.fixture
def lake(tmp_path) -> LakeResource:
    return LakeResource(url=str(tmp_path / "lake"))


def synthetic_data(**settings) -> MarketDataResource:
    """The synthetic source with these of its settings (`symbols=200, missing_rate=0.1`: each a
    `synthetic_*` field of MarketDataResource) and no landing folder."""
    synthetic = {f"synthetic_{name}": value for name, value in settings.items()}
    return MarketDataResource(landing_url="unused-landing", **synthetic)


@pytest.fixture
def market_data() -> MarketDataResource:
    # No missing bars: with 60 symbols, 1% missing would drop a session below 95% on ~3% of dates.
    return synthetic_data(symbols=SYMBOLS, missing_rate=0.0)


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def market_assets(market: str, *datasets: str) -> list[dg.AssetsDefinition]:
    return [a for a in assets if a.key.path[0] == market and a.key.path[1] in datasets]


def recent_sessions(market: str, n: int) -> list[str]:
    """The n most recent partition keys that are already past (stable whatever time it is)."""
    today = dt.date.today().isoformat()
    return [k for k in partitions_def(market).get_partition_keys() if k < today][-n:]


def materialize(
    market: str,
    datasets: tuple[str, ...],
    *,
    lake: LakeResource,
    market_data: MarketDataResource,
    instance: dg.DagsterInstance,
    partition_key: str | None = None,
    partition_range: tuple[str, str] | None = None,
    checks: list[dg.AssetChecksDefinition] | None = None,
) -> dg.ExecuteInProcessResult:
    """Materialize a market's datasets through Dagster (one run, as the CLI would)."""
    tags = {}
    if partition_range:
        tags = {RANGE_START_TAG: partition_range[0], RANGE_END_TAG: partition_range[1]}
    return dg.materialize(
        [*market_assets(market, *datasets), *(checks or [])],
        instance=instance,
        resources={"lake": lake, "market_data": market_data},
        partition_key=partition_key,
        tags=tags,
        raise_on_error=False,
    )


class Runner:
    """Dagster runs of a market's datasets on one lake, source and instance, each one run as the
    CLI starts it: `runs("krx", "daily_prices", day=key)` for a partition, `days=(first, last)` for
    a range in one run."""

    def __init__(self, lake: LakeResource, market_data: MarketDataResource, instance):
        self.lake, self.market_data, self.instance = lake, market_data, instance

    def __call__(
        self,
        market: str,
        *datasets: str,
        day: str | None = None,
        days: tuple[str, str] | None = None,
        checks: list[dg.AssetChecksDefinition] | None = None,
    ) -> dg.ExecuteInProcessResult:
        return materialize(
            market,
            datasets,
            lake=self.lake,
            market_data=self.market_data,
            instance=self.instance,
            partition_key=day,
            partition_range=days,
            checks=checks,
        )

    def universe(self, market: str) -> pl.DataFrame:
        """The market's universe stored by a run that must succeed, as the lake then holds it."""
        assert self(market, "universe").success
        return self.lake.read_table("universe", market)


@pytest.fixture
def runs(lake, market_data, instance) -> Runner:
    """Runs on the temporary lake, the 60-symbol synthetic source and the temporary instance."""
    return Runner(lake, market_data, instance)


@pytest.fixture
def with_universe(runs):
    """Both markets' universes stored in the temporary lake."""
    for market in ("krx", "us"):
        runs.universe(market)
    return runs.lake


def cli_environment() -> dict[str, str]:
    """The caller's environment for a Dagster CLI subprocess, without any MARKETPIPE_* setting
    or DAGSTER_HOME: only what the test then sets applies."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MARKETPIPE_") and k != "DAGSTER_HOME"
    }
    if "MARKETPIPE_CACHE_DIR" in os.environ:  # the session cache, not a setting
        env["MARKETPIPE_CACHE_DIR"] = os.environ["MARKETPIPE_CACHE_DIR"]
    return env


def rejected_rows(
    lake: LakeResource,
    dataset: str,
    market: str,
    schema,
    *,
    quarantine: bool = False,
    by: tuple[str, ...] = ("symbol", "trade_date"),
) -> pl.DataFrame:
    """The rows (stored, or with `quarantine` quarantined) of the one batch of `dataset` that
    write-audit-publish rejected, as kept in `<lake>/_rejected/`, in `schema`'s columns, sorted
    `by`."""
    [batch] = (Path(lake.url) / "_rejected" / dataset / f"market={market}").iterdir()
    part = f"quarantine/{dataset}" if quarantine else dataset
    frame = pl.read_parquet(batch / part / f"market={market}" / "*" / "*.parquet")
    return frame.select(list(schema)).sort(*by)


@pytest.fixture
def s3_server(monkeypatch):
    """moto's S3 server on 127.0.0.1, empty, with the AWS_* variables that point boto3 and s3fs at
    it; yields its endpoint."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    # moto keeps its buckets in process-wide state: start every test from an empty S3.
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    s3fs.S3FileSystem.clear_instance_cache()  # a cached client would keep an old endpoint
    yield endpoint
    s3fs.S3FileSystem.clear_instance_cache()
    server.stop()


class Sensor:
    """Evaluates a run-status sensor tick after tick on one instance, keeping its cursor."""

    def __init__(self, sensor: dg.SensorDefinition, instance, **resources):
        self.sensor, self.instance, self.resources, self.cursor = sensor, instance, resources, None
        self.tick()  # the first tick only places the cursor after the runs so far

    def tick(self):
        context = dg.build_sensor_context(
            instance=self.instance, cursor=self.cursor, resources=self.resources
        )
        data = self.sensor.evaluate_tick(context)
        self.cursor = data.cursor
        return [r.error for r in data.dagster_run_reactions if r.error]
