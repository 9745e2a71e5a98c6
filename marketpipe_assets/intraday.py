"""15-minute bars per market and session: fetch, standardise, validate, store, quarantine."""

import dagster as dg
import polars as pl

from checks.intraday_checks import (
    bar_count_result,
    bar_counts,
    intraday_check_specs,
    intraday_completeness_result,
    intraday_rules_result,
    validate_intraday,
)
from checks.markets import partition_dates, partitions_def, with_filing
from checks.price_checks import completeness_by_session
from checks.schemas import FILED_UNDER, INTRADAY_BARS, conform
from resources.lake import LakeResource
from resources.market_data import MarketDataResource
from resources.sources.base import FallbackSource, intraday_bars

from .metadata import accounted, session_metadata
from .prices import load_universe, provider_pool
from .publish import publish_if_checks_pass
from .retries import provider_retries


def standardise_intraday(raw: pl.DataFrame) -> pl.DataFrame:
    """The schema's columns and types, plus `raw` (values that did not parse, NaN included)."""
    return conform(raw, INTRADAY_BARS, what="intraday bars", evidence=True)


def intraday_bars_asset(market: str) -> dg.AssetsDefinition:
    key = dg.AssetKey([market, "intraday_bars"])

    @dg.asset(
        key=key,
        deps=[dg.AssetKey([market, "universe"])],
        partitions_def=partitions_def(market),
        backfill_policy=dg.BackfillPolicy.single_run(),
        check_specs=intraday_check_specs(key),
        group_name=market,
        kinds={"polars", "parquet"},
        pool=provider_pool(market),
    )
    @provider_retries
    def intraday(
        context: dg.AssetExecutionContext, lake: LakeResource, market_data: MarketDataResource
    ):
        """15-minute OHLCV bars per session (bar_start in UTC, `trade_date` the session); rows
        breaking a rule go to quarantine with their rules."""
        sessions = partition_dates(context.partition_keys)
        universe = load_universe(lake, market)
        source = market_data.source(market)
        raw = intraday_bars(source, market, sessions, universe["symbol"].to_list())
        failures = source.last_failures if isinstance(source, FallbackSource) else []
        for failure in failures:
            context.log.warning(f"{failure['source']} could not serve: {failure['reason']}")
        validated = validate_intraday(standardise_intraday(raw), market, sessions)
        stored = validated.clean
        # Rows of other sessions or none are filed under one of the run's (nothing dropped).
        quarantined = with_filing(validated.quarantined, sessions)
        accounting = accounted(f"{market}/intraday_bars", len(raw), stored, quarantined)
        # Replaces exactly this run's partitions, stored and quarantine together, once the
        # blocking checks pass.
        batch = lake.stage(
            context.run_id,
            "intraday_bars",
            market,
            stored,
            quarantined,
            sessions,
            quarantine_date_column=FILED_UNDER,
        )

        present = stored.select("symbol", "trade_date").unique()
        by_session = completeness_by_session(present, universe, sessions)
        counts = bar_counts(stored, market, sessions)
        check_results = [
            intraday_rules_result(stored, validated, market, sessions),
            intraday_completeness_result(by_session),
            bar_count_result(counts),
        ]
        yield from publish_if_checks_pass(context, lake, batch, check_results)
        yield dg.MaterializeResult(
            metadata=session_metadata(
                context,
                sessions,
                counts=accounting,
                percents=by_session.select("trade_date", "completeness_pct"),
                failures=failures,
                uri=lake.uri(lake.market_dir("intraday_bars", market)),
                shown=stored,
            ),
            check_results=check_results,
        )

    return intraday
