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
from checks.price_checks import completeness_by_session
from checks.rulebook import Validated
from checks.schemas import INTRADAY_BARS, conform
from resources.sources.base import intraday_bars

from .ingest import Ingest, Run, Shown, ingested_asset
from .prices import load_universe


def standardise_intraday(raw: pl.DataFrame) -> pl.DataFrame:
    """The schema's columns and types, plus `raw` (values that did not parse, NaN included)."""
    return conform(raw, INTRADAY_BARS, what="intraday bars", evidence=True)


def _fetch_intraday(run: Run) -> pl.DataFrame:
    universe = load_universe(run.lake, run.market)
    run.facts["universe"] = universe
    source = run.market_data.source(run.market)
    raw = intraday_bars(source, run.market, run.sessions, universe["symbol"].to_list())
    run.note_failures(source)
    return raw


def _validate_intraday(run: Run, raw: pl.DataFrame) -> Validated:
    return validate_intraday(standardise_intraday(raw), run.market, run.sessions)


def _check_intraday(run: Run, stored: pl.DataFrame, validated: Validated) -> list:
    present = stored.select("symbol", "trade_date").unique()
    by_session = completeness_by_session(present, run.facts["universe"], run.sessions)
    run.facts["by_session"] = by_session
    counts = bar_counts(stored, run.market, run.sessions)
    return [
        intraday_rules_result(stored, validated, run.market, run.sessions),
        intraday_completeness_result(by_session),
        bar_count_result(counts),
    ]


def _shown_intraday(run: Run, stored: pl.DataFrame, counts) -> Shown:
    return Shown(percents=run.facts["by_session"].select("trade_date", "completeness_pct"))


INTRADAY_BARS_INGEST = Ingest(
    dataset="intraday_bars",
    description="15-minute OHLCV bars per session (bar_start in UTC, `trade_date` the session); "
    "rows breaking a rule go to quarantine with their rules.",
    check_specs=intraday_check_specs,
    fetch=_fetch_intraday,
    validate=_validate_intraday,
    checks=_check_intraday,
    shown=_shown_intraday,
)


def intraday_bars_asset(market: str) -> dg.AssetsDefinition:
    return ingested_asset(market, INTRADAY_BARS_INGEST)
