"""The backfill's own data work in process, stage by stage, without Dagster.

Calls the functions the daily_prices and indicators assets call, in the same order and with the
same arguments (marketpipe_assets/prices.py and indicators.py), and times each stage.
"""

from __future__ import annotations

import datetime as dt

import polars as pl

from checks.metadata import markdown_table
from checks.price_checks import (
    completeness_by_session,
    completeness_result,
    price_relationships_result,
    suspicious_jumps_result,
)
from checks.rulebook import DAILY_PRICE_RULES, HALTED, session_rule, validate
from checks.schemas import DAILY_PRICES, INDICATORS
from marketpipe_assets.indicators import HISTORY_COLUMNS, compute_indicators
from marketpipe_assets.ingest import stage_sessions
from marketpipe_assets.prices import _previous_stored, load_universe, standardise
from resources.lake import LakeResource
from resources.market_data import MarketDataResource

from .common import Stages


def prepare_universe(lake: LakeResource, market_data: MarketDataResource, market: str) -> None:
    """What the universe asset stores (untimed: the backfill starts from a stored universe)."""
    frame = market_data.universe(market).unique("symbol", keep="last").sort("symbol")
    lake.write_table("universe", market, frame)


def prices(t: Stages, lake, market_data, market: str, sessions: list[dt.date]) -> dict:
    with t("read universe"):
        universe = load_universe(lake, market)
    with t("generate bars"):
        source = market_data.source(market)
        raw = source.daily_bars(market, sessions, universe["symbol"].to_list())
    with t("standardise"):
        frame = standardise(raw)
    with t("validate"):
        rules = (*DAILY_PRICE_RULES, session_rule("trade_date", tuple(sessions)))
        validated = validate(frame, rules)
        stored = validated.clean
    with t("stage prices + quarantine"):
        batch = stage_sessions(
            lake,
            "bench",
            "daily_prices",
            market,
            sessions,
            sent=len(raw),
            stored=stored,
            quarantined=validated.quarantined,
        ).batch
    with t("check completeness"):
        by_session = completeness_by_session(stored, universe, sessions)
        completeness = completeness_result(by_session)
    with t("check jumps"):
        previous = _previous_stored(lake, market, min(sessions))
        jumps = suspicious_jumps_result(stored, previous, sessions)
    with t("check price relationships"):
        relationships = price_relationships_result(stored, validated)
    with t("publish prices"):  # what the asset does once the blocking checks pass
        lake.publish(batch)
    with t("prices metadata"):
        sources = stored["source"].value_counts().rows() if len(stored) else []
        stored.select(HALTED.sum()).item()
        markdown_table(stored)
    checks = (relationships, completeness, jumps)
    return {
        "bars": len(raw),
        "stored": len(stored),
        "quarantined": len(validated.quarantined),
        "sources": dict(sources),
        "checks": {c.check_name: c.passed for c in checks},
    }


def indicators(t: Stages, lake, market: str, sessions: list[dt.date]) -> pl.DataFrame:
    with t("read history"):
        history = lake.read_partitions(
            "daily_prices", market, DAILY_PRICES, last=max(sessions), columns=HISTORY_COLUMNS
        )
    with t("compute indicators"):
        values = compute_indicators(history).filter(
            pl.col("trade_date").is_between(min(sessions), max(sessions))
        )
    with t("write indicators"):
        lake.publish(
            lake.stage(
                "bench", "indicators", market, values.select(INDICATORS.names()), None, sessions
            )
        )
    with t("indicators metadata"):
        markdown_table(values.drop_nulls().tail(10))
    return history


def ge_check(t: Stages, lake, market: str, sessions: list[dt.date]) -> bool | None:
    """The separate great_expectations check (marketpipe_assets/ge_check.py), when it exists."""
    try:
        from checks.ge_suite import ge_violation_counts
        from marketpipe_assets.ge_check import recorded_violation_counts, sessions_to_check
    except ModuleNotFoundError:
        return None
    first, last, _ = sessions_to_check(market, min(sessions), max(sessions))
    with t("GE check: import great_expectations"):
        import great_expectations  # noqa: F401
    with t("GE check: read stored + quarantine"):
        stored = lake.read_partitions("daily_prices", market, DAILY_PRICES, first=first, last=last)
        quarantined = lake.read_quarantine(
            "daily_prices", market, DAILY_PRICES, first=first, last=last
        )
        batch = pl.concat([stored, quarantined.select(stored.columns)])
    with t("GE check: ge_violation_counts"):
        by_ge = ge_violation_counts(batch)
    with t("GE check: quarantine counts"):
        recorded = recorded_violation_counts(quarantined)
    return by_ge == recorded


def run(lake, market_data, market: str, sessions: list[dt.date], *, with_ge: bool = True):
    """(stage timings, counts, the history frame the indicators stage read).

    with_ge=False for what the scheduled daily job runs: the GE check runs in its own run."""
    t = Stages()
    counts = prices(t, lake, market_data, market, sessions)
    if with_ge:
        counts["checks"]["great_expectations"] = ge_check(t, lake, market, sessions)
    history = indicators(t, lake, market, sessions)
    return t, counts, history
