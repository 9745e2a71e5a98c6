"""Universe and daily prices per market: fetch, standardise, validate, store, quarantine."""

import datetime as dt
import os

import dagster as dg
import polars as pl

from checks.listing import active_on
from checks.price_checks import (
    completeness_by_session,
    completeness_result,
    daily_price_check_specs,
    price_relationships_result,
    suspicious_jumps_result,
)
from checks.rulebook import DAILY_PRICE_RULES, HALTED, session_rule, validate
from resources.lake import LakeResource
from resources.market_data import MarketDataResource
from resources.sources.base import FallbackSource

from .markets import MARKETS, partition_dates, partitions_def, previous_session, with_filing
from .metadata import markdown_table, preview
from .retries import provider_retries
from .schemas import DAILY_PRICES, FILED_UNDER, UNIVERSE, conform


def provider_pool(market: str) -> str:
    """The Dagster pool of the market's first configured source, e.g. `provider_kis`.

    Steps in one pool share its limit across runs (dagster.yaml: one step at a time unless
    `dagster instance concurrency set` says otherwise), so parallel runs split one provider's
    request budget instead of each assuming it has all of it. Read from the same variable as
    MarketDataResource.from_env; a run whose config switches the source keeps the pool.
    """
    spec = os.environ.get(MARKETS[market].source_variable, "synthetic")
    names = [name.strip() for name in spec.split(",") if name.strip()]
    return f"provider_{names[0] if names else 'synthetic'}"


def universe_asset(market: str) -> dg.AssetsDefinition:
    @dg.asset(
        key=[market, "universe"],
        group_name=market,
        kinds={"polars", "parquet"},
        pool=provider_pool(market),
    )
    @provider_retries
    def universe(lake: LakeResource, market_data: MarketDataResource) -> dg.MaterializeResult:
        """Every symbol listed on the market over time, with listing and delisting dates."""
        frame = market_data.universe(market).unique("symbol", keep="last").sort("symbol")
        path = lake.write_table("universe", market, frame)
        return dg.MaterializeResult(
            metadata={
                "symbols": len(frame),
                "active": frame.filter(pl.col("delisting_date").is_null()).height,
                "path": lake.uri(path),
                "preview": dg.MetadataValue.md(markdown_table(frame)),
            }
        )

    return universe


def standardise(raw: pl.DataFrame) -> pl.DataFrame:
    """The contract's columns and types, plus `raw`: the text of each value that did not parse
    (NaN included: null to every engine, kept as evidence)."""
    return conform(raw, DAILY_PRICES, what="daily bars", evidence=True)


def load_universe(lake: LakeResource, market: str) -> pl.DataFrame:
    frame = lake.read_table("universe", market)
    if frame is None:
        raise dg.Failure(
            f"{market}/universe has not been materialized in {lake.url!r}; materialize it first: "
            f"dagster asset materialize -m marketpipe_assets.definitions --select {market}/universe"
        )
    return conform(frame, UNIVERSE, what=f"{market}/universe")


def active_symbols(universe: pl.DataFrame, day: dt.date) -> pl.DataFrame:
    """Symbols active on `day` by checks.listing's rule (the completeness check's too)."""
    return universe.filter(active_on(day)).select("symbol")


def daily_prices_asset(market: str) -> dg.AssetsDefinition:
    key = dg.AssetKey([market, "daily_prices"])

    @dg.asset(
        key=key,
        deps=[dg.AssetKey([market, "universe"])],
        partitions_def=partitions_def(market),
        backfill_policy=dg.BackfillPolicy.single_run(),
        check_specs=daily_price_check_specs(key),
        group_name=market,
        kinds={"polars", "parquet"},
        pool=provider_pool(market),
    )
    @provider_retries
    def daily_prices(
        context: dg.AssetExecutionContext, lake: LakeResource, market_data: MarketDataResource
    ):
        """Daily OHLCV bars per session; rows breaking a rule go to quarantine with their rules."""
        sessions = partition_dates(context.partition_keys)
        universe = load_universe(lake, market)
        source = market_data.source(market)
        raw = source.daily_bars(market, sessions, universe["symbol"].to_list())
        # Which sources of a chain were tried and why they could not serve (never a secret).
        failures = source.last_failures if isinstance(source, FallbackSource) else []
        for failure in failures:
            context.log.warning(f"{failure['source']} could not serve: {failure['reason']}")
        rules = (*DAILY_PRICE_RULES, session_rule("trade_date", tuple(sessions)))
        validated = validate(standardise(raw), rules)
        stored = validated.clean
        # Every row sent is stored or quarantined: rows dated outside the run's sessions or
        # undated are filed under one of them (markets.filed_under), dates kept as sent.
        quarantined = with_filing(validated.quarantined, sessions)
        # Replaces exactly this run's partitions (stored and quarantine), each atomically.
        lake.write_partitions("daily_prices", market, stored, sessions)
        lake.write_quarantine(
            "daily_prices", market, quarantined, sessions, date_column=FILED_UNDER
        )

        by_session = completeness_by_session(stored, universe, sessions)
        previous = _previous_stored(lake, market, min(sessions))
        sources = stored["source"].value_counts().rows() if len(stored) else []
        yield dg.MaterializeResult(
            metadata={
                "rows": len(stored),
                "sent": len(raw),  # == stored + quarantined: nothing is dropped
                "stored": len(stored),
                "quarantined": len(quarantined),
                "halted": int(stored.select(HALTED.sum()).item() or 0),  # stored, flat, volume 0
                "sessions": len(sessions),
                "completeness": float(by_session["completeness"].min()),
                "rows_by_source": {name: int(n) for name, n in sources},
                "source_failures": dg.MetadataValue.json(failures),
                "path": lake.uri(lake.market_dir("daily_prices", market)),
                **preview(stored, sessions),
            },
            check_results=[
                price_relationships_result(stored, validated),
                completeness_result(by_session),
                suspicious_jumps_result(stored, previous, sessions),
            ],
        )

    return daily_prices


def _previous_stored(lake: LakeResource, market: str, first: dt.date) -> pl.DataFrame:
    before = previous_session(market, first)
    if before is None:
        return pl.DataFrame(schema=DAILY_PRICES)
    return lake.read_partitions("daily_prices", market, DAILY_PRICES, first=before, last=before)
