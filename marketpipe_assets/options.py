"""us/option_chains: fetch every configured underlying's chain, derive greeks, validate, store."""

import datetime as dt
from collections.abc import Sequence
from zoneinfo import ZoneInfo

import dagster as dg
import polars as pl

from checks.option_rules import (
    IV_RANGE,
    PARITY_TOLERANCE,
    completeness_result,
    option_check_specs,
    option_rules,
    parity_result,
    rules_result,
)
from checks.rulebook import validate
from resources.lake import LakeResource
from resources.market_data import MarketDataResource
from resources.providers.base import run_sync
from resources.providers.errors import NotFound
from resources.sources.base import FallbackSource, Source, SourceUnavailable
from resources.sources.synthetic import SyntheticSource
from resources.sources.synthetic_options import option_chains

from .greeks import DAYS_PER_YEAR, RISK_FREE_RATE, black_scholes
from .markets import MARKETS, partition_dates, partitions_def
from .metadata import preview
from .prices import provider_pool
from .schemas import OPTION_CHAINS, conform, quarantine_schema

DATASET = "option_chains"


class OptionChainConfig(dg.Config):
    risk_free_rate: float = RISK_FREE_RATE
    iv_min: float = IV_RANGE[0]  # exclusive
    iv_max: float = IV_RANGE[1]  # inclusive
    parity_tolerance: float = PARITY_TOLERANCE


def fetch(source: Source, underlyings: Sequence[str], sessions: list[dt.date]) -> pl.DataFrame:
    """Vendor columns of every underlying's chain on every session; a chain moves on when a
    source has no options (SourceUnavailable). A symbol without options is simply absent."""
    if isinstance(source, FallbackSource):
        return source._first_available(lambda s: fetch(s, underlyings, sessions))
    if isinstance(source, SyntheticSource):
        return option_chains(source.seed, underlyings, sessions)
    if not hasattr(source, "option_chain"):
        raise SourceUnavailable(f"{source.name} serves no option chains")
    today = dt.datetime.now(ZoneInfo(MARKETS["us"].timezone)).date()
    if any(day != today for day in sessions):
        raise SourceUnavailable(
            f"{source.name} serves only today's option chains ({today}); it cannot backfill "
            f"{min(sessions)}..{max(sessions)}: use the synthetic source for past sessions"
        )
    frames = []
    for symbol in underlyings:
        try:
            frames.append(run_sync(source.option_chain(symbol, today)))
        except NotFound:
            continue
    return pl.concat(frames) if frames else pl.DataFrame(schema=list(OPTION_CHAINS)[:13])


def derive(raw: pl.DataFrame, rate: float = RISK_FREE_RATE) -> pl.DataFrame:
    """The contract's columns: vendor columns plus mid, spread, days to expiry, moneyness
    (strike / underlying) and greeks (theta per calendar day, vega per vol point)."""
    frame = raw.with_columns(
        mid=(pl.col("bid") + pl.col("ask")) / 2,
        spread=pl.col("ask") - pl.col("bid"),
        days_to_expiry=(pl.col("expiration") - pl.col("quote_date")).dt.total_days(),
        moneyness=pl.col("strike") / pl.col("underlying_price"),
    )
    greeks = black_scholes(
        frame["underlying_price"].to_numpy(),
        frame["strike"].to_numpy(),
        frame["days_to_expiry"].cast(pl.Float64).to_numpy() / DAYS_PER_YEAR,
        frame["implied_volatility"].to_numpy(),
        (frame["option_type"] == "call").fill_null(False).to_numpy(),
        rate,
    )
    frame = frame.with_columns(pl.Series(n, greeks[n]) for n in ("delta", "gamma", "theta", "vega"))
    frame = conform(frame, OPTION_CHAINS, what="option chains")
    return frame.with_columns(pl.col(pl.Float64).fill_nan(None))


def option_chains_asset() -> dg.AssetsDefinition:
    key = dg.AssetKey(["us", DATASET])

    @dg.asset(
        key=key,
        partitions_def=partitions_def("us"),
        backfill_policy=dg.BackfillPolicy.single_run(),
        check_specs=option_check_specs(key),
        group_name="us",
        kinds={"polars", "parquet"},
        pool=provider_pool("us"),
    )
    def option_chains_(
        context: dg.AssetExecutionContext,
        config: OptionChainConfig,
        lake: LakeResource,
        market_data: MarketDataResource,
    ):
        """Chains of MARKETPIPE_OPTION_UNDERLYINGS, every expiration within 90 days, with greeks;
        rows breaking a rule go to quarantine with their rules."""
        sessions = partition_dates(context.partition_keys)
        underlyings = market_data.underlyings()
        rules = option_rules((config.iv_min, config.iv_max))
        raw = fetch(market_data.source("us"), underlyings, sessions)
        validated = validate(derive(raw, config.risk_free_rate), rules)
        stored = validated.clean
        lake.write_partitions(DATASET, "us", stored, sessions, date_column="quote_date")
        quarantined = validated.quarantined.select(quarantine_schema(OPTION_CHAINS).names())
        # Replaces exactly these sessions' quarantine files; undated rows go with the last.
        lake.write_quarantine(DATASET, "us", quarantined, sessions, date_column="quote_date")
        yield dg.MaterializeResult(
            metadata={
                "rows": len(stored),
                "quarantined": len(quarantined),
                "underlyings": len(underlyings),
                "sessions": len(sessions),
                "volume_missing": stored["volume"].null_count(),
                "path": lake.uri(lake.market_dir(DATASET, "us")),
                **preview(stored, sessions),
            },
            check_results=[
                rules_result(stored, validated, rules),
                completeness_result(stored, underlyings, sessions),
                parity_result(stored, config.risk_free_rate, config.parity_tolerance),
            ],
        )

    return option_chains_
