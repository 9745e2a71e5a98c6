"""The no-op floor of the backfill benchmark: what Dagster alone costs for the same shape.

Two no-op assets on the same session partitions as daily_prices and indicators, both with a
single-run backfill policy. The first carries as many inline checks as daily_prices (reported in
its MaterializeResult, the first two blocking) and as many separate, partitioned asset checks
as the real definitions attach to daily_prices; the bench counts both in the real definitions
and passes them as MARKETPIPE_BENCH_INLINE_CHECKS and MARKETPIPE_BENCH_SEPARATE_CHECKS
(defaults 3 and 0). MARKETPIPE_BENCH_MARKET picks the market's partitions (krx by default).
"""

import os
import warnings

import dagster as dg

from checks.markets import partitions_def

MARKET = os.environ.get("MARKETPIPE_BENCH_MARKET", "krx")
INLINE = int(os.environ.get("MARKETPIPE_BENCH_INLINE_CHECKS", "3"))
SEPARATE = int(os.environ.get("MARKETPIPE_BENCH_SEPARATE_CHECKS", "0"))
PRICES = dg.AssetKey(["noop", "daily_prices"])
INLINE_NAMES = [f"inline_{i}" for i in range(INLINE)]


@dg.asset(
    key=PRICES,
    partitions_def=partitions_def(MARKET),
    backfill_policy=dg.BackfillPolicy.single_run(),
    check_specs=[
        dg.AssetCheckSpec(name, asset=PRICES, blocking=i < 2) for i, name in enumerate(INLINE_NAMES)
    ],
)
def noop_daily_prices(context: dg.AssetExecutionContext):
    yield dg.MaterializeResult(
        check_results=[dg.AssetCheckResult(check_name=name, passed=True) for name in INLINE_NAMES]
    )


@dg.asset(
    key=["noop", "indicators"],
    deps=[PRICES],
    partitions_def=partitions_def(MARKET),
    backfill_policy=dg.BackfillPolicy.single_run(),
)
def noop_indicators(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    return dg.MaterializeResult()


def _separate_check(i: int) -> dg.AssetChecksDefinition:
    def check(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        return dg.AssetCheckResult(passed=True)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return dg.asset_check(
            asset=PRICES,
            name=f"separate_{i}",
            blocking=False,
            partitions_def=partitions_def(MARKET),
        )(check)


defs = dg.Definitions(
    assets=[noop_daily_prices, noop_indicators],
    asset_checks=[_separate_check(i) for i in range(SEPARATE)],
)
