"""Asset checks on daily prices, built from the rulebook.

price_relationships and completeness block indicators; suspicious_jumps only warns.
"""

from __future__ import annotations

import datetime as dt
from typing import cast

import dagster as dg
import numpy as np
import polars as pl

from .listing import active_on, listed_from, listed_until
from .metadata import markdown_table
from .rulebook import (
    COMPLETENESS_THRESHOLD,
    DAILY_PRICE_RULES,
    Validated,
    day_over_day_jumps,
    validate,
)
from .specs import Check, check_specs, rules_check

PRICE_RELATIONSHIPS = "price_relationships"
COMPLETENESS = "completeness"
SUSPICIOUS_JUMPS = "suspicious_jumps"
# The completeness rule in percent, the unit every figure of it is shown in.
THRESHOLD_PCT = 100 * COMPLETENESS_THRESHOLD


DAILY_PRICE_CHECKS = (
    rules_check(
        PRICE_RELATIONSHIPS,
        DAILY_PRICE_RULES,
        "Stored bars satisfy every rule ({rules}); breaking rows are quarantined.",
    ),
    Check(
        COMPLETENESS,
        f"Each session has stored bars for >= {THRESHOLD_PCT:g}% of the symbols active that day.",
        blocking=True,
    ),
    Check(SUSPICIOUS_JUMPS, "Warns on day-over-day close moves beyond the jump threshold."),
)


def daily_price_check_specs(asset_key: dg.AssetKey) -> list[dg.AssetCheckSpec]:
    return check_specs(asset_key, DAILY_PRICE_CHECKS)


def price_relationships_result(stored: pl.DataFrame, validated: Validated) -> dg.AssetCheckResult:
    """Re-validates what is being stored: passes when no stored row breaks a rule."""
    return rules_result(PRICE_RELATIONSHIPS, stored, validate(stored), validated)


def rules_result(
    check_name: str, stored: pl.DataFrame, revalidated: Validated, validated: Validated
) -> dg.AssetCheckResult:
    """Passes when re-validating the stored rows finds no rule broken; reports the quarantine."""
    broken = {rule: n for rule, n in revalidated.violation_counts.items() if n}
    return dg.AssetCheckResult(
        check_name=check_name,
        passed=not broken,
        description=(
            f"stored rows breaking rules: {broken}"
            if broken
            else f"all {len(stored)} stored rows pass; {len(validated.quarantined)} quarantined"
        ),
        metadata={
            "stored_rows": len(stored),
            "quarantined_rows": len(validated.quarantined),
            "quarantined_by_rule": validated.violation_counts,
            "stored_rows_breaking_rules": broken,
        },
    )


def completeness_by_session(
    stored: pl.DataFrame, universe: pl.DataFrame, sessions: list[dt.date]
) -> pl.DataFrame:
    """Per session: active symbols, symbols with a stored bar, and the share of the first
    with the second in percent (`completeness_pct`: percent in metadata, text and logs alike).

    Active counts come from sorted listing and delisting dates (no sessions x symbols cross
    join); stored rows are unique per (symbol, date) after validation, so they are counted as is.
    """
    # checks.listing's rule: a null listing date is "listed before history", never "unlisted".
    listed = universe.select("symbol", "listing_date", "delisting_date")
    bounds = listed.select(start=listed_from(), end=listed_until())
    day = np.array(sessions, dtype="datetime64[D]")
    starts = np.sort(bounds["start"].to_numpy().astype("datetime64[D]"))
    ends = np.sort(bounds["end"].drop_nulls().to_numpy().astype("datetime64[D]"))
    active = np.searchsorted(starts, day, "right") - np.searchsorted(ends, day, "right")
    have = (
        stored.select("symbol", "trade_date")
        .join(listed, on="symbol", how="inner")
        .filter(active_on(pl.col("trade_date")))
        .group_by("trade_date")
        .agg(stored=pl.len())
    )
    return (
        pl.DataFrame(
            {"trade_date": sessions, "active": active}, schema_overrides={"trade_date": pl.Date}
        )
        .join(have, on="trade_date", how="left")
        .with_columns(pl.col("active", "stored").fill_null(0).cast(pl.Int64))
        .with_columns(
            completeness_pct=pl.when(pl.col("active") > 0)
            .then(100 * pl.col("stored") / pl.col("active"))
            .otherwise(100.0)  # nothing was expected that day
            .round(2)
        )
        .sort("trade_date")
    )


def completeness_result(
    by_session: pl.DataFrame, *, remedy: str | None = None, universe_rule: str | None = None
) -> dg.AssetCheckResult:
    """`remedy`, when given, ends a failing description: what to provide to complete it;
    `universe_rule` says which universe the sessions were measured against."""
    pct = pl.col("completeness_pct")
    below = by_session.filter(pct < THRESHOLD_PCT)
    partial = by_session.filter((pct >= THRESHOLD_PCT) & (pct < 100))
    # polars types a Series' min as any Python value or None; this is a float's.
    worst = float(cast(float, by_session["completeness_pct"].min())) if len(by_session) else 100.0
    if len(below):
        description = f"{len(below)} session(s) below {THRESHOLD_PCT:g}%: " + ", ".join(
            f"{d} {c:.2f}%" for d, c in below.select("trade_date", pct).rows()[:10]
        )
        description += f"; {remedy}" if remedy else ""
    elif len(partial):
        description = (
            f"accepted: {len(partial)} session(s) missing symbols, worst {worst:.2f}% "
            f"(>= {THRESHOLD_PCT:g}% passes)"
        )
    else:
        description = "every active symbol has a stored bar in every session"
    return dg.AssetCheckResult(
        check_name=COMPLETENESS,
        passed=below.is_empty(),
        description=description,
        metadata={
            "threshold_pct": THRESHOLD_PCT,
            "min_completeness_pct": worst,
            "sessions_below_threshold": [d.isoformat() for d in below["trade_date"]],
            "sessions_accepted_with_missing_rows": len(partial),
            "missing_symbol_days": int((by_session["active"] - by_session["stored"]).sum()),
            "by_session": dg.MetadataValue.md(markdown_table(by_session, limit=40)),
            **({"universe_rule": universe_rule} if universe_rule else {}),
        },
    )


def suspicious_jumps_result(
    stored: pl.DataFrame, previous: pl.DataFrame, sessions: list[dt.date]
) -> dg.AssetCheckResult:
    """`previous` is the stored session before the range, so the first day has a reference."""
    both = pl.concat([previous.select(stored.columns), stored])
    jumps = day_over_day_jumps(both).filter(pl.col("trade_date").is_in(sessions))
    return dg.AssetCheckResult(
        check_name=SUSPICIOUS_JUMPS,
        passed=jumps.is_empty(),
        severity=dg.AssetCheckSeverity.WARN,
        description=f"{len(jumps)} close-to-close move(s) beyond the threshold",
        metadata={"jumps": len(jumps), "preview": dg.MetadataValue.md(markdown_table(jumps))},
    )
