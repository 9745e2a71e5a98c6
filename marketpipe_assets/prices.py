"""Universe and daily prices per market: fetch, standardise, validate, store, quarantine."""

import datetime as dt
import os

import dagster as dg
import polars as pl

from checks.listing import active_on
from checks.markets import MARKETS, partition_dates, partitions_def, previous_session, with_filing
from checks.metadata import markdown_table
from checks.price_checks import (
    completeness_by_session,
    completeness_result,
    daily_price_check_specs,
    price_relationships_result,
    suspicious_jumps_result,
)
from checks.rulebook import DAILY_PRICE_RULES, HALTED, session_rule, validate
from checks.schemas import DAILY_PRICES, FILED_UNDER, UNIVERSE, conform
from resources.lake import LakeResource
from resources.market_data import MarketDataResource
from resources.sources.base import FallbackSource
from resources.sources.files import FilesSource, SessionUniverse

from .metadata import accounted, path_value, session_metadata
from .publish import publish_if_checks_pass
from .retries import provider_retries


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
        location = lake.write_table("universe", market, frame)
        return dg.MaterializeResult(
            metadata={
                "symbols": len(frame),
                "active": frame.filter(pl.col("delisting_date").is_null()).height,
                "path": path_value(lake.uri(location)),
                "preview": dg.MetadataValue.md(markdown_table(frame)),
            }
        )

    return universe


def standardise(raw: pl.DataFrame) -> pl.DataFrame:
    """The contract's columns and types, plus `raw`: the text of each value that did not parse
    (NaN included: null to every engine, kept as evidence)."""
    return conform(raw, DAILY_PRICES, what="daily bars", evidence=True)


def load_universe(lake: LakeResource, market: str, *, required: bool = True) -> pl.DataFrame | None:
    """The stored universe; without one a Failure saying how to make it (None if not required)."""
    frame = lake.read_table("universe", market)
    if frame is None and not required:
        return None
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
        source = market_data.source(market)
        landing = source if isinstance(source, FilesSource) else None
        universe = load_universe(lake, market, required=landing is None)
        symbols = [] if universe is None else universe["symbol"].to_list()
        raw = source.daily_bars(market, sessions, symbols)
        checked_against = _landing_universe(context, landing, market, universe, raw)
        universe = checked_against.frame if checked_against else universe
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
        counts = accounted(f"{market}/daily_prices", len(raw), stored, quarantined)
        # Staged, not yet visible: replaces exactly this run's partitions (stored and
        # quarantine) together once the blocking checks pass.
        batch = lake.stage(
            context.run_id,
            "daily_prices",
            market,
            stored,
            quarantined,
            sessions,
            quarantine_date_column=FILED_UNDER,
        )

        by_session = completeness_by_session(stored, universe, sessions)
        previous = _previous_stored(lake, market, min(sessions))
        check_results = [
            price_relationships_result(stored, validated),
            completeness_result(
                by_session,
                remedy=checked_against.remedy if checked_against else None,
                universe_rule=checked_against.rule if checked_against else None,
            ),
            suspicious_jumps_result(stored, previous, sessions),
        ]
        yield from publish_if_checks_pass(context, lake, batch, check_results)
        yield dg.MaterializeResult(
            metadata={
                **session_metadata(
                    context,
                    sessions,
                    # halted: stored, flat, volume 0.
                    counts={**counts, "halted": stored.filter(HALTED)},
                    percents=by_session.select("trade_date", "completeness_pct"),
                    by_source=stored,
                    failures=failures,
                    uri=lake.uri(lake.market_dir("daily_prices", market)),
                    shown=stored,
                ),
                **({"universe_rule": checked_against.rule} if checked_against else {}),
            },
            check_results=check_results,
        )

    return daily_prices


def _landing_universe(context, landing, market, stored, raw) -> SessionUniverse | None:
    """For landing files: the universe their sessions are checked against, said in the log; and
    each file left out as unusable (the landing sensor gives it a failed run of its own)."""
    if landing is None:
        return None
    for message in landing.rejected.values():
        context.log.warning(f"left out: {message}")
    chosen = landing.session_universe(market, stored, raw)
    context.log.info(f"completeness is measured against {chosen.rule}")
    return chosen


def _previous_stored(lake: LakeResource, market: str, first: dt.date) -> pl.DataFrame:
    before = previous_session(market, first)
    if before is None:
        return pl.DataFrame(schema=DAILY_PRICES)
    return lake.read_partitions("daily_prices", market, DAILY_PRICES, first=before, last=before)
