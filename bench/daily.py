"""(d) One daily partition of the latest session end to end, in process.

Run as `python -m bench.daily --market krx --symbols 2500` (a fresh process, as a scheduled run
would have): materializes daily_prices with all its checks (inline and separate) and indicators
for the latest past session on a temporary instance, over a lake holding only the universe, and
prints JSON. The first run is cold (first GE import, first-call caches), the second warm on a
fresh lake and instance; the same session's data work is then timed without Dagster (warm), so
warm run minus data work is Dagster's share.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

import dagster as dg

from checks.markets import partition_dates
from marketpipe_assets.definitions import assets
from resources.lake import LakeResource
from resources.market_data import MarketDataResource

from . import datawork
from .common import past_keys

warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)


def _select(market: str, *names: str) -> list[dg.AssetsDefinition]:
    """The market's assets by name with their inline checks: what the 18:00 schedule runs. The
    separate GE cross-check runs in a run of its own (marketpipe_assets/ge_check.py), as in
    production."""
    return [a for a in assets if a.key.path[0] == market and a.key.path[1] in names]


def one_run(market: str, symbols: int, key: str, root: Path) -> dict:
    resources = {
        "lake": LakeResource(url=str(root / "lake")),
        "market_data": MarketDataResource(synthetic_symbols=symbols, landing_url=str(root)),
    }
    (root / "home").mkdir(parents=True)
    with dg.instance_for_test(temp_dir=str(root / "home")) as instance:
        dg.materialize(_select(market, "universe"), instance=instance, resources=resources)
        started = time.perf_counter()
        result = dg.materialize(
            _select(market, "daily_prices", "indicators"),
            instance=instance,
            resources=resources,
            partition_key=key,
        )
        total = time.perf_counter() - started
        steps = {
            s.step_key: round(s.end_time - s.start_time, 3)
            for s in instance.get_run_step_stats(result.run_id)
        }
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    return {"seconds": round(total, 3), "steps": steps, "checks": checks}


def data_only(market: str, symbols: int, key: str, root: Path) -> dict:
    lake = LakeResource(url=str(root / "lake"))
    market_data = MarketDataResource(synthetic_symbols=symbols, landing_url=str(root))
    datawork.prepare_universe(lake, market_data, market)
    stages, _, _ = datawork.run(lake, market_data, market, partition_dates([key]), with_ge=False)
    return {"seconds": round(stages.total, 3), "stages": stages.rounded()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--market", default="krx")
    parser.add_argument("--symbols", type=int, default=2500)
    args = parser.parse_args()
    key = past_keys(args.market, 1)[0]
    out: dict = {"partition": key}
    with tempfile.TemporaryDirectory(prefix="marketpipe-daily-") as tmp:
        root = Path(tmp)
        out["first_run"] = one_run(args.market, args.symbols, key, root / "first")
        out["second_run"] = one_run(args.market, args.symbols, key, root / "second")
        out["data_work"] = data_only(args.market, args.symbols, key, root / "data")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
