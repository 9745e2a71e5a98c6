"""Intraday-bar rules and asset checks: the daily price rules' constraints on 15-minute bars,
plus bars inside the session's hours and one bar per (symbol, bar_start).

Blocking: INTRADAY_PRICE_RULES_CHECK (no stored bar breaks a rule) and INTRADAY_COMPLETENESS
(symbols with bars against the universe). INTRADAY_BAR_COUNT only warns.
"""

from __future__ import annotations

import datetime as dt
from typing import cast

import dagster as dg
import polars as pl

from .markets import session_bounds
from .metadata import markdown_table
from .price_checks import completeness_result, rules_result
from .rulebook import (
    OHLCV_RULES,
    NotNull,
    Rule,
    UniqueTogether,
    Validated,
    WithinColumns,
    in_columns_of,
    named_rule,
    parsed_rules,
    validate,
)
from .schemas import INTRADAY_BAR_MINUTES, INTRADAY_BARS, PRICE_COLUMNS
from .specs import Check, check_specs, rules_check

INTRADAY_PRICE_RULES_CHECK = "intraday_price_rules"
INTRADAY_COMPLETENESS = "completeness"
INTRADAY_BAR_COUNT = "bar_count"
BLOCKING_CHECKS = (INTRADAY_PRICE_RULES_CHECK, INTRADAY_COMPLETENESS)
# A symbol's session is complete enough with >= 90% of the session's 15-minute slots.
BAR_COUNT_TOLERANCE = 0.90

# Columns the validation adds (from session_bounds) and drops again.
SESSION_OPEN, SESSION_CLOSE = "_session_open", "_session_close"


REQUIRED_COLUMNS = ("symbol", "bar_start", "trade_date", *PRICE_COLUMNS, "volume")

INTRADAY_BAR_RULES: tuple[Rule, ...] = (
    Rule(
        "required_fields",
        "symbol, bar_start, session, open, high, low, close and volume are present",
        tuple(NotNull(c) for c in REQUIRED_COLUMNS),
    ),
    *parsed_rules(INTRADAY_BARS),
    named_rule("symbol"),
    *OHLCV_RULES,
    Rule(
        "within_session_hours",
        "session open <= bar_start < session close (half days close early)",
        (WithinColumns("bar_start", SESSION_OPEN, SESSION_CLOSE),),
    ),
    Rule(
        "unique_symbol_bar_start",
        "one bar per (symbol, bar_start)",
        (UniqueTogether(("symbol", "bar_start")),),
    ),
)


def session_table(market: str, sessions: list[dt.date]) -> pl.DataFrame:
    """Per session: open, close (UTC) and the number of 15-minute slots between them."""
    bounds = [session_bounds(market, d) for d in sessions]
    step = dt.timedelta(minutes=INTRADAY_BAR_MINUTES)
    return pl.DataFrame(
        {
            "trade_date": sessions,
            SESSION_OPEN: [o for o, _ in bounds],
            SESSION_CLOSE: [c for _, c in bounds],
            "slots": [max(1, int((c - o) / step)) for o, c in bounds],
        },
        schema={
            "trade_date": pl.Date,
            SESSION_OPEN: pl.Datetime("us", "UTC"),
            SESSION_CLOSE: pl.Datetime("us", "UTC"),
            "slots": pl.Int64,
        },
    )


def validate_intraday(frame: pl.DataFrame, market: str, sessions: list[dt.date]) -> Validated:
    """Split bars into clean and quarantined (with rule names); columns as given."""
    table = session_table(market, sessions).drop("slots")
    with_bounds = frame.join(table, on="trade_date", how="left", maintain_order="left")
    result = validate(with_bounds, INTRADAY_BAR_RULES)
    return in_columns_of(result, frame)


INTRADAY_CHECKS = (
    rules_check(
        INTRADAY_PRICE_RULES_CHECK,
        INTRADAY_BAR_RULES,
        "Stored bars satisfy every rule ({rules}); breaking rows are quarantined.",
    ),
    Check(
        INTRADAY_COMPLETENESS,
        "Each session has stored bars for enough of the symbols active that day.",
        blocking=True,
    ),
    Check(
        INTRADAY_BAR_COUNT,
        f"Warns when a symbol has fewer than {BAR_COUNT_TOLERANCE:.0%} of the session's "
        "15-minute bars.",
    ),
)


def intraday_check_specs(asset_key: dg.AssetKey) -> list[dg.AssetCheckSpec]:
    return check_specs(asset_key, INTRADAY_CHECKS)


def intraday_rules_result(
    stored: pl.DataFrame, validated: Validated, market: str, sessions: list[dt.date]
) -> dg.AssetCheckResult:
    """Re-validates what is being stored: passes when no stored row breaks a rule."""
    revalidated = validate_intraday(stored, market, sessions)
    return rules_result(INTRADAY_PRICE_RULES_CHECK, stored, revalidated, validated)


def intraday_completeness_result(by_session: pl.DataFrame) -> dg.AssetCheckResult:
    result = completeness_result(by_session)
    return dg.AssetCheckResult(
        check_name=INTRADAY_COMPLETENESS,
        passed=result.passed,
        description=result.description,
        metadata=result.metadata,
    )


def bar_counts(stored: pl.DataFrame, market: str, sessions: list[dt.date]) -> pl.DataFrame:
    """Per stored (symbol, session): bars, the session's slots and their ratio."""
    slots = session_table(market, sessions).select("trade_date", "slots")
    return (
        stored.group_by("symbol", "trade_date")
        .agg(bars=pl.len().cast(pl.Int64))
        .join(slots, on="trade_date", how="left")
        .with_columns(ratio=(pl.col("bars") / pl.col("slots")).round(4))
        .sort("trade_date", "symbol")
    )


def bar_count_result(counts: pl.DataFrame) -> dg.AssetCheckResult:
    short = counts.filter(pl.col("ratio") < BAR_COUNT_TOLERANCE)
    return dg.AssetCheckResult(
        check_name=INTRADAY_BAR_COUNT,
        passed=short.is_empty(),
        severity=dg.AssetCheckSeverity.WARN,
        description=f"{len(short)} symbol-session(s) with fewer than {BAR_COUNT_TOLERANCE:.0%} "
        "of the session's bars",
        metadata={
            "tolerance": BAR_COUNT_TOLERANCE,
            "short_symbol_sessions": len(short),
            # polars types a Series' min as any Python value or None; this is a float's.
            "min_ratio": float(cast(float, counts["ratio"].min())) if len(counts) else 1.0,
            "preview": dg.MetadataValue.md(markdown_table(short)),
        },
    )
