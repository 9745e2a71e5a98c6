"""(a) The ten-year backfill: data work in process, then floor and real runs through the CLI."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from checks.markets import partition_dates
from resources.lake import LakeResource
from resources.market_data import MarketDataResource

from . import cli, datawork
from .common import row, verdict

DATA_TARGET_S = 20.0
FLOOR_RATIO = 1.3
BATCH = 1000


def data_work(market: str, symbols: int, keys: list[str], root: Path):
    """Row for the data-work target, and the history frame it read (reused by (b))."""
    lake = LakeResource(url=str(root / "inprocess-lake"))
    market_data = MarketDataResource(synthetic_symbols=symbols, landing_url=str(root / "landing"))
    datawork.prepare_universe(lake, market_data, market)
    stages, counts, history = datawork.run(lake, market_data, market, partition_dates(keys))
    shutil.rmtree(root / "inprocess-lake", ignore_errors=True)
    total = stages.total
    result = row(
        f"a. data work {counts['bars']:,} bars",
        f"< {DATA_TARGET_S:.0f} s",
        f"{total:.1f} s",
        total / DATA_TARGET_S,
        verdict(total < DATA_TARGET_S),
        stages=stages.rounded(),
        counts=counts,
    )
    return result, history


def check_shape(market: str) -> dict[str, str]:
    """Inline and separate checks the real definitions give daily_prices, for the floor."""
    import dagster as dg

    from marketpipe_assets.definitions import assets, defs

    key = dg.AssetKey([market, "daily_prices"])
    prices = next(a for a in assets if a.key == key)
    separate = [s for c in defs.asset_checks or [] for s in c.check_specs if s.asset_key == key]
    return {
        "MARKETPIPE_BENCH_INLINE_CHECKS": str(len(list(prices.check_specs))),
        "MARKETPIPE_BENCH_SEPARATE_CHECKS": str(len(separate)),
    }


def _universe_lake(market: str, symbols: int, root: Path) -> Path:
    """A lake holding only the universe, materialized through the CLI (untimed)."""
    lake = root / "universe-lake"
    env = cli.env(cli.new_home(root, "home-universe"), lake, market, symbols, BATCH)
    cli.materialize("marketpipe_assets.definitions", f"{market}/universe", env)
    return lake


def through_dagster(market: str, symbols: int, keys: list[str], batch: int | None, root: Path):
    """Floor run, then the real run, each on a fresh instance; one row comparing them."""
    tag = f"batch{batch}" if batch else "nobatch"
    universe = root / "universe-lake"
    if not universe.exists():
        _universe_lake(market, symbols, root)
    span = f"{keys[0]}...{keys[-1]}"
    shape = check_shape(market)
    runs = {}
    for name, module, select in (
        ("floor", "bench.noop_definitions", "noop/daily_prices,noop/indicators"),
        ("real", "marketpipe_assets.definitions", f"{market}/daily_prices,{market}/indicators"),
    ):
        home, lake = cli.new_home(root, f"home-{name}-{tag}"), root / f"lake-{name}-{tag}"
        shutil.copytree(universe, lake)
        env = cli.env(home, lake, market, symbols, batch, **shape)
        runs[name] = cli.run_stats(home, *cli.materialize(module, select, env, span))
        shutil.rmtree(lake, ignore_errors=True)
    floor, real = runs["floor"]["wall_seconds"], runs["real"]["wall_seconds"]
    batching = f"DAGSTER_EVENT_BATCH_SIZE={batch}" if batch else "no event batching"
    return row(
        f"a. backfill via CLI, {batching}",
        f"<= {FLOOR_RATIO}x no-op floor",
        f"{real:.1f} s vs floor {floor:.1f} s",
        real / floor,
        verdict(real <= FLOOR_RATIO * floor),
        partitions=len(keys),
        floor_checks=shape,
        range=span,
        runs=runs,
    )


def scratch() -> Path:
    return Path(tempfile.mkdtemp(prefix="marketpipe-bench-"))
