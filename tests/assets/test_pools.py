"""Dagster concurrency pools per provider: each market's provider-calling steps run in the pool of
its first configured source, and the repository's dagster.yaml gives every such pool one step at
a time across runs."""

import shutil

import dagster as dg
import pytest

from marketpipe_assets.pools import provider_pool
from marketpipe_assets.prices import daily_prices_asset, universe_asset
from resources.lake import LakeResource
from resources.market_data import MarketDataResource
from tests.conftest import REPO, market_assets, recent_sessions


@pytest.mark.parametrize(
    ("market", "spec", "pool"),
    [
        ("krx", None, "provider_synthetic"),
        ("krx", "kis", "provider_kis"),
        ("krx", "kis,krx,synthetic", "provider_kis"),
        ("krx", " krx , synthetic", "provider_krx"),
        ("krx", "files,synthetic", "provider_files"),
        ("us", "twelvedata,yahoo", "provider_twelvedata"),
        ("us", "yahoo", "provider_yahoo"),
        ("us", "finnhub,synthetic", "provider_finnhub"),
    ],
)
def test_provider_steps_carry_the_pool_of_the_markets_first_source(monkeypatch, market, spec, pool):
    variable = f"MARKETPIPE_{market.upper()}_SOURCE"
    if spec is None:
        monkeypatch.delenv(variable, raising=False)
    else:
        monkeypatch.setenv(variable, spec)
    other = "us" if market == "krx" else "krx"
    monkeypatch.delenv(f"MARKETPIPE_{other.upper()}_SOURCE", raising=False)

    assert provider_pool(market) == pool
    assert daily_prices_asset(market).op.pool == pool
    assert universe_asset(market).op.pool == pool  # the listing calls the provider too
    assert daily_prices_asset(other).op.pool == "provider_synthetic"  # each market its own


def test_the_repository_dagster_yaml_limits_every_provider_pool_to_one_step(tmp_path, monkeypatch):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as instance:
        config = instance.get_concurrency_config()
        assert config.pool_config.default_pool_limit == 1
        assert config.run_queue_config.max_concurrent_runs == 2  # moved, not lost

        # A real materialization on this instance claims its slot in the pool, which the
        # default limit created with one slot.
        resources = {
            "lake": LakeResource(url=str(tmp_path / "lake")),
            "market_data": MarketDataResource(synthetic_symbols=20, synthetic_missing_rate=0.0),
        }
        universe = dg.materialize(
            market_assets("krx", "universe"), instance=instance, resources=resources
        )
        (asset,) = market_assets("krx", "daily_prices")
        prices = dg.materialize(
            [asset],
            instance=instance,
            resources=resources,
            partition_key=recent_sessions("krx", 1)[0],
        )
        assert universe.success and prices.success
        pool = asset.op.pool
        assert pool in instance.event_log_storage.get_concurrency_keys()
        info = instance.event_log_storage.get_concurrency_info(pool)
        assert (info.limit, info.using_default_limit) == (1, True)
        assert info.claimed_slots == []  # released when the step ended
