"""Universe and daily prices per market: fetch, standardise, validate, store, quarantine."""

import datetime as dt
from typing import Literal, overload

import dagster as dg
import polars as pl

from checks.listing import active_on
from checks.markets import previous_session
from checks.metadata import markdown_table
from checks.price_checks import (
    completeness_by_session,
    completeness_result,
    daily_price_check_specs,
    price_relationships_result,
    suspicious_jumps_result,
)
from checks.rulebook import DAILY_PRICE_RULES, HALTED, Validated, session_rule, validate
from checks.schemas import DAILY_PRICES, UNIVERSE, conform
from resources.lake import LakeResource
from resources.market_data import MarketDataResource
from resources.sources.files import FilesSource, SessionUniverse

from .ingest import Ingest, Run, Shown, ingested_asset
from .metadata import path_value
from .pools import provider_pool
from .retries import provider_retries


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


@overload
def load_universe(
    lake: LakeResource, market: str, *, required: Literal[True] = True
) -> pl.DataFrame: ...
@overload
def load_universe(lake: LakeResource, market: str, *, required: bool) -> pl.DataFrame | None: ...
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


def _fetch_daily(run: Run) -> pl.DataFrame:
    source = run.market_data.source(run.market)
    landing = source if isinstance(source, FilesSource) else None
    universe = load_universe(run.lake, run.market, required=landing is None)
    symbols = [] if universe is None else universe["symbol"].to_list()
    raw = source.daily_bars(run.market, run.sessions, symbols)
    checked_against = _landing_universe(run.context, landing, run.market, universe, raw)
    run.facts["checked_against"] = checked_against
    run.facts["universe"] = checked_against.frame if checked_against else universe
    run.note_failures(source)
    return raw


def _validate_daily(run: Run, raw: pl.DataFrame) -> Validated:
    rules = (*DAILY_PRICE_RULES, session_rule("trade_date", tuple(run.sessions)))
    return validate(standardise(raw), rules)


def _check_daily(run: Run, stored: pl.DataFrame, validated: Validated) -> list:
    checked_against = run.facts["checked_against"]
    by_session = completeness_by_session(stored, run.facts["universe"], run.sessions)
    run.facts["by_session"] = by_session
    previous = _previous_stored(run.lake, run.market, min(run.sessions))
    return [
        price_relationships_result(stored, validated),
        completeness_result(
            by_session,
            remedy=checked_against.remedy if checked_against else None,
            universe_rule=checked_against.rule if checked_against else None,
        ),
        suspicious_jumps_result(stored, previous, run.sessions),
    ]


def _shown_daily(run: Run, stored: pl.DataFrame, counts) -> Shown:
    checked_against = run.facts["checked_against"]
    return Shown(
        counts={"halted": stored.filter(HALTED)},  # stored, flat, volume 0
        percents=run.facts["by_session"].select("trade_date", "completeness_pct"),
        by_source=stored,
        extra={"universe_rule": checked_against.rule} if checked_against else {},
    )


DAILY_PRICES_INGEST = Ingest(
    dataset="daily_prices",
    description="Daily OHLCV bars per session; rows breaking a rule go to quarantine with "
    "their rules.",
    check_specs=daily_price_check_specs,
    fetch=_fetch_daily,
    validate=_validate_daily,
    checks=_check_daily,
    shown=_shown_daily,
)


def daily_prices_asset(market: str) -> dg.AssetsDefinition:
    return ingested_asset(market, DAILY_PRICES_INGEST)


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
