"""One factory for every ingested, session-partitioned dataset: fetch what the source sends,
validate it, derive, stage stored and quarantined rows together, judge the staged rows with the
blocking checks, publish, and say what happened.

A dataset gives only its own hooks (an `Ingest`); the order of the steps, the accounting that
nothing was lost, the single writer of its partitions and quarantine (`stage_sessions`), the
write-audit-publish step and the metadata layout are the same for all of them.
"""

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
import polars as pl

from checks.markets import partition_dates, partitions_def, with_filing
from checks.rulebook import Validated
from checks.schemas import FILED_UNDER
from resources.lake import LakeResource
from resources.market_data import MarketDataResource
from resources.publishing import Batch
from resources.sources.base import FallbackSource, Source

from .metadata import accounted, session_metadata
from .pools import provider_pool
from .publish import publish_if_checks_pass
from .retries import provider_retries


@dataclass
class Run:
    """One run of an ingested dataset: what every hook sees, and `facts` one hook leaves for a
    later one (the universe a fetch loaded, the per-session figures a check computed)."""

    context: dg.AssetExecutionContext
    lake: LakeResource
    market_data: MarketDataResource
    market: str
    sessions: list[dt.date]
    config: Any = None
    # The sources of a fallback chain that could not serve (None: no chain was asked).
    failures: list[dict[str, str]] | None = None
    facts: dict[str, Any] = field(default_factory=dict)

    def note_failures(self, source: Source) -> None:
        """Record and log which sources of a chain were tried and why they could not serve
        (never a secret: the provider layer masks them)."""
        self.failures = list(source.last_failures) if isinstance(source, FallbackSource) else []
        for failure in self.failures:
            self.context.log.warning(f"{failure['source']} could not serve: {failure['reason']}")


@dataclass(frozen=True)
class Shown:
    """What a dataset adds to the common metadata: more per-session counts, per-session
    percents (the date column plus one column per figure), rows per source, run-wide facts."""

    counts: Mapping[str, pl.DataFrame] = field(default_factory=dict)
    percents: pl.DataFrame | None = None
    by_source: pl.DataFrame | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Ingest:
    """An ingested dataset's hooks; `ingested_asset` builds its asset for a market."""

    dataset: str
    description: str
    check_specs: Callable[[dg.AssetKey], list[dg.AssetCheckSpec]]
    # Every row the source sent, in any shape `validate` reads.
    fetch: Callable[[Run], pl.DataFrame]
    # Standardise and split into clean and quarantined rows (each with its rule names).
    validate: Callable[[Run, pl.DataFrame], Validated]
    # The check results, judged on the rows about to be published.
    checks: Callable[[Run, pl.DataFrame, Validated], list[dg.AssetCheckResult]]
    # Columns computed from clean rows (order books' spread, depth...).
    derive: Callable[[pl.DataFrame], pl.DataFrame] | None = None
    shown: Callable[[Run, pl.DataFrame, Mapping[str, pl.DataFrame]], Shown] | None = None
    date_column: str = "trade_date"
    config: type[dg.Config] | None = None  # run config shown in the launchpad
    # Whether the dataset reads the market's universe (an upstream asset in the graph).
    reads_universe: bool = True


@dataclass(frozen=True)
class Staged:
    batch: Batch  # nothing visible until published
    counts: dict[str, pl.DataFrame]  # sent, stored, quarantined per session (accounted)
    quarantined: pl.DataFrame  # with FILED_UNDER, the partition each row is filed under


def stage_sessions(
    lake: LakeResource,
    run_id: str,
    dataset: str,
    market: str,
    sessions: list[dt.date],
    *,
    sent: int,
    stored: pl.DataFrame,
    quarantined: pl.DataFrame,
    date_column: str = "trade_date",
) -> Staged:
    """The one writer of an ingested dataset's partitions and quarantine. Files every
    quarantined row under one of the run's sessions (a row dated off them or undated is kept,
    never dropped), fails unless stored + quarantined is what the source sent, and stages both
    to replace exactly these sessions' partitions together once published."""
    quarantined = with_filing(quarantined, sessions, date_column)
    counts = accounted(f"{market}/{dataset}", sent, stored, quarantined, date_column)
    batch = lake.stage(
        run_id,
        dataset,
        market,
        stored,
        quarantined,
        sessions,
        date_column=date_column,
        quarantine_date_column=FILED_UNDER,
    )
    return Staged(batch, counts, quarantined)


def ingested_asset(market: str, spec: Ingest) -> dg.AssetsDefinition:
    key = dg.AssetKey([market, spec.dataset])

    def body(context, config, lake: LakeResource, market_data: MarketDataResource):
        sessions = partition_dates(context.partition_keys)
        run = Run(context, lake, market_data, market, sessions, config)
        sent = spec.fetch(run)
        validated = spec.validate(run, sent)
        stored = spec.derive(validated.clean) if spec.derive else validated.clean
        staged = stage_sessions(
            lake,
            context.run_id,
            spec.dataset,
            market,
            run.sessions,
            sent=len(sent),
            stored=stored,
            quarantined=validated.quarantined,
            date_column=spec.date_column,
        )
        results = spec.checks(run, stored, validated)
        yield from publish_if_checks_pass(context, lake, staged.batch, results)
        shown = spec.shown(run, stored, staged.counts) if spec.shown else Shown()
        metadata = session_metadata(
            context,
            run.sessions,
            counts={**staged.counts, **shown.counts},
            percents=shown.percents,
            by_source=shown.by_source,
            failures=run.failures,
            uri=lake.uri(lake.market_dir(spec.dataset, market)),
            shown=stored,
            column=spec.date_column,
        )
        yield dg.MaterializeResult(metadata={**metadata, **shown.extra}, check_results=results)

    decorate = dg.asset(
        key=key,
        description=spec.description,
        deps=[dg.AssetKey([market, "universe"])] if spec.reads_universe else [],
        partitions_def=partitions_def(market),
        backfill_policy=dg.BackfillPolicy.single_run(),
        check_specs=spec.check_specs(key),
        group_name=market,
        kinds={"polars", "parquet"},
        pool=provider_pool(market),
    )
    if spec.config is None:

        def plain(
            context: dg.AssetExecutionContext, lake: LakeResource, market_data: MarketDataResource
        ):
            yield from body(context, None, lake, market_data)

        return decorate(provider_retries(plain))

    def configured(
        context: dg.AssetExecutionContext,
        config,
        lake: LakeResource,
        market_data: MarketDataResource,
    ):
        yield from body(context, config, lake, market_data)

    # Dagster reads the config class from the parameter's annotation.
    configured.__annotations__["config"] = spec.config
    return decorate(provider_retries(configured))
