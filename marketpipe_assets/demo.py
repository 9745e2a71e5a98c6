"""`make demo`: materialize the 20 most recent sessions of every market and print a summary.

Runs in process against the real instance in $DAGSTER_HOME, so the runs, materializations and
check results show up in the UI (`make ui`) afterwards.
"""

import sys
import time

import dagster as dg
import polars as pl

from .automation import RANGE_END_TAG, RANGE_START_TAG
from .definitions import assets, defs
from .markets import MARKETS, partitions_def
from .schemas import DAILY_PRICES

SESSIONS = 20
# The contract's demo: daily prices (with their checks) and indicators.
DEMO_DATASETS = ("daily_prices", "indicators")


def _run(selection, instance, **kwargs) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        selection,
        instance=instance,
        resources=defs.resources,
        raise_on_error=False,
        **kwargs,
    )


def _summary(market: str, result: dg.ExecuteInProcessResult, lake) -> str:
    keys = partitions_def(market).get_partition_keys()[-SESSIONS:]
    first, last = (pl.Series([keys[0], keys[-1]]).str.to_date()).to_list()
    stored = lake.read_partitions("daily_prices", market, DAILY_PRICES, first=first, last=last)
    quarantined = lake.read_quarantine("daily_prices", market, DAILY_PRICES, first=first, last=last)
    lines = [
        f"== {market} ({MARKETS[market].calendar}) sessions {keys[0]}..{keys[-1]} ({len(keys)})",
        f"   rows stored {len(stored):,}   rows quarantined {len(quarantined):,}",
    ]
    for evaluation in result.get_asset_check_evaluations():
        if evaluation.asset_key.path[0] == market:
            state = "PASS" if evaluation.passed else f"FAIL ({evaluation.severity.value})"
            lines.append(
                f"   check {evaluation.check_name:<20} {state:<12} {evaluation.description}"
            )
    completeness = next(
        e.metadata["by_session"].value
        for e in result.get_asset_check_evaluations()
        if e.asset_key.path[0] == market and e.check_name == "completeness"
    )
    lines.append("   completeness per session:")
    lines.extend("     " + line for line in completeness.splitlines())
    for dataset in ("daily_prices", "indicators", "quarantine/daily_prices", "universe"):
        lines.append(f"   {dataset:<24} {lake.uri(lake.market_dir(dataset, market))}")
    return "\n".join(lines)


def main() -> int:
    started = time.monotonic()
    lake = defs.resources["lake"]
    ok = True
    with dg.DagsterInstance.get() as instance:
        universes = [a for a in assets if a.key.path[1] == "universe"]
        ok &= _run(universes, instance).success
        reports = []
        for market in MARKETS:
            keys = partitions_def(market).get_partition_keys()[-SESSIONS:]
            selection = [
                a for a in assets if a.key.path[0] == market and a.key.path[1] in DEMO_DATASETS
            ]
            result = _run(
                selection, instance, tags={RANGE_START_TAG: keys[0], RANGE_END_TAG: keys[-1]}
            )
            ok &= result.success
            reports.append(_summary(market, result, lake))
    print("\n" + "\n\n".join(reports))
    example = f"{lake.uri(lake.root)}/daily_prices/*/*/*.parquet"
    print(
        f"\nQuery it with DuckDB: SELECT market, date, count(*) FROM "
        f"read_parquet('{example}', hive_partitioning=true) GROUP BY ALL ORDER BY ALL"
    )
    print(f"Done in {time.monotonic() - started:.1f} s. Open the UI with `make ui`.")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
